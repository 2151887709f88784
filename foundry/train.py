"""Train a GPT from an experiment file: `python -m foundry.train EXPERIMENT.yaml [--set key.path=value ...]`.

One plain loop with section banners. What it leaves in `out_dir`:
    config.yaml      the fully resolved experiment (loads back to an equal config)
    metrics.jsonl    one JSON object per line: training lines {iter, loss, lr, tokens_per_sec, ...},
                     evaluation lines {iter, val_loss, val_bpb}
    ckpt_last/       weights (safetensors) + optimiser/RNG/data state, written atomically
    ckpt_best/       the checkpoint with the lowest validation loss
    sample.txt       text generated at the end
    summary.json     final numbers

torch is imported inside the functions, not at the top: the config is validated (and a bad one refused) in
well under a second, before the multi-second torch import.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from foundry.config import ConfigError, ExperimentConfig, load_experiment, write_text_atomic


# --------------------------------------------------------------------------------------------------
# Run log
# --------------------------------------------------------------------------------------------------
class MetricsLog:
    """Append-only JSONL; each line is flushed and fsynced so a kill loses at most the line being written."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, **row) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a metrics.jsonl, skipping a torn last line left by a kill."""
    rows = []
    p = Path(path)
    if not p.is_file():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# --------------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------------
def pick_device(name: str) -> "torch.device":
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("training.device: 'mps' asked for, but MPS is not available here; use 'cpu' or 'auto'")
    return torch.device(name)


def pick_dtype(name: str, device) -> "torch.dtype":
    import torch

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_ctx(device, dtype):
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
def evaluate(model, data, cfg: ExperimentConfig, device, ctx) -> dict:
    """Validation loss (nats/token, plain cross-entropy) and bits per byte over a fixed, declared set of
    windows: the first eval_iters x batch_size non-overlapping block_size windows of the validation split."""
    import torch

    from foundry.data.dataset import eval_windows

    T, B = cfg.model_args.block_size, cfg.training.batch_size
    byte_len = data.byte_lengths().to(device)
    was_training = model.training
    model.eval()
    total_nats, total_tokens, total_bytes = 0.0, 0, 0.0
    xs, ys = [], []

    def flush():
        nonlocal total_nats, total_tokens, total_bytes
        x, y = torch.cat(xs).to(device), torch.cat(ys).to(device)
        with ctx, torch.no_grad():
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum")
        total_nats += float(nats)
        total_tokens += y.numel()
        total_bytes += float(byte_len[y].sum())
        xs.clear(), ys.clear()

    for x, y in eval_windows(data.val, T, cfg.training.eval_iters * B):
        xs.append(x), ys.append(y)
        if len(xs) == B:
            flush()
    if xs:
        flush()
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError(f"validation split of {len(data.val)} tokens is shorter than one block of {T}")
    return {"val_loss": total_nats / total_tokens,
            "val_bpb": total_nats / math.log(2) / max(total_bytes, 1.0),
            "val_tokens": total_tokens}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False) -> dict:
    """Train as `cfg` says; returns the summary (also written to out_dir/summary.json)."""
    import torch

    from foundry.checkpoint import find_checkpoint, load_state, load_weights, save_checkpoint
    from foundry.data.dataset import load_data, random_batch
    from foundry.model import GPT
    from foundry.modules import LOSS
    from foundry.optim import build_optimizer, lr_at

    tc = cfg.training
    say = (lambda *a, **k: None) if quiet else (lambda *a, **k: print(*a, **k, flush=True))
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # ---- data and vocabulary --------------------------------------------------------------------
    data = load_data(cfg.data.path)
    vocab = cfg.model_args.vocab_size
    if vocab is None:
        cfg = cfg.replace({"model_args.vocab_size": data.vocab_size})
    elif vocab < data.vocab_size:
        raise ConfigError(f"model_args.vocab_size={vocab} is smaller than the data's vocabulary "
                          f"({data.vocab_size} tokens in {data.name}); raise it or leave it unset")
    mc = cfg.model_args

    # ---- device, precision, seeds ---------------------------------------------------------------
    device = pick_device(tc.device)
    dtype = pick_dtype(tc.dtype, device)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    ctx = autocast_ctx(device, dtype)
    batch_gen = torch.Generator().manual_seed(tc.seed + 1)

    # ---- model and optimiser --------------------------------------------------------------------
    model = GPT(mc, loss_fn=LOSS.get(tc.loss)(tc)).to(device)
    optimizer = build_optimizer(model, tc, device.type)
    step_model = torch.compile(model) if tc.compile else model
    tokens_per_iter = tc.batch_size * tc.gradient_accumulation_steps * mc.block_size
    flops_per_iter = model.flops_per_token(mc.block_size) * tokens_per_iter

    start_iter, best_val = 0, float("inf")
    ckpt = find_checkpoint(out / "ckpt_last")
    if resume and ckpt is None:
        say(f"--resume: no checkpoint in {out}, starting a new run")
    if ckpt is not None:
        # re-running into the same out_dir continues the run, but only the same experiment
        from foundry.config import from_dict
        import yaml
        stored = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
        # max_iters may grow (extending a run, successive halving); anything else must match
        if stored.replace({"training.max_iters": 1}).hash() != cfg.replace({"training.max_iters": 1}).hash():
            raise FileExistsError(f"{out} holds a run of a different experiment (config hash {stored.hash()} "
                                  f"vs {cfg.hash()}); choose another out_dir or delete that run")
        load_weights(model, ckpt)
        st = load_state(ckpt)
        optimizer.load_state_dict(st["optimizer"])
        start_iter, best_val = st["iter"], st["best_val"]
        torch.set_rng_state(st["rng_cpu"])
        batch_gen.set_state(st["rng_batches"])
        say(f"resumed from {ckpt} at iteration {start_iter}")
    else:
        write_text_atomic(out / "config.yaml", cfg.to_yaml())
        data.tokenizer.save(out / "tokenizer.json")  # a run directory is self-contained for eval and sampling
        for stale in ("metrics.jsonl", "summary.json", "sample.txt"):
            (out / stale).unlink(missing_ok=True)

    log = MetricsLog(out / "metrics.jsonl")
    say(f"foundry: {cfg.base_model} | {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide | "
        f"{mc.attention}/{mc.position}/{mc.norm}/{mc.mlp} | {model.num_params() / 1e6:.2f}M parameters | "
        f"data {data.name} ({len(data.train):,} train / {len(data.val):,} val tokens, vocab {data.vocab_size}) | "
        f"{device.type} {str(dtype).replace('torch.', '')}, {torch.get_num_threads()} threads")
    if start_iter == 0:
        log.write(event="start", params=model.num_params(), data=data.name, data_fingerprint=data.fingerprint,
                  config_hash=cfg.hash(), device=device.type, dtype=str(dtype).replace("torch.", ""))

    def checkpoint(it: int, is_best: bool) -> None:
        state = {"iter": it, "best_val": best_val, "optimizer": optimizer.state_dict(),
                 "rng_cpu": torch.get_rng_state(), "rng_batches": batch_gen.get_state()}
        save_checkpoint(out / "ckpt_last", model, state, cfg.to_yaml())
        if is_best:
            tmp = out / "ckpt_best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out / "ckpt_last", tmp)
            shutil.rmtree(out / "ckpt_best", ignore_errors=True)
            os.replace(tmp, out / "ckpt_best")

    # ---- the loop -------------------------------------------------------------------------------
    model.train()
    t_start = t_last = time.perf_counter()
    ev = {}
    it = start_iter
    for it in range(start_iter, tc.max_iters):
        lr = lr_at(it, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(tc.gradient_accumulation_steps):
            x, y = random_batch(data.train, tc.batch_size, mc.block_size, batch_gen)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with ctx:
                loss, info = step_model(x, y)
            (loss / tc.gradient_accumulation_steps).backward()
            loss_sum += float(loss.detach())
        loss_val = loss_sum / tc.gradient_accumulation_steps
        if not math.isfinite(loss_val):
            raise FloatingPointError(f"loss became {loss_val} at iteration {it}; the last good checkpoint in "
                                     f"{out / 'ckpt_last'} is intact. Lower training.learning_rate or set "
                                     f"training.grad_clip")
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        done = it + 1
        if done % tc.log_interval == 0 or done == tc.max_iters:
            now = time.perf_counter()
            dt = (now - t_last) / (done % tc.log_interval or tc.log_interval)
            t_last = now
            tps = tokens_per_iter / dt
            eta = dt * (tc.max_iters - done)
            row = dict(iter=done, loss=loss_val, lr=lr, tokens_per_sec=tps, ms_per_iter=dt * 1000)
            if info.get("aux_loss") is not None:
                row["aux_loss"] = float(info["aux_loss"])
            log.write(**row)
            say(f"iter {done:>6}/{tc.max_iters} | loss {loss_val:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms/it | "
                f"{tps:,.0f} tok/s | ETA {eta:.0f}s")
        if done % tc.eval_interval == 0 or done == tc.max_iters:
            ev = evaluate(model, data, cfg, device, ctx)
            is_best = ev["val_loss"] < best_val
            best_val = min(best_val, ev["val_loss"])
            log.write(iter=done, **ev)
            say(f"eval {done}: val loss {ev['val_loss']:.4f} | val bpb {ev['val_bpb']:.4f}")
            checkpoint(done, is_best)
            t_last = time.perf_counter()

    # ---- the end: a sample and a summary ----------------------------------------------------------
    if not ev:  # resumed a finished run
        ev = evaluate(model, data, cfg, device, ctx)
    sample = ""
    if tc.sample_tokens > 0:
        prompt = data.tokenizer.encode(tc.sample_prompt) if tc.sample_prompt else [0]
        gen = torch.Generator(device=device).manual_seed(tc.seed)
        ids = model.generate([prompt], tc.sample_tokens, temperature=0.8, top_k=200, generator=gen)[0]
        sample = tc.sample_prompt + data.tokenizer.decode(ids)
        write_text_atomic(out / "sample.txt", sample)
        say("---- sample ----\n" + sample.strip() + "\n----------------")
    summary = {"val_loss": ev["val_loss"], "val_bpb": ev["val_bpb"], "best_val_loss": best_val,
               "iters": tc.max_iters, "params": model.num_params(), "wall_seconds": time.perf_counter() - t_start,
               "config_hash": cfg.hash(), "out_dir": str(out)}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
    say(f"done: val loss {ev['val_loss']:.4f}, val bpb {ev['val_bpb']:.4f} -> {out}")
    return summary


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m foundry.train", description="Train a GPT from an experiment YAML.")
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/baseline.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. --set training.max_iters=100")
    p.add_argument("--resume", action="store_true", help="continue the run already in out_dir")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    args = p.parse_args(argv)
    try:
        cfg = load_experiment(args.experiment, args.overrides)
        train(cfg, resume=args.resume, quiet=args.quiet)
    except (ConfigError, FileExistsError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

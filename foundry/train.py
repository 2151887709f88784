"""Train a GPT from an experiment file.

    python -m foundry.train EXPERIMENT.yaml [--set key.path=value ...] [--resume] [--logger tensorboard|wandb]
    torchrun --standalone --nproc_per_node=2 -m foundry.train EXPERIMENT.yaml      (DDP/FSDP, see distributed.py)

One plain loop with section banners. What it leaves in `out_dir` (rank 0 alone writes):
    config.yaml      the fully resolved experiment (loads back to an equal config)
    tokenizer.json   the data's tokenizer, so the run directory is self-contained
    metrics.jsonl    one JSON object per line: training lines {iter, loss, lr, tokens_per_sec, ms_per_iter,
                     grad_norm, mfu}, evaluation lines {iter, val_loss, val_bpb, val_tokens}
    ckpt_last/       weights (safetensors) + optimiser, RNG and data-position state, written atomically
    ckpt_best/       the checkpoint with the lowest validation loss
    sample.txt       text generated at the end
    summary.json     final numbers

Exact resume: a checkpoint is taken at every evaluation; re-running into the same out_dir (or --resume)
restores weights, optimiser, RNG and the sampler's row counter, drops metric lines after the checkpoint and
continues, so on CPU the rest of the run is bit-identical to an uninterrupted one. max_iters may grow
between runs (extending a run); any other change of the experiment is refused.
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

# No `import torch` up here: torch takes seconds to import, and a bad experiment must be refused in well under
# one (tests/test_config.py::test_cli_refuses_bad_config_fast_and_names_the_key). Functions import it.
from foundry.config import ConfigError, ExperimentConfig, load_experiment, write_text_atomic


# --------------------------------------------------------------------------------------------------
# Run log: JSONL always, TensorBoard / Weights & Biases (offline) on request
# --------------------------------------------------------------------------------------------------
class MetricsLog:
    """Append-only JSONL, flushed after every line; `sync()` (called at each checkpoint) fsyncs it, so what a
    checkpoint covers is on disk, and a kill loses at most lines after it, which a resumed run rewrites."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled
        self._f = open(path, "a") if enabled else None

    def write(self, **row) -> None:
        if self._f is not None:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()

    def sync(self) -> None:
        if self._f is not None:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self.sync()
            self._f.close()
            self._f = None


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


def truncate_metrics(path: Path, last_iter: int) -> None:
    """Keep the rows up to `last_iter` (a resumed run rewrites what came after its checkpoint)."""
    rows = [r for r in read_metrics(path) if r.get("iter", 0) <= last_iter]
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


LOGGERS = ("tensorboard", "wandb")


class ExtraLoggers:
    """Optional mirrors of the metrics: TensorBoard event files in out_dir/tb, W&B offline runs in out_dir/wandb.
    Imported lazily; a missing package fails before training starts, naming the extra to install."""

    def __init__(self, names, out: Path, cfg: ExperimentConfig, enabled: bool):
        self.tb = self.wb = None
        unknown = [n for n in names if n not in LOGGERS]
        if unknown:
            raise ConfigError(f"--logger {unknown[0]!r}: unknown logger; choose from {', '.join(LOGGERS)} "
                              f"(metrics.jsonl is always written)")
        for name in names:
            try:
                if name == "tensorboard":
                    from torch.utils.tensorboard import SummaryWriter
                else:
                    import wandb
            except ImportError as e:
                raise ConfigError(f"--logger {name}: the {name} package is not installed ({e}); install it with "
                                  f"`pip install -e '.[{name}]'` or drop --logger {name}") from None
            if not enabled:
                continue
            if name == "tensorboard":
                self.tb = SummaryWriter(log_dir=str(out / "tb"))
            else:
                os.environ.setdefault("WANDB_MODE", "offline")  # never reach the network unless the user says so
                self.wb = wandb.init(project="foundry", name=out.name, dir=str(out), config=cfg.to_dict(),
                                     mode=os.environ["WANDB_MODE"], resume="allow")

    def write(self, step: int, row: dict) -> None:
        scalars = {k: v for k, v in row.items() if k != "iter" and isinstance(v, (int, float))}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        if self.wb is not None:
            self.wb.log(scalars, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


# --------------------------------------------------------------------------------------------------
# Device, precision, throughput
# --------------------------------------------------------------------------------------------------
def pick_device(name: str, local_rank: int = 0) -> torch.device:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"training.device: {name!r} asked for, but CUDA is not available here; use 'cpu' or 'auto'")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("training.device: 'mps' asked for, but MPS is not available here; use 'cpu' or 'auto'")
    if name == "cuda":  # under torchrun each process takes its own GPU
        return torch.device("cuda", local_rank)
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 autocast on CUDA cards that support it, and on CPUs with AMX tiles (Intel Sapphire Rapids
    and later), where oneDNN runs bf16 GEMMs on the matrix units at several times the fp32 rate; fp32 on
    other CPUs, where bf16 has no hardware path and is emulated: on this project's CPU (AVX2, no
    AVX512-BF16/AMX) `python bench/bench_train.py dtype` measured bf16 autocast forward+backward 2.4x slower
    than fp32 (2026-11-26). AVX512-BF16 alone (dot products, no tiles) is left on fp32 until measured."""
    import torch

    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_amx():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cpu_has_amx() -> bool:
    """AMX tile support as torch's CPU dispatcher sees it (False where this torch build cannot tell)."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe()) if probe is not None else False


def autocast_ctx(device: torch.device, dtype: torch.dtype):
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# Dense bf16/fp16 tensor-core peaks (FLOP/s) from the vendors' data sheets, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
              "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The card's peak for MFU; FOUNDRY_PEAK_FLOPS overrides (e.g. for a CPU), None when unknown."""
    import torch

    if os.environ.get("FOUNDRY_PEAK_FLOPS"):
        return float(os.environ["FOUNDRY_PEAK_FLOPS"])
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if peak is not None and dtype == torch.float32:
        peak /= 2  # fp32 matmuls run as TF32: half the bf16 dense rate on Ampere and Hopper
    return peak


# glibc mallopt parameters (malloc.h) and the values foundry sets on CPU runs.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20   # glibc's ceiling for the threshold on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 1 << 30


def tune_cpu_malloc() -> bool:
    """Stop glibc from handing activation buffers back to the kernel between steps; True if applied.

    Every training step frees and re-allocates the same activation and gradient buffers (hundreds of KB to
    a few MB each on small models). glibc serves allocations above its mmap threshold (128 KiB, adapted
    upwards only slowly) with fresh mmap'd pages and trims the heap top eagerly, so each step page-faults
    and zero-fills those buffers again: measured at 1,680-2,835 minor faults and 8-14 ms of system CPU time
    per step on experiments/shakespeare_char_cpu.yaml (bench/bench_train.py malloc). Raising the mmap
    threshold to its 32 MiB ceiling and the trim threshold to 1 GiB lets the heap keep and reuse those pages
    (0-7 faults per step, 1.11x per step); the price is that the process keeps its peak heap, which training reaches anyway.
    This is what the jemalloc/tcmalloc advice of PyTorch's CPU performance guide buys, without LD_PRELOAD.
    A no-op (False) off glibc (macOS, musl) or where libc cannot be loaded."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        return libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
    except (OSError, AttributeError):
        return False


def fmt_eta(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------
def evaluate(model, data, cfg: ExperimentConfig, device, ctx, info=None) -> dict:
    """Validation loss (nats/token, plain cross-entropy) and bits per byte over a fixed, declared set of
    windows: the first eval_iters x batch_size non-overlapping block_size windows of the validation split
    (all of it when shorter). Bits per byte = total nats / ln 2 / total UTF-8 bytes of the predicted tokens,
    so runs with different tokenizers compare.

    Under torchrun (`info`, a distributed.DistInfo with world_size > 1) the batches are dealt round-robin to
    the ranks and the float64 sums all-reduced, so each rank evaluates 1/world_size of the windows and every
    rank gets the single-process result (the same batches; only the order of the float64 sum differs). A
    rank with one batch fewer runs one extra forward with zero weight, because an FSDP-sharded model's
    forward is a collective that every rank must enter the same number of times."""
    import torch

    from foundry.data.dataset import eval_batches

    T, B = cfg.model_args.block_size, cfg.training.batch_size
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    byte_len = data.byte_lengths().to(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, bytes, tokens

    def add(x, y, weight: float) -> None:
        x, y = x.to(device), y.to(device)
        with ctx, torch.no_grad():
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum")
        sums.add_(torch.stack([nats.double(), byte_len[y].sum(), torch.full((), float(y.numel()), dtype=torch.float64,
                                                                             device=device)]), alpha=weight)

    first, done, n_batches = None, 0, 0
    for i, (x, y) in enumerate(eval_batches(data.val, T, cfg.training.eval_iters * B, B)):
        first = (x, y) if first is None else first
        n_batches += 1
        if i % world == rank:
            add(x, y, 1.0)
            done += 1
    if first is not None and done < -(-n_batches // world):
        add(*first, 0.0)  # a padding forward: the collectives stay matched, nothing is counted
    model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    nats, total_bytes, total_tokens = (float(v) for v in sums)
    if total_tokens == 0:
        raise ValueError(f"validation split of {len(data.val)} tokens is shorter than one block of {T}")
    return {"val_loss": nats / total_tokens, "val_bpb": nats / math.log(2) / max(total_bytes, 1.0),
            "val_tokens": int(total_tokens)}


# Keys that may differ when a run is continued: its length (extending a run, successive halving) and how
# it is executed or reported, none of which changes the weights it computes on the same device.
RESUMABLE_CHANGES = {"training.max_iters", "training.device", "training.num_threads", "training.compile",
                     "training.cpu_malloc_tuning",
                     "training.log_interval", "training.sample_tokens", "training.sample_prompt", "eval.tasks",
                     "eval.limit", "eval.num_fewshot", "out_dir", "lineage"}


def _config_diff(a: ExperimentConfig, b: ExperimentConfig) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    def flat(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict) and v and k not in ("extra", "lineage"):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v
    fa, fb = dict(flat(a.to_dict())), dict(flat(b.to_dict()))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------
def train(cfg: ExperimentConfig, resume: bool = False, quiet: bool = False, loggers: tuple[str, ...] = ()) -> dict:
    """Train as `cfg` says; returns the summary (also written to out_dir/summary.json):
    val_loss, val_bpb, best_val_loss, iters, params, wall_seconds, tokens_per_sec, config_hash, out_dir.

    Re-running into an out_dir that holds a checkpoint of the same experiment continues it (max_iters may
    be larger: the run is extended). Under torchrun every process calls this; rank 0 alone writes."""
    import torch

    import yaml

    from foundry import distributed as D
    from foundry.checkpoint import find_checkpoint, load_state, load_weights, save_checkpoint
    from foundry.config import from_dict
    from foundry.data.dataset import load_data
    from foundry.data.sampler import make_sampler, split_batch
    from foundry.model import GPT
    from foundry.modules import LOSS
    from foundry.optim import build_optimizer, lr_at

    t_start = time.perf_counter()
    tc = cfg.training
    out = Path(cfg.out_dir)

    # ---- processes, device, precision -----------------------------------------------------------
    device_type = pick_device(tc.device).type
    info = D.init(device_type)
    try:
        device = pick_device(tc.device, info.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        main = info.is_main
        say = (lambda *a, **k: None) if (quiet or not main) else (lambda *a, **k: print(*a, **k, flush=True))
        extra_log = ExtraLoggers(loggers, out, cfg, enabled=False)  # fail on a missing package before any work
        dtype = pick_dtype(tc.dtype, device)
        if tc.num_threads:
            torch.set_num_threads(tc.num_threads)
        if device.type == "cpu" and tc.cpu_malloc_tuning:
            tune_cpu_malloc()
        ctx = autocast_ctx(device, dtype)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls on tensor cores (no effect under bf16)
            torch.backends.cudnn.allow_tf32 = True

        # ---- data and vocabulary ----------------------------------------------------------------
        data = load_data(cfg.data.path)
        vocab = cfg.model_args.vocab_size
        if vocab is None:
            cfg = cfg.replace({"model_args.vocab_size": data.vocab_size})
        elif vocab < data.vocab_size:
            raise ConfigError(f"model_args.vocab_size={vocab} is smaller than the data's vocabulary "
                              f"({data.vocab_size} tokens in {data.name}); raise it or leave it unset")
        mc = cfg.model_args
        micro_batch, accum = split_batch(tc, info.world_size)

        # ---- an earlier run in out_dir? ---------------------------------------------------------
        ckpt = find_checkpoint(out / "ckpt_last")
        st = None
        if ckpt is not None:
            stored = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
            changed = [k for k in _config_diff(stored, cfg) if k not in RESUMABLE_CHANGES]
            if changed:
                raise FileExistsError(f"{out} holds a run of a different experiment ({', '.join(changed[:6])} "
                                      f"differ from the stored config); choose another out_dir or delete that run")
            st = load_state(ckpt)
        elif resume:
            say(f"--resume: no checkpoint in {out}, starting a new run")

        # ---- model, wrapping, optimiser ---------------------------------------------------------
        torch.manual_seed(tc.seed)  # the same initial weights on every rank (FSDP shards from them)
        model = GPT(mc, loss_fn=LOSS.get(tc.loss)(tc))
        if st is not None:
            load_weights(model, ckpt)  # full weights, before any sharding
        model.to(device)
        n_params = model.num_params()
        mode = D.choose_mode(tc.distributed, info.world_size, device.type,
                             sum(p.numel() for p in model.parameters()), tc.fsdp_min_params)
        wrapped = D.wrap(model, mode, info, device)
        optimizer = build_optimizer(model, tc, device.type)
        step_model = torch.compile(wrapped) if tc.compile else wrapped
        sampler = make_sampler(data, cfg, info.rank, info.world_size)
        tokens_per_iter = micro_batch * accum * info.world_size * mc.block_size  # global
        flops_per_iter = model.flops_per_token(mc.block_size) * tokens_per_iter
        peak = peak_flops(device, dtype)
        torch.manual_seed(tc.seed + info.rank)  # dropout streams differ per rank

        start_iter, best_val = 0, float("inf")
        if st is not None:
            D.load_optimizer_state(model, optimizer, st["optimizer"], mode)
            start_iter, best_val = st["iter"], st["best_val"]
            saved_world = len(st["sampler"])
            if saved_world == info.world_size:  # the exact continuation
                sampler.load_state_dict(st["sampler"][info.rank])
                torch.set_rng_state(st["rng_cpu"][info.rank])
                if device.type == "cuda" and st.get("rng_cuda"):
                    torch.cuda.set_rng_state(st["rng_cuda"][info.rank], device)
            else:
                # another process count: the built-in samplers' row counter is global, so the data order
                # continues exactly; only the dropout streams are reseeded
                state = dict(st["sampler"][0])
                if state.get("kind") not in ("random", "sequential"):
                    raise ValueError(f"{ckpt} was written by {saved_world} processes and this run has "
                                     f"{info.world_size}; a {state.get('kind')!r} sampler can only resume with "
                                     f"the same number of processes")
                sampler.load_state_dict(state)
                torch.manual_seed(tc.seed + info.rank + 7919 * start_iter)
                say(f"note: checkpoint written by {saved_world} process(es), resuming with {info.world_size}: "
                    f"data order continues exactly, dropout streams are reseeded")
            if main:
                truncate_metrics(out / "metrics.jsonl", start_iter)
                write_text_atomic(out / "config.yaml", cfg.to_yaml())  # an extended run records its new max_iters
            say(f"resumed from {ckpt} at iteration {start_iter}")
        elif main:
            out.mkdir(parents=True, exist_ok=True)
            for stale in ("metrics.jsonl", "summary.json", "sample.txt"):
                (out / stale).unlink(missing_ok=True)
            shutil.rmtree(out / "ckpt_best", ignore_errors=True)
            write_text_atomic(out / "config.yaml", cfg.to_yaml())
            data.tokenizer.save(out / "tokenizer.json")  # a run directory is self-contained for eval and sampling
        D.barrier(info)

        log = MetricsLog(out / "metrics.jsonl", enabled=main)
        extra_log = ExtraLoggers(loggers, out, cfg, enabled=main)
        say(f"foundry: {cfg.base_model} | {mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} wide | "
            f"{mc.attention}/{mc.position}/{mc.norm}/{mc.mlp} | {n_params / 1e6:.2f}M parameters | "
            f"data {data.name} ({len(data.train):,} train / {len(data.val):,} val tokens, vocab {data.vocab_size}) | "
            f"{device.type} {str(dtype).replace('torch.', '')}, {torch.get_num_threads()} threads | "
            f"{info.world_size} process{'es' if info.world_size > 1 else ''} ({mode}) | "
            f"batch {micro_batch}x{accum}x{info.world_size}x{mc.block_size} = {tokens_per_iter:,} tokens/iter")
        if start_iter == 0:
            log.write(event="start", params=n_params, data=data.name, data_fingerprint=data.fingerprint,
                      config_hash=cfg.hash(), device=device.type, dtype=str(dtype).replace("torch.", ""),
                      world_size=info.world_size, distributed=mode)

        def checkpoint(it: int, is_best: bool) -> None:
            """Collective under FSDP (the full state is gathered); rank 0 writes."""
            weights = D.full_model_state(model, mode)
            optim_state = D.full_optimizer_state(model, optimizer, mode)
            rng = {"rng_cpu": torch.get_rng_state(), "sampler": sampler.state_dict()}
            if device.type == "cuda":
                rng["rng_cuda"] = torch.cuda.get_rng_state(device)
            per_rank = [rng] if info.world_size == 1 else [None] * info.world_size
            if info.world_size > 1:
                torch.distributed.all_gather_object(per_rank, rng)
            log.sync()
            if main:
                state = {"iter": it, "best_val": best_val, "optimizer": optim_state,
                         "rng_cpu": [r["rng_cpu"] for r in per_rank],
                         "rng_cuda": [r.get("rng_cuda") for r in per_rank] if device.type == "cuda" else None,
                         "sampler": [r["sampler"] for r in per_rank], "world_size": info.world_size}
                save_checkpoint(out / "ckpt_last", model, state, cfg.to_yaml(), weights=weights)
                if is_best:
                    tmp = out / "ckpt_best.tmp"
                    shutil.rmtree(tmp, ignore_errors=True)
                    shutil.copytree(out / "ckpt_last", tmp)
                    shutil.rmtree(out / "ckpt_best", ignore_errors=True)
                    os.replace(tmp, out / "ckpt_best")
            D.barrier(info)

        def check_finite(it: int, bad_at: torch.Tensor) -> None:
            """Stop on the first non-finite loss or gradient norm, before it can reach a checkpoint."""
            first_bad = int(D.all_reduce_max(bad_at, info))
            if first_bad >= 0:
                raise FloatingPointError(
                    f"loss or gradient norm became non-finite (nan/inf) at iteration {first_bad + 1} (seen at "
                    f"{it}); stopped without saving, so the last good checkpoint in {out / 'ckpt_last'} is intact. "
                    f"Lower training.learning_rate, set training.grad_clip, or use training.dtype=float32")

        # ---- the loop ---------------------------------------------------------------------------
        model.train()
        ev: dict = {}
        bad_at = torch.full((), -1, dtype=torch.long, device=device)   # first iteration with a non-finite value
        loss_window = torch.zeros((), device=device)                   # summed loss since the last log line
        aux_window = torch.zeros((), device=device)                    # summed auxiliary loss (MoE balancing)
        has_aux = False
        window_iters, t_last, train_time, train_iters = 0, time.perf_counter(), 0.0, 0
        clip = tc.grad_clip if tc.grad_clip > 0 else float("inf")      # inf: measure the norm, do not clip
        for it in range(start_iter, tc.max_iters):
            lr = lr_at(it, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum):
                x, y = sampler.next_batch()
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with D.no_sync(wrapped, mode, micro == accum - 1):
                    with ctx:
                        loss, parts = step_model(x, y)
                    (loss / accum).backward()
                if parts.get("aux_loss") is not None:
                    aux_window += parts["aux_loss"] / accum
                    has_aux = True
                loss_sum += loss.detach()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP
                grad_norm = grad_norm.full_tensor()
            finite = torch.isfinite(loss_sum) & torch.isfinite(grad_norm)
            bad_at = torch.where((bad_at < 0) & ~finite, torch.full_like(bad_at, it), bad_at)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_window += loss_sum / accum
            window_iters += 1

            done = it + 1
            is_eval = done % tc.eval_interval == 0 or done == tc.max_iters
            if done % tc.log_interval == 0 or is_eval:
                check_finite(done, bad_at)
                loss_val = float(D.all_reduce_mean(loss_window, info)) / window_iters
                now = time.perf_counter()
                dt = (now - t_last) / window_iters
                train_time += now - t_last
                train_iters += window_iters
                tps = tokens_per_iter / dt
                row = dict(iter=done, loss=loss_val, lr=lr, tokens_per_sec=tps, ms_per_iter=dt * 1000,
                           grad_norm=float(grad_norm))
                if has_aux:  # reported apart from `loss`, which already includes it
                    row["aux_loss"] = float(D.all_reduce_mean(aux_window, info)) / window_iters
                    aux_window.zero_()
                mfu_txt = f"{flops_per_iter / dt / 1e9:,.1f} GFLOP/s"
                if peak:
                    row["mfu"] = flops_per_iter / dt / peak
                    mfu_txt = f"MFU {100 * row['mfu']:.1f}%"
                log.write(**row)
                extra_log.write(done, row)
                eta = (train_time / train_iters) * (tc.max_iters - done)
                say(f"iter {done:>6}/{tc.max_iters} | loss {loss_val:.4f} | lr {lr:.2e} | {dt * 1000:.1f} ms/it | "
                    f"{tps:,.0f} tok/s | {mfu_txt} | ETA {fmt_eta(eta)}")
                loss_window.zero_()
                window_iters = 0
                t_last = time.perf_counter()
            if is_eval:
                ev = evaluate(model, data, cfg, device, ctx, info)
                is_best = ev["val_loss"] < best_val
                best_val = min(best_val, ev["val_loss"])
                log.write(iter=done, **ev)
                extra_log.write(done, ev)
                say(f"eval {done}: val loss {ev['val_loss']:.4f} | val bpb {ev['val_bpb']:.4f}")
                checkpoint(done, is_best)
                t_last = time.perf_counter()  # evaluation and checkpoint time are not training throughput

        # ---- the end: a sample and a summary ------------------------------------------------------
        if not ev:  # resumed a finished run
            ev = evaluate(model, data, cfg, device, ctx, info)
        sample = ""
        if tc.sample_tokens > 0:
            sampler_model = model
            if mode == "fsdp":  # sample from a plain copy of the full weights, on rank 0 alone
                weights = D.full_model_state(model, mode)
                sampler_model = None
                if main:
                    sampler_model = GPT(mc).to(device)
                    sampler_model.load_state_dict(weights, strict=False)
            if main:
                prompt = data.tokenizer.encode(tc.sample_prompt) if tc.sample_prompt else [0]
                gen = torch.Generator(device=device).manual_seed(tc.seed)
                ids = sampler_model.generate([prompt], tc.sample_tokens, temperature=0.8, top_k=200, generator=gen)[0]
                sample = tc.sample_prompt + data.tokenizer.decode(ids)
                write_text_atomic(out / "sample.txt", sample)
                say("---- sample ----\n" + sample.strip() + "\n----------------")
        summary = {"val_loss": ev["val_loss"], "val_bpb": ev["val_bpb"], "best_val_loss": best_val,
                   "iters": tc.max_iters, "params": n_params, "wall_seconds": time.perf_counter() - t_start,
                   "tokens_per_sec": tokens_per_iter * train_iters / train_time if train_time > 0 else None,
                   "world_size": info.world_size, "distributed": mode,
                   "config_hash": cfg.hash(), "out_dir": str(out)}
        if main:
            write_text_atomic(out / "summary.json", json.dumps(summary, indent=2))
        extra_log.close()
        log.close()
        say(f"done: val loss {ev['val_loss']:.4f}, val bpb {ev['val_bpb']:.4f} -> {out}")
        D.barrier(info)
        return summary
    finally:
        D.shutdown(info)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m foundry.train", description="Train a GPT from an experiment YAML. Under "
        "`torchrun --standalone --nproc_per_node=N -m foundry.train ...` it trains data-parallel "
        "(training.distributed: auto|ddp|fsdp|none; gloo on CPU, nccl on GPU).")
    p.add_argument("experiment", help="experiment YAML, e.g. experiments/baseline.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value (repeatable), e.g. --set training.max_iters=100")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in out_dir (re-running into the same out_dir does this too)")
    p.add_argument("--logger", dest="loggers", action="append", default=[], choices=LOGGERS,
                   help="also log to TensorBoard (out_dir/tb) or Weights & Biases offline (out_dir/wandb); "
                        "needs the matching extra: pip install -e '.[tensorboard]' / '.[wandb]'")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    p.add_argument("--no-store", action="store_true",
                   help="do not record this run in the experiment store ($FOUNDRY_STORE, default runs/foundry.sqlite)")
    args = p.parse_args(argv)
    try:
        cfg = load_experiment(args.experiment, args.overrides)
        run = lambda: train(cfg, resume=args.resume, quiet=args.quiet, loggers=tuple(args.loggers))  # noqa: E731
        if args.no_store or int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 records
            run()
        else:
            from foundry.store import recorded_run
            with recorded_run(cfg) as rec:
                rec.metrics = run()
    except (ConfigError, FileExistsError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

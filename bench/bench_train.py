"""Training benchmarks on nanoGPT's CPU Tiny Shakespeare configuration (experiments/shakespeare_char_cpu.yaml).

    python bench/bench_train.py speed [--rounds 6 --iters 40]   foundry's loop vs the nanoGPT stand-in, interleaved
    python bench/bench_train.py full                            both full 2,000-iteration runs: val loss and speed
    python bench/bench_train.py v1v2                            v2 vs v1 at the same parameter count and iterations
    python bench/bench_train.py steps                           where a step's time goes (optimiser, clip, model)
    python bench/bench_train.py dtype                           fp32 vs bf16 autocast on this CPU
    python bench/bench_train.py reference                       the stand-in alone, 2,000 iterations, val loss
    python bench/bench_train.py evalrun RUN_DIR...              a run's val loss on its windows and the whole split

The reference is bench/nanogpt_ref.py: an independent plain-PyTorch re-implementation of the per-iteration work
of nanoGPT's CPU run (nanoGPT's code is not on this machine and is not copied). Speed is measured side by side in
one process, alternating short chunks, and reported as medians and a ratio, because the 2 shared cores drift.
Results are appended as JSON lines to runs/bench/bench_train.jsonl; BENCHMARKS.md quotes them.

Data: --data DIR (a prepared character-level directory), else one is written to runs/bench/shakespeare_char from
the embedded Tiny Shakespeare in the documented prepared format (first 90% train, last 10% validation, uint16).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
EXPERIMENT = REPO / "experiments" / "shakespeare_char_cpu.yaml"
OUT = REPO / "runs" / "bench"
NANOGPT_RECORDED = {"ms_per_iter": 47.0, "tokens_per_sec": 16200, "val_loss": 1.8857}  # measured here, the issue says


def prepare(data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    d = OUT / "shakespeare_char"
    if (d / "meta.json").is_file():
        return d
    from foundry.data import embedded
    from foundry.data.tokenize import CharTokenizer

    text = embedded.load_text()
    tok = CharTokenizer().fit(text)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = int(len(ids) * 0.9)
    d.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(d / "train.bin")
    ids[n:].tofile(d / "val.bin")
    tok.save(d / "tokenizer.json")
    (d / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
                                             "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n,
                                             "fingerprint": embedded.SHA256[:16]}))
    return d


THREADS: list[str] = []  # --threads N adds training.num_threads=N here


def config(data: Path, out: str, extra: list[str] = ()):
    from foundry.config import load_experiment

    return load_experiment(EXPERIMENT, [f"data.path={data}", f"out_dir={OUT / out}", *THREADS, *extra])


def record(kind: str, **row) -> dict:
    row = {"bench": kind, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "threads": torch.get_num_threads(), **row}
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "bench_train.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))
    return row


def foundry_run(cfg, iters: int | None = None) -> tuple[dict, list[float]]:
    """Train with foundry's real loop; returns the summary and the per-window ms/iteration."""
    import shutil

    from foundry.train import read_metrics, train

    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    if iters is not None:
        cfg = cfg.replace({"training.max_iters": iters, "training.lr_decay_iters": 2000, "training.eval_iters": 1,
                           "training.sample_tokens": 0})
    s = train(cfg, quiet=True)
    ms = [r["ms_per_iter"] for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl") if "ms_per_iter" in r]
    return s, ms


def reference(data: Path, iters: int, threads: int):
    from nanogpt_ref import NanoGPTReference

    torch.set_num_threads(threads)
    ref = NanoGPTReference(str(data), 65)
    t = time.perf_counter()
    losses = [ref.step() for _ in range(iters)]
    return ref, (time.perf_counter() - t) / iters * 1000, losses


def cmd_speed(args, data):
    cfg = config(data, "speed")
    threads = cfg.training.num_threads
    f_ms, r_ms = [], []
    for r in range(args.rounds):
        _, ms = foundry_run(cfg, args.iters)
        f_ms.append(statistics.median(ms[1:] or ms))  # the first window holds warm-up
        _, ms_ref, _ = reference(data, args.iters, threads)
        r_ms.append(ms_ref)
        print(f"round {r + 1}/{args.rounds}: foundry {f_ms[-1]:.1f} ms/it, reference {ms_ref:.1f} ms/it", flush=True)
    f, ref = statistics.median(f_ms), statistics.median(r_ms)
    tokens = cfg.training.batch_size * cfg.model_args.block_size
    record("speed", foundry_ms_per_iter=f, reference_ms_per_iter=ref, speedup=ref / f,
           foundry_tokens_per_sec=tokens / f * 1000, reference_tokens_per_sec=tokens / ref * 1000,
           speedup_vs_recorded_nanogpt=NANOGPT_RECORDED["ms_per_iter"] / f, rounds=args.rounds, iters=args.iters,
           foundry_rounds=f_ms, reference_rounds=r_ms)


def cmd_full(args, data):
    cfg = config(data, "full_v1")
    s, ms = foundry_run(cfg)
    ref, ref_ms, _ = reference(data, 2000, cfg.training.num_threads)
    from foundry.data.dataset import load_data

    ref_val = ref.val_loss(load_data(data).val, n_windows=cfg.training.eval_iters * cfg.training.batch_size)
    record("full", foundry_val_loss=s["val_loss"], foundry_val_bpb=s["val_bpb"], foundry_ms_per_iter=statistics.median(ms),
           foundry_tokens_per_sec=s["tokens_per_sec"], foundry_wall_s=s["wall_seconds"], reference_val_loss=ref_val,
           reference_ms_per_iter=ref_ms, speedup=ref_ms / statistics.median(ms), recorded_nanogpt=NANOGPT_RECORDED)


def cmd_v1v2(args, data):
    rows = {}
    for name, extra in (("v1", []), ("v2", ["base_model=v2", "model_args.mlp_ratio=3"])):
        cfg = config(data, f"full_{name}", extra)
        done = Path(cfg.out_dir) / "summary.json"
        if args.iters is None and done.is_file() and json.loads(done.read_text())["iters"] == 2000:
            from foundry.train import read_metrics  # reuse the full run of `full` (same experiment, same out_dir)

            s = json.loads(done.read_text())
            ms = [r["ms_per_iter"] for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl") if "ms_per_iter" in r]
        else:
            s, ms = foundry_run(cfg, args.iters)
        from foundry.checkpoint import load_run

        model = load_run(cfg.out_dir).model
        rows[name] = {"val_loss": s["val_loss"], "best_val_loss": s["best_val_loss"], "val_bpb": s["val_bpb"],
                      "params_total": sum(p.numel() for p in model.parameters()),
                      "params_blocks": sum(p.numel() for n, p in model.named_parameters()
                                           if n.startswith(("blocks.", "norm_f."))),
                      "ms_per_iter": statistics.median(ms), "iters": s["iters"]}
    record("v1v2", **rows, v2_better=rows["v2"]["val_loss"] < rows["v1"]["val_loss"])


def cmd_reference(args, data):
    """The stand-in alone for 2,000 iterations, evaluated on foundry's declared windows and on the whole split."""
    from foundry.data.dataset import load_data

    cfg = config(data, "reference")
    ref, ms, losses = reference(data, args.iters or 2000, cfg.training.num_threads)
    val = load_data(data).val
    n_all = (len(val) - 1) // cfg.model_args.block_size
    record("reference", ms_per_iter=ms, final_train_loss=float(np.mean(losses[-10:])),
           val_loss_declared_windows=ref.val_loss(val, cfg.training.eval_iters * cfg.training.batch_size),
           val_loss_whole_split=ref.val_loss(val, n_all), iters=len(losses))


def cmd_evalrun(args, data):
    """A finished foundry run's validation loss on its declared windows and on the whole validation split."""
    from foundry.checkpoint import load_run
    from foundry.data.dataset import load_data
    from foundry.train import evaluate

    rows = {}
    for run_dir in args.runs:
        run = load_run(run_dir, which="last")
        d = load_data(data)
        declared = evaluate(run.model, d, run.config, torch.device("cpu"), torch.autocast("cpu", enabled=False))
        whole = evaluate(run.model, d, run.config.replace({"training.eval_iters": 10**6}), torch.device("cpu"),
                         torch.autocast("cpu", enabled=False))
        rows[str(run_dir)] = {"val_loss_declared_windows": declared["val_loss"], "val_loss_whole_split": whole["val_loss"],
                              "val_bpb_whole_split": whole["val_bpb"], "whole_split_tokens": whole["val_tokens"]}
    record("evalrun", **rows)


def cmd_steps(args, data):
    """Time the parts of one step in foundry's configuration vs the reference's (medians of interleaved runs)."""
    from foundry.data.dataset import load_data
    from foundry.data.sampler import make_sampler
    from foundry.model import GPT
    from foundry.optim import build_optimizer
    from nanogpt_ref import NanoGPTReference

    cfg = config(data, "steps", ["model_args.vocab_size=65"])
    torch.set_num_threads(cfg.training.num_threads)
    model = GPT(cfg.model_args)
    opt = build_optimizer(model, cfg.training, "cpu")
    sampler = make_sampler(load_data(data), cfg)
    ref = NanoGPTReference(str(data), 65)
    step_model = model
    if args.compile:  # foundry's side through torch.compile (training.compile: true); compilation is timed apart
        t = time.perf_counter()
        step_model = torch.compile(model)
        x, y = sampler.next_batch()
        step_model(x, y)[0].backward()
        model.zero_grad(set_to_none=True)
        print(f"compile: {time.perf_counter() - t:.1f} s", flush=True)
    parts = {k: [] for k in ("f_batch", "f_fwd_bwd", "f_clip", "f_opt", "r_batch", "r_fwd_bwd", "r_clip", "r_opt")}

    def timed(key, fn):
        t = time.perf_counter()
        out = fn()
        parts[key].append((time.perf_counter() - t) * 1000)
        return out

    for i in range(args.iters):
        x, y = timed("f_batch", sampler.next_batch)
        timed("f_fwd_bwd", lambda: step_model(x, y)[0].backward())
        timed("f_clip", lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True))
        timed("f_opt", lambda: (opt.step(), opt.zero_grad(set_to_none=True)))
        xr, yr = timed("r_batch", ref.get_batch)
        timed("r_fwd_bwd", lambda: ref.model(xr, yr).backward())
        timed("r_clip", lambda: torch.nn.utils.clip_grad_norm_(ref.model.parameters(), 1.0))
        timed("r_opt", lambda: (ref.opt.step(), ref.opt.zero_grad(set_to_none=True)))
    med = {k: statistics.median(v[3:]) for k, v in parts.items()}
    f_total, r_total = (sum(v for k, v in med.items() if k.startswith(p)) for p in ("f_", "r_"))
    record("steps", **med, foundry_step_ms=f_total, reference_step_ms=r_total, speedup=r_total / f_total,
           compile=args.compile, iters=args.iters)


def cmd_dtype(args, data):
    """fp32 vs bf16 autocast forward+backward of the foundry model on this CPU, interleaved (decides dtype auto)."""
    from foundry.data.dataset import load_data
    from foundry.data.sampler import make_sampler
    from foundry.model import GPT

    cfg = config(data, "dtype", ["model_args.vocab_size=65"])
    torch.set_num_threads(cfg.training.num_threads)
    model = GPT(cfg.model_args)
    sampler = make_sampler(load_data(data), cfg)
    times = {"float32": [], "bfloat16": []}
    for i in range(args.iters):
        for name in times:
            x, y = sampler.next_batch()
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bfloat16"):
                loss, _ = model(x, y)
            loss.backward()
            times[name].append((time.perf_counter() - t) * 1000)
            model.zero_grad(set_to_none=True)
    f32, bf16 = (statistics.median(v[2:]) for v in times.values())
    record("dtype", fp32_fwd_bwd_ms=f32, bf16_autocast_fwd_bwd_ms=bf16, bf16_over_fp32=bf16 / f32, iters=args.iters)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["speed", "full", "v1v2", "steps", "dtype", "reference", "evalrun"])
    p.add_argument("runs", nargs="*", type=Path, help="evalrun: run directories")
    p.add_argument("--data", type=Path, help="prepared character-level Tiny Shakespeare directory")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--compile", action="store_true", help="steps/speed: foundry's side with torch.compile")
    p.add_argument("--threads", type=int, default=None, help="override training.num_threads for both sides")
    p.add_argument("--iters", type=int, default=None, help="iterations per round/run (default: 40; full runs 2000)")
    args = p.parse_args(argv)
    data = prepare(args.data)
    if args.threads:
        THREADS.append(f"training.num_threads={args.threads}")
    if args.compile and args.what == "speed":
        THREADS.append("training.compile=true")
    if args.what in ("speed", "steps", "dtype") and args.iters is None:
        args.iters = 40
    {"speed": cmd_speed, "full": cmd_full, "v1v2": cmd_v1v2, "steps": cmd_steps, "dtype": cmd_dtype,
     "reference": cmd_reference, "evalrun": cmd_evalrun}[args.what](args, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

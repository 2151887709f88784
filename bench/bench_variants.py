"""Every component variant at one fixed size: parameters, forward+backward time, peak memory, KV-cache bytes.

    python bench/bench_variants.py                          # CPU, 6 layers x 384 wide, T=256, batch 8
    python bench/bench_variants.py --device cuda            # on a GPU (bf16 autocast by default there)
    python bench/bench_variants.py --only attention:mla,mlp:moe --reps 3 --json out.json

Each variant changes one component of the v1 baseline (mha / learned / layernorm / gelu / pre / ce) and keeps
its options at their defaults. Two passes:

1. memory: each variant alone (on CPU in a fresh subprocess, so the resident-set peak is its own; on CUDA in
   this process, resetting the allocator's peak counter) runs 2 forward+backward steps. Peak memory is, on
   CUDA, torch.cuda.max_memory_allocated (weights, grads, activations); on CPU, the RSS high-water mark minus
   the RSS just before the first step (activations and grads). KV-cache bytes per token are summed over
   layers, for one sequence, in the compute dtype.
2. time: every model is built in this process, warmed up once, then timed one forward+backward step
   (loss.backward(), no optimiser) each, round-robin, for `--reps` rounds. `ms` is the median over rounds;
   `x base` is the median over rounds of the ratio to the baseline's step in the same round, so a machine
   whose speed drifts (a shared CPU) slows every variant of a round alike. The rows that equal the baseline
   (attention mha, position learned, ...) show how much noise remains.

Prints a Markdown table (with the command, machine and date) for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

BASE = "mha/learned/layernorm/gelu/pre/ce"


def variants() -> list[tuple[str, str]]:
    """(family, name) for every registered variant, plus each norm placement; the baseline first."""
    from foundry.config import NORM_PLACEMENTS
    from foundry.modules import REGISTRIES

    out = [("baseline", "v1")]
    for family in ("attention", "position", "norm", "mlp", "loss"):
        out += [(family, n) for n in REGISTRIES[family].names()]
    out += [("norm_placement", p) for p in NORM_PLACEMENTS if p != "pre"]
    return out


def model_config(args, family: str, name: str):
    from foundry.config import ModelConfig

    cfg = ModelConfig(n_layer=args.layers, n_embd=args.width, n_head=args.heads, block_size=args.seq,
                      vocab_size=args.vocab, bias=False)
    if family in ("attention", "position", "norm", "mlp", "norm_placement"):
        cfg = dataclasses.replace(cfg, **{family: name})
    cfg.check()
    return cfg


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:  # Linux: resident pages
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def setup(args, family: str, name: str):
    """Build one variant with a fixed batch; return (model, step, sync, row with params and KV bytes)."""
    import torch

    from foundry.config import TrainingConfig
    from foundry.model import GPT
    from foundry.modules import LOSS

    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = model_config(args, family, name)
    loss_name = name if family == "loss" else "ce"
    model = GPT(cfg, loss_fn=LOSS.get(loss_name)(TrainingConfig())).to(device).train()
    params = sum(p.numel() for p in model.parameters())
    kv = sum(c.nbytes_per_token() for c in model.new_caches(1, 8, device, dtype))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)
    y = torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=g).to(device)

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    row = dict(family=family, name=name, params=params, kv_bytes_per_token=kv, dtype=args.dtype, device=device.type)
    return model, step, sync, row


def measure_memory(args, family: str, name: str) -> dict:
    """Peak memory of 2 forward+backward steps of one variant (pass 1)."""
    import torch

    model, step, sync, row = setup(args, family, name)
    cuda = row["device"] == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rss0 = 0 if cuda else rss_bytes()
    for _ in range(2):
        step()
    sync()
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)  # ru_maxrss: KiB on Linux
    del model
    return dict(row, peak_mb=peak / 2 ** 20)


def measure_time(args, todo: list[tuple[str, str]]) -> dict:
    """Round-robin timing of every variant in this process (pass 2): {(family, name): (ms list, ratio list)}."""
    built = {v: setup(args, *v) for v in todo}
    for _, step, sync, _ in built.values():  # warm-up
        step()
        sync()
    times = {v: [] for v in todo}
    for _ in range(args.reps):
        for v, (_, step, sync, _) in built.items():
            t0 = time.perf_counter()
            step()
            sync()
            times[v].append((time.perf_counter() - t0) * 1000)
    base = times[("baseline", "v1")]
    return {v: (t, [a / b for a, b in zip(t, base)]) for v, t in times.items()}


def machine(args) -> str:
    import torch

    if args.device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = args.threads or torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores visible, {threads} torch threads, torch {torch.__version__}"


def table(rows: list[dict]) -> str:
    out = ["| family | variant | params | fwd+bwd ms | x base | peak MB | KV bytes/token |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        label = BASE if r["family"] == "baseline" else r["name"]
        out.append(f"| {r['family']} | {label} | {r['params'] / 1e6:.2f}M | {r['ms']:.1f} | "
                   f"{r['x_base']:.2f} | {r['peak_mb']:.0f} | {r['kv_bytes_per_token']:,} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bench_variants.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (autocast); default float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=65, help="65 = the embedded character-level data set")
    p.add_argument("--reps", type=int, default=5, help="timed rounds (one step per variant each; median reported)")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0 = torch's default)")
    p.add_argument("--only", default="", help="comma-separated family:name list (default: every variant)")
    p.add_argument("--in-process", action="store_true", help="on CPU, measure in this process (the RSS peak then "
                   "carries over between variants; for quick checks); CUDA always measures in process")
    p.add_argument("--json", default=None, help="also write the rows as JSON to this path")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one variant, print JSON
    args = p.parse_args(argv)
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            p.error("--device cuda asked for, but CUDA is not available here")

    if args.one:
        family, name = args.one.split(":", 1)
        print(json.dumps(measure_memory(args, family, name)))
        return 0

    todo = variants()
    if args.only:
        wanted = [tuple(s.split(":", 1)) for s in args.only.split(",") if s]
        bad = [w for w in wanted if w not in todo]
        if bad:
            p.error(f"unknown variant(s) {bad}; known: {', '.join(f'{f}:{n}' for f, n in todo)}")
        todo = [("baseline", "v1")] + [w for w in wanted if w != ("baseline", "v1")]
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for family, name in todo:  # pass 1: memory, parameters, KV bytes
        if args.in_process or args.device.startswith("cuda"):
            row = measure_memory(args, family, name)
        else:
            cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--one", f"{family}:{name}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                raise SystemExit(f"measuring {family}:{name} failed (exit {res.returncode})")
            row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{family:>14} {name:<16} {row['peak_mb']:8.0f} MB  {row['kv_bytes_per_token']:>8,} B/token",
              file=sys.stderr, flush=True)
    timed = measure_time(args, todo)  # pass 2: interleaved timing
    for row in rows:
        ms, ratio = timed[(row["family"], row["name"])]
        row.update(ms=statistics.median(ms), ms_all=ms, x_base=statistics.median(ratio))
    cmd = "python bench/bench_variants.py " + " ".join(passthrough)
    print(f"Command: `{cmd.strip()}`  \nMachine: {machine(args)}  \n"
          f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
          f"Size: {args.layers} layers, {args.width} wide, {args.heads} heads, T={args.seq}, batch {args.batch}, "
          f"vocab {args.vocab}, {args.dtype}; {args.reps} interleaved rounds, median\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

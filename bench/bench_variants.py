"""Every component variant at one fixed size: parameters, forward+backward time, peak memory, KV-cache bytes.

    python bench/bench_variants.py                          # CPU, 6 layers x 384 wide, T=256, batch 8
    python bench/bench_variants.py --device cuda            # on a GPU (bf16 autocast by default there)
    python bench/bench_variants.py --only attention:mla,mlp:moe --reps 3 --json out.json

Each variant changes one component of the v1 baseline (mha / learned / layernorm / gelu / pre / ce) and keeps
its options at their defaults. On CPU each is measured in a fresh subprocess (so the RSS peak is its own; on
CUDA in this process, since the allocator's peak counter is reset per variant): 2 warm-up
steps, then the median of `--reps` forward+backward steps (loss.backward(), no optimiser). Peak memory is, on
CUDA, torch.cuda.max_memory_allocated (weights, grads and activations); on CPU, the process's resident-set
high-water mark minus its size just before the first step (activations and grads). KV-cache bytes per token
are summed over layers, for one sequence, in the compute dtype. The baseline is measured first and last; the
`x base` column divides by their mean, so machine drift shows as the two baseline rows disagreeing.
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


def measure(args, family: str, name: str) -> dict:
    """Build one variant and time it on this process's device."""
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
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step():
        with autocast:
            loss, _ = model(x, y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rss0 = rss_bytes() if device.type == "cpu" else 0
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append((time.perf_counter() - t0) * 1000)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0)  # ru_maxrss: KiB on Linux
    return dict(family=family, name=name, params=params, ms=statistics.median(times), ms_all=times,
                peak_mb=peak / 2 ** 20, kv_bytes_per_token=kv, dtype=args.dtype, device=device.type)


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


def table(rows: list[dict], base_ms: float) -> str:
    out = ["| family | variant | params | fwd+bwd ms | x base | peak MB | KV bytes/token |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        label = BASE if r["family"] == "baseline" else r["name"]
        out.append(f"| {r['family']} | {label} | {r['params'] / 1e6:.2f}M | {r['ms']:.1f} | "
                   f"{r['ms'] / base_ms:.2f} | {r['peak_mb']:.0f} | {r['kv_bytes_per_token']:,} |")
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
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant (median reported)")
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
        print(json.dumps(measure(args, family, name)))
        return 0

    todo = variants()
    if args.only:
        wanted = [tuple(s.split(":", 1)) for s in args.only.split(",") if s]
        bad = [w for w in wanted if w not in todo]
        if bad:
            p.error(f"unknown variant(s) {bad}; known: {', '.join(f'{f}:{n}' for f, n in todo)}")
        todo = [("baseline", "v1")] + [w for w in wanted if w != ("baseline", "v1")]
    todo = todo + [("baseline", "v1")]  # the baseline again at the end: drift check
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for family, name in todo:
        if args.in_process or args.device.startswith("cuda"):
            row = measure(args, family, name)
        else:
            cmd = [sys.executable, os.path.abspath(__file__), *passthrough, "--one", f"{family}:{name}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                raise SystemExit(f"measuring {family}:{name} failed (exit {res.returncode})")
            row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{family:>14} {name:<16} {row['ms']:9.1f} ms  {row['peak_mb']:8.0f} MB  "
              f"{row['kv_bytes_per_token']:>8,} B/token", file=sys.stderr, flush=True)
    base = [r["ms"] for r in rows if r["family"] == "baseline"]
    cmd = "python bench/bench_variants.py " + " ".join(passthrough)
    print(f"Command: `{cmd.strip()}`  \nMachine: {machine(args)}  \n"
          f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
          f"Size: {args.layers} layers, {args.width} wide, {args.heads} heads, T={args.seq}, batch {args.batch}, "
          f"vocab {args.vocab}, {args.dtype}; median of {args.reps} steps; baseline first/last "
          f"{base[0]:.1f} / {base[-1]:.1f} ms\n")
    print(table(rows, statistics.mean(base)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

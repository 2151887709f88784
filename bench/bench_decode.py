"""Incremental decoding per attention variant: ms per generated token and KV-cache memory at a long context.

    python bench/bench_decode.py                              # CPU: 6 layers x 384, prompt 768, 64 new, batch 4
    python bench/bench_decode.py --device cuda --prompt 3072 --new 256 --batch 16

Each row is a v1 model that changes only `model_args.attention` (block_size = prompt + new, position rope so
that MLA has its decoupled key). `mla` decodes in the latent space (weight absorption, the default);
`mla (expanded)` re-expands per-head K/V from every cached latent at every step (`absorb = False`), the
implementation before absorption. `sliding_window` uses window 128 with a rolling buffer, so its cache stops
growing at the window. Each round runs, per variant, one prefill forward of the prompt into fresh caches, then `--new` greedy
single-token forwards through them (GPT.generate's cached path without its sampling and padding masks);
prefill ms and decode ms per token are medians over `--reps` rounds, variants interleaved in each round so
that drift hits all alike. Cache MB = the allocated cache tensors of the batch at the full context.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.config import MLAConfig, ModelConfig, SlidingWindowConfig  # noqa: E402
from foundry.model import GPT  # noqa: E402
from foundry.modules.attention import MultiHeadLatentAttention  # noqa: E402



def variants(window: int, kv_rank: int, head_dim: int) -> dict:
    mla = MLAConfig(kv_rank=kv_rank, rope_head_dim=min(16, head_dim // 2))
    return {"mha": {}, "gqa": {"n_kv_head": 2}, "mla": {"mla": mla}, "mla (expanded)": {"mla": mla},
            "sliding_window": {"sliding_window": SlidingWindowConfig(window=window, pattern="S")}}


def cache_mb(caches) -> float:
    return sum(t.numel() * t.element_size() for c in caches for t in vars(c).values() if torch.is_tensor(t)) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--prompt", type=int, default=768)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--window", type=int, default=128, help="sliding_window's window")
    p.add_argument("--kv-rank", type=int, default=64, help="MLA's latent width")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    base = ModelConfig(n_layer=a.layers, n_head=a.heads, n_embd=a.width, block_size=a.prompt + a.new, vocab_size=256,
                       position="rope")
    models = {}
    for name, opts in variants(a.window, a.kv_rank, a.width // a.heads).items():
        torch.manual_seed(0)
        cfg = dataclasses.replace(base, attention=name.split()[0], **opts)
        cfg.check()
        models[name] = GPT(cfg).to(dev).eval()
    prompts = torch.randint(0, 256, (a.batch, a.prompt), generator=torch.Generator().manual_seed(0), device=dev)
    times = {n: {"prefill": [], "decode": []} for n in models}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    caches = {}
    for _ in range(a.reps):
        for name, model in models.items():
            MultiHeadLatentAttention.absorb = name != "mla (expanded)"
            with torch.no_grad():
                caches[name] = model.new_caches(a.batch, a.prompt + a.new)
                t0 = time.perf_counter()
                logits = model(prompts, caches=caches[name])[:, -1]
                sync()
                t1 = time.perf_counter()
                for _ in range(a.new):  # greedy, one token per step through the cache
                    logits = model(logits.argmax(-1, keepdim=True), caches=caches[name])[:, -1]
                sync()
                t2 = time.perf_counter()
            times[name]["prefill"].append((t1 - t0) * 1000)
            times[name]["decode"].append((t2 - t1) / a.new * 1000)
    MultiHeadLatentAttention.absorb = True
    print(f"Command: `python bench/bench_decode.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    print(f"Machine: {platform.processor() or platform.machine()}, {a.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ")
    print(f"{a.layers} layers x {a.width}, {a.heads} heads, batch {a.batch}, prompt {a.prompt}, {a.new} new tokens, greedy, fp32; "
          f"medians of {a.reps} rounds\n")
    print("| attention | params | prefill ms | decode ms / token | decode x mha | KV cache MB (batch, full context) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    ref = statistics.median(times["mha"]["decode"])
    rows = {}
    for name, model in models.items():
        pre, dec = (statistics.median(times[name][k]) for k in ("prefill", "decode"))
        print(f"| {name} | {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M | {pre:.0f} | {dec:.2f} | "
              f"{dec / ref:.2f} | {cache_mb(caches[name]):.1f} |")
        rows[name] = {"prefill_ms": pre, "decode_ms": dec, "cache_mb": cache_mb(caches[name])}
    return rows


if __name__ == "__main__":
    main()

"""What verifiable checkpoints cost: foundry's save (serialised in memory, sha256 manifest, rotation to
ckpt_last.prev1) and its verification, against the write they replaced (safetensors save_file + torch.save +
fsync + rename, no manifest), on a GPT of a given size with a real AdamW state.

    python bench/bench_checkpoint.py                      # 6 layers x 512 (~19M parameters + AdamW moments)
    python bench/bench_checkpoint.py --n-layer 12 --n-embd 768 --rounds 5

Each round writes one checkpoint with each method, rotating which goes first, into the same directory
(so the page cache and the disk are shared alike); `no .prev1` is foundry's save with keep_previous=0 (the
cost of the rotation, which keeps one more checkpoint on disk); `verify` is inspect_checkpoint (sizes, then sha256 of
every file), the check a resume and load_run make before loading. Medians over --rounds.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from foundry.checkpoint import inspect_checkpoint, model_state, save_checkpoint  # noqa: E402
from foundry.config import ModelConfig  # noqa: E402
from foundry.model import GPT  # noqa: E402


def reference_save(path: Path, model, state: dict, config_yaml: str) -> None:
    """The checkpoint write before manifests (foundry up to the fault-tolerance change): files written by
    safetensors and torch directly into a temporary directory, fsynced, renamed over the old one."""
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    save_file(model_state(model), str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    old = path.with_name(path.name + ".old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layer", type=int, default=6)
    ap.add_argument("--n-embd", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    a = ap.parse_args(argv)
    cfg = ModelConfig(n_layer=a.n_layer, n_head=a.n_embd // 64, n_embd=a.n_embd, block_size=256, vocab_size=50304)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))[0].backward()
    opt.step()  # AdamW's two moments per parameter: the state.pt of a real run
    state = {"iter": 1, "best_val": 1.0, "optimizer": opt.state_dict(), "rng_cpu": [torch.get_rng_state()]}
    root = Path(a.dir or tempfile.mkdtemp(prefix="bench-ckpt-"))
    for d in ("ref", "new", "norot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    times = {"reference save": [], "foundry save": [], "foundry, no .prev1": [], "foundry verify": []}
    saves = {"reference save": lambda: reference_save(root / "ref" / "ckpt_last", model, state, "x: 1\n"),
             "foundry save": lambda: save_checkpoint(root / "new" / "ckpt_last", model, state, "x: 1\n"),
             "foundry, no .prev1": lambda: save_checkpoint(root / "norot" / "ckpt_last", model, state, "x: 1\n",
                                                           keep_previous=0)}
    for r in range(a.rounds):
        names = list(saves)
        for which in names[r % 3:] + names[:r % 3]:  # each goes first, second and third in turn
            t = time.perf_counter()
            saves[which]()
            times[which].append(time.perf_counter() - t)
        t = time.perf_counter()
        assert inspect_checkpoint(root / "new" / "ckpt_last").intact
        times["foundry verify"].append(time.perf_counter() - t)
    size = sum(f.stat().st_size for f in (root / "new" / "ckpt_last").iterdir())
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), None) if Path("/proc/cpuinfo").exists() else None
    print(f"# {datetime.date.today()} {cpu or platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"torch {torch.__version__}; {model.num_params() / 1e6:.1f}M parameters, checkpoint {size / 1e6:.1f} MB, "
          f"{a.rounds} rounds (medians)")
    ref = statistics.median(times["reference save"])
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:<16} {m * 1000:8.1f} ms  {size / m / 1e6:7.1f} MB/s  {m / ref:5.2f}x the reference save")
    if a.dir is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

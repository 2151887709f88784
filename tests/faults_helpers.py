"""Shared by the fault-injection tests (tests/test_faults_*.py): a short reference run to compare
continuations against bit for bit, byte-level damage, and a file-size limit that makes writes fail."""
from __future__ import annotations

import resource
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from foundry.train import read_metrics, train
from train_helpers import tiny_config, write_char_dataset

# 60 iterations, a checkpoint every 20 (ckpt_last, ckpt_last.prev1, ckpt_best), a metrics line per
# iteration; dropout makes the RNG state part of what a continuation must restore
RUN = {"training.max_iters": 60, "training.eval_interval": 20, "training.log_interval": 1,
       "training.eval_iters": 1, "training.sample_tokens": 0, "model_args.dropout": 0.1}


def make_reference(root: Path) -> tuple[Path, Path]:
    """(data dir, the uninterrupted run's dir)."""
    data = write_char_dataset(root / "data")
    ref = root / "reference"
    train(tiny_config(data, ref, **RUN), quiet=True)
    return data, ref


def run_config(data: Path, out: Path, **extra):
    return tiny_config(data, out, **{**RUN, **extra})


def copy_run(ref: Path, dst: Path) -> Path:
    shutil.copytree(ref, dst)
    return dst


def losses(run_dir: Path, after: int = 0) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and r["iter"] > after}


def evals(run_dir: Path) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "val_loss" in r]


def assert_same_run(a: Path, b: Path, after: int = 0) -> None:
    """Bit-identical training losses after `after`, evaluation lines and final weights."""
    la, lb = losses(a, after), losses(b, after)
    assert list(lb) == list(la), "the continued run must log every iteration once"
    assert la == lb
    assert evals(a) == evals(b)
    wa = load_file(str(a / "ckpt_last" / "model.safetensors"))
    wb = load_file(str(b / "ckpt_last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def garble(path: Path, where: str = "end", n: int = 16) -> None:
    """Flip `n` bytes in place: at the start (a header), in the middle, or just before the end (tensor data)."""
    raw = bytearray(path.read_bytes())
    at = {"start": 8, "middle": len(raw) // 2, "end": max(0, len(raw) - 4 * n)}[where]
    for i in range(at, min(at + n, len(raw))):
        raw[i] ^= 0xA5
    path.write_bytes(bytes(raw))


@contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE for this process: a write past `limit` bytes in any file fails with EFBIG (SIGXFSZ, which
    would kill the process, is ignored meanwhile), as a full disk or a scheduler's file-size limit does."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def no_temporary_left(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if ".tmp" in p.name)

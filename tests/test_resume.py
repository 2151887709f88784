"""Exact resume: a training process killed with SIGKILL mid-run and started again produces the same
subsequent losses and the same final weights, bit for bit, as a run that was never interrupted (CPU)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundry.checkpoint import load_state
from foundry.train import read_metrics, train
from train_helpers import tiny_config, write_char_dataset

REPO = Path(__file__).resolve().parents[1]
RUN = {"training.max_iters": 150, "training.eval_interval": 40, "training.log_interval": 1,
       "training.eval_iters": 1, "training.sample_tokens": 0, "model_args.dropout": 0.1}  # dropout: RNG state matters


def losses(run_dir, after):
    return {r["iter"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and r["iter"] > after}


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    data = write_char_dataset(tmp_path / "data")
    killed = tmp_path / "killed"
    exp = tmp_path / "tiny.yaml"
    exp.write_text(tiny_config(data, killed, **RUN).to_yaml())
    cmd = [sys.executable, "-m", "foundry.train", str(exp), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE)
    # kill a little after the first checkpoint (iteration 40), while the process is still training
    deadline = time.time() + 240
    while time.time() < deadline:
        rows = read_metrics(killed / "metrics.jsonl")
        if (killed / "ckpt_last").exists() and any(r.get("iter", 0) >= 47 for r in rows):
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    else:
        proc.kill()
        pytest.fail("training made no progress within 240 s")
    assert proc.poll() is None, "the run must still be going when it is killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt_iter = load_state(killed / "ckpt_last")["iter"]
    assert 40 <= ckpt_iter < 150
    seen_before_resume = max(r.get("iter", 0) for r in read_metrics(killed / "metrics.jsonl"))
    assert seen_before_resume > ckpt_iter  # there was un-checkpointed progress to redo

    # resume by re-running the same command (as --resume does)
    done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    # the uninterrupted reference, in this process (same thread count: training.num_threads=1)
    clean = tmp_path / "clean"
    train(tiny_config(data, clean, **RUN), quiet=True)

    a, b = losses(clean, ckpt_iter), losses(killed, ckpt_iter)
    assert list(b) == list(range(ckpt_iter + 1, 151))  # the redone lines replaced the lost ones, no duplicates
    assert a == b  # bit-identical floats
    wa = load_file(str(clean / "ckpt_last" / "model.safetensors"))
    wb = load_file(str(killed / "ckpt_last" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ea = [r for r in read_metrics(clean / "metrics.jsonl") if "val_loss" in r]
    eb = [r for r in read_metrics(killed / "metrics.jsonl") if "val_loss" in r]
    assert ea == eb

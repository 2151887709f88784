"""SIGTERM, what a cluster scheduler sends before it kills a job: training checkpoints after the step in
flight and exits (143) within a bounded time, and the same command continues bit-identically; a sweep stops
its workers, exits, and the same command resumes it without re-running finished trials."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faults_helpers import RUN, assert_same_run, run_config
from foundry.checkpoint import inspect_checkpoint
from foundry.train import main as train_main
from foundry.train import read_metrics, train
from train_helpers import tiny_overrides, write_char_dataset

LONG = {**RUN, "training.eval_interval": 50}  # 60 iterations: caught between the checkpoints at 0 and 50


def test_sigterm_during_training_checkpoints_exits_and_the_same_command_continues(tmp_path, capsys):
    data = write_char_dataset(tmp_path / "data")
    run = tmp_path / "run"
    exp = tmp_path / "exp.yaml"
    exp.write_text("base_model: v1\n")
    argv = [str(exp), "--quiet", "--no-store", *tiny_overrides(data, run, **LONG)]
    sent = []

    def scheduler():  # SIGTERM to this process once training is under way; Python runs the handler in the
        deadline = time.time() + 240  # main thread, inside the training loop, as in a job's process
        while time.time() < deadline and not any(r.get("iter", 0) >= 5 for r in read_metrics(run / "metrics.jsonl")):
            time.sleep(0.005)
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGTERM)

    old = signal.signal(signal.SIGTERM, lambda *a: None)  # a SIGTERM after training must not end pytest
    try:
        t = threading.Thread(target=scheduler, daemon=True)
        t.start()
        rc = train_main(argv)
        stopped_in = time.perf_counter() - sent[0]
        t.join()
    finally:
        signal.signal(signal.SIGTERM, old)
    err = capsys.readouterr().err
    assert rc == 143, err[-2000:]
    assert stopped_in < 30  # one step, a checkpoint and the return; not the rest of the run
    assert "Traceback" not in err and "stopped by SIGTERM at iteration " in err
    stop_iter = int(err.split("stopped by SIGTERM at iteration ")[1].split(",")[0])
    assert 5 <= stop_iter < 50                                   # between two evaluation checkpoints
    assert inspect_checkpoint(run / "ckpt_last").iter == stop_iter and f"checkpoint saved in {run / 'ckpt_last'}" in err
    assert max(r.get("iter", 0) for r in read_metrics(run / "metrics.jsonl")) == stop_iter

    assert train_main(argv) == 0                                 # the same command
    ref = tmp_path / "reference"
    train(run_config(data, ref, **LONG), quiet=True)
    assert_same_run(ref, run, after=stop_iter)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_sigterm_stops_a_sweep_and_its_workers_and_the_same_command_resumes(tmp_path):
    import sqlite3

    from test_sweep import tiny_base

    base = tiny_base(tmp_path)
    out, db = tmp_path / "sweep", tmp_path / "store.sqlite"
    cmd = [sys.executable, "-m", "foundry.cli.sweep", "lr", "x10", "--base", str(base), "--seeds", "1",
           "--jobs", "1", "--threads", "1", "--out", str(out), "--store", str(db), "--progress", "1000"]

    def done():
        try:
            con = sqlite3.connect(db, timeout=5)
            rows = dict(con.execute("SELECT id, updated FROM runs WHERE status = 'done'").fetchall())
            con.close()
            return rows
        except sqlite3.Error:
            return {}

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 150
    while len(done()) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)  # a scheduler signals the whole job: the sweep and its workers
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "interrupted by SIGTERM: finished trials are recorded" in text, text[-2000:]
    assert "Traceback" not in text
    time.sleep(0.5)
    assert workers and not any(_alive(p) for p in workers)  # no worker left training
    before = done()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and f"{len(before)} trial(s) already recorded as finished" in r.stdout, r.stdout[-2000:]
    after = done()
    assert len(after) == 2 and all(after[t] == u for t, u in before.items())  # the baseline and lr x10


@pytest.mark.slow
def test_sigterm_under_torchrun_stops_every_rank_at_the_same_step_with_one_checkpoint(tmp_path):
    """torchrun forwards SIGTERM to its workers; they agree on the step (at a log step), write one
    checkpoint together (rank 0 writes) and exit; the same experiment continues from it."""
    data = write_char_dataset(tmp_path / "data")
    run = tmp_path / "run"
    exp = tmp_path / "exp.yaml"
    exp.write_text("base_model: v1\n")
    sets = tiny_overrides(data, run, **{**LONG, "training.distributed": "ddp"})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "foundry.train",
           str(exp), "--quiet", "--no-store", *sets]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(r.get("iter", 0) >= 5 for r in read_metrics(run / "metrics.jsonl")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # to the launcher, as a scheduler would
    text = proc.communicate(timeout=120)[0]
    stops = [int(x.split(",")[0]) for x in text.split("stopped by SIGTERM at iteration ")[1:]]
    assert len(stops) == 1, text[-3000:]                        # reported once (rank 0), for both ranks
    info = inspect_checkpoint(run / "ckpt_last")
    assert info.intact and info.iter == stops[0] < 50           # one checkpoint of that step, between evaluations
    assert max(r.get("iter", 0) for r in read_metrics(run / "metrics.jsonl")) == stops[0]
    summary = train(run_config(data, run, **{**LONG, "training.distributed": "ddp"}), quiet=True)  # 1 process
    assert summary["iters"] == 60 and min(r["iter"] for r in read_metrics(run / "metrics.jsonl")
                                           if "loss" in r and r["iter"] > stops[0]) == stops[0] + 1

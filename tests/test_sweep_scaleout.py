"""Successive halving prunes hopeless mutants against the paired baseline curve at a fraction of the
compute; trials also run through submitit's local executor and a local Ray instance (when installed)."""
from __future__ import annotations

import json
import sqlite3

import pytest

from foundry.sweep.runner import SweepOptions, run_sweep
from conftest import require_extra
from tests.test_sweep import tiny_base


def test_successive_halving_prunes_and_keeps_the_winner(tmp_path):
    out, db = tmp_path / "sw", tmp_path / "s.sqlite"
    res = run_sweep(SweepOptions(type="lr", variants=["x0.01", "x0.1", "x10", "x0.03"], base=str(tiny_base(tmp_path)),
                                 seeds=1, jobs=2, out=str(out), store=str(db), halving=True, eta=3, rungs=2,
                                 quiet=True))
    statuses = dict(sqlite3.connect(db).execute("SELECT label, status FROM runs").fetchall())
    # rung 1 at 60 / 3 = 20 iterations: 4 mutants -> ceil(4 / 3) = 2 go on, the others are pruned there
    assert sorted(k for k, s in statuses.items() if s == "pruned") == ["lr_x0.01", "lr_x0.03"]
    assert statuses["lr_x10"] == statuses["baseline"] == "done"
    assert res["ranking"][0] == "lr_x10"
    # 5 x 20 + 3 x 40 iterations of 5 x 60: 73% of the compute
    assert res["compute"]["fraction"] == pytest.approx(220 / 300)
    report = (out / "report.md").read_text()
    assert "| pruned | - | - | - | pruned at iteration 20 by successive halving" in report
    assert "successive halving: eta 3, 2 rungs" in report


def test_submitit_local_executor(tmp_path):
    require_extra("submitit", "submitit")
    out = tmp_path / "sw"
    res = run_sweep(SweepOptions(type="lr", variants=["x10"], base=str(tiny_base(tmp_path)), seeds=1, jobs=2,
                                 out=str(out), store=str(tmp_path / "s.sqlite"), executor="submitit", cluster="local",
                                 budget="tokens=5120", quiet=True))
    assert set(res["ranking"]) == {"baseline", "lr_x10"}
    assert all(r["status"] == "done" and r["iters"] == [20] for r in res["results"].values())
    assert list((out / "submitit").glob("*_log.out"))  # submitit ran the jobs and kept their logs


def test_ray_local_instance(tmp_path):
    require_extra("ray", "ray")
    out = tmp_path / "sw"
    res = run_sweep(SweepOptions(type="lr", variants=["x10"], base=str(tiny_base(tmp_path)), seeds=1, jobs=2,
                                 out=str(out), store=str(tmp_path / "s.sqlite"), executor="ray",
                                 budget="tokens=5120", quiet=True))
    assert all(r["status"] == "done" for r in res["results"].values())
    assert json.loads((out / "results.json").read_text())["ranking"]


def test_a_trial_gives_the_same_numbers_in_any_worker_and_order(tmp_path):
    """Workers live for the whole sweep and keep their data between trials: a trial run second in a worker
    (after another trial, its data then from the worker's cache) gives exactly the numbers it gives as the
    first trial of a fresh worker process."""
    import yaml

    from foundry.config import load_experiment
    from foundry.sweep.executors import LocalExecutor

    base = load_experiment(tiny_base(tmp_path))

    def spec(name: str, seed: int, lr: float) -> dict:
        cfg = base.replace({"out_dir": str(tmp_path / name), "training.seed": seed, "training.learning_rate": lr})
        return {"id": name, "store": str(tmp_path / "s.sqlite"), "config": cfg.to_yaml(), "threads": 1}

    def run(specs: list[dict]) -> dict:
        ex = LocalExecutor(1)
        try:
            results = [ex.submit(s).result() for s in specs]  # one worker: in this order
            return {r["id"]: r["metrics"] for r in results if r["status"] == "done"}
        finally:
            ex.shutdown()

    warm = run([spec("other", 5, 3e-3), spec("a_after", 11, 1e-3)])
    fresh = run([spec("a_fresh", 11, 1e-3)])
    assert set(warm) == {"other", "a_after"} and set(fresh) == {"a_fresh"}
    a, b = warm["a_after"], fresh["a_fresh"]
    assert (a["val_loss"], a["best_val_loss"], a["evals"]) == (b["val_loss"], b["best_val_loss"], b["evals"])
    assert warm["other"]["val_loss"] != a["val_loss"]
    assert yaml.safe_load(spec("x", 1, 1e-3)["config"])["training"]["seed"] == 1  # the override took

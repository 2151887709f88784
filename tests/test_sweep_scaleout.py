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

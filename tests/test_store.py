"""The experiment store: what a run records, concurrent writers, and a SIGKILL mid-write."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from foundry.store import Store, code_version, main

PY = sys.executable


def test_records_everything_a_run_needs(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    s.start("sw/base/s1", "training: {seed: 1}\n", "abc123", seed=1, sweep="sw", label="base",
            artifacts={"out_dir": "runs/x"})
    row = s.get("sw/base/s1")
    assert row["status"] == "running" and row["seed"] == 1 and row["config_hash"] == "abc123"
    sha, dirty = code_version()
    assert row["git_sha"] == sha and row["git_dirty"] == dirty
    if sha is not None:  # in a checkout: the full SHA and a dirty flag; elsewhere both None, never junk
        assert len(sha) == 40 and dirty in (True, False)
    s.start("sw/mut/s1", "x: 1\n", "def456", seed=1, sweep="sw", parent="sw/base/s1", mutation="lr x2")
    s.finish("sw/base/s1", {"val_bpb": 2.5}, wall_seconds=3.0)
    s.fail("sw/mut/s1", "FloatingPointError: nan")
    row = s.get("sw/base/s1")
    assert row["status"] == "done" and row["metrics"] == {"val_bpb": 2.5} and row["wall_seconds"] == 3.0
    assert row["artifacts"] == {"out_dir": "runs/x"}
    mut = s.get("sw/mut/s1")
    assert mut["status"] == "failed" and "nan" in mut["error"] and mut["parent"] == "sw/base/s1"
    assert mut["mutation"] == "lr x2"
    s.prune("sw/mut/s1")
    assert [r["id"] for r in s.runs(sweep="sw", status="pruned")] == ["sw/mut/s1"]
    # restarting a run (resume) resets its status but keeps when it was created
    created = s.get("sw/base/s1")["created"]
    s.start("sw/base/s1", "training: {seed: 1}\n", "abc123", seed=1, sweep="sw")
    assert s.get("sw/base/s1")["status"] == "running" and s.get("sw/base/s1")["created"] == created
    with pytest.raises(ValueError, match="status"):
        s.set_status("sw/base/s1", "finished")
    with pytest.raises(KeyError):
        s.finish("nope", {})
    s.record_promotion("sw", "mut", "lr x2", "experiments/champion.yaml", {"p": 0.01})
    assert s.promotions("sw")[0]["decision"] == {"p": 0.01}
    assert s.integrity() == "ok"
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


_WRITER = """
import sys, time
from foundry.store import Store
s = Store(sys.argv[1]); tag = sys.argv[2]; n = int(sys.argv[3])
for i in range(n):
    rid = f"{tag}/{i}"
    s.start(rid, "cfg: 1\\n", "h", seed=i, sweep=tag, code=("0" * 40, False))
    s.finish(rid, {"i": i, "tag": tag}, wall_seconds=0.1)
    print(i, flush=True)
"""


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "s.sqlite"
    Store(db).close()
    procs = [subprocess.Popen([PY, "-c", _WRITER, str(db), f"w{k}", "40"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for k in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    s = Store(db)
    rows = s.runs()
    assert len(rows) == 160 and all(r["status"] == "done" for r in rows)
    assert {r["metrics"]["tag"] for r in rows} == {"w0", "w1", "w2", "w3"}
    assert s.integrity() == "ok"


def test_sigkill_mid_write_leaves_the_store_intact(tmp_path):
    db = tmp_path / "s.sqlite"
    Store(db).close()
    p = subprocess.Popen([PY, "-c", _WRITER, str(db), "k", "100000"], stdout=subprocess.PIPE, text=True)
    acked = -1
    deadline = time.time() + 60
    while acked < 30 and time.time() < deadline:
        acked = int(p.stdout.readline())
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    s = Store(db)
    assert s.integrity() == "ok"
    done = [r for r in s.runs(sweep="k") if r["status"] == "done"]
    # every run the writer saw committed is there, complete; at most the one in flight is left running
    assert len(done) >= acked + 1
    assert all(r["metrics"] == {"i": r["seed"], "tag": "k"} for r in done)
    assert len(s.runs(sweep="k")) - len(done) <= 1
    s.start("after", "x: 1\n", "h")  # and it is writable again
    assert s.get("after")["status"] == "running"


def test_cli_lists_and_shows(tmp_path, capsys):
    db = tmp_path / "s.sqlite"
    s = Store(db)
    s.start("sw/base/s7", "x: 1\n", "h", seed=7, sweep="sw")
    s.finish("sw/base/s7", {"val_bpb": 1.2345}, wall_seconds=2.0)
    assert main(["--store", str(db), "list"]) == 0
    out = capsys.readouterr().out
    assert "sw/base/s7" in out and "1.2345" in out and "done" in out
    assert main(["--store", str(db), "show", "sw/base/s7"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 7
    assert main(["--store", str(tmp_path / "none.sqlite"), "list"]) == 2


def test_recorded_run_records_success_and_failure(tmp_path):
    from foundry.config import from_dict
    from foundry.store import recorded_run
    db = tmp_path / "s.sqlite"
    cfg = from_dict({"training": {"seed": 7}, "out_dir": "runs/x", "lineage": {"mutation": "lr x2", "parent": "b"}})
    with recorded_run(cfg, db, run_id="ok") as rec:
        rec.metrics = {"val_bpb": 1.5, "out_dir": "runs/x", "nested": {"skip": 1}}
    with pytest.raises(FloatingPointError):
        with recorded_run(cfg, db, run_id="bad"):
            raise FloatingPointError("loss became nan")
    s = Store(db)
    ok, bad = s.get("ok"), s.get("bad")
    assert ok["status"] == "done" and ok["metrics"] == {"val_bpb": 1.5, "out_dir": "runs/x"}
    assert ok["mutation"] == "lr x2" and ok["parent"] == "b" and ok["seed"] == 7 and ok["config_hash"] == cfg.hash()
    assert bad["status"] == "failed" and "loss became nan" in bad["error"] and bad["wall_seconds"] is not None

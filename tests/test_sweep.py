"""The judged sweep: a planted search (one mutant better by construction, one worse, one that fails) on a
tiny config, SIGKILLed mid-way and resumed without re-running finished trials; it writes its report and
promotes the planted winner once fresh confirmation seeds show a gain beyond the margin."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from foundry.config import load_experiment

PY = sys.executable

# A tiny model whose learning rate is 10x too small for a 60-step budget: `lr x10` wins by construction,
# `lr x0.01` loses by construction, and `lr 1e6` diverges (a trial that fails to train).
TINY = """\
base_model: v1
model_args: {n_layer: 2, n_head: 2, n_embd: 32, block_size: 32, bias: false}
training: {max_iters: 60, learning_rate: 3.0e-4, min_lr: 3.0e-5, batch_size: 8, warmup_iters: 10,
           eval_interval: 30, eval_iters: 2, log_interval: 10, sample_tokens: 0}
out_dir: runs/tiny
"""


def tiny_base(tmp_path: Path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(TINY)
    return p


def _done_rows(db: Path) -> dict[str, float]:
    if not db.is_file():
        return {}
    try:
        con = sqlite3.connect(db, timeout=5)
        rows = con.execute("SELECT id, updated FROM runs WHERE status = 'done'").fetchall()
        con.close()
        return dict(rows)
    except sqlite3.OperationalError:
        return {}


def test_planted_sweep_killed_resumed_promotes_the_better_mutant(tmp_path):
    base = tiny_base(tmp_path)
    out, db, exps = tmp_path / "sweep", tmp_path / "store.sqlite", tmp_path / "experiments"
    cmd = [PY, "-m", "foundry.cli.sweep", "lr", "x0.01", "x10", "1e6", "--base", str(base), "--seeds", "2",
           "--jobs", "2", "--out", str(out), "--store", str(db), "--experiments", str(exps), "--promote",
           "--progress", "1000"]

    # ---- run, and SIGKILL the sweep once some trials are finished ----------------------------------
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 150
    while len(_done_rows(db)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "the sweep finished before it could be killed:\n" + proc.stdout.read()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _done_rows(db)
    assert 3 <= len(before) < 10, before
    files = {tid: (out / "trials" / tid.split("/")[1] / tid.split("/")[2] / "metrics.jsonl") for tid in before}
    sizes = {tid: f.stat().st_size for tid, f in files.items()}
    # the workers died with the sweep (no orphan keeps training into the trial directories)
    grow = {f: f.stat().st_size for f in (out / "trials").rglob("metrics.jsonl")}
    time.sleep(2.0)
    assert grow == {f: f.stat().st_size for f in (out / "trials").rglob("metrics.jsonl")}
    assert not (out / "report.md").exists()

    # ---- the same command again resumes ----------------------------------------------------------
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming sweep" in r.stdout and "already recorded as finished: not re-run" in r.stdout
    after = _done_rows(db)
    for tid, updated in before.items():  # finished trials were not re-run: same record, same log
        assert after[tid] == updated, tid
        assert files[tid].stat().st_size == sizes[tid], tid

    # ---- the planted answer, the failure, the report ---------------------------------------------
    res = json.loads((out / "results.json").read_text())
    assert res["ranking"][0] == "lr_x10" and res["ranking"][-1] == "lr_x0.01"
    dec = res["decision"]
    assert dec["promote"] and dec["winner"] == "lr_x10" and dec["test"]["p"] < 0.05 and dec["test"]["n"] == 2
    assert dec["test"]["mean"] > dec["margin"] > 0 and dec["screening"]["lr_x10"]["n"] == 2
    assert dec["noise"]["paired_sd"] > 0 and dec["noise"]["detectable_80"] > dec["margin"]
    assert res["results"]["lr_1e6"]["status"] == "failed" and "non-finite" in res["results"]["lr_1e6"]["error"]
    champ = load_experiment(exps / "champion.yaml")
    assert champ.training.learning_rate == pytest.approx(3e-3)
    assert champ.lineage["mutation"] == "lr x10" and champ.lineage["promoted"]["test"]["p"] < 0.05
    report = (out / "report.md").read_text()
    for text in ("## Ranking", "## Decision", "PROMOTE lr_x10", "paired t-test", "lr_1e6 | lr 1e6 | failed",
                 "loss_curves.png", "metrics.png", "ranking by validation bits per byte", "fresh seeds",
                 "Correction for multiple mutants", "detectable gain at 80% power", "95% CI"):
        assert text in report, text
    for png in ("loss_curves.png", "metrics.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "decision: PROMOTE lr_x10" in r.stdout and "rule: select the mutant with the largest" in r.stdout
    assert "correction: none needed" in r.stdout and "noise floor: paired seed-to-seed SD" in r.stdout

    # ---- every trial is in the store, with its lineage and code version ----------------------------
    con = sqlite3.connect(db)
    rows = con.execute("SELECT label, status, parent, git_sha, config_hash, artifacts FROM runs").fetchall()
    assert len(rows) == 12  # 4 candidates x 2 screening seeds + the winner and the baseline on 2 fresh seeds
    stored = json.loads(con.execute("SELECT decision FROM decisions").fetchone()[0])
    assert stored["rule"] == dec["rule"] and stored["margin"] == dec["margin"] and stored["test"]["n"] == 2
    assert {(lab, st) for lab, st, *_ in rows} == {("baseline", "done"), ("lr_x0.01", "done"), ("lr_x10", "done"),
                                                    ("lr_1e6", "failed")}
    from foundry.store import code_version
    in_checkout = code_version()[0] is not None  # (other commits may land while the test runs: no exact SHA)
    assert all((len(sha) == 40) if in_checkout else sha is None for *_, sha, _, _ in rows)
    assert all(p and "/baseline/s" in p for lab, _, p, *_ in rows if lab != "baseline")

    # ---- a third run re-runs nothing and does not promote twice -----------------------------------
    r3 = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    skipped = sum(int(n) for n in re.findall(r"(\d+) trial\(s\) already recorded as finished", r3.stdout))
    assert r3.returncode == 0 and skipped == 12 and _done_rows(db) == after  # every stage found its trials done
    assert con.execute("SELECT COUNT(*) FROM promotions").fetchone()[0] == 1
    assert not (exps / "champion.1.yaml").exists()


def test_ctrl_c_stops_the_sweep_and_its_workers_then_resumes(tmp_path):
    base = tiny_base(tmp_path)
    out, db = tmp_path / "sweep", tmp_path / "store.sqlite"
    cmd = [PY, "-m", "foundry.cli.sweep", "lr", "x10", "x3", "--base", str(base), "--seeds", "1", "--jobs", "1",
           "--threads", "1", "--out", str(out), "--store", str(db), "--progress", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 150
    while len(_done_rows(db)) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.stdout.read()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: SIGINT to the terminal's foreground process group
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: finished trials are recorded" in text
    before = _done_rows(db)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and f"{len(before)} trial(s) already recorded as finished" in r.stdout
    after = _done_rows(db)
    assert len(after) == 3 and all(after[t] == u for t, u in before.items())

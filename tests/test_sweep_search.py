"""--search tpe and gp (Optuna) over a numeric range, resumed without re-running its trials; --adaptive seeds end to
end on a planted sweep; a capability gain's per-item, per-seed samples read from the eval's item files."""
from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest

from foundry.sweep.runner import SweepOptions, run_sweep
from tests.test_sweep import tiny_base


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna not installed (pip install "
                                                                       "'foundry[search]')")
@pytest.mark.parametrize("sampler", ["tpe", "gp"])
def test_search_trains_trials_in_range_and_resumes(tmp_path, sampler):
    opts = dict(type="lr", variants=["x3", "x30"], base=str(tiny_base(tmp_path)), seeds=2, jobs=2,
                out=str(tmp_path / "sw"), store=str(tmp_path / "s.sqlite"), search=sampler, trials=3,
                budget="tokens=5120", quiet=True)
    res = run_sweep(SweepOptions(**opts))
    state = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    values = [e["value"] for e in state["search"]]
    assert len(values) == 3 and all(9e-4 <= v <= 9e-3 for v in values)  # 3e-4 x3 .. x30
    trials = [e["label"] for e in state["search"]]
    assert all(res["results"][k]["status"] == "done" and res["results"][k]["iters"] == [20, 20] for k in trials)
    assert set(trials) <= set(res["ranking"]) and res["decision"]["winner"] in trials
    assert res["decision"]["rule"].startswith("select the mutant")  # the same promotion rule as a grid sweep
    rows = {r["id"]: r["updated"] for r in _rows(tmp_path / "s.sqlite")}
    again = run_sweep(SweepOptions(**opts))  # resumed: the recorded trials are replayed, nothing retrains
    assert {r["id"]: r["updated"] for r in _rows(tmp_path / "s.sqlite")} == rows
    assert again["decision"]["winner"] == res["decision"]["winner"]


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna not installed (pip install "
                                                                       "'foundry[search]')")
def test_tpe_with_halving_scores_trials_at_the_first_rung_and_trains_the_best_in_full(tmp_path):
    from foundry.sweep.search import SPACES, startup_values
    opts = dict(type="lr", variants=["x3", "x30"], base=str(tiny_base(tmp_path)), seeds=2, jobs=2,
                out=str(tmp_path / "sw"), store=str(tmp_path / "s.sqlite"), search="tpe", trials=3, halving=True,
                eta=3, budget="tokens=5120", quiet=True)
    res = run_sweep(SweepOptions(**opts))
    state = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    values = [e["value"] for e in state["search"]]
    # the start is an even cover of the log range (quantiles 1/4, 3/4 of 3e-4 x3 .. x30), then TPE
    assert values[:2] == pytest.approx(startup_values(SPACES["lr"], 9e-4, 9e-3, 2)) and len(values) == 3
    trials = [e["label"] for e in state["search"]]
    status = {k: res["results"][k]["status"] for k in trials}
    full = [k for k in trials if status[k] == "done"]
    assert len(full) == 1 and sorted(status.values()) == ["done", "pruned", "pruned"]  # ceil(3 / eta) in full
    assert res["decision"]["winner"] == full[0]
    # compute per seed: 3 trials to the rung (7 of 20 iterations), one of them on to 20, the baseline in full
    tokens = 2 * (3 * 7 + 13 + 20) * 256 + (4 * 20 * 256 if res["decision"]["test"] else 0)
    assert res["compute"]["tokens"] == tokens
    rows = {r["id"]: r["updated"] for r in _rows(tmp_path / "s.sqlite")}
    again = run_sweep(SweepOptions(**opts))  # resumed: the recorded trials are replayed, nothing retrains
    assert {r["id"]: r["updated"] for r in _rows(tmp_path / "s.sqlite")} == rows
    assert again["decision"]["winner"] == res["decision"]["winner"]


def _rows(db):
    from foundry.store import Store
    s = Store(db)
    try:
        return s.runs()
    finally:
        s.close()


def test_adaptive_seeds_stop_early_and_promote_the_planted_winner(tmp_path):
    res = run_sweep(SweepOptions(type="lr", variants=["x10", "x0.01"], base=str(tiny_base(tmp_path)), seeds=4,
                                 confirm_seeds=4, adaptive=True, jobs=2, out=str(tmp_path / "sw"),
                                 store=str(tmp_path / "s.sqlite"), budget="tokens=7680", quiet=True))
    dec = res["decision"]
    assert dec["promote"] and dec["winner"] == "lr_x10"
    # screening stopped at 2 seeds (x0.01 clearly worse, x10 clearly best); confirmation at its first look (3)
    assert dec["screen_seeds"] == {"baseline": 2, "lr_x10": 2, "lr_x0.01": 2} and dec["test"]["n"] == 3
    assert dec["test"]["looks"] == [3, 4] and dec["test"]["t_crit"] == dec["test"]["bounds"][0]
    c = res["compute"]
    assert c["tokens"] == (3 * 2 + 2 * 3) * 7680 and c["fixed_tokens"] == (3 * 4 + 2 * 4) * 7680
    assert "adaptive seeds spent 60% of the fixed design" in c["text"]


def test_item_gains_pair_items_and_seeds_and_weight_tasks_equally(tmp_path):
    from foundry.sweep.results import item_gains

    def files(tag, task, correct):
        paths = []
        for s, row in enumerate(correct):
            p = tmp_path / f"{tag}_{task}_{s}.jsonl"
            p.write_text("".join(json.dumps({"id": f"{task}/{i}", "correct": c}) + "\n" for i, c in enumerate(row)))
            paths.append(str(p))
        return paths

    def res(tag, a, b):
        return {"seed_index": [0, 1], "tasks": {"a": {"items": files(tag, "a", a)}, "b": {"items": files(tag, "b", b)}}}

    base = res("base", [[1, 0], [0, 0]], [[1, 1, 1, 0], [0, 1, 1, 0]])
    cand = res("cand", [[1, 1], [1, 0]], [[1, 1, 1, 1], [0, 1, 1, 0]])
    D = item_gains(base, cand, {"tasks": ["a", "b"]}, [0, 1])
    assert D.shape == (2, 6)
    # mean task score gain: task a +0.5 on both seeds, task b +0.25 then 0 -> (0.5 + 0.125) / 2
    assert D.mean() == pytest.approx((0.5 + 0.125) / 2) and np.allclose(D.mean(axis=1), [0.375, 0.25])
    (tmp_path / "cand_b_1.jsonl").write_text(json.dumps({"id": "other", "correct": 1}) + "\n")
    assert item_gains(base, cand, {"tasks": ["a", "b"]}, [0, 1]) is None  # items not shared: no per-item test
    assert not math.isnan(D.std())

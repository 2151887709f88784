"""lr_finder: the exponential ramp, the bias-corrected smoothing, divergence stop, suggestion, plot, --apply."""
from __future__ import annotations

import json
import math

import pytest

from foundry.cli.lr_finder import lr_schedule, main, smooth, suggest
from foundry.config import load_experiment
from tests.test_sweep import tiny_base


def test_ramp_and_smoothing_against_direct_formulas():
    lrs = lr_schedule(1e-5, 1e-1, 5)
    assert lrs == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    xs = [4.0, 3.0, 5.0, 2.0]
    beta = 0.9
    naive = []
    for i in range(len(xs)):  # the debiased EMA is the weighted mean with weights beta^(i-j)
        w = [beta ** (i - j) for j in range(i + 1)]
        naive.append(sum(wj * xj for wj, xj in zip(w, xs)) / sum(w))
    assert smooth(xs, beta) == pytest.approx(naive)
    assert smooth([3.0] * 4, 0.98) == pytest.approx([3.0] * 4)  # no pull towards 0 at the start


def test_suggestion_on_a_known_curve():
    lrs = lr_schedule(1e-6, 1.0, 61)
    # descends fastest at lr = 1e-4 (tanh), flat until 1e-2, then rises steeply: the minimum is at 1e-2
    losses = [3 - math.tanh(math.log10(lr) + 4) + (0.0 if lr <= 1e-2 else 50 * (math.log10(lr) + 2) ** 2)
              for lr in lrs]
    s = suggest(lrs, losses)
    assert s["min_loss_lr"] == pytest.approx(1e-2, rel=0.3)
    assert s["suggested_lr"] == pytest.approx(s["min_loss_lr"] / 10)
    assert s["steepest_lr"] == pytest.approx(1e-4, rel=0.3)


def test_range_test_stops_at_divergence_and_apply_writes_an_experiment(tmp_path, capsys):
    base = tiny_base(tmp_path)
    exps = tmp_path / "experiments"
    rc = main([str(base), "--steps", "40", "--min-lr", "1e-4", "--max-lr", "100", "--threads", "1",
               "--out", str(tmp_path / "lrf"), "--apply", "--experiments", str(exps)])
    assert rc == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "lrf" / "lr_finder.json").read_text())
    assert res["steps_run"] < 40 and ("exceeded" in res["stop"] or "non-finite" in res["stop"])
    assert 1e-4 < res["suggested_lr"] < 1.0 and res["suggested_lr"] == pytest.approx(res["min_loss_lr"] / 10)
    assert (tmp_path / "lrf" / "lr_finder.png").read_bytes()[:4] == b"\x89PNG"
    written = out.strip().splitlines()[-1]
    cfg = load_experiment(written)
    assert cfg.training.learning_rate == pytest.approx(float(f"{res['suggested_lr']:.3g}"))
    assert cfg.lineage["mutation"].startswith("lr ") and cfg.lineage["lr_finder"]["steps_run"] == res["steps_run"]


def test_bad_arguments(tmp_path, capsys):
    assert main([str(tiny_base(tmp_path)), "--min-lr", "1", "--max-lr", "0.1"]) == 2
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "no such experiment" in capsys.readouterr().err

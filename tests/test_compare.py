"""compare: config differences only, metrics, paired statistics (by seed for groups, by shared evaluation
points for single runs), and a plot."""
from __future__ import annotations

import pytest

from foundry.cli.compare import main
from foundry.config import load_experiment
from foundry.train import train
from tests.test_sweep import tiny_base


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    base = load_experiment(tiny_base(tmp), ["training.max_iters=30", "training.eval_interval=10",
                                            "training.num_threads=1"])
    out = {}
    for lr in ("3.0e-4", "3.0e-3"):
        for seed in (1, 2):
            cfg = base.replace({"training.learning_rate": float(lr), "training.seed": seed,
                                "out_dir": str(tmp / f"lr{lr}" / f"s{seed}")})
            train(cfg, quiet=True)
            out[(lr, seed)] = cfg.out_dir
    return out


def test_two_runs_diff_metrics_curve_stats_plot(runs, tmp_path, capsys):
    a, b = runs[("3.0e-4", 1)], runs[("3.0e-3", 1)]
    assert main([a, b, "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    diff = out.split("== config (differences only) ==")[1].split("== metrics ==")[0]
    assert "training.learning_rate" in diff and "0.0003" in diff and "0.003" in diff
    assert "n_embd" not in diff and "out_dir" not in diff  # only what differs
    assert "val_bpb" in out and "shared evaluation points" in out and "descriptive" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_groups_are_paired_by_seed(runs, capsys):
    assert main([runs[("3.0e-4", 1)], runs[("3.0e-4", 2)], runs[("3.0e-3", 1)], runs[("3.0e-3", 2)],
                 "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "paired over seeds [1, 2]" in out and "one-sided p" in out
    assert "training.seed" in out  # the seeds differ within the groups


def test_not_a_run_directory(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err

"""The sweep with a capability task: each trial is scored by the eval harness; a tiny model sits at chance on
MMLU, so the task is set aside out loud and bits per byte ranks."""
from __future__ import annotations

import json

from foundry.cli.sweep import main
from tests.conftest import shared_file
from tests.test_sweep import tiny_base


def test_tasks_at_chance_fall_back_to_bpb_out_loud(tmp_path, capsys):
    data = shared_file("mmlu/mmlu_test.jsonl").parents[1]
    out = tmp_path / "sw"
    rc = main(["lr", "x10", "--base", str(tiny_base(tmp_path)), "--seeds", "2", "--jobs", "2",
               "--set", "training.max_iters=30", "--eval-task", "mmlu", "--eval-limit", "8",
               "--eval-data", str(data), "--out", str(out), "--store", str(tmp_path / "s.sqlite"),
               "--progress", "1000"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for cand in ("baseline", "lr_x10"):
        mmlu = res["results"][cand]["tasks"]["mmlu"]
        assert len(mmlu["scores"]) == 2 and mmlu["chance"] == 0.25 and mmlu["n"] == 8
    assert res["how"]["metric"] == "val_bpb" and res["how"]["tasks"] == []
    said = capsys.readouterr().out
    assert "task 'mmlu' cannot tell the candidates apart" in said
    assert "ranking by validation bits per byte instead" in said
    assert "cannot tell the candidates apart" in (out / "report.md").read_text()

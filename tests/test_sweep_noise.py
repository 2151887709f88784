"""A sweep of the baseline against itself under other seeds (the `seed` null mutation) promotes nothing: its
'win' or 'loss' is seed noise, below the margin a rerun with another seed shows."""
from __future__ import annotations

import json

from foundry.cli.sweep import main
from tests.test_sweep import tiny_base


def test_baseline_against_itself_promotes_nothing(tmp_path, capsys):
    out, exps = tmp_path / "sw", tmp_path / "experiments"
    rc = main(["seed", "1000", "--base", str(tiny_base(tmp_path)), "--seeds", "3", "--jobs", "2", "--out", str(out),
               "--store", str(tmp_path / "s.sqlite"), "--experiments", str(exps), "--promote", "--progress", "1000"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    dec = res["decision"]
    assert not dec["promote"] and res["promoted"] is None and not (exps / "champion.yaml").exists()
    assert dec["winner"] == "seed_1000" and dec["screening"]["seed_1000"]["n"] == 3 and dec["margin"] > 0
    if dec["test"] is None:  # its screening gain is below the margin: not worth confirming
        assert "does not gain more than the margin" in dec["text"]
    else:  # confirmed on fresh seeds and called noise
        assert dec["test"]["n"] == 3 and dec["test"]["t"] <= dec["test"]["t_crit"]
    stdout = capsys.readouterr().out
    assert "decision: no promotion" in stdout and "(--promote: the baseline stays)" in stdout
    assert "no promotion" in (out / "report.md").read_text()

"""Probes: seeded and reproducible, well-formed, and each separates a 2-layer attention model from the same
model with attention crippled (each token sees only itself) or removed. Kept small so it runs on a busy CPU."""
from __future__ import annotations

import pytest
import torch

from foundry.config import ModelConfig
from foundry.eval.probes import PROBES, run_probe

TINY = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32)
SMALL = {"mqar": dict(n_pairs=4, n_keys=8, n_values=8), "copy": dict(length=8, n_symbols=8),
         "arithmetic": dict(max_operand=4, n_problems=3)}
TRAIN = dict(steps=150, batch_size=32, lr=1e-2, test_size=128, seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_data_is_seeded_and_well_formed(name):
    p = PROBES.get(name)(**SMALL[name])
    x1, y1 = p.sample(16, torch.Generator().manual_seed(3))
    x2, y2 = p.sample(16, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (16, p.seq_len) and x1.min() >= 0 and x1.max() < p.vocab_size
    asked = y1 != -1
    assert asked.any() and (y1[asked] < p.vocab_size).all()
    # every answer is determined by the context before it: y at t is the input at t+1
    assert torch.equal(y1[:, :-1][asked[:, :-1]], x1[:, 1:][asked[:, :-1]])
    if name == "mqar":  # each queried value is the value paired with that key earlier
        P = p.n_pairs
        for row in x1:
            pairs = dict(zip(row[0:2 * P:2].tolist(), row[1:2 * P:2].tolist()))
            assert all(pairs[q] == v for q, v in zip(row[2 * P::2].tolist(), row[2 * P + 1::2].tolist()))


@pytest.mark.parametrize("name", PROBES.names())
def test_probe_separates_attention_from_crippled_attention(name):
    probe = PROBES.get(name)(**SMALL[name])
    full, _ = run_probe(TINY, probe, **TRAIN)
    crippled, _ = run_probe(TINY, probe, ablation="self", **TRAIN)
    chance = probe.chance
    assert full["score"] > chance + 0.15, (name, full["score"], chance)
    assert crippled["score"] < chance + 0.08, (name, crippled["score"], chance)


def test_removing_attention_also_fails_and_runs_are_reproducible():
    probe = PROBES.get("copy")(**SMALL["copy"])
    short = dict(TRAIN, steps=60)
    removed, _ = run_probe(TINY, probe, ablation="remove", **short)
    assert removed["score"] < probe.chance + 0.08
    a, rows_a = run_probe(TINY, probe, **short)
    b, rows_b = run_probe(TINY, probe, **short)
    assert a["score"] == b["score"] and rows_a == rows_b


def test_probe_task_through_evaluate(tmp_path):
    from foundry.eval import evaluate

    res = evaluate(TINY, ["probe_copy"], limit=32, out_dir=tmp_path,
                   options={"probe_copy": {"steps": 20, "length": 6, "n_symbols": 8}})
    s = res["probe_copy"]
    assert s["n"] == 32 and s["chance"] == pytest.approx(1 / 8) and s["metric"] == "acc"
    with pytest.raises(Exception, match="probe tasks only"):
        evaluate(TINY, ["mmlu"])


def test_probe_tasks_declare_the_chance_their_probe_computes():
    from foundry.eval import get_task, task_names
    from foundry.eval.probes import PROBE_TRAIN_KEYS

    for name in task_names():
        spec = get_task(name)
        if spec.kind != "probe":
            continue
        opts = {k: v for k, v in spec.options.items() if k not in PROBE_TRAIN_KEYS and k != "probe"}
        probe = PROBES.get(spec.options["probe"])(**opts)
        assert spec.chance == pytest.approx(probe.chance, abs=1e-3), name

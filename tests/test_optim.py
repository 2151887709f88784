"""Learning-rate schedules and AdamW parameter groups."""
import math

import pytest
import torch

from foundry.config import ExperimentConfig, TrainingConfig
from foundry.model import GPT
from foundry.optim import build_optimizer, lr_at


def tc(**kw) -> TrainingConfig:
    base = dict(max_iters=100, learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=100)
    return TrainingConfig(**{**base, **kw})


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_warmup_is_linear_and_reaches_peak(schedule):
    c = tc(lr_schedule=schedule)
    warm = [lr_at(i, c) for i in range(10)]
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert warm[0] == pytest.approx(1e-3 / 11)          # nanoGPT's (it + 1) / (warmup + 1)
    assert lr_at(10, c) == pytest.approx(1e-3)


def test_cosine_matches_formula_and_ends_at_min_lr():
    c = tc()
    for it in (10, 25, 55, 99):
        frac = (it - 10) / 90
        assert lr_at(it, c) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * frac)) * 9e-4)
    assert lr_at(100, c) == pytest.approx(1e-4) and lr_at(10_000, c) == pytest.approx(1e-4)
    lrs = [lr_at(i, c) for i in range(10, 101)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))     # monotone decay


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
@pytest.mark.parametrize("warmup,decay", [(100, 100), (150, 100), (0, 1), (0, 100), (1, 1)])
def test_no_edge_case_crash(schedule, warmup, decay):
    """nanoGPT divides by zero when warmup_iters == lr_decay_iters; here every corner gives a finite lr."""
    c = tc(lr_schedule=schedule, warmup_iters=warmup, lr_decay_iters=decay, max_iters=200)
    lrs = [lr_at(i, c) for i in range(0, 201)]
    assert all(math.isfinite(x) and 0 <= x <= 1e-3 + 1e-12 for x in lrs)
    if schedule != "constant":
        assert lrs[-1] == pytest.approx(1e-4)


def test_lr_decay_iters_defaults_to_max_iters():
    c = tc(lr_decay_iters=None, max_iters=50)
    assert lr_at(49, c) > 1e-4 and lr_at(50, c) == pytest.approx(1e-4)


def test_wsd_holds_then_decays_linearly():
    c = tc(lr_schedule="wsd", decay_frac=0.2)  # decays over the last 20 of 100 iterations
    assert lr_at(79, c) == pytest.approx(1e-3)
    assert lr_at(90, c) == pytest.approx(1e-3 + (1e-4 - 1e-3) * 0.5)


def tiny_model(**kw):
    cfg = ExperimentConfig().replace({"model_args.n_layer": 2, "model_args.n_embd": 32, "model_args.n_head": 2,
                                      "model_args.block_size": 16, "model_args.vocab_size": 50, **kw})
    return GPT(cfg.model_args)


@pytest.mark.parametrize("tie", [True, False])
def test_decay_groups_hold_every_parameter_once(tie):
    model = tiny_model(**{"model_args.tie_embeddings": tie, "model_args.bias": True})
    opt = build_optimizer(model, tc(weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each once, tied weight once
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert no_decay["params"], "biases and norm gains must exist and be undecayed"


def test_optimizer_steps_like_reference_adamw():
    """The grouped, foreach/fused AdamW takes the same step as a plain per-parameter torch AdamW."""
    torch.manual_seed(0)
    a = tiny_model()
    b = tiny_model()
    b.load_state_dict(a.state_dict())
    c = tc(weight_decay=0.1, beta2=0.99)
    opt_a = build_optimizer(a, c, "cpu")
    groups = [{"params": [p for p in b.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in b.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt_b = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), foreach=False)
    idx = torch.randint(0, 50, (2, 16))
    for m, o in ((a, opt_a), (b, opt_b)):
        for _ in range(3):
            loss, _ = m(idx, idx)
            loss.backward()
            o.step()
            o.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)

"""Each variant trains: 30 AdamW steps on one fixed batch lower its training loss (a tiny model, CPU).

Cases come from the registries, so a scaffolded or plugin variant is trained here as soon as it exists.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from foundry.config import NORM_PLACEMENTS, ModelConfig, TrainingConfig
from foundry.model import GPT
from foundry.modules import REGISTRIES

B, T, V = 4, 16, 64
TINY = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=T, vocab_size=V)

CASES = ([("attention", n, dict(attention=n, position="rope")) for n in REGISTRIES["attention"].names()]
         + [("position", n, dict(position=n)) for n in REGISTRIES["position"].names()]
         + [("norm", n, dict(norm=n)) for n in REGISTRIES["norm"].names()]
         + [("norm_placement", n, dict(norm_placement=n)) for n in NORM_PLACEMENTS]
         + [("mlp", n, dict(mlp=n)) for n in REGISTRIES["mlp"].names()]
         + [("loss", n, dict()) for n in REGISTRIES["loss"].names()])



@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread; two threads on a loaded 2-core machine are ~100x slower
    (OpenMP barriers spin while their cores are taken)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def train_steps(cfg: ModelConfig, loss_name: str = "ce", steps: int = 30, lr: float = 3e-3) -> list[float]:
    torch.manual_seed(0)
    tc = TrainingConfig(z_loss=1e-4)
    model = GPT(cfg, loss_fn=REGISTRIES["loss"].get(loss_name)(tc)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V, (B, T), generator=g)
    y = torch.randint(0, V, (B, T), generator=g)
    losses = []
    for _ in range(steps):
        loss, _ = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("family, name, overrides", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_variant_lowers_the_loss_on_a_fixed_batch(family, name, overrides):
    cfg = dataclasses.replace(TINY, **overrides)
    cfg.check()
    losses = train_steps(cfg, loss_name=name if family == "loss" else "ce")
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < 0.8 * losses[0], f"{family} {name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"

"""Contract tests generated from the registries: every registered variant (built in, scaffolded under
foundry/modules/variants/, or from a loaded plugin) in every valid attention x position combination, and each
norm x placement, MLP and loss, must

    give (B, T, V) finite logits; let gradients reach every parameter; be causal (later tokens never change
    earlier outputs); survive a state_dict round trip; decode with its KV cache (prefill, a chunk, then one
    token at a time) to the same logits as the full forward; and generate the same tokens with or without it.

A new variant is covered as soon as it is registered: the cases below are built from `REGISTRIES[...].names()`.
`check_model(cfg)` runs all model contracts on one config (tests/test_scaffold.py uses it on a fresh scaffold).
"""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from foundry.config import (BUILTIN_COMPONENTS, NORM_PLACEMENTS, BlockSparseConfig, ConfigError, MLAConfig,
                            ModelConfig, MoEConfig, SlidingWindowConfig, StridedConfig, TrainingConfig)
from foundry.model import GPT
from foundry.modules import REGISTRIES

B, T, V = 2, 16, 64
# Options that make each pattern bite at T = 16 (a window of 4 tokens, blocks of 4, stride 4), so the
# contracts exercise the masks and not only the dense fast path; the "SL" pattern covers local and global layers.
TINY = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=T, vocab_size=V, bias=True,
                   sliding_window=SlidingWindowConfig(window=4, pattern="SL"),
                   block_sparse=BlockSparseConfig(block=4, local_blocks=2, global_blocks=1),
                   strided=StridedConfig(mode="strided", stride=4, summary=1),
                   mla=MLAConfig(kv_rank=12, q_rank=0, rope_head_dim=4),
                   moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=1.25, aux_loss_coef=0.01))


def make_cfg(**kw) -> ModelConfig:
    return dataclasses.replace(TINY, **kw)


def cases() -> list:
    """(id, config overrides) for every combination the contracts cover, read from the registries now."""
    out = [(f"{a}-{p}", dict(attention=a, position=p))
           for a, p in itertools.product(REGISTRIES["attention"].names(), REGISTRIES["position"].names())]
    out += [(f"{n}-{pl}", dict(norm=n, norm_placement=pl))
            for n, pl in itertools.product(REGISTRIES["norm"].names(), NORM_PLACEMENTS)]
    out += [(f"mlp-{m}", dict(mlp=m, position="rope")) for m in REGISTRIES["mlp"].names()]
    # options that apply to every attention: QK-norm and logit soft-capping
    out += [(f"{a}-qknorm-softcap", dict(attention=a, position="rope", qk_norm=True, attn_softcap=5.0))
            for a in REGISTRIES["attention"].names()]
    out += [
        ("gqa-mqa", dict(attention="gqa", n_kv_head=1, position="rope")),
        ("mha-grouped", dict(attention="mha", n_kv_head=2)),
        ("strided-fixed", dict(attention="strided", strided=StridedConfig(mode="fixed", stride=4, summary=2))),
        ("sliding-LS-alibi", dict(attention="sliding_window", position="alibi",
                                  sliding_window=SlidingWindowConfig(window=3, pattern="LS"))),
        ("block-sparse-noglobal", dict(attention="block_sparse", block_sparse=BlockSparseConfig(3, 1, 0))),
        ("mla-qrank-rope", dict(attention="mla", position="rope", mla=MLAConfig(kv_rank=8, q_rank=16, rope_head_dim=2))),
        ("mla-ropeheads-nonorm", dict(attention="mla", position="rope",  # the form foundry.surgery converts to
                                      mla=MLAConfig(kv_rank=8, rope_head_dim=4, rope_heads=2, latent_norm=False,
                                                    rope_select="norm"))),
        ("rope-partial", dict(position="rope", rope=dataclasses.replace(TINY.rope, fraction=0.5))),
        ("hybrid-learned", dict(position="hybrid", hybrid=dataclasses.replace(TINY.hybrid, bias="learned"))),
        ("moe-shared-top1", dict(mlp="moe", moe=MoEConfig(n_experts=3, top_k=1, shared_expert=True, expert="swiglu"))),
        ("moe-tight-capacity", dict(mlp="moe", moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5))),
        ("v1-nobias", dict(bias=False, tie_embeddings=False)),
    ]
    return out


CASES = cases()
IDS = [c[0] for c in CASES]


def build(overrides: dict, seed: int = 0) -> GPT:
    cfg = make_cfg(**overrides)
    try:
        cfg.check()
    except ConfigError as e:  # an invalid combination: config load refuses it (tested below)
        pytest.skip(f"invalid combination, refused at load: {e}")
    torch.manual_seed(seed)
    return GPT(cfg)


def tokens(seed: int = 1, batch: int = B, length: int = T) -> torch.Tensor:
    return torch.randint(0, V, (batch, length), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# The contracts, one function each, on a built model
# --------------------------------------------------------------------------------------------------
def contract_shape_finite(model: GPT) -> None:
    model.eval()
    x = tokens()
    logits = model(x)
    assert logits.shape == (B, T, V)
    assert torch.isfinite(logits).all()
    model.train()
    loss, info = model(x, tokens(2))
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert torch.isfinite(info["loss_main"])


def contract_gradients(model: GPT) -> None:
    model.train()
    loss, _ = model(tokens(), tokens(2))
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert not dead, f"no (finite, non-zero) gradient reaches {dead}"


def contract_causal(model: GPT) -> None:
    model.eval()
    x = tokens()
    t = T // 2
    y = x.clone()
    y[:, t + 1:] = (y[:, t + 1:] + 7) % V  # change every token after t
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-5, rtol=0)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:]), "later tokens had no effect at all"


def contract_state_dict(model: GPT) -> None:
    model.eval()
    other = GPT(model.cfg)  # fresh random weights
    other.load_state_dict(model.state_dict(), strict=True)
    other.eval()
    x = tokens()
    torch.testing.assert_close(other(x), model(x), atol=0, rtol=0)


def contract_kv_cache(model: GPT) -> None:
    model.eval()
    x = tokens()
    full = model(x)
    caches = model.new_caches(B, T)
    parts = [model(x[:, :5], caches=caches), model(x[:, 5:9], caches=caches)]  # prefill, then a chunk
    parts += [model(x[:, t:t + 1], caches=caches) for t in range(9, T)]     # then one token at a time
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=0)
    per_token = [c.nbytes_per_token() for c in caches]
    assert all(isinstance(n, int) and n > 0 for n in per_token)


def contract_generate(model: GPT) -> None:
    prompts = [tokens(3, 1, 5)[0].tolist(), tokens(4, 1, 2)[0].tolist()]  # ragged: left padding + masks
    a = model.generate(prompts, 6, temperature=0, use_cache=True)
    b = model.generate(prompts, 6, temperature=0, use_cache=False)
    assert a == b


CONTRACTS = [contract_shape_finite, contract_gradients, contract_causal, contract_state_dict, contract_kv_cache,
             contract_generate]


def check_model(cfg: ModelConfig) -> None:
    """Every model contract on one config (for a freshly scaffolded or plugin variant)."""
    cfg.check()
    for contract in CONTRACTS:
        torch.manual_seed(0)
        contract(GPT(cfg))


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__.removeprefix("contract_"))
@pytest.mark.parametrize("overrides", [c[1] for c in CASES], ids=IDS)
def test_model_contract(overrides, contract):
    contract(build(overrides))


# --------------------------------------------------------------------------------------------------
# Family-level contracts
# --------------------------------------------------------------------------------------------------
def test_registries_hold_exactly_the_declared_builtins():
    """The config's name table (torch-free) and the torch registries agree; scaffolded/plugin names excluded."""
    for family, registry in REGISTRIES.items():
        builtin = {n for n in registry.names()
                   if registry.get(n).__module__ == f"foundry.modules.{family}"}
        assert builtin == set(BUILTIN_COMPONENTS[family]), family


def test_every_variant_has_a_docstring_naming_its_source():
    """Every variant is documented; a built-in's docstring cites its source (a paper's year)."""
    import re
    for family, registry in REGISTRIES.items():
        for name in registry.names():
            doc = registry.get(name).__doc__ or ""
            assert doc.strip(), f"{family} {name!r} has no docstring"
            if name in BUILTIN_COMPONENTS[family]:
                assert re.search(r"\b(19|20)\d\d\b", doc), f"{family} {name!r}: docstring cites no paper (year)"


@pytest.mark.parametrize("overrides", [dict(attention=a, position=p) for a, p in itertools.product(
    BUILTIN_COMPONENTS["attention"], BUILTIN_COMPONENTS["position"])], ids=lambda d: f"{d['attention']}-{d['position']}")
def test_default_options_are_valid_for_every_builtin_combination(overrides):
    """With default options every built-in attention x position pair loads (what the judge command relies on)."""
    cfg = dataclasses.replace(ModelConfig(vocab_size=V), **overrides)
    cfg.check()


@pytest.mark.parametrize("overrides, words", [
    (dict(attention="mla", position="rope", mla=MLAConfig(rope_head_dim=0)), ["mla.rope_head_dim", "decoupled"]),
    (dict(attention="mla", position="hybrid", mla=MLAConfig(rope_head_dim=8)), ["mla.rope_head_dim", "head size 8"]),
    (dict(attention="mla", position="rope", rope=dataclasses.replace(TINY.rope, fraction=0.5)), ["rope.fraction"]),
    (dict(attention="mla", n_kv_head=2), ["n_kv_head", "latent"]),
    (dict(position="rope", n_embd=36, n_head=4), ["RoPE", "even"]),
    (dict(position="hybrid", rope=dataclasses.replace(TINY.rope, fraction=0.125)), ["RoPE", "even"]),
    (dict(attention="sliding_window", sliding_window=SlidingWindowConfig(pattern="SX")), ["pattern"]),
    (dict(attention="strided", strided=StridedConfig(stride=4, summary=5)), ["summary"]),
    (dict(mlp="moe", moe=MoEConfig(n_experts=2, top_k=3)), ["moe.top_k"]),
    (dict(mlp="moe", moe=MoEConfig(expert="moe")), ["moe.expert"]),
])
def test_invalid_combinations_are_refused_with_the_reason(overrides, words):
    with pytest.raises(ConfigError) as e:
        make_cfg(**overrides).check()
    for w in words:
        assert w in str(e.value), str(e.value)


def test_invalid_combination_refused_at_load_from_yaml(tmp_path):
    from foundry.config import load_experiment
    p = tmp_path / "exp.yaml"
    p.write_text("model_args: {attention: mla, position: rope, n_embd: 32, n_head: 4, mla: {rope_head_dim: 8}}\n")
    with pytest.raises(ConfigError, match="rope_head_dim"):
        load_experiment(p)


@pytest.mark.parametrize("name", REGISTRIES["norm"].names())
def test_norm_contract(name):
    norm = REGISTRIES["norm"].get(name)(32, 1e-5, True)
    x = torch.randn(3, 5, 32, requires_grad=True) * 4 + 1
    y = norm(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # scale invariance: a normalisation layer ignores the overall scale of its input
    torch.testing.assert_close(norm(x * 3.0), y, atol=1e-4, rtol=1e-4)
    y.sum().backward()
    assert all(p.grad is not None for p in norm.parameters())


@pytest.mark.parametrize("name", REGISTRIES["mlp"].names())
def test_mlp_is_tokenwise_and_causal_in_training_mode(name):
    """An MLP must not mix tokens; MoE's capacity dropping (training only) may only look at earlier tokens."""
    cfg = make_cfg(mlp=name, moe=MoEConfig(n_experts=4, top_k=2, capacity_factor=0.5))
    torch.manual_seed(0)
    mlp = REGISTRIES["mlp"].get(name)(cfg).train()
    x = torch.randn(B, T, cfg.n_embd)
    y = x.clone()
    y[:, T // 2 + 1:] = torch.randn(B, T - T // 2 - 1, cfg.n_embd)
    torch.testing.assert_close(mlp(x)[:, : T // 2 + 1], mlp(y)[:, : T // 2 + 1], atol=1e-6, rtol=0)
    if name != "moe":  # dense MLPs are strictly per token
        torch.testing.assert_close(mlp(x[:, 3:4]), mlp(x)[:, 3:4], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", REGISTRIES["loss"].names())
def test_loss_contract(name):
    loss_fn = REGISTRIES["loss"].get(name)(TrainingConfig(z_loss=1e-3))
    logits = torch.randn(2, 7, V, requires_grad=True)
    targets = torch.randint(0, V, (2, 7))
    targets[0, :3] = -1  # ignored
    loss = loss_fn(logits, targets)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert logits.grad[0, :3].abs().sum() == 0, "ignored targets must not contribute"
    assert logits.grad[1].abs().sum() > 0
    # the mean is over counted targets: an all-ignored row changes nothing when rows are re-batched
    part = loss_fn(logits[1:].detach(), targets[1:])
    both = loss_fn(logits.detach(), targets)
    n0, n1 = int((targets[0] != -1).sum()), int((targets[1] != -1).sum())
    first = loss_fn(logits[:1].detach(), targets[:1])
    torch.testing.assert_close(both, (first * n0 + part * n1) / (n0 + n1))


def test_moe_experts_without_tokens_still_join_the_graph():
    """DDP stops on parameters that get no gradient: an expert that receives no token must still get one (zero)."""
    cfg = make_cfg(mlp="moe", moe=MoEConfig(n_experts=4, top_k=1))
    moe = REGISTRIES["mlp"].get("moe")(cfg).train()
    y = moe(torch.randn(1, 1, cfg.n_embd))  # one token reaches one expert
    (y.sum() + moe.aux_loss).backward()
    missing = [n for n, p in moe.named_parameters() if p.grad is None]
    assert not missing, missing

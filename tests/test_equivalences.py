"""Equivalences and differential tests: each variant against the variant it reduces to, or against a naive
reference written from the paper's definition (per-element loops, explicit formulas).

    gqa(n_kv_head = n_head) = mha, and gqa(n_kv_head < n_head) = mha with K/V heads copied per group
    sliding_window (window >= T), block_sparse and strided (pattern covering everything) = dense causal,
    and each pattern, where it bites, = naive attention under the paper's set of allowed keys
    moe (1 expert, top-1) = its dense MLP; moe = a per-token loop over the top-k experts; capacity drops
    RoPE and ALiBi scores unchanged when every position shifts together; ALiBi slopes = Press et al.
    MLA cache bytes per token = (kv_rank + rope_head_dim) / (2 n_head head_dim) x MHA's
    focal(gamma 0) = label_smoothing(eps 0) = ce, and each = its formula
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from foundry.config import (BlockSparseConfig, HybridConfig, MLAConfig, ModelConfig, MoEConfig, SlidingWindowConfig,
                            StridedConfig, TrainingConfig)
from foundry.model import GPT
from foundry.modules import ATTENTION, LOSS, MLP, NORM, POSITION
from foundry.modules.position import alibi_slopes

B, T, V = 2, 16, 64
BASE = ModelConfig(n_layer=2, n_head=4, n_embd=32, block_size=T, vocab_size=V)


def cfg_(**kw) -> ModelConfig:
    c = dataclasses.replace(BASE, **kw)
    c.check()
    return c


def tokens(seed=1, length=T):
    return torch.randint(0, V, (B, length), generator=torch.Generator().manual_seed(seed))


def same_weights(a: GPT, b: GPT) -> GPT:
    b.load_state_dict(a.state_dict(), strict=True)
    return b


def logits(model: GPT, x=None, **kw):
    model.eval()
    with torch.no_grad():
        return model(tokens() if x is None else x, **kw)


# --------------------------------------------------------------------------------------------------
# Grouped-query attention
# --------------------------------------------------------------------------------------------------
def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha():
    mha = GPT(cfg_(attention="mha"))
    gqa = same_weights(mha, GPT(cfg_(attention="gqa", n_kv_head=4)))
    torch.testing.assert_close(logits(gqa), logits(mha), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_kv", [1, 2])
def test_gqa_equals_mha_with_kv_heads_copied_per_group(n_kv):
    """Query head h reads KV head h // (n_head / n_kv): build that MHA by copying K/V rows, compare."""
    gqa = GPT(cfg_(attention="gqa", n_kv_head=n_kv, position="rope"))
    mha = GPT(cfg_(attention="mha", position="rope"))
    sd, hs, nh = gqa.state_dict(), BASE.head_dim, BASE.n_head
    group = nh // n_kv
    for key in list(sd):
        if key.endswith("attn.qkv.weight") or key.endswith("attn.qkv.bias"):
            w = sd[key]
            q, k, v = w.split([nh * hs, n_kv * hs, n_kv * hs])
            expand = lambda t: t.view(n_kv, hs, *t.shape[1:]).repeat_interleave(group, 0).reshape(nh * hs, *t.shape[1:])
            sd[key] = torch.cat([q, expand(k), expand(v)])
    mha.load_state_dict(sd, strict=True)
    torch.testing.assert_close(logits(gqa), logits(mha), atol=1e-5, rtol=0)
    caches_g, caches_m = gqa.new_caches(1, T), mha.new_caches(1, T)
    assert caches_m[0].nbytes_per_token() == group * caches_g[0].nbytes_per_token()


def test_gqa_alone_is_a_mutation():
    """`model_args.attention=gqa` with n_kv_head unset groups Llama-style (largest divisor <= n_head / 2)."""
    assert cfg_(attention="gqa").kv_heads == 2
    assert dataclasses.replace(BASE, attention="gqa", n_head=6, n_embd=48).kv_heads == 3
    assert cfg_(attention="mha").kv_heads == 4


# --------------------------------------------------------------------------------------------------
# Sparse patterns
# --------------------------------------------------------------------------------------------------
# The allowed key sets, written from the papers as sets of indices (query i, key j <= i).
def ref_sliding(window):                       # Beltagy et al. 2020: the last `window` tokens
    return lambda i: set(range(max(0, i - window + 1), i + 1))


def ref_block_sparse(block, local, glob):      # BigBird-style: own + previous local-1 blocks, first glob blocks
    def keys(i):
        qb = i // block
        out = {j for j in range(i + 1) if qb - local < j // block <= qb}
        return out | {j for j in range(i + 1) if j // block < glob}
    return keys


def ref_strided(stride):                       # Child et al. 2019: A1 = {max(0, i - l) .. i}, A2 = {j: (i - j) mod l = 0}
    return lambda i: set(range(max(0, i - stride), i + 1)) | {j for j in range(i + 1) if (i - j) % stride == 0}


def ref_fixed(stride, c):                      # Child et al. 2019: A1 = own block, A2 = {j: j mod l in {l - c .. l}}
    return lambda i: {j for j in range(i + 1) if j // stride == i // stride or j % stride >= stride - c}


def naive_attention(q, k, v, keys_of):
    """Per query, softmax over exactly the keys the reference allows (q, k, v: (B, nh, T, hs))."""
    out = torch.zeros_like(q)
    for i in range(q.shape[2]):
        js = sorted(keys_of(i))
        s = q[:, :, i:i + 1] @ k[:, :, js].transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, nh, 1, |js|)
        out[:, :, i] = (s.softmax(-1) @ v[:, :, js])[:, :, 0]
    return out


SPARSE = [
    ("sliding_window", dict(sliding_window=SlidingWindowConfig(window=5, pattern="S")), ref_sliding(5)),
    ("sliding_window", dict(sliding_window=SlidingWindowConfig(window=1, pattern="S")), ref_sliding(1)),
    ("block_sparse", dict(block_sparse=BlockSparseConfig(block=4, local_blocks=2, global_blocks=1)), ref_block_sparse(4, 2, 1)),
    ("block_sparse", dict(block_sparse=BlockSparseConfig(block=3, local_blocks=1, global_blocks=0)), ref_block_sparse(3, 1, 0)),
    ("strided", dict(strided=StridedConfig(mode="strided", stride=4)), ref_strided(4)),
    ("strided", dict(strided=StridedConfig(mode="strided", stride=3)), ref_strided(3)),
    ("strided", dict(strided=StridedConfig(mode="fixed", stride=4, summary=1)), ref_fixed(4, 1)),
    ("strided", dict(strided=StridedConfig(mode="fixed", stride=5, summary=2)), ref_fixed(5, 2)),
]


@pytest.mark.parametrize("name, opts, keys_of", SPARSE, ids=[f"{s[0]}-{i}" for i, s in enumerate(SPARSE)])
def test_sparse_pattern_equals_naive_attention_over_the_papers_key_set(name, opts, keys_of):
    cfg = cfg_(attention=name, **opts)
    torch.manual_seed(0)
    attn = ATTENTION.get(name)(cfg, 0).eval()
    pos = POSITION.get("nope")(cfg)
    x = torch.randn(B, T, cfg.n_embd)
    with torch.no_grad():
        q, k, v = attn.project_qkv(x)
        ref = naive_attention(q, k, v, keys_of).transpose(1, 2).reshape(B, T, cfg.n_embd)
        got = attn(x, pos, torch.arange(T))
        torch.testing.assert_close(got, attn.proj(ref), atol=1e-5, rtol=0)
        # the same pattern holds when the queries arrive through the cache in pieces
        cache = attn.new_cache(B, T, x.device, x.dtype)
        pieces = [attn(x[:, :7], pos, torch.arange(7), cache)]
        pieces += [attn(x[:, t:t + 1], pos, torch.arange(t, t + 1), cache) for t in range(7, T)]
        torch.testing.assert_close(torch.cat(pieces, 1), got, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name, opts", [
    ("sliding_window", dict(sliding_window=SlidingWindowConfig(window=T, pattern="S"))),
    ("sliding_window", dict(sliding_window=SlidingWindowConfig(window=3, pattern="L"))),
    ("block_sparse", dict(block_sparse=BlockSparseConfig(block=4, local_blocks=4, global_blocks=0))),
    ("block_sparse", dict(block_sparse=BlockSparseConfig(block=T, local_blocks=1, global_blocks=0))),
    ("strided", dict(strided=StridedConfig(mode="strided", stride=T))),
    ("strided", dict(strided=StridedConfig(mode="strided", stride=1))),
    ("strided", dict(strided=StridedConfig(mode="fixed", stride=T, summary=1))),
    ("strided", dict(strided=StridedConfig(mode="fixed", stride=1, summary=1))),
])
@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_sparse_pattern_covering_everything_is_dense_causal(name, opts, position):
    dense = GPT(cfg_(attention="mha", position=position))
    sparse = same_weights(dense, GPT(cfg_(attention=name, position=position, **opts)))
    torch.testing.assert_close(logits(sparse), logits(dense), atol=1e-5, rtol=0)


def test_sliding_pattern_cycles_over_layers():
    cfg = dataclasses.replace(BASE, n_layer=5, attention="sliding_window",
                              sliding_window=SlidingWindowConfig(window=2, pattern="SSL"))
    kinds = [b.attn.is_global for b in GPT(cfg).blocks]
    assert kinds == [False, False, True, False, False]


def test_dense_attention_keeps_the_sdpa_causal_flash_path(monkeypatch):
    """Without a pattern, bias, soft-cap or mask, every call is SDPA(is_causal=True) with no mask."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **kw):
        calls.append((kw.get("is_causal", False), kw.get("attn_mask")))
        return real(*a, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    for attn, pos in [("mha", "learned"), ("gqa", "rope"), ("mla", "rope"), ("sliding_window", "nope")]:
        calls.clear()
        opts = dict(sliding_window=SlidingWindowConfig(window=T)) if attn == "sliding_window" else {}
        logits(GPT(cfg_(attention=attn, position=pos, mla=MLAConfig(kv_rank=8, rope_head_dim=4), **opts)))
        assert calls and all(c == (True, None) for c in calls), (attn, calls)


def _sdpa_spy(monkeypatch) -> list:
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("t", [2, 17, 128])
def test_short_cpu_training_attention_is_explicit_and_equals_sdpa(monkeypatch, t):
    """Training on CPU with T <= EXPLICIT_CAUSAL_MAX_T takes the baddbmm path (faster there); it must be the
    same function as SDPA's causal attention: outputs and all three input gradients."""
    from foundry.modules import attention as A

    monkeypatch.setattr(A, "explicit_causal_pays", lambda: True)  # as on an AVX2 CPU, whatever this one is
    g = torch.Generator().manual_seed(t)
    q, k, v = (torch.randn(3, 4, t, 8, generator=g, requires_grad=True) for _ in range(3))
    up = torch.randn(3, 4, t, 8, generator=g)
    calls = _sdpa_spy(monkeypatch)
    y = A.attend(q, k, v)
    assert not calls, "the short CPU training path should not call SDPA"
    (y * up).sum().backward()
    got = [y.detach()] + [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    (ref * up).sum().backward()
    for a, b in zip(got, [ref.detach()] + [x.grad for x in (q, k, v)]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_long_or_forward_only_attention_stays_on_sdpa(monkeypatch):
    from foundry.modules import attention as A

    calls = _sdpa_spy(monkeypatch)
    long_ = [torch.randn(1, 2, A.EXPLICIT_CAUSAL_MAX_T + 1, 8, requires_grad=True) for _ in range(3)]
    A.attend(*long_)
    assert len(calls) == 1 and calls[-1]["is_causal"]
    short = [torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3)]
    with torch.no_grad():
        A.attend(*short)
    assert len(calls) == 2 and calls[-1]["is_causal"]
    A.attend(*short, dropout=0.1)  # dropout is SDPA's
    assert len(calls) == 3


def test_explicit_short_attention_where_it_was_measured_faster(monkeypatch):
    """The explicit path is taken where it was measured faster: below AVX-512 and on AMD's AVX-512; on Intel's
    AVX-512 (Sapphire Rapids) and unknown vendors the flash kernel won or is unmeasured, and SDPA is called."""
    from foundry.hostcpu import HostCPU
    from foundry.modules import attention as A

    avx512 = frozenset({"avx2", "avx512f", "avx512_bf16"})
    for cpu, explicit in ((HostCPU("AVX2", "AuthenticAMD", 25, frozenset({"avx2"})), True),
                          (HostCPU("DEFAULT"), True),
                          (HostCPU("AVX512", "AuthenticAMD", 26, avx512), True),
                          (HostCPU("AVX2", "GenuineIntel", 6, avx512), True),  # ATEN_CPU_CAPABILITY=avx2
                          (HostCPU("AVX512", "GenuineIntel", 6, avx512 | {"amx_bf16"}, amx=True), False),
                          (HostCPU("AVX512", "", None, avx512), False)):
        assert A.explicit_causal_rule(cpu)[0] is explicit, cpu
    short = [torch.randn(1, 2, 16, 8, requires_grad=True) for _ in range(3)]
    calls = _sdpa_spy(monkeypatch)
    for vendor, sdpa_calls in (("AuthenticAMD", 0), ("GenuineIntel", 1)):  # the rule is what attend follows
        monkeypatch.setattr("foundry.hostcpu.host_cpu", lambda: HostCPU("AVX512", vendor, 6, avx512))
        A.explicit_causal_pays.cache_clear()
        A.attend(*short)
        assert len(calls) == sdpa_calls, vendor
    A.explicit_causal_pays.cache_clear()


def test_model_training_step_is_the_same_on_either_attention_path(monkeypatch):
    """The whole model's loss and every parameter gradient agree between the explicit and the SDPA path."""
    from foundry.modules import attention as A

    x, y = tokens(3), tokens(4)
    out = []
    for explicit in (True, False):
        monkeypatch.setattr(A, "explicit_causal_pays", lambda: explicit)
        torch.manual_seed(0)
        model = GPT(cfg_())
        loss, _ = model(x, y)
        loss.backward()
        out.append([loss.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_softcap_equals_its_formula_and_vanishes_when_large():
    cfg = cfg_(attn_softcap=2.0)
    torch.manual_seed(0)
    attn = ATTENTION.get("mha")(cfg, 0).eval()
    pos = POSITION.get("nope")(cfg)
    x = torch.randn(B, T, cfg.n_embd) * 3
    with torch.no_grad():
        q, k, v = attn.project_qkv(x)
        s = q @ k.transpose(-2, -1) / math.sqrt(cfg.head_dim)
        s = 2.0 * torch.tanh(s / 2.0)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        ref = attn.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1))
        torch.testing.assert_close(attn(x, pos, torch.arange(T)), ref, atol=1e-5, rtol=0)
    plain = GPT(cfg_())
    capped = same_weights(plain, GPT(cfg_(attn_softcap=1e6)))
    torch.testing.assert_close(logits(capped), logits(plain), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------------
def test_alibi_slopes_are_press_et_al():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    # 6 heads: the 4-head slopes, then every other slope of the 8-head sequence
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]))


@pytest.mark.parametrize("position", ["alibi", "hybrid"])
def test_alibi_bias_is_minus_slope_times_distance_and_shift_invariant(position):
    cfg = cfg_(position=position, hybrid=HybridConfig(bias="alibi"))
    pos = POSITION.get(position)(cfg)
    q, k = torch.arange(T), torch.arange(T)
    b = pos.bias(q, k)
    slopes = alibi_slopes(cfg.n_head)
    for h in range(cfg.n_head):
        for i in (0, 5, 15):
            for j in range(i + 1):
                assert float(b[h, i, j]) == pytest.approx(-float(slopes[h]) * (i - j))
    torch.testing.assert_close(pos.bias(q + 11, k + 11), b)


@pytest.mark.parametrize("position", ["rope", "hybrid"])
def test_rope_scores_depend_only_on_relative_position(position):
    cfg = cfg_(position=position, rope=dataclasses.replace(BASE.rope, fraction=0.5))
    pos = POSITION.get(position)(cfg)
    q, k = torch.randn(B, 4, T, cfg.head_dim), torch.randn(B, 4, T, cfg.head_dim)
    p = torch.arange(T)
    q0, k0 = pos.rotate(q, k, p)
    q1, k1 = pos.rotate(q, k, p + 37)
    torch.testing.assert_close(q1 @ k1.transpose(-2, -1), q0 @ k0.transpose(-2, -1), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(q0, q1), "rotation ignored the positions"
    torch.testing.assert_close(q0[..., cfg.head_dim // 2:], q[..., cfg.head_dim // 2:])  # fraction 0.5: rest untouched


@pytest.mark.parametrize("attention, position", [("mha", "rope"), ("mha", "alibi"), ("mha", "hybrid"),
                                                 ("mla", "rope"), ("gqa", "nope"), ("sliding_window", "rope")])
def test_model_output_unchanged_when_all_positions_shift(attention, position):
    model = GPT(cfg_(attention=attention, position=position, mla=MLAConfig(kv_rank=8, rope_head_dim=4),
                     sliding_window=SlidingWindowConfig(window=5)))
    x = tokens()
    torch.testing.assert_close(logits(model, x, positions=torch.arange(T) + 23), logits(model, x), atol=1e-4, rtol=0)


def test_learned_positions_do_change_under_a_shift():
    """The shift test above can fail: absolute positions are not shift invariant."""
    model = GPT(cfg_(position="learned"))
    x = tokens(length=8)
    assert not torch.allclose(logits(model, x, positions=torch.arange(8) + 3), logits(model, x), atol=1e-4)


def test_hybrid_learned_bias_starts_as_plain_rope():
    rope = GPT(cfg_(position="rope"))
    hybrid = GPT(cfg_(position="hybrid", hybrid=HybridConfig(bias="learned")))
    sd = {k: v for k, v in hybrid.state_dict().items()}
    sd.update(rope.state_dict())
    hybrid.load_state_dict(sd, strict=True)
    torch.testing.assert_close(logits(hybrid), logits(rope), atol=1e-6, rtol=0)
    with torch.no_grad():
        hybrid.pos.rel_bias[:, 1] = 5.0  # favour the previous token: the output must move
    assert not torch.allclose(logits(hybrid), logits(rope), atol=1e-4)


# --------------------------------------------------------------------------------------------------
# Multi-head latent attention
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kv_rank, rope_dim, position", [(8, 4, "rope"), (16, 2, "rope"), (12, 4, "nope")])
def test_mla_cache_shrinks_by_the_configured_ratio(kv_rank, rope_dim, position):
    mha = GPT(cfg_(attention="mha", position=position))
    mla = GPT(cfg_(attention="mla", position=position, mla=MLAConfig(kv_rank=kv_rank, rope_head_dim=rope_dim)))
    full = sum(c.nbytes_per_token() for c in mha.new_caches(1, T))
    latent = sum(c.nbytes_per_token() for c in mla.new_caches(1, T))
    stored = kv_rank + (rope_dim if position == "rope" else 0)
    assert latent / full == pytest.approx(stored / (2 * BASE.n_head * BASE.head_dim))
    # and the cache really holds only that: its tensors' numbers per token of one sequence
    c = mla.new_caches(1, T)[0]
    held = sum(t[0].numel() for t in vars(c).values() if torch.is_tensor(t)) // T
    assert held == stored


def test_mla_equals_its_explicit_formula():
    """DeepSeek-V2 eqs. 9-19 written out: c = norm(W_dkv x), [k_nope | v] = W_ukv c, k_rope = RoPE(W_kr x)."""
    from foundry.modules.position import apply_rope, rope_cos_sin
    cfg = cfg_(attention="mla", position="rope", mla=MLAConfig(kv_rank=8, rope_head_dim=4))
    torch.manual_seed(0)
    attn = ATTENTION.get("mla")(cfg, 0).eval()
    x = torch.randn(B, T, cfg.n_embd)
    nh, hs, dr, r = cfg.n_head, cfg.head_dim, 4, 8
    with torch.no_grad():
        cos, sin = rope_cos_sin(torch.arange(T), dr, cfg.rope.theta, x.dtype)
        out = torch.zeros(B, T, nh, hs)
        lat = attn.kv_down(x)
        c, kr = attn.kv_norm(lat[..., :r]), apply_rope(lat[..., r:][:, None], cos, sin)[:, 0]  # (B,T,r), (B,T,dr)
        q = attn.wq(x).view(B, T, nh, hs)
        for h in range(nh):
            wk = attn.kv_up.weight.view(nh, hs - dr + hs, r)[h]
            bk = attn.kv_up.bias.view(nh, hs - dr + hs)[h]
            kv = c @ wk.T + bk
            k = torch.cat([kv[..., : hs - dr], kr], -1)
            v = kv[..., hs - dr:]
            qh = torch.cat([q[:, :, h, : hs - dr], apply_rope(q[:, None, :, h, hs - dr:], cos, sin)[:, 0]], -1)
            s = (qh @ k.transpose(-2, -1)) / math.sqrt(hs)
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
            out[:, :, h] = s.softmax(-1) @ v
        ref = attn.proj(out.reshape(B, T, nh * hs))
        torch.testing.assert_close(attn(x, POSITION.get("rope")(cfg), torch.arange(T)), ref, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# MLPs and mixture of experts
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, act", [("swiglu", F.silu), ("glu", torch.sigmoid), ("reglu", F.relu),
                                       ("geglu", F.gelu)])
def test_gated_mlps_equal_their_formula(name, act):
    cfg = cfg_(mlp=name)
    mlp = MLP.get(name)(cfg)
    x = torch.randn(B, T, cfg.n_embd)
    H = cfg.mlp_hidden
    wg, wu = mlp.fc.weight[:H], mlp.fc.weight[H:]
    bg, bu = mlp.fc.bias[:H], mlp.fc.bias[H:]
    ref = (act(x @ wg.T + bg) * (x @ wu.T + bu)) @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), ref, atol=1e-5, rtol=0)


def test_relu2_equals_its_formula():
    cfg = cfg_(mlp="relu2")
    mlp = MLP.get("relu2")(cfg)
    x = torch.randn(B, T, cfg.n_embd)
    ref = torch.relu(x @ mlp.fc.weight.T + mlp.fc.bias) ** 2 @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), ref, atol=1e-5, rtol=0)
    assert cfg.mlp_hidden == 4 * cfg.n_embd and cfg_(mlp="geglu").mlp_hidden == int(8 / 3 * cfg.n_embd)


@pytest.mark.parametrize("expert", ["gelu", "swiglu"])
@pytest.mark.parametrize("train", [True, False])
def test_moe_with_one_expert_and_top1_is_the_dense_mlp(expert, train):
    dense = GPT(cfg_(mlp=expert))
    moe = GPT(cfg_(mlp="moe", moe=MoEConfig(n_experts=1, top_k=1, expert=expert)))
    sd = {k.replace(".mlp.", ".mlp.experts.0."): v for k, v in dense.state_dict().items()}
    sd.update({k: v for k, v in moe.state_dict().items() if "router" in k})
    moe.load_state_dict(sd, strict=True)
    x = tokens()
    dense.train(train), moe.train(train)
    with torch.no_grad():
        a, b = dense(x), moe(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=0)


def naive_moe(moe, x, capacity=None):
    """Per token (time-major), softmax router, top-k, renormalise (k > 1), expert queues with capacity."""
    Bx, Tx, C = x.shape
    out = torch.zeros_like(x)
    used = [0] * moe.n_experts
    for t in range(Tx):
        for b in range(Bx):
            p = moe.router(x[b, t]).softmax(-1)
            w, e = p.topk(moe.top_k)
            if moe.top_k > 1:
                w = w / w.sum()
            for wi, ei in zip(w.tolist(), e.tolist()):
                used[ei] += 1
                if capacity is None or used[ei] <= capacity:
                    out[b, t] += wi * moe.experts[ei](x[b, t][None, None])[0, 0]
            if moe.shared is not None:
                out[b, t] += moe.shared(x[b, t][None, None])[0, 0]
    return out


@pytest.mark.parametrize("n_experts, top_k, shared, factor", [(4, 2, False, 1.25), (3, 1, True, 1.0),
                                                              (4, 2, False, 0.5), (5, 3, True, 0.3)])
def test_moe_equals_a_per_token_loop_over_its_experts(n_experts, top_k, shared, factor):
    cfg = cfg_(mlp="moe", moe=MoEConfig(n_experts=n_experts, top_k=top_k, shared_expert=shared,
                                        capacity_factor=factor))
    torch.manual_seed(0)
    moe = MLP.get("moe")(cfg)
    torch.nn.init.normal_(moe.router.weight, std=1.0)  # decisive routing
    x = torch.randn(B, T, cfg.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(moe.eval()(x), naive_moe(moe, x), atol=1e-5, rtol=0)
        cap = math.ceil(factor * B * T * top_k / n_experts)
        torch.testing.assert_close(moe.train()(x), naive_moe(moe, x, cap), atol=1e-5, rtol=0)


def test_moe_tokens_over_capacity_pass_through_the_residual_only():
    cfg = cfg_(mlp="moe", moe=MoEConfig(n_experts=2, top_k=1, capacity_factor=0.25))
    torch.manual_seed(0)
    moe = MLP.get("moe")(cfg).train()
    x = torch.randn(B, T, cfg.n_embd)
    y = moe(x)
    zero_rows = (y.abs().sum(-1) == 0).sum().item()
    # capacity = ceil(0.25 * 32 / 2) = 4 per expert: at most 8 of 32 tokens get an expert
    assert zero_rows >= B * T - 8 and moe.drop_fraction >= 0.75 - 1e-6
    assert (moe.eval()(x).abs().sum(-1) > 0).all(), "evaluation must not drop tokens"


def test_moe_aux_loss_is_switch_load_balancing_and_joins_the_training_loss():
    cfg = cfg_(mlp="moe", moe=MoEConfig(n_experts=4, top_k=2, aux_loss_coef=0.5))
    torch.manual_seed(0)
    model = GPT(cfg).train()
    x = tokens()
    loss, info = model(x, tokens(2))
    moe = model.blocks[0].mlp
    h = None

    def grab(_, inp, __):
        nonlocal h
        h = inp[0]
    handle = moe.register_forward_hook(grab)
    model(x, tokens(2))
    handle.remove()
    flat = h.detach().reshape(-1, cfg.n_embd)
    p = moe.router(flat).softmax(-1)
    chosen = p.topk(2, dim=-1).indices
    f = torch.stack([(chosen == e).float().sum() / chosen.numel() for e in range(4)])
    ref = 0.5 * 4 * (f * p.mean(0)).sum()
    torch.testing.assert_close(moe.aux_loss, ref, atol=1e-5, rtol=0)
    aux = sum(b.mlp.aux_loss for b in model.blocks)
    torch.testing.assert_close(info["aux_loss"], aux.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(loss, info["loss_main"] + info["aux_loss"], atol=1e-6, rtol=0)
    # uniform routing and uniform probabilities give exactly coef * 1, its minimum
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(1, 4, cfg.n_embd))
    assert moe.aux_loss.item() >= 0.5 - 1e-6


# --------------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------------
def test_norms_equal_torch_references():
    x = torch.randn(3, 5, 32) * 3 + 2
    ln = NORM.get("layernorm")(32, 1e-5, True)
    ref = torch.nn.LayerNorm(32, eps=1e-5)
    torch.testing.assert_close(ln(x), ref(x), atol=1e-5, rtol=0)
    rms = NORM.get("rmsnorm")(32, 1e-5)
    torch.testing.assert_close(rms(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------
def _logits_targets():
    g = torch.Generator().manual_seed(3)
    lg = torch.randn(4, 9, V, generator=g) * 2
    tg = torch.randint(0, V, (4, 9), generator=g)
    tg[0, :4] = -1
    return lg, tg


def test_focal_gamma0_and_label_smoothing_eps0_are_ce():
    lg, tg = _logits_targets()
    ce = LOSS.get("ce")()(lg, tg)
    torch.testing.assert_close(LOSS.get("focal")(TrainingConfig(focal_gamma=0.0))(lg, tg), ce)
    torch.testing.assert_close(LOSS.get("label_smoothing")(TrainingConfig(label_smoothing=0.0))(lg, tg), ce)
    torch.testing.assert_close(ce, F.cross_entropy(lg.reshape(-1, V), tg.reshape(-1), ignore_index=-1))


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_focal_equals_its_formula(gamma):
    lg, tg = _logits_targets()
    p = lg.softmax(-1)
    keep = tg != -1
    pt = p[keep].gather(-1, tg[keep][:, None])[:, 0]
    ref = (-(1 - pt) ** gamma * pt.log()).mean()
    torch.testing.assert_close(LOSS.get("focal")(TrainingConfig(focal_gamma=gamma))(lg, tg), ref)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_label_smoothing_equals_its_formula(eps):
    lg, tg = _logits_targets()
    keep = tg != -1
    logp = lg[keep].log_softmax(-1)
    ref = ((1 - eps) * -logp.gather(-1, tg[keep][:, None])[:, 0] + eps * -logp.mean(-1)).mean()
    torch.testing.assert_close(LOSS.get("label_smoothing")(TrainingConfig(label_smoothing=eps))(lg, tg), ref)


@pytest.mark.parametrize("name", ["ce", "focal", "label_smoothing"])
def test_z_loss_adds_coef_times_log_z_squared(name):
    lg, tg = _logits_targets()
    base = LOSS.get(name)(TrainingConfig())(lg, tg)
    with_z = LOSS.get(name)(TrainingConfig(z_loss=1e-2))(lg, tg)
    keep = tg != -1
    ref = 1e-2 * torch.logsumexp(lg[keep], -1).pow(2).mean()
    torch.testing.assert_close(with_z - base, ref, atol=1e-6, rtol=1e-5)


def test_rope_reuses_cos_sin_only_for_the_same_unchanged_positions():
    cfg = cfg_(position="rope")
    pos = POSITION.get("rope")(cfg)
    q = torch.randn(1, 4, T, cfg.head_dim)
    p = torch.arange(T)
    a, _ = pos.rotate(q, q, p)
    p.add_(5)  # changed in place: the cached angles must not be reused
    b, _ = pos.rotate(q, q, p)
    c, _ = POSITION.get("rope")(cfg).rotate(q, q, torch.arange(T) + 5)
    torch.testing.assert_close(b, c)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("window, pattern", [(1, "S"), (4, "S"), (4, "SL")])
@pytest.mark.parametrize("position", ["learned", "rope", "alibi", "hybrid"])
def test_sliding_window_rolling_cache_decodes_as_the_full_forward(window, pattern, position):
    """Sliding layers decode from a rolling buffer of window - 1 tokens (global layers keep everything): a
    prefill, a chunk and single tokens give the full forward's logits, left-padded batched generation gives
    what generation without a cache gives, and the buffer never grows past window - 1 rows."""
    cfg = cfg_(attention="sliding_window", position=position, n_kv_head=2,
               sliding_window=SlidingWindowConfig(window=window, pattern=pattern))
    model = GPT(cfg).eval()
    x = tokens(7)
    with torch.no_grad():
        full = model(x)
        caches = model.new_caches(B, T)
        parts = [model(x[:, :6], caches=caches), model(x[:, 6:9], caches=caches)]
        parts += [model(x[:, t:t + 1], caches=caches) for t in range(9, T)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    for block, cache in zip(model.blocks, caches):
        rows = T if block.attn.is_global else window - 1
        assert cache.capacity == rows and cache.k.shape[2] == rows and cache.length == T
    prompts = [x[0, :3].tolist(), x[1, :8].tolist()]  # ragged: the padding mask is indexed by kept slots
    assert model.generate(prompts, 7, temperature=0) == model.generate(prompts, 7, temperature=0, use_cache=False)


@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
@pytest.mark.parametrize("bias, q_rank, softcap, rope_heads", [(False, 0, 0.0, 1), (True, 8, 0.0, 1), (True, 0, 5.0, 1),
                                                              (True, 0, 0.0, 2)])
def test_mla_absorbed_decode_equals_expanded_decode(position, bias, q_rank, softcap, rope_heads, monkeypatch):
    """Decoding MLA from the cache attends in the latent space (W_uk folded into the queries, W_uv applied
    after): the same logits as re-expanding K/V and as the full forward, without ever calling kv_up on the
    cached latents; biases included (the key bias drops out of the softmax, the value bias passes through)."""
    from foundry.modules.attention import MultiHeadLatentAttention

    cfg = cfg_(attention="mla", position=position, bias=bias, attn_softcap=softcap,
               mla=MLAConfig(kv_rank=8, q_rank=q_rank, rope_head_dim=4, rope_heads=rope_heads,
                             latent_norm=rope_heads == 1))
    model = GPT(cfg).eval()
    if bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    x = tokens(3)

    def decode():
        with torch.no_grad():
            caches = model.new_caches(B, T)
            parts = [model(x[:, :5], caches=caches)] + [model(x[:, t:t + 1], caches=caches) for t in range(5, T)]
        return torch.cat(parts, 1)

    expand_calls = []
    for block in model.blocks:
        block.attn.kv_up.register_forward_hook(lambda *a: expand_calls.append(1))
    with torch.no_grad():
        full = model(x)
    expand_calls.clear()
    absorbed = decode()
    assert not expand_calls, "the absorbed decode expanded K/V through kv_up"
    monkeypatch.setattr(MultiHeadLatentAttention, "absorb", False)
    expanded = decode()
    assert expand_calls
    torch.testing.assert_close(absorbed, expanded, atol=1e-5, rtol=0)
    torch.testing.assert_close(absorbed, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("position", ["learned", "alibi", "hybrid"])
@pytest.mark.parametrize("softcap", [0.0, 5.0])
def test_gqa_decode_folds_query_groups(position, softcap, monkeypatch):
    """Single-token GQA decoding folds each group's query heads onto its KV head (no per-group K/V copy):
    the same logits as the full forward, the same greedy generations with left padding, and repeat_interleave
    is never called on the cached keys."""
    cfg = cfg_(attention="gqa", n_kv_head=2, position=position, attn_softcap=softcap)
    model = GPT(cfg).eval()
    x = tokens(5)
    with torch.no_grad():
        full = model(x)
        caches = model.new_caches(B, T)
        parts = [model(x[:, :4], caches=caches)]
        copies = []
        real = torch.Tensor.repeat_interleave
        monkeypatch.setattr(torch.Tensor, "repeat_interleave", lambda *a, **k: copies.append(1) or real(*a, **k))
        parts += [model(x[:, t:t + 1], caches=caches) for t in range(4, T)]
        monkeypatch.undo()
    assert not copies, "single-token GQA decoding copied K/V heads"
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)
    prompts = [x[0, :2].tolist(), x[1, :7].tolist()]
    assert model.generate(prompts, 6, temperature=0) == model.generate(prompts, 6, temperature=0, use_cache=False)

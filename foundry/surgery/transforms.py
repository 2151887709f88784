"""Weight-transferring mutations: (parent GPT, its config, a mutation) -> (child config, child GPT).

The config side is foundry.mutate's own vocabulary (`apply_mutation`), so a surgery names exactly the
experiment a from-scratch run of the same mutation would train; this file only moves the weights across.
One small function per mutation type, registered in SURGERIES:

    attention gqa_<n>kv | mqa | mha    mean-pool K/V heads per group (Ainslie et al. 2023, "GQA", sec. 2.1)
    attention mla | mla_<r>            MHA2MLA (Ji et al. 2025): partial RoPE + joint SVD of the K/V projections
    depth -<k> | <n>                   drop the blocks that change the residual stream least (ShortGPT, Men et
                                       al. 2024: block influence; Gromov et al. 2024: angular distance)
    mlp_ratio <f> | x<f>               keep the most active hidden units (Minitron, Muralidharan et al. 2024);
                                       widening adds units whose output weights are zero (Net2Net-style, exact)

Every other mutation has no transfer that keeps what the parent learned (a new activation, norm or width
changes what every weight means): `operate` refuses it unless asked for `config_only`, which builds the
child config freshly initialised (a from-scratch run of the same mutation).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from foundry.config import ExperimentConfig
from foundry.model import GPT
from foundry.mutate import apply_mutation


class SurgeryError(ValueError):
    """A surgery that cannot be done as asked; the message says why and what to do instead."""


@dataclass
class Surgery:
    """The result of one surgery: the child config (with lineage) and model, and what was transferred."""
    config: ExperimentConfig
    model: GPT
    mutation: str                       # "attention mqa"
    method: str                         # how the weights moved, with its source
    exact: bool                         # True when the child computes the parent's function exactly
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    fn: Callable
    method: str


SURGERIES: dict[str, _Entry] = {}


def surgery(type_name: str, method: str):
    """Register the weight transfer for a mutation type: fn(parent, parent_cfg, child_cfg, calib, **opts)
    fills and returns (child GPT, exact, details)."""
    def deco(fn):
        if type_name in SURGERIES:
            raise ValueError(f"surgery for {type_name!r} is registered twice")
        SURGERIES[type_name] = _Entry(fn, method)
        return fn
    return deco


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def operate(parent: GPT, parent_cfg: ExperimentConfig, type_name: str, variant: str, *,
            calib: torch.Tensor | None = None, overrides: dict | None = None, config_only: bool = False,
            parent_name: str | None = None, **opts) -> Surgery:
    """Mutate a trained model, transferring its weights.

    parent      the trained GPT (its cfg must equal parent_cfg.model_args)
    calib       (N, T) int64 calibration windows: needed by depth and mlp_ratio, which rank blocks/units
    overrides   extra `key.path: value` settings of the child config (e.g. {"model_args.mla.rope_head_dim": 16})
    config_only for a mutation with no weight transfer: return the freshly initialised child instead of refusing
    """
    if parent.cfg != parent_cfg.model_args:
        raise SurgeryError("the parent model was not built from parent_cfg.model_args; pass the run's own config")
    child_cfg = apply_mutation(parent_cfg, type_name, variant, parent=parent_name)
    if overrides:
        child_cfg = child_cfg.replace(dict(overrides))
    mutation = f"{type_name} {variant}"
    entry = SURGERIES.get(type_name)
    if entry is None:
        if not config_only:
            raise SurgeryError(
                f"{mutation}: no weight transfer keeps what the parent learned for a '{type_name}' mutation "
                f"(surgeries: {', '.join(sorted(SURGERIES))}); pass config_only=True (CLI: --config-only) to train "
                f"the mutated config from a fresh initialisation instead")
        torch.manual_seed(child_cfg.training.seed)
        child = GPT(child_cfg.model_args)
        return _stamp(Surgery(child_cfg, child, mutation, "none: config-only mutation, fresh initialisation",
                              False), parent_name)
    child_cfg, child, exact, details = entry.fn(parent, parent_cfg, child_cfg, calib, **opts)
    method = details.pop("method", entry.method)  # a type with several transfers names the one it used
    return _stamp(Surgery(child_cfg, child, mutation, method, exact, details), parent_name)


def reinit_changed(s: Surgery, parent: GPT, parent_cfg: ExperimentConfig, calib=None, *, seed: int = 0) -> Surgery:
    """The control for a surgery: the same child with the layers it changed freshly initialised (GPT's own
    init: N(0, init_std), residual projections scaled by 1/sqrt(2 n_layer), zero biases, unit norms), so a
    healing run from it shows what the transferred weights are worth. For depth, no layer is new: the
    control drops k blocks drawn at random instead of the least influential."""
    type_name, variant = s.mutation.split(" ", 1)
    if type_name == "depth":
        out = operate(parent, parent_cfg, type_name, variant, calib=calib, parent_name=s.config.lineage.get("parent"),
                      depth_method="random", seed=seed)
        out.method, out.exact = "control: random blocks dropped", False
        return out
    part = {"attention": "attn", "mlp_ratio": "mlp"}.get(type_name)
    if part is None:
        raise SurgeryError(f"{s.mutation}: no changed layers to re-initialise (attention, mlp_ratio, depth have)")
    cfg = s.model.cfg
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in s.model.blocks:
            for name, mod in getattr(block, part).named_modules():
                if isinstance(mod, nn.Linear):
                    std = cfg.init_std / (math.sqrt(2 * cfg.n_layer) if name.endswith("proj") else 1.0)
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * std)
                    if mod.bias is not None:
                        mod.bias.zero_()
                elif isinstance(getattr(mod, "weight", None), nn.Parameter):
                    mod.weight.fill_(1.0)  # a norm inside the layer (MLA's latent or query norm)
    return _relabel(s, f"control: {part} layers re-initialised (seed {seed})")


def from_scratch(s: Surgery, *, seed: int = 0) -> Surgery:
    """The other control: the mutated config with every weight freshly initialised (what training the
    mutation from scratch starts from)."""
    torch.manual_seed(seed)
    fresh = GPT(s.config.model_args).to(dtype=next(s.model.parameters()).dtype)
    with torch.no_grad():  # integer buffers are structure, not learned weights (MLA's per-key RoPE frequencies)
        old = dict(s.model.named_buffers())
        for name, b in fresh.named_buffers():
            if not b.is_floating_point() and name in old:
                b.copy_(old[name])
    s.model = fresh
    return _relabel(s, f"control: fresh initialisation (seed {seed})")


def _relabel(s: Surgery, method: str) -> Surgery:
    s.method, s.exact = method, False
    lineage = dict(s.config.lineage)
    lineage["surgery"] = {**lineage.get("surgery", {}), "method": method, "exact": False}
    s.config = s.config.replace({"lineage": lineage})
    return s


def _stamp(s: Surgery, parent_name: str | None) -> Surgery:
    lineage = dict(s.config.lineage)
    lineage["surgery"] = {"mutation": s.mutation, "method": s.method, "exact": s.exact, "parent": parent_name,
                          **{k: v for k, v in s.details.items() if isinstance(v, (int, float, str, bool, list))
                             and not (isinstance(v, list) and v and isinstance(v[0], list))}}  # not per layer x head
    s.config = s.config.replace({"lineage": lineage})
    return s


def _new_child(child_cfg: ExperimentConfig, parent: GPT) -> GPT:
    """The child, built on the parent's device and dtype, with every weight it shares by name and shape
    copied from the parent (embeddings, norms, the head, untouched blocks)."""
    child = GPT(child_cfg.model_args).to(device=next(parent.parameters()).device,
                                         dtype=next(parent.parameters()).dtype)
    theirs = parent.state_dict()
    with torch.no_grad():
        for name, t in child.state_dict().items():
            if name in theirs and theirs[name].shape == t.shape:
                t.copy_(theirs[name])
    return child


def _check_dense_attention(parent: GPT, mutation: str) -> None:
    kind = parent.cfg.attention
    if kind not in ("mha", "gqa"):
        raise SurgeryError(f"{mutation}: the parent's attention is {kind!r}; K/V heads are pooled or factored "
                           f"from a dense attention (mha, gqa) only")


# --------------------------------------------------------------------------------------------------
# attention: GQA / MQA / MHA by mean-pooling (or repeating) K/V heads
# --------------------------------------------------------------------------------------------------
def split_qkv(w: torch.Tensor, nh: int, nkv: int, hs: int):
    """The fused qkv weight (nh*hs + 2*nkv*hs, ...) or bias as q (nh, hs, ...), k, v (nkv, hs, ...)."""
    q, k, v = w.split([nh * hs, nkv * hs, nkv * hs], dim=0)
    return q.unflatten(0, (nh, hs)), k.unflatten(0, (nkv, hs)), v.unflatten(0, (nkv, hs))


def regroup_heads(t: torch.Tensor, n: int) -> torch.Tensor:
    """(nkv, hs, ...) K or V heads -> (n, hs, ...): the mean of each group of nkv/n consecutive heads
    (Ainslie et al. 2023: mean pooling beat keeping one head or random init), or each head repeated n/nkv
    times when n > nkv (exact: every query head still reads its own K/V)."""
    nkv = t.shape[0]
    if n <= nkv:
        return t.unflatten(0, (n, nkv // n)).mean(dim=1)
    return t.repeat_interleave(n // nkv, dim=0)


@surgery("attention", "attention: K/V heads mean-pooled per group (Ainslie et al. 2023) | "
                      "MLA by MHA2MLA (Ji et al. 2025)")
def attention(parent, parent_cfg, child_cfg, calib, **opts):
    mutation = child_cfg.lineage.get("mutation", "attention")
    _check_dense_attention(parent, mutation)
    if child_cfg.model_args.attention == "mla":
        return mha2mla(parent, parent_cfg, child_cfg, calib, **opts)
    if child_cfg.model_args.attention not in ("mha", "gqa"):
        raise SurgeryError(f"{mutation}: no weight transfer into attention {child_cfg.model_args.attention!r} "
                           f"(surgeries convert to gqa, mqa, mha and mla); use --config-only to train it fresh")
    m, c = parent.cfg, child_cfg.model_args
    nh, hs, nkv, n = m.n_head, m.head_dim, m.kv_heads, c.kv_heads
    if (n < nkv and nkv % n) or (n > nkv and n % nkv):
        raise SurgeryError(f"{mutation}: the parent's {nkv} KV heads cannot be grouped into {n} (mean pooling "
                           f"needs {n} to divide {nkv}, or {nkv} to divide {n}); valid counts: "
                           f"{[d for d in range(1, nh + 1) if nh % d == 0 and (nkv % d == 0 or d % nkv == 0)]}")
    child = _new_child(child_cfg, parent)
    with torch.no_grad():
        for pb, cb in zip(parent.blocks, child.blocks):
            for name in ("weight", "bias"):
                t = getattr(pb.attn.qkv, name)
                if t is None:
                    continue
                q, k, v = split_qkv(t, nh, nkv, hs)
                getattr(cb.attn.qkv, name).copy_(torch.cat([q.flatten(0, 1), regroup_heads(k, n).flatten(0, 1),
                                                            regroup_heads(v, n).flatten(0, 1)]))
    how = "K/V heads mean-pooled per group (Ainslie et al. 2023)" if n < nkv else "K/V heads repeated (exact)"
    return child_cfg, child, n >= nkv, {"kv_heads": [nkv, n], "method": how}


# --------------------------------------------------------------------------------------------------
# attention: MLA by MHA2MLA (partial RoPE, then a joint SVD of the K/V projections)
# --------------------------------------------------------------------------------------------------
def rope_channels(head_dim: int, rot_dim: int, freqs: list[int]) -> tuple[list[int], list[int]]:
    """(nope, rope) channel indices of one parent head when MHA2MLA keeps RoPE on the frequency pairs `freqs`.

    The parent rotates its first rot_dim channels in Llama's half-split layout: pair i = (i, i + rot_dim/2)
    turns at the i-th frequency of its table (theta^(-2i/rot_dim), highest first). The kept pairs keep RoPE;
    every other channel (including the parent's unrotated ones) loses it and goes through the latent. The
    child's rope part is laid out half-split again, [f..., f + rot_dim/2 ...] for f in freqs, so child pair j
    turns at the parent's frequency freqs[j] (the child's `rope_freqs` buffer holds freqs)."""
    rope = list(freqs) + [rot_dim // 2 + i for i in freqs]
    taken = set(rope)
    return [i for i in range(head_dim) if i not in taken], rope


@torch.no_grad()
def rope_pair_norms(model: GPT, calib: torch.Tensor, batch: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (queries (nh, rot/2), keys (nkv, rot/2)): the mean over the calibration tokens of the 2-norm
    of each head's rotary frequency pair i = channels (i, i + rot/2), taken from the qkv projection (a
    rotation turns the pair without changing its norm, so before RoPE is the same as after)."""
    m = model.cfg
    nh, nkv, hs = m.n_head, m.kv_heads, m.head_dim
    half = int(hs * m.rope.fraction) // 2
    sums = [[0.0, 0.0] for _ in range(m.n_layer)]
    count = [0]

    def pair_norm(t: torch.Tensor) -> torch.Tensor:  # (N, h, hs) -> (h, rot/2) summed over N
        return torch.hypot(t[..., :half], t[..., half:2 * half]).sum(0)

    def hook(i):
        def fn(mod, args, out):
            q, k, _ = out.flatten(0, 1).float().split([nh * hs, nkv * hs, nkv * hs], dim=-1)
            sums[i][0] = sums[i][0] + pair_norm(q.unflatten(-1, (nh, hs)))
            sums[i][1] = sums[i][1] + pair_norm(k.unflatten(-1, (nkv, hs)))
            if i == 0:
                count[0] += out.shape[0] * out.shape[1]
        return fn

    run_hooked(model, calib, [b.attn.qkv.register_forward_hook(hook(i)) for i, b in enumerate(model.blocks)], batch)
    return [(q / count[0], k / count[0]) for q, k in sums]


def select_rope_freqs(q_norm: torch.Tensor, k_norm: torch.Tensor, keep: int) -> list[list[int]]:
    """MHA2MLA's 2-norm selection (S_2-norm, Ji et al. 2025, sec. 3.1): the contribution of frequency pair i to
    a query-key score is bounded by ||q_i|| ||k_i|| (Cauchy-Schwarz on the 2-D subspace), so each KV head keeps
    RoPE on the `keep` pairs with the largest mean query norm x mean key norm; the query norm is averaged over
    the query heads that read that KV head (they share its RoPE key). q_norm (nh, P), k_norm (nkv, P) ->
    per KV head the kept pair indices, ascending (highest frequency first)."""
    nkv = k_norm.shape[0]
    score = q_norm.unflatten(0, (nkv, -1)).mean(1) * k_norm                      # (nkv, P)
    return [sorted(row.topk(keep).indices.tolist()) for row in score]


def mha2mla(parent, parent_cfg, child_cfg, calib, **opts):
    """MHA2MLA (Ji et al. 2025, "Towards Economical Inference: Enabling DeepSeek's Multi-Head Latent Attention
    in Any Transformer-based LLMs"), per layer:

    1. partial RoPE: each KV head keeps RoPE on dr/2 of its rotary frequency pairs as a decoupled RoPE key
       (mla.rope_heads = the parent's KV heads, so nothing is shared that was not); mla.rope_select "high"
       (default) keeps the highest frequencies (S_high), "norm" picks them per head by the 2-norm score on
       the calibration text (S_2-norm, the paper's best after its long finetunes; on SmolLM2-135M with
       256-token windows it cost 1.25-2.25x S_high's KL before healing and 1.8-2.1x its perplexity after
       4,096 healing tokens, 2 paired seeds: BENCHMARKS.md "Partial RoPE"); queries are permuted to
       [nope | rope] as their KV head;
    2. SVD_joint: the remaining key channels and the values, stacked [W_k_nope; W_v] (nkv (2 hs - dr), C),
       are factored by a truncated SVD U_r S_r V_r^T: kv_down = S_r^1/2 V_r^T (r, C) writes the latent,
       kv_up = U_r S_r^1/2 expands it to every query head's [k_nope | v] (its KV head's rows).

    The child keeps the parent's rope config (theta, fraction, scaling): its keys turn at the parent's own
    frequencies, indexed per layer and key by the `rope_freqs` buffer. No latent norm (the SVD factors are the
    projection itself). At full rank with every frequency kept the child computes the parent's function.
    Returns the relative Frobenius error of the truncation per layer and the kept frequencies in details."""
    m, c = parent.cfg, child_cfg.model_args
    nh, hs, nkv, C = m.n_head, m.head_dim, m.kv_heads, m.n_embd
    rotary = m.position in ("rope", "hybrid")
    rot = int(hs * m.rope.fraction) // 2 * 2 if rotary else 0
    dr = c.mla.rope_dim(hs) if rotary else 0
    select = c.mla.rope_select or "high"  # measured: S_high loses less than the 2-norm on SmolLM2 (BENCHMARKS.md)
    if rotary and dr > rot:
        raise SurgeryError(f"attention mla: mla.rope_head_dim={dr} exceeds the parent's {rot} rotated channels "
                           f"per head; set model_args.mla.rope_head_dim to an even number <= {rot}")
    rows = nkv * (2 * hs - dr)
    full = min(rows, C)
    r = c.mla.kv_rank
    if r > full:
        raise SurgeryError(f"attention mla: mla.kv_rank={r} exceeds the rank of the parent's K/V projections "
                           f"({full} = min(n_kv_head*(2*head_dim - rope_dim) = {rows}, n_embd = {C})); pick "
                           f"kv_rank <= {full} (attention mla_<r>)")
    if c.mla.q_rank:
        raise SurgeryError("attention mla: a query bottleneck (mla.q_rank > 0) has no exact transfer from the "
                           "parent's queries; leave model_args.mla.q_rank at 0")
    over = {"model_args.mla.rope_heads": nkv, "model_args.mla.latent_norm": False,
            "model_args.mla.rope_head_dim": dr if rotary else child_cfg.model_args.mla.rope_head_dim}
    if rotary:
        over["model_args.mla.rope_select"] = select
    child_cfg = child_cfg.replace(over)
    if not rotary:
        freqs = [[[] for _ in range(nkv)] for _ in parent.blocks]
    elif select == "high":
        freqs = [[list(range(dr // 2))] * nkv for _ in parent.blocks]
    else:
        norms = rope_pair_norms(parent, _need_calib(calib, "attention mla (mla.rope_select 'norm')"))
        freqs = [select_rope_freqs(qn, kn, dr // 2) for qn, kn in norms]
    child = _new_child(child_cfg, parent)
    group = nh // nkv
    heads = torch.arange(nh) // group                                            # each query head's KV head
    errors = []
    with torch.no_grad():
        for pb, cb, fl in zip(parent.blocks, child.blocks, freqs):
            a, ca = pb.attn, cb.attn
            chans = [rope_channels(hs, rot, f) for f in fl]
            nope_t = torch.tensor([n for n, _ in chans], dtype=torch.long)       # (nkv, hs - dr)
            rope_t = torch.tensor([rp for _, rp in chans], dtype=torch.long).view(nkv, dr)
            perm = torch.cat([nope_t, rope_t], dim=1)[heads]                     # (nh, hs): [nope | rope]
            kv_i = torch.arange(nkv)[:, None]
            q, k, v = split_qkv(a.qkv.weight.float(), nh, nkv, hs)               # (nh|nkv, hs, C)
            ca.wq.weight.copy_(q[torch.arange(nh)[:, None], perm].flatten(0, 1))
            joint = torch.cat([k[kv_i, nope_t].flatten(0, 1), v.flatten(0, 1)])  # (nkv (2hs - dr), C)
            U, S, Vh = torch.linalg.svd(joint, full_matrices=False)
            root = S[:r].sqrt()
            down, up = root[:, None] * Vh[:r], U[:, :r] * root[None, :]          # (r, C), (rows, r)
            errors.append(float(S[r:].square().sum().sqrt() / S.square().sum().sqrt()))
            up_k = up[: nkv * (hs - dr)].unflatten(0, (nkv, hs - dr))            # (nkv, hs - dr, r)
            up_v = up[nkv * (hs - dr):].unflatten(0, (nkv, hs))                  # (nkv, hs, r)
            ca.kv_up.weight.copy_(torch.cat([up_k[heads], up_v[heads]], dim=1).flatten(0, 1))
            ca.kv_down.weight.copy_(torch.cat([down, k[kv_i, rope_t].flatten(0, 1)]))
            if dr:
                ca.rope_freqs.copy_(torch.tensor(fl, dtype=torch.long))
            if a.qkv.bias is not None:
                bq, bk, bv = split_qkv(a.qkv.bias.float(), nh, nkv, hs)
                ca.wq.bias.copy_(bq[torch.arange(nh)[:, None], perm].flatten())
                ca.kv_down.bias.copy_(torch.cat([bk.new_zeros(r), bk[kv_i, rope_t].flatten()]))
                ca.kv_up.bias.copy_(torch.cat([bk[kv_i, nope_t][heads], bv[heads]], dim=1).flatten())
    strategy = {"norm": "S_2-norm", "high": "S_high"}[select] if rotary else "none (no rotary position)"
    details = {"method": f"MHA2MLA (Ji et al. 2025): partial RoPE ({strategy}) + joint SVD of K/V",
               "kv_rank": r, "full_rank": full, "rope_head_dim": dr, "rope_strategy": strategy,
               "rope_freqs": freqs if rotary else [],
               "svd_rel_error_mean": sum(errors) / len(errors), "svd_rel_error_max": max(errors)}
    return child_cfg, child, r == full and dr == rot, details


# --------------------------------------------------------------------------------------------------
# Calibration helpers
# --------------------------------------------------------------------------------------------------
def _need_calib(calib, mutation: str) -> torch.Tensor:
    if calib is None or calib.numel() == 0:
        raise SurgeryError(f"{mutation}: ranks what to keep on calibration text; pass calib (N, T) token "
                           f"windows (CLI: --calib FILE, default the held-out text)")
    return calib


@torch.no_grad()
def run_hooked(model: GPT, calib: torch.Tensor, hooks: list, batch: int = 4) -> None:
    """Forward the calibration windows (N, T) in batches with `hooks` registered, then remove them."""
    try:
        model.eval()
        for i in range(0, calib.shape[0], batch):
            model(calib[i:i + batch].to(next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def residual_stream(model: GPT, calib: torch.Tensor, batch: int = 4) -> list[torch.Tensor]:
    """Per layer boundary l = 0..n_layer, the hidden states entering block l (l = n_layer: leaving the last
    block, before the final norm), each (N*T, C) float32 over the calibration windows."""
    states: list[list[torch.Tensor]] = [[] for _ in range(model.cfg.n_layer + 1)]
    hooks = [b.register_forward_pre_hook(lambda mod, args, i=i: states[i].append(args[0].flatten(0, 1).float()))
             for i, b in enumerate(model.blocks)]
    hooks.append(model.blocks[-1].register_forward_hook(
        lambda mod, args, out: states[-1].append(out.flatten(0, 1).float())))
    run_hooked(model, calib, hooks, batch)
    return [torch.cat(s) for s in states]


# --------------------------------------------------------------------------------------------------
# depth: drop the blocks whose removal changes the residual stream least
# --------------------------------------------------------------------------------------------------
def block_influence(states: list[torch.Tensor]) -> list[float]:
    """ShortGPT's block influence (Men et al. 2024, eq. 1): BI_l = 1 - mean over tokens of cos(x_l, x_{l+1}),
    how much block l turns the residual stream. A block that adds nothing scores 0."""
    return [float(1 - torch.nn.functional.cosine_similarity(states[i], states[i + 1], dim=-1).mean())
            for i in range(len(states) - 1)]


def angular_distance(states: list[torch.Tensor], n: int) -> list[float]:
    """Gromov et al. 2024 ("The Unreasonable Ineffectiveness of the Deeper Layers", eq. 7): for each start l,
    the mean angular distance arccos(cos(x_l, x_{l+n})) / pi between the stream entering block l and leaving
    block l+n-1; the n consecutive blocks with the smallest distance are the most redundant."""
    out = []
    for i in range(len(states) - n):
        cos = torch.nn.functional.cosine_similarity(states[i], states[i + n], dim=-1).clamp(-1, 1)
        out.append(float(torch.arccos(cos).mean() / math.pi))
    return out


@surgery("depth", "depth: blocks ranked on calibration text by block influence (ShortGPT, Men et al. 2024) "
                  "or angular distance (Gromov et al. 2024), the least influential dropped")
def depth(parent, parent_cfg, child_cfg, calib, *, depth_method: str = "bi", seed: int = 0, **opts):
    """depth_method 'bi': drop the k blocks of lowest block influence, anywhere (ShortGPT); 'angular': drop the
    k consecutive blocks whose span turns the stream least (Gromov et al.); 'random': k blocks drawn with
    `seed` (the control that shows what the ranking is worth)."""
    mutation = child_cfg.lineage.get("mutation", "depth")
    L, L2 = parent.cfg.n_layer, child_cfg.model_args.n_layer
    if L2 > L:
        raise SurgeryError(f"{mutation}: adding blocks has no trained weights to transfer; use --config-only to "
                           f"train {L2} layers fresh")
    if depth_method not in ("bi", "angular", "random"):
        raise SurgeryError(f"depth_method must be 'bi' (block influence), 'angular' or 'random' (the control), "
                           f"got {depth_method!r}")
    if parent.cfg.attention == "sliding_window" and len(parent.cfg.sliding_window.pattern) > 1:
        raise SurgeryError(f"{mutation}: sliding_window.pattern {parent.cfg.sliding_window.pattern!r} is cycled "
                           f"by layer index, so dropping blocks would turn local layers global; not supported")
    k = L - L2
    if depth_method == "random":
        drop = sorted(random.Random(seed).sample(range(L), k))
        scores = []
    elif depth_method == "bi":
        scores = block_influence(residual_stream(parent, _need_calib(calib, mutation)))
        drop = sorted(sorted(range(L), key=lambda i: scores[i])[:k])
    else:
        scores = angular_distance(residual_stream(parent, _need_calib(calib, mutation)), k)
        start = min(range(len(scores)), key=lambda i: scores[i])
        drop = list(range(start, start + k))
    keep = [i for i in range(L) if i not in drop]
    child = _new_child(child_cfg, parent)
    with torch.no_grad():
        for j, i in enumerate(keep):
            child.blocks[j].load_state_dict(parent.blocks[i].state_dict())
    exact = all(scores[i] == 0 for i in drop) if depth_method == "bi" else False
    return child_cfg, child, exact, {"dropped": drop, "depth_method": depth_method,
                                     "scores": [round(s, 6) for s in scores]}


# --------------------------------------------------------------------------------------------------
# mlp_ratio: keep the most active hidden units
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def hidden_activity(model: GPT, calib: torch.Tensor, batch: int = 4) -> list[torch.Tensor]:
    """Per block, the mean |h_j| of each MLP hidden unit j (h = the input of mlp.proj) over the calibration
    tokens: Minitron's activation-based neuron importance (Muralidharan et al. 2024, sec. 2.2, mean over
    the batch and sequence)."""
    sums = [None] * model.cfg.n_layer
    count = [0]

    def hook(i):
        def fn(mod, args):
            h = args[0].flatten(0, 1).float().abs()
            sums[i] = h.sum(0) if sums[i] is None else sums[i] + h.sum(0)
            if i == 0:
                count[0] += h.shape[0]
        return fn

    hooks = [b.mlp.proj.register_forward_pre_hook(hook(i)) for i, b in enumerate(model.blocks)]
    run_hooked(model, calib, hooks, batch)
    return [s / count[0] for s in sums]


@surgery("mlp_ratio", "mlp_ratio: hidden units ranked by mean activation magnitude on calibration text "
                      "(Minitron, Muralidharan et al. 2024); widening adds zero-output units")
def mlp_ratio(parent, parent_cfg, child_cfg, calib, **opts):
    mutation = child_cfg.lineage.get("mutation", "mlp_ratio")
    if parent.cfg.mlp == "moe":
        raise SurgeryError(f"{mutation}: the parent's MLP is a mixture of experts; pruning expert units is not "
                           f"supported (use --config-only)")
    H, H2 = parent.cfg.mlp_hidden, child_cfg.model_args.mlp_hidden
    gated = parent.blocks[0].mlp.fc.weight.shape[0] == 2 * H
    child = _new_child(child_cfg, parent)
    kept: list[list[int]] = []
    activity = hidden_activity(parent, _need_calib(calib, mutation)) if H2 < H else None
    with torch.no_grad():
        for li, (pb, cb) in enumerate(zip(parent.blocks, child.blocks)):
            pf, pp, cf, cp = pb.mlp.fc, pb.mlp.proj, cb.mlp.fc, cb.mlp.proj
            if H2 < H:
                idx = activity[li].topk(H2).indices.sort().values                 # kept units, in order
            else:
                idx = torch.arange(H)
            kept.append(idx.tolist() if H2 < H else [])
            rows = torch.cat([idx, H + idx]) if gated else idx                     # [gate | up] rows
            n = idx.numel()
            dest = torch.cat([torch.arange(n), H2 + torch.arange(n)]) if gated else torch.arange(n)
            cf.weight[dest] = pf.weight[rows]
            if pf.bias is not None:
                cf.bias[dest] = pf.bias[rows]
            cp.weight.zero_()                     # new units (widening) write nothing until trained
            cp.weight[:, :n] = pp.weight[:, idx]
            if pp.bias is not None:
                cp.bias.copy_(pp.bias)
    return child_cfg, child, H2 >= H, {"hidden": [H, H2]}

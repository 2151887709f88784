"""Causal self-attention variants. Each maps x (B, T, C) -> (B, T, C) and owns its KV-cache format.

    forward(x, pos, positions, cache=None, mask=None)
        pos        the model's Position module (rotate / bias hooks)
        positions  (T,) or (B, T) token positions, for rotary/learned encodings
        cache      the layer's cache from `new_cache()`, or None (training)
        mask       optional (B, 1, T, Tk) bool, True = may attend (document boundaries, left padding)

A sparse pattern is one method, `allowed(q_slots, k_slots) -> (Tq, Tk) bool or None`, combined with
causality; the SDPA `is_causal` flash path is taken whenever nothing else constrains the scores. Masks and
biases go through SDPA's `attn_mask` (FlexAttention has no CPU backward in torch 2.13).

Every cache has `length`, `update(...)` and `nbytes_per_token()` (bytes one layer keeps per token of one
sequence), so cache sizes can be compared across variants.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ModelConfig
from foundry.modules.norm import RMSNorm
from foundry.modules.position import Position, apply_rope, rope_cos_sin, rope_cos_sin_heads, rope_inv_freq
from foundry.modules.registries import ATTENTION


# --------------------------------------------------------------------------------------------------
# Caches
# --------------------------------------------------------------------------------------------------
class KVCache:
    """Preallocated keys and values, (B, n_kv_head, T_max, hs) each; `length` slots are filled."""

    def __init__(self, batch: int, n_kv_head: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append (B, nkv, T, hs) keys/values; return all filled keys/values."""
        t0, t1 = self.length, self.length + k.shape[2]
        if t1 > self.k.shape[2]:
            raise ValueError(f"KV cache full: {t1} tokens > its {self.k.shape[2]} slots")
        self.k[:, :, t0:t1] = k
        self.v[:, :, t0:t1] = v
        self.length = t1
        return self.k[:, :, :t1], self.v[:, :, :t1]

    def nbytes_per_token(self) -> int:
        """Bytes this layer's cache holds per token of one sequence."""
        return (self.k[0, :, 0].numel() + self.v[0, :, 0].numel()) * self.k.element_size()

    @property
    def capacity(self) -> int:
        """Most tokens of one sequence held at once (memory = capacity x nbytes_per_token per sequence)."""
        return self.k.shape[2]


class RollingKVCache:
    """A sliding-window layer's cache: only the last `window - 1` keys/values, (B, nkv, window - 1, hs), in
    slot order, so memory stays bounded however long the sequence grows (Mistral's rolling buffer).

    A query at slot t sees slots t - window + 1 .. t: the `window - 1` before the chunk plus the chunk's own
    tokens. `update` returns the kept keys followed by the new ones, and `key_slots` their absolute slots, so
    the layer's pattern, causality, position biases and the caller's mask all index by slot as with the full
    cache. Each update copies at most window - 1 kept rows: the same order of work as attending to them."""

    def __init__(self, batch: int, n_kv_head: int, window: int, head_dim: int, device, dtype):
        self.keep = window - 1
        self.k = torch.zeros(batch, n_kv_head, self.keep, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0   # tokens seen (the next token's slot); min(length, keep) rows of self.k are in use
        self._first = 0   # slot of the first key returned by the last update

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append (B, nkv, T, hs); return (kept + new) keys/values, (B, nkv, min(length, keep) + T, hs)."""
        held = min(self.length, self.keep)
        k_all = torch.cat((self.k[:, :, :held], k), dim=2)
        v_all = torch.cat((self.v[:, :, :held], v), dim=2)
        self._first = self.length - held
        self.length += k.shape[2]
        held = min(self.length, self.keep)
        if held:
            self.k[:, :, :held] = k_all[:, :, -held:]
            self.v[:, :, :held] = v_all[:, :, -held:]
        return k_all, v_all

    def key_slots(self, device) -> torch.Tensor:
        """(Tk,) absolute slots of the keys the last update returned."""
        return torch.arange(self._first, self.length, device=device)

    def nbytes_per_token(self) -> int:
        return (self.k[0, :, 0].numel() + self.v[0, :, 0].numel()) * self.k.element_size() if self.keep else 0

    @property
    def capacity(self) -> int:
        return self.keep


class LatentCache:
    """MLA's cache: the compressed KV latent (B, T_max, kv_rank) and the shared RoPE key (B, T_max, rope_dim),
    nothing per head. Full K/V are re-expanded from the latent at each step."""

    def __init__(self, batch: int, max_len: int, kv_rank: int, rope_dim: int, device, dtype):
        self.c = torch.zeros(batch, max_len, kv_rank, device=device, dtype=dtype)
        self.k_rope = torch.zeros(batch, max_len, rope_dim, device=device, dtype=dtype)
        self.length = 0

    def update(self, c: torch.Tensor, k_rope: torch.Tensor):
        """Append latents (B, T, r) and rope keys (B, T, dr); return all filled ones."""
        t0, t1 = self.length, self.length + c.shape[1]
        if t1 > self.c.shape[1]:
            raise ValueError(f"KV cache full: {t1} tokens > its {self.c.shape[1]} slots")
        self.c[:, t0:t1] = c
        self.k_rope[:, t0:t1] = k_rope
        self.length = t1
        return self.c[:, :t1], self.k_rope[:, :t1]

    @property
    def capacity(self) -> int:
        return self.c.shape[1]

    def nbytes_per_token(self) -> int:
        return (self.c.shape[-1] + self.k_rope.shape[-1]) * self.c.element_size()


# --------------------------------------------------------------------------------------------------
# The attention kernel
# --------------------------------------------------------------------------------------------------
def rms_norm_heads(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).type_as(x)


def causal_allowed(Tq: int, Tk: int, device) -> torch.Tensor:
    """(Tq, Tk) bool: the Tq queries are the last Tq of the Tk keys."""
    q = torch.arange(Tk - Tq, Tk, device=device)
    return torch.arange(Tk, device=device)[None, :] <= q[:, None]


# Longest sequence for which CPU training takes the explicit causal path below instead of SDPA's flash kernel.
# Measured on an AVX2 CPU, 2 threads, fp32 forward+backward (bench/bench_train.py attn, BENCHMARKS.md): explicit
# is 1.15-1.33x faster than the flash kernel at T=32-128, head size 32-64 (the kernel's blocking overhead
# dominates tiny tiles), and 0.65-0.81x from T=256. Forward-only (evaluation, generation) keeps SDPA.
EXPLICIT_CAUSAL_MAX_T = 128


def explicit_causal_rule(cpu) -> tuple[bool, str]:
    """(take the explicit path, why) for a `foundry.hostcpu.HostCPU`; measured with bench/bench_train.py attn,
    2 threads, fp32 forward+backward, heads as the model makes them (BENCHMARKS.md "Training"):
    - below AVX-512 (AVX2 AMD EPYC, 2026-11-27): explicit 1.15-1.33x SDPA's flash kernel at T=32-128;
    - AVX-512 on AMD (EPYC, cpu family 26, 2026-12-02): explicit 1.14-1.45x at T=32-128 (0.97-1.03x at T=256);
    - AVX-512 on Intel (Sapphire Rapids, 2026-12-01): explicit 0.57-0.89x at every T from 32 to 256, so SDPA.
    Other AVX-512 CPUs are unmeasured and keep SDPA (torch's own choice)."""
    if not cpu.avx512:
        return True, f"{cpu.capability} kernels: explicit measured 1.15-1.33x the flash kernel at T <= 128"
    if cpu.vendor == "AuthenticAMD":
        return True, "AMD AVX-512: explicit measured 1.14-1.45x the flash kernel at T <= 128"
    return False, f"{cpu.vendor or 'this CPU'} AVX-512: the flash kernel measured faster (Intel: explicit 0.57-0.89x)"


@functools.lru_cache(maxsize=1)
def explicit_causal_pays() -> bool:
    """Whether this CPU takes the explicit path at all (explicit_causal_rule on this machine; cached).
    ATEN_CPU_CAPABILITY=avx2 forces the below-AVX-512 rule."""
    from foundry.hostcpu import host_cpu

    return explicit_causal_rule(host_cpu())[0]


@functools.lru_cache(maxsize=8)
def _causal_bias(T: int) -> torch.Tensor:
    """(T, T) float32 additive mask: 0 where key <= query, -inf above the diagonal (CPU, read-only)."""
    return torch.full((T, T), float("-inf")).triu_(1)


def _explicit_causal(q, k, v):
    """Causal attention as baddbmm -> softmax -> bmm over (B*nh) heads; q, k, v (B, nh, T, hs), same heads.

    One fused scale-and-mask GEMM (baddbmm adds the -inf bias) and one softmax: for short sequences on CPU
    this runs forward+backward faster than the flash kernel; numerically it is plain softmax attention."""
    B, nh, T, hs = q.shape
    scores = torch.baddbmm(_causal_bias(T), q.reshape(B * nh, T, hs), k.reshape(B * nh, T, hs).transpose(1, 2),
                           alpha=1.0 / math.sqrt(hs))                                    # (B*nh, T, T)
    return (scores.softmax(dim=-1) @ v.reshape(B * nh, T, hs)).view(B, nh, T, hs)


def attend(q, k, v, *, allowed=None, bias=None, softcap: float = 0.0, dropout: float = 0.0, causal: bool = True,
           scale: float | None = None):
    """Scaled dot-product attention over q (B, nh, Tq, d), k (B, nkv, Tk, d), v (B, nkv, Tk, dv).

    allowed: bool, broadcastable to (B, nh, Tq, Tk), True = may attend (already includes causality) or None
    bias:    float, broadcastable to (B, nh, Tq, Tk), added to the scores, or None
    causal:  with allowed None, the Tq queries are the last Tq keys and see no later key; with bias None too,
             this is SDPA's is_causal flash path (Tq == Tk)
    scale:   score scale, default 1/sqrt(d) (MLA's absorbed decode attends in latent space with its head's scale)
    """
    nh, nkv = q.shape[1], k.shape[1]
    if 1 < nkv < nh and q.shape[2] == 1 and dropout == 0.0:
        # GQA decode (one query per head): fold each group's nh // nkv query heads into the query axis of its
        # KV head, (B, nh, 1, d) -> (B, nkv, nh // nkv, d), instead of copying every cached K/V head per group.
        # The one query sees every key it is allowed, so no causal mask; masks and biases fold the same way.
        B, Tk = q.shape[0], k.shape[2]

        def fold(t):  # broadcastable to (B, nh, 1, Tk) -> (B, nkv, nh // nkv, Tk)
            return t.expand(B, nh, 1, Tk).reshape(B, nkv, nh // nkv, Tk) if t is not None else None

        y = attend(q.reshape(B, nkv, nh // nkv, q.shape[-1]), k, v, allowed=fold(allowed), bias=fold(bias),
                   softcap=softcap, causal=False, scale=scale)
        return y.reshape(B, nh, 1, v.shape[-1])
    if nkv == 1 and nh > 1 and q.device.type == "cpu":
        # MQA and MLA's latent decode on CPU: one K/V head for all as a stride-0 view, no copy (halves MLA's
        # decode step, bench/bench_decode.py); CUDA kernels keep the copied layout they were measured with
        k, v = k.expand(-1, nh, -1, -1), v.expand(-1, nh, -1, -1)
    elif nkv != nh:  # GQA: each KV head serves nh // nkv consecutive query heads
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    Tq, Tk = q.shape[2], k.shape[2]
    if allowed is None and causal and Tq > 1 and (bias is not None or softcap > 0 or Tq != Tk):
        allowed = causal_allowed(Tq, Tk, q.device)  # causality must be explicit once scores are
    if softcap > 0:
        # soft-capped logits (Gemma 2): c * tanh(s / c); SDPA cannot do this, so scores are explicit
        scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        scores = softcap * torch.tanh(scores / softcap)
        if bias is not None:
            scores = scores + bias
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        att = F.dropout(scores.float().softmax(dim=-1).type_as(q), p=dropout)
        return att @ v
    if allowed is None and bias is None:
        if (causal and Tq == Tk and 1 < Tk <= EXPLICIT_CAUSAL_MAX_T and dropout == 0.0 and q.device.type == "cpu"
                and q.dtype == torch.float32 and torch.is_grad_enabled() and q.requires_grad and scale is None
                and v.shape[-1] == q.shape[-1] and explicit_causal_pays()):
            return _explicit_causal(q, k, v)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal and Tq > 1, scale=scale)
    mask = None if bias is None else bias.to(q.dtype)
    if allowed is not None:
        add = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        mask = add if mask is None else mask + add
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale)


# --------------------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------------------
@ATTENTION.register("mha")
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (Vaswani et al. 2017) through F.scaled_dot_product_attention.

    With n_kv_head < n_head the same class is grouped-query attention; a fused `qkv` projection holds
    [q (nh*hs) | k (nkv*hs) | v (nkv*hs)] and `proj` maps heads back to the residual stream.
    """

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.has_bias("qkv"))
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=cfg.has_bias("attn_proj"))
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.qk_norm = cfg.qk_norm

    # -- the one method a sparse pattern overrides ------------------------------------------------
    def allowed(self, q_slots: torch.Tensor, k_slots: torch.Tensor) -> torch.Tensor | None:
        """(Tq, Tk) bool pattern on top of causality, or None for dense causal attention."""
        return None

    # -- cache ------------------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int, device, dtype) -> KVCache:
        return KVCache(batch, self.n_kv_head, max_len, self.head_dim, device, dtype)

    def project_qkv(self, x: torch.Tensor):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        return q, k, v

    def forward(self, x, pos, positions, cache=None, mask=None):
        B, T, C = x.shape
        q, k, v = self.project_qkv(x)
        if self.qk_norm:
            q, k = rms_norm_heads(q), rms_norm_heads(k)
        q, k = pos.rotate(q, k, positions)
        start, k_slots = 0, None
        if cache is not None:
            start = cache.length
            k, v = cache.update(k, v)
            if hasattr(cache, "key_slots"):  # a cache that keeps only some slots (rolling window)
                k_slots = cache.key_slots(x.device)
                if mask is not None and mask.shape[-1] != k.shape[2]:
                    mask = mask.index_select(-1, k_slots)  # the caller's (B, 1, Tq, all slots) mask, kept slots
        y = self.attend_scores(q, k, v, pos, start, mask, k_slots)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * y.shape[-1])  # (B, T, nh*hs)
        return self.resid_dropout(self.proj(y))

    def attend_scores(self, q, k, v, pos, start: int, mask, k_slots: torch.Tensor | None = None,
                      scale: float | None = None):
        """Combine causality, the variant's pattern, the position bias and the caller's mask. k_slots (Tk,):
        the keys' absolute slots when a cache returns only some of them (default 0..Tk-1)."""
        Tq, Tk = q.shape[2], k.shape[2]
        dropout = self.dropout if self.training else 0.0
        if (mask is None and k_slots is None and not (start > 0 and Tq > 1)
                and type(self).allowed is CausalSelfAttention.allowed and type(pos).bias is Position.bias):
            # dense causal attention with no score bias: straight to SDPA's is_causal path
            return attend(q, k, v, softcap=self.cfg.attn_softcap, dropout=dropout, causal=True, scale=scale)
        q_slots = torch.arange(start, start + Tq, device=q.device)
        if k_slots is None:
            k_slots = torch.arange(Tk, device=q.device)
        pattern = self.allowed(q_slots, k_slots)
        bias = pos.bias(q_slots, k_slots)
        allowed = None
        if pattern is not None or mask is not None or (start > 0 and Tq > 1):
            allowed = k_slots[None, :] <= q_slots[:, None]  # (Tq, Tk) causal
            if pattern is not None:
                allowed = allowed & pattern
            if mask is not None:
                allowed = allowed & mask
        return attend(q, k, v, allowed=allowed, bias=bias, softcap=self.cfg.attn_softcap, dropout=dropout,
                      causal=True, scale=scale)


@ATTENTION.register("gqa")
class GroupedQueryAttention(CausalSelfAttention):
    """Grouped-query attention (Ainslie et al. 2023): n_kv_head < n_head KV heads, each shared by a group of
    query heads; n_kv_head = 1 is multi-query attention (Shazeer 2019). The KV cache shrinks n_head/n_kv_head x."""


# --------------------------------------------------------------------------------------------------
# Sparse patterns: one `allowed` each, on cache slot indices (absolute token slots)
# --------------------------------------------------------------------------------------------------
@ATTENTION.register("sliding_window")
class SlidingWindowAttention(CausalSelfAttention):
    """Sliding-window attention (Longformer, Beltagy et al. 2020; Mistral 2023): each query sees its last
    `window` tokens (itself included). `sliding_window.pattern` is cycled over layers, S = sliding,
    L = global (Gemma 2's alternation is "SL"); `sliding_window.layers` sets each layer's window instead."""
    options = ("model_args.sliding_window",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        window = cfg.sliding_window.layer_window(layer_idx)
        self.is_global = window is None
        self.window = cfg.sliding_window.window if window is None else window

    def new_cache(self, batch: int, max_len: int, device, dtype):
        """Sliding layers decode with a rolling buffer of window - 1 tokens; global layers keep everything."""
        if self.is_global or self.window > max_len:
            return super().new_cache(batch, max_len, device, dtype)
        return RollingKVCache(batch, self.n_kv_head, self.window, self.head_dim, device, dtype)

    def allowed(self, q_slots, k_slots):
        if self.is_global or self.window >= int(q_slots[-1]) + 1:
            return None  # the window covers every earlier token: dense causal, flash path
        return (q_slots[:, None] - k_slots[None, :]) < self.window


@ATTENTION.register("block_sparse")
class BlockSparseAttention(CausalSelfAttention):
    """Block-sparse attention (local + global blocks as in BigBird, Zaheer et al. 2020): the sequence is cut
    into blocks of `block` tokens; a query sees its own and `local_blocks - 1` preceding blocks, plus the
    first `global_blocks` blocks."""
    options = ("model_args.block_sparse",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        bs = cfg.block_sparse
        self.block, self.local_blocks, self.global_blocks = bs.block, bs.local_blocks, bs.global_blocks

    def allowed(self, q_slots, k_slots):
        qb, kb = q_slots[:, None] // self.block, k_slots[None, :] // self.block  # block indices
        if int(qb.max()) < self.local_blocks:
            return None  # every block in reach: dense causal
        return ((qb - kb) < self.local_blocks) | (kb < self.global_blocks)


@ATTENTION.register("strided")
class StridedAttention(CausalSelfAttention):
    """Sparse Transformer patterns (Child et al. 2019). `strided`: the last `stride` tokens plus every
    `stride`-th token before (distance a multiple of stride); `fixed`: the query's own block of `stride`
    tokens plus the last `summary` tokens of every earlier block."""
    options = ("model_args.strided",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        st = cfg.strided
        self.mode, self.stride, self.summary = st.mode, st.stride, st.summary

    def allowed(self, q_slots, k_slots):
        if self.stride >= int(q_slots[-1]) + 1:
            return None  # every earlier token within one stride (strided) or one block (fixed): dense causal
        q, k = q_slots[:, None], k_slots[None, :]
        if self.mode == "strided":
            return ((q - k) < self.stride) | ((q - k) % self.stride == 0)
        same_block = (q // self.stride) == (k // self.stride)
        summary = (k % self.stride) >= (self.stride - self.summary)
        return same_block | summary


# --------------------------------------------------------------------------------------------------
# Multi-head latent attention
# --------------------------------------------------------------------------------------------------
ABSORB_MAX_T = 16  # MLA: cached forwards of at most this many new tokens attend in the latent space


@ATTENTION.register("mla")
class MultiHeadLatentAttention(CausalSelfAttention):
    """Multi-head latent attention (DeepSeek-V2, 2024): K and V are expanded from a `kv_rank` latent; position
    enters through a decoupled RoPE key of `rope_head_dim` channels shared by all heads. The cache keeps only
    the latent and that key: (kv_rank + rope_head_dim) numbers per token instead of 2 * n_head * head_dim.

    Per head, q and k are [nope part (hs - dr) | rope part (dr)], v is hs wide; dr = 0 unless the position
    encoding is rotary (rope, hybrid), whose `rotate` hook MLA replaces with its decoupled key. `mla.rope_heads`
    = g decoupled keys (B, T, g * dr), each shared by nh / g consecutive heads (g = 1 in DeepSeek-V2; a model
    converted from GQA by foundry.surgery keeps one per parent KV head, as MHA2MLA, Ji et al. 2025).
    With `mla.rope_select` set, key i and its queries turn at frequencies table[rope_freqs[i]] of the rope
    config's table (rope_inv_freq over head_dim x rope.fraction channels), `rope_freqs` (g, dr/2) a buffer saved
    with the weights (MHA2MLA keeps a different subset of the parent's frequencies per head and layer).
    """
    options = ("model_args.mla", "model_args.rope")  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        nn.Module.__init__(self)
        self.cfg, self.layer_idx = cfg, layer_idx
        m = cfg.mla
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.n_kv_head = cfg.n_head
        self.rope_dim = m.rope_dim(cfg.head_dim) if cfg.position in ("rope", "hybrid") else 0
        self.nope_dim = self.head_dim - self.rope_dim
        self.kv_rank, self.theta = m.kv_rank, cfg.rope.theta
        self.rope_heads = m.rope_heads
        if self.rope_dim and m.rope_select is not None:  # per-key frequency subsets (foundry.surgery sets them)
            self.table_dim, self.scaling = int(cfg.head_dim * cfg.rope.fraction) // 2 * 2, cfg.rope.scaling
            self.register_buffer("rope_freqs", torch.arange(self.rope_dim // 2).repeat(m.rope_heads, 1))
        C, nh, hs = cfg.n_embd, self.n_head, self.head_dim
        qkv_bias = cfg.has_bias("qkv")  # the projections that replace qkv carry its bias
        if m.q_rank > 0:  # queries through their own low-rank bottleneck (saves activations, not cache)
            self.q_down = nn.Linear(C, m.q_rank, bias=qkv_bias)
            self.q_norm = RMSNorm(m.q_rank, cfg.norm_eps)
            self.q_up = nn.Linear(m.q_rank, nh * hs, bias=qkv_bias)
        else:
            self.wq = nn.Linear(C, nh * hs, bias=qkv_bias)
        self.kv_down = nn.Linear(C, m.kv_rank + self.rope_heads * self.rope_dim, bias=qkv_bias)  # [latent | rope keys]
        self.kv_norm = RMSNorm(m.kv_rank, cfg.norm_eps) if m.latent_norm else nn.Identity()
        self.kv_up = nn.Linear(m.kv_rank, nh * (self.nope_dim + hs), bias=qkv_bias)  # [k_nope | v] per head
        self.proj = nn.Linear(nh * hs, C, bias=cfg.has_bias("attn_proj"))
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.qk_norm = cfg.qk_norm

    # Decoding attends in the latent space (DeepSeek-V2's weight absorption): exact up to rounding, see
    # attend_latent. Only for a few new tokens at a time: a long prefill expands K/V once and attends per head
    # (bench/bench_decode.py, CPU, 6 x 384, kv_rank 64, 768-token prompt: absorbed decode 1.8-2.0x faster per
    # token, absorbed prefill 1.8x slower).
    absorb = True

    def new_cache(self, batch: int, max_len: int, device, dtype) -> LatentCache:
        return LatentCache(batch, max_len, self.kv_rank, self.rope_heads * self.rope_dim, device, dtype)

    def rope_cos_sin(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin for the rope keys and for the queries: (T or B, T, dr/2) shared by every head, or with
        per-key frequencies (B or 1, g, T, dr/2) and (B or 1, nh, T, dr/2), each query head its key's."""
        if not hasattr(self, "rope_freqs"):
            cos, sin = rope_cos_sin(positions, self.rope_dim, self.theta, dtype)
            return cos, sin, cos, sin
        inv = rope_inv_freq(self.table_dim, self.theta, self.scaling, positions.device)[self.rope_freqs]
        cos, sin = rope_cos_sin_heads(positions, inv, dtype)                 # (B or 1, g, T, dr/2)
        group = self.n_head // self.rope_heads
        return cos, sin, cos.repeat_interleave(group, dim=1), sin.repeat_interleave(group, dim=1)

    def rope_keys(self, k_rope: torch.Tensor) -> torch.Tensor:
        """(B, T, g * dr) -> (B, g, T, dr): the g decoupled RoPE keys as heads."""
        B, T, _ = k_rope.shape
        return k_rope.view(B, T, self.rope_heads, self.rope_dim).transpose(1, 2)

    def attend_latent(self, q, c, k_rope, pos, start: int, mask):
        """Attention straight from the cached latents, never expanding per-head K/V (DeepSeek-V2 sec. 2.1.3).

        With kv_up = [W_uk | W_uv] per head: q_nope . (W_uk c + b_k) = (q_nope W_uk) . c + q_nope . b_k, and the
        last term is the same for every key, so softmax drops it; sum_j a_j (W_uv c_j + b_v) = W_uv (sum_j a_j c_j)
        + b_v because the weights sum to 1. So the queries move into the latent space once, (B, nh, Tq, r + dr),
        all heads share one latent "key" [c | k_rope] (B, g, Tk, r + dr) (g = rope_heads, grouped like GQA) and
        "value" c, and W_uv maps each head's latent output back to hs. Per step this costs O(Tk (r + dr)) per head instead of
        re-expanding O(Tk r nh (hs - dr + hs)) K/V. q (B, nh, Tq, hs) rotated; c (B, Tk, r); k_rope (B, Tk, g dr).
        Not with qk_norm (a per-key norm of the expanded key cannot be absorbed)."""
        B, nh, Tq, hs = q.shape
        W = self.kv_up.weight.view(nh, self.nope_dim + hs, self.kv_rank)        # (nh, nope + hs, r)
        w_uk, w_uv = W[:, :self.nope_dim], W[:, self.nope_dim:]                 # (nh, nope, r), (nh, hs, r)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        q_lat = torch.cat((q_nope @ w_uk, q_rope), dim=-1)                      # (B, nh, Tq, r + dr)
        g, Tk = self.rope_heads, c.shape[1]
        c_g = c[:, None].expand(B, g, Tk, self.kv_rank)                         # (B, g, Tk, r), a view
        k_lat = torch.cat((c_g, self.rope_keys(k_rope)), dim=-1) if self.rope_dim else c_g  # (B, g, Tk, r + dr)
        o = self.attend_scores(q_lat, k_lat, c_g, pos, start, mask, scale=1.0 / math.sqrt(hs))
        y = o @ w_uv.transpose(1, 2)                                            # (B, nh, Tq, hs)
        if self.kv_up.bias is not None:
            y = y + self.kv_up.bias.view(nh, self.nope_dim + hs)[:, None, self.nope_dim:]
        return y

    def forward(self, x, pos, positions, cache=None, mask=None):
        B, T, C = x.shape
        nh, hs, dr = self.n_head, self.head_dim, self.rope_dim
        q = self.q_up(self.q_norm(self.q_down(x))) if hasattr(self, "q_down") else self.wq(x)
        q = q.view(B, T, nh, hs).transpose(1, 2)                          # (B, nh, T, hs)
        g = self.rope_heads
        c, k_rope = self.kv_down(x).split([self.kv_rank, g * dr], dim=-1)  # (B, T, r), (B, T, g * dr)
        c = self.kv_norm(c)
        if dr:
            cos, sin, q_cos, q_sin = self.rope_cos_sin(positions, q.dtype)
            q_nope, q_rope = q.split([self.nope_dim, dr], dim=-1)
            q = torch.cat((q_nope, apply_rope(q_rope, q_cos, q_sin)), dim=-1)
            k_rope = apply_rope(self.rope_keys(k_rope), cos, sin).transpose(1, 2).reshape(B, T, g * dr)
        start = 0
        if cache is not None:
            start = cache.length
            c, k_rope = cache.update(c, k_rope)
            if self.absorb and T <= ABSORB_MAX_T and not self.qk_norm and not (self.training and self.dropout > 0):
                y = self.attend_latent(q, c, k_rope, pos, start, mask)
                return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, nh * hs)))
        Tk = c.shape[1]
        kv = self.kv_up(c).view(B, Tk, nh, self.nope_dim + hs).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, hs], dim=-1)                 # (B, nh, Tk, hs - dr), (B, nh, Tk, hs)
        # a copy: v starts (hs - dr) numbers into each row, which SDPA's memory-efficient CUDA kernel reads
        # misaligned when that is not a multiple of 16 bytes (torch 2.11, H200: "misaligned address")
        v = v.contiguous()
        if dr:  # each rope key serves nh // g consecutive heads
            k_r = self.rope_keys(k_rope)[:, :, None].expand(B, g, nh // g, Tk, dr).reshape(B, nh, Tk, dr)
            k = torch.cat((k_nope, k_r), dim=-1)
        else:
            k = k_nope
        if self.qk_norm:
            q, k = rms_norm_heads(q), rms_norm_heads(k)
        y = self.attend_scores(q, k, v, pos, start, mask)
        y = y.transpose(1, 2).reshape(B, T, nh * hs)
        return self.resid_dropout(self.proj(y))

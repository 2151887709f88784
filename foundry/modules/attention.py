"""Causal self-attention variants. Each maps x (B, T, C) -> (B, T, C) and owns its KV-cache format.

    forward(x, pos, positions, cache=None, mask=None)
        pos        the model's Position module (rotate / bias hooks)
        positions  (T,) or (B, T) token positions, for rotary/learned encodings
        cache      the layer's cache from `new_cache()`, or None (training)
        mask       optional (B, 1, T, Tk) bool, True = may attend (document boundaries, left padding)

A sparse pattern is one method, `allowed(q_slots, k_slots) -> (Tq, Tk) bool or None`, combined with
causality; the SDPA `is_causal` flash path is taken whenever nothing else constrains the scores.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ModelConfig
from foundry.modules.registries import ATTENTION


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


def rms_norm_heads(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return F.rms_norm(x.float(), (x.shape[-1],), None, eps).type_as(x)


def attend(q, k, v, *, allowed=None, bias=None, softcap: float = 0.0, dropout: float = 0.0, causal: bool = True):
    """Scaled dot-product attention over q (B, nh, Tq, hs), k/v (B, nkv, Tk, hs).

    allowed: bool, broadcastable to (B, nh, Tq, Tk), True = may attend (already includes causality) or None
    bias:    float, broadcastable to (B, nh, Tq, Tk), added to the scores, or None
    causal:  with allowed and bias None, use SDPA's is_causal flash path (requires Tq == Tk)
    """
    nh, nkv = q.shape[1], k.shape[1]
    if nkv != nh:  # GQA: each KV head serves nh // nkv query heads
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
    if softcap > 0:
        # soft-capped logits (Gemma 2): c * tanh(s / c); SDPA cannot do this, so scores are explicit
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        scores = softcap * torch.tanh(scores / softcap)
        if bias is not None:
            scores = scores + bias
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        elif causal:
            Tq, Tk = q.shape[2], k.shape[2]
            scores = scores.masked_fill(~causal_allowed(Tq, Tk, q.device), float("-inf"))
        att = F.dropout(scores.softmax(dim=-1), p=dropout)
        return att @ v
    if allowed is None and bias is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=causal and q.shape[2] > 1)
    mask = bias
    if allowed is not None:
        add = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(~allowed, float("-inf"))
        mask = add if mask is None else mask.to(q.dtype) + add
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype), dropout_p=dropout)


def causal_allowed(Tq: int, Tk: int, device) -> torch.Tensor:
    """(Tq, Tk) bool: the Tq queries are the last Tq of the Tk keys."""
    q = torch.arange(Tk - Tq, Tk, device=device)
    return torch.arange(Tk, device=device)[None, :] <= q[:, None]


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
        self.qkv = nn.Linear(cfg.n_embd, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, cfg.n_embd, bias=cfg.bias)
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
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.update(k, v)
        y = self.attend_scores(q, k, v, pos, start, mask)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, nh*hs)
        return self.resid_dropout(self.proj(y))

    def attend_scores(self, q, k, v, pos, start: int, mask):
        """Combine causality, the variant's pattern, the position bias and the caller's mask."""
        Tq, Tk = q.shape[2], k.shape[2]
        q_slots = torch.arange(start, start + Tq, device=q.device)
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
        return attend(q, k, v, allowed=allowed, bias=bias, softcap=self.cfg.attn_softcap,
                      dropout=self.dropout if self.training else 0.0, causal=start == 0 or Tq == 1)


@ATTENTION.register("gqa")
class GroupedQueryAttention(CausalSelfAttention):
    """Grouped-query attention (Ainslie et al. 2023): n_kv_head < n_head KV heads, each shared by a group of
    query heads; n_kv_head = 1 is multi-query attention (Shazeer 2019). The KV cache shrinks n_head/n_kv_head x."""

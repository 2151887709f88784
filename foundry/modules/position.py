"""Position encodings. One instance per model, shared by every layer, with three hooks:

    embed(x, positions)        -> x          absolute encodings added to token embeddings  (B, T, C)
    rotate(q, k, positions)    -> q, k       rotary encodings applied per head             (B, nh, T, hs)
    bias(q_slots, k_slots)     -> bias|None  additive score bias                           (nh, Tq, Tk)

`positions` is (T,) or (B, T) (per-row positions for packed documents or left-padded prompts);
`q_slots`/`k_slots` are cache slot indices (T,), whose differences are the token distances.
A variant overrides only the hooks it needs; the rest are the identity.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from foundry.config import ModelConfig, RopeScalingConfig
from foundry.modules.registries import POSITION


class Position(nn.Module):
    """Base: no position information (the identity on every hook)."""

    max_positions: int | None = None  # a hard limit on positions (learned tables), checked by the model

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor):
        return q, k

    def bias(self, q_slots: torch.Tensor, k_slots: torch.Tensor) -> torch.Tensor | None:
        return None


@POSITION.register("learned")
class Learned(Position):
    """Learned absolute position embeddings (GPT-2, Radford et al. 2019): wpe[pos] is added to the token embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.max_positions = cfg.block_size

    def embed(self, x, positions):
        return x + self.wpe(positions)  # (T, C) or (B, T, C), broadcast over B


def rope_inv_freq(dim: int, theta: float, scaling: RopeScalingConfig | None = None, device=None) -> torch.Tensor:
    """(dim/2,) float32 rotation frequencies theta^(-2i/dim), with `scaling` applied (see RopeScalingConfig)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    if scaling is None or scaling.type == "none":
        return inv_freq
    # llama3 (Llama 3.1): by wavelength 2 pi / f, long ones (> L / low) slowed `factor` x, short ones (< L / high)
    # kept, and in between a linear blend in s = L / wavelength, from slowed at s = low to kept at s = high
    s = scaling.original_max_positions / (2 * math.pi / inv_freq)          # (dim/2,) L / wavelength
    blend = ((s - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)).clamp(0, 1)
    return (1 - blend) * inv_freq / scaling.factor + blend * inv_freq


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float, dtype: torch.dtype,
                 scaling: RopeScalingConfig | None = None):
    """cos, sin of shape (..., T, dim/2) for rotary dim `dim` (Su et al. 2021; HF's rotate_half layout)."""
    inv_freq = rope_inv_freq(dim, theta, scaling, positions.device)
    angles = positions.to(torch.float32)[..., None] * inv_freq  # (..., T, dim/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rope_cos_sin_heads(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype):
    """cos, sin of shape (B or 1, h, T, d/2) when each head turns at its own frequencies inv_freq (h, d/2)
    (a model converted by MHA2MLA keeps RoPE on a different subset of the parent's frequencies per head)."""
    p = positions.to(torch.float32)
    p = p[None] if p.dim() == 1 else p                                           # (B or 1, T)
    angles = p[:, None, :, None] * inv_freq.to(torch.float32)[None, :, None, :]  # (B or 1, h, T, d/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 2*cos.shape[-1] channels of x (B, h, T, hs) in the half-split layout of Llama.
    cos, sin: (T, d/2), (B, T, d/2) for per-row positions, or (B or 1, h, T, d/2) per head."""
    rot = 2 * cos.shape[-1]
    if cos.dim() == 3:  # (B, T, d/2): per-row positions, add the head axis
        cos, sin = cos[:, None], sin[:, None]
    xr, xpass = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
    out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return torch.cat((out, xpass), dim=-1) if xpass.shape[-1] else out


@POSITION.register("rope")
class Rope(Position):
    """Rotary position embedding (Su et al. 2021); `rope.fraction` < 1 rotates part of each head (GPT-NeoX)."""
    options = ("model_args.rope",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.rot_dim = int(cfg.head_dim * cfg.rope.fraction) // 2 * 2
        self.theta, self.scaling = cfg.rope.theta, cfg.rope.scaling
        self._last = None  # (positions, (dtype, version), cos, sin): all layers of a forward share positions

    def rotate(self, q, k, positions):
        if torch.compiler.is_compiling():  # compiled: fused anyway, and module state would force recompiles
            cos, sin = rope_cos_sin(positions, self.rot_dim, self.theta, q.dtype, self.scaling)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        last = self._last
        if last is not None and last[0] is positions and last[1] == (q.dtype, positions._version):
            cos, sin = last[2], last[3]
        else:  # once per forward instead of once per layer: fewer small kernels, which dominate on a GPU
            cos, sin = rope_cos_sin(positions, self.rot_dim, self.theta, q.dtype, self.scaling)
            self._last = (positions, (q.dtype, positions._version), cos, sin)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


@POSITION.register("nope")
class NoPE(Position):
    """No position encoding (Kazemnejad et al. 2023): a causal decoder infers order from the mask alone."""


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022): the geometric sequence 2^(-8/n), 2^(-16/n), ... for n a
    power of two; otherwise the slopes of the nearest lower power of two, then every other slope of twice it."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    p = 2 ** math.floor(math.log2(n_head))
    slopes = geometric(p) + geometric(2 * p)[0::2][: n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)


@POSITION.register("alibi")
class Alibi(Position):
    """ALiBi (Press et al. 2022): no embedding; each head adds -slope * distance to its attention scores."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.register_buffer("slopes", alibi_slopes(cfg.n_head), persistent=False)  # (nh,)

    def bias(self, q_slots, k_slots):
        dist = (q_slots[:, None] - k_slots[None, :]).to(self.slopes.dtype)  # (Tq, Tk), > 0 for earlier keys
        return -self.slopes[:, None, None] * dist                           # (nh, Tq, Tk)


@POSITION.register("hybrid")
class Hybrid(Rope):
    """RoPE plus an additive score bias: `hybrid.bias` = alibi (slopes as Press et al. 2022) or learned (a
    trainable bias per head and distance, as T5's relative bias but unbucketed, Raffel et al. 2020; distances
    beyond block_size - 1 share the last entry). Starts as pure RoPE + ALiBi, or pure RoPE (learned, zeros)."""
    options = ("model_args.rope", "model_args.hybrid")  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.kind = cfg.hybrid.bias
        if self.kind == "alibi":
            self.register_buffer("slopes", alibi_slopes(cfg.n_head), persistent=False)
        else:
            self.rel_bias = nn.Parameter(torch.zeros(cfg.n_head, cfg.block_size))  # (nh, distance)

    def bias(self, q_slots, k_slots):
        dist = q_slots[:, None] - k_slots[None, :]  # (Tq, Tk)
        if self.kind == "alibi":
            return -self.slopes[:, None, None] * dist.to(self.slopes.dtype)
        idx = dist.clamp(0, self.rel_bias.shape[1] - 1)  # future keys are masked anyway
        return self.rel_bias[:, idx]                     # (nh, Tq, Tk)

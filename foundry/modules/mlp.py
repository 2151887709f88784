"""Feed-forward blocks. Each maps x (B, T, C) -> (B, T, C); hidden width is `cfg.mlp_hidden`.

Gated variants hold one fused `fc` (C -> 2H, [gate | up]) and `proj` (H -> C): plain nn.Linear layers a
LoRA transform can wrap. A block that adds a training loss (MoE) stores it in `self.aux_loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import ModelConfig
from foundry.modules.registries import MLP


@MLP.register("gelu")
class GeluMLP(nn.Module):
    """GPT-2 MLP: Linear(C, H) -> GELU (tanh approximation, as GPT-2) -> Linear(H, C)."""

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        hidden = hidden or cfg.mlp_hidden
        self.fc = nn.Linear(cfg.n_embd, hidden, bias=cfg.bias)
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class GatedMLP(nn.Module):
    """GLU family (Shazeer 2020, "GLU Variants Improve Transformer"): proj(act(gate) * up)."""

    def __init__(self, cfg: ModelConfig, hidden: int | None = None):
        super().__init__()
        hidden = hidden or cfg.mlp_hidden
        self.fc = nn.Linear(cfg.n_embd, 2 * hidden, bias=cfg.bias)  # [gate | up]
        self.proj = nn.Linear(hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def act(self, gate: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)  # (B, T, H) each
        return self.dropout(self.proj(self.act(gate) * up))


@MLP.register("swiglu")
class SwiGLU(GatedMLP):
    """SwiGLU (Shazeer 2020; Llama): SiLU-gated linear unit."""

    def act(self, gate):
        return F.silu(gate)

"""Training losses over logits (N, V) and targets (N,), averaged over targets that are not ignored (-1).

Each takes the TrainingConfig for its options; validation always reports plain cross-entropy so runs
with different training losses stay comparable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from foundry.config import TrainingConfig
from foundry.modules.registries import LOSS

IGNORE = -1


class Loss(nn.Module):
    def __init__(self, cfg: TrainingConfig | None = None):
        super().__init__()
        self.z_loss = cfg.z_loss if cfg is not None else 0.0

    def token_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token loss (N,), zero where targets == IGNORE."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        valid = targets != IGNORE
        per_token = self.token_loss(logits, targets)
        if self.z_loss > 0:  # PaLM (Chowdhery et al. 2022): keep log Z near 0 for stability
            per_token = per_token + self.z_loss * torch.logsumexp(logits, dim=-1).pow(2) * valid
        return per_token.sum() / valid.sum().clamp(min=1)


@LOSS.register("ce")
class CrossEntropy(Loss):
    """Cross-entropy: -log p(target)."""

    def token_loss(self, logits, targets):
        return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")

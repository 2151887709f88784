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
    """Cross-entropy, -log p(target): the maximum-likelihood objective of GPT (Radford et al. 2018)."""

    def token_loss(self, logits, targets):
        return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.z_loss > 0:
            return super().forward(logits, targets)
        # the hot path of every training step: one fused reduction, no per-token tensor
        logits, targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
        total = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
        return total / (targets != IGNORE).sum().clamp(min=1)


@LOSS.register("focal")
class FocalLoss(Loss):
    """Focal loss (Lin et al. 2017): -(1 - p)^gamma log p, down-weighting tokens already predicted well;
    gamma = training.focal_gamma (0 is cross-entropy)."""
    options = ("training.focal_gamma",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: TrainingConfig | None = None):
        super().__init__(cfg)
        self.gamma = (cfg or TrainingConfig()).focal_gamma

    def token_loss(self, logits, targets):
        valid = targets != IGNORE
        logp = logits.log_softmax(dim=-1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]  # (N,)
        w = (1 - logp.exp()).clamp(min=0).pow(self.gamma) if self.gamma else 1.0
        return -(w * logp) * valid


@LOSS.register("label_smoothing")
class LabelSmoothing(Loss):
    """Label smoothing (Szegedy et al. 2016): cross-entropy against (1 - eps) one-hot + eps uniform;
    eps = training.label_smoothing (0 is cross-entropy)."""
    options = ("training.label_smoothing",)  # the config it reads (foundry/catalog.py)

    def __init__(self, cfg: TrainingConfig | None = None):
        super().__init__(cfg)
        self.eps = (cfg or TrainingConfig()).label_smoothing

    def token_loss(self, logits, targets):
        return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none", label_smoothing=self.eps)

"""Normalisation layers. Each takes (dim, eps, bias) and maps (..., dim) -> (..., dim)."""
import torch
import torch.nn.functional as F
from torch import nn

from foundry.modules.registries import NORM


@NORM.register("layernorm")
class LayerNorm(nn.Module):
    """LayerNorm (Ba et al. 2016) with an optional bias (GPT-2 has one; PyTorch's cannot be switched off < 2.1)."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


@NORM.register("rmsnorm")
class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): no mean centring, no bias; computed in fp32 as Llama does."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, None, self.eps).type_as(x) * self.weight

"""fp32 training GEMMs on CPUs where torch's default BLAS is the slow one.

torch runs an fp32 `nn.Linear` (and its two backward GEMMs) through MKL's sgemm. On AMD CPUs MKL takes its
AVX2 kernels even where the CPU has AVX-512 (its AVX-512 paths are for Intel CPUs), while oneDNN, which torch
also ships, picks its kernels by the instructions present. AMD EPYC (cpu family 26, AVX-512), 2 threads,
the GEMM shapes of nanoGPT's README CPU run (768 x 128 x 512 and similar): MKL 170-186 GFLOP/s, oneDNN
350-400 GFLOP/s forward and input gradient, ~250 GFLOP/s weight gradient (bench/bench_train.py gemm;
BENCHMARKS.md "Training"). It is the same arithmetic (fp32 products and sums, another summation order: results
agree with MKL's to fp32 rounding, ~1e-6 relative), deterministic on a given machine and thread count, so
bit-exact resume holds.

`use_onednn_linears(model)` turns the model's plain `nn.Linear` layers into `OneDNNLinear` (the same module,
parameters and state dict; only `forward` differs), which calls oneDNN through
`torch.ops.mkldnn._linear_pointwise` for fp32 CPU inputs outside autocast and falls back to `F.linear`
otherwise. `onednn_linear_rule` says where it pays.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_linear_rule(cpu) -> tuple[bool, str]:
    """(route fp32 CPU linears through oneDNN, why) for a foundry.hostcpu.HostCPU: where measured faster, on
    AMD's AVX-512; elsewhere MKL stays (Intel: MKL's own AVX-512/AMX kernels; AMD AVX2: unmeasured)."""
    if cpu.avx512 and cpu.vendor == "AuthenticAMD" and available():
        return True, "AMD AVX-512: MKL runs its AVX2 sgemm here, oneDNN measured 1.5-2.3x it"
    return False, "MKL sgemm (oneDNN measured faster only on AMD AVX-512)"


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _gemm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """x (..., in) @ w (out, in)^T + b through oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        x = x.contiguous()
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return _gemm(x, w, b)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dy2 = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = _gemm(dy2, w.t(), None).view(x.shape)                          # dy @ w
        if ctx.needs_input_grad[1]:
            dw = _gemm(dy2.t(), x.reshape(-1, x.shape[-1]).t(), None)            # dy^T @ x
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


# Smallest GEMM (rows x in x out multiply-adds) sent to oneDNN: below it oneDNN's per-call cost wins over its
# faster kernels. Whole-model forward+backward, MKL / oneDNN: 2 x 32 wide, 8 x 32 tokens (GEMMs of 0.2-1M
# multiply-adds) 0.78-0.81x; 2 x 64 wide, 8 x 64 tokens (2-6M) 1.01-1.15x; 4 x 128, 12 x 64 (12-25M) 1.39-1.58x.
ONEDNN_MIN_MACS = 1 << 22


class OneDNNLinear(nn.Linear):
    """nn.Linear whose fp32 CPU GEMMs (forward and both gradients) run on oneDNN (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or torch.is_autocast_enabled("cpu") or x.numel() * self.out_features < ONEDNN_MIN_MACS):
            return F.linear(x, self.weight, self.bias)
        return _Linear.apply(x, self.weight, self.bias)


def use_onednn_linears(model: nn.Module) -> int:
    """Turn every plain nn.Linear of `model` into OneDNNLinear in place (subclasses, e.g. adapters, are left
    alone); returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is nn.Linear:
            m.__class__ = OneDNNLinear
            n += 1
    return n

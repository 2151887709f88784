"""Optimiser and learning-rate schedules (pure functions of the iteration, so resume needs no scheduler state)."""
from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from foundry.config import TrainingConfig


def lr_at(it: int, cfg: TrainingConfig) -> float:
    """Learning rate at iteration `it`: linear warmup, then the configured decay to min_lr.

    cosine/linear decay over [warmup_iters, lr_decay_iters]; `wsd` (warmup-stable-decay, Hu et al. 2024)
    holds the peak and decays linearly over the last `decay_frac` of lr_decay_iters; `constant` holds.
    No division by zero when warmup_iters == lr_decay_iters (nanoGPT's edge case).
    """
    peak, low = cfg.learning_rate, cfg.min_lr
    decay_end = cfg.lr_decay_iters if cfg.lr_decay_iters is not None else cfg.max_iters
    if it < cfg.warmup_iters:
        return peak * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "constant":
        return peak
    if it >= decay_end:
        return low
    if cfg.lr_schedule == "wsd":
        decay_start = max(cfg.warmup_iters, decay_end - int(round(cfg.decay_frac * decay_end)))
        if it < decay_start:
            return peak
        frac = (it - decay_start) / max(1, decay_end - decay_start)
        return peak + (low - peak) * frac
    frac = (it - cfg.warmup_iters) / max(1, decay_end - cfg.warmup_iters)
    if cfg.lr_schedule == "linear":
        return peak + (low - peak) * frac
    return low + 0.5 * (1.0 + math.cos(math.pi * frac)) * (peak - low)


def build_optimizer(model: nn.Module, cfg: TrainingConfig, device_type: str) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (2-D and up: linear and embedding weights); biases and norm
    gains are not decayed (as in GPT-2 and nanoGPT). The fused kernel (one pass per parameter, no per-tensor
    Python loop) on CUDA and, from torch 2.4, on CPU; foreach elsewhere. torch's CPU default is the
    per-parameter loop, measurably slower for small models (bench/bench_train.py)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"foreach": True}
    if device_type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra = {"fused": True}
    cls = torch.optim.AdamW if cfg.compile or not _EAGER_OK else EagerAdamW
    return cls(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), **extra)


# torch.optim wraps Optimizer.step / zero_grad / state_dict / load_state_dict / add_param_group in
# torch._disable_dynamo and torch._use_grad_for_differentiable, which import torch._dynamo on first use: 1.2 s of
# CPU (one thread) in every process that builds an optimiser (each `python -m foundry.train`, each sweep
# worker), though an eager run never compiles. EagerAdamW calls the same undecorated methods (functools.wraps
# keeps them as __wrapped__), so its arithmetic and state dicts are torch's AdamW's exactly; runs with
# training.compile use torch's class.
_WRAPPED = {name: getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
            for name in ("zero_grad", "state_dict", "load_state_dict", "add_param_group")}
_WRAPPED["step"] = getattr(torch.optim.Adam.step, "__wrapped__", None)
_EAGER_OK = all(_WRAPPED.values())


class EagerAdamW(torch.optim.AdamW):
    """torch's AdamW without the lazy torch._dynamo import (see above); only for eager (uncompiled) training."""

    def step(self, closure=None):
        prev = torch.is_grad_enabled()
        torch.set_grad_enabled(self.defaults["differentiable"])  # as torch's _use_grad wrapper does
        try:
            return _WRAPPED["step"](self, closure)
        finally:
            torch.set_grad_enabled(prev)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _WRAPPED["zero_grad"](self, set_to_none)

    def state_dict(self):
        return _WRAPPED["state_dict"](self)

    def load_state_dict(self, state_dict) -> None:
        _WRAPPED["load_state_dict"](self, state_dict)

    def add_param_group(self, param_group) -> None:
        _WRAPPED["add_param_group"](self, param_group)

"""Training objectives: what a batch is, how its loss is computed, how validation scores it.

The one thing that varies between trainers (`training.objective`):

    lm    next-token prediction on windows of a token stream (pretraining; nanoGPT's batches)
    sft   supervised finetuning: chat-rendered examples packed into rows, loss on assistant tokens only
    dpo   direct preference optimisation on (prompt, chosen, rejected) pairs against a frozen reference

An objective is a small class registered by name; the core (`trainer/core.py`) calls its hooks:
load_data(cfg) -> data, build_model(cfg) -> module, attach(model, device), sampler(data, rank, world),
to_device(batch, device), loss(model, batch) -> (loss, parts), evaluate(...) -> {"val_loss", ...},
tokens_per_row(), checkpoint_weights(model, weights).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from foundry.config import ExperimentConfig
from foundry.registry import Registry

OBJECTIVES: Registry = Registry("objective")


# --------------------------------------------------------------------------------------------------
# Validation of a language model over fixed windows
# --------------------------------------------------------------------------------------------------
def evaluate_windows(model, data, cfg: ExperimentConfig, device, ctx, info=None) -> dict:
    """Validation loss (nats/token, plain cross-entropy) and bits per byte over a fixed, declared set of
    windows: the first eval_iters x batch_size non-overlapping block_size windows of the validation split
    (all of it when shorter). Bits per byte = total nats / ln 2 / total UTF-8 bytes of the predicted tokens,
    so runs with different tokenizers compare.

    Under torchrun (`info`, a distributed.DistInfo with world_size > 1) the batches are dealt round-robin to
    the ranks and the float64 sums all-reduced, so each rank evaluates 1/world_size of the windows and every
    rank gets the single-process result (the same batches; only the order of the float64 sum differs). A
    rank with one batch fewer runs one extra forward with zero weight, because an FSDP-sharded model's
    forward is a collective that every rank must enter the same number of times."""
    from foundry.data.dataset import eval_batches

    T, B = cfg.model_args.block_size, cfg.training.batch_size
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    byte_len = data.byte_lengths().to(device)
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, bytes, tokens

    def add(x, y, weight: float) -> None:
        x, y = x.to(device), y.to(device)
        with ctx, torch.no_grad():
            logits = model(x)
        nats = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                                 reduction="sum")
        sums.add_(torch.stack([nats.double(), byte_len[y].sum(), torch.full((), float(y.numel()), dtype=torch.float64,
                                                                             device=device)]), alpha=weight)

    first, done, n_batches = None, 0, 0
    for i, (x, y) in enumerate(eval_batches(data.val, T, cfg.training.eval_iters * B, B)):
        first = (x, y) if first is None else first
        n_batches += 1
        if i % world == rank:
            add(x, y, 1.0)
            done += 1
    if first is not None and done < -(-n_batches // world):
        add(*first, 0.0)  # a padding forward: the collectives stay matched, nothing is counted
    model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    nats, total_bytes, total_tokens = (float(v) for v in sums)
    if total_tokens == 0:
        raise ValueError(f"validation split of {len(data.val)} tokens is shorter than one block of {T}")
    return {"val_loss": nats / total_tokens, "val_bpb": nats / math.log(2) / max(total_bytes, 1.0),
            "val_tokens": int(total_tokens)}


# --------------------------------------------------------------------------------------------------
# The objectives
# --------------------------------------------------------------------------------------------------
class Objective:
    """Base: a GPT of cfg.model_args with the configured token loss, trained as a whole."""

    name = "?"

    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg

    def build_model(self, cfg: ExperimentConfig) -> nn.Module:
        from foundry.model import GPT
        from foundry.modules import LOSS

        return GPT(cfg.model_args, loss_fn=LOSS.get(cfg.training.loss)(cfg.training))

    def attach(self, model: nn.Module, device) -> None:
        """Called once the model is on its device (e.g. DPO's reference)."""

    def to_device(self, batch, device):
        return tuple(t.to(device, non_blocking=True) for t in batch)

    def tokens_per_row(self) -> int:
        return self.cfg.model_args.block_size

    def checkpoint_weights(self, model: nn.Module, weights: dict) -> dict:
        """The tensors a checkpoint stores (all of them; LoRA keeps the adapters only)."""
        return weights


@OBJECTIVES.register("lm")
class LanguageModelling(Objective):
    """Next-token cross-entropy (or the configured token loss) on windows of the training split."""

    name = "lm"

    def load_data(self, cfg: ExperimentConfig):
        from foundry.data.dataset import load_data

        return load_data(cfg.data.path)

    def sampler(self, data, rank: int, world_size: int):
        from foundry.data.sampler import make_sampler

        return make_sampler(data, self.cfg, rank, world_size)

    def loss(self, model: nn.Module, batch):
        x, y = batch
        loss, info = model(x, y)
        return loss, {"aux_loss": info.get("aux_loss")}

    def evaluate(self, model, data, device, ctx, info=None) -> dict:
        return evaluate_windows(model, data, self.cfg, device, ctx, info)

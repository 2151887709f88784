"""The training core every trainer uses: build a run, take a step, own the checkpoint state.

    run = build_run(cfg, device, info, rundir)      data, model, wrapping, optimiser, sampler, objective
    state = TrainState.start(run)                   iteration, best validation loss, RNG and sampler position
    step = train_step(run.model, run.optimizer, ...) micro-steps, clipping, finiteness; one optimiser step
    state.capture(run) -> dict                      what ckpt_last/state.pt holds (collective under FSDP)

`foundry.train` is the plain loop over these; the learning-rate finder (`cli/lr_finder.py`), the sweep's
probe timer (`sweep/worker.py`) and the eval probes (`eval/probes.py`) call the same pieces. What a batch is
and how its loss is computed is the objective's (`trainer/objectives.py`: lm, sft, dpo).
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from foundry import distributed as D
from foundry.config import ConfigError, ExperimentConfig


# --------------------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------------------
@dataclass
class Step:
    """What one optimiser step leaves: tensors, so that nothing waits for the device until a log line."""
    loss: torch.Tensor             # mean over the micro-steps, detached ()
    grad_norm: torch.Tensor        # before clipping ()
    finite: torch.Tensor           # bool (): loss and gradient norm finite
    parts: dict = field(default_factory=dict)   # objective's extra scalars (aux_loss, DPO rewards), means


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, next_batch: Callable[[], object],
               loss_of: Callable[[object], tuple], accum: int = 1, clip: float = math.inf,
               no_sync: Callable[[bool], object] | None = None) -> Step:
    """`accum` micro-steps (each loss / accum backwards, so the gradient is the mean over the global batch),
    the gradient norm clipped to `clip` (inf: measured, not clipped), one optimiser step, gradients freed.

    next_batch() -> a batch; loss_of(batch) -> (loss, parts) with parts a dict of scalar tensors (None
    entries are skipped); no_sync(is_last_micro_step) -> a context (DDP/FSDP defer the gradient sync)."""
    loss_sum = None
    parts_sum: dict = {}
    for micro in range(accum):
        batch = next_batch()
        with no_sync(micro == accum - 1) if no_sync is not None else nullcontext():
            loss, parts = loss_of(batch)
            (loss / accum).backward()
        for k, v in parts.items():
            if v is not None:
                parts_sum[k] = parts_sum[k] + v.detach() / accum if k in parts_sum else v.detach() / accum
        if loss_sum is None:
            loss_sum = torch.zeros((), device=loss.device)
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip,
                                               foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    finite = torch.isfinite(loss_sum) & torch.isfinite(grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return Step(loss_sum / accum, grad_norm, finite, parts_sum)


# --------------------------------------------------------------------------------------------------
# Building a run
# --------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Everything a training loop works on, built once."""
    cfg: ExperimentConfig          # with vocab_size resolved from the data
    data: object                   # the objective's data (train / validation splits and the tokenizer)
    objective: object
    model: nn.Module               # the plain module: checkpoints, evaluation, sampling
    wrapped: nn.Module             # what the step calls: DDP, or the model itself (FSDP shards it in place)
    step_model: nn.Module          # `wrapped`, compiled when training.compile
    optimizer: torch.optim.Optimizer
    sampler: object
    device: torch.device
    info: D.DistInfo
    mode: str                      # none | ddp | fsdp
    n_params: int                  # model.num_params() (non-embedding), counted before any sharding
    ckpt: object = None            # the checkpoint directory resumed from, or None
    resumed: dict | None = None    # its state.pt

    @property
    def accum(self) -> int:
        from foundry.data.sampler import split_batch

        return split_batch(self.cfg.training, self.info.world_size)[1]

    def loss_of(self, ctx=nullcontext()):
        """The step's loss function: the objective's loss of a batch, on the device, under autocast `ctx`."""
        def f(batch):
            batch = self.objective.to_device(batch, self.device)
            with ctx:
                return self.objective.loss(self.step_model, batch)
        return f

    def no_sync(self, last: bool):
        return D.no_sync(self.wrapped, self.mode, last)


def build_run(cfg: ExperimentConfig, device: torch.device | str = "cpu", info: D.DistInfo | None = None,
              rundir=None, say=print) -> Run:
    """Data, model (initial weights seeded by training.seed, identical on every rank), wrapping, optimiser,
    sampler and objective of `cfg`. With a RunDir holding a checkpoint of the same experiment, the model
    starts from its weights and `run.resumed` holds its state (restored by TrainState.start)."""
    from foundry.data.sampler import split_batch
    from foundry.trainer.objectives import OBJECTIVES

    device = torch.device(device)
    info = info or D.DistInfo()
    tc = cfg.training
    objective = OBJECTIVES.get(getattr(tc, "objective", "lm"))(cfg)

    # ---- starting weights, data and vocabulary ------------------------------------------------
    cfg = objective.prepare(cfg)   # init_from: the base's architecture (a missing base fails here, cheaply)
    data = objective.load_data(cfg)
    vocab = cfg.model_args.vocab_size
    if vocab is None:
        cfg = cfg.replace({"model_args.vocab_size": data.vocab_size})
    elif vocab < data.vocab_size:
        raise ConfigError(f"model_args.vocab_size={vocab} is smaller than the data's vocabulary "
                          f"({data.vocab_size} tokens in {data.name}); raise it or leave it unset")
    objective.cfg = cfg
    split_batch(tc, info.world_size)  # refuses a global batch the processes cannot share, before any model

    # ---- an earlier run of this experiment? -------------------------------------------------------
    ckpt, st = rundir.previous(cfg) if rundir is not None else (None, None)

    # ---- model, wrapping, optimiser ---------------------------------------------------------
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (FSDP shards from them)
    model = objective.build_model(cfg)
    if st is not None:
        objective.load_checkpoint(model, ckpt)  # full weights (or LoRA's adapters), before any sharding
    model.to(device)
    n_params = model.num_params()
    objective.attach(model, device)
    mode = D.choose_mode(tc.distributed, info.world_size, device.type,
                         sum(p.numel() for p in model.parameters()), tc.fsdp_min_params)
    if device.type == "cpu" and not tc.compile and mode != "fsdp":
        from foundry.cpugemm import onednn_linear_rule, use_onednn_linears
        from foundry.hostcpu import host_cpu

        if onednn_linear_rule(host_cpu())[0]:  # fp32 GEMMs on oneDNN where MKL is the slow one (AMD AVX-512)
            use_onednn_linears(model)
    wrapped = D.wrap(model, mode, info, device)
    from foundry.optim import build_optimizer

    optimizer = build_optimizer(model, tc, device.type)
    step_model = torch.compile(wrapped) if tc.compile else wrapped
    sampler = objective.sampler(data, info.rank, info.world_size)
    return Run(cfg, data, objective, model, wrapped, step_model, optimizer, sampler, device, info, mode, n_params, ckpt, st)


# --------------------------------------------------------------------------------------------------
# The training state: what a checkpoint holds besides the weights
# --------------------------------------------------------------------------------------------------
@dataclass
class TrainState:
    iter: int = 0
    best_val: float = float("inf")

    @classmethod
    def start(cls, run: Run, say=print) -> "TrainState":
        """Seed the per-rank dropout streams; on a resumed run restore optimiser, iteration, best loss, the
        sampler's position and the RNG streams (exactly with the same process count; with another, the data
        order continues exactly and only the dropout streams are reseeded)."""
        tc, info = run.cfg.training, run.info
        torch.manual_seed(tc.seed + info.rank)  # dropout streams differ per rank
        st = run.resumed
        if st is None:
            return cls()
        D.load_optimizer_state(run.model, run.optimizer, st["optimizer"], run.mode)
        state = cls(st["iter"], st["best_val"])
        saved_world = len(st["sampler"])
        if saved_world == info.world_size:  # the exact continuation
            run.sampler.load_state_dict(st["sampler"][info.rank])
            torch.set_rng_state(st["rng_cpu"][info.rank])
            if run.device.type == "cuda" and st.get("rng_cuda"):
                torch.cuda.set_rng_state(st["rng_cuda"][info.rank], run.device)
        else:
            # another process count: the built-in samplers' row counter is global, so the data order
            # continues exactly; only the dropout streams are reseeded
            sampler_state = dict(st["sampler"][0])
            if sampler_state.get("kind") not in ("random", "sequential", "examples"):
                raise ValueError(f"{run.ckpt} was written by {saved_world} processes and this run has "
                                 f"{info.world_size}; a {sampler_state.get('kind')!r} sampler can only resume "
                                 f"with the same number of processes")
            run.sampler.load_state_dict(sampler_state)
            torch.manual_seed(tc.seed + info.rank + 7919 * state.iter)
            say(f"note: checkpoint written by {saved_world} process(es), resuming with {info.world_size}: "
                f"data order continues exactly, dropout streams are reseeded")
        return state

    def capture(self, run: Run) -> tuple[dict | None, dict]:
        """(state.pt contents on rank 0 / None elsewhere, full weights). Collective under FSDP and torchrun
        (weights and optimiser state gathered, every rank's RNG and sampler position collected)."""
        weights = run.objective.checkpoint_weights(run.model, D.full_model_state(run.model, run.mode))
        optim_state = D.full_optimizer_state(run.model, run.optimizer, run.mode)
        rng = {"rng_cpu": torch.get_rng_state(), "sampler": run.sampler.state_dict()}
        if run.device.type == "cuda":
            rng["rng_cuda"] = torch.cuda.get_rng_state(run.device)
        world = run.info.world_size
        per_rank = [rng] if world == 1 else [None] * world
        if world > 1:
            torch.distributed.all_gather_object(per_rank, rng)
        if not run.info.is_main:
            return None, weights
        return {"iter": self.iter, "best_val": self.best_val, "optimizer": optim_state,
                "rng_cpu": [r["rng_cpu"] for r in per_rank],
                "rng_cuda": [r.get("rng_cuda") for r in per_rank] if run.device.type == "cuda" else None,
                "sampler": [r["sampler"] for r in per_rank], "world_size": world}, weights

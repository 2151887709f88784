"""Data-parallel training under torchrun: process group, the auto rule, DDP / FSDP2 wrapping, and the
collectives the loop needs. The model knows nothing of this (torchtitan's separation); train.py asks here.

    torchrun --standalone --nproc_per_node=2 -m foundry.train EXPERIMENT.yaml     (CPU: gloo, GPU: nccl)

`training.distributed`:
    none  no wrapping (several processes would then train independent copies, so it is refused under torchrun)
    ddp   DistributedDataParallel: full replicas, gradients all-reduced
    fsdp  FSDP2 `fully_shard` per block and at the root: parameters, gradients and optimiser state sharded
    auto  one process: none; several CPU processes: ddp on gloo; several GPUs: ddp below
          `fsdp_min_params` parameters (default 1B), fsdp at or above it

Checkpoints are always written as full (unsharded) weights and an optimiser state keyed by parameter name,
so a checkpoint saved in any mode loads in any other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from foundry.config import ConfigError

MODES = ("none", "ddp", "fsdp")


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None     # gloo | nccl | None (single process)
    owns_group: bool = False       # this module created the process group (so it destroys it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """Number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR...)."""
    world = launched_world_size()
    if world == 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistInfo(rank, local_rank, world, backend, owns)


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def choose_mode(setting: str, world_size: int, device_type: str, n_params: int, fsdp_min_params: int) -> str:
    """The wrapping `training.distributed` asks for, with `auto` resolved by the rule in the module docstring."""
    if setting not in ("auto", *MODES):
        raise ConfigError(f"training.distributed: {setting!r} is not one of auto, none, ddp, fsdp")
    if world_size == 1:
        return "none"  # nothing to synchronise with: a wrapper would only add overhead
    if setting == "none":
        raise ConfigError(f"training.distributed=none under {world_size} processes would train {world_size} "
                          f"unsynchronised copies; use auto, ddp or fsdp, or launch a single process")
    if setting != "auto":
        return setting
    if device_type == "cuda" and n_params >= fsdp_min_params:
        return "fsdp"
    return "ddp"


def wrap(model: nn.Module, mode: str, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the training step calls. `model` itself stays the plain GPT (for eval and sampling)."""
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
        return DDP(model, device_ids=ids)
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        blocks = getattr(model, "blocks", None)
        if blocks is None:
            raise TypeError("fsdp wrapping expects a model with a `blocks` ModuleList (foundry.model.GPT)")
        for block in blocks:           # one all-gather per layer, overlapping with the previous layer's compute
            fully_shard(block)
        fully_shard(model)             # the rest: embeddings, final norm, lm_head (tied weights stay in one group)
        return model
    raise ValueError(f"unknown distributed mode {mode!r}")


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def all_reduce_max(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world_size > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if info.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def no_sync(wrapped: nn.Module, mode: str, last_micro_step: bool):
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last (DDP; FSDP2 via
    set_requires_gradient_sync)."""
    from contextlib import nullcontext

    if mode == "ddp" and not last_micro_step:
        return wrapped.no_sync()
    if mode == "fsdp":
        wrapped.set_requires_gradient_sync(last_micro_step)
    return nullcontext()


# --------------------------------------------------------------------------------------------------
# Full state for checkpoints (collective under FSDP: every rank must call these)
# --------------------------------------------------------------------------------------------------
def _options(mode: str):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=mode == "fsdp")


def full_model_state(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """Unsharded weights on CPU (under FSDP only rank 0 receives them; the others get {})."""
    if mode != "fsdp":
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(mode))


_IMPL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str) -> dict:
    """Optimiser state keyed by parameter name (the same layout in every mode)."""
    if mode == "none" and (state := _named_optimizer_state(model, optimizer)) is not None:
        return state
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(mode))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, mode: str) -> None:
    """Load a name-keyed optimiser state saved in any mode; implementation flags (fused/foreach) stay this run's."""
    groups = [dict(g) for g in state["param_groups"]]
    for saved, current in zip(groups, optimizer.param_groups):
        for flag in _IMPL_FLAGS:
            if flag in current:
                saved[flag] = current[flag]
    state = {"state": state["state"], "param_groups": groups}
    if mode == "none" and _load_named_optimizer_state(model, optimizer, state):
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


# A single process (mode "none") needs no collective: the two functions below give torch.distributed.checkpoint's
# name-keyed layout without importing it (and torch._dynamo through it: ~1 s of CPU at the first checkpoint of
# every run and sweep worker). Each declines (None / False) where the layouts could differ, and torch's own
# functions run instead: a parameter without state yet (torch's initialises it), or one the model does not name.
def _param_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name (a tied parameter is named where it first appears, as torch does)."""
    name: dict[int, str] = {}
    for n, p in model.named_parameters():
        name.setdefault(id(p), n)
    return name


def _named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    name = _param_names(model)
    order = [p for g in optimizer.param_groups for p in g["params"]]
    if any(id(p) not in name or p not in optimizer.state for p in order):
        return None
    raw = optimizer.state_dict()
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [name[id(order[i])] for i in g["params"]]}
              for g in raw["param_groups"]]
    return {"state": {name[id(order[i])]: st for i, st in raw["state"].items()}, "param_groups": groups}


def _load_named_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> bool:
    name = _param_names(model)
    order = [name.get(id(p)) for g in optimizer.param_groups for p in g["params"]]
    index = {n: i for i, n in enumerate(order)}
    saved = state["param_groups"]
    if (None in order or len(saved) != len(optimizer.param_groups)
            or any(n not in index for g in saved for n in g["params"]) or any(n not in index for n in state["state"])):
        return False
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in saved]
    optimizer.load_state_dict({"state": {index[n]: st for n, st in state["state"].items()}, "param_groups": groups})
    return True

"""Training batch samplers: which windows of the token stream each process trains on, in which order.

A sampler is any object with
    next_batch()            -> x, y   CPU int64 (B, T), y = x shifted by one token
    state_dict()            -> dict   everything needed to continue the stream exactly (saved in checkpoints)
    load_state_dict(state)

The built-in samplers are counter-based: the stream is an endless sequence of *global rows*, row g being a
window whose start is a pure function of (seed, g). A call on rank r of W takes its B rows of the next W x B
global rows, so the global batch of an iteration holds the same windows whatever the number of processes
(a 2-process run sees exactly the data of a 1-process run at the same global batch), and the only state is
the row counter, so resume is exact and costs nothing.

    random      start = hash(seed, g) mod (N - T)       nanoGPT's random windows, reproducible and shardable
    sequential  start = (g mod n_windows) * T            non-overlapping windows in file order, epoch after epoch

`data.curriculum` other than "none" hands over to foundry.data.curriculum.make_curriculum_sampler, which
returns an object with the same three methods.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from foundry.config import ConfigError, TrainingConfig


class Sampler(Protocol):
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def split_batch(tc: TrainingConfig, world_size: int) -> tuple[int, int]:
    """(rows per process per micro-step, micro-steps per iteration) that keep the global batch of
    batch_size x gradient_accumulation_steps sequences under `world_size` processes.

    As nanoGPT, the accumulation steps are divided among processes when they divide evenly; otherwise the
    micro-batch is. Either way every iteration trains on the same global rows (see the module docstring)."""
    B, A, W = tc.batch_size, tc.gradient_accumulation_steps, world_size
    if A % W == 0:
        return B, A // W
    if B % W == 0:
        return B // W, A
    raise ConfigError(f"training.batch_size={B} x gradient_accumulation_steps={A} cannot be split over {W} "
                      f"processes: make gradient_accumulation_steps or batch_size a multiple of {W}")


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele et al. 2014): a well-mixed 64-bit hash of each uint64, vectorised."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


class WindowSampler:
    """Base of the built-in samplers: a global row counter, sharded by rank, gathered in one vectorised read."""

    kind = ""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(tokens) <= block_size:
            raise ValueError(f"training split of {len(tokens)} tokens is too short for block_size={block_size}; "
                             f"use a smaller block_size or more data")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tokens, self.B, self.T = tokens, batch_size, block_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.row = 0                                    # next global row of the stream
        self._offsets = np.arange(block_size + 1)       # (T+1,)

    def starts(self, rows: np.ndarray) -> np.ndarray:
        """Window start (int64) of each global row (uint64)."""
        raise NotImplementedError

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.row + self.rank * self.B
        rows = np.arange(first, first + self.B, dtype=np.uint64)
        self.row += self.world_size * self.B
        idx = self.starts(rows)[:, None] + self._offsets                 # (B, T+1)
        buf = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return buf[:, :-1], buf[:, 1:]                                   # x, y (B, T)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "row": int(self.row), "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.B}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"sampler state is for {state.get('kind')!r} order, this run uses {self.kind!r}")
        self.row = int(state["row"])


class RandomWindows(WindowSampler):
    """Uniformly random windows (nanoGPT's get_batch), reproducible from (seed, row)."""

    kind = "random"

    def starts(self, rows):
        key = _mix64(np.full(rows.shape, self.seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        return (_mix64(rows ^ key) % np.uint64(len(self.tokens) - self.T)).astype(np.int64)


class SequentialWindows(WindowSampler):
    """Non-overlapping windows in file order, wrapping to the start after each epoch (deterministic)."""

    kind = "sequential"

    def starts(self, rows):
        n_windows = (len(self.tokens) - 1) // self.T
        return ((rows % np.uint64(n_windows)) * np.uint64(self.T)).astype(np.int64)


SAMPLERS = {"random": RandomWindows, "sequential": SequentialWindows}


def make_sampler(data, cfg, rank: int = 0, world_size: int = 1) -> Sampler:
    """The training sampler of `cfg` (an ExperimentConfig) for process `rank` of `world_size`, over data.train."""
    if cfg.data.curriculum != "none":
        try:
            from foundry.data.curriculum import make_curriculum_sampler
        except ImportError as e:
            raise ConfigError(f"data.curriculum={cfg.data.curriculum!r} needs foundry.data.curriculum, which "
                              f"could not be imported ({e}); set data.curriculum=none") from e
        return make_curriculum_sampler(data, cfg, rank, world_size)
    micro_batch, _ = split_batch(cfg.training, world_size)
    return SAMPLERS[cfg.data.order](data.train, micro_batch, cfg.model_args.block_size, cfg.training.seed,
                                    rank, world_size)

"""Curriculum: train on easy examples first, then let harder ones in (`data.curriculum: length | loss`).

What an example is, in a flat token stream
    The training split's documents: the start offsets recorded by `python -m foundry.data prepare`
    (train_docs.npy: paragraphs of text files, records of JSONL files). Without recorded offsets (the embedded
    data set, older directories), paragraphs are found in character-level streams (a start after a blank line);
    any other stream falls back to non-overlapping block_size windows. A document longer than block_size is cut
    into consecutive block_size pieces, each an example of its own, so every token is reachable.
    A training row is one example: x = its tokens (continuing into the stream after a short example), y = the
    next tokens with every target past the example's end ignored (-1), so a row trains on that example alone.

Difficulty
    length   the example's length in tokens (short first; cf. sequence-length warm-up, Li et al. 2022)
    loss     the mean next-token loss of a reference model (`data.curriculum_model`, a run directory loaded with
             foundry.checkpoint.load_run; its tokenizer must equal the data's) on the example (low loss first)

Schedule (competence-based curriculum, Platanios et al. 2019, the "root" schedule)
    At training progress p (global rows drawn / rows of the whole run), the examples in play are the easiest
    c(p) = min(1, sqrt(p (1 - C0^2) / RAMP + C0^2)) fraction, C0 = 0.1, RAMP = 0.5 (everything is in play from
    half-way on). Row g draws uniformly from them with a counter-based hash of (seed, g), as the built-in
    samplers do (foundry/data/sampler.py): the state is one counter, resume is exact, and a global batch holds
    the same examples whatever the number of processes.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from foundry.config import ConfigError
from foundry.data.sampler import _mix64, split_batch

C0 = 0.1     # fraction of the easiest examples in play at the start
RAMP = 0.5   # fraction of the run after which every example is in play
IGNORE = -1


def document_starts(data, split: str = "train") -> np.ndarray | None:
    """Recorded document starts of `split`, or paragraph starts of a character-level stream, else None."""
    rec = getattr(data, "doc_starts", None) or {}
    if split in rec:
        return np.asarray(rec[split], dtype=np.int64)
    tok = data.tokenizer
    stoi = getattr(tok, "stoi", None)
    if stoi and "\n" in stoi:
        ids = np.asarray(getattr(data, split))
        nl = stoi["\n"]
        para = np.flatnonzero((ids[:-2] == nl) & (ids[1:-1] == nl) & (ids[2:] != nl)) + 2
        return np.concatenate([[0], para]).astype(np.int64)
    return None


def examples(data, block_size: int, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) int64 of the examples of `split` (see the module docstring)."""
    n = len(getattr(data, split))
    starts = document_starts(data, split)
    if starts is None:
        starts = np.arange(0, max(1, n - 1), block_size, dtype=np.int64)
    starts = np.unique(starts[(starts >= 0) & (starts < n - 1)])
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = np.append(starts[1:], n)
    doc_len = ends - starts
    pieces = -(-doc_len // block_size)                     # ceil: pieces per document
    first = np.repeat(starts, pieces)
    k = np.arange(pieces.sum()) - np.repeat(np.cumsum(pieces) - pieces, pieces)  # piece number within its doc
    ex_start = first + k * block_size
    ex_len = np.minimum(block_size, np.repeat(ends, pieces) - ex_start)
    keep = ex_len >= 2                                     # one token has no target
    return ex_start[keep], ex_len[keep]


def rows(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, block_size: int):
    """x, y (len(starts), T) int64: each example's window, targets past its end ignored."""
    n = len(tokens)
    idx = np.minimum(starts[:, None] + np.arange(block_size + 1), n - 1)   # (R, T+1)
    buf = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
    x, y = buf[:, :-1], buf[:, 1:].clone()
    y[torch.arange(block_size)[None, :] >= torch.from_numpy(lengths - 1)[:, None]] = IGNORE
    return x, y


def competence(progress: float) -> float:
    """Fraction of the examples (easiest first) in play at `progress` in [0, 1] of the run."""
    return min(1.0, math.sqrt(max(0.0, progress) * (1 - C0 ** 2) / RAMP + C0 ** 2))


@torch.no_grad()
def loss_scores(model, tokens, starts, lengths, block_size: int, batch: int = 64) -> np.ndarray:
    """Mean next-token loss of `model` on each example (the reference model's own block_size may be smaller)."""
    device = next(model.parameters()).device
    T = min(block_size, getattr(model.pos, "max_positions", None) or block_size)
    out = np.zeros(len(starts))
    model.eval()
    for i in range(0, len(starts), batch):
        x, y = rows(tokens, starts[i:i + batch], np.minimum(lengths[i:i + batch], T), T)
        logits = model(x.to(device)).float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1).to(device),
                                                ignore_index=IGNORE, reduction="none").view(y.shape)
        valid = (y != IGNORE).to(device)
        out[i:i + batch] = ((nll * valid).sum(1) / valid.sum(1).clamp(min=1)).cpu().numpy()
    return out


class CurriculumSampler:
    """Rows drawn from the easiest competence(progress) fraction of the examples (see the module docstring)."""

    def __init__(self, tokens, starts, lengths, difficulty, batch_size: int, block_size: int, total_rows: int,
                 kind: str, seed: int = 0, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(starts) == 0:
            raise ValueError("curriculum: the training split has no example of at least 2 tokens")
        order = np.argsort(difficulty, kind="stable")       # easiest first; ties keep stream order
        self.tokens = tokens
        self.starts, self.lengths = starts[order], lengths[order]
        self.difficulty = np.asarray(difficulty)[order]
        self.B, self.T, self.total_rows = batch_size, block_size, max(1, total_rows)
        self.kind, self.seed, self.rank, self.world_size = kind, seed, rank, world_size
        self.row = 0

    def pool_size(self, row: int) -> int:
        return max(min(self.B, len(self.starts)), math.ceil(competence(row / self.total_rows) * len(self.starts)))

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.row + self.rank * self.B
        g = np.arange(first, first + self.B, dtype=np.uint64)
        self.row += self.world_size * self.B
        pool = np.array([self.pool_size(int(r)) for r in g], dtype=np.uint64)
        key = _mix64(np.full(g.shape, self.seed, dtype=np.uint64) + np.uint64(0x7F4A7C159E3779B9))
        pick = (_mix64(g ^ key) % pool).astype(np.int64)
        return rows(self.tokens, self.starts[pick], self.lengths[pick], self.T)

    def state_dict(self) -> dict:
        return {"kind": f"curriculum-{self.kind}", "row": int(self.row), "seed": self.seed,
                "world_size": self.world_size, "batch_size": self.B}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != f"curriculum-{self.kind}":
            raise ValueError(f"sampler state is for {state.get('kind')!r}, this run uses curriculum-{self.kind}")
        self.row = int(state["row"])


def make_curriculum_sampler(data, cfg, rank: int = 0, world_size: int = 1) -> CurriculumSampler:
    """The sampler for `cfg.data.curriculum` ('length' or 'loss') over data.train, for process `rank`."""
    kind = cfg.data.curriculum
    T = cfg.model_args.block_size
    micro_batch, _ = split_batch(cfg.training, world_size)
    starts, lengths = examples(data, T)
    if kind == "length":
        difficulty = lengths.astype(np.float64)
    elif kind == "loss":
        if not cfg.data.curriculum_model:
            raise ConfigError("data.curriculum=loss scores examples with a reference model: set "
                              "data.curriculum_model to a run directory (e.g. runs/baseline)")
        from foundry.checkpoint import load_run
        ref = load_run(cfg.data.curriculum_model, device="cuda" if torch.cuda.is_available() else "cpu")
        if ref.tokenizer.to_json() != data.tokenizer.to_json():
            raise ConfigError(f"data.curriculum_model {cfg.data.curriculum_model}: its tokenizer differs from the "
                              f"data's ({data.name}); score with a run trained on the same tokenizer")
        difficulty = loss_scores(ref.model, data.train, starts, lengths, T)
        del ref
    else:
        raise ConfigError(f"data.curriculum={kind!r}: make_curriculum_sampler handles 'length' and 'loss'")
    tc = cfg.training
    total_rows = tc.max_iters * tc.batch_size * tc.gradient_accumulation_steps
    return CurriculumSampler(data.train, starts, lengths, difficulty, micro_batch, T, total_rows, kind,
                             tc.seed, rank, world_size)

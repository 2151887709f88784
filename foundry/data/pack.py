"""Packing: variable-length examples into fixed rows of block_size tokens, first-fit decreasing.

Each row holds whole examples side by side. What keeps them apart (so a packed row computes exactly what each
example would alone, tested through GPT in tests/test_data_pack.py):
    doc_ids    (R, T) example index of each slot, -1 = padding
    positions  (R, T) position within its example: 0 at each example's start (position reset)
    mask       (R, 1, T, T) bool, True = may attend: causal and within the same example (padding sees itself)
    targets    (R, T) the next token of the same example, -1 (ignored by foundry's losses) at an example's last
               token, on padding, and where the example's own loss mask is off (e.g. chat prompts)

Examples longer than block_size are split into block_size pieces (each piece restarts at position 0) or dropped.
First-fit decreasing (Johnson 1973): sort by length, longest first, put each into the first row with room;
the first row with room is found in O(log R) with a max segment tree over the rows' free space.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

IGNORE = -1  # foundry.modules.loss ignores targets of -1


def first_fit_decreasing(lengths, capacity: int) -> list[list[int]]:
    """Bins (lists of item indices, in placement order) for items of `lengths`, each <= capacity."""
    lengths = [int(n) for n in lengths]
    if any(n > capacity or n < 0 for n in lengths):
        raise ValueError(f"first_fit_decreasing: every length must be in [0, {capacity}]")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = [0] * (2 * size)      # max free space in each subtree; leaves size.. are bins (unopened: capacity)
    for b in range(size):
        free[size + b] = capacity
    for node in range(size - 1, 0, -1):
        free[node] = max(free[2 * node], free[2 * node + 1])
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        node = 1
        while node < size:  # descend to the leftmost leaf with room
            node = 2 * node if free[2 * node] >= n else 2 * node + 1
        b = node - size
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
        free[node] -= n
        node //= 2
        while node:
            free[node] = max(free[2 * node], free[2 * node + 1])
            node //= 2
    return bins


def first_fit_decreasing_naive(lengths, capacity: int) -> list[list[int]]:
    """The textbook O(n * bins) version, kept as the reference the fast one is tested against."""
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    bins, room = [], []
    for i in order:
        for b, r in enumerate(room):
            if r >= lengths[i]:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


@dataclass
class Packed:
    tokens: np.ndarray      # (R, T) int64
    targets: np.ndarray     # (R, T) int64, IGNORE where nothing is trained
    positions: np.ndarray   # (R, T) int64
    doc_ids: np.ndarray     # (R, T) int64, index into the (split) examples, -1 = padding
    n_tokens: int           # real tokens placed
    n_examples: int         # examples placed (after splitting, before dropping counted separately)
    dropped: int            # examples dropped for being longer than block_size (long="drop")
    split: int              # examples split into pieces (long="split")

    @property
    def efficiency(self) -> float:
        """Real tokens / slots: the fraction of compute not spent on padding."""
        return self.n_tokens / max(1, self.tokens.size)

    def batch(self, rows=None, device=None):
        """x, y, positions (B, T) and the attention mask (B, 1, T, T) as tensors, ready for GPT.forward."""
        sel = slice(None) if rows is None else rows
        x = torch.as_tensor(self.tokens[sel], device=device)
        y = torch.as_tensor(self.targets[sel], device=device)
        pos = torch.as_tensor(self.positions[sel], device=device)
        return x, y, pos, attention_mask(torch.as_tensor(self.doc_ids[sel], device=device))

    def report(self) -> dict:
        return {"rows": int(self.tokens.shape[0]), "block_size": int(self.tokens.shape[1]),
                "examples": self.n_examples, "tokens": self.n_tokens, "efficiency": round(self.efficiency, 4),
                "split_long": self.split, "dropped_long": self.dropped}

    def save(self, path) -> None:
        """An .npz of the four arrays and the report, written atomically (temporary file, then rename)."""
        tmp = f"{path}.tmp-{os.getpid()}.npz"
        np.savez_compressed(tmp, tokens=self.tokens, targets=self.targets, positions=self.positions,
                            doc_ids=self.doc_ids, report=json.dumps(self.report()))
        os.replace(tmp, path)


def attention_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) example ids (-1 padding) -> (B, 1, T, T) bool: causal, and only within the same example.
    A padding slot sees only itself, so no softmax row is empty."""
    B, T = doc_ids.shape
    t = torch.arange(T, device=doc_ids.device)
    ids = torch.where(doc_ids < 0, -2 - t[None, :], doc_ids)  # each padding slot its own example
    same = ids[:, :, None] == ids[:, None, :]                   # (B, T, T)
    causal = t[:, None] >= t[None, :]
    return (same & causal)[:, None]


def pack(examples, block_size: int, *, pad_id: int = 0, long: str = "split") -> Packed:
    """Pack `examples` (lists of token ids, or (ids, loss_mask) pairs where loss_mask[j] says whether token j
    is a training target) into rows of `block_size` (see the module docstring)."""
    if block_size < 2:
        raise ValueError(f"pack: block_size={block_size} must be at least 2")
    if long not in ("split", "drop"):
        raise ValueError(f"pack: long={long!r} must be 'split' or 'drop'")
    pieces, dropped, split = [], 0, 0
    for ex in examples:
        ids, lm = (ex if isinstance(ex, tuple) else (ex, None))
        ids = np.asarray(ids, dtype=np.int64)
        lm = np.ones(len(ids), dtype=bool) if lm is None else np.asarray(lm, dtype=bool)
        if len(lm) != len(ids):
            raise ValueError(f"pack: an example has {len(ids)} tokens but a loss mask of {len(lm)}")
        if len(ids) == 0:
            continue
        if len(ids) > block_size:
            if long == "drop":
                dropped += 1
                continue
            split += 1
            pieces += [(ids[i:i + block_size], lm[i:i + block_size]) for i in range(0, len(ids), block_size)]
        else:
            pieces.append((ids, lm))
    if not pieces:
        raise ValueError("pack: no examples to pack (all empty, or all longer than block_size with long='drop')")
    bins = first_fit_decreasing([len(p[0]) for p in pieces], block_size)
    R = len(bins)
    tokens = np.full((R, block_size), pad_id, dtype=np.int64)
    targets = np.full((R, block_size), IGNORE, dtype=np.int64)
    positions = np.zeros((R, block_size), dtype=np.int64)
    doc_ids = np.full((R, block_size), -1, dtype=np.int64)
    for r, items in enumerate(bins):
        at = 0
        for i in items:
            ids, lm = pieces[i]
            n = len(ids)
            tokens[r, at:at + n] = ids
            positions[r, at:at + n] = np.arange(n)
            doc_ids[r, at:at + n] = i
            targets[r, at:at + n - 1] = np.where(lm[1:], ids[1:], IGNORE)  # token t predicts t+1 of the same example
            at += n
    n_tokens = int((doc_ids >= 0).sum())
    return Packed(tokens, targets, positions, doc_ids, n_tokens, len(pieces), dropped, split)


def pack_jsonl_command(args) -> dict:
    """`python -m foundry.data pack`: tokenize a JSONL field, pack, print the report, optionally save."""
    from foundry.data.prepare import Source, _check_not_binary, _records
    from foundry.data.tokenize import tokenizer_from_spec

    src = Source(Path(args.input), "jsonl")
    if not src.path.is_file():
        raise FileNotFoundError(f"--input {args.input}: no such file")
    _check_not_binary(src)
    fields = args.field.split(",")
    texts = [t for t, _ in _records(src, fields, "strict") if t]
    if not texts:
        raise ValueError(f"{args.input}: no non-empty records in field {args.field!r}")
    tok = tokenizer_from_spec(args.tokenizer, texts)
    ids = tok.encode_batch(texts)
    if args.eos:
        eos = tok.token_id("eos")
        if eos is None:
            raise ValueError("--eos: this tokenizer has no EOS token (a char tokenizer); drop --eos or use BPE")
        ids = [i + [eos] for i in ids]
    packed = pack(ids, args.block_size, pad_id=tok.token_id("pad") or 0, long=args.long)
    rep = packed.report()
    lens = np.array([len(i) for i in ids])
    rep["example_tokens"] = {"mean": round(float(lens.mean()), 1), "max": int(lens.max()),
                             "p50": int(np.median(lens))}
    print(json.dumps(rep, indent=2))
    if args.out:
        packed.save(args.out)
        print(f"wrote {args.out}")
    return rep

"""Token streams for training: the embedded default data set or a prepared directory.

A prepared directory (python -m foundry.data prepare) holds:
    meta.json       {"tokenizer": "tokenizer.json", "vocab_size", "dtype": "uint16"|"uint32",
                     "train_tokens", "val_tokens", "fingerprint", ...}
    tokenizer.json  the tokenizer (foundry.data.tokenize.load_tokenizer)
    train.bin, val.bin  flat token ids, memory-mapped
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from foundry.data import embedded
from foundry.data.tokenize import CharTokenizer, load_tokenizer
from foundry.safeio import DamagedFileError


@dataclass
class TokenData:
    train: np.ndarray          # (N_train,) integer token ids (memory-mapped for prepared data)
    val: np.ndarray            # (N_val,)
    tokenizer: object
    name: str
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def byte_lengths(self) -> torch.Tensor:
        """(V,) UTF-8 bytes of each token, to turn nats per token into bits per byte."""
        return torch.tensor(self.tokenizer.token_byte_lengths(), dtype=torch.float64)


def split_tokens(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """nanoGPT's split: the first (1 - val_fraction) of the stream trains, the contiguous rest validates."""
    n = int(len(ids) * (1 - val_fraction))
    return ids[:n], ids[n:]


# Data sets kept loaded, by content key (keep_loaded: sweep workers, which run trial after trial on the same data)
_KEPT: dict | None = None
_KEPT_MAX = 4


def keep_loaded() -> None:
    """From now on load_data answers a repeat request for the same, unchanged data set with the TokenData it
    built before (read-only memory maps and a tokenizer: nothing a trial mutates; samplers and evaluations
    keep their own state) instead of mapping the files and reading the tokenizer again, or re-tokenizing the
    embedded corpus (~0.07 s a trial). The last _KEPT_MAX sets stay."""
    global _KEPT
    if _KEPT is None:
        _KEPT = {}


def _content_key(path) -> tuple | None:
    """The embedded set, or a prepared directory's path with each file's size and modification time (a
    re-prepared directory is read again); None where there is nothing to keep (load_data says why)."""
    if path is None:
        return ("embedded",)
    d = Path(path).resolve()
    try:
        return (str(d),) + tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(d.iterdir())
                                 if f.is_file())
    except OSError:
        return None


def load_data(path: str | os.PathLike | None) -> TokenData:
    """The embedded data set (path None) or a prepared directory (kept loaded after keep_loaded())."""
    key = _content_key(path) if _KEPT is not None else None
    if key is None:
        return _load(path)
    if key not in _KEPT:
        if len(_KEPT) >= _KEPT_MAX:
            _KEPT.pop(next(iter(_KEPT)))
        _KEPT[key] = _load(path)
    return _KEPT[key]


def _load(path: str | os.PathLike | None) -> TokenData:
    if path is None:
        text = embedded.load_text()
        tok = CharTokenizer().fit(text)
        ids = np.array(tok.encode(text), dtype=np.uint16)
        train, val = split_tokens(ids)
        return TokenData(train, val, tok, f"embedded:{embedded.NAME}", embedded.SHA256[:16])
    d = Path(path)
    meta_path = d / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"data.path {d}: no meta.json there; prepare a data set with "
                                f"`python -m foundry.data prepare --input FILE --tokenizer char --out {d}`")
    try:
        meta = json.loads(meta_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"data.path {d}: meta.json is damaged ({e}); prepare the directory again "
                               f"(`python -m foundry.data prepare ... --out {d} --overwrite`)") from None
    redo = _prepare_again(d, meta)
    dtype = np.dtype(meta.get("dtype", "uint16"))
    arrays = {}
    for split in ("train", "val"):
        f = d / f"{split}.bin"
        if not f.is_file():
            raise FileNotFoundError(f"data.path {d}: {f.name} is missing; {redo}")
        # the size is checked before mapping: a truncated file is named, not a numpy error (or a silently
        # shorter split when it was cut at a token boundary)
        size, want = f.stat().st_size, meta.get(f"{split}_tokens")
        if (want is not None and size != want * dtype.itemsize) or size % dtype.itemsize or size == 0:
            said = f"meta.json says {want:,} {dtype.name} tokens ({want * dtype.itemsize:,} bytes)" \
                if want is not None else f"not a whole number of {dtype.name} tokens"
            raise DamagedFileError(f"data.path {d}: {f.name} is {size:,} bytes but {said}: the file is truncated "
                                   f"or damaged; {redo}")
        arrays[split] = np.memmap(f, dtype=dtype, mode="r")
    tok_path = d / meta.get("tokenizer", "tokenizer.json")
    if not tok_path.is_file():
        raise FileNotFoundError(f"data.path {d}: {tok_path.name} is missing (the tokenizer its tokens were "
                                f"encoded with); {redo}")
    tok = load_tokenizer(tok_path)
    td = TokenData(arrays["train"], arrays["val"], tok, str(d), str(meta.get("fingerprint", "")))
    # document start offsets per split, recorded by `prepare` (the curriculum's examples); absent in older sets
    td.doc_starts = {s: np.load(d / f"{s}_docs.npy") for s in ("train", "val") if (d / f"{s}_docs.npy").is_file()}
    return td


def _prepare_again(d: Path, meta: dict) -> str:
    """What to do about a damaged prepared directory: the preparation command, from what meta.json recorded."""
    inputs = " ".join(meta.get("inputs") or ["INPUT"])
    spec = meta.get("tokenizer_spec") or "char"
    return (f"prepare it again: `python -m foundry.data prepare --input {inputs} --tokenizer {spec} --out {d} "
            f"--overwrite`")


def random_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator):
    """nanoGPT-style random windows: x, y (B, T) int64 with y shifted by one."""
    if len(data) <= block_size:
        raise ValueError(f"data split of {len(data)} tokens is too short for block_size={block_size}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.from_numpy(np.stack([np.asarray(data[i:i + block_size], dtype=np.int64) for i in ix]))
    y = torch.from_numpy(np.stack([np.asarray(data[i + 1:i + 1 + block_size], dtype=np.int64) for i in ix]))
    return x, y


def eval_windows(data: np.ndarray, block_size: int, max_windows: int | None = None):
    """Non-overlapping windows covering the split from its start (deterministic): yields x, y (1, T)."""
    n = (len(data) - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    for w in range(n):
        i = w * block_size
        chunk = np.asarray(data[i:i + block_size + 1], dtype=np.int64)
        yield torch.from_numpy(chunk[:-1])[None], torch.from_numpy(chunk[1:])[None]


def eval_batches(data: np.ndarray, block_size: int, max_windows: int | None, batch_size: int):
    """The windows of `eval_windows`, stacked into batches: yields x, y (b, T) int64, b <= batch_size."""
    n = (len(data) - 1) // block_size
    if max_windows is not None:
        n = min(n, max_windows)
    for first in range(0, n, batch_size):
        b = min(batch_size, n - first)
        chunk = np.asarray(data[first * block_size:(first + b) * block_size + 1], dtype=np.int64)
        x = torch.from_numpy(chunk[:-1].reshape(b, block_size))
        y = torch.from_numpy(chunk[1:].reshape(b, block_size))
        yield x, y

"""Filtering: exact dedupe, near-duplicate removal (MinHash), length limits; every removal reported with why.

Order of the checks for each example, the first that fires names the reason:
    too_short / too_long          characters (min_chars, max_chars), then tokens (min_tokens, max_tokens)
    exact_duplicate               sha256 of the normalised text equals an earlier kept example's
    near_duplicate                estimated Jaccard similarity of word 5-gram sets >= near_dup with an earlier
                                  kept example (MinHash, 128 permutations, LSH banding; Broder 1997)
Normalisation (for the duplicate checks only; kept text is unchanged): Unicode NFKC, lower case, runs of
whitespace to one space, stripped.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_WS = re.compile(r"\s+")
_MERSENNE = (1 << 31) - 1  # a prime below 2^32: (a x + b) of numbers below it fits in uint64


def normalise(text: str) -> str:
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise(text).encode("utf-8")).hexdigest()


def shingles(text: str, n: int = 5) -> set[str]:
    """Word n-grams of the normalised text (the whole text when it has fewer than n words)."""
    words = normalise(text).split(" ")
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


class MinHash:
    """MinHash signatures with universal hashing h(x) = (a x + b) mod (2^31 - 1) over shingle hashes,
    and LSH banding so only candidate pairs (sharing a band) are compared."""

    def __init__(self, num_perm: int = 128, bands: int = 16, seed: int = 0):
        if num_perm % bands:
            raise ValueError(f"MinHash: num_perm={num_perm} must be a multiple of bands={bands}")
        rng = np.random.default_rng(seed)
        self.a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64)
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.buckets: list[dict] = [dict() for _ in range(bands)]
        self.signatures: list[np.ndarray] = []

    def signature(self, sh: set[str]) -> np.ndarray:
        x = np.array([int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")
                      for s in sh], dtype=np.uint64)
        x = x % _MERSENNE_U  # (n,)
        return ((self.a[:, None] * x[None, :] + self.b[:, None]) % _MERSENNE_U).min(axis=1)  # (num_perm,)

    @staticmethod
    def similarity(s1: np.ndarray, s2: np.ndarray) -> float:
        """Estimated Jaccard similarity: the fraction of permutations whose minima agree."""
        return float((s1 == s2).mean())

    def query(self, sig: np.ndarray) -> set[int]:
        """Indices of added signatures sharing at least one band with `sig`."""
        out: set[int] = set()
        for band in range(self.bands):
            key = sig[band * self.rows:(band + 1) * self.rows].tobytes()
            out.update(self.buckets[band].get(key, ()))
        return out

    def add(self, sig: np.ndarray) -> int:
        idx = len(self.signatures)
        self.signatures.append(sig)
        for band in range(self.bands):
            self.buckets[band].setdefault(sig[band * self.rows:(band + 1) * self.rows].tobytes(), []).append(idx)
        return idx


_MERSENNE_U = np.uint64(_MERSENNE)


@dataclass
class FilterReport:
    kept: list[int] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)  # {index, reason, detail[, duplicate_of]}

    @property
    def summary(self) -> dict:
        counts: dict[str, int] = {}
        for r in self.removed:
            counts[r["reason"]] = counts.get(r["reason"], 0) + 1
        return {"input": len(self.kept) + len(self.removed), "kept": len(self.kept),
                "removed": len(self.removed), "removed_by_reason": counts}

    def to_dict(self) -> dict:
        return {"summary": self.summary, "removed": self.removed}


def filter_texts(texts: list[str], *, min_chars=None, max_chars=None, min_tokens=None, max_tokens=None,
                 tokenizer=None, dedupe: bool = True, near_dup: float | None = None,
                 num_perm: int = 128, bands: int = 16) -> FilterReport:
    """Decide which of `texts` to keep (see the module docstring); returns the report."""
    if (min_tokens is not None or max_tokens is not None) and tokenizer is None:
        raise ValueError("min_tokens/max_tokens need a tokenizer (--tokenizer path/to/tokenizer.json)")
    if near_dup is not None and not 0 < near_dup <= 1:
        raise ValueError(f"near_dup={near_dup}: a Jaccard threshold in (0, 1], e.g. 0.8")
    rep = FilterReport()
    seen: dict[str, int] = {}
    mh = MinHash(num_perm, bands) if near_dup is not None else None
    mh_owner: list[int] = []
    n_tokens = None
    if tokenizer is not None and (min_tokens is not None or max_tokens is not None):
        n_tokens = [len(ids) for ids in tokenizer.encode_batch(list(texts))]
    for i, text in enumerate(texts):
        nc = len(text)
        reason = None
        if min_chars is not None and nc < min_chars:
            reason = ("too_short", f"{nc} characters < min_chars {min_chars}")
        elif max_chars is not None and nc > max_chars:
            reason = ("too_long", f"{nc} characters > max_chars {max_chars}")
        elif n_tokens is not None and min_tokens is not None and n_tokens[i] < min_tokens:
            reason = ("too_short", f"{n_tokens[i]} tokens < min_tokens {min_tokens}")
        elif n_tokens is not None and max_tokens is not None and n_tokens[i] > max_tokens:
            reason = ("too_long", f"{n_tokens[i]} tokens > max_tokens {max_tokens}")
        if reason:
            rep.removed.append({"index": i, "reason": reason[0], "detail": reason[1]})
            continue
        if dedupe:
            h = text_hash(text)
            if h in seen:
                rep.removed.append({"index": i, "reason": "exact_duplicate", "duplicate_of": seen[h],
                                    "detail": f"same normalised text as example {seen[h]}"})
                continue
            seen[h] = i
        if mh is not None:
            sig = mh.signature(shingles(text))
            best, best_j = 0.0, None
            for j in mh.query(sig):
                s = MinHash.similarity(sig, mh.signatures[j])
                if s > best:
                    best, best_j = s, mh_owner[j]
            if best_j is not None and best >= near_dup:
                rep.removed.append({"index": i, "reason": "near_duplicate", "duplicate_of": best_j,
                                    "detail": f"estimated Jaccard {best:.2f} >= {near_dup} with example {best_j}"})
                continue
            mh.add(sig)
            mh_owner.append(i)
        rep.kept.append(i)
    return rep


def filter_jsonl(inp, out, *, field: str = "text", min_chars=None, max_chars=None, min_tokens=None,
                 max_tokens=None, tokenizer=None, near_dup=None, report_path=None) -> dict:
    """Filter a JSONL file on the text of `field` ('a,b' joins fields); kept lines are written unchanged."""
    from foundry.config import write_text_atomic
    from foundry.data.prepare import Source, _check_not_binary, _records
    from foundry.data.tokenize import load_tokenizer

    src = Source(Path(inp), "jsonl")
    if not src.path.is_file():
        raise FileNotFoundError(f"--input {inp}: no such file")
    _check_not_binary(src)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    fields = field.split(",")
    texts = [t for t, _ in _records(src, fields, "strict")]
    lines = [ln for ln in src.path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    rep = filter_texts(texts, min_chars=min_chars, max_chars=max_chars, min_tokens=min_tokens,
                       max_tokens=max_tokens, tokenizer=tok, near_dup=near_dup)
    write_text_atomic(out, "".join(lines[i] + "\n" for i in rep.kept))
    d = rep.to_dict()
    if report_path:
        write_text_atomic(report_path, json.dumps(d, indent=2) + "\n")
    return d

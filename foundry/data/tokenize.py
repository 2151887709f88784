"""Tokenizers. Every tokenizer has encode, decode, vocab_size, token_byte_lengths (for bits per byte),
save(path) and a matching load; `load_tokenizer(path)` reads any of them back."""
from __future__ import annotations

import json
import os
from pathlib import Path


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character, ids in sorted character order (as nanoGPT's
    shakespeare_char, so the same text gives the same ids)."""

    kind = "char"

    def __init__(self, chars: list[str] | None = None):
        self.chars: list[str] = list(chars or [])
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    def fit(self, corpus) -> "CharTokenizer":
        """Learn the alphabet from a string or an iterable of strings."""
        seen: set[str] = set()
        for text in [corpus] if isinstance(corpus, str) else corpus:
            seen.update(text)
        if not seen:
            raise ValueError("CharTokenizer.fit: the corpus is empty")
        self.chars = sorted(seen)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this tokenizer's alphabet of "
                             f"{self.vocab_size} characters") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_byte_lengths(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        data = json.loads(Path(path).read_text())
        return cls(data["chars"])


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved by foundry (char or BPE) from a file or a directory holding tokenizer.json."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    data = json.loads(path.read_text())
    if data.get("type") == "char":
        return CharTokenizer.load(path)
    raise ValueError(f"{path}: not a tokenizer this version of foundry can read")

"""Tokenizers. Every tokenizer has encode, decode, vocab_size, token_byte_lengths (for bits per byte),
save(path) and a matching load; `load_tokenizer(path)` reads any of them back.

    CharTokenizer   one id per distinct character (nanoGPT's shakespeare_char ids); no special tokens
    BPETokenizer    byte-level BPE trained with Hugging Face `tokenizers`: any text round-trips exactly,
                    with special tokens (pad, BOS, EOS and the ChatML / Llama 3 chat markers)
    HFTokenizer     any pretrained Hugging Face `tokenizer.json` (e.g. a zoo checkpoint directory)

File formats (a tokenizer.json either way, told apart by its content):
    {"type": "char", "chars": [...]}                                   CharTokenizer
    {"type": "bpe", "special_tokens": {role: token}, "tokenizer": {...}} foundry's wrapper of a HF tokenizer
    {"version": ..., "model": {...}, ...}                              a plain Hugging Face tokenizer.json
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from foundry.safeio import write_text_atomic


class CharTokenizer:
    """Character-level tokenizer: one id per distinct character, ids in sorted character order (as nanoGPT's
    shakespeare_char, so the same text gives the same ids)."""

    kind = "char"
    special_tokens: dict[str, str] = {}

    def __init__(self, chars: list[str] | None = None):
        self.chars: list[str] = list(chars or [])
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._codes: np.ndarray | None = None  # sorted code points, for vectorised encoding

    def fit(self, corpus) -> "CharTokenizer":
        """Learn the alphabet from a string or an iterable of strings."""
        seen: set[str] = set()
        for text in [corpus] if isinstance(corpus, str) else corpus:
            seen.update(text)
        if not seen:
            raise ValueError("CharTokenizer.fit: the corpus is empty")
        self.chars = sorted(seen)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self._codes = None
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def token_id(self, role: str) -> int | None:
        return None  # no special tokens

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in this tokenizer's alphabet of "
                             f"{self.vocab_size} characters") from None

    def encode_array(self, text: str) -> np.ndarray:
        """encode() as an int64 array, vectorised (about 50x faster on long texts)."""
        if self._codes is None:
            self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)  # sorted, as chars are
        cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, cps)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != cps)
        if bad.any():
            c = chr(int(cps[np.argmax(bad)]))
            raise ValueError(f"character {c!r} is not in this tokenizer's alphabet of {self.vocab_size} characters")
        return ids.astype(np.int64)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_array(t).tolist() for t in texts]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_byte_lengths(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars]

    def to_json(self) -> str:
        return json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        write_text_atomic(path, self.to_json())  # a full disk names the file; no half-written tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        return load_tokenizer(path)


# Special tokens of a foundry BPE vocabulary, by role, in id order (ids 0..8). The chat markers are those of
# the published ChatML (<|im_start|>, <|im_end|>) and Llama 3 (header and end-of-turn) templates, so that
# foundry.data.chat renders either format to single-id markers.
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "begin_of_text": "<|begin_of_text|>",
    "start_header": "<|start_header_id|>",
    "end_header": "<|end_header_id|>",
    "eot": "<|eot_id|>",
}
N_BYTES = 256  # the byte-level alphabet every BPE vocabulary starts from


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` behind foundry's tokenizer interface.

    `special_tokens` maps roles (pad, bos, eos, im_start, ...) to token strings; `token_id(role)` gives the id."""

    kind = "hf"

    def __init__(self, tokenizer, special_tokens: dict[str, str] | None = None):
        self._tok = tokenizer
        self.special_tokens = dict(special_tokens or {})
        self._byte_lengths: list[int] | None = None

    # ---- the interface every tokenizer has --------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a special token's text (e.g. "<|eos|>") inside it becomes that token's id."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def encode_framed(self, text: str) -> list[int]:
        """Ids framed by the tokenizer.json's post-processor, as Hugging Face's tokenizer(text) gives them (a
        Llama 3 tokenizer prepends <|begin_of_text|>; GPT-2's and foundry's add nothing): a generation prompt."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """ids and the (start, end) character span of each token in `text`."""
        e = self._tok.encode(text, add_special_tokens=False)
        return e.ids, e.offsets

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_id(self, role: str) -> int | None:
        """Id of the special token playing `role` (pad, bos, eos, im_start, ...), None if this vocabulary has none."""
        text = self.special_tokens.get(role)
        return None if text is None else self._tok.token_to_id(text)

    def token_byte_lengths(self) -> list[int]:
        """UTF-8 bytes each token stands for; 0 for special tokens. Exact for byte-level vocabularies (each
        symbol of a byte-level token is one byte); otherwise measured by decoding each token alone."""
        if self._byte_lengths is None:
            added = {t.content: t.special for t in self._tok.get_added_tokens_decoder().values()}
            byte_level = json.loads(self._tok.to_str()).get("decoder") or {}
            byte_level = byte_level.get("type") == "ByteLevel"
            out = []
            for i in range(self.vocab_size):
                t = self._tok.id_to_token(i)
                if t is None or added.get(t):
                    out.append(0)
                elif t in added:  # a plain added token stands for its own text
                    out.append(len(t.encode("utf-8")))
                elif byte_level:
                    out.append(len(t))
                else:
                    out.append(len(self._tok.decode([i], skip_special_tokens=False).encode("utf-8")))
            self._byte_lengths = out
        return self._byte_lengths

    def to_json(self) -> str:
        return json.dumps({"type": "bpe", "special_tokens": self.special_tokens,
                           "tokenizer": json.loads(self._tok.to_str())}, ensure_ascii=False)

    def save(self, path: str | os.PathLike) -> None:
        """foundry's wrapper format: the HF tokenizer plus the role of each special token."""
        write_text_atomic(path, self.to_json())  # a full disk names the file; no half-written tokenizer

    @classmethod
    def load(cls, path: str | os.PathLike):
        return load_tokenizer(path)


class BPETokenizer(HFTokenizer):
    """Byte-level BPE (GPT-2's scheme) trained with Hugging Face `tokenizers`; any text round-trips exactly.

        tok = BPETokenizer(vocab_size=50257); tok.fit(corpus); ids = tok.encode("hello world")

    `vocab_size` is the requested size, special tokens included. A corpus too small to supply that many merges
    gives a smaller vocabulary (training stops when no pair repeats): `vocab_size` then reports the size
    actually learned, `requested_vocab_size` the one asked for, and fit() warns."""

    kind = "bpe"

    def __init__(self, vocab_size: int = 50257, special_tokens: dict[str, str] | None = None,
                 min_frequency: int = 2, _tokenizer=None):
        specials = dict(SPECIAL_TOKENS if special_tokens is None else special_tokens)
        if _tokenizer is None:
            need = N_BYTES + len(specials)
            if not isinstance(vocab_size, int) or vocab_size < need:
                raise ValueError(f"BPETokenizer: vocab_size={vocab_size!r} cannot hold the {N_BYTES} byte symbols and "
                                 f"{len(specials)} special tokens; use at least {need} (e.g. bpe:{max(need, 512)})")
            from tokenizers import Tokenizer, decoders, models, pre_tokenizers
            _tokenizer = Tokenizer(models.BPE())
            _tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            _tokenizer.decoder = decoders.ByteLevel()
            _tokenizer.add_special_tokens(list(specials.values()))
        super().__init__(_tokenizer, specials)
        self.requested_vocab_size = vocab_size if special_tokens is None or _tokenizer is None else self.vocab_size
        self.min_frequency = min_frequency
        self.fitted = _tokenizer.get_vocab_size(with_added_tokens=False) > 0

    def fit(self, corpus) -> "BPETokenizer":
        """Learn merges from a string or an iterable of strings (streamed: an iterator is read once)."""
        from tokenizers import pre_tokenizers, trainers

        trainer = trainers.BpeTrainer(vocab_size=self.requested_vocab_size, min_frequency=self.min_frequency,
                                      special_tokens=list(self.special_tokens.values()),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        seen = 0

        def texts():
            nonlocal seen
            for t in _chunks(corpus):
                seen += len(t)
                yield t

        self._tok.train_from_iterator(texts(), trainer=trainer)
        if seen == 0:
            raise ValueError("BPETokenizer.fit: the corpus is empty")
        self.fitted, self._byte_lengths = True, None
        if self.vocab_size < self.requested_vocab_size:
            warnings.warn(f"BPETokenizer.fit: the corpus ({seen:,} characters) supplied only "
                          f"{self.vocab_size:,} of the {self.requested_vocab_size:,} tokens asked for; the "
                          f"vocabulary is {self.vocab_size:,} (fit a larger corpus for more)", stacklevel=2)
        return self

    def _check_fitted(self):
        if not self.fitted:
            raise RuntimeError("BPETokenizer: call fit(corpus) first (or load a trained tokenizer.json)")

    def encode(self, text: str) -> list[int]:
        self._check_fitted()
        return super().encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self._check_fitted()
        return super().encode_batch(texts)


def _chunks(corpus, size: int = 1 << 16):
    """A string or an iterable of strings as pieces of about `size` characters, cut after a newline where one is
    near (the trainer batches pieces across threads; one huge string would be a single batch)."""
    for text in [corpus] if isinstance(corpus, str) else corpus:
        if not isinstance(text, str):
            raise TypeError(f"a corpus is a string or an iterable of strings, got an item of {type(text).__name__}")
        i = 0
        while i < len(text):
            j = min(len(text), i + size)
            if j < len(text):
                nl = text.rfind("\n", i, j)
                j = nl + 1 if nl > i else j
            yield text[i:j]
            i = j


def _roles_from_hf(tok, folder: Path) -> dict[str, str]:
    """Roles of a pretrained tokenizer's special tokens: from tokenizer_config.json beside it when present
    (bos_token, eos_token, pad_token), else recognised by the common names."""
    roles: dict[str, str] = {}
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        c = json.loads(cfg.read_text(encoding="utf-8"))
        for role in ("bos", "eos", "pad"):
            v = c.get(f"{role}_token")
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str):
                roles[role] = v
    known = {"<|endoftext|>": ("bos", "eos"), "<s>": ("bos",), "</s>": ("eos",), "<pad>": ("pad",),
             "<|begin_of_text|>": ("bos", "begin_of_text"), "<|end_of_text|>": ("eos",),
             **{v: (k,) for k, v in SPECIAL_TOKENS.items()}}
    for t in tok.get_added_tokens_decoder().values():
        for role in known.get(t.content, ()):
            roles.setdefault(role, t.content)
    return roles


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer from a tokenizer.json file, or a directory holding one: foundry's char or BPE format,
    or a pretrained Hugging Face tokenizer.json (a checkpoint directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    try:
        return tokenizer_from_json(path.read_text(encoding="utf-8"), path.parent)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a tokenizer.json ({e})") from None
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def tokenizer_from_json(text: str, folder: str | os.PathLike | None = None):
    """A tokenizer from the text of a tokenizer.json (`folder`: where to look for a HF tokenizer_config.json)."""
    from tokenizers import Tokenizer

    data = json.loads(text)
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "bpe":
        tok = Tokenizer.from_str(json.dumps(data["tokenizer"]))
        return _wrap(tok, data.get("special_tokens", {}))
    if isinstance(data, dict) and "model" in data:  # a plain Hugging Face tokenizer.json
        tok = Tokenizer.from_str(text)
        return _wrap(tok, _roles_from_hf(tok, Path(folder)) if folder is not None else {})
    raise ValueError('not a tokenizer this version of foundry can read (expected foundry\'s '
                     '{"type": "char"|"bpe", ...} or a Hugging Face tokenizer.json with a "model")')


def _wrap(tok, roles: dict[str, str]) -> HFTokenizer:
    if json.loads(tok.to_str())["model"].get("type") == "BPE":
        return BPETokenizer(special_tokens=roles, _tokenizer=tok)
    return HFTokenizer(tok, roles)


def tokenizer_from_spec(spec: str, corpus=None):
    """A tokenizer from a command-line spec: 'char', 'bpe:N' (both fitted on `corpus`, an iterable of strings
    that may be read once), or a path to a tokenizer.json / a directory holding one (used as is)."""
    spec = parse_tokenizer_spec(spec)
    if spec[0] == "path":
        return load_tokenizer(spec[1])
    if corpus is None:
        raise ValueError(f"tokenizer {spec[0]!r} must be fitted on a corpus")
    if spec[0] == "char":
        return CharTokenizer().fit(corpus)
    return BPETokenizer(vocab_size=spec[1]).fit(corpus)


def parse_tokenizer_spec(spec: str) -> tuple:
    """('char',) | ('bpe', N) | ('path', Path), checked before any work (an impossible size fails here)."""
    if spec == "char":
        return ("char",)
    if spec.startswith("bpe:") or spec == "bpe":
        n = spec[4:]
        if not n.isdigit():
            raise ValueError(f"--tokenizer {spec!r}: write bpe:N with N the vocabulary size, e.g. bpe:2048")
        need = N_BYTES + len(SPECIAL_TOKENS)
        if int(n) < need:
            raise ValueError(f"--tokenizer {spec!r}: a vocabulary of {n} cannot hold the {N_BYTES} byte symbols and "
                             f"{len(SPECIAL_TOKENS)} special tokens; use at least bpe:{need}")
        return ("bpe", int(n))
    p = Path(spec)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise FileNotFoundError(f"--tokenizer {spec!r}: not 'char', 'bpe:N', nor an existing tokenizer.json "
                                f"(or a directory holding one)")
    return ("path", p)

"""Prepare a data set: read text, fit or load a tokenizer, encode on every core, split, write atomically.

    python -m foundry.data prepare --input PATH... --tokenizer {char | bpe:N | path/to/tokenizer.json} --out DIR

Inputs
    a text file (.txt, .md, anything not below)      its documents are its paragraphs (blank-line separated)
    a JSONL file (.jsonl, .jsonl.gz)                 one document per line, the text in --field (a,b joins fields)
    a directory                                      its .txt/.md/.rst/.text/.jsonl(.gz) files, recursively, sorted
    .gz files are read decompressed.

The token stream is every document in input order. Paragraphs of one text file follow each other with nothing in
between (the stream decodes to the file exactly); between files and JSONL records the tokenizer's EOS token is put
when it has one (BPE), nothing otherwise (char). The last `val_fraction` of the stream, contiguous, validates
(nanoGPT's split, so character-level Tiny Shakespeare gives 1,003,854 / 111,540 tokens).

Bad input fails before any encoding, with the file (and line or byte offset): no input or no text, a binary file
(a NUL byte in its first 8 KiB), invalid UTF-8 (policy: an error unless errors="replace", which puts U+FFFD for
each invalid sequence, as Python's "replace" does, and counts them in meta.json), a JSONL line that is not a JSON object or lacks the field.

Output (written into a temporary sibling directory and renamed into place, so a failure leaves nothing):
    meta.json       format, tokenizer, tokenizer_type, vocab_size, dtype, train_tokens, val_tokens, train_bytes,
                    val_bytes, documents, val_fraction, fingerprint, source_sha256, inputs, ...
    tokenizer.json  train.bin  val.bin  (flat token ids, uint16 when the vocabulary fits, else uint32)
    train_docs.npy  val_docs.npy   int64 start offset of each document within its split (the curriculum's
                    examples); the split point starts a document of the validation split.
"""
from __future__ import annotations

import codecs
import collections
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundry.data.tokenize import CharTokenizer, parse_tokenizer_spec, tokenizer_from_json
from foundry.safeio import FULL_ERRNOS, DiskFullError

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
READ_BLOCK = 1 << 20          # bytes read at a time from a text file
MAX_PARAGRAPH = 1 << 22       # characters: a longer paragraph is cut at a line end (bounded memory)
CHUNK_CHARS = 1 << 19         # characters sent to a worker per task (about 0.5 MB)
_PARAGRAPH = re.compile(r"\n\n+(?=[^\n])")  # a paragraph ends with its blank lines; the next starts after them


class DataError(ValueError):
    """Bad input to preparation: says what, where (file, line, byte) and what to do."""


@dataclass
class Source:
    path: Path
    kind: str  # "text" | "jsonl"


@dataclass
class Scan:
    """What a first, cheap pass over the inputs found (everything is checked here, before encoding)."""
    sources: list
    documents: int = 0
    chars: int = 0
    bytes: int = 0
    alphabet: set = field(default_factory=set)
    replaced: int = 0          # U+FFFD put in for invalid UTF-8 sequences (errors="replace")
    empty_records: int = 0     # JSONL records whose text is empty (skipped)
    sha256: str = ""


# --------------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------------
def _is_jsonl(p: Path) -> bool:
    return p.name.endswith(JSONL_SUFFIXES)


def find_sources(inputs: list) -> list[Source]:
    """The files named, and the text/JSONL files under the directories named (sorted, hidden ones skipped)."""
    if not inputs:
        raise DataError("no --input given; name text files, JSONL files or directories")
    out = []
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file()
                           and not any(part.startswith(".") for part in f.relative_to(p).parts)
                           and (f.name.endswith(TEXT_SUFFIXES) or _is_jsonl(f)
                                or f.name.endswith(tuple(s + ".gz" for s in TEXT_SUFFIXES))))
            if not found:
                raise DataError(f"{p}: directory holds no text or JSONL files "
                                f"({', '.join(TEXT_SUFFIXES + JSONL_SUFFIXES)})")
            out += [Source(f, "jsonl" if _is_jsonl(f) else "text") for f in found]
        elif p.is_file():
            out.append(Source(p, "jsonl" if _is_jsonl(p) or p.suffix == ".json" and _looks_jsonl(p) else "text"))
        else:
            raise DataError(f"--input {raw}: no such file or directory")
    return out


def _looks_jsonl(p: Path) -> bool:
    with _open(p) as f:
        return f.read(1) == b"{"


def _open(p: Path):
    return gzip.open(p, "rb") if p.name.endswith(".gz") else open(p, "rb")


def _check_not_binary(src: Source) -> None:
    with _open(src.path) as f:
        try:
            head = f.read(8192)
        except (OSError, EOFError) as e:
            raise DataError(f"{src.path}: cannot be read ({e})") from None
    if b"\x00" in head:
        raise DataError(f"{src.path}: looks binary (a NUL byte at offset {head.index(0)}); "
                        f"give text or JSONL files only")


def _text_blocks(src: Source, errors: str, stats: dict | None = None):
    """Decoded text of a file in blocks; invalid UTF-8 raises with the byte offset (errors='strict') or becomes
    U+FFFD (errors='replace'; stats["replaced"] counts the replacement characters put in)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors=errors)
    # a second decoder that drops bad bytes: the difference in U+FFFD counts is what "replace" inserted
    # (a U+FFFD present in the file itself is counted by neither)
    ign = codecs.getincrementaldecoder("utf-8")(errors="ignore") if errors == "replace" else None
    offset = 0
    with _open(src.path) as f:
        while True:
            raw = f.read(READ_BLOCK)
            final = not raw
            try:
                text = dec.decode(raw, final=final)
            except UnicodeDecodeError as e:
                raise DataError(f"{src.path}: invalid UTF-8 at byte {offset + e.start} "
                                f"({raw[e.start:e.start + 4]!r}); fix the file, or pass --errors replace "
                                f"to put U+FFFD for each bad sequence") from None
            if ign is not None and stats is not None:
                stats["replaced"] = stats.get("replaced", 0) + text.count("\ufffd") - \
                    ign.decode(raw, final=final).count("\ufffd")
            offset += len(raw)
            if text:
                yield text
            if final:
                return


def _paragraphs(src: Source, errors: str, stats: dict | None = None):
    carry = ""
    for block in _text_blocks(src, errors, stats):
        carry += block
        cut = None
        for m in _PARAGRAPH.finditer(carry):
            cut = m.end()
        if cut is None and len(carry) > MAX_PARAGRAPH:
            nl = carry.rfind("\n")
            cut = nl + 1 if nl > 0 else len(carry)
        if cut:
            yield from _split_paragraphs(carry[:cut])
            carry = carry[cut:]
    if carry:
        yield from _split_paragraphs(carry)


def _split_paragraphs(text: str):
    i = 0
    for m in _PARAGRAPH.finditer(text):
        yield text[i:m.end()]
        i = m.end()
    if i < len(text):
        yield text[i:]


def _records(src: Source, fields: list[str], errors: str):
    with _open(src.path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise DataError(f"{src.path}:{lineno}: invalid UTF-8 at byte {e.start} of the line; fix the file, "
                                f"or pass --errors replace") from None
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{src.path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{src.path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            parts = []
            for name in fields:
                if name not in rec:
                    raise DataError(f"{src.path}:{lineno}: no field {name!r} (this record has "
                                    f"{sorted(rec)}); choose the text field with --field")
                if not isinstance(rec[name], str):
                    raise DataError(f"{src.path}:{lineno}: field {name!r} is {type(rec[name]).__name__}, "
                                    f"not a string")
                parts.append(rec[name])
            replaced = line.count("\ufffd") - raw.decode("utf-8", "ignore").count("\ufffd") if errors == "replace" else 0
            yield "\n".join(parts), replaced


def iter_documents(sources: list[Source], fields: list[str], errors: str = "strict"):
    """(text, starts_new_source) for every document: the paragraphs of text files, the records of JSONL files.
    starts_new_source is True for the first paragraph of each file and every JSONL record (after the first
    document): where an EOS separator goes."""
    first = True
    for src in sources:
        if src.kind == "text":
            new = True
            for para in _paragraphs(src, errors):
                yield para, new and not first
                new = first = False
        else:
            for text, _ in _records(src, fields, errors):
                if text:
                    yield text, not first
                    first = False


def scan(sources: list[Source], fields: list[str], errors: str = "strict") -> Scan:
    """One pass that checks every input (binary, UTF-8, JSON, field) and counts; no tokenizer involved."""
    for src in sources:
        _check_not_binary(src)
    sc = Scan(sources)
    h = hashlib.sha256()
    for src in sources:
        if src.kind == "text":
            stats: dict = {}
            for para in _paragraphs(src, errors, stats):
                sc.documents += 1
                sc.alphabet.update(para)
                sc.chars += len(para)
                b = para.encode("utf-8")
                sc.bytes += len(b)
                h.update(b)
            sc.replaced += stats.get("replaced", 0)
        else:
            for text, replaced in _records(src, fields, errors):
                if not text:
                    sc.empty_records += 1
                    continue
                sc.documents += 1
                sc.alphabet.update(text)
                sc.chars += len(text)
                b = text.encode("utf-8")
                sc.bytes += len(b)
                h.update(b"\x1e" + b)
                sc.replaced += replaced
    if sc.chars == 0:
        raise DataError(f"no text in the inputs ({', '.join(str(s.path) for s in sources)}): every file or record "
                        f"is empty")
    sc.sha256 = h.hexdigest()
    return sc


# --------------------------------------------------------------------------------------------------
# Encoding on every core
# --------------------------------------------------------------------------------------------------
_WORKER_TOK = None
_WORKER_DTYPE = None


def _init_worker(tok_json: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process; the pool gives parallelism
    global _WORKER_TOK, _WORKER_DTYPE
    _WORKER_TOK, _WORKER_DTYPE = tokenizer_from_json(tok_json), np.dtype(dtype)


def _encode_chunk(chunk: list) -> tuple[bytes, np.ndarray]:
    """Encode [(text, separator_before), ...]: the ids as bytes of the output dtype, and where each document's
    own tokens start in them (an EOS separator before a document ends the previous one)."""
    tok, dtype = _WORKER_TOK, _WORKER_DTYPE
    eos = tok.token_id("eos")
    if isinstance(tok, CharTokenizer):  # vectorised, no Python lists (speed and memory)
        encoded = [tok.encode_array(t) for t, _ in chunk]
    else:
        encoded = tok.encode_batch([t for t, _ in chunk])
    parts, starts, pos = [], np.zeros(len(chunk), dtype=np.int64), 0
    for i, ((_, sep), ids) in enumerate(zip(chunk, encoded)):
        if sep and eos is not None:
            parts.append(np.array([eos], dtype=dtype))
            pos += 1
        starts[i] = pos
        parts.append(np.asarray(ids, dtype=dtype))
        pos += len(ids)
    return np.concatenate(parts).tobytes(), starts


def _chunks(docs, size: int | None = None):
    size = size or CHUNK_CHARS
    chunk, n = [], 0
    for text, sep in docs:
        chunk.append((text, sep))
        n += len(text)
        if n >= size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def encode_stream(docs, tok, dtype: np.dtype, out_tokens, workers: int):
    """Encode documents into the open file `out_tokens`; returns the start offset of every document (int64).

    With workers > 1 a process pool encodes ~0.5 MB chunks, at most 2 per worker in flight (bounded memory),
    and results are written in input order, so the output does not depend on the number of workers."""
    starts, pos = [], 0

    def take(result):
        nonlocal pos
        raw, local_starts = result
        out_tokens.write(raw)
        starts.append(pos + local_starts)
        pos += len(raw) // dtype.itemsize

    tok_json = tok.to_json()
    if workers <= 1:
        _init_worker(tok_json, dtype.str)
        for chunk in _chunks(docs):
            take(_encode_chunk(chunk))
    else:
        # fork on Linux: workers start at once and a caller's script (or stdin) is not re-imported, as spawn
        # would; the workers use no threads (tokenizers is told so), so forking a threaded parent is safe here
        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        saved = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(tok_json, dtype.str)) as ex:
                pending = collections.deque()
                for chunk in _chunks(docs):
                    pending.append(ex.submit(_encode_chunk, chunk))
                    if len(pending) >= 2 * workers:
                        take(pending.popleft().result())
                while pending:
                    take(pending.popleft().result())
        finally:
            if saved is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = saved
    return (np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)), pos


# --------------------------------------------------------------------------------------------------
# The whole preparation
# --------------------------------------------------------------------------------------------------
def prepare(inputs: list, tokenizer: str, out: str | os.PathLike, *, field: str = "text",
            val_fraction: float = 0.1, errors: str = "strict", workers: int | None = None,
            overwrite: bool = False, log=print) -> dict:
    """Prepare a data set directory (see the module docstring); returns its meta.json as a dict."""
    t0 = time.perf_counter()
    out = Path(out)
    # ---- every check that needs no pass over the data ---------------------------------------------
    if not 0 < val_fraction < 1:
        raise DataError(f"--val-fraction {val_fraction}: must be between 0 and 1 (exclusive), e.g. 0.1")
    if errors not in ("strict", "replace"):
        raise DataError(f"--errors {errors!r}: must be 'strict' or 'replace'")
    if out.exists() and not overwrite:
        raise DataError(f"--out {out}: already exists; choose another directory or pass --overwrite")
    fields = [f for f in field.split(",") if f]
    if not fields:
        raise DataError("--field is empty; name the JSONL field holding the text, e.g. --field text")
    spec = parse_tokenizer_spec(tokenizer)
    sources = find_sources(inputs)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))

    # ---- pass 1: check and count everything ------------------------------------------------------
    sc = scan(sources, fields, errors)
    log(f"read {len(sources)} file(s): {sc.documents:,} documents, {sc.chars:,} characters, {sc.bytes:,} bytes"
        + (f", {sc.replaced} invalid UTF-8 sequences replaced by U+FFFD" if sc.replaced else ""))

    # ---- the tokenizer ---------------------------------------------------------------------------
    from foundry.data.tokenize import BPETokenizer, CharTokenizer, load_tokenizer
    t1 = time.perf_counter()
    if spec[0] == "char":
        tok = CharTokenizer(sorted(sc.alphabet))
    elif spec[0] == "bpe":
        tok = BPETokenizer(vocab_size=spec[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tok.fit(t for t, _ in iter_documents(sources, fields, errors))
        for w in caught:
            log(f"note: {w.message}")
    else:
        tok = load_tokenizer(spec[1])
        if isinstance(tok, CharTokenizer):
            missing = sc.alphabet - set(tok.chars)
            if missing:
                raise DataError(f"--tokenizer {spec[1]}: its alphabet lacks {len(missing)} character(s) of the "
                                f"input, e.g. {sorted(missing)[:5]}; use --tokenizer char to fit a new one")
    fit_s = time.perf_counter() - t1
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)

    # ---- pass 2: encode, split, write (all inside a temporary directory) -------------------------
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    kept = f"the existing {out} is unchanged" if out.exists() else "the partial directory was removed"
    try:
        t2 = time.perf_counter()
        with open(tmp / "train.bin", "wb") as f:
            workers = workers if sc.chars > CHUNK_CHARS else 1  # one chunk is not worth starting processes for
            starts, n = encode_stream(iter_documents(sources, fields, errors), tok, dtype, f, workers)
        enc_s = time.perf_counter() - t2
        if n < 2:
            raise DataError(f"the inputs encode to {n} token(s); too little to split into train and validation")
        n_train = int(n * (1 - val_fraction))
        if n_train == n or n_train == 0:
            raise DataError(f"{n} tokens with --val-fraction {val_fraction} leave an empty split; give more text")
        _move_tail(tmp / "train.bin", tmp / "val.bin", n_train * dtype.itemsize)
        train_docs = starts[starts < n_train]
        val_docs = np.concatenate([[0], starts[starts > n_train] - n_train]).astype(np.int64)
        np.save(tmp / "train_docs.npy", train_docs)
        np.save(tmp / "val_docs.npy", val_docs)
        tok.save(tmp / "tokenizer.json")

        byte_len = np.asarray(tok.token_byte_lengths(), dtype=np.int64)
        h = hashlib.sha256()
        h.update((tmp / "tokenizer.json").read_bytes())
        split_bytes = {}
        for split in ("train", "val"):
            ids = np.memmap(tmp / f"{split}.bin", dtype=dtype, mode="r")
            total = 0
            for i in range(0, len(ids), 1 << 18):  # blocks, so memory stays bounded
                block = np.asarray(ids[i:i + (1 << 18)])
                total += int(np.bincount(block, minlength=len(byte_len)) @ byte_len)
                h.update(block.tobytes())
            split_bytes[split] = total
            del ids
        meta = {
            "format": 1,
            "tokenizer": "tokenizer.json",
            "tokenizer_type": tok.kind,
            "tokenizer_spec": tokenizer if spec[0] != "path" else str(spec[1]),
            "vocab_size": tok.vocab_size,
            "dtype": dtype.name,
            "train_tokens": n_train,
            "val_tokens": n - n_train,
            "train_bytes": split_bytes["train"],
            "val_bytes": split_bytes["val"],
            "documents": {"train": len(train_docs), "val": len(val_docs)},
            "val_fraction": val_fraction,
            "fingerprint": h.hexdigest()[:16],   # tokenizer + train + val tokens
            "source_sha256": sc.sha256,          # the input text, documents in order
            "source_chars": sc.chars,
            "source_bytes": sc.bytes,
            "inputs": [str(s.path) for s in sources],
            "field": field,
            "utf8_errors": errors,
            "replaced_sequences": sc.replaced,
            "empty_records_skipped": sc.empty_records,
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():  # --overwrite: swap in the new directory, then drop the old one
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:  # a full disk or a file-size limit, named
            # the size: at most one token per character, plus the document starts
            raise DiskFullError(out, sc.chars * dtype.itemsize + 8 * (sc.documents + 2), e, kept) from None
        raise
    total_s = time.perf_counter() - t0
    log(f"tokenizer {tok.kind} ({tok.vocab_size:,} tokens, {dtype.name}) fitted/loaded in {fit_s:.2f}s; "
        f"encoded {sc.bytes / 1e6:.2f} MB in {enc_s:.2f}s ({sc.bytes / 1e6 / max(enc_s, 1e-9):.2f} MB/s, "
        f"{workers} worker(s))")
    log(f"wrote {out}: {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens, "
        f"{len(train_docs):,} + {len(val_docs):,} documents, fingerprint {meta['fingerprint']} ({total_s:.1f}s)")
    return meta


def _move_tail(src: Path, dst: Path, at: int) -> None:
    """Move the bytes of `src` from offset `at` on into `dst` (in blocks) and truncate `src` there."""
    with open(src, "r+b") as f, open(dst, "wb") as g:
        f.seek(at)
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            g.write(block)
        f.truncate(at)

"""`python -m foundry.data prepare`: the nanoGPT split of Tiny Shakespeare, BPE round trips, training on a
prepared directory, documents and separators, determinism across worker counts, bounded memory, atomic
writes, and every kind of bad input."""
from __future__ import annotations

import gzip
import json
import os
import sys
import tracemalloc

import numpy as np
import pytest

from conftest import shared_file
from foundry.data import prepare as prep
from foundry.data.__main__ import main as data_main
from foundry.data.dataset import load_data
from foundry.data.tokenize import CharTokenizer, load_tokenizer


def _tiny_train(data_dir, out_dir, iters=3):
    from foundry.config import from_dict
    from foundry.train import train
    cfg = from_dict({"base_model": "v1",
                     "model_args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
                     "training": {"max_iters": iters, "warmup_iters": 0, "batch_size": 4, "eval_interval": iters,
                                  "eval_iters": 2, "log_interval": 1, "sample_tokens": 8, "device": "cpu"},
                     "data": {"path": str(data_dir)}, "out_dir": str(out_dir)})
    return train(cfg, quiet=True)


# ---- judged: Tiny Shakespeare -------------------------------------------------------------------------
def test_tinyshakespeare_char_split_matches_nanogpt(tmp_path):
    src = shared_file("tinyshakespeare/input.txt")
    assert data_main(["prepare", "--input", str(src), "--tokenizer", "char", "--out", str(tmp_path / "ts")]) == 0
    meta = json.loads((tmp_path / "ts" / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"], meta["vocab_size"]) == (1_003_854, 111_540, 65)
    assert meta["dtype"] == "uint16" and meta["train_bytes"] + meta["val_bytes"] == 1_115_394
    data = load_data(tmp_path / "ts")
    assert (len(data.train), len(data.val), data.vocab_size) == (1_003_854, 111_540, 65)
    # the same ids as the embedded data set (nanoGPT's sorted-character vocabulary)
    emb = load_data(None)
    assert np.array_equal(np.asarray(data.train), emb.train) and np.array_equal(np.asarray(data.val), emb.val)


def test_tinyshakespeare_bpe2048_round_trips_and_trains(tmp_path):
    src = shared_file("tinyshakespeare/input.txt")
    assert data_main(["prepare", "--input", str(src), "--tokenizer", "bpe:2048", "--out", str(tmp_path / "ts")]) == 0
    data = load_data(tmp_path / "ts")
    assert data.vocab_size == 2048
    ids = np.concatenate([data.train, data.val]).tolist()
    assert data.tokenizer.decode(ids) == src.read_text()
    meta = json.loads((tmp_path / "ts" / "meta.json").read_text())
    assert meta["train_bytes"] + meta["val_bytes"] == src.stat().st_size
    summary = _tiny_train(tmp_path / "ts", tmp_path / "run", iters=2)
    assert np.isfinite(summary["val_loss"])
    assert load_tokenizer(tmp_path / "run").to_json() == data.tokenizer.to_json()


# ---- training on a prepared directory (no shared data needed) --------------------------------------------
def _write(p, text):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


TEXT = "".join(f"Paragraph {i}: the {'quick ' * (i % 7)}fox.\nLine two of {i}.\n\n" for i in range(400))


def test_prepared_char_set_trains_end_to_end(tmp_path):
    f = _write(tmp_path / "in.txt", TEXT)
    prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    summary = _tiny_train(tmp_path / "ds", tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r.get("event") == "start")
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert start["data_fingerprint"] == meta["fingerprint"] and start["data"] == str(tmp_path / "ds")
    assert np.isfinite(summary["val_loss"]) and (tmp_path / "run" / "sample.txt").is_file()


def test_kept_data_is_loaded_once_and_again_when_the_directory_changes(tmp_path, monkeypatch):
    """After keep_loaded() (sweep workers) a repeat load of an unchanged prepared directory returns the data set
    built before; a re-prepared directory (its files changed) is read again; without it every call reads."""
    from foundry.data import dataset

    f = _write(tmp_path / "in.txt", TEXT)
    prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    assert load_data(tmp_path / "ds") is not load_data(tmp_path / "ds")
    monkeypatch.setattr(dataset, "_KEPT", None)
    dataset.keep_loaded()
    first = load_data(tmp_path / "ds")
    assert load_data(tmp_path / "ds") is first and load_data(None) is load_data(None)
    _write(tmp_path / "in.txt", TEXT + "\nmore text\n")
    prep.prepare([tmp_path / "in.txt"], "char", tmp_path / "ds", log=lambda *a: None, workers=1, overwrite=True)
    again = load_data(tmp_path / "ds")
    assert again is not first and len(again.train) + len(again.val) > len(first.train) + len(first.val)


def test_stream_decodes_to_the_input_and_documents_are_paragraphs(tmp_path):
    f = _write(tmp_path / "in.txt", TEXT)
    meta = prep.prepare([f], "bpe:300", tmp_path / "ds", log=lambda *a: None, workers=1, val_fraction=0.25)
    d = load_data(tmp_path / "ds")
    stream = np.concatenate([d.train, d.val])
    assert d.tokenizer.decode(stream.tolist()) == TEXT
    n_train = meta["train_tokens"]
    assert n_train == int(len(stream) * 0.75)
    starts = np.concatenate([d.doc_starts["train"], d.doc_starts["val"][1:] + n_train])
    docs = [d.tokenizer.decode(stream[a:b].tolist()) for a, b in zip(starts, list(starts[1:]) + [len(stream)])]
    paragraphs = [p + "\n\n" for p in TEXT.split("\n\n") if p]
    assert len(docs) == meta["documents"]["train"] + meta["documents"]["val"] - 1 == len(paragraphs)
    assert docs == paragraphs


def test_jsonl_directories_separators_and_gzip(tmp_path):
    recs = [{"text": f"record {i} " + "x" * i, "other": 1} for i in range(30)]
    _write(tmp_path / "in" / "b.jsonl", "".join(json.dumps(r) + "\n" for r in recs[10:]))
    with gzip.open(tmp_path / "in" / "a.jsonl.gz", "wt") as g:
        g.write("".join(json.dumps(r) + "\n" for r in recs[:10]) + "\n")  # blank lines are skipped
    _write(tmp_path / "in" / "sub" / "c.md", "markdown file\n")
    _write(tmp_path / "in" / "ignored.bin", "not read: wrong suffix")
    _write(tmp_path / "in" / ".hidden" / "d.txt", "not read: hidden")
    meta = prep.prepare([tmp_path / "in"], "bpe:300", tmp_path / "ds", log=lambda *a: None, workers=1)
    assert [p.split("/")[-1] for p in meta["inputs"]] == ["a.jsonl.gz", "b.jsonl", "c.md"]
    d = load_data(tmp_path / "ds")
    text = d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist())
    assert text == "<|eos|>".join([r["text"] for r in recs] + ["markdown file\n"])
    assert meta["documents"]["train"] + meta["documents"]["val"] - 1 == 31


def test_field_joins_and_char_has_no_separator(tmp_path):
    f = _write(tmp_path / "q.jsonl", '{"q": "a?", "a": "b."}\n{"q": "c?", "a": "d."}\n')
    prep.prepare([f], "char", tmp_path / "ds", field="q,a", val_fraction=0.3, log=lambda *a: None, workers=1)
    d = load_data(tmp_path / "ds")
    assert d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist()) == "a?\nb.c?\nd."


def test_output_does_not_depend_on_worker_count(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "CHUNK_CHARS", 2000)  # many chunks, so the pool really splits the work
    f = _write(tmp_path / "in.txt", TEXT)
    a = prep.prepare([f], "bpe:300", tmp_path / "one", log=lambda *a: None, workers=1)
    b = prep.prepare([f], "bpe:300", tmp_path / "two", log=lambda *a: None, workers=2)
    assert a["fingerprint"] == b["fingerprint"]
    for name in ("train.bin", "val.bin", "train_docs.npy", "val_docs.npy", "tokenizer.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


_PID_LOG = {}


def _encode_chunk_logging_pid(chunk):
    """Wraps the worker function (module level, so the pool can pickle it): notes which process ran it."""
    with open(_PID_LOG["path"], "a") as f:
        f.write(f"{os.getpid()}\n")
    return _ORIGINAL_ENCODE(chunk)


_ORIGINAL_ENCODE = prep._encode_chunk


@pytest.mark.skipif(sys.platform != "linux" or (os.cpu_count() or 1) < 2, reason="needs fork and two cores")
def test_two_worker_processes_share_the_encoding(tmp_path, monkeypatch):
    monkeypatch.setattr(prep, "CHUNK_CHARS", 500)
    monkeypatch.setattr(prep, "_encode_chunk", _encode_chunk_logging_pid)
    _PID_LOG["path"] = tmp_path / "pids.txt"
    f = _write(tmp_path / "in.txt", TEXT)
    prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=2)
    pids = (tmp_path / "pids.txt").read_text().split()
    assert len(pids) >= 20 and len(set(pids)) == 2 and str(os.getpid()) not in pids


def test_memory_is_bounded_on_a_large_input(tmp_path, monkeypatch):
    """Peak Python memory does not grow with the input: 4x the text, (almost) the same peak, well under the
    input's size (text is read, encoded and written in chunks)."""
    monkeypatch.setattr(prep, "READ_BLOCK", 1 << 17)
    monkeypatch.setattr(prep, "CHUNK_CHARS", 1 << 17)
    para = "".join(f"line {i} of a long corpus with some words\n" for i in range(20)) + "\n"
    peaks, sizes = [], []
    for mb in (2, 8):
        f = tmp_path / f"big{mb}.txt"
        f.write_text(para * (mb * 1_000_000 // len(para)))
        tracemalloc.start()
        meta = prep.prepare([f], "char", tmp_path / f"ds{mb}", log=lambda *a: None, workers=1)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        sizes.append(f.stat().st_size)
        assert meta["train_tokens"] + meta["val_tokens"] == sizes[-1]
    assert peaks[1] < 1.25 * peaks[0] + 500_000, f"peak grew from {peaks[0] / 1e6:.1f} to {peaks[1] / 1e6:.1f} MB"
    assert peaks[1] < sizes[1] / 2, f"peak {peaks[1] / 1e6:.1f} MB for a {sizes[1] / 1e6:.1f} MB input"


def test_large_vocabulary_uses_uint32(tmp_path):
    chars = [chr(c) for c in range(0x4E00, 0x9FFF)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    f = _write(tmp_path / "cjk.txt", "".join(chars))
    meta = prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    assert meta["vocab_size"] == len(chars) > 65536 and meta["dtype"] == "uint32"
    d = load_data(tmp_path / "ds")
    assert d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist()) == "".join(chars)


def test_existing_tokenizer_is_used_as_is(tmp_path):
    f = _write(tmp_path / "in.txt", "abcabc\n")
    CharTokenizer().fit("abcdef\n").save(tmp_path / "tok.json")
    meta = prep.prepare([f], str(tmp_path / "tok.json"), tmp_path / "ds", log=lambda *a: None, workers=1)
    assert meta["vocab_size"] == 7
    with pytest.raises(prep.DataError, match="alphabet lacks"):
        prep.prepare([_write(tmp_path / "z.txt", "xyz")], str(tmp_path / "tok.json"), tmp_path / "ds2",
                     log=lambda *a: None)


# ---- atomic writes ----------------------------------------------------------------------------------------
def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    f = _write(tmp_path / "in.txt", TEXT)

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(prep, "_move_tail", boom)
    with pytest.raises(OSError, match="simulated"):
        prep.prepare([f], "char", tmp_path / "out" / "ds", log=lambda *a: None, workers=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path):
    f = _write(tmp_path / "in.txt", TEXT)
    prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    with pytest.raises(prep.DataError, match="already exists"):
        prep.prepare([f], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    meta = prep.prepare([f], "bpe:300", tmp_path / "ds", log=lambda *a: None, workers=1, overwrite=True)
    assert meta["tokenizer_type"] == "bpe" and sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in.txt"]


# ---- bad input: a clear error before any encoding ------------------------------------------------------------
@pytest.fixture
def no_encoding(monkeypatch):
    def forbidden(*a, **k):
        raise AssertionError("encoding started before the input was checked")
    monkeypatch.setattr(prep, "encode_stream", forbidden)


def _err(capsys, argv) -> str:
    assert data_main(argv) == 2
    return capsys.readouterr().err


def test_empty_input(tmp_path, capsys, no_encoding):
    _write(tmp_path / "e.txt", "")
    assert "no text in the inputs" in _err(capsys, ["prepare", "--input", str(tmp_path / "e.txt"),
                                                    "--tokenizer", "char", "--out", str(tmp_path / "o")])
    (tmp_path / "d").mkdir()
    assert "holds no text or JSONL files" in _err(capsys, ["prepare", "--input", str(tmp_path / "d"),
                                                           "--tokenizer", "char", "--out", str(tmp_path / "o")])
    assert "no such file" in _err(capsys, ["prepare", "--input", str(tmp_path / "missing.txt"),
                                           "--tokenizer", "char", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_binary_file(tmp_path, capsys, no_encoding):
    (tmp_path / "b.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    err = _err(capsys, ["prepare", "--input", str(tmp_path / "b.txt"), "--tokenizer", "char",
                        "--out", str(tmp_path / "o")])
    assert "b.txt: looks binary (a NUL byte at offset 4)" in err


def test_invalid_utf8_policy(tmp_path, capsys, no_encoding):
    (tmp_path / "u.txt").write_bytes(b"good text\n" * 3 + b"bad \xff\xfe byte\n")
    err = _err(capsys, ["prepare", "--input", str(tmp_path / "u.txt"), "--tokenizer", "char",
                        "--out", str(tmp_path / "o")])
    assert "u.txt: invalid UTF-8 at byte 34" in err and "--errors replace" in err


def test_invalid_utf8_replaced_when_asked(tmp_path):
    # a genuine U+FFFD in the file is kept and not counted as a replacement
    (tmp_path / "u.txt").write_bytes(b"good text \xef\xbf\xbd\n" * 3 + b"bad \xff\xfe byte\n")
    meta = prep.prepare([tmp_path / "u.txt"], "char", tmp_path / "o", errors="replace", log=lambda *a: None,
                        workers=1)
    assert meta["replaced_sequences"] == 2 and meta["utf8_errors"] == "replace"
    d = load_data(tmp_path / "o")
    text = d.tokenizer.decode(np.concatenate([d.train, d.val]).tolist())
    assert text == "good text \ufffd\n" * 3 + "bad \ufffd\ufffd byte\n"
    (tmp_path / "r.jsonl").write_bytes(b'{"text": "a \xff b \xef\xbf\xbd"}\n')
    meta = prep.prepare([tmp_path / "r.jsonl"], "char", tmp_path / "o2", errors="replace", val_fraction=0.5,
                        log=lambda *a: None, workers=1)
    assert meta["replaced_sequences"] == 1


def test_bad_jsonl_line_names_file_and_line(tmp_path, capsys, no_encoding):
    _write(tmp_path / "x.jsonl", '{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n')
    err = _err(capsys, ["prepare", "--input", str(tmp_path / "x.jsonl"), "--tokenizer", "char",
                        "--out", str(tmp_path / "o")])
    assert "x.jsonl:3: not valid JSON" in err
    _write(tmp_path / "y.jsonl", '{"text": "ok"}\n[1, 2]\n')
    assert "y.jsonl:2: expected a JSON object" in _err(capsys, ["prepare", "--input", str(tmp_path / "y.jsonl"),
                                                                "--tokenizer", "char", "--out", str(tmp_path / "o")])


def test_missing_or_wrong_field(tmp_path, capsys, no_encoding):
    _write(tmp_path / "x.jsonl", '{"text": "ok"}\n{"body": "no text here"}\n')
    err = _err(capsys, ["prepare", "--input", str(tmp_path / "x.jsonl"), "--tokenizer", "char",
                        "--out", str(tmp_path / "o")])
    assert "x.jsonl:2: no field 'text'" in err and "['body']" in err and "--field" in err
    _write(tmp_path / "n.jsonl", '{"text": 5}\n')
    assert "n.jsonl:1: field 'text' is int" in _err(capsys, ["prepare", "--input", str(tmp_path / "n.jsonl"),
                                                             "--tokenizer", "char", "--out", str(tmp_path / "o")])


def test_vocabulary_too_small_and_bad_options(tmp_path, capsys, no_encoding):
    f = _write(tmp_path / "in.txt", TEXT)
    base = ["prepare", "--input", str(f), "--out", str(tmp_path / "o")]
    assert "at least bpe:265" in _err(capsys, base + ["--tokenizer", "bpe:100"])
    assert "--val-fraction 1.5" in _err(capsys, base + ["--tokenizer", "char", "--val-fraction", "1.5"])
    assert not (tmp_path / "o").exists()


def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit):
        data_main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("prepare", "fit-tokenizer", "pack", "filter", "chat", "synth"):
        assert cmd in out


def test_fit_tokenizer_command(tmp_path):
    f = _write(tmp_path / "in.txt", TEXT)
    assert data_main(["fit-tokenizer", "--input", str(f), "--tokenizer", "bpe:300",
                      "--out", str(tmp_path / "tok.json")]) == 0
    tok = load_tokenizer(tmp_path / "tok.json")
    assert tok.vocab_size == 300 and tok.decode(tok.encode(TEXT)) == TEXT


def test_umbrella_command_reaches_prepare(tmp_path):
    from foundry.cli.main import main as foundry_main
    f = _write(tmp_path / "in.txt", TEXT)
    assert foundry_main(["data", "prepare", "--input", str(f), "--tokenizer", "char", "--out",
                         str(tmp_path / "ds"), "--workers", "1"]) == 0
    assert (tmp_path / "ds" / "meta.json").is_file()

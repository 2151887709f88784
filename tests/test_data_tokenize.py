"""Tokenizers: char compatibility, byte-level BPE round trips and special tokens, the user's example, loading
foundry and pretrained Hugging Face tokenizer.json files, and clear errors."""
from __future__ import annotations

import json
import random
import warnings

import numpy as np
import pytest

from conftest import shared_file
from foundry.data.tokenize import (SPECIAL_TOKENS, BPETokenizer, CharTokenizer, HFTokenizer, load_tokenizer,
                                   parse_tokenizer_spec, tokenizer_from_spec)

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 20 + "\n" +
          "Pack my box with five dozen liquor jugs!\n" * 10 + "Grüße, naïve café — 東京 🙂\n" * 5)


def _random_text(rng: random.Random, n: int) -> str:
    pools = ["abc xyz\n\t", "éüß", "東京大阪", "🙂🚀", "\x00\x01\x7f", "<|eos|>", " ", "ĠĊ"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


@pytest.fixture(scope="module")
def bpe():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BPETokenizer(vocab_size=400).fit(CORPUS)


def test_char_ids_are_sorted_characters_and_round_trip(tmp_path):
    tok = CharTokenizer().fit("hello world")
    assert tok.chars == sorted(set("hello world")) and tok.vocab_size == 8
    assert tok.encode("lo w") == [tok.chars.index(c) for c in "lo w"]
    assert tok.encode_array("hello world").tolist() == tok.encode("hello world")
    tok.save(tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["type"] == "char"
    back = load_tokenizer(tmp_path / "t.json")
    assert isinstance(back, CharTokenizer) and back.chars == tok.chars
    with pytest.raises(ValueError, match="not in this tokenizer's alphabet"):
        tok.encode_array("hello!")


def test_user_example_runs_as_written():
    corpus = CORPUS
    with pytest.warns(UserWarning, match="supplied only"):
        tok = BPETokenizer(vocab_size=50257); tok.fit(corpus); ids = tok.encode("hello world")  # noqa: E702
    assert tok.decode(ids) == "hello world"
    assert tok.requested_vocab_size == 50257 and 256 + len(SPECIAL_TOKENS) < tok.vocab_size < 50257


def test_user_example_on_tiny_shakespeare():
    corpus = shared_file("tinyshakespeare/input.txt").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Tiny Shakespeare cannot fill 50257 merges either
        tok = BPETokenizer(vocab_size=50257); tok.fit(corpus); ids = tok.encode("hello world")  # noqa: E702
    assert tok.decode(ids) == "hello world" and len(ids) <= 4


def test_bpe_round_trips_any_text(bpe):
    rng = random.Random(0)
    for n in (0, 1, 7, 200, 3000):
        text = _random_text(rng, n)
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert max(ids, default=0) < bpe.vocab_size


def test_bpe_byte_lengths_count_utf8_bytes(bpe):
    lens = bpe.token_byte_lengths()
    assert len(lens) == bpe.vocab_size
    text = CORPUS + "\x00 ünïcödé 🙂"
    assert sum(lens[i] for i in bpe.encode(text)) == len(text.encode("utf-8"))
    for role in SPECIAL_TOKENS:
        assert lens[bpe.token_id(role)] == 0


def test_special_tokens_are_single_ids(bpe):
    ids = {role: bpe.token_id(role) for role in SPECIAL_TOKENS}
    assert sorted(ids.values()) == list(range(len(SPECIAL_TOKENS)))  # the first ids, in role order
    for role, text in SPECIAL_TOKENS.items():
        assert bpe.encode(text) == [ids[role]]
    assert bpe.encode("a<|im_start|>b")[1] == ids["im_start"]


def test_bpe_compresses_and_merges_what_is_frequent(bpe):
    text = "The quick brown fox jumps over the lazy dog."
    assert len(bpe.encode(text)) < len(text.encode()) / 3
    assert bpe.vocab_size <= 400


def test_bpe_save_load_is_identical(bpe, tmp_path):
    bpe.save(tmp_path / "tokenizer.json")
    data = json.loads((tmp_path / "tokenizer.json").read_text())
    assert data["type"] == "bpe" and data["special_tokens"] == SPECIAL_TOKENS
    back = load_tokenizer(tmp_path)  # a directory holding tokenizer.json
    assert isinstance(back, BPETokenizer) and back.vocab_size == bpe.vocab_size
    text = _random_text(random.Random(1), 500)
    assert back.encode(text) == bpe.encode(text)
    assert back.token_byte_lengths() == bpe.token_byte_lengths()


def test_vocab_too_small_for_special_tokens_is_refused():
    with pytest.raises(ValueError, match="at least 265"):
        BPETokenizer(vocab_size=100)
    with pytest.raises(ValueError, match="at least bpe:265"):
        parse_tokenizer_spec("bpe:200")
    with pytest.raises(ValueError, match="bpe:N"):
        parse_tokenizer_spec("bpe:lots")
    with pytest.raises(FileNotFoundError, match="not 'char', 'bpe:N'"):
        parse_tokenizer_spec("no/such/tokenizer.json")


def test_unfitted_and_empty_corpus_are_clear_errors():
    with pytest.raises(RuntimeError, match="fit"):
        BPETokenizer(vocab_size=300).encode("x")
    with pytest.raises(ValueError, match="empty"):
        BPETokenizer(vocab_size=300).fit([])
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer().fit("")


def test_pretrained_hf_tokenizer_json_from_a_checkpoint_dir(tmp_path):
    """A plain Hugging Face tokenizer.json (GPT-2 style, <|endoftext|>) with its tokenizer_config.json, as a
    zoo checkpoint directory holds them, loads with its special-token roles."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=350, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                         show_progress=False))
    hf.add_tokens(["<custom>"])  # a plain (not special) added token stands for its own text
    ckpt = tmp_path / "gpt2-like"
    ckpt.mkdir()
    hf.save(str(ckpt / "tokenizer.json"))
    (ckpt / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    tok = load_tokenizer(ckpt)
    assert isinstance(tok, HFTokenizer)
    assert tok.token_id("eos") == hf.token_to_id("<|endoftext|>") == tok.token_id("bos")
    assert tok.encode("hello there") == hf.encode("hello there").ids
    assert tok.decode(tok.encode("héllo\n")) == "héllo\n"
    assert tok.token_byte_lengths()[tok.token_id("eos")] == 0
    ids = tok.encode("a <custom> b")
    assert hf.token_to_id("<custom>") in ids and tok.decode(ids) == "a <custom> b"
    assert sum(tok.token_byte_lengths()[i] for i in ids) == len("a <custom> b")
    # saved by foundry it becomes the wrapper format and keeps the roles
    tok.save(tmp_path / "again.json")
    assert load_tokenizer(tmp_path / "again.json").token_id("eos") == tok.token_id("eos")


def test_unknown_tokenizer_file_is_refused(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a tokenizer this version of foundry can read"):
        load_tokenizer(tmp_path / "t.json")
    (tmp_path / "u.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path / "u.json")


def test_tokenizer_from_spec():
    assert isinstance(tokenizer_from_spec("char", ["ab", "c"]), CharTokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = tokenizer_from_spec("bpe:300", iter([CORPUS]))
    assert isinstance(tok, BPETokenizer) and tok.decode(tok.encode(CORPUS)) == CORPUS
    assert np.array_equal(tok.encode_array("abc"), np.array(tok.encode("abc")))

"""Filtering: exact dedupe of normalised text, length limits in characters and tokens, MinHash estimates
against exact Jaccard similarity, near-duplicate removal, and the JSONL command with its report."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from foundry.data.filter import MinHash, filter_texts, jaccard, normalise, shingles
from foundry.data.tokenize import CharTokenizer

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _sentence(rng, n=40):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n))


def test_normalisation():
    assert normalise("  Hello\tWORLD \n\n ﬁne ") == "hello world fine"  # NFKC folds the ligature


def test_exact_duplicates_after_normalisation_are_removed_with_their_original():
    texts = ["Hello world", "hello   WORLD", "something else", "Hello world\n"]
    rep = filter_texts(texts)
    assert rep.kept == [0, 2]
    assert [(r["index"], r["reason"], r["duplicate_of"]) for r in rep.removed] == \
        [(1, "exact_duplicate", 0), (3, "exact_duplicate", 0)]
    assert rep.summary == {"input": 4, "kept": 2, "removed": 2, "removed_by_reason": {"exact_duplicate": 2}}


def test_length_filters_in_characters_and_tokens():
    texts = ["ab", "abcdef", "a" * 50, "abcd"]
    rep = filter_texts(texts, min_chars=3, max_chars=10)
    assert rep.kept == [1, 3]
    assert {r["index"]: r["reason"] for r in rep.removed} == {0: "too_short", 2: "too_long"}
    assert "2 characters < min_chars 3" in rep.removed[0]["detail"]
    tok = CharTokenizer().fit("abcdef")
    rep = filter_texts(texts, min_tokens=4, max_tokens=6, tokenizer=tok)
    assert rep.kept == [1, 3] and "tokens" in rep.removed[0]["detail"]
    with pytest.raises(ValueError, match="need a tokenizer"):
        filter_texts(texts, min_tokens=3)


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    mh = MinHash(num_perm=128)
    errors = []
    for _ in range(150):
        a = _sentence(rng).split()
        b = list(a)
        for _ in range(rng.randint(0, len(b) // 2)):
            b[rng.randrange(len(b))] = "changed"
        sa, sb = shingles(" ".join(a)), shingles(" ".join(b))
        errors.append(MinHash.similarity(mh.signature(sa), mh.signature(sb)) - jaccard(sa, sb))
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.02          # unbiased
    assert np.abs(errors).mean() < 0.05       # ~ sqrt(J(1-J)/128)
    assert np.abs(errors).max() < 0.2


def test_near_duplicates_are_removed_and_distinct_texts_kept():
    rng = random.Random(1)
    base = [_sentence(rng, 60) for _ in range(50)]
    near = []
    for t in base[:10]:
        w = t.split()
        w[rng.randrange(len(w))] = "edited"  # one word changed: Jaccard of 5-grams ~ 0.85
        near.append(" ".join(w))
    rep = filter_texts(base + near, near_dup=0.7)
    assert rep.kept == list(range(50))
    removed = {r["index"]: r for r in rep.removed}
    assert sorted(removed) == list(range(50, 60))
    assert all(removed[50 + i]["duplicate_of"] == i and removed[50 + i]["reason"] == "near_duplicate"
               for i in range(10))


def test_filter_command_writes_kept_lines_unchanged_and_a_report(tmp_path):
    from foundry.data.__main__ import main
    recs = [{"text": "Same text", "id": 1}, {"text": "same   text", "id": 2}, {"text": "x", "id": 3},
            {"text": "Other text here", "id": 4}]
    lines = [json.dumps(r) for r in recs]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["filter", "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl"),
                 "--min-chars", "2", "--near-dup", "0.9"]) == 0
    assert (tmp_path / "out.jsonl").read_text().splitlines() == [lines[0], lines[3]]
    rep = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert rep["summary"]["removed_by_reason"] == {"exact_duplicate": 1, "too_short": 1}
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"txt": "b"}\n')
    assert main(["filter", "--input", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "o.jsonl")]) == 2

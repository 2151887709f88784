"""Packing: first-fit decreasing against the textbook version, row layout, and packed rows computing exactly
what each document computes alone through GPT (document masks + position resets), for v1 and v2 models."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import shared_file
from foundry.config import from_dict
from foundry.data.pack import (IGNORE, attention_mask, first_fit_decreasing, first_fit_decreasing_naive, pack)
from foundry.model import GPT


@pytest.mark.parametrize("seed", range(5))
def test_ffd_equals_the_textbook_version(seed):
    rng = random.Random(seed)
    cap = rng.choice([8, 64, 512])
    lengths = [rng.randint(1, cap) for _ in range(rng.randint(1, 600))]
    fast = first_fit_decreasing(lengths, cap)
    assert fast == first_fit_decreasing_naive(lengths, cap)
    placed = sorted(i for b in fast for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in fast)
    # FFD's bound (Dosa 2007): at most 11/9 OPT + 6/9 bins, and OPT >= total / capacity
    assert len(fast) <= 11 / 9 * np.ceil(sum(lengths) / cap) + 6 / 9 + 1e-9


def test_ffd_rejects_items_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        first_fit_decreasing([5], 4)


def test_row_layout_positions_targets_and_loss_masks():
    docs = [[1, 2, 3], ([4, 5, 6, 7], [False, False, True, True]), [8, 9]]
    p = pack(docs, 6, pad_id=0)
    assert p.tokens.shape[1] == 6 and p.n_tokens == 9 and p.efficiency == 9 / p.tokens.size
    for r in range(p.tokens.shape[0]):
        for d in set(p.doc_ids[r][p.doc_ids[r] >= 0].tolist()):
            at = np.flatnonzero(p.doc_ids[r] == d)
            assert p.positions[r, at].tolist() == list(range(len(at)))  # reset at each document
            assert p.targets[r, at[-1]] == IGNORE                        # nothing predicted across documents
    flat = {tuple(p.tokens[r, p.doc_ids[r] == d]): p.targets[r, p.doc_ids[r] == d].tolist()
            for r in range(p.tokens.shape[0]) for d in set(p.doc_ids[r].tolist()) - {-1}}
    assert flat[(1, 2, 3)] == [2, 3, IGNORE]
    assert flat[(4, 5, 6, 7)] == [IGNORE, 6, 7, IGNORE]                  # the loss mask: only 6 and 7 are targets
    assert flat[(8, 9)] == [9, IGNORE]
    assert (p.targets[p.doc_ids < 0] == IGNORE).all()


def test_long_examples_split_or_drop():
    p = pack([list(range(1, 11)), [1, 2]], 4, long="split")
    assert p.split == 1 and p.n_tokens == 12 and p.n_examples == 4
    q = pack([list(range(1, 11)), [1, 2]], 4, long="drop")
    assert q.dropped == 1 and q.n_tokens == 2
    with pytest.raises(ValueError, match="no examples"):
        pack([list(range(10))], 4, long="drop")


def test_attention_mask_is_causal_within_documents():
    doc = torch.tensor([[0, 0, 1, 1, 1, -1]])
    m = attention_mask(doc)[0, 0]
    want = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0],
                         [0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, want)


@pytest.mark.parametrize("base", ["v1", "v2"])
def test_packed_rows_give_the_same_logits_as_each_document_alone(base):
    torch.manual_seed(0)
    cfg = from_dict({"base_model": base, "model_args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32,
                                                        "vocab_size": 50, "dropout": 0.0}})
    model = GPT(cfg.model_args).eval()
    rng = random.Random(0)
    docs = [[rng.randrange(1, 50) for _ in range(rng.randint(1, 20))] for _ in range(12)]
    p = pack(docs, 32)
    assert p.tokens.shape[0] < len(docs)  # several documents really share rows
    x, y, pos, mask = p.batch()
    with torch.no_grad():
        packed = model(x, positions=pos, mask=mask)
        for r in range(x.shape[0]):
            for d in set(p.doc_ids[r].tolist()) - {-1}:
                at = torch.from_numpy(np.flatnonzero(p.doc_ids[r] == d))
                alone = model(torch.tensor([docs[d]]))[0]
                torch.testing.assert_close(packed[r, at], alone, atol=1e-5, rtol=1e-5)
        # and the loss over packed rows equals the token-weighted loss of the documents run alone
        loss, _ = model(x, y, positions=pos, mask=mask)
        nll, n = 0.0, 0
        for doc in docs:
            if len(doc) > 1:
                logits = model(torch.tensor([doc]))[0, :-1]
                nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(doc[1:]), reduction="sum"))
                n += len(doc) - 1
    assert float(loss) == pytest.approx(nll / n, rel=1e-5)


def test_pack_command_reports_efficiency_and_saves(tmp_path, capsys):
    from foundry.data.__main__ import main
    rng = random.Random(0)
    recs = [{"q": "w " * rng.randint(1, 40), "a": "z" * rng.randint(1, 30)} for _ in range(200)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["pack", "--input", str(tmp_path / "d.jsonl"), "--field", "q,a", "--tokenizer", "char",
                 "--block-size", "128", "--out", str(tmp_path / "p.npz")]) == 0
    rep = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    z = np.load(tmp_path / "p.npz")
    assert z["tokens"].shape == (rep["rows"], 128) and rep["examples"] == 200
    assert rep["efficiency"] == pytest.approx(rep["tokens"] / (rep["rows"] * 128), abs=1e-4)
    assert json.loads(str(z["report"]))["efficiency"] == rep["efficiency"]
    assert main(["pack", "--input", str(tmp_path / "d.jsonl"), "--field", "q,a", "--tokenizer", "char",
                 "--block-size", "128", "--eos"]) == 2
    assert "no EOS token" in capsys.readouterr().err


def test_gsm8k_packing_efficiency_at_least_95_percent():
    """GSM8K train, question + answer + EOS, in tokens of a byte-level BPE (1024) fitted on the questions:
    first-fit decreasing into rows of 1024 fills at least 95% of the slots."""
    from foundry.data.tokenize import BPETokenizer
    recs = [json.loads(x) for x in shared_file("gsm8k/train.jsonl").read_text().splitlines()]
    texts = [r["question"] + "\n" + r["answer"] for r in recs]
    tok = BPETokenizer(vocab_size=1024).fit(texts[:2000])
    eos = tok.token_id("eos")
    p = pack([ids + [eos] for ids in tok.encode_batch(texts)], 1024)
    assert p.n_examples == len(texts) == 7473 and p.split == 0
    assert p.efficiency >= 0.95, p.report()

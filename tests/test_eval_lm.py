"""The model side of evaluation, checked against naive references: batched log-likelihoods equal one-at-a-time
full-sequence sums, windowed scoring equals a naive rolling computation, batched greedy generation with stop
strings equals GPT.generate; MMLU log-likelihoods of a tiny random HF Llama equal foundry's copy of it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foundry.config import ModelConfig
from foundry.data.tokenize import CharTokenizer
from foundry.eval.lm import LM, cut_at_stop
from foundry.model import GPT

ALPHABET = sorted(set("abcdefghijklmnopqrstuvwxyz ABCD.:?\n"))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)  # tiny models: one thread is faster than two fighting over a busy machine


def tiny(position="learned", block_size=48, seed=0):
    torch.manual_seed(seed)
    tok = CharTokenizer(ALPHABET)
    cfg = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=tok.vocab_size,
                      position=position)
    return GPT(cfg).eval(), tok


@torch.no_grad()
def naive_logprob(model, ids, n_cont):
    """Sum of log p over the last n_cont tokens, one unpadded forward over the whole sequence."""
    x = torch.tensor([ids])
    lp = F.log_softmax(model(x[:, :-1]).float(), -1)[0]
    tgt = x[0, 1:]
    return float(lp.gather(1, tgt[:, None])[-n_cont:].sum())


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_batched_loglikelihood_equals_naive(position):
    model, tok = tiny(position)
    reqs = [("abc def", " A"), ("abc def", " B"), ("a longer context here.", " ghij"), ("q", "uestion?"),
            ("abc def", " C"), ("xyz", " D\n")]
    lm = LM(model, tok, batch_size=4)
    got = lm.loglikelihood(reqs)
    for (c, k), r in zip(reqs, got):
        ids = tok.encode(c + k)
        assert r.n_tokens == len(k)
        assert r.logprob == pytest.approx(naive_logprob(model, ids, len(k)), abs=1e-4)
    one = LM(model, tok, batch_size=1).loglikelihood(reqs)
    assert [r.logprob for r in one] == pytest.approx([r.logprob for r in got], abs=1e-4)


def test_long_continuation_scored_in_windows():
    model, tok = tiny(block_size=16)
    ctx, cont = "the context", " and a continuation much longer than sixteen characters"
    r = LM(model, tok).loglikelihood([(ctx, cont)])[0]
    ids = tok.encode(ctx + cont)
    # naive rolling reference: each target t predicted from at most 16 tokens ending at t-1, chunks of 8 targets
    total, a = 0.0, len(tok.encode(ctx))
    while a < len(ids):
        b = min(len(ids), a + 8)
        window = ids[max(0, b - 1 - 16):b]
        total += naive_logprob(model, window, b - a)
        a = b
    assert r.n_tokens == len(cont) and r.logprob == pytest.approx(total, abs=1e-4)


def test_unencodable_text_is_none_not_altered():
    model, tok = tiny()
    lm = LM(model, tok)
    res = lm.loglikelihood([("abc", " A"), ("abc 42", " A"), ("abc", " Z")])
    assert res[0] is not None and res[1] is None and res[2] is None
    assert lm.generate_until(["abc", "x = 42"], ["\n"], 5) [1] is None


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_generate_until_equals_gpt_generate(position):
    model, tok = tiny(position)
    prompts = ["abc", "the quick brown", "q", "hello there friend"]
    lm = LM(model, tok, batch_size=3)
    got = lm.generate_until(prompts, [], 12)
    for p, g in zip(prompts, got):
        ref = model.generate([tok.encode(p)], 12, temperature=0)[0]
        assert g == tok.decode(ref)
    # stop strings cut the text before the first occurrence
    stop = [got[0][3:5]] if len(got[0]) >= 5 else ["zz"]
    cut = lm.generate_until(prompts[:1], stop, 12)[0]
    assert cut == cut_at_stop(got[0], stop) and stop[0] not in cut


def test_mmlu_loglikelihoods_match_hf_llama():
    pytest.importorskip("transformers")
    hf_utils = pytest.importorskip("hf_utils", reason="tests/hf_utils.py (the lead's HF bridge) is absent")
    from foundry.eval.mmlu import build_prompt, continuations

    hf, ours = hf_utils.tiny_llama_pair(seed=0, max_position_embeddings=256)
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:?()\n-'"))
    assert len(chars) <= hf.config.vocab_size
    tok = CharTokenizer(chars)
    items = [{"question": "What is two plus two?", "subject": "elementary_mathematics",
              "choices": ["3", "4", "5", "22"], "answer": 1},
             {"question": "Which gas do plants take in?", "subject": "biology",
              "choices": ["oxygen", "carbon dioxide", "helium", "argon"], "answer": 1}]
    reqs = [(build_prompt(it, [items[1 - i]]), c) for i, it in enumerate(items) for c in continuations(it, "letter")]
    reqs += [(build_prompt(it, []), c) for it in items for c in continuations(it, "choice_text")]
    got = LM(ours, tok, batch_size=8).loglikelihood(reqs)
    for (c, k), r in zip(reqs, got):
        ids = torch.tensor([tok.encode(c + k)])
        with torch.no_grad():
            lp = F.log_softmax(hf(ids[:, :-1]).logits.float(), -1)[0]
        ref = float(lp.gather(1, ids[0, 1:, None])[-len(k):].sum())
        assert r.logprob == pytest.approx(ref, abs=1e-3), (c[-30:], k)

"""Self-instruct: ROUGE-L, each filter on scripted generations, and the command end to end with a tiny
trained run."""
from __future__ import annotations

import json
import types

import pytest
import torch

from foundry.data.synthetic import read_seeds, rouge_l, self_instruct
from foundry.data.tokenize import CharTokenizer

SEEDS = [{"instruction": "Name a colour of the sky.", "output": "Blue."},
         {"instruction": "Say hello to the king.", "output": "Hail, my lord!"},
         {"instruction": "What is two plus two?", "output": "Four."}]


def test_rouge_l():
    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("a b c d", "x y") == 0.0
    # LCS("a b c d", "a c d e") = 3 -> P = R = 3/4
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)
    assert rouge_l("A  B", "a b") == 1.0 and rouge_l("", "a") == 0.0


class ScriptedModel(torch.nn.Module):
    """Stands in for GPT: returns scripted continuations, in order, one per prompt."""

    def __init__(self, tok, replies):
        super().__init__()
        self.cfg = types.SimpleNamespace(block_size=256)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.replies, self.prompts = tok, list(replies), []

    def generate(self, prompts, max_new_tokens, **kw):
        self.prompts += [self.tok.decode(p) for p in prompts]
        return [self.tok.encode(self.replies.pop(0)) for _ in prompts]


def test_each_filter_fires_with_its_reason():
    alphabet = "".join(json.dumps(SEEDS)) + "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#\n .,?!:'"
    tok = CharTokenizer().fit(alphabet)
    instructions = ["Name a colour of the sky.\n\n### junk",   # duplicate of a seed
                    "Name a colour of the sky please",          # too similar (ROUGE-L 0.83)
                    "",                                         # empty
                    "Write a short poem about rain.",           # kept
                    "ok"]                                       # too short
    responses = ["xxxx", "yyyy", "zzzz", "Rain falls softly.\n### Instruction:", "fine"]
    model = ScriptedModel(tok, instructions + responses)
    tasks, rep = self_instruct(model, tok, SEEDS, n=5, max_attempts=5, batch=5, min_chars=3)
    assert tasks == [{"instruction": "Write a short poem about rain.", "input": "", "output": "Rain falls softly."}]
    assert rep["removed_by_reason"] == {"duplicate": 1, "too_similar": 1, "empty": 1, "too_short": 1}
    assert rep["attempts"] == 5
    # prompts: in-context seed instructions, then the open slot; response prompts carry the new instruction
    assert model.prompts[0].endswith("### Instruction:\n") and "### Response:" not in model.prompts[0]
    assert model.prompts[8].endswith("### Instruction:\nWrite a short poem about rain.\n\n### Response:\n")


def test_seeds_are_checked(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2: .*'instruction' and 'output'"):
        read_seeds(tmp_path / "s.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(ValueError, match="no seed tasks"):
        read_seeds(tmp_path / "e.jsonl")


def test_synth_command_end_to_end_with_a_tiny_trained_run(tmp_path):
    from foundry.config import from_dict
    from foundry.data.__main__ import main
    from foundry.data.prepare import prepare
    from foundry.train import train

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    corpus = "".join(f"### Instruction:\n{s['instruction']}\n\n### Response:\n{s['output']}\n\n" for s in SEEDS) * 40
    (tmp_path / "corpus.txt").write_text(corpus + "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n")
    prepare([tmp_path / "corpus.txt"], "char", tmp_path / "ds", log=lambda *a: None, workers=1)
    cfg = from_dict({"model_args": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 64},
                     "training": {"max_iters": 5, "warmup_iters": 1, "batch_size": 4, "eval_interval": 5, "eval_iters": 1,
                                  "log_interval": 5, "sample_tokens": 0, "device": "cpu"},
                     "data": {"path": str(tmp_path / "ds")}, "out_dir": str(tmp_path / "run")})
    train(cfg, quiet=True)
    out = tmp_path / "synth.jsonl"
    assert main(["synth", "--model", str(tmp_path / "run"), "--seeds", str(seeds), "--out", str(out),
                 "--n", "3", "--max-new-tokens", "16", "--min-chars", "1", "--max-similarity", "1.0"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    rep = json.loads((tmp_path / "synth.jsonl.report.json").read_text())
    assert len(rows) == rep["kept"] and rep["attempts"] <= 15
    assert all(set(r) == {"instruction", "input", "output"} and r["instruction"] and r["output"] for r in rows)
    seen = {s["instruction"].lower() for s in SEEDS}
    assert all(" ".join(r["instruction"].lower().split()) not in seen for r in rows)
    # a seed with characters the model's alphabet lacks fails before any generation
    (tmp_path / "bad.jsonl").write_text(json.dumps({"instruction": "日本", "output": "x"}) + "\n")
    assert main(["synth", "--model", str(tmp_path / "run"), "--seeds", str(tmp_path / "bad.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")]) == 2
    assert not (tmp_path / "o.jsonl").exists()

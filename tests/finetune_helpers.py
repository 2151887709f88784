"""Shared by the finetuning tests: a tiny base run directory with a BPE tokenizer that has the chat markers, and
small SFT / preference files."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from foundry.config import ExperimentConfig
from foundry.data import embedded

BASE = {"model_args.n_layer": 2, "model_args.n_head": 2, "model_args.n_embd": 32, "model_args.block_size": 64,
        "training.batch_size": 4, "training.max_iters": 6, "training.eval_interval": 3, "training.eval_iters": 2,
        "training.log_interval": 3, "training.warmup_iters": 1, "training.learning_rate": 3e-3,
        "training.sample_tokens": 0, "training.num_threads": 1, "training.device": "cpu",
        "training.dtype": "float32"}


def make_base_run(out: Path, seed: int = 0) -> Path:
    """A run directory as foundry.train leaves it (config.yaml, tokenizer.json, ckpt_last/) holding a small GPT on
    a 320-token byte-level BPE vocabulary (with <|im_start|>/<|im_end|> and the Llama 3 markers)."""
    from foundry.checkpoint import save_checkpoint
    from foundry.data.tokenize import BPETokenizer
    from foundry.model import GPT

    tok = BPETokenizer(vocab_size=320).fit([embedded.load_text()[:20_000]])
    cfg = ExperimentConfig().replace({**BASE, "model_args.vocab_size": tok.vocab_size, "out_dir": str(out)})
    torch.manual_seed(seed)
    model = GPT(cfg.model_args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    tok.save(out / "tokenizer.json")
    save_checkpoint(out / "ckpt_last", model, {"iter": 0}, cfg.to_yaml())
    return out


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sft_records(n: int = 24) -> list[dict]:
    """Three record shapes, short and learnable: answer = the prompt's word repeated."""
    words = ["apple", "river", "stone", "cloud", "green", "seven"]
    out = []
    for i in range(n):
        w = words[i % len(words)]
        if i % 3 == 0:
            out.append({"messages": [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": f"{w} {w}"}]})
        elif i % 3 == 1:
            out.append({"prompt": f"say {w}", "response": f"{w} {w}"})
        else:
            out.append({"instruction": f"say {w}", "output": f"{w} {w}"})
    return out


def pair_records(n: int = 24) -> list[dict]:
    words = ["apple", "river", "stone", "cloud", "green", "seven"]
    return [{"prompt": f"say {words[i % 6]}", "chosen": f"{words[i % 6]} {words[i % 6]}", "rejected": "no"}
            for i in range(n)]


def finetune_config(base: Path, data: Path, out: Path, **over) -> ExperimentConfig:
    return ExperimentConfig().replace({**BASE, "init_from": str(base), "data.path": str(data), "data.val_examples": 4,
                                       "out_dir": str(out), **over})

"""Shared helpers for the eval tests: a tiny char-level model and a saved run directory."""
from __future__ import annotations


import torch
import yaml

from foundry.config import from_dict
from foundry.data.embedded import load_text
from foundry.data.tokenize import CharTokenizer
from foundry.model import GPT


def tiny_char_model(seed: int = 0, extra: str = "", block_size: int = 64):
    """A random 2-layer char model over the embedded data's alphabet (plus `extra` characters)."""
    tok = CharTokenizer().fit([load_text()[:200000], extra])
    cfg = from_dict({"model_args": dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                                        vocab_size=tok.vocab_size)})
    torch.manual_seed(seed)
    return GPT(cfg.model_args).eval(), tok


def save_run(path, model, tok):
    """A run directory as foundry.train leaves it: ckpt_last/ and tokenizer.json."""
    from foundry.checkpoint import save_checkpoint

    cfg = from_dict({"model_args": {k: getattr(model.cfg, k) for k in
                                    ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")}})
    path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path / "ckpt_last", model, {"iter": 0}, yaml.safe_dump(cfg.to_dict()))
    tok.save(path / "tokenizer.json")
    return path

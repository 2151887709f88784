"""Shared by the training tests: a small prepared character-level data set and a tiny experiment."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundry.config import ExperimentConfig
from foundry.data import embedded
from foundry.data.tokenize import CharTokenizer


def write_char_dataset(out: Path, chars: int = 60_000, val_fraction: float = 0.1) -> Path:
    """A prepared directory in the documented format (meta.json, tokenizer.json, train.bin, val.bin) from the
    first `chars` characters of the embedded corpus, split as nanoGPT (first 90% train)."""
    text = embedded.load_text()[:chars]
    tok = CharTokenizer().fit(text)
    ids = np.array(tok.encode(text), dtype=np.uint16)
    n = int(len(ids) * (1 - val_fraction))
    out.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(out / "train.bin")
    ids[n:].tofile(out / "val.bin")
    tok.save(out / "tokenizer.json")
    (out / "meta.json").write_text(json.dumps({"tokenizer": "tokenizer.json", "vocab_size": tok.vocab_size,
                                               "dtype": "uint16", "train_tokens": n, "val_tokens": len(ids) - n,
                                               "fingerprint": f"test-{chars}"}))
    return out


TINY = {"model_args.n_layer": 2, "model_args.n_head": 2, "model_args.n_embd": 32, "model_args.block_size": 32,
        "training.batch_size": 4, "training.max_iters": 20, "training.eval_interval": 10, "training.eval_iters": 2,
        "training.log_interval": 5, "training.warmup_iters": 5, "training.learning_rate": 3e-3,
        "training.sample_tokens": 8, "training.num_threads": 1, "training.device": "cpu"}


def tiny_config(data_dir: Path, out_dir: Path, **overrides) -> ExperimentConfig:
    return ExperimentConfig().replace({**TINY, "data.path": str(data_dir), "out_dir": str(out_dir), **overrides})


def tiny_overrides(data_dir: Path, out_dir: Path, **overrides) -> list[str]:
    """The same experiment as --set arguments for a subprocess."""
    items = {**TINY, "data.path": str(data_dir), "out_dir": str(out_dir), **overrides}
    return [f"--set={k}={v}" for k, v in items.items()]

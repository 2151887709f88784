"""The model zoo: pretrained Hugging Face checkpoints (Llama 3, Mistral, Qwen2, GPT-2, SmolLM2) in and out of
foundry, from local files only.

    from foundry.zoo import load_pretrained, save_hf
    p = load_pretrained("llama3-1b", device="cuda")        # Pretrained: model, config, tokenizer, chat_template,
    save_hf(p, "out/llama3-1b")                             #   stop_ids, source, hf_config, architecture, dtype

Layout: architectures.py (per architecture one config translation and one key map; the only place with
Hugging Face names), catalog.py (named configs, where checkpoints are looked for), convert.py (the key maps
applied to tensors), load.py, export.py, init.py (experiments that start from a checkpoint: `init_from`),
__main__.py (the CLI). Importing this package is torch-free; the loaders import torch when first used.
"""
from __future__ import annotations

from foundry.zoo.architectures import ARCHITECTURES, ZooError
from foundry.zoo.catalog import NAMED, find

__all__ = ["load_pretrained", "save_hf", "Pretrained", "count_parameters", "named_config", "find", "NAMED",
           "ARCHITECTURES", "ZooError", "build_from_checkpoint", "check_data_tokenizer"]

_LAZY = {"load_pretrained": "load", "Pretrained": "load", "count_parameters": "load", "named_config": "load",
         "save_hf": "export", "build_from_checkpoint": "init", "check_data_tokenizer": "init"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"foundry.zoo.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'foundry.zoo' has no attribute {name!r}")

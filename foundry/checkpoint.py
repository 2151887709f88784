"""Checkpoints: safetensors weights plus a torch file of optimiser, RNG and data-position state.

A checkpoint is a directory written under a temporary name and renamed into place, so a crash or a kill
never leaves a half-written one:  ckpt_last/ {model.safetensors, state.pt, config.yaml}.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with tied weights stored once (safetensors refuses shared storage)."""
    state, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype)
        if key in seen and t.data_ptr() != 0:
            continue
        seen[key] = name
        state[name] = t.detach().contiguous().cpu()
    return state


def aliased_names(model: nn.Module) -> set[str]:
    """Names under which an already-listed parameter appears again (tied weights: lm_head.weight)."""
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, state: dict, config_yaml: str,
                    weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint directory atomically. `weights` (a full state dict, e.g. gathered from FSDP shards)
    replaces model.state_dict(); tied weights are stored once either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
    try:
        if weights is None:
            tensors = model_state(model)
        else:
            drop = aliased_names(model)
            tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items() if k not in drop}
        save_file(tensors, str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "config.yaml").write_text(config_yaml)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = path.with_name(path.name + ".old")
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def find_checkpoint(path: str | os.PathLike) -> Path | None:
    """The checkpoint directory at `path` (or the `.old` copy a crash mid-rename left behind)."""
    path = Path(path)
    for p in (path, path.with_name(path.name + ".old")):
        if (p / "model.safetensors").is_file() and (p / "state.pt").is_file():
            return p
    return None


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load model.safetensors from a checkpoint directory (tied weights restored by the tie itself)."""
    state = load_file(str(Path(path) / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for n in missing if n == "lm_head.weight" and getattr(model, "cfg", None) is not None
            and model.cfg.tie_embeddings}
    missing = [m for m in missing if m not in tied]
    if strict and (missing or unexpected):
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


def load_state(path: str | os.PathLike) -> dict:
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)


class LoadedRun:
    """A trained model with its tokenizer and config, as `load_run` returns it."""

    def __init__(self, model, tokenizer, config, path: Path):
        self.model, self.tokenizer, self.config, self.path = model, tokenizer, config, path


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu", which: str = "best") -> LoadedRun:
    """Load a run directory (its ckpt_best, else ckpt_last) or a checkpoint directory, ready for eval.

    The tokenizer is the run's tokenizer.json (written at the start of every run)."""
    import yaml

    from foundry.config import from_dict
    from foundry.data.tokenize import load_tokenizer
    from foundry.model import GPT

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run or checkpoint directory")
    ckpt = None
    for cand in ([path / f"ckpt_{which}", path / "ckpt_last", path / "ckpt_best", path]):
        ckpt = find_checkpoint(cand)
        if ckpt is not None:
            break
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no checkpoint (model.safetensors + state.pt) in it or in its "
                                f"ckpt_best/ or ckpt_last/")
    cfg = from_dict(yaml.safe_load((ckpt / "config.yaml").read_text()))
    model = GPT(cfg.model_args)
    load_weights(model, ckpt)
    model.to(device).eval()
    tok_path = next((p for p in (ckpt / "tokenizer.json", ckpt.parent / "tokenizer.json") if p.is_file()), None)
    if tok_path is None:
        raise FileNotFoundError(f"{ckpt}: no tokenizer.json beside the checkpoint or in its run directory")
    return LoadedRun(model, load_tokenizer(tok_path), cfg, ckpt)

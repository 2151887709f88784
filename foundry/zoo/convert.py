"""Executes an architecture's key map (foundry/zoo/architectures.py) on tensors, in both directions.

    plan = import_plan(arch, model_cfg, our_names, checkpoint_names)   # [(ours, rule, [their names])]
    ours = combine(rule, [tensors])                                    # copy / cat / transpose
    hf_state = export_state(arch, model_cfg, state_dict)               # {their name: tensor}

Both directions are exact: cat and split, transpose and transpose, move the same numbers.
"""
from __future__ import annotations

import re

import torch

from foundry.config import ModelConfig
from foundry.zoo.architectures import Architecture, Rule, ZooError


def _theirs(rule: Rule, layer: str) -> list[str]:
    return [t.replace("{i}", layer) for t in rule.theirs]


def canonical_names(arch: Architecture, names) -> dict[str, str]:
    """{name as the key map spells it: name in the checkpoint}; adds the prefix some checkpoints leave out
    (OpenAI's GPT-2 files name `h.0.attn.c_attn.weight`, transformers `transformer.h.0...`)."""
    out = {}
    for n in names:
        c = n
        if arch.optional_prefix and not n.startswith(arch.optional_prefix) and n != "lm_head.weight":
            c = arch.optional_prefix + n
        out[c] = n
    return out


def import_plan(arch: Architecture, cfg: ModelConfig, ours: list[str], checkpoint: dict[str, str]):
    """For each foundry tensor name, its rule and the checkpoint names it is built from. Fails naming the
    tensors the checkpoint lacks, or holds without a place in the model, before anything is read."""
    plan, used, missing = [], set(), []
    for name in ours:
        hit = arch.rule_for(name)
        if hit is None:
            raise ZooError(f"{arch.name}: foundry tensor {name!r} has no {arch.family} equivalent")
        rule, layer = hit
        theirs = _theirs(rule, layer)
        absent = [t for t in theirs if t not in checkpoint]
        if absent:
            missing += absent
            continue
        used.update(theirs)
        plan.append((name, rule, [checkpoint[t] for t in theirs]))
    ignored = [re.compile(p) for p in arch.ignored]
    tied_head = "lm_head.weight" if cfg.tie_embeddings else None  # some tied checkpoints store the head anyway
    extra = [n for n in checkpoint if n not in used and n != tied_head and not any(p.match(n) for p in ignored)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) the config implies, e.g. {missing[:4]}")
        if extra:
            parts.append(f"{len(extra)} tensor(s) with no place in a {arch.family} model of this config, "
                         f"e.g. {sorted(extra)[:4]}")
        raise ZooError(f"{arch.name} checkpoint does not match its config.json: " + "; ".join(parts))
    return plan


def combine(rule: Rule, parts: list[torch.Tensor]) -> torch.Tensor:
    if rule.op == "copy":
        return parts[0]
    if rule.op == "cat":
        return torch.cat(parts, dim=0)
    if rule.op == "transpose":
        return parts[0].t().contiguous()
    raise AssertionError(rule.op)


def export_state(arch: Architecture, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A foundry state dict (tied weights once) in the architecture's names and layouts."""
    out = {}
    for name, t in state.items():
        hit = arch.rule_for(name)
        if hit is None:
            raise ZooError(f"cannot export as {arch.name}: tensor {name!r} has no {arch.family} equivalent")
        rule, layer = hit
        theirs = _theirs(rule, layer)
        if rule.op == "copy":
            out[theirs[0]] = t
        elif rule.op == "transpose":
            out[theirs[0]] = t.t().contiguous()
        else:
            for n, piece in zip(theirs, t.split(rule.split(cfg), dim=0)):
                out[n] = piece.contiguous()
    return out

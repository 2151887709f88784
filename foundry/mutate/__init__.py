"""Mutations: pure `ExperimentConfig -> ExperimentConfig` functions, one small registered function per type.

    from foundry.mutate import apply_mutation, MUTATIONS
    child = apply_mutation(cfg, "attention", "gqa_2kv")      # validated; refuses with the reason
    path = write_mutant(child, "experiments")                # experiments/attention_gqa_2kv.yaml

A mutation type returns the config overrides for one variant string; `apply_mutation` applies them with
`ExperimentConfig.replace` (so the result is validated like any experiment) and stamps the lineage (parent,
mutation, config hashes). Adding a type is one decorated function in `foundry/mutate/types.py`:

    @mutation("lora_rank", group="finetune", variants=("<r>",), stem=lambda v: f"lora_r{v}")
    def lora_rank(cfg, v):
        "LoRA rank of the adapters."
        return {"lora.rank": positive_int(v)}

This package imports no torch: `--list` and mutating are instant. The baseline a mutation starts from is the
promoted champion (`experiments/champion.yaml`, written by `foundry.cli.sweep --promote`) or, before any
promotion, `experiments/baseline.yaml`.
"""
from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from foundry.config import ConfigError, ExperimentConfig, load_experiment, write_text_atomic

CHAMPION = "champion.yaml"
BASELINE = "baseline.yaml"


class MutationError(ValueError):
    """A mutation that cannot be made: unknown type or variant, or an invalid result (message says why)."""


class UnknownMutation(MutationError):
    """An unknown type or variant (a typo): the message lists the valid ones, closest first."""


class NoOpMutation(MutationError):
    """The mutation would not change what is trained."""


class BadVariant(ValueError):
    """Raised inside a mutation function when the variant string cannot be parsed; `apply_mutation` turns it
    into a MutationError listing the valid variants, closest first."""


@dataclass(frozen=True)
class MutationType:
    name: str
    fn: Callable[[ExperimentConfig, str], dict]
    group: str                                    # architecture | training | data | control
    variants: tuple[str, ...]                     # shown by --list; <n> marks a number
    help: str
    stem: Optional[Callable[[str], str]] = None   # file name (without .yaml) for a variant
    examples: Optional[Callable[[ExperimentConfig], list[str]]] = None  # concrete variants, for suggestions

    def file_stem(self, variant: str) -> str:
        if self.stem is not None:
            return self.stem(variant)
        return f"{self.name}_{safe_fragment(variant)}"

    def concrete(self, cfg: ExperimentConfig | None) -> list[str]:
        """Valid variant strings for `cfg` (patterns expanded where the config tells how)."""
        out = [v for v in self.variants if "<" not in v]
        if self.examples is not None and cfg is not None:
            out += [v for v in self.examples(cfg) if v not in out]
        return out


MUTATIONS: dict[str, MutationType] = {}


def mutation(name: str, *, group: str, variants: tuple[str, ...], stem=None, examples=None):
    """Register a mutation type: the decorated function maps (config, variant string) -> overrides dict."""
    def deco(fn):
        if name in MUTATIONS:
            raise ValueError(f"mutation type {name!r} is registered twice; pick another name")
        doc = (fn.__doc__ or "").strip().splitlines()
        MUTATIONS[name] = MutationType(name, fn, group, tuple(variants), doc[0] if doc else "", stem, examples)
        return fn
    return deco


def safe_fragment(variant: str) -> str:
    """A variant as a file-name fragment: 0.9,0.95 -> 0.9_0.95; spaces and slashes become _."""
    return re.sub(r"[^A-Za-z0-9.+\-]+", "_", variant).strip("_") or "x"


def closest_first(word: str, candidates) -> list[str]:
    """Every candidate, the most similar to `word` first (difflib ratio; prefix matches win ties)."""
    cands = list(dict.fromkeys(candidates))
    return sorted(cands, key=lambda c: (-difflib.SequenceMatcher(None, word, c).ratio(),
                                        not c.startswith(word[:1]), c))


def get_type(name: str) -> MutationType:
    _load_types()
    if name not in MUTATIONS:
        raise UnknownMutation(f"unknown mutation type {name!r}; valid types, closest first: "
                            f"{', '.join(closest_first(name, MUTATIONS))} (python -m foundry.mutate --list)")
    return MUTATIONS[name]


def _load_types() -> None:
    from foundry.mutate import types  # noqa: F401  (registers the built-in types)


# --------------------------------------------------------------------------------------------------
# Applying a mutation
# --------------------------------------------------------------------------------------------------
def apply_mutation(cfg: ExperimentConfig, type_name: str, variant: str, *, parent: str | None = None,
                   out_root: str = "runs") -> ExperimentConfig:
    """The mutated, validated config with its lineage and its own out_dir (runs/<stem>).

    Raises MutationError for an unknown type/variant or an invalid result (with the reason), NoOpMutation
    when nothing that is trained would change."""
    mt = get_type(type_name)
    variant = str(variant)
    try:
        overrides = mt.fn(cfg, variant)
    except BadVariant as e:
        valid = closest_first(variant, mt.concrete(cfg))
        pats = [v for v in mt.variants if "<" in v]
        more = f"; patterns: {', '.join(pats)}" if pats else ""
        raise UnknownMutation(f"{type_name} {variant!r}: {e}; valid variants, closest first: "
                            f"{', '.join(valid) or '(none for this config)'}{more}") from None
    except ConfigError as e:  # a mutation function may refuse with the reason itself
        raise MutationError(f"refused: {type_name} {variant}: {e}") from None
    try:
        child = cfg.replace(overrides)
    except ConfigError as e:
        raise MutationError(f"refused: {type_name} {variant} makes an invalid experiment: {e}") from None
    if child.hash() == cfg.hash():
        raise NoOpMutation(f"no-op: {type_name} {variant} changes nothing that is trained "
                           f"({', '.join(f'{k}={v}' for k, v in overrides.items())} already); nothing written")
    stem = mt.file_stem(variant)
    history = list(cfg.lineage.get("history", [])) + [f"{type_name} {variant}"]
    lineage = {"parent": parent, "parent_hash": cfg.hash(), "mutation": f"{type_name} {variant}",
               "type": type_name, "variant": variant, "hash": child.hash(), "history": history,
               "changes": {k: _plain(v) for k, v in overrides.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return child.replace({"lineage": lineage, "out_dir": f"{out_root}/{stem}"})


def _plain(v):
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)


def mutant_path(cfg: ExperimentConfig, experiments_dir: str | Path = "experiments") -> Path:
    mt = get_type(cfg.lineage["type"])
    return Path(experiments_dir) / f"{mt.file_stem(cfg.lineage['variant'])}.yaml"


def write_experiment(cfg: ExperimentConfig, path: str | Path, header: str = "") -> Path:
    """Write a resolved experiment atomically (it loads back to an equal config)."""
    path = Path(path)
    write_text_atomic(path, header + cfg.to_yaml())
    return path


def write_mutant(cfg: ExperimentConfig, experiments_dir: str | Path = "experiments") -> Path:
    lin = cfg.lineage
    header = (f"# Written by `python -m foundry.mutate {lin['type']} {lin['variant']}` from "
              f"{lin.get('parent') or 'a config'} (config {lin['parent_hash']} -> {lin['hash']}).\n"
              f"# Train it: python -m foundry.train {Path(experiments_dir) / (mutant_path(cfg, '.').name)}\n")
    return write_experiment(cfg, mutant_path(cfg, experiments_dir), header)


# --------------------------------------------------------------------------------------------------
# The baseline and the champion
# --------------------------------------------------------------------------------------------------
def baseline_path(experiments_dir: str | Path = "experiments") -> Path:
    """The promoted champion if there is one, else experiments/baseline.yaml."""
    d = Path(experiments_dir)
    for name in (CHAMPION, BASELINE):
        if (d / name).is_file():
            return d / name
    raise MutationError(f"{d}: neither {CHAMPION} (a promoted champion) nor {BASELINE} is there; "
                        f"pass --from FILE or create {d / BASELINE}")


def load_baseline(experiments_dir: str | Path = "experiments") -> tuple[ExperimentConfig, Path]:
    p = baseline_path(experiments_dir)
    return load_experiment(p), p


def promote(cfg: ExperimentConfig, experiments_dir: str | Path, decision: dict) -> Path:
    """Make `cfg` the champion every later mutation starts from; the decision (rule, statistics, sweep)
    is recorded in its lineage. The previous champion is kept as champion.<n>.yaml."""
    d = Path(experiments_dir)
    champ = d / CHAMPION
    if champ.is_file():
        n = 1
        while (d / f"champion.{n}.yaml").exists():
            n += 1
        write_text_atomic(d / f"champion.{n}.yaml", champ.read_text())
    lineage = dict(cfg.lineage)
    lineage["promoted"] = decision
    header = (f"# The promoted champion: {lineage.get('mutation', '?')} "
              f"(history: {' -> '.join(lineage.get('history', [])) or '-'}).\n"
              f"# Written by `python -m foundry.cli.sweep --promote`; mutations start from this file.\n")
    out = cfg.replace({"lineage": _yaml_safe(lineage), "out_dir": "runs/champion"})
    return write_experiment(out, champ, header)


def _yaml_safe(obj):
    return yaml.safe_load(yaml.safe_dump(obj, default_flow_style=False, allow_unicode=True))


def list_types(cfg: ExperimentConfig | None = None) -> str:
    """The --list text: every type with its variants, grouped."""
    _load_types()
    lines = []
    for group in ("architecture", "training", "data", "finetune", "control"):
        items = [m for m in MUTATIONS.values() if m.group == group]
        if not items:
            continue
        lines.append(f"{group}:")
        for m in items:
            lines.append(f"  {m.name:<15} {' | '.join(m.variants)}")
            lines.append(f"  {'':<15} {m.help}")
    lines.append(f"\n{len(MUTATIONS)} mutation types. <n> is a number; numeric types also take x<f> (scale) "
                 f"where shown. Example: python -m foundry.mutate attention gqa_2kv")
    return "\n".join(lines)

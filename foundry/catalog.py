"""The one catalog of component families, their variant names and the options each variant reads (torch-free).

There is no hand-written table: the catalog is read from the variant classes themselves, as source (the
`ast` module, so no torch is imported). A variant is a class decorated `@<FAMILY>.register("name")` in its
family's file (`foundry/modules/attention.py`, ...) or in a scaffolded file (`foundry/modules/variants/`); its
class attribute `options` names the config paths it reads besides the family-wide fields, e.g.
`options = ("model_args.sliding_window",)`, inherited from a base class in the same file when not set.
Plugins register at run time into `foundry.registry.REGISTRIES`; their names join the catalog from there
and their `options` attribute is read off the class.

The config (names and checks), the mutation types (their variants), the scaffolder (names taken) and the
contract tests all read this. `used(d)` reduces a config's mapping to what the chosen variants and run
settings actually read, in a canonical form (GQA with every KV head is MHA; a window that covers the whole
context is global attention); the config hash is taken over that, so a change no variant reads is a no-op.
"""
from __future__ import annotations

import ast
import copy
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MODULES = Path(__file__).parent / "modules"
# family -> (registry name in the source, the family's file)
FAMILIES: dict[str, tuple[str, str]] = {
    "attention": ("ATTENTION", "attention.py"),
    "position": ("POSITION", "position.py"),
    "norm": ("NORM", "norm.py"),
    "mlp": ("MLP", "mlp.py"),
    "loss": ("LOSS", "loss.py"),
}
# where each family's choice lives in an experiment
CHOICE = {"attention": "model_args.attention", "position": "model_args.position", "norm": "model_args.norm",
          "mlp": "model_args.mlp", "loss": "training.loss"}


@dataclass(frozen=True)
class Variant:
    family: str
    name: str
    cls: str                        # the class name
    source: str                     # the file it is defined in, relative to foundry/
    options: tuple[str, ...] = ()   # config paths it reads beyond the family-wide fields
    doc: str = ""                   # first line of its docstring


def _scan(path: Path, family: str) -> list[Variant]:
    """The registered classes of `family` in one source file, with their options (inherited within the file)."""
    registry = FAMILIES[family][0]
    tree = ast.parse(path.read_text(), filename=str(path))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}

    def own_options(node):
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "options"
                                                    for t in stmt.targets):
                try:
                    value = ast.literal_eval(stmt.value)
                except ValueError:
                    raise ValueError(f"{path}:{stmt.lineno}: {node.name}.options must be a literal tuple of "
                                     f"config paths, e.g. ('model_args.sliding_window',)") from None
                return tuple(value)
        return None

    def options(node, seen=()):
        own = own_options(node)
        if own is not None:
            return own
        for b in node.bases:                        # inherited from a base class defined in the same file
            if isinstance(b, ast.Name) and b.id in classes and b.id not in seen:
                return options(classes[b.id], seen + (node.name,))
        return ()

    try:
        source = str(path.relative_to(MODULES.parent))
    except ValueError:                                  # a scaffold outside this package (another checkout)
        source = str(path)
    out = []
    for node in classes.values():
        for dec in node.decorator_list:
            if (isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "register"
                    and isinstance(dec.func.value, ast.Name) and dec.func.value.id == registry
                    and dec.args and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str)):
                doc = (ast.get_docstring(node) or "").strip().split("\n")[0]
                out.append(Variant(family, dec.args[0].value, node.name, source, options(node), doc))
    return out


@lru_cache(maxsize=None)
def builtin(family: str) -> dict[str, Variant]:
    """The built-in variants of `family`, in the order their file defines them."""
    return {v.name: v for v in _scan(MODULES / FAMILIES[family][1], family)}


def scaffolded(family: str, root: Path | None = None) -> dict[str, Variant]:
    """Variants in foundry/modules/variants/ (`python -m foundry.mutate new`), read fresh (files come and go)."""
    folder = (Path(root) / "foundry" / "modules" if root is not None else MODULES) / "variants"
    found: dict[str, Variant] = {}
    for f in sorted(folder.glob("*.py")) if folder.is_dir() else ():
        for v in _scan(f, family):
            found[v.name] = v
    return found


def builtin_names() -> dict[str, tuple[str, ...]]:
    return {family: tuple(builtin(family)) for family in FAMILIES}


def names(family: str) -> list[str]:
    """Every name `family` answers to: built in, scaffolded, and registered at run time (plugins)."""
    from foundry.registry import REGISTRIES                 # torch-free; plugins fill it when loaded

    return sorted({*builtin(family), *scaffolded(family), *REGISTRIES[family].names()})


def variant_options(family: str, name: str) -> tuple[str, ...]:
    """The config paths variant `name` of `family` reads (beyond the family-wide fields)."""
    for table in (builtin(family), scaffolded(family)):
        if name in table:
            return table[name].options
    from foundry.registry import REGISTRIES

    if name in REGISTRIES[family]:
        return tuple(getattr(REGISTRIES[family].get(name), "options", ()))
    return ()


def option_paths() -> set[str]:
    """Every config path some variant reads: such a path counts only where a chosen variant reads it."""
    paths = {p for family in FAMILIES for v in builtin(family).values() for p in v.options}
    return paths | {p for family in FAMILIES for v in scaffolded(family).values() for p in v.options}


# Run settings read only under a switch: path -> (the switch's path, the values under which it is read)
SWITCHED = {
    "training.dpo": ("training.objective", ("dpo",)),
    "training.distill": ("training.objective", ("distill",)),
    "training.decay_frac": ("training.lr_schedule", ("wsd",)),
}


def _get(d: dict, path: str):
    for part in path.split("."):
        d = d[part]
    return d


def _drop(d: dict, path: str) -> None:
    *head, last = path.split(".")
    for part in head:
        d = d.get(part)
        if not isinstance(d, dict):
            return
    d.pop(last, None)


def used(d: dict, canonical: bool = True) -> dict:
    """A copy of an experiment mapping (ExperimentConfig.to_dict()) holding only what the model and run read:
    the option blocks of variants not chosen, switched settings that are off, and LoRA settings without LoRA
    are gone. `canonical` (for the hash): equivalent spellings of one model are also written one way."""
    d = copy.deepcopy(d)
    m = d["model_args"]
    if canonical:
        # n_kv_head resolved (None means n_head, or Llama grouping under gqa); 'gqa' is the same class as
        # 'mha' (CausalSelfAttention with fewer KV heads); a window covering the whole context with no
        # per-layer windows is plain causal attention (its pattern returns None)
        n_head = m["n_head"]
        if m.get("n_kv_head") is None:
            m["n_kv_head"] = (max(k for k in range(1, n_head // 2 + 1) if n_head % k == 0)
                              if m["attention"] == "gqa" and n_head >= 2 else n_head)
        sw = m.get("sliding_window") or {}
        if m["attention"] == "gqa" or (m["attention"] == "sliding_window" and not sw.get("layers")
                                       and sw.get("window", 0) >= m["block_size"]):
            m["attention"] = "mha"
    chosen = {(family, _get(d, path)) for family, path in CHOICE.items()}
    if m.get("mlp") == "moe":
        chosen.add(("mlp", (m.get("moe") or {}).get("expert")))
    read = {p for family, name in chosen for p in variant_options(family, name)}
    for path in option_paths() - read:
        _drop(d, path)
    for path, (switch, values) in SWITCHED.items():
        if _get(d, switch) not in values:
            _drop(d, path)
    if not (d.get("lora") or {}).get("rank"):
        d["lora"] = {"rank": 0}
    return d

"""Dependencies point one way (docs/architecture.md):

    0 core     foundry.registry, foundry.config, zoo.{catalog, architectures}   (no torch)
    1 modules  foundry.modules.*
    2 model    foundry.model;  data core: foundry.data.* except the model-using parts
    3 run      train, optim, checkpoint, store, distributed, data.{sampler,curriculum,synthetic}, eval.*, zoo.*, lora.*
    4 loop     mutate.*, sweep.*, cli.*, surgery.*, generate, chat

A module may import from its own layer and the layers below, never above. Every module must be placed
in a layer here: a new top-level module fails this test until it is given one (and documented).
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "foundry"

RULES = [  # (prefix, layer); the longest matching prefix wins
    ("foundry.registry", 0), ("foundry.config", 0), ("foundry.safeio", 0), ("foundry.interrupt", 0),
    ("foundry.catalog", 0),  # the variant catalog, read from the modules' source (ast), not imported
    ("foundry.modules", 1),
    ("foundry.model", 2), ("foundry.data", 2),
    ("foundry.data.curriculum", 3), ("foundry.data.sampler", 3), ("foundry.data.synthetic", 3), ("foundry.data.__main__", 4),
    ("foundry.train", 3), ("foundry.optim", 3), ("foundry.checkpoint", 3), ("foundry.distributed", 3),
    ("foundry.loggers", 3), ("foundry.trainer", 3), ("foundry.eval", 3), ("foundry.zoo", 3), ("foundry.lora", 3),
    ("foundry.mutate", 4), ("foundry.store", 3), ("foundry.sweep", 4), ("foundry.cli", 4),
    ("foundry.generate", 4), ("foundry.chat", 4), ("foundry.surgery", 4),
    # the zoo's torch-free catalog (named configs, checkpoint lookup, config translation): the experiment
    # loader reads init_from's architecture through it
    ("foundry.zoo.catalog", 0), ("foundry.zoo.architectures", 0),
    ("foundry", 0),  # the package root (__init__) is as light as the config
]
# mutate's config transforms must stay instant: torch-free like the config
TORCH_FREE = ["foundry.registry", "foundry.config", "foundry.mutate", "foundry.safeio", "foundry.interrupt",
              "foundry.zoo.catalog", "foundry.catalog"]


def layer_of(module: str) -> int | None:
    best = None
    for prefix, layer in RULES:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def foundry_imports(module: str, path: Path):
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("foundry"):
                    yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("foundry"):
                names = [target + "." + a.name for a in node.names] if target in ("foundry",) else [target]
                for t in names:
                    yield t, node.lineno


@pytest.mark.parametrize("module,path", list(modules()), ids=lambda x: str(x) if isinstance(x, str) else "")
def test_imports_point_down(module, path):
    mine = layer_of(module)
    assert mine is not None, f"{module} is in no layer: add it to RULES here and to docs/architecture.md"
    for target, line in foundry_imports(module, path):
        theirs = layer_of(target)
        assert theirs is not None and theirs <= mine, (
            f"{path.relative_to(PKG.parent)}:{line}: {module} (layer {mine}) imports {target} (layer {theirs}); "
            f"dependencies must point down (see docs/architecture.md)")


def test_model_imports_nothing_from_training_cli_zoo_or_sweep():
    forbidden = ("foundry.train", "foundry.cli", "foundry.zoo", "foundry.sweep", "foundry.mutate", "foundry.eval")
    for module, path in modules():
        if module == "foundry.model" or module.startswith("foundry.modules"):
            for target, line in foundry_imports(module, path):
                assert not target.startswith(forbidden), f"{module}:{line} imports {target}"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_modules(module):
    if module == "foundry.mutate" and not (PKG / "mutate" / "__init__.py").exists():
        pytest.skip("foundry.mutate not present")
    code = f"import sys, importlib; importlib.import_module({module!r}); assert 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, f"importing {module} pulled in torch:\n{r.stderr[-2000:]}"

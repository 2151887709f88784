"""`python -m foundry.mutate new <family> <name>` (foundry.mutate.scaffold.scaffold): the file it writes is a
registered, working variant that the contract and training tests accept at once; bad requests are refused."""
from __future__ import annotations

import ast
import dataclasses
import sys

import pytest
import torch

from foundry import config
from foundry.mutate.scaffold import FAMILIES, scaffold
from foundry.registry import REGISTRIES

import test_contracts as contracts  # noqa: E402  (tests/ is on sys.path under pytest)
import test_variants_train as train_test  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def fake_root(tmp_path):
    """A checkout-shaped folder, so scaffolding never writes into the shared package."""
    variants = tmp_path / "foundry" / "modules" / "variants"
    variants.mkdir(parents=True)
    (variants / "__init__.py").write_text("")
    return tmp_path


@pytest.fixture
def registered():
    """Load scaffolded files the way a plugin is loaded; unregister them afterwards."""
    loaded = []

    def load(family, name, path):
        config.load_plugins([str(path)])
        loaded.append((family, name, str(path)))
        assert name in REGISTRIES[family]

    yield load
    for family, name, path in loaded:
        REGISTRIES[family]._items.pop(name, None)
        config._LOADED_PLUGINS.discard(path)
        for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == path]:
            del sys.modules[mod]


@pytest.mark.parametrize("family", FAMILIES)
def test_scaffolded_variant_is_registered_and_passes_every_contract(family, fake_root, registered):
    name = f"probe_{family}"
    path = scaffold(family, name, root=fake_root)
    assert path == fake_root / "foundry" / "modules" / "variants" / f"{family}_{name}.py"
    tree = ast.parse(path.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    assert ast.get_docstring(cls) and ast.get_docstring(tree)
    registered(family, name, path)
    variant = REGISTRIES[family].get(name)
    assert variant.__doc__.strip()
    # the registry-generated cases pick the new name up without any edit to the tests
    if family != "loss":  # losses are parametrized straight from REGISTRIES["loss"].names()
        assert any(name in case_id for case_id, _ in contracts.cases())
    if family == "loss":
        contracts.test_loss_contract(name)
        losses = train_test.train_steps(contracts.TINY, loss_name=name)
    else:
        overrides = {family: name}
        if family == "attention":
            overrides["position"] = "rope"
        cfg = dataclasses.replace(contracts.TINY, **overrides)
        contracts.check_model(cfg)
        losses = train_test.train_steps(cfg)
    assert losses[-1] < 0.8 * losses[0]


def test_scaffolded_name_is_usable_from_a_config(fake_root, registered, tmp_path):
    path = scaffold("attention", "probe_cfg_attn", root=fake_root)
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"plugins: [{path}]\nmodel_args: {{attention: probe_cfg_attn, n_embd: 32, n_head: 4}}\n")
    cfg = config.load_experiment(exp)
    registered("attention", "probe_cfg_attn", path)
    assert cfg.model_args.attention == "probe_cfg_attn"


@pytest.mark.parametrize("family, name, error, words", [
    ("attn", "x", ValueError, ["unknown component family", "did you mean 'attention'"]),
    ("attention", "mha", ValueError, ["already exists", "mha"]),
    ("loss", "focal", ValueError, ["already exists"]),
    ("mlp", "My-MLP", ValueError, ["lower-case Python identifier"]),
    ("mlp", "class", ValueError, ["lower-case Python identifier"]),
    ("norm", "2norm", ValueError, ["lower-case Python identifier"]),
])
def test_bad_requests_are_refused_clearly(family, name, error, words, fake_root):
    with pytest.raises(error) as e:
        scaffold(family, name, root=fake_root)
    for w in words:
        assert w in str(e.value)
    assert list((fake_root / "foundry" / "modules" / "variants").iterdir()) == [
        fake_root / "foundry" / "modules" / "variants" / "__init__.py"]


def test_a_name_taken_by_an_earlier_scaffold_is_refused(fake_root):
    scaffold("mlp", "probe_twice", root=fake_root)
    with pytest.raises(ValueError, match="already exists"):
        scaffold("mlp", "probe_twice", root=fake_root)
    # the same name in another family is fine: names are per family
    scaffold("norm", "probe_twice", root=fake_root)


def test_root_that_is_not_a_checkout_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="variants package"):
        scaffold("mlp", "probe_nowhere", root=tmp_path)


def test_cli_refuses_an_unknown_family_without_writing(capsys):
    from foundry.mutate.__main__ import main
    assert main(["new", "attn", "probe_cli"]) == 2
    assert "did you mean 'attention'" in capsys.readouterr().err

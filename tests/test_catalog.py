"""foundry.catalog: the one list of variant names and the options each reads, read from the classes' source;
the config hash holds only what the chosen variants and run settings read, so no-op mutations are found by
the hash alone; a variant made with `mutate new` (or a plugin) is reachable by its family's mutation type."""
from __future__ import annotations

import sys

import pytest
import yaml

from foundry import catalog, config
from foundry.config import from_dict
from foundry.mutate import NoOpMutation, apply_mutation
from foundry.mutate.scaffold import scaffold
from foundry.registry import REGISTRIES


def test_the_catalog_is_what_the_modules_register():
    import foundry.modules  # noqa: F401  (fills the registries)

    for family in catalog.FAMILIES:
        table = catalog.builtin(family)
        registered = {n for n in REGISTRIES[family].names()
                      if REGISTRIES[family].get(n).__module__ == f"foundry.modules.{catalog.FAMILIES[family][1][:-3]}"}
        assert set(table) == registered, family
        for name, v in table.items():
            cls = REGISTRIES[family].get(name)
            assert cls.__name__ == v.cls and tuple(getattr(cls, "options", ())) == v.options, (family, name)
    assert config.BUILTIN_COMPONENTS == catalog.builtin_names()
    # every option a variant names is a real config path
    d = from_dict({}).to_dict()
    for path in catalog.option_paths():
        catalog._get(d, path)


BASE = {"model_args": {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 16}}


@pytest.mark.parametrize("base, change, same", [
    ({}, {"model_args.sliding_window.window": 7}, True),               # MHA reads no window
    ({"model_args.attention": "sliding_window"}, {"model_args.sliding_window.window": 7}, False),
    ({}, {"model_args.rope.theta": 500.0}, True),                      # learned positions: no RoPE
    ({"model_args.position": "rope"}, {"model_args.rope.theta": 500.0}, False),
    ({"model_args.position": "hybrid"}, {"model_args.hybrid.bias": "learned"}, False),
    ({"model_args.attention": "mla"}, {"model_args.rope.theta": 500.0}, False),   # MLA's decoupled RoPE key
    ({}, {"model_args.moe.n_experts": 8}, True),
    ({"model_args.mlp": "moe"}, {"model_args.moe.n_experts": 8}, False),
    ({}, {"training.focal_gamma": 1.0}, True),
    ({"training.loss": "focal"}, {"training.focal_gamma": 1.0}, False),
    ({}, {"training.dpo.beta": 0.5}, True),
    ({}, {"training.decay_frac": 0.5}, True),
    ({"training.lr_schedule": "wsd"}, {"training.decay_frac": 0.5}, False),
    ({}, {"lora.alpha": 4.0}, True),                                   # no LoRA without a rank
    ({"lora.rank": 4}, {"lora.alpha": 4.0}, False),
    # one model, two spellings
    ({}, {"model_args.n_kv_head": 4}, True),
    ({}, {"model_args.attention": "gqa", "model_args.n_kv_head": 4}, True),
    ({}, {"model_args.attention": "sliding_window", "model_args.sliding_window.window": 16}, True),
    ({}, {"model_args.attention": "sliding_window", "model_args.sliding_window.window": 15}, False),
    ({}, {"model_args.attention": "gqa"}, False),                      # Llama grouping: 2 KV heads
    # what is trained always counts
    ({}, {"model_args.n_layer": 3}, False),
    ({}, {"training.learning_rate": 3e-3}, False),
])
def test_hash_holds_only_what_is_read(base, change, same):
    cfg = from_dict(BASE).replace(base)
    other = cfg.replace(change)
    assert (other.hash() == cfg.hash()) == same, (base, change)
    # the resolved YAML of what is read loads back to the same config identity
    for c in (cfg, other):
        assert from_dict(yaml.safe_load(c.to_yaml(used_only=True))).hash() == c.hash()


@pytest.mark.parametrize("type_name, variant", [("attention", "gqa_4kv"), ("attention", "sliding_16"),
                                                ("attention", "sliding_64"), ("rope_theta", "500"),
                                                ("attention", "mha"), ("loss", "ce")])
def test_noop_mutations_are_found_by_the_hash_alone(type_name, variant):
    with pytest.raises(NoOpMutation, match="changes nothing that is trained"):
        apply_mutation(from_dict(BASE), type_name, variant)


@pytest.fixture
def plugin_variants(tmp_path):
    """Scaffold one variant per family into a checkout-shaped folder and load them as plugins."""
    variants = tmp_path / "foundry" / "modules" / "variants"
    variants.mkdir(parents=True)
    (variants / "__init__.py").write_text("")
    paths = {family: scaffold(family, f"cat_{family}", root=tmp_path) for family in catalog.FAMILIES}
    yield tmp_path, paths
    for family, path in paths.items():
        REGISTRIES[family]._items.pop(f"cat_{family}", None)
        config._LOADED_PLUGINS.discard(str(path))
        for mod in [m for m, v in sys.modules.items() if getattr(v, "__file__", None) == str(path)]:
            del sys.modules[mod]


MUTATION_OF = {"attention": "attention", "position": "position", "norm": "norm", "mlp": "activation",
               "loss": "loss"}


def test_a_new_variant_is_reachable_by_its_mutation_type(plugin_variants):
    root, paths = plugin_variants
    for family in catalog.FAMILIES:                                    # read from source, before any import
        assert f"cat_{family}" in catalog.scaffolded(family, root=root)
    config.load_plugins([str(p) for p in paths.values()])
    base = from_dict(BASE)
    for family, type_name in MUTATION_OF.items():
        name = f"cat_{family}"
        assert name in catalog.names(family)
        child = apply_mutation(base, type_name, name)
        assert catalog._get(child.to_dict(), catalog.CHOICE[family]) == name


def test_print_config_shows_only_what_is_read(tmp_path, capsys):
    from foundry.train import main

    exp = tmp_path / "exp.yaml"
    exp.write_text("model_args: {n_layer: 2, n_head: 4, n_embd: 32, block_size: 16, attention: gqa}\n"
                   "training: {warmup_iters: 10}\n")
    assert main([str(exp), "--print-config", "--set", "model_args.sliding_window.window=4"]) == 0
    out = capsys.readouterr().out
    first, _, body = out.partition("\n")
    cfg = config.load_experiment(exp)
    assert first == f"# config hash {cfg.hash()}"
    d = yaml.safe_load(body)
    assert d["model_args"]["attention"] == "gqa" and "sliding_window" not in d["model_args"]   # as written
    assert "dpo" not in d["training"] and from_dict(d).hash() == cfg.hash()

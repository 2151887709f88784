"""Plugins: a config's top-level `plugins:` list (module names or .py files) registers user variants before the
config is checked, so a mutation can bring new code without editing the package; a broken plugin fails at load
naming the plugin and its error."""
from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import foundry.modules  # noqa: F401  (built-ins registered before any test snapshots the registries)
from foundry import config
from foundry.config import ConfigError, load_experiment
from foundry.registry import REGISTRIES

REPO = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent('''
    """A plugin variant: attention restricted to the previous 3 tokens (a sliding window in 3 lines)."""
    from foundry.modules.attention import CausalSelfAttention
    from foundry.modules.registries import ATTENTION


    @ATTENTION.register("{name}")
    class LastThree(CausalSelfAttention):
        """Attend to the last three tokens only (a test plugin)."""

        def allowed(self, q_slots, k_slots):
            return (q_slots[:, None] - k_slots[None, :]) < 3
''')

TINY = ("model_args: {{attention: {name}, n_layer: 1, n_embd: 32, n_head: 2, block_size: 16}}\n"
        "training: {{max_iters: 4, batch_size: 2, eval_iters: 1, eval_interval: 4, log_interval: 1, "
        "sample_tokens: 0, device: cpu, warmup_iters: 0}}\n")


@pytest.fixture
def cleanup():
    """Unregister what a test's plugins registered, and forget that they were loaded."""
    before = {f: set(r.names()) for f, r in REGISTRIES.items()}
    loaded = set(config._LOADED_PLUGINS)
    mods = set(sys.modules)
    yield
    for f, r in REGISTRIES.items():
        for name in set(r.names()) - before[f]:
            r._items.pop(name)
    config._LOADED_PLUGINS.intersection_update(loaded)
    for m in set(sys.modules) - mods:
        if m.startswith("foundry_plugin_") or m.startswith("probe_plugin"):
            del sys.modules[m]


def write_plugin(tmp_path, name, body=None, file="myplugin.py"):
    p = tmp_path / file
    p.write_text(body if body is not None else PLUGIN.format(name=name))
    return p


def test_plugin_file_registers_an_attention_that_trains_via_config(tmp_path, cleanup):
    from foundry.train import main
    plugin = write_plugin(tmp_path, "probe_last3")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"plugins: [{plugin}]\nout_dir: {tmp_path / 'run'}\n" + TINY.format(name="probe_last3"))
    n = torch.get_num_threads()
    try:
        assert main([str(exp), "--quiet"]) == 0
    finally:
        torch.set_num_threads(n)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["val_loss"])
    # the run's resolved config names the plugin, so the run loads back on its own
    again = config.from_dict(__import__("yaml").safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert again.plugins == (str(plugin),) and again.model_args.attention == "probe_last3"


def test_plugin_variant_really_is_used(tmp_path, cleanup):
    """The model built from the config runs the plugin's class (its pattern), not a default."""
    from foundry.model import GPT
    plugin = write_plugin(tmp_path, "probe_last3b")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"plugins: [{plugin}]\n" + TINY.format(name="probe_last3b"))
    cfg = load_experiment(exp, ["model_args.vocab_size=50"])
    model = GPT(cfg.model_args).eval()
    assert type(model.blocks[0].attn).__name__ == "LastThree"
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 0] = (y[0, 0] + 1) % 50  # token 0 is out of reach of position 8 (and, with one layer, of its output)
    torch.testing.assert_close(model(x)[0, 8], model(y)[0, 8])


def test_dotted_module_plugin(tmp_path, monkeypatch, cleanup):
    pkg = tmp_path / "probe_plugin_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(PLUGIN.format(name="probe_dotted"))
    monkeypatch.syspath_prepend(str(tmp_path))
    exp = tmp_path / "exp.yaml"
    exp.write_text("plugins: [probe_plugin_pkg]\n" + TINY.format(name="probe_dotted"))
    assert load_experiment(exp).model_args.attention == "probe_dotted"


def test_same_file_under_two_spellings_is_imported_once(tmp_path, monkeypatch, cleanup):
    plugin = write_plugin(tmp_path, "probe_once")
    monkeypatch.chdir(tmp_path)
    config.load_plugins([str(plugin), "./myplugin.py", "myplugin.py"])
    assert "probe_once" in REGISTRIES["attention"]


def test_unknown_name_without_the_plugin_is_refused(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(TINY.format(name="probe_never_registered"))
    with pytest.raises(ConfigError, match="unknown attention 'probe_never_registered'"):
        load_experiment(exp)


@pytest.mark.parametrize("body, words", [
    ("raise RuntimeError('plugin is broken on purpose')\n", ["RuntimeError", "plugin is broken on purpose", ":1)"]),
    ("def f(:\n", ["SyntaxError"]),
    ("import foundry_no_such_module_xyz\n", ["ModuleNotFoundError", "foundry_no_such_module_xyz"]),
    (PLUGIN.format(name="mha"), ["registered twice", "mha"]),
])
def test_broken_plugin_fails_at_load_naming_plugin_and_error(tmp_path, cleanup, body, words):
    plugin = write_plugin(tmp_path, None, body, file="broken_plugin.py")
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"plugins: [{plugin}]\n")
    with pytest.raises(ConfigError) as e:
        load_experiment(exp)
    msg = str(e.value)
    assert "plugins: plugin" in msg and "broken_plugin.py" in msg
    for w in words:
        assert w in msg, msg


def test_missing_plugin_and_cli_exit_code(tmp_path, capsys):
    from foundry.train import main
    exp = tmp_path / "exp.yaml"
    exp.write_text("plugins: [no/such/plugin.py]\n")
    assert main([str(exp), "--set", f"out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "no/such/plugin.py" in err and "no such file" in err
    assert not (tmp_path / "run").exists(), "nothing may be written before the config is valid"

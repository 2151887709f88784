"""The optional extras and the ecosystem's own tools: every extra a user installs by name is held by the test
extra (so CI exercises it), is importable where it installs, and a missing one still names its install
command; `just ci` runs the README's test command and is what .ci/run runs."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import require_extra

REPO = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# the module each user-facing extra provides (a new extra must be added here, and so gets tested)
MODULES = {"hf": "transformers", "peft": "peft", "plot": "matplotlib", "tensorboard": "tensorboard",
           "wandb": "wandb", "submitit": "submitit", "ray": "ray", "search": "optuna", "gguf": "gguf"}


def names(reqs: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in reqs}


def test_the_test_extra_holds_every_extra_and_each_is_known():
    user_extras = set(EXTRAS) - {"test"}
    assert user_extras == set(MODULES), f"extras without a module to test: {sorted(user_extras ^ set(MODULES))}"
    for extra in user_extras:
        missing = names(EXTRAS[extra]) - names(EXTRAS["test"])
        assert not missing, f"extra {extra!r}: {sorted(missing)} not in the test extra, so CI never installs it"


@pytest.mark.parametrize("extra", sorted(MODULES))
def test_each_extra_is_installed_where_it_installs(extra):
    """Each extra's module is found and each of its distributions installed (under CI: or the test fails).
    The features' own tests import and use them (test_lora: peft, test_sweep_scaleout: ray and submitit, ...)."""
    from importlib import metadata

    require_extra(MODULES[extra], extra)
    for dist in names(EXTRAS[extra]):
        assert metadata.version(dist), dist


def block(monkeypatch, *modules):
    """Make `import m` fail with ImportError, as if the extra were not installed."""
    for m in modules:
        monkeypatch.setitem(sys.modules, m, None)


def test_a_missing_extra_names_its_install_command(monkeypatch, tmp_path):
    from foundry.config import ConfigError, ExperimentConfig
    from foundry.sweep.executors import RayExecutor, SubmititExecutor
    from foundry.sweep.report import _plots
    from foundry.sweep.search import run_search
    from foundry.train import ExtraLoggers

    block(monkeypatch, "ray", "submitit", "optuna", "matplotlib", "torch.utils.tensorboard", "wandb")
    for call, extra in ((lambda: RayExecutor(1, 1), "ray"),
                        (lambda: SubmititExecutor(1, tmp_path, "local", 1, 1), "submitit"),
                        (lambda: run_search(None), "search")):
        with pytest.raises(RuntimeError, match=re.escape(f"pip install 'foundry[{extra}]'")):
            call()
    assert "pip install 'foundry[plot]'" in _plots(tmp_path, {}, [], {})[1]
    for logger in ("tensorboard", "wandb"):
        with pytest.raises(ConfigError, match=re.escape(f"pip install -e '.[{logger}]'")):
            ExtraLoggers([logger], tmp_path, ExperimentConfig(), enabled=False)


def just_binary() -> str | None:
    here = Path(sys.executable).parent / "just"
    return str(here) if here.is_file() else shutil.which("just")


def test_just_ci_runs_the_readme_test_command():
    just = just_binary()
    if just is None:
        msg = "the just binary is not installed (pip install -e '.[test]' brings it: rust-just)"
        pytest.fail(msg) if os.environ.get("FOUNDRY_CI") else pytest.skip(msg)
    out = subprocess.run([just, "--dry-run", "ci"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "make test" in out.stderr + out.stdout           # just echoes each recipe line to stderr
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "just ci" in readme
    assert re.search(r"^\s*FOUNDRY_CI=1 .*just\"? ci\s*$", (REPO / ".ci" / "run").read_text(), re.M), \
        ".ci/run must run `just ci` with FOUNDRY_CI=1 (so extras cannot quietly skip)"

"""Shared fixtures. Reference data lives at ../shared/data beside the repository; tests that need it skip
with a clear reason when it is absent (a user's machine will not have it)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# runs started by tests record into a throwaway experiment store, never the user's runs/foundry.sqlite
os.environ.setdefault("FOUNDRY_STORE", str(Path(tempfile.mkdtemp(prefix="foundry-test-store-")) / "store.sqlite"))

SHARED_DATA = Path(os.environ.get("FOUNDRY_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(rel: str) -> Path:
    """Path of a reference data file, or skip the test naming what is missing."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"reference data {rel} not found under {SHARED_DATA} (set FOUNDRY_SHARED_DATA to its folder)")
    return p


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Every test starts seeded and on one intra-op thread: the tiny models here run fastest that way, and two
    threads on a loaded 2-core machine were measured ~100x slower (OpenMP barriers spin while their cores are
    taken). A test that wants more threads sets them itself."""
    torch.manual_seed(0)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def require_extra(module: str, extra: str) -> None:
    """Skip a test whose optional extra is missing, naming the install command; under CI (FOUNDRY_CI=1, set by
    .ci/run, which installs the test extra) a missing extra fails instead, so the test cannot quietly skip."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        msg = f"{module} is not installed (pip install -e '.[{extra}]')"
        if os.environ.get("FOUNDRY_CI"):
            pytest.fail(f"{msg}, but the CI installs the test extra, which holds it")
        pytest.skip(msg)


@pytest.fixture(scope="session")
def faults_reference(tmp_path_factory):
    """(data dir, run dir) of one uninterrupted short run, shared by the fault-injection tests
    (tests/faults_helpers.py), which damage copies of it and compare continuations against it."""
    from faults_helpers import make_reference
    return make_reference(tmp_path_factory.mktemp("faults_reference"))

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

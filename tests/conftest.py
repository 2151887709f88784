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
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield

"""Shared fixtures: the real datasets beside the repo, small georeferenced rasters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LANDSLIDES_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_dataset(name: str) -> Path:
    """Path to ``../shared/data/<name>``; skips the test cleanly when it is absent."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real dataset {name!r} not found under {SHARED_DATA} (set "
                    f"LANDSLIDES_SHARED_DATA to the folder holding it)")
    return path


@pytest.fixture
def rasuwa_dir() -> Path:
    return shared_dataset("rasuwa-inventory")


@pytest.fixture
def chittagong_dir() -> Path:
    return shared_dataset("chittagong-s2")


@pytest.fixture
def jiuzhaigou_dir() -> Path:
    return shared_dataset("jiuzhaigou-dem")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)

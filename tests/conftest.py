"""Shared fixtures: every test gets its own braver cache folder and a fixed seed."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep generated phantoms and caches out of the user's ~/.cache."""
    monkeypatch.setenv("BRAVER_CACHE", str(tmp_path_factory.mktemp("braver-cache")))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)

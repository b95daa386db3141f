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


@pytest.fixture
def one_thread():
    """Keep a test to one torch thread (tests share 2 cores with other test processes)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

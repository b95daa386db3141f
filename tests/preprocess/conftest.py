"""Fixtures of the preprocessing tests; the dataset writers live in tests/data/fixture_layouts.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# fixture_layouts is shared with the data tests; make it importable when these run alone
sys.path.insert(0, str(Path(__file__).parents[1] / "data"))

from fixture_layouts import write_brats2021  # noqa: E402


@pytest.fixture
def brats2021(tmp_path):
    root = tmp_path / "BraTS2021"
    write_brats2021(root, "BraTS2021_00001", seed=1)
    write_brats2021(root, "BraTS2021_00002", seed=2)
    return root

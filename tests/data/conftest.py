"""Fixtures of the data tests; the writers of every layout are in fixture_layouts.py."""

from __future__ import annotations

import pytest
from fixture_layouts import write_brats2021


@pytest.fixture
def brats2021(tmp_path):
    root = tmp_path / "BraTS2021"
    write_brats2021(root, "BraTS2021_00001", seed=1)
    write_brats2021(root, "BraTS2021_00002", seed=2)
    return root

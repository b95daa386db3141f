"""Helpers for the model tests: weights large enough that outputs are far from zero."""

from __future__ import annotations

import pytest
from seeded import randomise_


@pytest.fixture
def randomise():
    """:func:`seeded.randomise_` as a fixture."""
    return randomise_


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every model test runs on one torch thread."""

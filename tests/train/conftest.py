"""Fixtures of the training tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "braver_tiny_cache", Path(__file__).with_name("tiny.py")
)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)


@pytest.fixture
def tiny_cache(tmp_path):
    return tiny.write_tiny_cache(tmp_path / "cache")

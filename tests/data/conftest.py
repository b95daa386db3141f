"""Fixtures of the data tests; the writers of every layout are in fixture_layouts.py."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_layouts import write_brats2021

from braver.data.cache import Cache, write_case, write_summary
from braver.data.labels import BRATS_2023


@pytest.fixture
def brats2021(tmp_path):
    root = tmp_path / "BraTS2021"
    write_brats2021(root, "BraTS2021_00001", seed=1)
    write_brats2021(root, "BraTS2021_00002", seed=2)
    return root


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    ids = []
    for n, shape in enumerate([(3, 30, 26), (2, 12, 40)]):
        # every voxel holds a distinct value: any misplaced pixel shows
        image = np.arange(4 * np.prod(shape), dtype=np.float32).reshape(4, *shape) % 2048
        image += n * 0.5
        label = rng.integers(0, 4, size=shape).astype(np.uint8)
        write_case(tmp_path, f"c{n}", image, label, {"case_id": f"c{n}"})
        ids.append(f"c{n}")
    write_summary(
        tmp_path, {"label_scheme": BRATS_2023.to_json(), "channels": list("abcd"), "cases": ids}
    )
    return Cache.open(tmp_path)


@pytest.fixture
def paired_cache(tmp_path):
    """Labels are a function of channel 0 (label = value % 4), so any misaligned pair shows."""
    rng = np.random.default_rng(3)
    shape = (2, 20, 23)
    image = rng.integers(1, 200, size=(4, *shape)).astype(np.float32)
    image[:, :, :3] = 0  # a zero border: the foreground test of the intensity jitter
    label = (image[0] % 4).astype(np.uint8)
    for case in ("p0", "p1"):  # two identical cases: one to train on, one to validate on
        write_case(tmp_path, case, image, label, {"case_id": case})
    write_summary(
        tmp_path,
        {"label_scheme": BRATS_2023.to_json(), "channels": list("abcd"), "cases": ["p0", "p1"]},
    )
    return Cache.open(tmp_path)

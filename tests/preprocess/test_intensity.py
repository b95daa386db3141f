"""Intensity: percentile clip, z-score inside the foreground, N4."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_layouts import (
    BOX,
    CANONICAL_BOX,
    brain_arrays,
    lps_to_canonical,
    save,
)

from braver.data.formats import discover
from braver.preprocess import (
    PrepareSettings,
    preprocess_case,
)


def test_zscore_inside_foreground_and_zero_outside(tmp_path):
    channels, label = brain_arrays(3)
    # a foreground that is not a box: carve a hole of zeros in every channel
    for data in channels.values():
        data[2, 3, 2] = 0
    case_dir = tmp_path / "BraTS2021_00009"
    for name, key in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair")):
        save(case_dir / f"BraTS2021_00009_{key}.nii.gz", channels[name])
    prepared = preprocess_case(discover(tmp_path).cases[0])
    raw_mask = lps_to_canonical(channels["t1"] != 0)[tuple(slice(a, b) for a, b in CANONICAL_BOX)]
    assert (~raw_mask).sum() > 0
    for k in range(4):
        inside = prepared.image[k][raw_mask].astype(np.float64)
        assert inside.mean() == pytest.approx(0.0, abs=1e-5)
        assert inside.std() == pytest.approx(1.0, abs=1e-4)
        assert (prepared.image[k][~raw_mask] == 0).all()
    stats = prepared.meta["channel_stats"]
    assert [s["channel"] for s in stats] == ["t1", "t1c", "t2", "flair"]
    assert 1000 <= stats[0]["clip_low"] < stats[0]["clip_high"] < 1100
    assert 4000 <= stats[3]["clip_low"] < stats[3]["clip_high"] < 4100


def test_clipping_at_percentiles(tmp_path):
    channels, _ = brain_arrays(0)
    channels["t2"][3, 4, 2] = 1e6  # one hot voxel
    case_dir = tmp_path / "c_1"
    for name, key in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair")):
        save(case_dir / f"c_1_{key}.nii.gz", channels[name])
    prepared = preprocess_case(discover(tmp_path).cases[0])
    stats = prepared.meta["channel_stats"][2]
    foreground = channels["t2"][BOX]
    assert stats["clip_high"] < 3100  # the outlier did not set the upper bound
    assert stats["clip_high"] == pytest.approx(np.percentile(foreground, 99, method="nearest"))
    assert stats["clip_low"] == pytest.approx(np.percentile(foreground, 1, method="nearest"))
    top = (stats["clip_high"] - stats["raw_mean"]) / stats["raw_std"]
    assert prepared.image[2].max() == pytest.approx(top, rel=1e-5)


def test_n4_corrects_a_bias_field(tmp_path):
    shape = (48, 48, 32)
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    bias = np.exp(0.4 * x) * np.ones(shape)
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 3:-3] = True
    folder = tmp_path / "n4_1"
    # two tissues in stripes along Y, so that the z-score's scale is set by tissue contrast
    tissue = np.where((np.indices(shape)[1] // 4) % 2 == 0, 400.0, 600.0)
    for key in ("t1", "t1ce", "t2", "flair"):
        data = np.where(mask, tissue * bias + rng.normal(0, 5, shape), 0).astype(np.float32)
        save(folder / f"n4_1_{key}.nii.gz", data)
    case = discover(tmp_path).cases[0]
    plain = preprocess_case(case, PrepareSettings())
    corrected = preprocess_case(case, PrepareSettings(n4=True))

    # T1 (corrected) is flatter left to right than T2 (not corrected, n4_channels = t1, t1c)
    def slope(image):
        profile = image.mean(axis=(0, 1))
        return abs(profile[-3] - profile[2])

    assert slope(corrected.image[0]) < 0.5 * slope(plain.image[0])
    np.testing.assert_allclose(corrected.image[2], plain.image[2])

"""Intensity: percentile clip, z-score inside the foreground, N4."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import (
    BOX,
    CANONICAL_BOX,
    brain_arrays,
    lps_to_canonical,
    save,
    write_brats2013,
    write_brats2021,
    write_lits,
)

from braver.data.formats import discover
from braver.errors import BraverError
from braver.preprocess import PrepareSettings, preprocess_case


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


def write_biased_case(root):
    """A 48 x 48 x 32 case whose four channels carry the same smooth bias field along X."""
    shape = (48, 48, 32)
    x = np.linspace(-1, 1, shape[0])[:, None, None]
    bias = np.exp(0.4 * x) * np.ones(shape)
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, bool)
    mask[4:-4, 4:-4, 3:-3] = True
    folder = root / "n4_1"
    # two tissues in stripes along Y, so that the z-score's scale is set by tissue contrast
    tissue = np.where((np.indices(shape)[1] // 4) % 2 == 0, 400.0, 600.0)
    channels = {}
    for key in ("t1", "t1ce", "t2", "flair"):
        data = np.where(mask, tissue * bias + rng.normal(0, 5, shape), 0).astype(np.float32)
        save(folder / f"n4_1_{key}.nii.gz", data)
        channels[key] = data
    return discover(root).cases[0], channels


def test_n4_corrects_a_bias_field(tmp_path):
    case, _ = write_biased_case(tmp_path)
    plain = preprocess_case(case, PrepareSettings(n4=False))
    corrected = preprocess_case(case)  # N4 is the default for MRI

    # T1 (corrected) is flatter left to right than T2 (not corrected, n4_channels = t1, t1c)
    def slope(image):
        profile = image.mean(axis=(0, 1))
        return abs(profile[-3] - profile[2])

    assert slope(corrected.image[0]) < 0.5 * slope(plain.image[0])
    np.testing.assert_allclose(corrected.image[2], plain.image[2])
    assert [s["n4"] for s in corrected.meta["channel_stats"]] == [True, True, False, False]
    assert [s["n4"] for s in plain.meta["channel_stats"]] == [False] * 4


def test_the_papers_order_clip_then_n4_then_zscore(tmp_path):
    """Section 4: the 1% clip is of the raw intensities, N4 follows, normalisation is last."""
    case, channels = write_biased_case(tmp_path)
    prepared = preprocess_case(case, PrepareSettings(n4=True))
    t1 = channels["t1"][channels["t1"] != 0]
    stats = prepared.meta["channel_stats"][0]
    assert stats["n4"]
    # the bounds are the raw T1's percentiles, not those of N4's output (a positive image
    # divided by the field, so shifted and scaled away from them)
    assert stats["clip_low"] == pytest.approx(np.percentile(t1, 1, method="nearest"))
    assert stats["clip_high"] == pytest.approx(np.percentile(t1, 99, method="nearest"))
    inside = prepared.image[0][prepared.image[0] != 0].astype(np.float64)
    assert inside.mean() == pytest.approx(0.0, abs=1e-4)
    assert inside.std() == pytest.approx(1.0, abs=1e-3)
    # N4 ran on the clipped image: its output is not bounded by the clip, z-scored
    top = (stats["clip_high"] - stats["raw_mean"]) / stats["raw_std"]
    assert prepared.image[0].max() != pytest.approx(top, rel=1e-3)


def test_n4_is_on_for_mri_by_default_and_never_for_ct(tmp_path):
    assert PrepareSettings().n4 is None
    assert PrepareSettings().n4_applies("mri") and not PrepareSettings().n4_applies("ct")
    assert not PrepareSettings(n4=False).n4_applies("mri")
    write_brats2021(tmp_path / "mri", "BraTS2021_00001", seed=1)
    stats = preprocess_case(discover(tmp_path / "mri").cases[0]).meta["channel_stats"]
    assert [s["n4"] for s in stats] == [True, True, False, False]
    write_lits(tmp_path / "ct")
    stats = preprocess_case(discover(tmp_path / "ct").cases[0]).meta["channel_stats"]
    assert [s["n4"] for s in stats] == [False]


def test_a_channel_shipped_n4_corrected_is_not_corrected_again(tmp_path):
    write_brats2013(tmp_path, "HG/0001", seed=1, n4itk=("t1c",), raw=False)
    stats = preprocess_case(discover(tmp_path).cases[0]).meta["channel_stats"]
    assert [s["n4"] for s in stats] == [True, False, False, False]
    assert [s["n4_before_braver"] for s in stats] == [False, True, False, False]


def test_ct_window_then_zscore_inside_the_body(tmp_path):
    write_lits(tmp_path)
    path = tmp_path / "Training Batch 1" / "volume-0.nii"
    hu = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    settings = PrepareSettings(hu_window=(-100.0, 200.0), ct_normalisation="zscore")
    prepared = preprocess_case(discover(tmp_path).cases[0], settings)
    crop = tuple(slice(a, b) for a, b in CANONICAL_BOX)
    values = lps_to_canonical(hu)[crop]
    body = values > -500
    clipped = np.clip(values, -100, 200).astype(np.float64)
    expected = (clipped - clipped[body].mean()) / clipped[body].std()
    expected[~body] = 0
    np.testing.assert_allclose(prepared.image[0], expected, atol=1e-5)
    stats = prepared.meta["channel_stats"][0]
    assert stats["normalisation"] == "zscore" and stats["mean"] == 0.0 and stats["std"] == 1.0
    assert prepared.meta["settings"]["ct_normalisation"] == "zscore"  # predict does the same
    assert PrepareSettings().ct_normalisation == "zscore"  # the default
    unit = preprocess_case(
        discover(tmp_path).cases[0],
        PrepareSettings(hu_window=(-100, 200), ct_normalisation="unit"),
    )
    assert unit.meta["channel_stats"][0]["normalisation"] == "unit"
    assert unit.image.min() >= 0 and unit.image.max() <= 1


def test_ct_normalisation_is_checked():
    with pytest.raises(BraverError, match=r"ct_normalisation = 'minmax'.*unit, zscore"):
        PrepareSettings(ct_normalisation="minmax")

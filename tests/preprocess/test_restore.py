"""The exact way back: cached labels and probabilities on the file's voxel grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import (
    LPS,
    brain_arrays,
    save,
    write_brats2021,
)

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.errors import BraverError
from braver.preprocess import (
    PrepareSettings,
    prepare_dataset,
    preprocess_case,
    restore_to_original,
)


@pytest.mark.parametrize(
    "affine",
    [
        LPS,  # as BraTS
        np.array([[0, 0, 1.2, -3], [-1.0, 0, 0, 4], [0, -2.0, 0, 9], [0, 0, 0, 1]]),  # permuted
        np.diag([1.0, 1.0, 1.0, 1.0]),  # already RAS
    ],
    ids=["LPS", "permuted", "RAS"],
)
def test_restore_to_original_is_exact(tmp_path, affine):
    """Prepare a case, restore its cached label: the label file's values, array for array."""
    folder = write_brats2021(tmp_path / "data", "BraTS2021_00007", seed=7, affine=affine)
    report = prepare_dataset(tmp_path / "data", tmp_path / "cache", progress=False)
    assert not report.failed
    cached = Cache.open(tmp_path / "cache").case("BraTS2021_00007")
    restored = restore_to_original(np.asarray(cached.label), cached.meta)
    original = np.asanyarray(nib.load(folder / "BraTS2021_00007_seg.nii.gz").dataobj)
    assert restored.shape == original.shape
    np.testing.assert_array_equal(restored, original)
    assert set(np.unique(restored).tolist()) == {0, 1, 2, 4}


def test_restore_probabilities(brats2021):
    prepared = preprocess_case(discover(brats2021).cases[0])
    k = 4
    one_hot = np.eye(k, dtype=np.float32)[prepared.label].transpose(3, 0, 1, 2)
    probs = restore_to_original(one_hot, prepared.meta, labels=False)
    assert probs.shape == (8, 8, 6, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    _, label = brain_arrays(1)
    scheme = discover(brats2021).scheme
    np.testing.assert_array_equal(probs.argmax(-1), scheme.to_classes(label))


def test_restore_rejects_a_wrong_shape(brats2021):
    prepared = preprocess_case(discover(brats2021).cases[0])
    with pytest.raises(BraverError, match="fits neither the cached grid"):
        restore_to_original(np.zeros((3, 3, 3), np.uint8), prepared.meta)


# --- resampled in plane ------------------------------------------------------------------------


def oblique(spacing_xyz, degrees=30.0):
    """An affine whose voxel axes are rotated about the scanner's Z: no axis is aligned."""
    angle = np.deg2rad(degrees)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing_xyz)
    affine[:3, 3] = [5.0, -7.0, 11.0]
    return affine


def write_blob_case(root, affine, shape=(40, 36, 5)):
    """A BraTS 2021 case of ``shape`` (X, Y, Z) voxels: a head-like foreground and nested
    elliptic labels 2 ⊃ 1 ⊃ 4, so that resampling has boundaries to move."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    cx, cy = shape[0] * 0.45, shape[1] * 0.55

    def inside(rx, ry):
        return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1

    foreground = inside(shape[0] * 0.42, shape[1] * 0.42)
    label = np.zeros(shape, np.uint8)
    label[inside(shape[0] * 0.3, shape[1] * 0.25) & (z >= 1)] = 2
    label[inside(shape[0] * 0.18, shape[1] * 0.15) & (z >= 1)] = 1
    label[inside(shape[0] * 0.08, shape[1] * 0.08) & (z >= 2)] = 4
    rng = np.random.default_rng(0)
    folder = root / "BraTS2021_00001"
    for k, key in enumerate(("t1", "t1ce", "t2", "flair")):
        data = np.where(foreground, 1000.0 * (k + 1) + 100.0 * label + rng.normal(0, 5, shape), 0)
        save(folder / f"BraTS2021_00001_{key}.nii.gz", data.astype(np.float32), affine)
    save(folder / "BraTS2021_00001_seg.nii.gz", label, affine)
    return label


@pytest.mark.parametrize(
    "affine",
    [np.diag([-2.0, -2.0, 3.0, 1.0]), oblique((2.0, 2.0, 3.0))],
    ids=["2mm", "oblique-2mm"],
)
def test_whole_number_upsampling_comes_back_exactly(tmp_path, affine):
    label = write_blob_case(tmp_path, affine)
    prepared = preprocess_case(discover(tmp_path).cases[0], PrepareSettings(target_spacing_mm=1.0))
    box = prepared.meta["crop_zyx"]
    crop_shape = [hi - lo for lo, hi in box]
    assert prepared.meta["shape_zyx"] == [crop_shape[0], 2 * crop_shape[1], 2 * crop_shape[2]]
    assert prepared.meta["spacing_zyx"] == pytest.approx([3.0, 1.0, 1.0])
    assert prepared.meta["source_spacing_zyx"] == pytest.approx([3.0, 2.0, 2.0])
    assert prepared.image.shape == (4, *prepared.meta["shape_zyx"])
    restored = restore_to_original(prepared.label, prepared.meta)
    np.testing.assert_array_equal(restored, label)
    k = discover(tmp_path).scheme.num_classes
    one_hot = np.eye(k, dtype=np.float32)[prepared.label].transpose(3, 0, 1, 2)
    probs = restore_to_original(one_hot, prepared.meta, labels=False)
    assert probs.shape == (*label.shape, k)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    scheme = discover(tmp_path).scheme
    np.testing.assert_array_equal(scheme.to_values(probs.argmax(-1)), label)


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def centroid(mask):
    return np.argwhere(mask).mean(axis=0)


@pytest.mark.parametrize(
    "affine",
    [np.diag([-0.5, -0.75, 3.0, 1.0]), oblique((0.5, 0.75, 3.0), degrees=-35.0)],
    ids=["anisotropic", "oblique-anisotropic"],
)
def test_downsampling_comes_back_on_the_input_grid_without_a_shift(tmp_path, affine):
    label = write_blob_case(tmp_path, affine, shape=(64, 48, 5))
    report = prepare_dataset(
        tmp_path, tmp_path / "cache", PrepareSettings(target_spacing_mm=1.0), progress=False
    )
    assert not report.failed
    cached = Cache.open(tmp_path / "cache").case("BraTS2021_00001")
    meta = cached.meta
    assert meta["settings"]["target_spacing_mm"] == 1.0
    assert meta["source_spacing_zyx"] == pytest.approx([3.0, 0.75, 0.5])
    assert meta["spacing_zyx"][1:] == pytest.approx([1.0, 1.0], abs=0.05)
    crop_y, crop_x = (hi - lo for lo, hi in meta["crop_zyx"][1:])
    assert meta["shape_zyx"][1:] == [round(crop_y * 0.75), round(crop_x * 0.5)]
    restored = restore_to_original(np.asarray(cached.label), meta)
    assert restored.shape == label.shape and restored.dtype == label.dtype
    assert set(np.unique(restored).tolist()) == {0, 1, 2, 4}
    for truth, back in (
        (label > 0, restored > 0),
        (np.isin(label, (1, 4)), np.isin(restored, (1, 4))),
        (label == 4, restored == 4),
    ):
        assert dice(truth, back) > 0.95
        # the way back does not move a region (measured: at most 0.1 file voxel)
        assert np.abs(centroid(truth) - centroid(back)).max() < 0.2

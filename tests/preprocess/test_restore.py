"""The exact way back: cached labels and probabilities on the file's voxel grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import (
    LPS,
    brain_arrays,
    write_brats2021,
)

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.errors import BraverError
from braver.preprocess import (
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
    with pytest.raises(BraverError, match="fits neither the crop"):
        restore_to_original(np.zeros((3, 3, 3), np.uint8), prepared.meta)

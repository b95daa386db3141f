"""Geometry: canonical axes and spacing, the CT body crop."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import (
    CANONICAL_BOX,
    brain_arrays,
    lps_to_canonical,
    save,
    write_lits,
)

from braver.data.formats import discover
from braver.preprocess import (
    PrepareSettings,
    preprocess_case,
)
from braver.preprocess.geometry import (
    resample_classes,
    resample_inplane,
    resampled_shape,
    resampled_spacing,
)


def test_spacing_follows_the_canonical_axes(tmp_path):
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    channels, label = brain_arrays(0)
    folder = tmp_path / "c_1"
    for name, key in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair")):
        save(folder / f"c_1_{key}.nii.gz", channels[name], affine)
    meta = preprocess_case(discover(tmp_path).cases[0]).meta
    assert meta["spacing_zyx"] == pytest.approx([2.5, 0.9, 0.8])


def test_ct_window_body_crop_and_table(tmp_path):
    write_lits(tmp_path)
    # add a "scanner table" in volume-0, away from the body: the crop must ignore it
    path = tmp_path / "Training Batch 1" / "volume-0.nii"
    image = nib.load(str(path))
    hu = np.asanyarray(image.dataobj).copy()
    hu[7, :, :] = 300  # one voxel of air away from the body (x 1:6)
    nib.save(nib.Nifti1Image(hu, image.affine), str(path))
    settings = PrepareSettings(hu_window=(-100.0, 200.0), ct_normalisation="unit")
    prepared = preprocess_case(discover(tmp_path).cases[0], settings)
    assert prepared.meta["modality"] == "ct" and prepared.meta["channels"] == ["ct"]
    assert prepared.meta["crop_zyx"] == CANONICAL_BOX  # the table is outside the crop
    crop = tuple(slice(a, b) for a, b in CANONICAL_BOX)
    body = lps_to_canonical(hu)[crop].astype(np.float32)
    expected = (np.clip(body, -100, 200) + 100) / 300
    expected[body <= -500] = 0
    np.testing.assert_allclose(prepared.image[0], expected, atol=1e-6)
    assert prepared.image.min() >= 0 and prepared.image.max() <= 1


def test_resampled_shape_and_spacing_of_an_anisotropic_grid():
    spacing = [2.5, 0.8, 1.25]
    assert resampled_shape((6, 50, 40), spacing, None) == (6, 50, 40)
    assert resampled_shape((6, 50, 40), spacing, 1.0) == (6, 40, 50)
    assert resampled_spacing((6, 50, 40), spacing, (6, 40, 50)) == pytest.approx([2.5, 1.0, 1.0])
    # 33 voxels of 0.7 mm are 23.1 mm: 23 voxels of 1.004 mm over the same extent
    assert resampled_shape((4, 33, 33), [1.0, 0.7, 0.7], 1.0) == (4, 23, 23)
    assert resampled_spacing((4, 33, 33), [1, 0.7, 0.7], (4, 23, 23))[1] == pytest.approx(
        33 * 0.7 / 23
    )


@pytest.mark.parametrize("new_yx", [(20, 15), (80, 60), (27, 33)], ids=["down", "up", "mixed"])
def test_resampling_keeps_the_field_of_view(new_yx):
    """A blob stays where it is in millimetres: output voxel o sits at (o + 0.5) n / n' - 0.5
    input voxels, so a centroid maps back onto the input's (to a hundredth of a voxel)."""
    y, x = np.meshgrid(np.arange(40.0), np.arange(30.0), indexing="ij")
    blob = np.exp(-(((y - 13.3) / 5.0) ** 2) - ((x - 18.6) / 4.0) ** 2).astype(np.float32)
    volume = np.stack([blob, blob])  # (Z, Y, X)
    out = resample_inplane(volume, new_yx)
    assert out.shape == (2, *new_yx) and out.dtype == np.float32
    scale = np.array([40 / new_yx[0], 30 / new_yx[1]])
    oy, ox = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in new_yx), indexing="ij")
    weights = out[0].astype(np.float64)
    centre_out = np.array([(oy * weights).sum(), (ox * weights).sum()]) / weights.sum()
    centre_in = (centre_out + 0.5) * scale - 0.5
    np.testing.assert_allclose(centre_in, [13.3, 18.6], atol=0.05)
    np.testing.assert_array_equal(out[0], out[1])  # slices are not mixed


def test_class_resampling_two_up_and_back_is_exact_and_labels_stay_labels():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=(40, 9, 7)).astype(np.uint8)  # more slices than a slab
    up = resample_classes(classes, (18, 14), 4)
    assert up.dtype == np.uint8 and set(np.unique(up)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(resample_classes(up, (9, 7), 4), classes)
    assert resample_classes(classes, (9, 7), 4) is classes  # nothing to do

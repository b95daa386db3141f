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
    settings = PrepareSettings(hu_window=(-100.0, 200.0))
    prepared = preprocess_case(discover(tmp_path).cases[0], settings)
    assert prepared.meta["modality"] == "ct" and prepared.meta["channels"] == ["ct"]
    assert prepared.meta["crop_zyx"] == CANONICAL_BOX  # the table is outside the crop
    crop = tuple(slice(a, b) for a, b in CANONICAL_BOX)
    body = lps_to_canonical(hu)[crop].astype(np.float32)
    expected = (np.clip(body, -100, 200) + 100) / 300
    expected[body <= -500] = 0
    np.testing.assert_allclose(prepared.image[0], expected, atol=1e-6)
    assert prepared.image.min() >= 0 and prepared.image.max() <= 1

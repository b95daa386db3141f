"""Reading volumes: NIfTI and MetaImage geometry, and every way a file can be unusable."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import LPS, save

from braver.data.io import read_header_shape, read_volume, save_metaimage, save_nifti
from braver.errors import BraverError


def test_nifti_keeps_integer_dtype_and_affine(tmp_path):
    data = np.arange(8 * 8 * 6, dtype=np.int16).reshape(8, 8, 6)
    path = save(tmp_path / "a.nii.gz", data)
    volume = read_volume(path)
    assert volume.data.dtype == np.int16
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.affine, LPS)
    assert volume.spacing == (1.0, 1.0, 1.0)
    assert read_header_shape(path)[0] == (8, 8, 6)


def test_scaled_nifti_becomes_float32(tmp_path):
    image = nib.Nifti1Image(np.arange(48, dtype=np.int16).reshape(4, 4, 3), LPS)
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, str(tmp_path / "s.nii"))
    volume = read_volume(tmp_path / "s.nii")
    assert volume.data.dtype == np.float32
    assert volume.data[0, 0, 1] == pytest.approx(10.5)


def test_metaimage_geometry_matches_nifti(tmp_path):
    """The same voxels and world geometry through SimpleITK (LPS) and nibabel (RAS)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, size=(8, 7, 6)).astype(np.int16)
    affine = np.array([[0, 0, 2.0, -5], [-1.5, 0, 0, 3], [0, 1.0, 0, 7], [0, 0, 0, 1]])
    save_metaimage(data, affine, tmp_path / "a.mha")
    save_nifti(data, affine, tmp_path / "a.nii.gz")
    mha, nii = read_volume(tmp_path / "a.mha"), read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_array_equal(mha.data, nii.data)
    np.testing.assert_allclose(mha.affine, affine, atol=1e-6)
    np.testing.assert_allclose(nii.affine, affine, atol=1e-6)


def test_trailing_singleton_axis_is_dropped(tmp_path):
    path = save(tmp_path / "a.nii.gz", np.ones((8, 8, 6, 1), dtype=np.float32))
    assert read_volume(path).data.shape == (8, 8, 6)


def test_float_labels_must_be_whole_numbers(tmp_path):
    good = save(tmp_path / "good.nii.gz", np.array([[[0.0, 1.0], [2.0, 4.0]]], dtype=np.float32))
    assert read_volume(good, label=True).data.dtype.kind == "i"
    bad = save(tmp_path / "bad.nii.gz", np.array([[[0.0, 1.5], [2.0, 4.0]]], dtype=np.float32))
    with pytest.raises(BraverError, match="non-integer label values"):
        read_volume(bad, label=True)


# --- unusable files: one sentence naming the file and the fix ---------------------------------


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "case_t1.nii.gz"
    path.write_bytes(b"this is not gzip data at all" * 10)
    with pytest.raises(BraverError) as error:
        read_volume(path)
    assert str(path) in str(error.value)
    assert "corrupt or truncated" in str(error.value)


def test_truncated_gzip(tmp_path):
    path = save(tmp_path / "case_t1.nii.gz", np.random.default_rng(0).random((16, 16, 16)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(BraverError, match="could not be read") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "download or export it again" in str(error.value)


def test_gzip_of_garbage(tmp_path):
    path = tmp_path / "case_t1.nii.gz"
    path.write_bytes(gzip.compress(b"\x01" * 1000))
    with pytest.raises(BraverError, match="could not be read"):
        read_volume(path)


def test_truncated_uncompressed_nifti(tmp_path):
    path = save(tmp_path / "volume-0.nii", np.zeros((16, 16, 16), dtype=np.int16))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(BraverError, match="could not be read"):
        read_volume(path)


def test_corrupt_metaimage(tmp_path):
    path = tmp_path / "VSD.Brain.XX.O.MR_T1.1.mha"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_SHORT\n")
    with pytest.raises(BraverError, match="could not be read"):
        read_volume(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_intensities(tmp_path, bad):
    data = np.ones((8, 8, 6), dtype=np.float32)
    data[3, 3, 3] = bad
    path = save(tmp_path / "case_flair.nii.gz", data)
    with pytest.raises(BraverError) as error:
        read_volume(path)
    message = str(error.value)
    assert str(path) in message and "1 " in message
    assert ("NaN" in message) == bool(np.isnan(bad))
    assert "re-export" in message


@pytest.mark.parametrize("shape", [(8, 8), (8, 8, 6, 2, 2)])
def test_2d_and_5d_images(tmp_path, shape):
    path = save(tmp_path / "case_t1.nii.gz", np.ones(shape, dtype=np.float32))
    with pytest.raises(BraverError, match=f"is a {len(shape)}D image") as error:
        read_volume(path)
    assert str(path) in str(error.value) and "3D volume" in str(error.value)


def test_4d_only_where_allowed(tmp_path):
    path = save(tmp_path / "BRATS_001.nii.gz", np.ones((8, 8, 6, 4), dtype=np.float32))
    with pytest.raises(BraverError, match="is a 4D image"):
        read_volume(path)
    assert read_volume(path, allow_4d=True).data.shape == (8, 8, 6, 4)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("x")
    with pytest.raises(BraverError, match="is not a NIfTI"):
        read_volume(path)

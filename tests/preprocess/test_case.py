"""One case in memory: the crop, the meta, label classes and bad input in a case's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixture_layouts import (
    CANONICAL_BOX,
    LPS,
    brain_arrays,
    lps_to_canonical,
    save,
    write_msd_brain,
)

from braver.data.formats import discover
from braver.errors import BraverError
from braver.preprocess import (
    preprocess_case,
)


def test_crop_box_orientation_and_label(brats2021):
    case = discover(brats2021).cases[0]
    prepared = preprocess_case(case)
    meta = prepared.meta
    assert meta["crop_zyx"] == CANONICAL_BOX
    assert meta["canonical_shape_zyx"] == [6, 8, 8]
    assert meta["original_shape"] == [8, 8, 6]
    assert meta["axcodes"] == "LPS"
    assert prepared.image.shape == (4, 4, 5, 5) and prepared.image.dtype == np.float32
    _, label = brain_arrays(1)
    crop = tuple(slice(a, b) for a, b in CANONICAL_BOX)
    expected = case.scheme.to_classes(lps_to_canonical(label)[crop])
    np.testing.assert_array_equal(prepared.label, expected)
    assert prepared.label.dtype == np.uint8
    assert meta["class_counts"] == [int((expected == k).sum()) for k in range(4)]


def test_meta_has_the_contract_keys(brats2021):
    meta = preprocess_case(discover(brats2021).cases[0]).meta
    for key in (
        "case_id",
        "format",
        "channels",
        "modality",
        "source",
        "affine",
        "original_shape",
        "canonical_shape_zyx",
        "crop_zyx",
        "spacing_zyx",
        "label_scheme",
        "channel_stats",
        "class_counts",
    ):
        assert key in meta, key
    assert meta["source"]["images"][0].endswith("BraTS2021_00001_t1.nii.gz")
    assert meta["source"]["label"].endswith("BraTS2021_00001_seg.nii.gz")
    np.testing.assert_allclose(meta["affine"], LPS)
    json.dumps(meta)  # JSON-serialisable as it is


def test_msd_brain_4d_and_its_labels(tmp_path):
    task = write_msd_brain(tmp_path)
    prepared = preprocess_case(discover(task).cases[0])
    assert prepared.meta["channels"] == ["t1", "t1c", "t2", "flair"]
    assert prepared.meta["channel_stats"][3]["clip_low"] >= 4000  # FLAIR came from volume 0
    assert prepared.meta["source"]["volume_index"] == [1, 2, 3, 0]
    assert set(np.unique(prepared.label).tolist()) == {0, 1, 2, 3}


def test_modalities_of_different_shapes(brats2021):
    path = brats2021 / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz"
    save(path, np.ones((8, 8, 5), dtype=np.int16))
    with pytest.raises(BraverError) as error:
        preprocess_case(discover(brats2021).cases[0])
    message = str(error.value)
    assert message.startswith(str(path))
    assert "(8, 8, 5)" in message and "(8, 8, 6)" in message and "co-register" in message


def test_image_label_shape_mismatch(brats2021):
    path = brats2021 / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    save(path, np.zeros((8, 8, 7), dtype=np.uint8))
    with pytest.raises(BraverError, match="label shape") as error:
        preprocess_case(discover(brats2021).cases[0])
    assert str(error.value).startswith(str(path))


def test_unexpected_label_values(brats2021):
    path = brats2021 / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz"
    _, label = brain_arrays(1)
    label[3, 3, 3] = 3  # BraTS 2023 enhancing in a BraTS 2021 dataset
    save(path, label)
    with pytest.raises(BraverError, match=r"unexpected label values \[3\]") as error:
        preprocess_case(discover(brats2021).cases[0])
    assert str(path) in str(error.value) and "--format" in str(error.value)


def test_nan_intensities_in_a_case(brats2021):
    path = brats2021 / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz"
    channels, _ = brain_arrays(2)
    channels["flair"][2, 3, 2] = np.nan
    save(path, channels["flair"])
    with pytest.raises(BraverError, match="NaN") as error:
        preprocess_case(discover(brats2021).cases[1])
    assert str(path) in str(error.value)


def test_blank_case(tmp_path):
    folder = tmp_path / "c_1"
    for key in ("t1", "t1ce", "t2", "flair"):
        save(folder / f"c_1_{key}.nii.gz", np.zeros((8, 8, 6), dtype=np.int16))
    with pytest.raises(BraverError, match="has no foreground"):
        preprocess_case(discover(tmp_path).cases[0])


def test_4d_file_with_too_few_volumes(tmp_path):
    task = write_msd_brain(tmp_path, cases=1)
    save(task / "imagesTr" / "BRATS_001.nii.gz", np.ones((8, 8, 6, 3), dtype=np.float32))
    with pytest.raises(BraverError, match="4D file"):
        preprocess_case(discover(task).cases[0])

"""Every dataset layout, written in its exact on-disk form, is discovered with the right channels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixture_layouts import (
    brain_arrays,
    write_brats2013,
    write_brats2021,
    write_brats2023,
    write_lits,
    write_msd_brain,
    write_msd_liver,
)

from braver.data.formats import BRAIN_CHANNELS, brain_channel, discover, discover_inputs
from braver.data.labels import BRATS_2013, BRATS_2021, BRATS_2023, LIVER, MSD_BRAIN
from braver.errors import BraverError
from braver.preprocess import read_case


def assert_brain_channel_order(case):
    """Channel k of the fixtures holds values in [1000 (k+1), 1000 (k+1) + 100)."""
    raw = read_case(case)
    assert case.channels == BRAIN_CHANNELS
    for k, data in enumerate(raw.channels):
        inside = data[data != 0]
        assert 1000 * (k + 1) <= inside.min() and inside.max() < 1000 * (k + 1) + 100, (
            case.channels[k]
        )


def test_brats2021(brats2021):
    dataset = discover(brats2021)
    assert dataset.format == "brats2021"
    assert dataset.case_ids == ["BraTS2021_00001", "BraTS2021_00002"]
    assert dataset.scheme == BRATS_2021 and dataset.modality == "mri"
    case = dataset.cases[0]
    assert [p.name for p in case.images] == [
        "BraTS2021_00001_t1.nii.gz",
        "BraTS2021_00001_t1ce.nii.gz",
        "BraTS2021_00001_t2.nii.gz",
        "BraTS2021_00001_flair.nii.gz",
    ]
    assert case.label.name == "BraTS2021_00001_seg.nii.gz"
    assert_brain_channel_order(case)


def test_brats2018_hgg_lgg_subfolders_and_unlabelled_cases(tmp_path):
    write_brats2021(tmp_path / "HGG", "Brats18_CBICA_AAB_1")
    write_brats2021(tmp_path / "LGG", "Brats18_TCIA09_141_1", label=False)
    dataset = discover(tmp_path)
    assert dataset.case_ids == ["Brats18_CBICA_AAB_1", "Brats18_TCIA09_141_1"]
    assert dataset.cases[0].has_label and not dataset.cases[1].has_label


def test_brats2023(tmp_path):
    write_brats2023(tmp_path, "BraTS-GLI-00000-000")
    write_brats2023(tmp_path, "BraTS-GLI-00002-000", label=False)
    dataset = discover(tmp_path)
    assert dataset.format == "brats2023" and dataset.scheme == BRATS_2023
    assert dataset.case_ids == ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"]
    assert dataset.cases[0].label.name == "BraTS-GLI-00000-000-seg.nii.gz"
    assert dataset.cases[1].label is None
    assert [p.name.split("-")[-1] for p in dataset.cases[0].images] == [
        "t1n.nii.gz",
        "t1c.nii.gz",
        "t2w.nii.gz",
        "t2f.nii.gz",
    ]
    assert_brain_channel_order(dataset.cases[0])


def test_brats2013_metaimage_layout(tmp_path):
    root = tmp_path / "BRATS2013_Training" / "Image_Data"
    write_brats2013(root, "HG/0001", seed=1)
    write_brats2013(root, "LG/0001", seed=2, ids=60000)
    dataset = discover(tmp_path / "BRATS2013_Training")
    assert dataset.format == "brats2013" and dataset.scheme == BRATS_2013
    # both case folders are called 0001: the id takes the HG/LG folder too
    assert dataset.case_ids == ["HG_0001", "LG_0001"]
    case = dataset.cases[0]
    assert [p.parent.name.split(".")[4] for p in case.images] == [
        "MR_T1",
        "MR_T1c",
        "MR_T2",
        "MR_Flair",
    ]
    assert ".OT." in case.label.name
    assert_brain_channel_order(case)
    raw = read_case(case)
    assert set(np.unique(raw.label).tolist()) == {0, 1, 2, 3, 4}


def test_brats2013_files_directly_in_case_folder(tmp_path):
    folder = write_brats2013(tmp_path, "0003")
    for sub in list(folder.iterdir()):
        for file in sub.iterdir():
            file.rename(folder / file.name)
        sub.rmdir()
    dataset = discover(tmp_path)
    assert dataset.case_ids == ["0003"]
    assert_brain_channel_order(dataset.cases[0])


def test_msd_brain_channel_order_from_dataset_json(tmp_path):
    task = write_msd_brain(tmp_path)
    dataset = discover(task)
    assert dataset.format == "msd-brain" and dataset.scheme == MSD_BRAIN
    assert dataset.case_ids == ["BRATS_001", "BRATS_002"]  # the ._ file is ignored
    case = dataset.cases[0]
    assert case.images == (task / "imagesTr" / "BRATS_001.nii.gz",)
    # dataset.json: 0 FLAIR, 1 T1w, 2 t1gd, 3 T2w → T1, T1c, T2, FLAIR are volumes 1, 2, 3, 0
    assert case.volume_index == (1, 2, 3, 0)
    assert case.label == task / "labelsTr" / "BRATS_001.nii.gz"
    assert_brain_channel_order(case)


def test_msd_brain_follows_a_different_channel_order(tmp_path):
    task = write_msd_brain(tmp_path, cases=1)
    spec = json.loads((task / "dataset.json").read_text())
    spec["modality"] = {"0": "T1w", "1": "t1gd", "2": "T2w", "3": "FLAIR"}
    (task / "dataset.json").write_text(json.dumps(spec))
    assert discover(task).cases[0].volume_index == (0, 1, 2, 3)


def test_msd_liver(tmp_path):
    task = write_msd_liver(tmp_path)
    dataset = discover(tmp_path)  # found below the given folder too
    assert dataset.format == "msd-liver" and dataset.scheme == LIVER
    assert dataset.channels == ("ct",) and dataset.modality == "ct"
    assert dataset.case_ids == ["liver_0", "liver_1"]
    assert dataset.cases[0].label == task / "labelsTr" / "liver_0.nii.gz"
    assert dataset.cases[0].volume_index is None


def test_lits_in_batch_folders(tmp_path):
    write_lits(tmp_path)
    dataset = discover(tmp_path)
    assert dataset.format == "lits" and dataset.scheme == LIVER
    assert dataset.case_ids == ["volume-0", "volume-1", "volume-10"]  # natural order
    case = dataset.cases[2]
    assert case.images[0].parent.name == "Training Batch 2"
    assert case.label.name == "segmentation-10.nii"


def test_lits_test_volumes_without_segmentation(tmp_path):
    write_lits(tmp_path)
    (tmp_path / "Training Batch 1" / "segmentation-1.nii").unlink()
    dataset = discover(tmp_path)
    assert [c.has_label for c in dataset.cases] == [True, False, True]


def test_format_forced(brats2021):
    assert discover(brats2021, format="brats2021").format == "brats2021"
    with pytest.raises(BraverError, match="holds no cases in the brats2023 layout"):
        discover(brats2021, format="brats2023")
    with pytest.raises(BraverError, match="unknown dataset format"):
        discover(brats2021, format="brats1999")


def test_msd_forced_without_dataset_json(tmp_path):
    task = write_msd_brain(tmp_path)
    (task / "dataset.json").unlink()
    with pytest.raises(BraverError, match="dataset.json"):
        discover(task, format="msd-brain")


def test_single_case_folder_is_a_dataset_of_one(brats2021):
    dataset = discover(brats2021 / "BraTS2021_00002")
    assert dataset.case_ids == ["BraTS2021_00002"]


def test_discover_inputs_folders_and_files(brats2021, tmp_path):
    lits = write_lits(tmp_path / "lits")
    cases = discover_inputs([brats2021 / "BraTS2021_00001"])
    assert [c.case_id for c in cases] == ["BraTS2021_00001"]
    files = sorted((brats2021 / "BraTS2021_00002").glob("*_[tf]*.nii.gz"))
    assert len(files) == 4
    cases = discover_inputs(files)
    assert [c.case_id for c in cases] == ["BraTS2021_00002"] and cases[0].label is None
    ct = discover_inputs([lits / "Training Batch 1" / "volume-0.nii"])
    assert ct[0].case_id == "volume-0" and ct[0].channels == ("ct",) and ct[0].label is None
    plain = tmp_path / "scan.nii.gz"
    plain.write_bytes((lits / "Training Batch 1" / "volume-1.nii").read_bytes())
    with pytest.raises(BraverError, match="cannot tell which modality"):
        discover_inputs([plain])
    assert discover_inputs([plain], format="lits")[0].case_id == "scan"


@pytest.mark.parametrize(
    "name, channel",
    [
        ("FLAIR", "flair"),
        ("T1w", "t1"),
        ("t1gd", "t1c"),
        ("T1ce", "t1c"),
        ("T1-Gd", "t1c"),
        ("T2w", "t2"),
        ("T2", "t2"),
        ("T1", "t1"),
        ("ADC", None),
    ],
)
def test_brain_channel_names(name, channel):
    assert brain_channel(name) == channel


# --- bad layouts ------------------------------------------------------------------------------


def test_missing_modality_names_the_case_and_file(tmp_path):
    write_brats2021(tmp_path, "BraTS2021_00001", skip=("t1c",))
    with pytest.raises(BraverError) as error:
        discover(tmp_path)
    message = str(error.value)
    assert "BraTS2021_00001" in message and "T1C" in message
    assert "BraTS2021_00001_t1ce.nii.gz" in message and "add the file" in message


def test_missing_modality_brats2013(tmp_path):
    folder = write_brats2013(tmp_path, "HG/0001")
    for sub in folder.glob("VSD.Brain.XX.O.MR_T2.*"):
        for file in sub.iterdir():
            file.unlink()
        sub.rmdir()
    with pytest.raises(BraverError, match=r"missing its T2 image"):
        discover(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BraverError, match="is empty") as error:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(error.value)


def test_missing_folder(tmp_path):
    with pytest.raises(BraverError, match="does not exist"):
        discover(tmp_path / "nope")


def test_unknown_layout(tmp_path):
    (tmp_path / "scan_a.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BraverError, match="does not look like any dataset layout") as error:
        discover(tmp_path)
    assert "scan_a.nii.gz" in str(error.value) and "--format" in str(error.value)


def test_mixed_layouts(tmp_path):
    write_brats2021(tmp_path, "BraTS2021_00001")
    write_brats2023(tmp_path, "BraTS-GLI-00001-000")
    with pytest.raises(BraverError, match="mixes dataset layouts"):
        discover(tmp_path)


def test_bad_dataset_json(tmp_path):
    task = write_msd_brain(tmp_path)
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(BraverError, match="could not be read as JSON"):
        discover(task)


def test_brats2013_raw_and_n4itk_files_read_the_raw_one_and_say_so(tmp_path):
    write_brats2013(tmp_path, "HG/0001", seed=1, n4itk=("t1", "t1c"))
    write_brats2013(tmp_path, "HG/0002", seed=2, ids=60000)
    dataset = discover(tmp_path)  # before: "holds two t1 files"
    case = dataset.cases[0]
    assert [p.name for p in case.images[:2]] == [
        "VSD.Brain.XX.O.MR_T1.54513.mha",
        "VSD.Brain.XX.O.MR_T1c.54514.mha",
    ]
    assert case.n4_corrected == ()
    assert len(dataset.notes) == 2 and dataset.cases[1].notes == ()
    assert dataset.notes[0].startswith("0001: T1 is there raw (VSD.Brain.XX.O.MR_T1.54513.mha)")
    assert "VSD.Brain.XX.O.MR_T1.54513_N4ITK.mha" in dataset.notes[0]
    assert "reading the raw file" in dataset.notes[0]


def test_brats2013_only_n4itk_file_is_read_without_a_second_n4(tmp_path):
    write_brats2013(tmp_path, "HG/0001", seed=1, n4itk=("t1c",), raw=False)
    dataset = discover(tmp_path)
    case = dataset.cases[0]
    assert case.images[1].name == "VSD.Brain.XX.O.MR_T1c.54514_N4ITK.mha"
    assert case.n4_corrected == ("t1c",)
    assert dataset.notes == [
        "0001: T1c is there only N4-corrected (VSD.Brain.XX.O.MR_T1c.54514_N4ITK.mha); "
        "reading it without a second N4"
    ]
    raw = read_case(case)
    channels, _ = brain_arrays(1)
    inside = channels["t1c"] != 0
    np.testing.assert_array_equal(
        raw.channels[1][inside], channels["t1c"][inside].astype(np.int16) + 1
    )


def test_brats2013_two_raw_files_of_one_modality_still_stop(tmp_path):
    folder = write_brats2013(tmp_path, "HG/0001", seed=1)
    stem = "VSD.Brain.XX.O.MR_T2.54515"
    copy = folder / stem / f"{stem}.copy.mha"
    copy.write_bytes((folder / stem / f"{stem}.mha").read_bytes())
    with pytest.raises(BraverError, match="holds two t2 files"):
        discover(tmp_path)

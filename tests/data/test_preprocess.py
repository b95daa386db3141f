"""Preprocessing values, geometry, the exact way back, the cache, resumability and bad input."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from fixture_layouts import (
    BOX,
    LPS,
    brain_arrays,
    save,
    write_brats2021,
    write_brats2023,
    write_lits,
    write_msd_brain,
)

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.data.preprocess import (
    PrepareSettings,
    fingerprint,
    prepare_dataset,
    preprocess_case,
    restore_to_original,
)
from braver.errors import BraverError

# the fixture's foreground box BOX = X 1:6, Y 2:7, Z 1:5 in an 8 x 8 x 6 LPS file; canonical
# (RAS) flips X and Y, so the box becomes X 2:7, Y 1:6 and in (Z, Y, X) order:
CANONICAL_BOX = [[1, 5], [1, 6], [2, 7]]


def lps_to_canonical(array):
    """(X, Y, Z) in the LPS fixture grid → canonical (Z, Y, X)."""
    return array[::-1, ::-1, :].transpose(2, 1, 0)


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


def test_spacing_follows_the_canonical_axes(tmp_path):
    affine = np.diag([-0.8, -0.9, 2.5, 1.0])
    channels, label = brain_arrays(0)
    folder = tmp_path / "c_1"
    for name, key in (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair")):
        save(folder / f"c_1_{key}.nii.gz", channels[name], affine)
    meta = preprocess_case(discover(tmp_path).cases[0]).meta
    assert meta["spacing_zyx"] == pytest.approx([2.5, 0.9, 0.8])


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


def test_msd_brain_4d_and_its_labels(tmp_path):
    task = write_msd_brain(tmp_path)
    prepared = preprocess_case(discover(task).cases[0])
    assert prepared.meta["channels"] == ["t1", "t1c", "t2", "flair"]
    assert prepared.meta["channel_stats"][3]["clip_low"] >= 4000  # FLAIR came from volume 0
    assert prepared.meta["source"]["volume_index"] == [1, 2, 3, 0]
    assert set(np.unique(prepared.label).tolist()) == {0, 1, 2, 3}


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


# --- the cache -------------------------------------------------------------------------------


def test_prepare_writes_a_readable_cache(brats2021, tmp_path):
    report = prepare_dataset(brats2021, tmp_path / "cache", progress=False)
    assert [o.status for o in report.outcomes] == ["prepared", "prepared"]
    cache = Cache.open(tmp_path / "cache")
    assert cache.case_ids == ["BraTS2021_00001", "BraTS2021_00002"]
    assert cache.channels == ["t1", "t1c", "t2", "flair"]
    summary = cache.summary
    assert summary["format"] == "brats2021" and summary["modality"] == "mri"
    assert summary["mean"] == pytest.approx([0, 0, 0, 0], abs=1e-6)
    assert summary["std"] == pytest.approx([1, 1, 1, 1], abs=1e-6)
    assert sum(summary["class_frequencies"]) == pytest.approx(1.0)
    assert summary["class_counts"][0] > 0 and summary["settings"]["clip_percentiles"] == [1.0, 99.0]
    case = cache.case("BraTS2021_00001")
    assert case.image.dtype == np.float16 and case.image.shape == (4, 4, 5, 5)
    assert isinstance(case.image, np.memmap)
    assert case.label.dtype == np.uint8
    expected = preprocess_case(discover(brats2021).cases[0])
    np.testing.assert_array_equal(case.image, expected.image.astype(np.float16))
    assert case.meta["fingerprint"] == fingerprint(discover(brats2021).cases[0], PrepareSettings())


def test_unlabelled_cases_are_prepared_without_label(tmp_path):
    write_brats2023(tmp_path / "data", "BraTS-GLI-00009-000", label=False)
    prepare_dataset(tmp_path / "data", tmp_path / "cache", progress=False)
    cache = Cache.open(tmp_path / "cache")
    case = cache.case("BraTS-GLI-00009-000")
    assert case.label is None and not case.has_label and case.meta["class_counts"] is None
    assert cache.summary["labelled_cases"] == 0


def test_resumable(brats2021, tmp_path):
    out = tmp_path / "cache"
    prepare_dataset(brats2021, out, progress=False)
    again = prepare_dataset(brats2021, out, progress=False)
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert again.skipped[0].reason == "up to date"
    # a source file changes (mtime): only that case is prepared again
    flair = brats2021 / "BraTS2021_00002" / "BraTS2021_00002_flair.nii.gz"
    stat = flair.stat()
    os.utime(flair, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = prepare_dataset(brats2021, out, progress=False)
    assert [o.status for o in third.outcomes] == ["skipped", "prepared"]
    # other settings: everything again
    fourth = prepare_dataset(
        brats2021, out, PrepareSettings(clip_percentiles=(2, 98)), progress=False
    )
    assert [o.status for o in fourth.outcomes] == ["prepared", "prepared"]
    assert Cache.open(out).summary["settings"]["clip_percentiles"] == [2.0, 98.0]


def test_two_workers_write_the_same_cache(brats2021, tmp_path):
    write_brats2021(brats2021, "BraTS2021_00003", seed=3)
    one = prepare_dataset(brats2021, tmp_path / "one", workers=1, progress=False)
    two = prepare_dataset(brats2021, tmp_path / "two", workers=2, progress=False)
    assert not one.failed and not two.failed
    for case_id in Cache.open(tmp_path / "one").case_ids:
        a = Cache.open(tmp_path / "one").case(case_id)
        b = Cache.open(tmp_path / "two").case(case_id)
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.label, b.label)
    assert Cache.open(tmp_path / "two").case_ids == [
        "BraTS2021_00001",
        "BraTS2021_00002",
        "BraTS2021_00003",
    ]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_case_is_reported_and_the_others_proceed(brats2021, tmp_path, workers):
    write_brats2021(brats2021, "BraTS2021_00003", seed=3)
    broken = brats2021 / "BraTS2021_00002" / "BraTS2021_00002_t2.nii.gz"
    blob = broken.read_bytes()
    broken.write_bytes(blob[: len(blob) // 2])
    out = tmp_path / "cache"
    report = prepare_dataset(brats2021, out, workers=workers, progress=False)
    assert [o.status for o in report.outcomes] == ["prepared", "failed", "prepared"]
    assert str(broken) in report.failed[0].reason
    assert "corrupt or truncated" in report.failed[0].reason
    summary = Cache.open(out).summary
    assert summary["cases"] == ["BraTS2021_00001", "BraTS2021_00003"]
    assert list(summary["failed"]) == ["BraTS2021_00002"]
    # nothing half-written: no folder (or temporary folder) for the failed case
    assert sorted(p.name for p in (out / "cases").iterdir()) == [
        "BraTS2021_00001",
        "BraTS2021_00003",
    ]
    table = report.table()
    assert table.row_count == 1


def test_report_table_folds_many_skipped_cases(tmp_path):
    from braver.data.preprocess import CaseOutcome, PrepareReport

    report = PrepareReport(tmp_path)
    report.outcomes = [CaseOutcome(f"c{i}", "skipped", "up to date") for i in range(30)]
    report.outcomes.append(CaseOutcome("bad", "failed", "x: could not be read."))
    table = report.table(max_skipped=5)
    assert table.row_count == 5 + 1 + 1


def test_an_interrupted_write_leaves_nothing(brats2021, tmp_path, monkeypatch):
    import braver.data.cache as cache_module

    real_save = np.save
    calls = []

    def save_then_fail(path, array, *args, **kwargs):
        calls.append(path)
        real_save(path, array, *args, **kwargs)
        if len(calls) == 2:  # after image.npy and label.npy of the first case
            raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", save_then_fail)
    report = prepare_dataset(brats2021, tmp_path / "cache", progress=False)
    assert report.outcomes[0].status == "failed" and "disk full" in report.outcomes[0].reason
    assert report.outcomes[1].status == "prepared"
    assert sorted(p.name for p in (tmp_path / "cache" / "cases").iterdir()) == ["BraTS2021_00002"]


def test_settings_round_trip_and_validation():
    settings = PrepareSettings(n4=True, hu_window=(-150, 250))
    assert PrepareSettings.from_dict(settings.to_dict()) == settings
    with pytest.raises(BraverError, match="unknown preprocessing settings"):
        PrepareSettings.from_dict({"nope": 1})
    with pytest.raises(BraverError, match="clip percentiles"):
        PrepareSettings(clip_percentiles=(99, 1))
    with pytest.raises(BraverError, match="HU window"):
        PrepareSettings(hu_window=(300, -200))


def test_n4_settings_are_checked_against_the_dataset(brats2021, tmp_path):
    settings = PrepareSettings(n4=True, n4_channels=("t1", "adc"))
    with pytest.raises(BraverError, match=r"N4 channels adc .*choose --n4-channels among t1, t1c"):
        prepare_dataset(brats2021, tmp_path / "cache", settings, progress=False)
    assert not (tmp_path / "cache").exists()  # refused before anything is written


# --- bad input inside a case -----------------------------------------------------------------


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

"""A dataset → the cache: contents, resumability, workers, failures, settings."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from fixture_layouts import (
    write_brats2013,
    write_brats2021,
    write_brats2023,
    write_lits,
)

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.errors import BraverError
from braver.preprocess import (
    PrepareSettings,
    fingerprint,
    prepare_dataset,
    preprocess_case,
)


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
    from braver.preprocess import CaseOutcome, PrepareReport

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
    # not a pair of numbers: one sentence, not a ValueError / IndexError from unpacking
    for bad in ("x", [1], [1, "a"], None, 5, [1, 2, 3]):
        with pytest.raises(BraverError, match=r"HU window .* must be two numbers \[low, high\]"):
            PrepareSettings(hu_window=bad)
    with pytest.raises(BraverError, match=r"clip percentiles \[1, 'b'\] must be two numbers"):
        PrepareSettings(clip_percentiles=[1, "b"])
    assert PrepareSettings(n4_channels="t1").n4_channels == ("t1",)  # one name, not letters


def test_a_recipes_bad_prepare_pair_names_the_recipe_file():
    from braver.recipe import load_recipe, shipped_recipe

    with pytest.raises(BraverError, match=r"brain.toml: \[prepare\]: HU window \[1\] must be two"):
        load_recipe(shipped_recipe("brain"), ["prepare.hu_window=[1]"])


def test_n4_settings_are_checked_against_the_dataset(brats2021, tmp_path):
    settings = PrepareSettings(n4=True, n4_channels=("t1", "adc"))
    with pytest.raises(BraverError, match=r"N4 channels adc .*choose --n4-channels among t1, t1c"):
        prepare_dataset(brats2021, tmp_path / "cache", settings, progress=False)
    assert not (tmp_path / "cache").exists()  # refused before anything is written


def test_n4_by_default_on_mri_with_its_time_in_the_report_and_the_bar(brats2021, tmp_path):
    from rich.console import Console

    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    report = prepare_dataset(brats2021, tmp_path / "cache", console=console, workers=1)
    assert [o.status for o in report.outcomes] == ["prepared", "prepared"]
    assert all(0 < o.n4_seconds < o.seconds for o in report.prepared)
    assert re.search(r"N4 \d+ s of \d+ s", console.file.getvalue())
    summary = Cache.open(tmp_path / "cache").summary
    assert summary["settings"]["n4"] is None and summary["preprocess_version"] == 2


def test_each_slow_step_is_announced(brats2021):
    steps = []
    preprocess_case(
        discover(brats2021).cases[0], PrepareSettings(target_spacing_mm=0.5), steps.append
    )
    assert steps == ["resample to 0.5 mm", "N4 t1", "N4 t1c"]


def test_ct_gets_no_n4_and_asking_for_it_is_an_error(tmp_path):
    write_lits(tmp_path / "ct")
    report = prepare_dataset(tmp_path / "ct", tmp_path / "cache", progress=False)
    assert not report.failed and report.prepared[0].n4_seconds == 0
    with pytest.raises(BraverError, match="N4 bias-field correction is for MRI"):
        prepare_dataset(
            tmp_path / "ct", tmp_path / "cache", PrepareSettings(n4=True), progress=False
        )


def test_layout_notes_reach_the_report_and_the_summary(tmp_path):
    write_brats2013(tmp_path / "data", "HG/0001", seed=1, n4itk=("t1",))
    report = prepare_dataset(tmp_path / "data", tmp_path / "cache", progress=False)
    assert len(report.notes) == 1 and "reading the raw file" in report.notes[0]
    assert Cache.open(tmp_path / "cache").summary["notes"] == report.notes
    assert Cache.open(tmp_path / "cache").case("0001").meta["notes"] == report.notes


def test_new_settings_round_trip_and_old_ones_still_load():
    settings = PrepareSettings(ct_normalisation="zscore", target_spacing_mm=1.5, n4=False)
    assert PrepareSettings.from_dict(settings.to_dict()) == settings
    # a run recorded before these keys existed: no N4 asked, no resampling, [0, 1] CT
    old = PrepareSettings.from_dict({"n4": False, "n4_channels": ["t1", "t1c"], "crop_margin": 0})
    assert old.target_spacing_mm is None and old.ct_normalisation == "unit" and old.n4 is False
    with pytest.raises(BraverError, match="target_spacing_mm = -1.0 must be a positive"):
        PrepareSettings(target_spacing_mm=-1.0)

"""What ``braver data inspect`` reads off a case as it is on disk, and the class balance."""

from __future__ import annotations

import numpy as np
import pytest
from fixture_layouts import brain_arrays

from braver.data.formats import discover
from braver.preprocess import class_imbalance, describe_case, save_montage


def test_describe_case_reads_the_file_grid(brats2021):
    case = discover(brats2021).cases[0]
    description = describe_case(case)
    channels, label = brain_arrays(1)
    assert description["shape"] == [8, 8, 6] and description["axcodes"] == "LPS"
    assert description["spacing"] == [1.0, 1.0, 1.0] and description["dtype"] == "int16"
    assert description["ranges"][3] == [0.0, float(channels["flair"].astype(np.int16).max())]
    values, counts = np.unique(label, return_counts=True)
    assert description["label_counts"] == dict(zip(values.tolist(), counts.tolist(), strict=True))


def test_class_imbalance_over_cases(brats2021):
    dataset = discover(brats2021)
    rows = class_imbalance([describe_case(c) for c in dataset.cases], dataset.scheme)
    _, label = brain_arrays(1)
    per_case = {v: int((label == v).sum()) for v in (0, 1, 2, 4)}  # both cases share the label
    assert [r["value"] for r in rows] == [0, 1, 2, 4]
    assert [r["voxels"] for r in rows] == [2 * per_case[v] for v in (0, 1, 2, 4)]
    tumour = sum(per_case[v] for v in (1, 2, 4))
    assert rows[2]["fraction_of_labelled"] == pytest.approx(per_case[2] / tumour)
    assert rows[0]["fraction_of_labelled"] is None
    assert rows[3]["background_ratio"] == pytest.approx(per_case[0] / per_case[4])


def test_montage_is_a_png(brats2021, tmp_path):
    target = save_montage(discover(brats2021).cases, tmp_path / "montage.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

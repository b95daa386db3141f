"""Preprocessing: a raw case → canonical, clipped, normalised, cropped arrays, and back again.

- ``settings``: ``PrepareSettings`` (what prepare does; part of each case's fingerprint);
- ``geometry``: file grid ↔ canonical RAS (Z, Y, X), spacing, foreground and crop box;
- ``intensity``: percentile clip, N4, z-score (MRI), HU window (CT);
- ``case``: read and check one case, preprocess it in memory;
- ``restore``: undo the geometry of a case (predictions back on the input grid);
- ``pipeline``: a dataset → the cache, parallel, resumable and atomic;
- ``inspect``: what ``braver data inspect`` shows (facts per case, class balance, montage).
"""

from braver.preprocess.case import (
    PreparedCase,
    RawCase,
    preprocess_case,
    preprocess_raw,
    read_case,
)
from braver.preprocess.geometry import from_canonical, to_canonical
from braver.preprocess.inspect import class_imbalance, describe_case, save_montage
from braver.preprocess.pipeline import (
    CaseOutcome,
    PrepareReport,
    check_n4,
    dataset_summary,
    default_workers,
    fingerprint,
    prepare_dataset,
)
from braver.preprocess.restore import restore_to_original
from braver.preprocess.settings import PREPROCESS_VERSION, PrepareSettings

__all__ = [
    "PREPROCESS_VERSION",
    "PrepareSettings",
    "PreparedCase",
    "PrepareReport",
    "CaseOutcome",
    "RawCase",
    "read_case",
    "preprocess_case",
    "preprocess_raw",
    "prepare_dataset",
    "check_n4",
    "restore_to_original",
    "fingerprint",
    "dataset_summary",
    "to_canonical",
    "from_canonical",
    "default_workers",
    "describe_case",
    "class_imbalance",
    "save_montage",
]

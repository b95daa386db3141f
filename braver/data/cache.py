"""The preprocessed cache: one folder per case with memory-mappable arrays and its meta.

Layout (written by ``braver data prepare``, read by training, inference and evaluation)::

    CACHE/
      summary.json            dataset-wide: label scheme, channels, per-channel mean/std,
                              class voxel counts and frequencies, case ids, settings
      cases/<case_id>/
        image.npy             float16, (C, Z, Y, X): channels first, Z = axial slice index,
                              in canonical RAS orientation, cropped to the foreground box
        label.npy             uint8 class indices (Z, Y, X); absent for unlabelled cases
        meta.json             see ``CaseMeta``

Arrays are opened with ``np.load(mmap_mode="r")``, so memory does not grow with the number
of cases. Each case folder is written under a temporary name and renamed into place, so a
folder that exists is complete.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from braver.atomic import atomic_path, write_json
from braver.data.labels import LabelScheme
from braver.errors import BraverError

CACHE_VERSION = 1
SUMMARY = "summary.json"


@dataclass
class CachedCase:
    """One preprocessed case: memory-mapped image and label plus its meta dictionary."""

    case_id: str
    folder: Path

    @cached_property
    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    @cached_property
    def image(self) -> np.ndarray:
        """float16 (C, Z, Y, X), memory-mapped."""
        return np.load(self.folder / "image.npy", mmap_mode="r")

    @cached_property
    def label(self) -> np.ndarray | None:
        """uint8 class indices (Z, Y, X), memory-mapped; None when the case has no label."""
        path = self.folder / "label.npy"
        return np.load(path, mmap_mode="r") if path.exists() else None

    @property
    def has_label(self) -> bool:
        return (self.folder / "label.npy").exists()


@dataclass
class Cache:
    """A prepared cache folder: the summary and its cases in a stable order."""

    root: Path
    summary: dict

    @classmethod
    def open(cls, root: str | Path) -> Cache:
        root = Path(root)
        path = root / SUMMARY
        if not path.exists():
            raise BraverError(
                "is not a prepared braver cache (no summary.json)",
                root,
                "run 'braver data prepare DATA --out CACHE' first",
            )
        summary = json.loads(path.read_text())
        if summary.get("cache_version") != CACHE_VERSION:
            raise BraverError(
                f"was prepared by another braver cache version ({summary.get('cache_version')})",
                root,
                "prepare it again with 'braver data prepare'",
            )
        return cls(root, summary)

    @property
    def scheme(self) -> LabelScheme:
        return LabelScheme.from_json(self.summary["label_scheme"])

    @property
    def channels(self) -> list[str]:
        return list(self.summary["channels"])

    @property
    def case_ids(self) -> list[str]:
        return list(self.summary["cases"])

    def case(self, case_id: str) -> CachedCase:
        folder = self.root / "cases" / case_id
        if not (folder / "image.npy").exists():
            raise BraverError(
                f"case {case_id!r} is missing from the cache",
                self.root,
                "run 'braver data prepare' again to complete it",
            )
        return CachedCase(case_id, folder)

    def __iter__(self) -> Iterator[CachedCase]:
        return (self.case(c) for c in self.case_ids)

    def __len__(self) -> int:
        return len(self.case_ids)


def case_folder(root: str | Path, case_id: str) -> Path:
    return Path(root) / "cases" / case_id


def write_case(
    root: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray | None,
    meta: dict,
) -> Path:
    """Write one case folder atomically. ``image`` (C, Z, Y, X) → float16, ``label`` → uint8."""
    target = case_folder(root, case_id)
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        np.save(tmp / "image.npy", np.ascontiguousarray(image, dtype=np.float16))
        if label is not None:
            np.save(tmp / "label.npy", np.ascontiguousarray(label, dtype=np.uint8))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def write_summary(root: str | Path, summary: dict) -> Path:
    """Write ``summary.json`` atomically, stamping the cache version."""
    return write_json(Path(root) / SUMMARY, {"cache_version": CACHE_VERSION, **summary})

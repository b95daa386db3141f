"""Patch centres per epoch: ``balanced`` (equal count per class) and ``natural`` sampling.

Havaei et al. (2017, section 3.2) train in two phases: first on patches whose centre classes
are equiprobable, then on patches drawn as the data is. A centre is a row
``(case, z, y, x)`` of int64: the case's position in the sampler, the axial slice, the row
and the column of the labelled pixel in the cached (cropped) volume.

Sampling happens inside each case's foreground (the voxels that are non-zero in any channel,
or labelled as tumour); centres near the volume's border are kept, and the patch gatherer
pads them with zeros (``braver.data.blocks``), so no class is ever dropped for being close
to the edge.

Per-class voxel lists are computed once per case and stored beside the cache
(``CACHE/index/<case_id>.npy``, flat voxel indices grouped by class, memory-mapped), so
sampling an epoch touches a few pages per case and memory does not grow with the number of
cases.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from braver.atomic import atomic_path
from braver.data.cache import Cache, CachedCase
from braver.errors import BraverError

INDEX_DIR = "index"
INDEX_VERSION = 1


@dataclass
class CaseIndex:
    """Foreground voxels of one case, grouped by class.

    ``order[offsets[c]:offsets[c + 1]]`` are the flat (Z, Y, X) indices of class ``c``.
    """

    case_id: str
    shape: tuple[int, int, int]
    order: np.ndarray  # int32 or int64, possibly memory-mapped
    offsets: np.ndarray  # (K + 1,) int64

    @property
    def class_counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def foreground_count(self) -> int:
        return int(self.offsets[-1])

    def class_voxels(self, cls: int) -> np.ndarray:
        return self.order[self.offsets[cls] : self.offsets[cls + 1]]


def build_case_index(label: np.ndarray, image: np.ndarray, num_classes: int) -> CaseIndex:
    """Group the foreground voxels of one case by class (the expensive step, once per case)."""
    label = np.asarray(label)
    foreground = np.zeros(label.shape, dtype=bool)
    for channel in image:  # one channel at a time keeps memory at one volume
        foreground |= np.asarray(channel) != 0
    foreground |= label > 0
    flat = np.flatnonzero(foreground)
    classes = label.reshape(-1)[flat]
    if classes.size and int(classes.max()) >= num_classes:
        raise ValueError(f"label has class {int(classes.max())} but the scheme has {num_classes}")
    order_in_fg = np.argsort(classes, kind="stable")
    dtype = np.int32 if label.size < 2**31 else np.int64
    order = flat[order_in_fg].astype(dtype)
    counts = np.bincount(classes, minlength=num_classes)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return CaseIndex("", tuple(int(s) for s in label.shape), order, offsets)


def case_index(case: CachedCase, num_classes: int, folder: Path | None = None) -> CaseIndex:
    """The class index of a cached case, read from ``folder`` or built once and stored there."""
    if folder is not None:
        order_path = folder / f"{case.case_id}.npy"
        meta_path = folder / f"{case.case_id}.json"
        label_path = case.folder / "label.npy"
        if (
            order_path.exists()
            and meta_path.exists()
            and meta_path.stat().st_mtime >= label_path.stat().st_mtime
        ):
            meta = json.loads(meta_path.read_text())
            if meta.get("version") == INDEX_VERSION and len(meta["offsets"]) == num_classes + 1:
                return CaseIndex(
                    case.case_id,
                    tuple(meta["shape"]),
                    np.load(order_path, mmap_mode="r"),
                    np.asarray(meta["offsets"], dtype=np.int64),
                )
    if case.label is None:
        raise ValueError(f"case {case.case_id} has no label to sample from")
    index = build_case_index(case.label, case.image, num_classes)
    index.case_id = case.case_id
    if folder is not None and _writable(folder):
        with atomic_path(folder / f"{case.case_id}.npy") as tmp:
            np.save(tmp, index.order)
        meta = {"version": INDEX_VERSION, "shape": index.shape, "offsets": index.offsets.tolist()}
        with atomic_path(folder / f"{case.case_id}.json") as tmp:
            tmp.write_text(json.dumps(meta))
        index.order = np.load(folder / f"{case.case_id}.npy", mmap_mode="r")
    return index


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


class PatchSampler:
    """Draws patch centres from a set of indexed cases.

    ``balanced``: the same number of centres for every class present (``n // K`` each, the
    remainder to the first classes), each drawn uniformly among that class's voxels of all
    cases. ``natural``: uniformly among all foreground voxels of all cases, so classes come in
    the data's own proportions. Both return rows ``(case, z, y, x)`` in random order.
    """

    def __init__(self, indices: Sequence[CaseIndex], num_classes: int):
        if not indices:
            raise ValueError("no cases to sample from")
        self.indices = list(indices)
        self.num_classes = num_classes
        self.shapes = np.array([ix.shape for ix in self.indices], dtype=np.int64)
        self.counts = np.stack([ix.class_counts for ix in self.indices])  # (cases, K)
        self.case_ids = [ix.case_id for ix in self.indices]

    @classmethod
    def from_cache(
        cls, cache: Cache, case_ids: Sequence[str] | None = None, num_classes: int | None = None
    ) -> PatchSampler:
        num_classes = num_classes or cache.scheme.num_classes
        folder = cache.root / INDEX_DIR
        ids = cache.case_ids if case_ids is None else list(case_ids)
        return cls([case_index(cache.case(c), num_classes, folder) for c in ids], num_classes)

    @property
    def class_totals(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    @property
    def present_classes(self) -> list[int]:
        return [c for c in range(self.num_classes) if self.class_totals[c] > 0]

    def sample(self, n: int, mode: str, rng: np.random.Generator | int) -> np.ndarray:
        """``n`` centres (n, 4) int64 drawn ``balanced`` or ``natural``."""
        rng = np.random.default_rng(rng)
        if mode == "balanced":
            present = self.present_classes
            missing = sorted(set(range(self.num_classes)) - set(present))
            if missing:
                warnings.warn(
                    f"classes {missing} have no voxels in these cases; balancing the others",
                    stacklevel=2,
                )
            per_class = np.full(len(present), n // len(present))
            per_class[: n % len(present)] += 1
            parts = [self._draw_class(c, m, rng) for c, m in zip(present, per_class, strict=True)]
            centres = np.concatenate(parts) if parts else np.zeros((0, 4), np.int64)
        elif mode == "natural":
            centres = self._draw_natural(n, rng)
        else:
            raise ValueError(f"sampling must be 'balanced' or 'natural', not {mode!r}")
        return centres[rng.permutation(len(centres))]

    def _draw_class(self, cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = self.counts[:, cls]
        ranks = rng.integers(0, counts.sum(), size=n)
        return self._locate(ranks, counts, lambda i: self.indices[i].offsets[cls])

    def _draw_natural(self, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = self.counts.sum(axis=1)
        ranks = rng.integers(0, counts.sum(), size=n)
        return self._locate(ranks, counts, lambda i: 0)

    def _locate(self, ranks: np.ndarray, counts: np.ndarray, start) -> np.ndarray:
        """Global ranks among ``counts`` voxels per case → (case, z, y, x) rows."""
        bounds = np.cumsum(counts)
        case = np.searchsorted(bounds, ranks, side="right")
        within = ranks - (bounds[case] - counts[case])
        flat = np.empty(len(ranks), dtype=np.int64)
        for i in np.unique(case):  # one vectorised lookup per case, not per centre
            rows = case == i
            flat[rows] = self.indices[i].order[start(i) + within[rows]]
        shape = self.shapes[case]
        x = flat % shape[:, 2]
        y = (flat // shape[:, 2]) % shape[:, 1]
        z = flat // (shape[:, 2] * shape[:, 1])
        return np.stack([case, z, y, x], axis=1).astype(np.int64)


def split_cases(
    case_ids: Sequence[str],
    fraction: float,
    seed: int,
    min_valid: int = 1,
    fold: int | None = None,
    folds: int = 5,
) -> tuple[list[str], list[str]]:
    """Seeded split of case ids into (train, valid); never by patch.

    At least ``min_valid`` validation cases when ``fraction > 0`` and at least one training case.
    With ``fold`` (0 … ``folds`` − 1), k-fold cross-validation instead: the cases, in the seed's
    order, are cut into ``folds`` parts as even as can be (sizes differ by one at most) and part
    ``fold`` validates; over the folds every case is validated exactly once, and ``fraction``
    and ``min_valid`` play no part.
    """
    ids = list(case_ids)
    perm = np.random.default_rng(seed).permutation(len(ids))
    if fold is not None:
        if folds < 2 or not 0 <= fold < folds:
            raise BraverError(
                f"fold {fold} of {folds} folds is not a fold",
                None,
                f"use 2 or more folds and a fold from 0 to {max(folds, 2) - 1}",
            )
        if folds > len(ids):
            raise BraverError(
                f"{folds} folds need as many labelled cases; there are {len(ids)}",
                None,
                f"use at most {len(ids)} folds" if len(ids) >= 2 else "add labelled cases",
            )
        valid = {ids[i] for i in np.array_split(perm, folds)[fold]}
        return [c for c in ids if c not in valid], [c for c in ids if c in valid]
    if len(ids) < 2 or fraction <= 0:
        return ids, []
    n_valid = min(max(int(round(fraction * len(ids))), min_valid), len(ids) - 1)
    valid = {ids[i] for i in perm[:n_valid]}
    return [c for c in ids if c not in valid], [c for c in ids if c in valid]

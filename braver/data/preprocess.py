"""Preprocessing: a raw case → canonical, clipped, normalised, cropped arrays, and back again.

The steps (``preprocess_case``), in order:

1. read every channel in the file's voxel grid and check shapes, finiteness and label values;
2. foreground: MRI, any channel nonzero (BraTS is skull-stripped, so this is the brain);
   CT, a body mask (HU above ``body_threshold_hu``; the crop box follows its largest
   connected part so a scanner table does not widen it);
3. canonical orientation (RAS, as ``nibabel.as_closest_canonical``), arrays as (Z, Y, X);
4. crop to the bounding box of the foreground and of every labelled voxel, so that the
   crop never loses a label and ``restore_to_original`` is an exact inverse;
5. MRI: optional N4 bias-field correction (SimpleITK) of T1 and T1c inside the foreground,
   clipping at the 1st/99th percentile of the foreground, z-score inside the foreground;
   CT: clip to the HU window ``hu_window`` and scale it to [0, 1] (air and everything below
   the window → 0, the same value as padding);
6. every voxel outside the foreground set to 0.

``prepare_dataset`` runs this over a dataset in parallel and writes the cache (see
``braver.data.cache``), skipping cases whose fingerprint (source files' size and mtime, the
settings, the preprocessing version) matches what the cache already holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from braver.data.cache import case_folder, write_case, write_summary
from braver.data.formats import Case, Dataset, discover
from braver.data.io import read_volume
from braver.data.labels import LabelScheme
from braver.errors import BraverError

# Bump when the arrays written for the same input and settings change.
PREPROCESS_VERSION = 1

# Percentiles are taken from at most this many foreground voxels (an even subsample); the
# 1st/99th percentile of 2^20 samples is within a few hundredths of a percent of the exact one.
_PERCENTILE_SAMPLES = 1 << 20


@dataclass
class PrepareSettings:
    """What ``braver data prepare`` does to every case; part of each case's fingerprint."""

    clip_percentiles: tuple[float, float] = (1.0, 99.0)  # MRI, of foreground intensities
    n4: bool = False  # N4 bias-field correction (MRI only)
    n4_channels: tuple[str, ...] = ("t1", "t1c")
    n4_shrink: int = 4  # N4 runs on a grid shrunk by this factor; the field is applied in full
    hu_window: tuple[float, float] = (-200.0, 300.0)  # CT: clipped to this and scaled to [0, 1]
    body_threshold_hu: float = -500.0  # CT foreground: voxels above this (air is about -1000)
    crop_margin: int = 0  # voxels kept around the foreground box on every side

    def __post_init__(self) -> None:
        self.clip_percentiles = tuple(float(p) for p in self.clip_percentiles)
        self.hu_window = tuple(float(v) for v in self.hu_window)
        self.n4_channels = tuple(self.n4_channels)
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            raise BraverError(
                f"clip percentiles {list(self.clip_percentiles)} must satisfy 0 <= low < high <= 100"
            )
        if not self.hu_window[0] < self.hu_window[1]:
            raise BraverError(
                f"HU window {list(self.hu_window)} must be [low, high] with low < high"
            )
        if self.crop_margin < 0 or self.n4_shrink < 1:
            raise BraverError("crop_margin must be >= 0 and n4_shrink >= 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BraverError(
                f"unknown preprocessing settings {unknown}", None, f"known: {sorted(known)}"
            )
        return cls(**data)


@dataclass
class PreparedCase:
    """A case after preprocessing, in memory: image (C, Z, Y, X) float32, label (Z, Y, X) uint8."""

    image: np.ndarray
    label: np.ndarray | None
    meta: dict

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]


# --------------------------------------------------------------------------------------------
# Geometry


def _orientation(affine: np.ndarray) -> np.ndarray:
    import nibabel as nib

    return nib.orientations.io_orientation(affine)


def to_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """File grid (X, Y, Z, ...) → canonical RAS (Z, Y, X, ...), as a view where possible."""
    import nibabel as nib

    ras = nib.orientations.apply_orientation(array, ornt)
    return ras.transpose((2, 1, 0, *range(3, ras.ndim)))


def from_canonical(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Canonical RAS (Z, Y, X, ...) → file grid (X, Y, Z, ...); the inverse of ``to_canonical``."""
    import nibabel as nib

    ras = array.transpose((2, 1, 0, *range(3, array.ndim)))
    back = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return nib.orientations.apply_orientation(ras, back)


def _axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(affine))


def _bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """[[z0, z1], [y0, y1], [x0, x1]] (end exclusive) of the true voxels of a 3D mask."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def _union_box(a: list[list[int]] | None, b: list[list[int]] | None) -> list[list[int]] | None:
    if a is None or b is None:
        return a or b
    return [[min(p[0], q[0]), max(p[1], q[1])] for p, q in zip(a, b, strict=True)]


# --------------------------------------------------------------------------------------------
# Reading a case


@dataclass
class RawCase:
    """A case as read from disk: channels in the file's voxel grid, affine, label values."""

    case: Case
    channels: list[np.ndarray]
    affine: np.ndarray
    label: np.ndarray | None  # original label values, file grid

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.channels[0].shape[:3])


def read_case(case: Case) -> RawCase:
    """Read and check every file of ``case``: dimensions, shapes, finiteness, label values."""
    channels: list[np.ndarray] = []
    if case.volume_index is not None:
        volume = read_volume(case.images[0], allow_4d=True)
        data = volume.data
        needed = max(case.volume_index) + 1
        if data.ndim != 4 or data.shape[3] < needed:
            raise BraverError(
                f"has shape {tuple(data.shape)}, but {len(case.channels)} channels in one 4D file "
                f"were expected (volumes {list(case.volume_index)})",
                case.images[0],
                "check that this is the 4D image of the Decathlon task named by dataset.json",
            )
        channels = [data[..., i] for i in case.volume_index]
        reference = volume
    else:
        volumes = [read_volume(path) for path in case.images]
        reference = volumes[0]
        for channel, volume in zip(case.channels, volumes, strict=True):
            if volume.spatial_shape != reference.spatial_shape:
                raise BraverError(
                    f"the {channel.upper()} image has shape {volume.spatial_shape} but "
                    f"{reference.path.name} has {reference.spatial_shape}; all modalities of a "
                    "case must share one voxel grid",
                    volume.path,
                    "resample the modalities onto one grid (co-register them) before preparing",
                )
        channels = [v.data for v in volumes]
    label = None
    if case.label is not None:
        label_volume = read_volume(case.label, label=True)
        if label_volume.spatial_shape != reference.spatial_shape:
            raise BraverError(
                f"label shape {label_volume.spatial_shape} does not match the image shape "
                f"{reference.spatial_shape} of {reference.path.name}",
                case.label,
                "check that this segmentation belongs to this case (and was not resampled)",
            )
        label = label_volume.data
    return RawCase(case, channels, reference.affine, label)


# --------------------------------------------------------------------------------------------
# Preprocessing one case


def preprocess_case(case: Case, settings: PrepareSettings | None = None) -> PreparedCase:
    """Read and preprocess one case in memory (see the module docstring for the steps).

    Returns the image as float32 (C, Z, Y, X) and the label as uint8 class indices (Z, Y, X),
    both canonical RAS and cropped, with the meta dictionary described in braver.data.cache.
    """
    settings = settings or PrepareSettings()
    raw = read_case(case)
    return preprocess_raw(raw, settings)


def preprocess_raw(raw: RawCase, settings: PrepareSettings) -> PreparedCase:
    """``preprocess_case`` on a case already read into memory."""
    case = raw.case
    ornt = _orientation(raw.affine)
    foreground_file, box_mask_file = _foreground(raw, settings)
    foreground = to_canonical(foreground_file, ornt)
    box = _bounding_box(to_canonical(box_mask_file, ornt)) if box_mask_file is not None else None
    if box is None:
        box = _bounding_box(foreground)
    label_nonzero = None
    if raw.label is not None:
        label_nonzero = _bounding_box(to_canonical(raw.label != 0, ornt))
    box = _union_box(box, label_nonzero)
    if box is None:
        what = (
            "every voxel is 0" if case.modality == "mri" else "no voxel is above the body threshold"
        )
        raise BraverError(
            f"case {case.case_id} has no foreground ({what})",
            case.images[0],
            "check that the image is not blank",
        )
    canonical_shape = foreground.shape
    margin = settings.crop_margin
    box = [
        [max(0, lo - margin), min(n, hi + margin)]
        for (lo, hi), n in zip(box, canonical_shape, strict=True)
    ]
    crop = tuple(slice(lo, hi) for lo, hi in box)

    mask = np.ascontiguousarray(foreground[crop])
    outside = ~mask
    crop_shape = mask.shape
    image = np.empty((len(raw.channels), *crop_shape), dtype=np.float32)
    for index, channel in enumerate(raw.channels):
        image[index] = to_canonical(channel, ornt)[crop]

    spacing_zyx = _canonical_spacing(raw.affine, ornt)
    stats = []
    for index, name in enumerate(case.channels):
        volume = image[index]
        if case.modality == "ct":
            stats.append(_window_ct(volume, mask, outside, settings.hu_window))
        else:
            if settings.n4 and name in settings.n4_channels:
                volume[...] = _n4(volume, mask, spacing_zyx, settings.n4_shrink)
            stats.append(_zscore_mri(volume, mask, outside, settings.clip_percentiles, case, index))

    label = None
    class_counts = None
    if raw.label is not None:
        label = case.scheme.to_classes(
            np.ascontiguousarray(to_canonical(raw.label, ornt)[crop]), case.label
        )
        class_counts = [int(np.count_nonzero(label == k)) for k in range(case.scheme.num_classes)]

    meta = {
        "case_id": case.case_id,
        "format": case.format,
        "channels": list(case.channels),
        "modality": case.modality,
        "source": {
            "images": [str(p) for p in case.images],
            "label": str(case.label) if case.label is not None else None,
            "volume_index": list(case.volume_index) if case.volume_index is not None else None,
        },
        "affine": np.asarray(raw.affine).tolist(),
        "axcodes": _axcodes(raw.affine),
        "orientation": ornt.tolist(),
        "original_shape": list(raw.shape),
        "canonical_shape_zyx": [int(s) for s in canonical_shape],
        "crop_zyx": box,
        "shape_zyx": [int(s) for s in crop_shape],
        "spacing_zyx": spacing_zyx,
        "label_scheme": case.scheme.to_json(),
        "channel_stats": stats,
        "foreground_voxels": int(np.count_nonzero(mask)),
        "class_counts": class_counts,
        "settings": settings.to_dict(),
        "preprocess_version": PREPROCESS_VERSION,
    }
    return PreparedCase(image, label, meta)


def _foreground(raw: RawCase, settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground mask in the file grid, and (CT) the mask whose box gives the crop."""
    if raw.case.modality == "ct":
        body = raw.channels[0] > settings.body_threshold_hu
        return body, _largest_component_region(body)
    mask = raw.channels[0] != 0
    for channel in raw.channels[1:]:
        mask |= channel != 0
    return mask, None


def _largest_component_region(mask: np.ndarray) -> np.ndarray | None:
    """The largest connected part of ``mask`` (found on a coarse grid, so a box-accurate region)."""
    from scipy import ndimage

    step = max(1, int(round(min(mask.shape[:2]) / 128)))
    coarse = mask[::step, ::step, :]
    labels, count = ndimage.label(coarse)
    if count == 0:
        return None
    if count == 1:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    keep = labels == int(sizes.argmax())
    if step > 1:
        keep = np.repeat(np.repeat(keep, step, axis=0), step, axis=1)[
            : mask.shape[0], : mask.shape[1]
        ]
        # one coarse cell of slack on each side keeps the whole of the part inside its box
        keep = ndimage.binary_dilation(keep, iterations=step)
    return keep & mask


def _canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> list[float]:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras = np.empty(3)
    for file_axis, (ras_axis, _flip) in enumerate(ornt):
        ras[int(ras_axis)] = zooms[file_axis]
    return [float(ras[2]), float(ras[1]), float(ras[0])]


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, values.size // _PERCENTILE_SAMPLES)
    return values[::step] if step > 1 else values.copy()


def _percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low``/``high`` percentiles (nearest rank) of ``values`` via one partial sort."""
    sample = _sample(values)
    n = sample.size
    ranks = sorted({int(round(low / 100 * (n - 1))), int(round(high / 100 * (n - 1)))})
    sample.partition(ranks)
    return float(sample[int(round(low / 100 * (n - 1)))]), float(
        sample[int(round(high / 100 * (n - 1)))]
    )


def _mean_std_inplace(values: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of a float32 array, which is overwritten.

    Sums accumulate in float64 through numpy's buffered reduction, so no float64 copy of the
    array is made (``ndarray.std(dtype=float64)`` would make one).
    """
    if values.size == 0:
        return 0.0, 0.0
    mean = float(values.sum(dtype=np.float64)) / values.size
    values -= np.float32(mean)
    np.square(values, out=values)
    return mean, float(np.sqrt(values.sum(dtype=np.float64) / values.size))


def _zscore_mri(
    volume: np.ndarray,
    mask: np.ndarray,
    outside: np.ndarray,
    percentiles: tuple[float, float],
    case: Case,
    index: int,
) -> dict:
    foreground = volume[mask]
    if foreground.size == 0:
        raise BraverError(
            f"case {case.case_id} has no foreground voxels",
            case.images[0],
            "check that the image is not blank",
        )
    low, high = _percentiles(foreground, *percentiles)
    np.clip(foreground, low, high, out=foreground)
    mean, std = _mean_std_inplace(foreground)
    np.clip(volume, low, high, out=volume)
    volume -= np.float32(mean)
    volume *= np.float32(1.0 / std if std > 0 else 1.0)
    np.copyto(volume, 0, where=outside)
    return {
        "channel": case.channels[index],
        "clip_low": low,
        "clip_high": high,
        "raw_mean": mean,
        "raw_std": std,
        "mean": 0.0,
        "std": 1.0 if std > 0 else 0.0,
    }


def _window_ct(volume: np.ndarray, mask: np.ndarray, outside: np.ndarray, window) -> dict:
    low, high = window
    np.clip(volume, low, high, out=volume)
    raw_mean, raw_std = _mean_std_inplace(volume[mask])
    volume -= np.float32(low)
    volume *= np.float32(1.0 / (high - low))
    np.copyto(volume, 0, where=outside)
    return {
        "channel": "ct",
        "clip_low": low,
        "clip_high": high,
        "raw_mean": raw_mean,
        "raw_std": raw_std,
        "mean": (raw_mean - low) / (high - low),
        "std": raw_std / (high - low),
    }


def _n4(
    volume: np.ndarray, mask: np.ndarray, spacing_zyx: Sequence[float], shrink: int
) -> np.ndarray:
    """N4 bias-field correction (SimpleITK) of one (Z, Y, X) channel inside ``mask``.

    N4 is fitted on a grid shrunk by ``shrink`` (as the ITK examples do, for speed) and the
    fitted log field is evaluated on the full grid.
    """
    import SimpleITK as sitk

    positive = volume - min(float(volume[mask].min()), 0.0) + 1.0  # N4 needs positive values
    image = sitk.GetImageFromArray(positive.astype(np.float32, copy=False))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing_zyx)))
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = [shrink if n >= 4 * shrink else 1 for n in image.GetSize()]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask_image, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations([50, 50, 30])
    corrector.Execute(small, small_mask)
    log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(image))
    corrected = positive / np.exp(log_field, dtype=np.float32)
    return corrected.astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Back to the original geometry


def restore_to_original(array: np.ndarray, meta: dict, *, labels: bool = True) -> np.ndarray:
    """Put a cropped canonical prediction back into the file's voxel grid.

    ``labels=True``: ``array`` holds class indices (Z, Y, X) over the crop box (or over the
    whole canonical grid); returns the original label values (e.g. 0, 1, 2, 4) in the file's
    (X, Y, Z) grid, background outside the crop. ``labels=False``: ``array`` holds class
    probabilities (K, Z, Y, X); returns float32 (X, Y, Z, K) with background probability 1
    outside the crop.
    """
    canonical_shape = tuple(meta["canonical_shape_zyx"])
    crop = tuple(slice(lo, hi) for lo, hi in meta["crop_zyx"])
    crop_shape = tuple(hi - lo for lo, hi in meta["crop_zyx"])
    ornt = np.asarray(meta["orientation"], dtype=np.float64)
    spatial = tuple(array.shape[-3:])
    if spatial not in (crop_shape, canonical_shape):
        raise BraverError(
            f"array of spatial shape {spatial} fits neither the crop {crop_shape} nor the "
            f"canonical grid {canonical_shape} of case {meta['case_id']}",
            None,
            "pass the prediction made on this case's cached image",
        )
    if labels:
        if array.ndim != 3:
            raise BraverError(f"expected a (Z, Y, X) class map, got shape {array.shape}")
        full = np.zeros(canonical_shape, dtype=np.uint8)
        full[crop if spatial == crop_shape else ...] = array
        scheme = LabelScheme.from_json(meta["label_scheme"])
        return np.ascontiguousarray(scheme.to_values(from_canonical(full, ornt)))
    if array.ndim != 4:
        raise BraverError(f"expected (K, Z, Y, X) probabilities, got shape {array.shape}")
    probs = np.zeros((array.shape[0], *canonical_shape), dtype=np.float32)
    if spatial == crop_shape:
        probs[0] = 1.0
        probs[(slice(None), *crop)] = array
    else:
        probs[...] = array
    channels_last = probs.transpose(1, 2, 3, 0)  # (Z, Y, X, K)
    return np.ascontiguousarray(from_canonical(channels_last, ornt), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# A whole dataset → the cache


def fingerprint(case: Case, settings: PrepareSettings) -> str:
    """What a cached case was made from: source files (name, size, mtime), settings, version."""
    files = []
    for path in case.source_files:
        try:
            stat = path.stat()
        except OSError:
            raise BraverError("does not exist", path, "check the dataset folder") from None
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "files": files,
        "case_id": case.case_id,
        "format": case.format,
        "channels": list(case.channels),
        "volume_index": list(case.volume_index) if case.volume_index else None,
        "settings": settings.to_dict(),
        "version": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _cached_meta(out: Path, case_id: str) -> dict | None:
    folder = case_folder(out, case_id)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if (folder / "image.npy").exists() else None


@dataclass
class CaseOutcome:
    case_id: str
    status: str  # "prepared" | "skipped" | "failed"
    reason: str = ""
    seconds: float = 0.0


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` did: one outcome per case and the summary it wrote."""

    cache: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def prepared(self) -> list[CaseOutcome]:
        return self._with("prepared")

    @property
    def skipped(self) -> list[CaseOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseOutcome]:
        return self._with("failed")

    def table(self, max_skipped: int = 20):
        """A rich Table of the cases that were skipped or failed, with the reason.

        Every failed case gets a row; skipped (up-to-date) cases beyond ``max_skipped`` are
        folded into one summary row.
        """
        from rich.table import Table

        table = Table(
            title=f"{self.cache}: {len(self.prepared)} prepared, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed"
        )
        table.add_column("case", no_wrap=True)
        table.add_column("status")
        table.add_column("reason", overflow="fold")
        skipped = self.skipped
        for outcome in skipped[:max_skipped]:
            table.add_row(outcome.case_id, "[dim]skipped[/]", outcome.reason)
        if len(skipped) > max_skipped:
            table.add_row(f"… {len(skipped) - max_skipped} more", "[dim]skipped[/]", "up to date")
        for outcome in self.failed:
            table.add_row(outcome.case_id, "[red]failed[/]", outcome.reason)
        return table


def _prepare_one(
    case: Case, settings: PrepareSettings, out: str, fp: str
) -> tuple[str, Any, float]:
    """Worker: preprocess and write one case. Returns (status, meta or reason, seconds)."""
    start = time.perf_counter()
    try:
        prepared = preprocess_case(case, settings)
        prepared.meta["fingerprint"] = fp
        write_case(out, case.case_id, prepared.image, prepared.label, prepared.meta)
        return "prepared", prepared.meta, time.perf_counter() - start
    except BraverError as error:
        return "failed", str(error), time.perf_counter() - start
    except MemoryError:
        return "failed", f"{case.folder}: out of memory; prepare with fewer --workers.", 0.0
    except Exception as error:  # a worker must report, not kill the whole run
        return (
            "failed",
            f"{case.folder}: {type(error).__name__}: {error}.",
            time.perf_counter() - start,
        )


def _init_worker() -> None:
    # one process per case already uses every core; keep libraries from oversubscribing
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # pragma: no cover - SimpleITK is a dependency
        pass


def prepare_dataset(
    data: str | Path | Dataset,
    out: str | Path,
    settings: PrepareSettings | None = None,
    *,
    format: str | None = None,
    workers: int = 1,
    progress: bool = True,
    console=None,
) -> PrepareReport:
    """Preprocess every case of ``data`` into the cache folder ``out``; resumable.

    Cases already in the cache with the same fingerprint are skipped. Cases run in
    ``workers`` processes; a case that fails is reported in the returned ``PrepareReport``
    (``report.failed``) and the others proceed. ``summary.json`` is written from every case
    that is in the cache (prepared now or skipped) and lists the failed ones under "failed".
    """
    dataset = data if isinstance(data, Dataset) else discover(data, format)
    settings = settings or PrepareSettings()
    check_n4(settings, dataset)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BraverError("exists and is not a folder", out, "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out)

    metas: dict[str, dict] = {}
    todo: list[tuple[Case, str]] = []
    for case in dataset.cases:
        fp = fingerprint(case, settings)
        meta = _cached_meta(out, case.case_id)
        if meta is not None and meta.get("fingerprint") == fp:
            metas[case.case_id] = meta
            report.outcomes.append(CaseOutcome(case.case_id, "skipped", "up to date"))
        else:
            todo.append((case, fp))

    for case_id, status, result, seconds in _run(todo, settings, out, workers, progress, console):
        if status == "prepared":
            metas[case_id] = result
            report.outcomes.append(CaseOutcome(case_id, "prepared", "", seconds))
        else:
            report.outcomes.append(CaseOutcome(case_id, "failed", result, seconds))

    order = {c.case_id: i for i, c in enumerate(dataset.cases)}
    report.outcomes.sort(key=lambda o: order[o.case_id])
    if metas:
        report.summary = dataset_summary(
            dataset, [metas[c.case_id] for c in dataset.cases if c.case_id in metas], settings
        )
        report.summary["failed"] = {o.case_id: o.reason for o in report.failed}
        write_summary(out, report.summary)
    return report


def check_n4(settings: PrepareSettings, dataset: Dataset) -> None:
    """N4 only on MRI, and only on channels the dataset has (else one sentence and the fix)."""
    if not settings.n4:
        return
    if dataset.modality != "mri":
        raise BraverError(
            "N4 bias-field correction is for MRI, and this dataset is CT",
            dataset.root,
            "leave out --n4 and --n4-channels",
        )
    unknown = [name for name in settings.n4_channels if name not in dataset.channels]
    if unknown or not settings.n4_channels:
        raise BraverError(
            f"N4 channels {', '.join(unknown) or '(none)'} are not channels of this dataset",
            dataset.root,
            f"choose --n4-channels among {', '.join(dataset.channels)}",
        )


def _run(todo, settings, out, workers, progress, console):
    """Yield (case_id, status, meta-or-reason, seconds) as cases finish, with a progress bar."""
    if not todo:
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]prepare[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        disable=not progress,
        transient=False,
    )
    workers = max(1, min(int(workers), len(todo)))
    with bar:
        task = bar.add_task("prepare", total=len(todo), last="")
        if workers == 1:
            for case, fp in todo:
                status, result, seconds = _prepare_one(case, settings, str(out), fp)
                bar.update(task, advance=1, last=case.case_id)
                yield case.case_id, status, result, seconds
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork where there is one: workers start at once and scripts without a __main__ guard
        # work; the workers only run numpy/nibabel/SimpleITK code, never torch
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            futures = {
                pool.submit(_prepare_one, case, settings, str(out), fp): case for case, fp in todo
            }
            try:
                for future in as_completed(futures):
                    case = futures[future]
                    try:
                        status, result, seconds = future.result()
                    except Exception as error:  # the worker process died (e.g. killed for memory)
                        status, result, seconds = (
                            "failed",
                            f"{case.folder}: worker failed ({error}).",
                            0.0,
                        )
                    bar.update(task, advance=1, last=case.case_id)
                    yield case.case_id, status, result, seconds
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def dataset_summary(dataset: Dataset, metas: list[dict], settings: PrepareSettings) -> dict:
    """Dataset-wide figures from per-case metas: pooled channel mean/std, class frequencies.

    ``mean``/``std`` are of the cached (normalised) values inside the foreground, pooled over
    cases; ``raw_mean``/``raw_std`` likewise before normalisation (after clipping).
    """
    channels = list(dataset.channels)
    counts = np.array([m["foreground_voxels"] for m in metas], dtype=np.float64)
    summary_stats = {}
    for key in ("mean", "raw_mean"):
        std_key = key.replace("mean", "std")
        means = np.array([[s[key] for s in m["channel_stats"]] for m in metas])
        stds = np.array([[s[std_key] for s in m["channel_stats"]] for m in metas])
        total = counts.sum() or 1.0
        pooled_mean = (counts[:, None] * means).sum(0) / total
        pooled_var = (counts[:, None] * (stds**2 + means**2)).sum(0) / total - pooled_mean**2
        summary_stats[key] = pooled_mean.tolist()
        summary_stats[std_key] = np.sqrt(np.maximum(pooled_var, 0)).tolist()
    num_classes = dataset.scheme.num_classes
    class_counts = np.zeros(num_classes, dtype=np.int64)
    labelled = 0
    for meta in metas:
        if meta.get("class_counts") is not None:
            class_counts += np.asarray(meta["class_counts"], dtype=np.int64)
            labelled += 1
    total_voxels = int(class_counts.sum())
    return {
        "format": dataset.format,
        "source": str(dataset.root.resolve()),
        "label_scheme": dataset.scheme.to_json(),
        "channels": channels,
        "modality": dataset.modality,
        "cases": [m["case_id"] for m in metas],
        "labelled_cases": labelled,
        **summary_stats,
        "class_counts": class_counts.tolist(),
        "class_frequencies": (class_counts / total_voxels).tolist()
        if total_voxels
        else [0.0] * num_classes,
        "settings": settings.to_dict(),
        "preprocess_version": PREPROCESS_VERSION,
    }


def default_workers() -> int:
    """Worker processes for ``prepare``: one per core, at most 8 (each holds one case)."""
    return max(1, min(8, os.cpu_count() or 1))


__all__ = [
    "PrepareSettings",
    "PreparedCase",
    "PrepareReport",
    "CaseOutcome",
    "RawCase",
    "read_case",
    "preprocess_case",
    "prepare_dataset",
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


# --------------------------------------------------------------------------------------------
# Inspection (``braver data inspect``)


def describe_case(case: Case) -> dict:
    """What ``braver data inspect`` shows for one case, read from its files as they are.

    Keys: case_id, shape (file voxel grid, X Y Z), spacing (mm, file axes), axcodes, dtype,
    ranges (per channel [min, max]), label_counts ({original value: voxels}) or None.
    """
    raw = read_case(case)
    zooms = np.sqrt((np.asarray(raw.affine)[:3, :3] ** 2).sum(axis=0))
    ranges = [[float(c.min()), float(c.max())] for c in raw.channels]
    label_counts = None
    if raw.label is not None:
        values, counts = np.unique(raw.label, return_counts=True)
        label_counts = {int(v): int(n) for v, n in zip(values, counts, strict=True)}
        case.scheme.to_classes(raw.label[raw.label != 0], case.label)  # unexpected values → error
    return {
        "case_id": case.case_id,
        "shape": list(raw.shape),
        "spacing": [float(z) for z in zooms],
        "axcodes": _axcodes(raw.affine),
        "dtype": str(raw.channels[0].dtype),
        "ranges": ranges,
        "label_counts": label_counts,
    }


def class_imbalance(descriptions: list[dict], scheme: LabelScheme) -> list[dict]:
    """Per class: voxels over all labelled cases, share of all voxels and of tumour voxels."""
    totals = dict.fromkeys(scheme.values, 0)
    for description in descriptions:
        for value, count in (description.get("label_counts") or {}).items():
            totals[value] = totals.get(value, 0) + count
    everything = sum(totals.values()) or 1
    foreground = sum(n for v, n in totals.items() if v != 0) or 1
    rows = []
    for value, name in zip(scheme.values, scheme.class_names, strict=True):
        count = totals.get(value, 0)
        rows.append(
            {
                "value": value,
                "class": name,
                "voxels": count,
                "fraction": count / everything,
                "fraction_of_labelled": (count / foreground) if value != 0 else None,
                "background_ratio": (totals.get(0, 0) / count) if value != 0 and count else None,
            }
        )
    return rows


_OVERLAY_COLOURS = ["#00000000", "#ff3b30", "#34c759", "#ffcc00", "#0a84ff", "#bf5af2"]


def save_montage(cases: Sequence[Case], target: str | Path, *, max_cases: int = 4) -> Path:
    """PNG montage: one row per case (up to ``max_cases``), every channel at the axial slice with
    the most labelled voxels (or the middle one), then the last channel with the label overlay.
    Shown in canonical orientation (anterior up, patient right on the right).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from braver.atomic import atomic_path

    cases = list(cases)[:max_cases]
    if not cases:
        raise BraverError("no cases to draw", target, "check the dataset folder")
    columns = max(len(c.channels) for c in cases) + 1
    figure, axes = plt.subplots(
        len(cases), columns, figsize=(2.4 * columns, 2.5 * len(cases)), squeeze=False
    )
    for row, case in enumerate(cases):
        raw = read_case(case)
        ornt = _orientation(raw.affine)
        label = None
        if raw.label is not None:
            label = case.scheme.to_classes(to_canonical(raw.label, ornt), case.label)
            per_slice = (label > 0).sum(axis=(1, 2))
            z = int(per_slice.argmax()) if per_slice.any() else label.shape[0] // 2
        else:
            z = raw.shape[2] // 2
        slices = [np.asarray(to_canonical(c, ornt)[z], dtype=np.float32) for c in raw.channels]
        for col, (name, image) in enumerate(zip(case.channels, slices, strict=True)):
            _draw(axes[row, col], image, case.modality, f"{case.case_id}\n{name} z={z}")
        axis = axes[row, len(slices)]
        _draw(axis, slices[-1], case.modality, "label overlay" if label is not None else "no label")
        if label is not None:
            colours = ListedColormap(_OVERLAY_COLOURS[: case.scheme.num_classes])
            axis.imshow(
                label[z],
                cmap=colours,
                vmin=0,
                vmax=case.scheme.num_classes - 1,
                origin="lower",
                alpha=0.45,
                interpolation="nearest",
            )
        for col in range(len(slices) + 1, columns):
            axes[row, col].axis("off")
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=90, format="png")
    plt.close(figure)
    return Path(target)


def _draw(axis, image: np.ndarray, modality: str, title: str) -> None:
    if modality == "ct":
        low, high = -200.0, 300.0
    else:
        inside = image[image != 0]
        low, high = np.percentile(inside, [1, 99]) if inside.size else (0.0, 1.0)
    axis.imshow(image, cmap="gray", vmin=low, vmax=high, origin="lower", interpolation="nearest")
    axis.set_title(title, fontsize=7)
    axis.axis("off")

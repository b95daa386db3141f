"""One case: read and check its files (``read_case``), then preprocess it in memory.

The steps (``preprocess_raw``), in order:

1. read every channel in the file's voxel grid and check shapes, finiteness and label values;
2. foreground: MRI, any channel nonzero (BraTS is skull-stripped, so this is the brain);
   CT, a body mask (HU above ``body_threshold_hu``; the crop box follows its largest
   connected part so a scanner table does not widen it);
3. canonical orientation (RAS, as ``nibabel.as_closest_canonical``), arrays as (Z, Y, X);
4. crop to the bounding box of the foreground and of every labelled voxel, so that the
   crop never loses a label and ``restore_to_original`` is an exact inverse;
5. with ``target_spacing_mm``: resample each slice (Y, X) to that voxel size over the same
   field of view (images linearly, labels by one-hot linear interpolation, the foreground
   mask as the voxels at least half inside it);
6. MRI, in the paper's order (section 4): clip at the 1st/99th percentile of the
   foreground, N4 bias-field correction (SimpleITK) of T1 and T1c inside the foreground,
   z-score inside the foreground. CT: clip to the HU window ``hu_window``, then scale it
   to [0, 1] (air and everything below the window → 0, as padding) or z-score it inside
   the body (``ct_normalisation``);
7. every voxel outside the foreground set to 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from braver.data.formats import Case
from braver.data.io import read_volume
from braver.errors import BraverError
from braver.preprocess.geometry import (
    axcodes,
    canonical_spacing,
    crop_box,
    largest_component_region,
    orientation,
    resample_classes,
    resample_inplane,
    resample_mask,
    resampled_shape,
    resampled_spacing,
    to_canonical,
)
from braver.preprocess.intensity import clip_to_percentiles, n4_correct, window_ct, zscore
from braver.preprocess.settings import PREPROCESS_VERSION, PrepareSettings


@dataclass
class PreparedCase:
    """A case after preprocessing, in memory: image (C, Z, Y, X) float32, label (Z, Y, X) uint8."""

    image: np.ndarray
    label: np.ndarray | None
    meta: dict
    #: seconds spent in the slow steps ("resample", "n4"); not part of the meta, which stays
    #: the same from one run to the next
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def case_id(self) -> str:
        return self.meta["case_id"]


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


def preprocess_case(
    case: Case,
    settings: PrepareSettings | None = None,
    on_step: Callable[[str], None] | None = None,
) -> PreparedCase:
    """Read and preprocess one case in memory (see the module docstring for the steps).

    Returns the image as float32 (C, Z, Y, X) and the label as uint8 class indices (Z, Y, X),
    both canonical RAS, cropped and resampled, with the meta dictionary described in
    braver.data.cache. ``on_step(text)`` is told each slow step as it starts ("N4 t1c").
    """
    settings = settings or PrepareSettings()
    raw = read_case(case)
    return preprocess_raw(raw, settings, on_step)


def preprocess_raw(
    raw: RawCase, settings: PrepareSettings, on_step: Callable[[str], None] | None = None
) -> PreparedCase:
    """``preprocess_case`` on a case already read into memory."""
    case = raw.case
    step = on_step or (lambda text: None)
    seconds = {"resample": 0.0, "n4": 0.0}
    ornt = orientation(raw.affine)
    foreground_file, box_mask_file = _foreground(raw, settings)
    foreground = to_canonical(foreground_file, ornt)
    box = crop_box(
        foreground,
        to_canonical(box_mask_file, ornt) if box_mask_file is not None else None,
        to_canonical(raw.label != 0, ornt) if raw.label is not None else None,
        settings.crop_margin,
    )
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
    crop = tuple(slice(lo, hi) for lo, hi in box)

    mask = np.ascontiguousarray(foreground[crop])
    crop_shape = mask.shape
    image = np.empty((len(raw.channels), *crop_shape), dtype=np.float32)
    for index, channel in enumerate(raw.channels):
        image[index] = to_canonical(channel, ornt)[crop]
    label = None
    if raw.label is not None:
        label = case.scheme.to_classes(
            np.ascontiguousarray(to_canonical(raw.label, ornt)[crop]), case.label
        )

    # in-plane resampling to the target spacing (the crop box stays in file voxels)
    source_spacing = canonical_spacing(raw.affine, ornt)
    shape = resampled_shape(crop_shape, source_spacing, settings.target_spacing_mm)
    spacing_zyx = [float(v) for v in source_spacing]
    if shape != crop_shape:
        spacing_zyx = resampled_spacing(crop_shape, source_spacing, shape)
        step(f"resample to {settings.target_spacing_mm:g} mm")
        start = time.perf_counter()
        image = resample_inplane(image, shape[1:])
        mask = resample_mask(mask, shape[1:])
        if label is not None:
            label = resample_classes(label, shape[1:], case.scheme.num_classes)
        seconds["resample"] = time.perf_counter() - start
    outside = ~mask

    # intensities in the paper's order: clip, N4 (T1, T1c), normalise
    n4_channels = _n4_channels(settings, case)
    stats = []
    for index, name in enumerate(case.channels):
        volume = image[index]
        if case.modality == "ct":
            stats.append(
                window_ct(volume, mask, outside, settings.hu_window, settings.ct_normalisation)
            )
            continue
        low, high, clipped = clip_to_percentiles(
            volume, mask, settings.clip_percentiles, f"case {case.case_id}"
        )
        corrected = name in n4_channels
        if corrected:
            step(f"N4 {name}")
            start = time.perf_counter()
            volume[...] = n4_correct(volume, mask, spacing_zyx, settings.n4_shrink)
            seconds["n4"] += time.perf_counter() - start
            clipped = None  # the foreground changed: z-score reads it again
        mean, std = zscore(volume, mask, outside, clipped)
        stats.append(
            {
                "channel": name,
                "clip_low": low,
                "clip_high": high,
                "n4": corrected,
                "n4_before_braver": name in case.n4_corrected,
                "raw_mean": mean,
                "raw_std": std,
                "mean": 0.0,
                "std": 1.0 if std > 0 else 0.0,
            }
        )

    class_counts = None
    if label is not None:
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
        "axcodes": axcodes(raw.affine),
        "orientation": ornt.tolist(),
        "original_shape": list(raw.shape),
        "canonical_shape_zyx": [int(s) for s in canonical_shape],
        "crop_zyx": box,
        "shape_zyx": [int(s) for s in shape],  # the cached arrays' (after resampling)
        "spacing_zyx": spacing_zyx,  # of the cached arrays, mm
        "source_spacing_zyx": [float(s) for s in source_spacing],  # of the file, canonical axes
        "label_scheme": case.scheme.to_json(),
        "channel_stats": stats,
        "foreground_voxels": int(np.count_nonzero(mask)),
        "class_counts": class_counts,
        "notes": list(case.notes),
        "settings": settings.to_dict(),
        "preprocess_version": PREPROCESS_VERSION,
    }
    return PreparedCase(image, label, meta, seconds)


def _n4_channels(settings: PrepareSettings, case: Case) -> set[str]:
    """The channels of ``case`` that N4 corrects: the settings' channels, on MRI, except those
    the dataset ships already corrected (BRATS 2013's ``_N4ITK.mha`` files)."""
    if not settings.n4_applies(case.modality):
        return set()
    return {c for c in settings.n4_channels if c in case.channels} - set(case.n4_corrected)


def _foreground(raw: RawCase, settings: PrepareSettings) -> tuple[np.ndarray, np.ndarray | None]:
    """Foreground mask in the file grid, and (CT) the mask whose box gives the crop."""
    if raw.case.modality == "ct":
        body = raw.channels[0] > settings.body_threshold_hu
        return body, largest_component_region(body)
    mask = raw.channels[0] != 0
    for channel in raw.channels[1:]:
        mask |= channel != 0
    return mask, None


__all__ = ["RawCase", "PreparedCase", "read_case", "preprocess_case", "preprocess_raw"]

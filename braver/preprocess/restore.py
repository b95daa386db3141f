"""Back to the original geometry: undo the resampling, the crop and the canonical orientation."""

from __future__ import annotations

import numpy as np

from braver.data.labels import LabelScheme
from braver.errors import BraverError
from braver.preprocess.geometry import from_canonical, resample_classes, resample_inplane


def restore_to_original(array: np.ndarray, meta: dict, *, labels: bool = True) -> np.ndarray:
    """Put a prediction on a case's cached grid back into the file's voxel grid.

    ``labels=True``: ``array`` holds class indices (Z, Y, X) on the cached grid (the crop box,
    resampled in plane when the case was: ``meta["shape_zyx"]``) or on the whole canonical
    grid; returns the original label values (e.g. 0, 1, 2, 4) in the file's (X, Y, Z) grid,
    background outside the crop. A resampled map goes back by one-hot linear interpolation.
    ``labels=False``: ``array`` holds class probabilities (K, Z, Y, X); returns float32
    (X, Y, Z, K), resampled linearly (each voxel's probabilities still sum to 1), with
    background probability 1 outside the crop.
    """
    canonical_shape = tuple(meta["canonical_shape_zyx"])
    crop = tuple(slice(lo, hi) for lo, hi in meta["crop_zyx"])
    crop_shape = tuple(hi - lo for lo, hi in meta["crop_zyx"])
    cached_shape = tuple(meta.get("shape_zyx", crop_shape))
    ornt = np.asarray(meta["orientation"], dtype=np.float64)
    spatial = tuple(array.shape[-3:])
    if spatial not in (cached_shape, canonical_shape):
        raise BraverError(
            f"array of spatial shape {spatial} fits neither the cached grid {cached_shape} nor "
            f"the canonical grid {canonical_shape} of case {meta['case_id']}",
            None,
            "pass the prediction made on this case's cached image",
        )
    on_crop = spatial == cached_shape
    scheme = LabelScheme.from_json(meta["label_scheme"])
    if labels:
        if array.ndim != 3:
            raise BraverError(f"expected a (Z, Y, X) class map, got shape {array.shape}")
        full = np.zeros(canonical_shape, dtype=np.uint8)
        if on_crop:
            full[crop] = resample_classes(
                np.asarray(array, dtype=np.uint8), crop_shape[1:], scheme.num_classes
            )
        else:
            full[...] = array
        return np.ascontiguousarray(scheme.to_values(from_canonical(full, ornt)))
    if array.ndim != 4:
        raise BraverError(f"expected (K, Z, Y, X) probabilities, got shape {array.shape}")
    probs = np.zeros((array.shape[0], *canonical_shape), dtype=np.float32)
    if on_crop:
        probs[0] = 1.0
        probs[(slice(None), *crop)] = resample_inplane(array, crop_shape[1:])
    else:
        probs[...] = array
    channels_last = probs.transpose(1, 2, 3, 0)  # (Z, Y, X, K)
    return np.ascontiguousarray(from_canonical(channels_last, ornt), dtype=np.float32)


__all__ = ["restore_to_original"]

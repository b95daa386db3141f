"""Back to the original geometry: undo the crop and the canonical orientation of a case."""

from __future__ import annotations

import numpy as np

from braver.data.labels import LabelScheme
from braver.errors import BraverError
from braver.preprocess.geometry import from_canonical


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


__all__ = ["restore_to_original"]

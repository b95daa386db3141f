"""Geometry: file grid ↔ canonical RAS (Z, Y, X), voxel spacing, foreground and crop box.

Arrays on disk are in the file's voxel grid (X, Y, Z); braver works in canonical RAS order
(as ``nibabel.as_closest_canonical``) with axes (Z, Y, X), so that an axial slice is ``a[z]``.
Every function here is exactly invertible or only measures; ``braver.preprocess.restore``
undoes what ``braver.preprocess.case`` did with it.
"""

from __future__ import annotations

import numpy as np


def orientation(affine: np.ndarray) -> np.ndarray:
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


def axcodes(affine: np.ndarray) -> str:
    import nibabel as nib

    return "".join(nib.orientations.aff2axcodes(affine))


def bounding_box(mask: np.ndarray) -> list[list[int]] | None:
    """[[z0, z1], [y0, y1], [x0, x1]] (end exclusive) of the true voxels of a 3D mask."""
    box = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        if hits.size == 0:
            return None
        box.append([int(hits[0]), int(hits[-1]) + 1])
    return box


def union_box(a: list[list[int]] | None, b: list[list[int]] | None) -> list[list[int]] | None:
    if a is None or b is None:
        return a or b
    return [[min(p[0], q[0]), max(p[1], q[1])] for p, q in zip(a, b, strict=True)]


def largest_component_region(mask: np.ndarray) -> np.ndarray | None:
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


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> list[float]:
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras = np.empty(3)
    for file_axis, (ras_axis, _flip) in enumerate(ornt):
        ras[int(ras_axis)] = zooms[file_axis]
    return [float(ras[2]), float(ras[1]), float(ras[0])]


__all__ = [
    "orientation",
    "to_canonical",
    "from_canonical",
    "axcodes",
    "bounding_box",
    "union_box",
    "largest_component_region",
    "canonical_spacing",
]

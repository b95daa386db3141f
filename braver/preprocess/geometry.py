"""Geometry: file grid ↔ canonical RAS (Z, Y, X), voxel spacing, foreground and crop box.

Arrays on disk are in the file's voxel grid (X, Y, Z); braver works in canonical RAS order
(as ``nibabel.as_closest_canonical``) with axes (Z, Y, X), so that an axial slice is ``a[z]``.
Orientation and crop are exactly invertible; in-plane resampling (to
``PrepareSettings.target_spacing_mm``) keeps the field of view, so that the way back lands
every voxel where it was. ``braver.preprocess.restore`` undoes what ``braver.preprocess.case``
did with these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def crop_box(
    foreground: np.ndarray,
    box_mask: np.ndarray | None,
    label_nonzero: np.ndarray | None,
    margin: int,
) -> list[list[int]] | None:
    """The crop of a canonical case: the box of ``box_mask`` (else of ``foreground``) joined
    with the box of every labelled voxel, so no label is lost, widened by ``margin`` voxels
    inside the grid; None when there is nothing to crop to."""
    box = bounding_box(box_mask) if box_mask is not None else None
    if box is None:
        box = bounding_box(foreground)
    box = union_box(box, bounding_box(label_nonzero) if label_nonzero is not None else None)
    if box is None:
        return None
    return [
        [max(0, lo - margin), min(n, hi + margin)]
        for (lo, hi), n in zip(box, foreground.shape, strict=True)
    ]


def canonical_spacing(affine: np.ndarray, ornt: np.ndarray) -> list[float]:
    """Voxel size (mm) along the canonical (Z, Y, X) axes: the affine's column norms."""
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    ras = np.empty(3)
    for file_axis, (ras_axis, _flip) in enumerate(ornt):
        ras[int(ras_axis)] = zooms[file_axis]
    return [float(ras[2]), float(ras[1]), float(ras[0])]


# --------------------------------------------------------------------------------------------
# In-plane resampling

# slices resampled at once by resample_classes (bounds its temporaries; Z is never mixed)
_SLAB = 16


def resampled_shape(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], target_mm: float | None
) -> tuple[int, int, int]:
    """(Z, Y', X') with Y and X resized so that their voxels are as near ``target_mm`` as a
    whole number of voxels over the same extent allows; Z is kept. None: the shape as is."""
    z, y, x = (int(n) for n in shape_zyx)
    if target_mm is None:
        return z, y, x
    return (
        z,
        max(1, int(round(y * spacing_zyx[1] / target_mm))),
        max(1, int(round(x * spacing_zyx[2] / target_mm))),
    )


def resampled_spacing(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], new_shape_zyx: Sequence[int]
) -> list[float]:
    """The voxel size of ``new_shape_zyx`` over the extent of ``shape_zyx`` x ``spacing_zyx``."""
    return [float(n * s / m) for n, s, m in zip(shape_zyx, spacing_zyx, new_shape_zyx, strict=True)]


def resample_inplane(array: np.ndarray, new_yx: Sequence[int], order: int = 1) -> np.ndarray:
    """Linear (``order`` 1) or nearest (0) resampling of (..., Z, Y, X) to (..., Z, Y', X').

    The field of view is kept: voxel edges align (grid mode), so output voxel ``o`` samples
    input position ``(o + 0.5) * n / n' - 0.5``; beyond the outermost centres the edge value
    is repeated. Returns float32 (a new array; the input is returned as is when the shape
    does not change).
    """
    from scipy import ndimage

    *lead, z, y, x = array.shape
    new_y, new_x = (int(n) for n in new_yx)
    if (new_y, new_x) == (y, x):
        return array
    scale = np.array([1.0, y / new_y, x / new_x])
    offset = (scale - 1.0) / 2.0
    flat = np.asarray(array, dtype=np.float32).reshape(-1, z, y, x)
    out = np.empty((flat.shape[0], z, new_y, new_x), dtype=np.float32)
    for index, volume in enumerate(flat):
        ndimage.affine_transform(
            volume,
            scale,
            offset=offset,
            output_shape=(z, new_y, new_x),
            output=out[index],
            order=order,
            mode="nearest",
            prefilter=False,
        )
    return out.reshape(*lead, z, new_y, new_x)


def resample_classes(classes: np.ndarray, new_yx: Sequence[int], num_classes: int) -> np.ndarray:
    """Class indices (Z, Y, X) → (Z, Y', X') by one-hot linear interpolation.

    Each class's indicator is interpolated linearly and every voxel takes the class of the
    highest value (ties: the lower class), so a boundary moves by less than half a voxel
    and no class is shifted toward another; a whole-number upsampling comes back exactly
    when resampled down again. Works through a few slices at a time, so the temporaries stay
    small for a whole CT volume.
    """
    new_y, new_x = (int(n) for n in new_yx)
    if (new_y, new_x) == tuple(classes.shape[-2:]):
        return classes
    out = np.zeros((classes.shape[0], new_y, new_x), dtype=np.uint8)
    for z0 in range(0, classes.shape[0], _SLAB):
        slab = classes[z0 : z0 + _SLAB]
        best = None
        for k in range(num_classes):
            indicator = slab == k
            if not indicator.any():
                continue
            weight = resample_inplane(indicator.astype(np.float32), (new_y, new_x))
            if best is None:
                best = weight
                out[z0 : z0 + _SLAB] = k
                continue
            better = weight > best
            out[z0 : z0 + _SLAB][better] = k
            np.maximum(best, weight, out=best)
    return out


def resample_mask(mask: np.ndarray, new_yx: Sequence[int]) -> np.ndarray:
    """A boolean (Z, Y, X) mask resampled in plane: the voxels at least half inside it."""
    if tuple(int(n) for n in new_yx) == tuple(mask.shape[-2:]):
        return mask
    return resample_inplane(mask.astype(np.float32), new_yx) >= 0.5


__all__ = [
    "orientation",
    "to_canonical",
    "from_canonical",
    "axcodes",
    "bounding_box",
    "union_box",
    "largest_component_region",
    "crop_box",
    "canonical_spacing",
    "resampled_shape",
    "resampled_spacing",
    "resample_inplane",
    "resample_classes",
    "resample_mask",
]

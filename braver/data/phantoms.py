"""Phantom datasets: synthetic brain MRI (BraTS 2021 layout) and liver CT (LiTS layout).

The phantoms stand in for real data wherever none is given (``braver train brain`` without
``--data``, the tests). They are built to look like their real counterparts to a network
working on 2D patches, not to be anatomy:

Brain (``synth_brain``): an ellipsoidal head whose brain has a folded cortex (grey matter
with CSF-filled sulci), white matter, deep grey nuclei, lateral ventricles and the
interhemispheric fissure; a glioma of edema, a core with an enhancing rim (sometimes
incomplete, sometimes absent as in low-grade tumours) and a necrotic or non-enhancing centre,
of random size, elongation, orientation and position, its boundaries perturbed by smooth
random fields (no two blobs are spheres); distractors that look like tumour in one modality
only (enhancing vessels / choroid plexus on T1c, small FLAIR-bright white-matter lesions).
Four modalities with the usual relative contrasts (T1: WM > GM > CSF, tumour core dark;
T1c: enhancing rim bright; T2: CSF brightest, edema and necrosis bright; FLAIR: CSF
suppressed, edema bright), per-case contrast jitter, tissue texture, partial-volume blur, a
smooth multiplicative bias field and Rician noise. The head around the brain (CSF, skull
tables and marrow, scalp) is stripped as BraTS does, every voxel outside the brain 0, unless
asked for (``skull_stripped=False``, ``--with-skull``). 1 mm voxels, LPS-like affine as
in BraTS, int16 intensities, labels 0 (background), 1 (necrosis / non-enhancing core),
2 (edema), 4 (enhancing).

Liver (``synth_liver``): an abdominal CT slab in Hounsfield units: air, body with
subcutaneous fat and muscle wall, visceral fat, liver (right upper abdomen) with 1-4
hypo- or hyperdense tumours (some rim-enhancing), spleen (liver-like density: a
distractor), kidneys, aorta and vena cava, stomach with gas, bowel gas, vertebra with spinal
canal, lung bases, ribs and the scanner table; correlated noise. Labels 0/1 (liver)/2 (tumour).

Two difficulties (``difficulty=``, ``braver data synth --difficulty``): ``easy`` is the
above, bright lesions well apart from everything else, what the demo trains on; ``realistic``
makes them as hard as scans are. Brain: edema closer to grey matter on T2/FLAIR and a weaker
enhancing rim, textured lesions, one to three of them from a few mm across, many unlabelled
look-alikes (white-matter hyperintensities, deep and periventricular, bright on FLAIR/T2 like
edema; enhancing vessels, choroid plexus and dura along the surface and the falx on T1c),
thick-slice partial volume (channels acquired with 2.5-5 mm slices, resampled to 1 mm),
scanner variation (contrast, a gamma per channel, a stronger bias field, more noise). Liver:
two to seven small tumours of low contrast (15-45 HU), fluid cysts and hypo- or hyperdense
hepatic vessels inside the liver (labelled liver), bowel loops of liver density against it,
thick-slice partial volume, HU calibration offset and more noise.
``brain_phantom_tissues``/``liver_phantom_tissues`` also return the tissue map
(``BRAIN_TISSUES``/``LIVER_TISSUES``), so that look-alikes can be found.

Everything is deterministic for a seed: case ``i`` of seed ``s`` is the same whatever the
number of cases; an easy case does not change when the realistic one is added.

Length: two anatomies (brain MRI, abdominal CT) at two difficulties with their look-alikes;
each generator is a sequence of short drawing steps that read best in one place.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from braver.atomic import atomic_path
from braver.data.io import save_nifti
from braver.errors import BraverError

PHANTOM_VERSION = 1
# bumped whenever the generated arrays change, so default_phantom_cache rebuilds stale copies
PHANTOM_REVISION = 4
BRAIN_SHAPE = (128, 128, 64)  # (X, Y, Z) voxels of 1 mm
LIVER_SHAPE = (128, 128, 48)  # (X, Y, Z) voxels over a 360 x 360 x 160 mm field of view
LIVER_FOV_MM = (360.0, 360.0, 160.0)
BRAIN_CHANNEL_FILES = (("t1", "t1"), ("t1c", "t1ce"), ("t2", "t2"), ("flair", "flair"))
DIFFICULTIES = ("easy", "realistic")

# default_phantom_cache: sized so that a training run on 2 CPU cores stays quick
DEFAULT_BRAIN = {"cases": 24, "shape": (96, 96, 48), "seed": 2017}
DEFAULT_LIVER = {"cases": 16, "shape": (96, 96, 40), "seed": 2017}
# ... and prepared with these settings (braver.preprocess.PrepareSettings). The brain
# phantoms carry a bias field on every channel (shared in part), so N4 corrects all four,
# not only T1 and T1c as the paper's preprocessing does. Measured with the phantom recipe
# (`python bench/phantom_quality.py [--prepare no-n4]`): whole-tumour Dice 0.877 with it,
# 0.773 without (bright grey matter under the field read as edema) and 0.740 with the
# paper's T1/T1c-only N4 (`--prepare paper-n4`): edema is seen on T2 and FLAIR. Core and
# enhancing 0.836 / 0.852 with it, 0.853 / 0.873 without.
PREPARE_BRAIN = {"n4": True, "n4_channels": ("t1", "t1c", "t2", "flair")}
# as recipes/liver.toml prepares --data: CT clipped to its liver window and z-scored, slices
# resampled to 5 mm (bench/quality.py)
PREPARE_LIVER: dict = {
    "hu_window": (20.0, 180.0),
    "ct_normalisation": "zscore",
    "target_spacing_mm": 5.0,
}

# Tissue codes of the brain phantom (rows of the intensity table below).
(
    _OUT,
    _CSF,
    _GM,
    _WM,
    _DEEP,
    _EDEMA,
    _ENH,
    _NEC,
    _NET,
    _VESSEL,
    _LESION,
    _BONE,
    _MARROW,
    _SCALP,
    _DURA,
) = range(15)
LIVER_TISSUES = {
    "other": 0,
    "liver": 1,
    "tumour": 2,
    "cyst": 3,  # fluid, inside the liver, labelled liver: a look-alike (realistic only)
    "hepatic_vessel": 4,
    "spleen": 5,  # liver density, labelled background: a look-alike
    "bowel": 6,  # liver density against the liver (realistic only): a look-alike
}
BRAIN_TISSUES = {
    "outside": _OUT,
    "csf": _CSF,
    "grey_matter": _GM,
    "white_matter": _WM,
    "deep_grey": _DEEP,
    "edema": _EDEMA,
    "enhancing": _ENH,
    "necrosis": _NEC,
    "non_enhancing": _NET,
    "vessel": _VESSEL,  # enhancing vessel / choroid plexus: a T1c look-alike
    "white_matter_lesion": _LESION,  # FLAIR/T2 hyperintensity: an edema look-alike
    "bone": _BONE,
    "marrow": _MARROW,
    "scalp": _SCALP,
    "dura": _DURA,  # enhancing dura and falx (realistic only): a T1c look-alike
}
_BRAIN_LABEL = np.array([0, 0, 0, 0, 0, 2, 4, 1, 1, 0, 0, 0, 0, 0, 0], dtype=np.uint8)
# Relative intensities per tissue: T1, T1c, T2, FLAIR (each later scaled by a scanner gain).
_BRAIN_CONTRAST = np.array(
    [
        [0.00, 0.00, 0.00, 0.00],  # outside (stripped)
        [0.30, 0.32, 1.00, 0.16],  # CSF: dark T1, brightest T2, suppressed in FLAIR
        [0.62, 0.64, 0.62, 0.62],  # grey matter
        [0.86, 0.87, 0.42, 0.50],  # white matter
        [0.70, 0.71, 0.52, 0.56],  # deep grey nuclei
        [0.58, 0.60, 0.90, 0.94],  # edema: FLAIR bright, T2 bright
        [0.64, 1.45, 0.72, 0.78],  # enhancing rim: T1c bright
        [0.30, 0.36, 0.95, 0.52],  # necrosis: dark T1/T1c, bright T2
        [0.50, 0.53, 0.82, 0.86],  # non-enhancing core: close to edema
        [0.60, 1.35, 0.45, 0.55],  # enhancing vessel / choroid plexus (label 0)
        [0.80, 0.82, 0.74, 0.88],  # small white-matter lesion, FLAIR bright (label 0)
        [0.04, 0.04, 0.04, 0.04],  # cortical bone of the skull: no signal
        [0.95, 0.95, 0.65, 0.75],  # skull marrow (fat): bright on T1
        [0.90, 0.92, 0.60, 0.70],  # scalp (fat and skin)
    ],
    dtype=np.float32,
)
# Realistic difficulty: lesions closer to normal tissue, look-alikes closer to lesions.
_REALISTIC_CONTRAST = np.concatenate(
    [_BRAIN_CONTRAST, [[0.55, 1.45, 0.55, 0.60]]]  # dura / falx: enhancing on T1c
).astype(np.float32)
_REALISTIC_CONTRAST[_EDEMA] = [0.60, 0.62, 0.84, 0.84]  # FLAIR/T2: GM 0.62, WM 0.42/0.50
_REALISTIC_CONTRAST[_ENH] = [0.66, 1.30, 0.70, 0.74]  # a weaker rim (WM 0.87 on T1c)
_REALISTIC_CONTRAST[_NET] = [0.54, 0.57, 0.74, 0.76]  # non-enhancing core: as edema
_REALISTIC_CONTRAST[_LESION] = [0.74, 0.76, 0.80, 0.88]  # WM hyperintensity: edema-like


# --------------------------------------------------------------------------------------------
# Random fields and shapes


def smooth_field(
    shape: Sequence[int], rng: np.random.Generator, cells: Sequence[int]
) -> np.ndarray:
    """A smooth random field of about unit standard deviation (float32, ``shape``).

    A sum of Gaussian bumps with random weights on a coarse lattice of ``cells`` points per
    axis, evaluated separably (three small matrix products), so it costs about as much as one
    pass over the volume.
    """
    mats = []
    for n, c in zip(shape, cells, strict=True):
        c = max(2, int(c))
        centres = np.linspace(-0.5, n - 0.5, c, dtype=np.float32)
        width = 0.65 * (n / (c - 1))
        grid = np.arange(n, dtype=np.float32)[:, None]
        mats.append(np.exp(-0.5 * ((grid - centres[None]) / width) ** 2).astype(np.float32))
    weights = rng.standard_normal([m.shape[1] for m in mats]).astype(np.float32)
    field = np.tensordot(mats[0], weights, axes=(1, 0))  # (X, cy, cz)
    field = np.tensordot(field, mats[1], axes=(1, 1)).transpose(0, 2, 1)  # (X, Y, cz)
    field = field @ mats[2].T  # (X, Y, Z)
    field = np.ascontiguousarray(field, dtype=np.float32)
    # statistics from a regular subsample: a smooth field varies little between neighbours
    sample = field[:: max(1, shape[0] // 24), :: max(1, shape[1] // 24), :: max(1, shape[2] // 24)]
    mean = float(sample.mean(dtype=np.float64))
    std = float(sample.std(dtype=np.float64))
    field -= np.float32(mean)
    field *= np.float32(1.0 / std if std > 0 else 1.0)
    return field


def _blur(volume: np.ndarray, weight: float = 0.2) -> np.ndarray:
    """Separable 3-tap blur [w, 1-2w, w] along each axis (the edges lose their outer weight).

    Plain slicing: scipy's correlate1d is slow along the first axis of a C-ordered volume.
    """
    w = np.float32(weight)
    for axis in range(volume.ndim):
        lower = [slice(None)] * volume.ndim
        upper = [slice(None)] * volume.ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        blurred = volume * np.float32(1 - 2 * weight)
        blurred[tuple(upper)] += w * volume[tuple(lower)]
        blurred[tuple(lower)] += w * volume[tuple(upper)]
        volume = blurred
    return volume


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q *= np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def _box(center_vox: np.ndarray, half_vox: np.ndarray, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(
        slice(max(0, int(np.floor(c - h))), min(n, int(np.ceil(c + h)) + 1))
        for c, h, n in zip(center_vox, half_vox, shape, strict=True)
    )


def _blob_distance(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: np.ndarray,
    axes: np.ndarray,
    rotation: np.ndarray,
    roughness: float,
    rng: np.random.Generator,
    cells: int = 5,
) -> np.ndarray:
    """Normalised 'distance' of each point to an irregular ellipsoid: < 1 inside.

    ``coords`` are broadcastable x, y, z arrays in mm; the ellipsoid's radius is scaled, point
    by point, by a smooth random field of relative amplitude ``roughness``.
    """
    dx, dy, dz = (coords[i] - center[i] for i in range(3))
    total = None
    for row in range(3):
        r = rotation[:, row]
        q = (dx * r[0] + dy * r[1] + dz * r[2]) / axes[row]
        total = q * q if total is None else total + q * q
    distance = np.sqrt(total, dtype=np.float32)
    shape = np.broadcast_shapes(*(c.shape for c in coords))
    distance = np.broadcast_to(distance, shape)
    if roughness > 0:
        field = smooth_field(shape, rng, [max(2, min(cells, n // 3 + 1)) for n in shape])
        # multiplicative: the radius in each direction changes, the centre stays inside and
        # the blob stays in one piece (star-shaped)
        distance = distance * np.maximum(1 + np.float32(roughness) * field, np.float32(0.3))
    return np.ascontiguousarray(distance, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Brain


def _lps_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Affine of a file stored L→R, P→A flipped (LPS axis codes, as BraTS), centred on 0."""
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [
        (shape[0] - 1) / 2 * spacing[0],
        (shape[1] - 1) / 2 * spacing[1],
        -(shape[2] - 1) / 2 * spacing[2],
    ]
    return affine


def _check_shape(shape: Sequence[int], minimum: int = 16) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < minimum:
        raise BraverError(
            f"phantom shape {list(shape)} must be three sizes of at least {minimum} voxels",
            None,
            "pass e.g. --shape 128x128x64",
        )
    return shape  # type: ignore[return-value]


def _check_difficulty(difficulty: str) -> bool:
    """True for ``realistic``; an unknown difficulty is an error naming the valid ones."""
    if difficulty not in DIFFICULTIES:
        raise BraverError(
            f"unknown phantom difficulty {difficulty!r}",
            None,
            f"choose one of {', '.join(DIFFICULTIES)}",
        )
    return difficulty == "realistic"


def brain_phantom(
    shape: Sequence[int] = BRAIN_SHAPE,
    rng: np.random.Generator | int = 0,
    *,
    skull_stripped: bool = True,
    difficulty: str = "easy",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """One synthetic brain: ({channel: int16 (X, Y, Z)}, uint8 label values, 4x4 affine).

    ``difficulty``: ``easy`` or ``realistic`` (see the module docstring).
    """
    channels, label, affine, _ = brain_phantom_tissues(
        shape, rng, skull_stripped=skull_stripped, difficulty=difficulty
    )
    return channels, label, affine


def brain_phantom_tissues(
    shape: Sequence[int] = BRAIN_SHAPE,
    rng: np.random.Generator | int = 0,
    *,
    skull_stripped: bool = True,
    difficulty: str = "easy",
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """``brain_phantom`` and its tissue map (uint8 codes of ``BRAIN_TISSUES``, same order).

    Arrays are in file voxel order (LPS: the first axis runs to the patient's left, the second
    to posterior), as BraTS files are; labels take the values 0, 1, 2, 4. The head around the
    brain (subarachnoid CSF, skull tables and marrow, scalp) is made and, when
    ``skull_stripped`` (as in BraTS), removed: every voxel outside the brain is then 0.
    Otherwise the head is kept and the air around it holds Rician noise. Labels and the
    brain's inner voxels are the same either way (its edge takes partial volume from the
    skull).
    """
    rng = np.random.default_rng(rng)
    shape = _check_shape(shape)
    realistic = _check_difficulty(difficulty)
    nx, ny, nz = shape
    f32 = np.float32
    # RAS grid in mm, centred: +x right, +y anterior, +z superior
    x = (np.arange(nx, dtype=f32) - (nx - 1) / 2)[:, None, None]
    y = (np.arange(ny, dtype=f32) - (ny - 1) / 2)[None, :, None]
    z = (np.arange(nz, dtype=f32) - (nz - 1) / 2)[None, None, :]

    # brain: an ellipsoid cut by the slab; top inside the field of view, base below it
    ax = f32(0.40 * nx * rng.uniform(0.92, 1.04))
    ay = f32(0.46 * ny * rng.uniform(0.92, 1.04))
    az = f32(0.78 * nz * rng.uniform(0.95, 1.05))
    zc = f32(-0.32 * nz)
    r = np.sqrt((x / ax) ** 2 + (y / ay) ** 2 + ((z - zc) / az) ** 2, dtype=f32)
    outline = smooth_field(shape, rng, (6, 7, 4))
    r = r * (1 + f32(0.025) * outline)
    scale = f32(min(ax, ay))
    depth = (1 - r) * scale  # approximate mm below the brain surface
    brain = depth > 0

    tissue = np.full(shape, _WM, dtype=np.uint8)
    # cortex: a band of grey matter whose inner edge is folded, sulci as thin CSF sheets
    folds = smooth_field(shape, rng, (max(4, nx // 9), max(4, ny // 9), max(3, nz // 9)))
    cortex = depth < (6.5 + 3.0 * np.clip(folds, -1.5, 1.5))
    gyri = (np.abs(folds) < 0.5) & (depth < 15)
    tissue[cortex | gyri] = _GM
    sulci = (np.abs(folds) < 0.12) & (depth < 11)
    tissue[sulci | (depth < 1.8)] = _CSF

    # deep grey nuclei and the lateral ventricles (banana shaped), both hemispheres
    vent_size = rng.uniform(0.75, 1.4)
    ventricle_q = np.full(shape, np.inf, dtype=f32)  # < 1 inside a ventricle
    for side in (-1, 1):
        deep_center = np.array([side * 0.27 * ax, -0.04 * ay, zc + 0.14 * az], dtype=f32)
        deep = _blob_distance(
            (x, y, z),
            deep_center,
            np.array([0.12 * ax, 0.17 * ay, 0.13 * az], f32),
            np.eye(3, dtype=f32),
            0.0,
            rng,
        )
        tissue[deep < 1] = _DEEP
        bend = f32(0.10 * ax) * (y / ay) ** 2
        vx = (x - side * (0.085 * ax + bend)) / f32(0.055 * ax * vent_size)
        vy = (y - 0.02 * ay) / f32(0.40 * ay)
        vz = (z - (zc + 0.22 * az)) / f32(0.10 * az * vent_size)
        q = vx**2 + vy**2 + vz**2
        tissue[q < 1] = _CSF
        np.minimum(ventricle_q, q, out=ventricle_q)
    # interhemispheric fissure
    # interhemispheric fissure, interrupted by the corpus callosum around the ventricles
    callosum = (np.abs(y) < 0.38 * ay) & (z < zc + 0.42 * az)
    fissure = (np.abs(x) < 0.9) & (r > 0.42) & (r < 1) & ~callosum
    tissue[fissure] = _CSF

    # distractors: enhancing vessels / choroid plexus (T1c only), small FLAIR lesions
    coords = (x, y, z)
    inside = np.argwhere(brain[::2, ::2, ::2]) * 2
    n_vessels = int(rng.integers(8, 18) if realistic else rng.integers(4, 10))
    n_lesions = int(rng.integers(4, 14) if realistic else rng.integers(0, 4))
    lesion_radius = (1.2, 4.5) if realistic else (1.2, 3.0)
    for code, count, radius in (
        (_VESSEL, n_vessels, (0.8, 1.8)),
        (_LESION, n_lesions, lesion_radius),
    ):
        for _ in range(count):
            vox = inside[rng.integers(len(inside))]
            center = np.array([x.ravel()[vox[0]], y.ravel()[vox[1]], z.ravel()[vox[2]]], dtype=f32)
            axes = rng.uniform(*radius, size=3).astype(f32)
            if code == _VESSEL:
                axes[rng.integers(3)] *= rng.uniform(2.0, 5.0)  # vessels are elongated
            half = axes.max() * 1.3 + 2
            box = _box(vox, np.full(3, half), shape)
            sub = (x[box[0], :, :], y[:, box[1], :], z[:, :, box[2]])
            d = _blob_distance(sub, center, axes, _rotation(rng), 0.15, rng, cells=3)
            region = tissue[box]
            region[(d < 1) & brain[box] & (region != _CSF if code == _LESION else True)] = code

    if realistic:
        _add_realistic_lookalikes(
            tissue, coords, brain, depth, fissure, ventricle_q, ax, ay, az, zc, rng
        )

    # tumours: one, sometimes two (realistic: up to three, from a few mm across)
    if realistic:
        n_tumours = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        radius_range = (0.06, 0.42)
    else:
        n_tumours = 1 if rng.random() < 0.85 else 2
        radius_range = (0.15, 0.45)
    tumour_any = np.zeros(shape, dtype=bool)
    for _ in range(n_tumours):
        _add_tumour(tissue, tumour_any, coords, r, brain, ax, ay, az, zc, rng, shape, radius_range)

    # intensities
    if realistic:  # scanner variation: contrasts, noise
        table = _REALISTIC_CONTRAST
        contrast = table * rng.uniform(0.88, 1.12, size=table.shape).astype(f32)
    else:
        jitter = rng.uniform(0.93, 1.07, size=_BRAIN_CONTRAST.shape).astype(f32)
        contrast = _BRAIN_CONTRAST * jitter
    gains = rng.uniform(400, 1500, size=4)
    noise_level = rng.uniform(0.03, 0.06) if realistic else rng.uniform(0.018, 0.04)
    bias_amplitude = f32(0.22 if realistic else 0.12)
    lesion_texture = f32(0.16 if realistic else 0.07)
    bias_shared = smooth_field(shape, rng, (3, 3, 3))
    heterogeneity = smooth_field(shape, rng, (max(4, nx // 8), max(4, ny // 8), max(3, nz // 8)))
    # the head around the brain (no random draws: the brain is the same with or without it)
    outside = -depth  # approximate mm outside the brain surface
    tissue[~brain] = _OUT
    if not skull_stripped:
        for code, (inner, outer) in (
            (_CSF, (0.0, 1.5)),
            (_BONE, (1.5, 3.0)),
            (_MARROW, (3.0, 5.0)),
            (_BONE, (5.0, 6.5)),
            (_SCALP, (6.5, 10.0)),
        ):
            tissue[(outside > inner) & (outside <= outer)] = code
    label = _BRAIN_LABEL[tissue]
    channels: dict[str, np.ndarray] = {}
    for index, (channel, _file_key) in enumerate(BRAIN_CHANNEL_FILES):
        image = contrast[:, index][tissue]
        texture = smooth_field(shape, rng, (max(5, nx // 6), max(5, ny // 6), max(4, nz // 6)))
        image *= 1 + f32(0.035) * texture + lesion_texture * heterogeneity * tumour_any
        image = _blur(image)  # partial-volume effect at tissue boundaries
        if realistic:
            image = _scanner_channel(image, channel, rng)
        field = bias_shared + f32(0.5) * smooth_field(shape, rng, (3, 3, 2))
        bias = np.exp(bias_amplitude * field)
        image *= bias
        sigma = f32(noise_level * contrast[_WM, index])
        real = image + sigma * rng.standard_normal(shape, dtype=f32)
        imag = sigma * rng.standard_normal(shape, dtype=f32)
        image = np.sqrt(real * real + imag * imag)  # Rician magnitude noise
        image *= f32(gains[index])
        values = np.rint(image).astype(np.int16)
        if skull_stripped:
            np.maximum(values, 1, out=values, where=brain)
            values[~brain] = 0
        channels[channel] = values

    # store as BraTS does: LPS (flip x and y of the RAS grid)
    channels = {k: np.ascontiguousarray(v[::-1, ::-1, :]) for k, v in channels.items()}
    label = np.ascontiguousarray(label[::-1, ::-1, :])
    tissue = np.ascontiguousarray(tissue[::-1, ::-1, :])
    return channels, label, _lps_affine(shape, (1.0, 1.0, 1.0)), tissue


# Realistic difficulty: how often a channel was acquired in thick slices, and how thick (mm):
# T2 and FLAIR are often 2-D sequences with 3-5 mm slices, T1 and T1c more often 3-D.
_THICK_SLICES = {
    "t1": (0.3, (2, 3)),
    "t1c": (0.3, (2, 3)),
    "t2": (0.7, (3, 5)),
    "flair": (0.8, (3, 5)),
}


def _scanner_channel(image: np.ndarray, channel: str, rng: np.random.Generator) -> np.ndarray:
    """Realistic difficulty, one channel: thick-slice partial volume and a scanner's gamma.

    A channel acquired with thick slices and resampled to 1 mm: each output slice averages
    over the slice thickness, then over the interpolation between slice centres (two box
    filters along z).
    """
    from scipy.ndimage import uniform_filter1d

    chance, (thinnest, thickest) = _THICK_SLICES[channel]
    if rng.random() < chance:
        thickness = int(rng.integers(thinnest, thickest + 1))  # voxels of 1 mm
        image = uniform_filter1d(image, thickness, axis=2, mode="nearest")
        image = uniform_filter1d(image, thickness, axis=2, mode="nearest")
    gamma = np.float32(rng.uniform(0.8, 1.25))
    return np.power(np.maximum(image, 0, out=image), gamma, dtype=np.float32)


def _add_realistic_lookalikes(
    tissue, coords, brain, depth, fissure, ventricle_q, ax, ay, az, zc, rng
) -> None:
    """Unlabelled look-alikes of the realistic difficulty, painted into ``tissue``.

    Periventricular white-matter hyperintensities (caps and bands along the ventricles, bright
    on FLAIR/T2 like edema), choroid plexus in the ventricles and enhancing dura along the
    brain's surface and the falx (bright on T1c like an enhancing rim).
    """
    f32 = np.float32
    shape = tissue.shape
    x, y, z = coords
    cells = (max(4, shape[0] // 10), max(4, shape[1] // 10), max(3, shape[2] // 10))
    patches = smooth_field(shape, rng, cells)
    reach = f32(rng.uniform(1.5, 2.2))  # in units of the ventricle's own size
    caps = (ventricle_q >= 1) & (ventricle_q < reach**2) & (tissue == _WM)
    tissue[caps & (patches > f32(rng.uniform(-0.3, 0.4)))] = _LESION
    # choroid plexus: small enhancing tufts inside each ventricle's posterior half
    for side in (-1, 1):
        bend = 0.10 * ax * (0.25**2)
        center = np.array([side * (0.085 * ax + bend), -0.25 * ay, zc + 0.22 * az], dtype=f32)
        axes = np.array([2.5, 5.0, 2.0], f32) * f32(rng.uniform(0.7, 1.3))
        plexus = _blob_distance(coords, center, axes, np.eye(3, dtype=f32), 0.2, rng, 3) < 1
        tissue[plexus & (ventricle_q < 1.2)] = _VESSEL
    # dura: patches of the outer 1.8 mm (CSF in the easy phantom) and of the falx
    surface = brain & (depth < 1.8)
    tissue[surface & (patches < f32(rng.uniform(-0.6, 0.2)))] = _DURA
    tissue[fissure & (np.abs(patches) < f32(rng.uniform(0.4, 0.9)))] = _DURA


def _add_tumour(
    tissue, tumour_any, coords, r, brain, ax, ay, az, zc, rng, shape, radius_range=(0.15, 0.45)
) -> None:
    """Paint one glioma (edema, core with enhancing rim, necrotic/non-enhancing centre).

    Its edema's radius is ``radius_range`` (fractions of the brain's smaller half-axis).
    """
    f32 = np.float32
    x, y, z = coords
    scale = float(min(ax, ay))
    # centre: inside the hemisphere white matter, away from the midline
    for _ in range(100):
        side = rng.choice([-1, 1])
        center = np.array(
            [
                side * rng.uniform(0.15, 0.65) * ax,
                rng.uniform(-0.65, 0.65) * ay,
                zc + rng.uniform(0.15, 0.62) * az * np.sign(rng.uniform(-0.3, 1)),
            ],
            dtype=f32,
        )
        rel = np.sqrt((center[0] / ax) ** 2 + (center[1] / ay) ** 2 + ((center[2] - zc) / az) ** 2)
        slab = -(shape[2] - 1) / 2 + 4 <= center[2] <= (shape[2] - 1) / 2 - 4
        if rel < 0.75 and slab:
            break
    edema_radius = scale * rng.uniform(*radius_range)
    edema_axes = (edema_radius * rng.uniform(0.7, 1.3, size=3)).astype(f32)
    core_axes = (edema_axes * rng.uniform(0.45, 0.75)).astype(f32) * rng.uniform(
        0.8, 1.2, size=3
    ).astype(f32)
    core_center = center + (rng.uniform(-0.25, 0.25, size=3) * edema_axes).astype(f32)
    half = edema_axes.max() * 1.6 + 3
    center_vox = np.array(
        [
            center[0] + (shape[0] - 1) / 2,
            center[1] + (shape[1] - 1) / 2,
            center[2] + (shape[2] - 1) / 2,
        ]
    )
    box = _box(center_vox, np.full(3, half), shape)
    sub = (x[box[0], :, :], y[:, box[1], :], z[:, :, box[2]])
    d_edema = _blob_distance(
        sub, center, edema_axes, _rotation(rng), rng.uniform(0.2, 0.4), rng, cells=5
    )
    # the core's irregularity varies on the scale of the core, not of the edema around it
    core_cells = int(np.clip(round(2.5 * half / float(core_axes.mean())), 4, 12))
    d_core = _blob_distance(
        sub, core_center, core_axes, _rotation(rng), rng.uniform(0.12, 0.25), rng, core_cells
    )
    sub_shape = d_core.shape
    region = tissue[box]
    inner = brain[box] & (r[box] < 0.97)
    # edema follows white matter further than grey matter, and stays out of the ventricles
    reach = np.where(region == _WM, f32(1.0), f32(0.8))
    edema = (d_edema < reach) & inner & (region != _CSF)
    core = (d_core < 1) & inner
    mean_core = float(core_axes.mean())
    rim_mm = rng.uniform(1.5, 4.0)
    thickness = (rim_mm / mean_core) * (1 + 0.45 * smooth_field(sub_shape, rng, [4, 4, 4]))
    centre_part = core & (d_core < 1 - np.maximum(thickness, 0.05))
    rim = core & ~centre_part
    low_grade = rng.random() < 0.15
    if low_grade:
        region[edema] = _EDEMA
        region[core] = _NET
    else:
        if rng.random() < 0.4:  # an incomplete ring: part of the rim does not enhance
            gaps = smooth_field(sub_shape, rng, [3, 3, 3]) < rng.uniform(-1.0, -0.3)
        else:
            gaps = np.zeros(sub_shape, dtype=bool)
        region[edema] = _EDEMA
        region[centre_part] = _NEC if mean_core > 6 else _NET
        region[rim & ~gaps] = _ENH
        region[rim & gaps] = _NET
    tumour_any[box] |= edema | core


# --------------------------------------------------------------------------------------------
# Liver CT


def liver_phantom(
    shape: Sequence[int] = LIVER_SHAPE,
    rng: np.random.Generator | int = 0,
    *,
    difficulty: str = "easy",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic abdominal CT: (int16 HU (X, Y, Z), uint8 labels 0/1/2, 4x4 affine).

    The field of view is ``LIVER_FOV_MM`` whatever the shape (the spacing follows); arrays
    are in LPS file order like the brain phantom. ``difficulty``: ``easy`` or ``realistic``
    (see the module docstring).
    """
    values, label, affine, _ = liver_phantom_tissues(shape, rng, difficulty=difficulty)
    return values, label, affine


def liver_phantom_tissues(
    shape: Sequence[int] = LIVER_SHAPE,
    rng: np.random.Generator | int = 0,
    *,
    difficulty: str = "easy",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``liver_phantom`` and its tissue map (uint8 codes of ``LIVER_TISSUES``, same order)."""
    rng = np.random.default_rng(rng)
    shape = _check_shape(shape)
    realistic = _check_difficulty(difficulty)
    nx, ny, nz = shape
    f32 = np.float32
    spacing = [fov / n for fov, n in zip(LIVER_FOV_MM, shape, strict=True)]
    x = ((np.arange(nx, dtype=f32) - (nx - 1) / 2) * f32(spacing[0]))[:, None, None]
    y = ((np.arange(ny, dtype=f32) - (ny - 1) / 2) * f32(spacing[1]))[None, :, None]
    z = ((np.arange(nz, dtype=f32) - (nz - 1) / 2) * f32(spacing[2]))[None, None, :]
    coords = (x, y, z)
    eye = np.eye(3, dtype=f32)
    hu = np.full(shape, -1000.0, dtype=f32)
    label = np.zeros(shape, dtype=np.uint8)
    tissue = np.zeros(shape, dtype=np.uint8)

    def blob(center, axes, roughness=0.1, rotation=None, cells=4):
        return (
            _blob_distance(
                coords,
                np.asarray(center, f32),
                np.asarray(axes, f32),
                eye if rotation is None else rotation,
                roughness,
                rng,
                cells,
            )
            < 1
        )

    # body cross-section: an ellipse, a little wider at the top of the slab
    bx = f32(rng.uniform(140, 165)) * (1 + f32(0.04) * z / f32(LIVER_FOV_MM[2] / 2))
    by = f32(rng.uniform(95, 115))
    y0 = f32(-10.0)
    body_r = np.sqrt((x / bx) ** 2 + ((y - y0) / by) ** 2) + f32(0.02) * smooth_field(
        shape, rng, (4, 4, 3)
    )
    body = body_r < 1
    fat_depth = rng.uniform(0.06, 0.14)
    hu[body] = 40.0
    hu[body & (body_r > 1 - fat_depth - 0.05)] = 45.0  # muscle wall
    hu[body & (body_r > 1 - fat_depth)] = -100.0  # subcutaneous fat
    # visceral fat mixed with soft tissue inside
    interior = body & (body_r < 1 - fat_depth - 0.05)
    mix = smooth_field(shape, rng, (8, 8, 5))
    hu[interior] = np.where(mix[interior] > 0.3, f32(-90.0), f32(25.0))

    top = f32(LIVER_FOV_MM[2] / 2)
    # lung bases, posterior, at the top of the slab
    for side in (-1, 1):
        lung = blob([side * 85, y0 - 45, top + 40], [50, 45, 55], 0.08)
        hu[lung & interior] = -850.0
    # vertebra (cortical rim, cancellous core), spinal canal, posterior process
    spine_y = y0 - by + f32(45)
    vertebra = blob([0, spine_y, 0], [17, 15, 400], 0.02)
    hu[vertebra] = 700.0
    hu[blob([0, spine_y, 0], [14, 12, 400], 0.02)] = 230.0
    hu[blob([0, spine_y - 22, 0], [7, 7, 400], 0.02)] = 20.0
    hu[blob([0, spine_y - 40, 0], [5, 12, 400], 0.02)] = 600.0
    # ribs: small bone cross-sections just inside the body wall, upper half
    for angle in np.linspace(0.2, np.pi - 0.2, 9):
        for side in (-1, 1):
            wall = 1 - fat_depth - 0.025  # inside the muscle band, outside the viscera
            rx = side * np.cos(angle) * float(bx.mean()) * wall
            ry = y0 - np.sin(angle) * by * wall if angle > 1.2 else y0 + np.sin(angle) * by * wall
            hu[blob([rx, ry, top * 0.5], [4, 4, top * 0.7], 0.05) & body & ~interior] = 500.0
    # aorta (left of midline, contrast) and vena cava (right)
    hu[blob([-18, spine_y + 28, 0], [11, 11, 400], 0.02)] = rng.uniform(150, 220)
    hu[blob([22, spine_y + 30, 0], [12, 10, 400], 0.04)] = rng.uniform(100, 140)
    # kidneys (lower half), cortex brighter than medulla
    for side in (-1, 1):
        center = [side * 65, spine_y + 10, -top * 0.35]
        hu[blob(center, [28, 22, 50], 0.1)] = rng.uniform(140, 190)
        hu[blob(center, [16, 12, 36], 0.15)] = rng.uniform(60, 110)
    # stomach with a gas cap, left upper; spleen, left posterior upper (liver-like: distractor)
    stomach = blob([-45, y0 + 35, top * 0.35], [40, 28, 45], 0.15, _rotation(rng))
    hu[stomach] = 15.0
    hu[stomach & (y > y0 + 45)] = -1000.0
    liver_hu = rng.uniform(40, 130) if realistic else rng.uniform(55, 110)
    spleen_hu = liver_hu + rng.uniform(-15, 15)  # drawn before the spleen's shape
    spleen = blob([-85, y0 - 35, top * 0.45], [28, 45, 55], 0.15, _rotation(rng))
    hu[spleen] = spleen_hu
    tissue[spleen] = LIVER_TISSUES["spleen"]
    # bowel gas bubbles, lower abdomen
    for _ in range(int(rng.integers(3, 8))):
        center = [rng.uniform(-80, 60), y0 + rng.uniform(-20, 60), rng.uniform(-top, 0)]
        hu[blob(center, rng.uniform(6, 15, size=3), 0.2) & interior] = -1000.0

    # liver: right upper abdomen (patient right = +x), right lobe plus a left lobe reaching across
    right_lobe = blob(
        [rng.uniform(55, 75), y0 + rng.uniform(-5, 15), top * rng.uniform(0.2, 0.45)],
        [rng.uniform(60, 80), rng.uniform(65, 80), rng.uniform(70, 95)],
        0.12,
        _rotation_small(rng),
        cells=4,
    )
    left_lobe = blob(
        [rng.uniform(-5, 20), y0 + rng.uniform(35, 55), top * rng.uniform(0.3, 0.6)],
        [rng.uniform(40, 60), rng.uniform(25, 35), rng.uniform(35, 50)],
        0.15,
        _rotation_small(rng),
        cells=4,
    )
    liver = (right_lobe | left_lobe) & interior & (hu > -500) & (hu < 200)
    hu[liver] = liver_hu
    label[liver] = 1
    tissue[liver] = LIVER_TISSUES["liver"]
    # hepatic vessels: thin brighter tubes inside the liver (realistic: thicker, and darker
    # than the liver in some phases, like a hypodense lesion)
    width = 0.10 if realistic else 0.06
    vessels = (np.abs(smooth_field(shape, rng, (6, 6, 4))) < width) & liver
    if realistic and rng.random() < 0.4:
        hu[vessels] = liver_hu - rng.uniform(10, 30)
    else:
        hu[vessels] = liver_hu + rng.uniform(20, 50)
    tissue[vessels] = LIVER_TISSUES["hepatic_vessel"]
    if realistic:
        _add_liver_lookalikes(hu, tissue, coords, liver, interior, liver_hu, spacing, rng)

    # tumours inside the liver
    liver_voxels = np.argwhere(liver[::2, ::2, ::2]) * 2
    if not len(liver_voxels):
        n_tumours = 0
    else:  # realistic: several, most of them small
        n_tumours = int(rng.integers(2, 8) if realistic else rng.integers(1, 5))
    for _ in range(n_tumours):
        vox = liver_voxels[rng.integers(len(liver_voxels))]
        center = np.array([x.ravel()[vox[0]], y.ravel()[vox[1]], z.ravel()[vox[2]]], dtype=f32)
        if realistic:
            radius = rng.uniform(5, 11) if rng.random() < 0.7 else rng.uniform(11, 25)
        else:
            radius = rng.uniform(8, 30)
        axes = (radius * rng.uniform(0.75, 1.25, size=3)).astype(f32)
        half_vox = (axes.max() * 1.4 + 3) / np.asarray(spacing)
        box = _box(vox, half_vox, shape)
        sub = (x[box[0], :, :], y[:, box[1], :], z[:, :, box[2]])
        d = _blob_distance(sub, center, axes, _rotation(rng), rng.uniform(0.1, 0.3), rng, cells=4)
        tumour = (d < 1) & liver[box]
        sub_hu = hu[box]
        hyperdense = rng.random() < 0.15
        if realistic:  # low contrast: 15-45 HU from the liver
            value = liver_hu + (1 if hyperdense else -1) * rng.uniform(15, 45)
        elif hyperdense:
            value = liver_hu + rng.uniform(20, 45)  # hyperdense (arterial phase) lesion
        else:
            value = liver_hu - rng.uniform(25, 65)  # hypodense lesion
        texture = smooth_field(d.shape, rng, [3, 3, 3])
        sub_hu[tumour] = value + 8 * texture[tumour]
        if radius > 12 and rng.random() < 0.35:  # rim enhancement of larger lesions
            sub_hu[tumour & (d > 0.85)] = liver_hu + rng.uniform(5, 30)
        label[box][tumour] = 2
        tissue[box][tumour] = LIVER_TISSUES["tumour"]

    # scanner table below the body (a separate component), then correlated noise
    table_y = y0 - by - f32(25)
    table = np.broadcast_to((np.abs(y - table_y) < 6) & (np.abs(x) < 170), shape)
    hu[table] = 150.0
    hu[table & np.broadcast_to(np.abs(y - table_y) < 3, shape)] = -300.0
    noise = _blur(rng.standard_normal(shape, dtype=f32), 0.25)  # CT noise is correlated
    noise_hu = rng.uniform(10, 25) if realistic else rng.uniform(8, 18)
    noise *= f32(noise_hu / 0.23)  # 0.23: std of white noise after this blur
    hu = _blur(hu)
    if realistic:  # thick slices (partial volume along z) and the scanner's HU calibration
        from scipy.ndimage import uniform_filter1d

        if rng.random() < 0.6:
            hu = uniform_filter1d(hu, 2, axis=2, mode="nearest")
        hu += f32(rng.uniform(-20, 20))
    hu += noise
    values = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    values = np.ascontiguousarray(values[::-1, ::-1, :])
    label = np.ascontiguousarray(label[::-1, ::-1, :])
    tissue = np.ascontiguousarray(tissue[::-1, ::-1, :])
    return values, label, _lps_affine(shape, spacing), tissue


def _add_liver_lookalikes(hu, tissue, coords, liver, interior, liver_hu, spacing, rng) -> None:
    """Unlabelled look-alikes of the realistic difficulty: fluid cysts inside the liver
    (labelled liver, as LiTS does) and bowel loops of liver density against its lower edge."""
    f32 = np.float32
    x, y, z = coords
    shape = hu.shape
    liver_voxels = np.argwhere(liver)
    if not len(liver_voxels):
        return

    def paint(center_vox, axes, roughness, where, value, code):
        center = np.array(
            [x.ravel()[center_vox[0]], y.ravel()[center_vox[1]], z.ravel()[center_vox[2]]], f32
        )
        box = _box(center_vox, (axes.max() * 1.3 + 2) / np.asarray(spacing), shape)
        sub = (x[box[0], :, :], y[:, box[1], :], z[:, :, box[2]])
        inside = (_blob_distance(sub, center, axes, _rotation(rng), roughness, rng, 3) < 1) & where[
            box
        ]
        hu[box][inside] = value
        tissue[box][inside] = code

    for _ in range(int(rng.integers(1, 4))):  # simple cysts: water density, sharp edges
        vox = liver_voxels[rng.integers(len(liver_voxels))]
        axes = np.full(3, rng.uniform(4, 11), f32)
        paint(vox, axes, 0.05, liver, rng.uniform(0, 20), LIVER_TISSUES["cyst"])
    # bowel loops (duodenum, colon) of liver density, medial to and below the liver
    low = liver_voxels[liver_voxels[:, 2] <= np.percentile(liver_voxels[:, 2], 40)]
    outside = interior & ~liver & (hu > -200) & (hu < 250)
    for _ in range(int(rng.integers(2, 5))):
        vox = low[rng.integers(len(low))].astype(float)
        vox += np.array([-rng.uniform(4, 10), rng.uniform(-4, 4), -rng.uniform(0, 3)])
        vox = np.clip(np.rint(vox), 0, np.array(shape) - 1).astype(int)
        axes = rng.uniform(10, 20, size=3).astype(f32)
        value = liver_hu + rng.uniform(-15, 10)
        paint(vox, axes, 0.2, outside, value, LIVER_TISSUES["bowel"])


def _rotation_small(rng: np.random.Generator, degrees: float = 20.0) -> np.ndarray:
    """A rotation by at most ``degrees`` about a random axis (organs keep their orientation)."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Writing datasets


def _case_rng(seed: int, index: int, kind: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 1 if kind == "brain" else 2])


@contextlib.contextmanager
def _new_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BraverError("exists and is not a folder", out, "choose another output folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise BraverError(
            "already exists and is not empty", out, "choose another folder or pass --overwrite"
        )
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        yield tmp


def _progress(total: int, description: str, enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{description}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def synth_brain(
    out: str | Path,
    cases: int = 10,
    seed: int = 0,
    shape: Sequence[int] = BRAIN_SHAPE,
    *,
    overwrite: bool = False,
    progress: bool = False,
    skull_stripped: bool = True,
    difficulty: str = "easy",
) -> Path:
    """Write ``cases`` phantom brains in the BraTS 2021 layout to ``out`` (all or nothing).

    ``out/PhantomBrain_00000/PhantomBrain_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` and a
    ``phantom.json`` describing how it was made. ``shape`` is (X, Y, Z) in 1 mm voxels;
    ``skull_stripped=False`` keeps skull and scalp (see ``brain_phantom``); ``difficulty``
    is ``easy`` or ``realistic``.
    """
    shape = _check_shape(shape)
    _check_difficulty(difficulty)
    if cases < 1:
        raise BraverError(f"--cases must be at least 1 (got {cases})")
    with _new_folder(Path(out), overwrite) as tmp, _progress(cases, "synth brain", progress) as bar:
        task = bar.add_task("synth", total=cases)
        for index in range(cases):
            case_id = f"PhantomBrain_{index:05d}"
            channels, label, affine = brain_phantom(
                shape,
                _case_rng(seed, index, "brain"),
                skull_stripped=skull_stripped,
                difficulty=difficulty,
            )
            folder = tmp / case_id
            folder.mkdir()
            for channel, key in BRAIN_CHANNEL_FILES:
                save_nifti(channels[channel], affine, folder / f"{case_id}_{key}.nii.gz")
            save_nifti(label, affine, folder / f"{case_id}_seg.nii.gz")
            bar.update(task, advance=1)
        _write_description(tmp, "brain", cases, seed, shape, skull_stripped, difficulty)
    return Path(out)


def synth_liver(
    out: str | Path,
    cases: int = 10,
    seed: int = 0,
    shape: Sequence[int] = LIVER_SHAPE,
    *,
    overwrite: bool = False,
    progress: bool = False,
    difficulty: str = "easy",
) -> Path:
    """Write ``cases`` phantom abdominal CTs in the LiTS layout to ``out`` (all or nothing).

    ``out/volume-N.nii`` (int16 HU) and ``out/segmentation-N.nii`` (0/1/2) as LiTS ships them;
    ``difficulty`` is ``easy`` or ``realistic``.
    """
    shape = _check_shape(shape)
    _check_difficulty(difficulty)
    if cases < 1:
        raise BraverError(f"--cases must be at least 1 (got {cases})")
    with _new_folder(Path(out), overwrite) as tmp, _progress(cases, "synth liver", progress) as bar:
        task = bar.add_task("synth", total=cases)
        for index in range(cases):
            volume, label, affine = liver_phantom(
                shape, _case_rng(seed, index, "liver"), difficulty=difficulty
            )
            save_nifti(volume, affine, tmp / f"volume-{index}.nii")
            save_nifti(label, affine, tmp / f"segmentation-{index}.nii")
            bar.update(task, advance=1)
        _write_description(tmp, "liver", cases, seed, shape, difficulty=difficulty)
    return Path(out)


def _description(
    kind: str,
    cases: int,
    seed: int,
    shape,
    skull_stripped: bool = True,
    difficulty: str = "easy",
) -> dict:
    description = {
        "generator": "braver.data.phantoms",
        "kind": kind,
        "version": PHANTOM_VERSION,
        "revision": PHANTOM_REVISION,
        "cases": cases,
        "seed": seed,
        "shape_xyz": list(shape),
    }
    if kind == "brain":
        description["skull_stripped"] = skull_stripped
    if difficulty != "easy":  # absent: easy, so that easy datasets made before stay current
        description["difficulty"] = difficulty
    return description


def _write_description(
    folder: Path,
    kind: str,
    cases: int,
    seed: int,
    shape,
    skull_stripped: bool = True,
    difficulty: str = "easy",
) -> None:
    description = _description(kind, cases, seed, shape, skull_stripped, difficulty)
    (folder / "phantom.json").write_text(json.dumps(description, indent=2) + "\n")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file, so two processes do not build the same phantom cache at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the writes are still atomic
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_phantom_cache(
    kind: str = "brain", progress: bool = True, difficulty: str = "easy"
) -> tuple[Path, Path]:
    """The built-in phantom dataset and its prepared cache, made on first use and then reused.

    Lives under ``braver.paths.cache_root()/phantoms/<kind>-v1/`` (``dataset/`` and
    ``cache/``). Brain: 24 cases of 96 x 96 x 48 voxels (1 mm), seed 2017, BraTS 2021 layout
    (labels 0, 1, 2, 4 → classes background, necrosis, edema, enhancing); about 440k voxels
    a case, so sampling and training on 2 CPU cores are quick. Liver: 16 CT cases of
    96 x 96 x 40 voxels (3.75 x 3.75 x 4 mm), LiTS layout, classes background, liver, tumor,
    prepared as ``recipes/liver.toml`` prepares ``--data`` (``PREPARE_LIVER``: CT clipped to
    the liver window [20, 180] HU and z-scored, 5 mm in plane).
    The brain cache is prepared with N4 on all four channels (``PREPARE_BRAIN``); a cache
    left by other settings is prepared again. ``difficulty="realistic"``: the same sizes and
    seed with the realistic phantoms, under ``<kind>-realistic-v1/``.
    Returns ``(dataset_folder, cache_folder)``; open the cache with ``braver.data.cache.Cache``.
    """
    from braver.paths import cache_root
    from braver.preprocess import PrepareSettings, default_workers, prepare_dataset

    if kind not in ("brain", "liver"):
        raise BraverError(f"unknown phantom kind {kind!r}", None, "choose 'brain' or 'liver'")
    _check_difficulty(difficulty)
    spec = DEFAULT_BRAIN if kind == "brain" else DEFAULT_LIVER
    settings = PrepareSettings(**(PREPARE_BRAIN if kind == "brain" else PREPARE_LIVER))
    name = kind if difficulty == "easy" else f"{kind}-{difficulty}"
    base = cache_root() / "phantoms" / f"{name}-v{PHANTOM_VERSION}"
    dataset, cache = base / "dataset", base / "cache"
    expected = _description(kind, spec["cases"], spec["seed"], spec["shape"], difficulty=difficulty)
    if _dataset_matches(dataset, expected) and _cache_complete(cache, spec["cases"], settings):
        return dataset, cache
    with _locked(base.parent / f".{name}-v{PHANTOM_VERSION}.lock"):
        # another process may have made it meanwhile; prepare skips what is up to date
        if not _dataset_matches(dataset, expected):
            synth = synth_brain if kind == "brain" else synth_liver
            synth(
                dataset,
                spec["cases"],
                spec["seed"],
                spec["shape"],
                overwrite=True,
                progress=progress,
                difficulty=difficulty,
            )
        # cases prepared with other settings are prepared again (their fingerprint differs)
        report = prepare_dataset(
            dataset, cache, settings, workers=default_workers(), progress=progress
        )
        if report.failed:
            first = report.failed[0]
            raise BraverError(
                f"could not prepare the phantom {kind} cache ({first.case_id}: {first.reason})",
                cache,
                "delete the folder and try again",
            )
    return dataset, cache


def _dataset_matches(dataset: Path, expected: dict) -> bool:
    try:
        return json.loads((dataset / "phantom.json").read_text()) == expected
    except (OSError, ValueError):
        return False


def _cache_complete(cache: Path, cases: int, settings) -> bool:
    try:
        summary = json.loads((cache / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        len(summary.get("cases", [])) == cases
        and not summary.get("failed")
        and summary.get("settings") == settings.to_dict()
    )

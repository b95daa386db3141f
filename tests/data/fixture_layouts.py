"""Tiny datasets in the exact on-disk layout of every supported format.

Volumes are 8 x 8 x 6 voxels. Inside a foreground box (asymmetric, so that a wrong flip
moves it) channel ``k`` of the brain order (T1, T1c, T2, FLAIR) holds values in
``[1000 (k + 1), 1000 (k + 1) + 100)``, so a test can tell which file ended up in which channel;
outside the box every channel is 0, as in skull-stripped BraTS.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from braver.data.io import save_metaimage

SHAPE = (8, 8, 6)
# foreground box in file voxel coordinates (X, Y, Z), end exclusive
BOX = (slice(1, 6), slice(2, 7), slice(1, 5))
# BraTS files are LPS: first axis to the patient's left, second to posterior
LPS = np.array([[-1.0, 0, 0, 7.0], [0, -1.0, 0, 7.0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
BRAIN_ORDER = ("t1", "t1c", "t2", "flair")
# the foreground box BOX in the LPS file grid, in canonical (RAS) order: RAS flips X and Y, so
# the box becomes X 2:7, Y 1:6, and in (Z, Y, X) order:
CANONICAL_BOX = [[1, 5], [1, 6], [2, 7]]


def lps_to_canonical(array: np.ndarray) -> np.ndarray:
    """(X, Y, Z) in the LPS fixture grid → canonical (Z, Y, X)."""
    return array[::-1, ::-1, :].transpose(2, 1, 0)


def brain_arrays(seed: int = 0, shape=SHAPE, values=(0, 1, 2, 4)):
    """({channel: float32 (X, Y, Z)}, int label (X, Y, Z)) with the foreground in ``BOX``."""
    rng = np.random.default_rng(seed)
    channels = {}
    for k, name in enumerate(BRAIN_ORDER):
        data = np.zeros(shape, dtype=np.float32)
        data[BOX] = 1000 * (k + 1) + rng.uniform(0, 100, size=data[BOX].shape)
        channels[name] = data
    label = np.zeros(shape, dtype=np.uint8)
    label[2:4, 3:6, 2:4] = values[2]
    label[2:3, 3:5, 2:3] = values[1]
    label[4, 4, 3] = values[3]
    return channels, label


def save(path: Path, data: np.ndarray, affine=LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return path


def write_brats2021(root: Path, case_id="BraTS2021_00001", seed=0, label=True, affine=LPS, skip=()):
    folder = root / case_id
    channels, seg = brain_arrays(seed)
    keys = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
    for name, data in channels.items():
        if name not in skip:
            save(folder / f"{case_id}_{keys[name]}.nii.gz", data.astype(np.int16), affine)
    if label:
        save(folder / f"{case_id}_seg.nii.gz", seg, affine)
    return folder


def write_brats2023(root: Path, case_id="BraTS-GLI-00001-000", seed=0, label=True):
    folder = root / case_id
    channels, seg = brain_arrays(seed, values=(0, 1, 2, 3))
    keys = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}
    for name, data in channels.items():
        save(folder / f"{case_id}-{keys[name]}.nii.gz", data, LPS)
    if label:
        save(folder / f"{case_id}-seg.nii.gz", seg, LPS)
    return folder


def write_brats2013(
    root: Path, case="HG/0001", seed=0, label=True, ids=54512, n4itk=(), raw=True
) -> Path:
    """Image_Data/HG/0001/VSD.Brain.XX.O.MR_Flair.54512/VSD.Brain.XX.O.MR_Flair.54512.mha …

    ``n4itk``: channels that also get the challenge's N4-corrected file (``…54513_N4ITK.mha``,
    beside the raw one, values + 1 so a test can tell them apart); with ``raw=False`` those
    channels have only the N4ITK file.
    """
    folder = root / case
    channels, seg = brain_arrays(seed, values=(0, 1, 2, 4))
    seg[5, 5, 3] = 3  # BRATS 2013 has a non-enhancing class
    names = {"flair": "Flair", "t1": "T1", "t1c": "T1c", "t2": "T2"}
    for offset, name in enumerate(("flair", "t1", "t1c", "t2")):
        stem = f"VSD.Brain.XX.O.MR_{names[name]}.{ids + offset}"
        (folder / stem).mkdir(parents=True, exist_ok=True)
        data = channels[name].astype(np.int16)
        if raw or name not in n4itk:
            save_metaimage(data, LPS, folder / stem / f"{stem}.mha")
        if name in n4itk:
            corrected = np.where(data != 0, data + 1, 0).astype(np.int16)
            save_metaimage(corrected, LPS, folder / stem / f"{stem}_N4ITK.mha")
    if label:
        stem = f"VSD.Brain_3more.XX.XX.OT.{ids + 5}"
        (folder / stem).mkdir(parents=True, exist_ok=True)
        save_metaimage(seg, LPS, folder / stem / f"{stem}.mha")
    return folder


MSD_BRAIN_JSON = {
    "name": "BRATS",
    "tensorImageSize": "4D",
    "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
    "labels": {
        "0": "background",
        "1": "edema",
        "2": "non-enhancing tumor",
        "3": "enhancing tumour",
    },
    "numTraining": 2,
    "training": [],
}


def write_msd_brain(root: Path, cases=2, labelled=True):
    task = root / "Task01_BrainTumour"
    spec = dict(MSD_BRAIN_JSON)
    spec["training"] = []
    for index in range(1, cases + 1):
        channels, seg = brain_arrays(index, values=(0, 1, 2, 3))
        stacked = np.stack([channels[c] for c in ("flair", "t1", "t1c", "t2")], axis=-1)
        name = f"BRATS_{index:03d}.nii.gz"
        save(task / "imagesTr" / name, stacked)
        if labelled:
            save(task / "labelsTr" / name, seg)
        spec["training"].append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    # macOS resource-fork files shipped inside the Decathlon tarballs
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (task / "dataset.json").write_text(json.dumps(spec))
    return task


def ct_arrays(seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[BOX] = rng.integers(-150, 250, size=hu[BOX].shape)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:5, 3:6, 2:4] = 1
    label[3, 4, 2] = 2
    return hu, label


def write_msd_liver(root: Path, cases=2):
    task = root / "Task03_Liver"
    spec = {
        "name": "Liver",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [],
    }
    for index in range(cases):
        hu, seg = ct_arrays(index)
        save(task / "imagesTr" / f"liver_{index}.nii.gz", hu)
        save(task / "labelsTr" / f"liver_{index}.nii.gz", seg)
    (task / "imagesTs").mkdir(parents=True, exist_ok=True)
    (task / "dataset.json").write_text(json.dumps(spec))
    return task


def write_lits(root: Path):
    """LiTS as downloaded: two batch folders, volume-N.nii and segmentation-N.nii."""
    for batch, numbers in (("Training Batch 1", (0, 1)), ("Training Batch 2", (10,))):
        for n in numbers:
            hu, seg = ct_arrays(n)
            save(root / batch / f"volume-{n}.nii", hu)
            save(root / batch / f"segmentation-{n}.nii", seg)
    return root

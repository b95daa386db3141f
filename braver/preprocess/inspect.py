"""Looking at a dataset as it is on disk (``braver data inspect``): per-case facts, class
balance, and a PNG montage of slices with the label overlay."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from braver.data.formats import Case
from braver.data.labels import LabelScheme
from braver.errors import BraverError
from braver.preprocess.case import read_case
from braver.preprocess.geometry import axcodes, orientation, to_canonical


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
        "axcodes": axcodes(raw.affine),
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
        ornt = orientation(raw.affine)
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


__all__ = ["describe_case", "class_imbalance", "save_montage"]

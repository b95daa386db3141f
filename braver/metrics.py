"""Segmentation metrics: per-case region scores and fastai metrics for training.

Case scores (``region_scores``) are numpy/scipy; they follow the conventions of the BraTS
challenges so that a case never drops out of a mean:

- Regions are unions of classes named by the label scheme (BraTS: whole_tumor, tumor_core,
  enhancing_tumor — BRATS 2013's complete/core/enhancing under the same names; CT: liver, tumor).
- Empty truth and empty prediction: Dice 1, sensitivity 1, specificity 1, HD95 0.
- A missed region (truth only) or a spurious one (prediction only): Dice 0 and HD95 = the
  *worst value*, the diagonal of the scored volume in millimetres,
  ``sqrt(sum((shape * spacing) ** 2))`` — for a BraTS 240×240×155 volume at 1 mm that is
  373.13 mm, the value BraTS uses. Sensitivity with an empty truth is 1 (nothing was missed;
  the spurious voxels are counted by Dice, specificity and HD95).
- HD95 is the 95th percentile of the pooled symmetric surface distances (medpy's ``hd95``):
  surface = mask minus its erosion with face connectivity, distances by a Euclidean distance
  transform that respects the voxel spacing, computed on the bounding box of both masks.

Training metrics (``RegionDice``, ``PatchAccuracy``) accumulate counts over batches of logits
``(B, K, k, k)`` or ``(B, K)`` against targets ``(B, k, k)`` or ``(B,)`` and gather the counts
across ranks (through ``learn.to_detach``) before computing the value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from fastai.learner import Metric
from scipy import ndimage

from braver.data.labels import LabelScheme

STATISTICS = ("dice", "sensitivity", "specificity", "hd95_mm")


def metric_names(scheme: LabelScheme) -> list[str]:
    """``<region>_<statistic>`` for every region of the scheme, in table order."""
    return [f"{region}_{stat}" for region in scheme.regions for stat in STATISTICS]


def worst_hd95_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The HD95 given to a missed or spurious region: the volume's diagonal in millimetres."""
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True))))


def region_mask(classes: np.ndarray, scheme: LabelScheme, region: str) -> np.ndarray:
    """Boolean mask of ``region`` in a class-index array."""
    lut = np.zeros(max(scheme.num_classes, int(classes.max(initial=0)) + 1), dtype=bool)
    lut[list(scheme.region_classes(region))] = True
    return lut[classes]


def _bounding_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + 1 + margin, mask.shape[axis])))
    return tuple(box)


def surface_distances(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and back.

    Both masks must be non-empty. The work is done on the bounding box of ``a | b`` plus a
    one-voxel margin: every surface voxel lies inside it, so the distances are exact.
    """
    box = _bounding_box(a | b)
    a, b = a[box], b[box]
    structure = ndimage.generate_binary_structure(a.ndim, 1)
    a_surface = a & ~ndimage.binary_erosion(a, structure)
    b_surface = b & ~ndimage.binary_erosion(b, structure)
    spacing = np.asarray(spacing, dtype=np.float64)
    to_b = ndimage.distance_transform_edt(~b_surface, sampling=spacing)[a_surface]
    to_a = ndimage.distance_transform_edt(~a_surface, sampling=spacing)[b_surface]
    return to_b, to_a


def hd95_mm(a: np.ndarray, b: np.ndarray, spacing: Sequence[float], worst: float) -> float:
    """95th percentile Hausdorff distance in mm; 0 if both are empty, ``worst`` if one is."""
    a_any, b_any = bool(a.any()), bool(b.any())
    if not a_any and not b_any:
        return 0.0
    if a_any != b_any:
        return float(worst)
    to_b, to_a = surface_distances(a, b, spacing)
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def binary_scores(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], worst: float
) -> dict[str, float]:
    """Dice, sensitivity, specificity and HD95 (mm) of one boolean prediction against truth."""
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    tn = pred.size - tp - fp - fn
    return {
        "dice": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
        "sensitivity": tp / (tp + fn) if tp + fn else 1.0,
        "specificity": tn / (tn + fp) if tn + fp else 1.0,
        "hd95_mm": hd95_mm(pred, truth, spacing, worst),
    }


def region_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    scheme: LabelScheme,
    spacing_zyx: Sequence[float],
    *,
    worst_hd95: float | None = None,
) -> dict[str, float]:
    """Scores of a class-index prediction against the truth, for every region of the scheme.

    ``pred`` and ``truth``: class indices of the same shape (any axis order, as long as
    ``spacing_zyx`` follows it). ``worst_hd95``: HD95 for a missed or spurious region, by
    default the diagonal of this array in mm (pass the full volume's diagonal when scoring
    a cropped array). Returns ``{<region>_dice, _sensitivity, _specificity, _hd95_mm}``.
    """
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    if worst_hd95 is None:
        worst_hd95 = worst_hd95_mm(truth.shape, spacing_zyx)
    scores: dict[str, float] = {}
    for region in scheme.regions:
        result = binary_scores(
            region_mask(pred, scheme, region),
            region_mask(truth, scheme, region),
            spacing_zyx,
            worst_hd95,
        )
        scores.update({f"{region}_{name}": value for name, value in result.items()})
    return scores


def summarize(rows: Sequence[dict], keys: Sequence[str] | None = None) -> dict[str, dict]:
    """Mean, standard deviation (population) and median of each numeric metric over rows."""
    if keys is None:
        keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))] if rows else []
    summary = {}
    for key in keys:
        values = np.asarray([row[key] for row in rows if key in row], dtype=np.float64)
        if values.size:
            summary[key] = {
                "mean": float(values.mean()),
                "std": float(values.std()),
                "median": float(np.median(values)),
            }
    return summary


def summary_rows(summary: dict[str, dict], label_key: str = "case") -> list[dict]:
    """The summary of ``summarize`` as three table rows (mean, std, median)."""
    stats = ("mean", "std", "median")
    return [{label_key: s, **{k: v[s] for k, v in summary.items()}} for s in stats]


# ---------------------------------------------------------------------------------------------
# fastai metrics for training: counts accumulated over batches, gathered across ranks


def _flat_classes(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true class indices, flattened; logits are (B, K, ...) and target (B, ...)."""
    predicted = pred.argmax(dim=1).reshape(-1)
    target = target.reshape(-1).long()
    if predicted.numel() != target.numel():
        raise ValueError(
            f"logits {tuple(pred.shape)} do not match targets {tuple(target.shape)}: "
            "expected (B, K, k, k) with (B, k, k), or (B, K) with (B,)"
        )
    return predicted, target


def _gathered_sum(learn, counts: torch.Tensor) -> torch.Tensor:
    """Sum ``counts`` over ranks: ``to_detach`` concatenates the copies of each rank."""
    n = counts.numel()
    gathered = learn.to_detach(counts) if learn is not None else counts.detach().cpu()
    return gathered.reshape(-1, n).sum(0)


class RegionDice(Metric):
    """Dice of one region over all pixels seen in an epoch (TP/FP/FN accumulated, gathered)."""

    def __init__(self, scheme: LabelScheme, region: str):
        if region not in scheme.regions:
            raise ValueError(f"{scheme.name} has no region {region!r}: {list(scheme.regions)}")
        self.region = region
        self.classes = scheme.region_classes(region)
        self.num_classes = scheme.num_classes
        self.reset()

    def reset(self) -> None:
        self.tp = self.fp = self.fn = 0

    def counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(TP, FP, FN) of the region for one batch, as an int64 tensor on the batch's device."""
        predicted, target = _flat_classes(pred, target)
        lut = torch.zeros(self.num_classes, dtype=torch.bool, device=predicted.device)
        lut[list(self.classes)] = True
        p, t = lut[predicted], lut[target]
        tp = (p & t).sum()
        return torch.stack([tp, p.sum() - tp, t.sum() - tp])

    def update(self, pred: torch.Tensor, target: torch.Tensor, learn=None) -> None:
        tp, fp, fn = _gathered_sum(learn, self.counts(pred, target)).tolist()
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def accumulate(self, learn) -> None:
        self.update(learn.pred, learn.y, learn)

    @property
    def value(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    @property
    def name(self) -> str:
        return f"{self.region}_dice"


class PatchAccuracy(Metric):
    """Fraction of labelled pixels (patch centres, or every pixel of k×k tiles) classed right."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.correct = self.total = 0

    def update(self, pred: torch.Tensor, target: torch.Tensor, learn=None) -> None:
        predicted, target = _flat_classes(pred, target)
        counts = torch.stack([(predicted == target).sum(), torch.tensor(target.numel())])
        correct, total = _gathered_sum(learn, counts.to(predicted.device)).tolist()
        self.correct += correct
        self.total += total

    def accumulate(self, learn) -> None:
        self.update(learn.pred, learn.y, learn)

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def name(self) -> str:
        return "patch_accuracy"


def region_dice_metrics(scheme: LabelScheme, accuracy: bool = True) -> list[Metric]:
    """One ``RegionDice`` per region of the scheme, plus ``PatchAccuracy``: fastai metrics."""
    metrics: list[Metric] = [RegionDice(scheme, region) for region in scheme.regions]
    if accuracy:
        metrics.append(PatchAccuracy())
    return metrics

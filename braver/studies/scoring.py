"""Several networks scored on the same labelled volumes, one case at a time.

Each case is read (from a prepared cache) or preprocessed (from a dataset folder, with the
run's own prepare settings) once, then every network predicts it whole (dense prediction,
:func:`braver.inference.predict_volume`) and is scored per region
(:func:`braver.metrics.region_scores`), by its accuracy over the image foreground, and by the
seconds the network took per volume. The surgery study (:mod:`braver.studies.surgery`) scores
its variants against the intact network with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from braver.errors import BraverError

#: what the accuracy column measures
ACCURACY = "foreground_accuracy"
ACCURACY_MEANING = (
    "foreground_accuracy: share of the voxels inside the image foreground (any channel ≠ 0) "
    "given their true class, over all cases"
)


class Scored(Protocol):
    """What :func:`evaluate_variants` needs of each network: a name, the model, a note."""

    name: str
    model: nn.Module
    parameters_removed: int
    note: str


@dataclass
class StudyCase:
    """One labelled volume on the preprocessed (cropped canonical) grid."""

    case_id: str
    image: np.ndarray  # (C, Z, Y, X)
    label: np.ndarray  # (Z, Y, X) class indices
    spacing_zyx: tuple[float, ...]
    full_shape_zyx: tuple[int, ...]  # uncropped canonical shape, for the worst HD95
    full_spacing_zyx: tuple[float, ...] | None = None  # its spacing (before resampling)


def cached_cases(cache, case_ids: Sequence[str]) -> Iterator[StudyCase]:
    """Cases of a prepared cache, read one at a time."""
    for case_id in case_ids:
        case = cache.case(case_id)
        if not case.has_label:
            raise BraverError(
                f"case {case_id!r} has no label to score against",
                case.folder,
                "evaluate on labelled cases",
            )
        meta = case.meta
        yield StudyCase(
            case_id,
            np.asarray(case.image, dtype=np.float32),
            np.asarray(case.label),
            tuple(float(s) for s in meta["spacing_zyx"]),
            tuple(meta.get("canonical_shape_zyx", case.label.shape)),
            tuple(float(s) for s in meta.get("source_spacing_zyx", meta["spacing_zyx"])),
        )


def prepared_cases(run_info, cases: Sequence) -> Iterator[StudyCase]:
    """Raw dataset cases preprocessed in memory with the run's prepare settings, one at a time."""
    from braver.inference import channel_order, check_compatible
    from braver.preprocess import PrepareSettings, preprocess_case

    settings = PrepareSettings.from_dict(run_info.prepare)
    for case in cases:
        check_compatible(run_info, case)
        prepared = preprocess_case(case, settings)
        meta = prepared.meta
        yield StudyCase(
            case.case_id,
            np.asarray(prepared.image[channel_order(run_info, case)], dtype=np.float32),
            np.asarray(prepared.label),
            tuple(float(s) for s in meta["spacing_zyx"]),
            tuple(meta.get("canonical_shape_zyx", prepared.label.shape)),
            tuple(float(s) for s in meta.get("source_spacing_zyx", meta["spacing_zyx"])),
        )


@dataclass
class VariantScores:
    """Rows (one per variant, intact first) and every per-case score."""

    rows: list[dict]
    per_case: dict[str, list[dict]]
    regions: list[str]
    notes: list[str]

    @property
    def dice_columns(self) -> list[str]:
        return [f"{region}_dice" for region in self.regions]


#: called as ``step(case_id, variant_name)`` before each prediction
Step = Callable[[str, str], None]


def evaluate_variants(
    variants: Sequence[Scored],
    cases: Iterable[StudyCase],
    scheme,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    step: Step | None = None,
) -> VariantScores:
    """Predict every case with every variant and score it; one row per variant.

    Rows: ``variant``, ``parameters_removed``, ``foreground_accuracy`` (pooled over the voxels
    of all cases), ``<region>_dice`` (mean over cases), ``seconds_per_volume`` (mean time of the
    dense prediction alone), then ``delta_…`` against the intact network and ``note``.
    """
    from braver.inference import predict_volume
    from braver.metrics import region_scores, worst_hd95_mm

    device = torch.device(device)
    regions = list(scheme.regions)
    per_case: dict[str, list[dict]] = {v.name: [] for v in variants}
    correct = dict.fromkeys(per_case, 0)
    counted = dict.fromkeys(per_case, 0)
    for variant in variants:
        variant.model.to(device)
    warmed = False
    for case in cases:
        foreground = (case.image != 0).any(axis=0)
        truth = case.label
        worst = worst_hd95_mm(case.full_shape_zyx, case.full_spacing_zyx or case.spacing_zyx)
        if not warmed:  # first calls pay one-off costs (kernel choice, allocation): not timed
            _warm_up(variants, case.image, device, batch_size)
            warmed = True
        for variant in variants:
            if step is not None:
                step(case.case_id, variant.name)
            start = time.perf_counter()
            probs = predict_volume(variant.model, case.image, device=device, batch_size=batch_size)
            seconds = time.perf_counter() - start
            classes = probs.argmax(axis=0).astype(np.uint8)
            scores = region_scores(classes, truth, scheme, case.spacing_zyx, worst_hd95=worst)
            hits = int(np.count_nonzero((classes == truth) & foreground))
            voxels = int(np.count_nonzero(foreground))
            correct[variant.name] += hits
            counted[variant.name] += voxels
            per_case[variant.name].append(
                {
                    "case": case.case_id,
                    ACCURACY: hits / voxels if voxels else math.nan,
                    **scores,
                    "seconds": seconds,
                }
            )
    if not any(per_case.values()):
        raise BraverError("no case to evaluate", hint="pass --data DATA with labelled cases")
    rows = []
    for variant in variants:
        records = per_case[variant.name]
        row: dict[str, Any] = {
            "variant": variant.name,
            "parameters_removed": variant.parameters_removed,
            ACCURACY: correct[variant.name] / counted[variant.name]
            if counted[variant.name]
            else math.nan,
        }
        for region in regions:
            row[f"{region}_dice"] = float(np.mean([r[f"{region}_dice"] for r in records]))
        row["seconds_per_volume"] = float(np.mean([r["seconds"] for r in records]))
        rows.append(row)
    intact = rows[0]
    compared = [ACCURACY, *(f"{region}_dice" for region in regions)]
    for row, variant in zip(rows, variants, strict=True):
        for key in compared:
            row[f"delta_{key}"] = None if row is intact else row[key] - intact[key]
        row["note"] = variant.note
    notes = list(dict.fromkeys(v.note for v in variants if v.note))
    return VariantScores(rows, per_case, regions, notes)


def _warm_up(variants: Sequence[Scored], image: np.ndarray, device, batch_size) -> None:
    from braver.inference import predict_volume

    counts = np.count_nonzero(image.reshape(image.shape[0], image.shape[1], -1), axis=(0, 2))
    z = int(counts.argmax())
    for variant in variants:
        predict_volume(variant.model, image[:, z : z + 1], device=device, batch_size=batch_size)


__all__ = [
    "ACCURACY",
    "ACCURACY_MEANING",
    "StudyCase",
    "VariantScores",
    "cached_cases",
    "evaluate_variants",
    "prepared_cases",
]

"""Evaluating segmentations: Dice / sensitivity / specificity / HD95 per case and region.

Three ways, one result (a per-case table with mean/std/median, written as ``metrics.csv``,
``metrics.json`` and one overlay PNG per case by ``write_evaluation``):

- ``evaluate_run(run, data=DATA)``: predict every labelled case of DATA and score it in the
  files' own geometry;
- ``evaluate_run(run)``: the run's validation cases from its cache, scored on the cached
  (cropped canonical) grid;
- ``evaluate_predictions(pred, truth)``: score existing ``<case>_seg.nii.gz``.

``braver evaluate`` is these calls and a printout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from braver.errors import BraverError


@dataclass
class Evaluation:
    """What an evaluation scored: its mode, the per-case rows and their summary."""

    mode: str
    rows: list[dict]
    summary: dict[str, dict]
    source: dict[str, Any]

    def report(self) -> dict:
        """The contents of metrics.json."""
        return {
            "mode": self.mode,
            **{k: v for k, v in self.source.items() if k not in ("scheme", "cases")},
            "label_scheme": self.source["scheme"].name,
            "cases": self.rows,
            "summary": self.summary,
        }


class _Silent:
    def step(self, case_id: str):
        return None

    def done(self) -> None:
        pass


@contextmanager
def _no_progress(total: int, description: str) -> Iterator[_Silent]:
    yield _Silent()


def timestamped(folder: str | Path, prefix: str) -> Path:
    """``folder/<prefix>-<UTC time>`` (with a suffix when that exists already)."""
    folder = Path(folder)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target, n = folder / f"{prefix}-{stamp}", 1
    while target.exists():
        n += 1
        target = folder / f"{prefix}-{stamp}-{n}"
    return target


def labelled_cases(dataset) -> list:
    cases = [c for c in dataset.cases if c.has_label]
    if not cases:
        raise BraverError(
            "has no labelled case to score",
            dataset.root,
            "pass a dataset with segmentations (e.g. <case>_seg.nii.gz)",
        )
    return cases


def _collect(mode, scored_cases, source, progress, on_case) -> Evaluation:
    from braver.metrics import summarize

    rows = []
    with (progress or _no_progress)(len(source["cases"]), mode) as tracker:
        for scored in scored_cases(tracker):
            rows.append(scored.row)
            if on_case is not None:
                on_case(scored, source["scheme"])
            tracker.done()
    return Evaluation(mode, rows, summarize(rows), source)


def overlay_writer(out: str | Path) -> Callable:
    """An ``on_case`` that draws ``out/overlays/<case>.png`` as each case is scored."""
    from braver.report import plot_overlay

    def draw(scored, scheme) -> None:
        if scored.image_zyx is None:
            return
        plot_overlay(
            scored.image_zyx,
            scored.truth_zyx,
            scored.classes_zyx,
            Path(out) / "overlays" / f"{scored.case_id}.png",
            scheme=scheme,
            title=scored.case_id,
            spacing_zyx=scored.spacing_zyx,
        )

    return draw


def evaluate_predictions(
    pred: str | Path,
    truth: str | Path,
    *,
    format: str | None = None,
    progress: Callable | None = None,
    on_case: Callable | None = None,
) -> Evaluation:
    """Score existing ``<case>_seg.nii.gz`` in ``pred`` against the labelled dataset ``truth``."""
    from braver.data.formats import discover
    from braver.inference import score_segmentation, segmentation_name

    pred, truth = Path(pred), Path(truth)
    if not pred.is_dir():
        raise BraverError(
            "is not a folder of segmentations", pred, "pass the --out of 'braver predict'"
        )
    dataset = discover(truth, format)
    cases = labelled_cases(dataset)
    missing = [c.case_id for c in cases if not (pred / segmentation_name(c.case_id)).exists()]
    if missing:
        raise BraverError(
            f"has no prediction for {len(missing)} of {len(cases)} case(s), e.g. "
            f"{segmentation_name(missing[0])}",
            pred,
            f"run 'braver predict RUN {truth} --out {pred}' or score a dataset of the predicted cases",
        )

    def scored(tracker):
        for case in cases:
            tracker.step(case.case_id)
            yield score_segmentation(case, pred / segmentation_name(case.case_id), dataset.scheme)

    source = {
        "pred": str(pred),
        "truth": str(truth),
        "geometry": "file grid",
        "scheme": dataset.scheme,
        "cases": cases,
    }
    return _collect("segmentations", scored, source, progress, on_case)


def evaluate_run(
    run: str | Path,
    *,
    data: str | Path | None = None,
    format: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    tta: bool = False,
    postprocess=None,
    progress: Callable | None = None,
    on_case: Callable | None = None,
) -> Evaluation:
    """Score a run: on the labelled dataset ``data`` (predicted in the files' geometry), or
    without ``data`` on its validation cases (its cache). ``postprocess`` is the
    ``braver.inference`` argument (None: the run's own options). ``progress(total, mode)`` is a
    context manager yielding a tracker (``step(case_id)``, ``done()``); ``on_case(scored,
    scheme)`` sees every case as it is scored (``overlay_writer(out)`` draws its PNG)."""
    from braver.postprocess import run_options
    from braver.runs import load_model
    from braver.train.compose import resolve_device

    run = Path(run)
    device = resolve_device(device)
    model, info = load_model(run, device=device)
    options = {
        "device": device,
        "batch_size": batch_size,
        "tta": tta,
        "postprocess": run_options(info, postprocess),
    }
    if data is not None:
        mode, scored, source = _predict_and_score(model, info, run, Path(data), format, options)
    else:
        mode, scored, source = _score_cache(model, info, run, options)
    return _collect(mode, scored, source, progress, on_case)


def _predict_and_score(model, info, run: Path, data: Path, format: str | None, options: dict):
    import numpy as np

    from braver.data.formats import discover
    from braver.inference import ScoredCase, display_channel, predict_case, score_segmentation

    dataset = discover(data, format)
    cases = labelled_cases(dataset)

    def scored(tracker):
        for case in cases:
            result = predict_case(model, info, case, progress=tracker.step(case.case_id), **options)
            file_scores = score_segmentation(case, result.segmentation, with_image=False)
            prepared = result.prepared
            channel = display_channel(prepared.meta["channels"])
            yield ScoredCase(
                case.case_id,
                file_scores.row,
                result.classes_zyx,
                prepared.label,
                tuple(prepared.meta["spacing_zyx"]),
                np.asarray(prepared.image[channel]),
            )

    source = {
        "run": str(run),
        "data": str(data),
        "postprocess": options["postprocess"].to_dict(),
        "geometry": "file grid",
        "scheme": dataset.scheme,
        "cases": cases,
    }
    return "predicted", scored, source


def _score_cache(model, info, run: Path, options: dict):
    from braver.inference import score_cached_case
    from braver.runs import validation_cache

    cache = validation_cache(run, info, "pass --data DATA to predict and score a labelled dataset")
    scheme = cache.scheme

    def scored(tracker):
        for case_id in info.validation_cases:
            yield score_cached_case(
                model, cache.case(case_id), scheme, progress=tracker.step(case_id), **options
            )

    source = {
        "run": str(run),
        "cache": str(cache.root),
        "postprocess": options["postprocess"].to_dict(),
        "geometry": "cached (cropped canonical) grid",
        "scheme": scheme,
        "cases": list(info.validation_cases),
    }
    return "validation", scored, source


def write_evaluation(evaluation: Evaluation, out: str | Path, *, console=None) -> Path:
    """metrics.csv and metrics.json in ``out`` (and the rich table on ``console``)."""
    from braver.metrics import STATISTICS, summary_rows
    from braver.report import write_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_table(
        evaluation.rows,
        out,
        "metrics",
        f"{evaluation.mode}: {len(evaluation.rows)} case(s)",
        summary_rows=summary_rows(evaluation.summary),
        json_data=evaluation.report(),
        console=console,
        column_groups={
            region: [f"{region}_{stat}" for stat in STATISTICS]
            for region in evaluation.source["scheme"].regions
        },
    )
    return out

"""`braver evaluate`: Dice / sensitivity / specificity / HD95 per case and region.

Three ways, one output (a per-case table with mean/std/median, ``metrics.csv``,
``metrics.json`` and one overlay PNG per case):

- ``braver evaluate [RUN] --data DATA``: predict every labelled case of DATA and score it in
  the files' own geometry;
- ``braver evaluate --pred DIR --truth DATA``: score existing ``<case>_seg.nii.gz``;
- ``braver evaluate [RUN]``: the run's validation cases from its cache, scored on the cached
  (cropped canonical) grid.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import (
    BatchSizeOption,
    DeviceOption,
    MinComponentOption,
    PostprocessFlag,
    RunArgument,
    console,
    postprocess_choice,
)
from braver.errors import BraverError


def _timestamped(folder: Path, prefix: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    target, n = folder / f"{prefix}-{stamp}", 1
    while target.exists():
        n += 1
        target = folder / f"{prefix}-{stamp}-{n}"
    return target


def _labelled_cases(dataset):
    cases = [c for c in dataset.cases if c.has_label]
    if not cases:
        raise BraverError(
            "has no labelled case to score",
            dataset.root,
            "pass a dataset with segmentations (e.g. <case>_seg.nii.gz)",
        )
    return cases


def register(app: typer.Typer) -> None:
    @app.command()
    def evaluate(
        run: RunArgument = None,
        data: Annotated[
            Path | None,
            typer.Option(
                "--data", help="Labelled dataset to predict and score.", show_default=False
            ),
        ] = None,
        pred: Annotated[
            Path | None,
            typer.Option(
                "--pred", help="Folder of existing <case>_seg.nii.gz to score.", show_default=False
            ),
        ] = None,
        truth: Annotated[
            Path | None,
            typer.Option(
                "--truth",
                help="Labelled dataset that --pred is scored against.",
                show_default=False,
            ),
        ] = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="Output folder (default: RUN/eval-<timestamp>, or ./eval with --pred).",
                show_default=False,
            ),
        ] = None,
        tta: Annotated[bool, typer.Option("--tta", help="Flip test-time augmentation.")] = False,
        postprocess: PostprocessFlag = True,
        min_component: MinComponentOption = None,
        device: DeviceOption = "auto",
        batch_size: BatchSizeOption = None,
        format: Annotated[
            str | None, typer.Option("--format", help="Dataset layout of DATA/--truth.")
        ] = None,
        overlays: Annotated[
            bool, typer.Option("--overlays/--no-overlays", help="One PNG per case.")
        ] = True,
        runs: Annotated[
            Path,
            typer.Option("--runs", help="Where to look for the latest run when RUN is omitted."),
        ] = Path("runs"),
    ) -> None:
        """Score segmentations per case and region: a table, metrics.csv/json and overlays."""
        from braver.cli.predict import case_progress
        from braver.metrics import STATISTICS, summarize, summary_rows
        from braver.report import plot_overlay, write_table

        if pred is not None or truth is not None:
            if pred is None or truth is None:
                raise typer.BadParameter(
                    "--pred and --truth go together", param_hint="--pred/--truth"
                )
            if run is not None or data is not None:
                raise typer.BadParameter(
                    "score existing segmentations (--pred/--truth) or a run (RUN --data), not both",
                    param_hint="--pred",
                )
            if not pred.is_dir():
                raise BraverError(
                    "is not a folder of segmentations", pred, "pass the --out of 'braver predict'"
                )
            out = out or Path("eval")
            mode, scored_cases, source = _score_predictions(pred, truth, format)
        else:
            from braver.inference import resolve_device
            from braver.postprocess import describe, run_options
            from braver.runs import load_model, resolve_run

            run = resolve_run(run, runs, "brain", "braver evaluate")
            torch_device = resolve_device(device)
            model, info = load_model(run, device=str(torch_device))
            out = out or _timestamped(run, "eval")
            postprocess_options = run_options(info, postprocess_choice(postprocess, min_component))
            console.print(f"post-processing {describe(postprocess_options)}")
            options = {
                "device": torch_device,
                "batch_size": batch_size,
                "tta": tta,
                "postprocess": postprocess_options,
            }
            if data is not None:
                mode, scored_cases, source = _predict_and_score(
                    model, info, run, data, format, options
                )
            else:
                mode, scored_cases, source = _score_cache(model, info, run, options)

        out.mkdir(parents=True, exist_ok=True)
        rows = []
        with case_progress(len(source["cases"]), mode) as tracker:
            for scored in scored_cases(tracker):
                rows.append(scored.row)
                if overlays and scored.image_zyx is not None:
                    plot_overlay(
                        scored.image_zyx,
                        scored.truth_zyx,
                        scored.classes_zyx,
                        out / "overlays" / f"{scored.case_id}.png",
                        scheme=source["scheme"],
                        title=scored.case_id,
                        spacing_zyx=scored.spacing_zyx,
                    )
                tracker.done()
        summary = summarize(rows)
        report = {
            "mode": mode,
            **{k: v for k, v in source.items() if k not in ("scheme", "cases")},
            "label_scheme": source["scheme"].name,
            "cases": rows,
            "summary": summary,
        }
        write_table(
            rows,
            out,
            "metrics",
            f"{mode}: {len(rows)} case(s)",
            summary_rows=summary_rows(summary),
            json_data=report,
            console=console,
            column_groups={
                region: [f"{region}_{stat}" for stat in STATISTICS]
                for region in source["scheme"].regions
            },
        )
        console.print(
            f"wrote metrics.csv, metrics.json{' and overlays' if overlays else ''} to {out}"
        )


def _score_predictions(pred: Path, truth: Path, format: str | None):
    from braver.data.formats import discover
    from braver.inference import score_segmentation, segmentation_name

    dataset = discover(truth, format)
    cases = _labelled_cases(dataset)
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
    return "segmentations", scored, source


def _predict_and_score(model, info, run: Path, data: Path, format: str | None, options: dict):
    import numpy as np

    from braver.data.formats import discover
    from braver.inference import ScoredCase, display_channel, predict_case, score_segmentation

    dataset = discover(data, format)
    cases = _labelled_cases(dataset)

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
    cache_path = cache.root
    scheme = cache.scheme

    def scored(tracker):
        for case_id in info.validation_cases:
            yield score_cached_case(
                model, cache.case(case_id), scheme, progress=tracker.step(case_id), **options
            )

    source = {
        "run": str(run),
        "cache": str(cache_path),
        "postprocess": options["postprocess"].to_dict(),
        "geometry": "cached (cropped canonical) grid",
        "scheme": scheme,
        "cases": list(info.validation_cases),
    }
    return "validation", scored, source

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
        from braver.evaluation import (
            evaluate_predictions,
            evaluate_run,
            overlay_writer,
            timestamped,
            write_evaluation,
        )

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
            out = out or Path("eval")
            evaluation = evaluate_predictions(
                pred,
                truth,
                format=format,
                progress=case_progress,
                on_case=overlay_writer(out) if overlays else None,
            )
        else:
            from braver.postprocess import describe, run_options
            from braver.runs import load_run_info, resolve_run

            run = resolve_run(run, runs, "brain", "braver evaluate")
            out = out or timestamped(run, "eval")
            choice = postprocess_choice(postprocess, min_component)
            console.print(f"post-processing {describe(run_options(load_run_info(run), choice))}")
            evaluation = evaluate_run(
                run,
                data=data,
                format=format,
                device=device,
                batch_size=batch_size,
                tta=tta,
                postprocess=choice,
                progress=case_progress,
                on_case=overlay_writer(out) if overlays else None,
            )
        write_evaluation(evaluation, out, console=console)
        console.print(
            f"wrote metrics.csv, metrics.json{' and overlays' if overlays else ''} to {out}"
        )

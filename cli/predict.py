"""`braver predict`: segment raw cases with a trained run, written as NIfTI beside nothing else."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import (
    BatchSizeOption,
    DeviceOption,
    MinComponentOption,
    PostprocessFlag,
    console,
    postprocess_choice,
    progress_bar,
)
from braver.errors import BraverError

RUN_FILE = "run.json"  # what marks a folder as a run (braver.runs.RUN_FILE; no torch import here)


def split_run(paths: list[Path]) -> tuple[Path | None, list[Path]]:
    """``[RUN] INPUT…`` → (RUN or None, inputs): RUN is a first path that holds run.json."""
    if paths and paths[0].is_dir() and (paths[0] / RUN_FILE).exists():
        run, inputs = paths[0], paths[1:]
    else:
        run, inputs = None, list(paths)
    for path in inputs:
        if path.is_dir() and (path / RUN_FILE).exists():
            raise BraverError(
                "is a run folder among the inputs",
                path,
                "give RUN first, then the cases: braver predict RUN INPUT… --out DIR",
            )
    return run, inputs


@contextmanager
def case_progress(total_cases: int, description: str) -> Iterator:
    """A rich progress bar over cases with a second bar over the slices of the current case.

    Yields ``step(case_id) -> callback`` where the callback is ``predict_volume``'s
    ``progress(done, total)``; call ``done()`` (the yielded object's attribute) after a case.
    """
    bar = progress_bar()
    with bar:
        cases = bar.add_task(description, total=total_cases)
        slices = bar.add_task("  slices", total=None)

        class Tracker:
            def step(self, case_id: str):
                bar.update(slices, description=f"  {case_id}", completed=0, total=None)

                def callback(done: int, total: int) -> None:
                    bar.update(slices, completed=done, total=total)

                return callback

            def done(self) -> None:
                bar.advance(cases)

        yield Tracker()


def register(app: typer.Typer) -> None:
    @app.command(no_args_is_help=True)
    def predict(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="[RUN] INPUT…: an optional run folder (one holding run.json; default: the "
                "latest brain run under ./runs), then case folders, dataset folders or image files.",
                show_default=False,
                metavar="[RUN] INPUT",
            ),
        ],
        out: Annotated[
            Path,
            typer.Option("--out", "-o", help="Folder for <case>_seg.nii.gz.", show_default=False),
        ],
        probabilities: Annotated[
            bool,
            typer.Option(
                "--probabilities",
                help="Also write <case>_probabilities.nii.gz (4D, one volume per class).",
            ),
        ] = False,
        tta: Annotated[
            bool, typer.Option("--tta", help="Average with the left-right flipped prediction.")
        ] = False,
        postprocess: PostprocessFlag = True,
        min_component: MinComponentOption = None,
        device: DeviceOption = "auto",
        batch_size: BatchSizeOption = None,
        format: Annotated[
            str | None,
            typer.Option("--format", help="Dataset layout of the inputs when it cannot be told."),
        ] = None,
        runs: Annotated[
            Path,
            typer.Option("--runs", help="Where to look for the latest run when RUN is omitted."),
        ] = Path("runs"),
    ) -> None:
        """Segment cases with a trained run: <case>_seg.nii.gz with the input's shape and affine."""
        from braver.data.formats import discover_inputs
        from braver.inference import predict_case, resolve_device
        from braver.postprocess import describe, run_options
        from braver.report import write_table
        from braver.runs import load_model, resolve_run

        run, inputs = split_run(paths)
        if not inputs:
            raise typer.BadParameter("give at least one INPUT after RUN", param_hint="INPUT")
        run = resolve_run(run, runs, "brain", "braver predict")
        torch_device = resolve_device(device)
        cases = discover_inputs(inputs, format)
        if out.exists() and not out.is_dir():
            raise BraverError("exists and is not a folder", out, "choose another --out")
        model, info = load_model(run, device=str(torch_device))
        options = run_options(info, postprocess_choice(postprocess, min_component))
        console.print(
            f"[bold]predict[/] {len(cases)} case(s) with {run} on {torch_device}"
            + (" (flip TTA)" if tta else "")
            + f"; post-processing {describe(options)}"
        )
        rows = []
        with case_progress(len(cases), "cases") as tracker:
            for case in cases:
                start = time.perf_counter()
                result = predict_case(
                    model,
                    info,
                    case,
                    out_dir=out,
                    probabilities=probabilities,
                    device=torch_device,
                    batch_size=batch_size,
                    tta=tta,
                    postprocess=options,
                    progress=tracker.step(case.case_id),
                )
                tracker.done()
                values, counts = _value_counts(result.segmentation)
                rows.append(
                    {
                        "case": case.case_id,
                        "shape": "×".join(str(s) for s in result.segmentation.shape),
                        "labels": " ".join(f"{v}:{c}" for v, c in zip(values, counts, strict=True)),
                        "seconds": round(time.perf_counter() - start, 2),
                        "segmentation": result.written[0].name,
                    }
                )
        write_table(rows, out, "predictions", f"Predictions ({run.name})", console=console)
        console.print(f"wrote {len(rows)} segmentation(s) to {out}")


def _value_counts(segmentation):
    import numpy as np

    values, counts = np.unique(segmentation, return_counts=True)
    return values.tolist(), counts.tolist()

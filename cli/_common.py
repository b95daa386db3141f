"""Pieces shared by the command modules: consoles, the error boundary, option types."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from braver.errors import BraverError

console = Console()
err_console = Console(stderr=True)

# set by the top-level --debug option; read by the error boundary below
state = {"debug": False}


class BraverGroup(TyperGroup):
    """Turns a ``BraverError`` anywhere below into one red sentence and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BraverError as error:
            if state["debug"]:
                raise
            # the sentence is text, not markup: "[transfer]" or a path with brackets stays as is
            err_console.print(
                f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None


def is_interactive() -> bool:
    """True when stdout is a terminal (progress bars are drawn only then)."""
    return sys.stdout.isatty()


def progress_bar(transient: bool = True):
    """The commands' rich progress bar (description, bar, n/N, elapsed, remaining).

    Drawn only on a terminal, so logs do not fill with carriage returns.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not is_interactive(),
    )


# parameters that several commands share, declared once
RunArgument = Annotated[
    Path | None,
    typer.Argument(
        help="Run folder (default: the latest brain run under ./runs).", show_default=False
    ),
]
DeviceOption = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
BatchSizeOption = Annotated[
    int | None,
    typer.Option("--batch-size", min=1, help="Axial slices per forward pass.", show_default=False),
]
MinComponentOption = Annotated[
    int | None,
    typer.Option(
        "--min-component",
        min=0,
        help="Remove tumour components smaller than N voxels (default: the run's "
        "post-processing; 0 keeps all).",
        show_default=False,
    ),
]
PostprocessFlag = Annotated[
    bool,
    typer.Option(
        "--postprocess/--no-postprocess",
        help="Apply the run's post-processing (run.json, else braver's defaults: liver = its "
        "largest component; see braver.postprocess).",
    ),
]


def postprocess_choice(enabled: bool, min_component: int | None):
    """--postprocess/--min-component as the ``postprocess`` argument of ``braver.inference``:
    None (the run's options), a mapping of changes to them, or options replacing them all."""
    from braver.postprocess import NONE

    changes = {} if min_component is None else {"min_component_voxels": min_component}
    if not enabled:
        return NONE.replace(**changes)
    return changes or None


FormatOption = Annotated[
    str | None,
    typer.Option("--format", help="Dataset layout, when detection fails.", show_default=False),
]
TrainDeviceOption = Annotated[
    str | None,
    typer.Option("--device", help="cpu or cuda (default: cuda when available)."),
]

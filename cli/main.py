"""``braver``: the command groups composed into one Typer app.

Each module under ``braver.cli`` registers its own commands; heavy imports (torch, fastai)
happen inside the command functions so that ``braver --help`` stays instant.
"""

from __future__ import annotations

import warnings
from typing import Annotated

import typer

from braver.cli import dashboard, data, evaluate, models, predict, prune, train, transfer, tune
from braver.cli._common import BraverGroup, console, state

# fastai 2.8 calls torch.jit.script at import; torch 2.14 warns about it on every command
warnings.filterwarnings(
    "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
)

app = typer.Typer(
    name="braver",
    cls=BraverGroup,
    help="Patch-based tumor segmentation: brain MRI, transfer to liver CT, test-time surgery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from braver import __version__

        console.print(f"braver {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    """braver: the networks of Havaei et al. (2017) for brain tumors, transfer, and surgery."""
    state["debug"] = debug


app.add_typer(data.app, name="data")
app.add_typer(models.app, name="models")
train.register(app)
transfer.register(app)
prune.register(app)
predict.register(app)
evaluate.register(app)
tune.register(app)
dashboard.register(app)


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()

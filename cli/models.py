"""`braver models`."""

from __future__ import annotations

import typer

from braver.cli._common import BraverGroup

app = typer.Typer(cls=BraverGroup, no_args_is_help=True, help="Not built yet.")

"""`braver transfer`."""

from __future__ import annotations

import typer

from braver.errors import BraverError


def register(app: typer.Typer) -> None:
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def transfer() -> None:
        """Not built yet."""
        raise BraverError("'braver transfer' is not built yet in this version of braver")

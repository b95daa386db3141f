"""`braver dashboard`: the run folders in the browser, live while runs train."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import console
from braver.errors import BraverError


def register(app: typer.Typer) -> None:
    @app.command()
    def dashboard(
        runs: Annotated[
            Path, typer.Argument(help="The runs folder to show (run folders directly under it).")
        ] = Path("runs"),
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8765,
        host: Annotated[
            str,
            typer.Option(
                "--host", help="Address to bind; 0.0.0.0 shows the runs to the whole network."
            ),
        ] = "127.0.0.1",
    ) -> None:
        """Serve a local dashboard: runs, curves, validation slices, metrics, studies."""
        if not runs.is_dir():
            raise BraverError(
                "runs folder not found",
                runs,
                "start a run with 'braver train', or pass the folder that holds your runs",
            )
        _check_port(host, port)
        from braver.dashboard.app import LOOPBACK_HOSTS, serve

        shown = "localhost" if host in LOOPBACK_HOSTS else host
        console.print(
            f"braver dashboard of [bold]{runs}[/] at [bold]http://{shown}:{port}/[/] "
            "(Ctrl-C stops it)",
            highlight=False,
        )
        if host not in LOOPBACK_HOSTS:
            console.print(
                f"[yellow]bound to {host}: anyone who can reach this machine can read the runs[/]"
            )
        serve(runs, host=host, port=port)


def _check_port(host: str, port: int) -> None:
    """A clear error instead of uvicorn's when the port is taken."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            raise BraverError(
                f"cannot listen on {host}:{port} ({error.strerror})",
                None,
                f"pass another --port, e.g. --port {port + 1}",
            ) from None

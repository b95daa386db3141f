"""`braver transfer liver`: reuse a trained brain network on liver CT, one run per freeze setup.

``braver transfer liver --freeze local`` adapts the latest brain run under ./runs (or
``--from RUN``) to 1 CT channel and 3 classes, trains it on the liver phantoms (or ``--data``)
with the local path frozen, and writes the comparison table (``braver.transfer_study``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import console, is_interactive
from braver.errors import BraverError


def register(app: typer.Typer) -> None:
    @app.command()
    def transfer(
        recipe: Annotated[
            str,
            typer.Argument(help="A shipped recipe name (liver) or a recipe file (PATH.toml)."),
        ],
        source: Annotated[
            Path | None,
            typer.Option(
                "--from",
                help="Brain run folder to start from (default: the latest brain run in --runs).",
                show_default=False,
            ),
        ] = None,
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Liver dataset folder (LiTS, MSD Task03). Without it: the liver phantoms.",
                show_default=False,
            ),
        ] = None,
        format: Annotated[
            str | None,
            typer.Option(
                "--format", help="Dataset layout, when detection fails.", show_default=False
            ),
        ] = None,
        freeze: Annotated[
            list[str] | None,
            typer.Option(
                "--freeze",
                metavar="GROUP[,GROUP…]",
                help="One setup: groups kept frozen (local, global, both, none, first, second, "
                "a group or layer name; a comma list freezes several). Repeat for more setups. "
                "Default: the recipe's setups.",
                show_default=False,
            ),
        ] = None,
        baseline: Annotated[
            bool,
            typer.Option("--baseline", help="Also train the same network from scratch."),
        ] = False,
        strategy: Annotated[
            str | None,
            typer.Option(
                "--strategy",
                help="Input-channel adaptation: sum, average, repeat or reinit "
                "(default: the recipe's, sum).",
                show_default=False,
            ),
        ] = None,
        out: Annotated[
            Path,
            typer.Option("--out", help="Folder that receives the run folders and the study."),
        ] = Path("runs"),
        runs: Annotated[
            Path,
            typer.Option("--runs", help="Where to look for the latest brain run without --from."),
        ] = Path("runs"),
        device: Annotated[
            str | None,
            typer.Option("--device", help="cpu or cuda (default: cuda when available)."),
        ] = None,
        overrides: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                help="Override a recipe value, e.g. --set stage1.epochs=3 (also transfer.*).",
            ),
        ] = None,
        workers: Annotated[
            int, typer.Option("--workers", help="Processes for preparing --data.")
        ] = 1,
    ) -> None:
        """Train a brain network on liver CT with parts of it frozen; compare the setups.

        Each --freeze value is one setup and one run folder; the study folder
        (OUT/transfer-liver-<time>) gets the table as CSV, JSON and a PNG bar chart.
        """
        import torch

        from braver.recipe import shipped_recipe
        from braver.runs import find_latest_run, load_model, resolve_run
        from braver.transfer import STRATEGIES
        from braver.transfer_study import load_liver_recipe, plan_setups, run_study

        if strategy is not None and strategy not in STRATEGIES:
            raise BraverError(
                f"unknown channel strategy {strategy!r}",
                hint=f"choose one of: {', '.join(STRATEGIES)}",
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        path = Path(recipe)
        if path.suffix != ".toml":
            path = shipped_recipe(recipe)
        elif not path.exists():
            raise BraverError("recipe file not found", path, "check the path")
        loaded, settings = load_liver_recipe(
            path, overrides or [], profile=None if data else "phantom"
        )
        if source is None:
            source = find_latest_run(runs, "brain")
            if source is None:
                raise BraverError(
                    "no finished brain run",
                    runs,
                    "run 'braver train brain' first, or pass --from RUN",
                )
            console.print(f"Starting from the latest brain run: [bold]{source}[/]")
        else:
            source = resolve_run(source, runs, "brain", "braver transfer")
        brain, info = load_model(source)
        if info.kind == loaded.kind:
            raise BraverError(
                f"is already a {info.kind} run",
                source,
                "pass a brain run with --from (transfer starts from another task)",
            )
        setups = plan_setups(brain, freeze, baseline, settings)  # every name checked first
        progress = is_interactive()
        from braver.cli.train import training_cache
        from braver.preprocess import PrepareSettings

        prepare = PrepareSettings.from_dict(
            {k: tuple(v) if isinstance(v, list) else v for k, v in settings.prepare.items()}
        )
        cache = training_cache(
            loaded.kind, data, format=format, workers=workers, progress=progress, settings=prepare
        )
        console.print(
            f"[bold]{len(setups)} setup(s)[/] from {info.model['name']} "
            f"({source.name}), channels by [bold]{strategy or settings.strategy}[/]: "
            + "; ".join(f"{s.name} ({', '.join(s.freeze) or 'nothing'} frozen)" for s in setups)
        )
        result = run_study(
            loaded,
            settings,
            setups,
            brain_run=source,
            cache=cache,
            out=out,
            device=device,
            data=data,
            strategy=strategy,
            console=console,
            progress=progress,
        )
        console.print(f"wrote transfer.csv, transfer.json and transfer.png to {result.folder}")

"""`braver transfer liver`: reuse a trained brain network on liver CT, one run per freeze setup.

``braver transfer liver --freeze local`` adapts the latest brain run under ./runs (or
``--from RUN``) to 1 CT channel and 3 classes, trains it on the liver phantoms (or ``--data``)
with the local path frozen, and writes the comparison table (``braver.studies.transfer``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import FormatOption, TrainDeviceOption, console, is_interactive


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
        format: FormatOption = None,
        freeze: Annotated[
            list[str] | None,
            typer.Option(
                "--freeze",
                metavar="GROUP[,GROUP…]",
                help="One setup: groups kept frozen (local, global, both, none, first, second, "
                "a group or layer name; a comma list freezes several). local freezes the local "
                "path (7x7 and 3x3 convolutions) of a TwoPathCNN, and of both networks of a "
                "cascade. Cascades also take the seed study's setups: seed-local-output, "
                "seed-global-output, seed-both-outputs (only those output layers train) and "
                "seed-e2e. Repeat for more setups. Default: the recipe's setups (on a cascade "
                "the seed's four, then the baseline).",
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
        device: TrainDeviceOption = None,
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
        from braver.data.sources import training_cache
        from braver.studies.transfer import plan_transfer_study, run_transfer_study

        plan = plan_transfer_study(
            recipe,
            source=source,
            runs=runs,
            freeze=freeze,
            baseline=baseline,
            strategy=strategy,
            overrides=overrides or [],
            data=data,
        )
        if plan.latest:
            console.print(f"Starting from the latest brain run: [bold]{plan.brain_run}[/]")
        progress = is_interactive()
        cache = training_cache(
            plan.recipe.kind,
            data,
            format=format,
            workers=workers,
            progress=progress,
            settings=plan.prepare,
            console=console,
        )
        console.print(
            f"[bold]{len(plan.setups)} setup(s)[/] from {plan.brain.config['name']} "
            f"({plan.brain_run.name}), channels by [bold]{plan.strategy}[/]: "
            + "; ".join(
                f"{s.name} ({', '.join(s.freeze) or 'nothing'} frozen)" for s in plan.setups
            )
        )
        study = run_transfer_study(
            plan, cache=cache, out=out, device=device, console=console, progress=progress
        )
        console.print(study.table())
        for row in study.rows:
            console.print(f"  {row['setup']}: {row['run']}", highlight=False)
        console.print(f"wrote transfer.csv, transfer.json and transfer.png to {study.folder}")

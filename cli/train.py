"""`braver train`: a recipe (shipped name or .toml file) + data → one run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import FormatOption, TrainDeviceOption, console, is_interactive
from braver.errors import BraverError


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        recipe: Annotated[
            str,
            typer.Argument(help="A shipped recipe name (brain) or a recipe file (PATH.toml)."),
        ],
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Dataset folder (BraTS / MSD layouts). Without it: the built-in phantoms.",
            ),
        ] = None,
        format: FormatOption = None,
        out: Annotated[
            Path, typer.Option("--out", help="Folder that receives the run folder.")
        ] = Path("runs"),
        device: TrainDeviceOption = None,
        overrides: Annotated[
            list[str] | None,
            typer.Option("--set", help="Override a recipe value, e.g. --set stage1.epochs=3."),
        ] = None,
        resume: Annotated[
            Path | None,
            typer.Option("--resume", help="Continue an interrupted run folder."),
        ] = None,
        wandb: Annotated[
            bool, typer.Option("--wandb", help="Also log to Weights & Biases (offline works).")
        ] = False,
        workers: Annotated[
            int, typer.Option("--workers", help="Processes for preparing --data.")
        ] = 1,
        n4: Annotated[
            bool | None,
            typer.Option(
                "--n4/--no-n4",
                help="N4 bias correction of --data (default: on for MRI, as the paper).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        """Train a network with the paper's two phases and write a run folder.

        With no --data, the phantom set is generated once (under the braver cache) and the
        recipe's phantom profile, sized for a CPU, is used.
        """
        from braver.data.sources import training_cache
        from braver.recipe import load_recipe, shipped_recipe
        from braver.train import resolve_device, train_from_recipe
        from braver.train.distributed import cleanup, setup_from_environment

        device = resolve_device(device)
        # under torchrun: join the process group and pick this rank's GPU before any data moves
        device = setup_from_environment(device)
        path = Path(recipe)
        if path.suffix != ".toml":
            path = shipped_recipe(recipe)
        elif not path.exists():
            raise BraverError("recipe file not found", path, "check the path")
        progress = is_interactive()

        if resume is not None:
            from braver.runs import load_run_info

            load_run_info(resume)  # a clear error when RUN is not a run folder
            folder = train_from_recipe(
                load_recipe(resume / "recipe.toml"),
                resume=resume,
                device=device,
                wandb=wandb,
                console=console,
                progress=progress,
            )
            console.print(f"Run folder: {folder}")
            return

        loaded = load_recipe(path, overrides or [], profile=None if data else "phantom")
        settings = loaded.prepare_settings(**({} if n4 is None else {"n4": n4}))
        cache = training_cache(
            loaded.kind,
            data,
            format=format,
            workers=workers,
            progress=progress,
            settings=settings,
            console=console,
        )
        folder = train_from_recipe(
            loaded,
            cache=cache,
            out=out,
            device=device,
            data=data,
            wandb=wandb,
            console=console,
            progress=progress,
        )
        cleanup()
        console.print(f"Run folder: {folder}")

"""`braver train`: a recipe (shipped name or .toml file) + data → one run folder."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import console, is_interactive
from braver.errors import BraverError


def training_cache(
    kind: str,
    data: Path | None,
    *,
    format: str | None,
    workers: int,
    progress: bool,
    settings=None,
) -> Path:
    """The cache to train on: the built-in phantoms of ``kind`` without ``--data``, else the
    dataset prepared with ``settings``. Shared with ``braver transfer``."""
    if data is not None:
        return prepare_data(
            data, format=format, workers=workers, progress=progress, settings=settings
        )
    from braver.data.phantoms import default_phantom_cache

    console.print(
        f"No --data: using the built-in phantom {kind} set "
        f"(recipe profile [bold]phantom[/], sized for a CPU)"
    )
    return default_phantom_cache(kind, progress=progress)[1]


def _dataset_cache(data: Path) -> Path:
    """Where the prepared cache of a dataset folder lives: keyed by its resolved path."""
    from braver.paths import cache_root

    resolved = data.expanduser().resolve()
    key = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return cache_root() / "datasets" / f"{resolved.name}-{key}"


def prepare_data(
    data: Path, *, format: str | None, workers: int, progress: bool, settings=None
) -> Path:
    """Prepare a dataset folder into its cache (``_dataset_cache``), reporting failed cases;
    returns the cache folder. Shared with ``braver transfer``."""
    from braver.preprocess import prepare_dataset

    if not data.exists():
        raise BraverError("dataset folder not found", data, "check the --data path")
    cache = _dataset_cache(data)
    console.print(f"Preparing [bold]{data}[/] into the cache {cache}")
    report = prepare_dataset(
        data,
        cache,
        settings,
        format=format,
        workers=workers,
        progress=progress,
        console=console,
    )
    if report.failed:
        first = report.failed[0]
        console.print(
            f"[yellow]{len(report.failed)} case(s) could not be prepared[/] "
            f"(first: {first.case_id}: {first.reason}); training on the others"
        )
    if not report.summary and not (cache / "summary.json").exists():
        raise BraverError("no case could be prepared", data, "see 'braver data inspect'")
    return cache


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
        format: Annotated[
            str | None, typer.Option("--format", help="Dataset layout, when detection fails.")
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", help="Folder that receives the run folder.")
        ] = Path("runs"),
        device: Annotated[
            str | None,
            typer.Option("--device", help="cpu or cuda (default: cuda when available)."),
        ] = None,
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
    ) -> None:
        """Train a network with the paper's two phases and write a run folder.

        With no --data, the phantom set is generated once (under the braver cache) and the
        recipe's phantom profile, sized for a CPU, is used.
        """
        import torch

        from braver.recipe import load_recipe, shipped_recipe
        from braver.train import train_from_recipe
        from braver.train.distributed import cleanup, setup_from_environment

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
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
        cache = training_cache(loaded.kind, data, format=format, workers=workers, progress=progress)
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

"""`braver tune`: a hyperparameter search over recipe keys, each trial a run folder.

``braver tune brain --trials 20`` searches the shipped space (recipes/tune_space.toml) with
Optuna on the phantoms (or ``--data``) and writes the study folder (``braver.studies.tune``).
Running the same command again resumes the study; ``--storage postgresql://…`` shares it
between machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import FormatOption, TrainDeviceOption, console, is_interactive
from braver.errors import BraverError


def register(app: typer.Typer) -> None:
    @app.command()
    def tune(
        recipe: Annotated[
            str,
            typer.Argument(
                help="A shipped recipe name (brain, liver) or a recipe file (PATH.toml)."
            ),
        ],
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Dataset folder. Without it: the built-in phantoms.",
                show_default=False,
            ),
        ] = None,
        format: FormatOption = None,
        space: Annotated[
            Path | None,
            typer.Option(
                "--space",
                help="Search space TOML (default: the shipped recipes/tune_space.toml).",
                show_default=False,
            ),
        ] = None,
        trials: Annotated[
            int,
            typer.Option(
                "--trials",
                min=1,
                help="Finished (complete or pruned) trials the study should reach, counting "
                "earlier runs and other processes; a failed trial does not count (the study "
                "stops after as many failures as trials it still needed).",
            ),
        ] = 20,
        timeout: Annotated[
            float | None,
            typer.Option(
                "--timeout",
                help="Start no new trial after this many seconds.",
                show_default=False,
            ),
        ] = None,
        study: Annotated[
            str | None,
            typer.Option(
                "--study",
                help="Study name (default: the recipe's name, e.g. brain-phantom).",
                show_default=False,
            ),
        ] = None,
        storage: Annotated[
            str | None,
            typer.Option(
                "--storage",
                help="Optuna storage URL shared by several processes or machines, e.g. "
                "postgresql://user:password@host/braver (default: OUT/tune-STUDY/study.db).",
                show_default=False,
            ),
        ] = None,
        metric: Annotated[
            str | None,
            typer.Option(
                "--metric",
                help="Whole-volume validation metric to optimise (default: whole_tumor_dice "
                "for brain, tumor_dice for liver); *_hd95_mm is minimised.",
                show_default=False,
            ),
        ] = None,
        pruner: Annotated[
            str,
            typer.Option("--pruner", help="median, halving (successive halving) or none."),
        ] = "median",
        seed: Annotated[
            int | None,
            typer.Option(
                "--seed",
                help="Sampler seed (leave unset when several processes share the study).",
                show_default=False,
            ),
        ] = None,
        out: Annotated[
            Path, typer.Option("--out", help="Folder that receives the study folder.")
        ] = Path("runs"),
        device: TrainDeviceOption = None,
        overrides: Annotated[
            list[str] | None,
            typer.Option(
                "--set", help="Fix a recipe value for every trial, e.g. --set stage1.epochs=5."
            ),
        ] = None,
        workers: Annotated[
            int, typer.Option("--workers", help="Processes for preparing --data.")
        ] = 1,
        source: Annotated[
            Path | None,
            typer.Option(
                "--from",
                help="Transfer: the brain run to start from (default: the latest in --runs).",
                show_default=False,
            ),
        ] = None,
        freeze: Annotated[
            str | None,
            typer.Option(
                "--freeze",
                metavar="GROUP[,GROUP…]",
                help="Transfer: the one setup to tune, as in 'braver transfer --freeze'.",
                show_default=False,
            ),
        ] = None,
        strategy: Annotated[
            str | None,
            typer.Option(
                "--strategy",
                help="Transfer: input-channel adaptation (default: the recipe's).",
                show_default=False,
            ),
        ] = None,
        runs: Annotated[
            Path,
            typer.Option("--runs", help="Transfer: where to look for the latest brain run."),
        ] = Path("runs"),
    ) -> None:
        """Search recipe hyperparameters with Optuna; each trial is a run folder.

        The study folder (OUT/tune-STUDY) gets trials.csv, history.png, importances.png,
        tune.json and best.toml, which 'braver train best.toml' accepts as is. Run the same
        command again to resume; trials a killed process left running are marked failed.
        """
        import torch

        from braver.data.cache import Cache
        from braver.data.sources import training_cache
        from braver.metrics import metric_names
        from braver.recipe import load_recipe, read_recipe_file, shipped_recipe
        from braver.studies import tune as tuning

        if pruner not in tuning.PRUNERS:
            raise BraverError(
                f"unknown pruner {pruner!r}", None, f"choose {', '.join(tuning.PRUNERS)}"
            )
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        path = Path(recipe)
        if path.suffix != ".toml":
            path = shipped_recipe(recipe)
        elif not path.exists():
            raise BraverError("recipe file not found", path, "check the path")
        profile = None if data else "phantom"
        progress = is_interactive()
        transfer = "transfer" in read_recipe_file(path)
        if not transfer and (source or freeze or strategy):
            raise BraverError(
                "--from, --freeze and --strategy tune a transfer recipe (one with a "
                "[transfer] table)",
                path,
                "use e.g. 'braver tune liver --from RUN --freeze local'",
            )
        settings = None
        if transfer:
            from braver.studies.transfer import plan_transfer_study

            plan = plan_transfer_study(
                path,
                source=source,
                runs=runs,
                freeze=[freeze] if freeze else None,
                strategy=strategy,
                overrides=overrides or [],
                data=data,
            )
            loaded = plan.recipe
            if len(plan.setups) != 1:
                raise BraverError(
                    f"a study tunes one transfer setup, and the recipe has {len(plan.setups)}",
                    path,
                    "pass one --freeze, e.g. --freeze local",
                )
            setup = plan.setups[0]
            if plan.latest:
                console.print(f"Starting from the latest brain run: [bold]{plan.brain_run}[/]")
            settings = {
                "transfer": {
                    "from": str(plan.brain_run.resolve()),
                    "freeze": setup.freeze,
                    "strategy": plan.strategy,
                }
            }
            default_name = f"{loaded.name}-{setup.slug}"
            best_tables = {
                "transfer": {"strategy": plan.strategy, "class_map": plan.settings.class_map},
                "prepare": plan.prepare.to_dict(),
            }
            best_command = (
                f"braver transfer best.toml --from {plan.brain_run} --freeze {freeze} [--data DATA]"
            )
        else:
            loaded = load_recipe(path, overrides or [], profile=profile)
            default_name = loaded.name
            best_tables, best_command = None, None
        search = tuning.load_space(space or tuning.default_space_path(), loaded, profile=profile)
        if transfer:
            search, dropped = search.without(tuning.TRANSFER_FIXED)
            if dropped:
                console.print(
                    f"Not searched in transfer (the brain run fixes them): {', '.join(dropped)}"
                )
            if not search.params:
                raise BraverError(
                    "has no key left to search in transfer", search.source, "add optim.* keys"
                )
        cache = training_cache(
            loaded.kind,
            data,
            format=format,
            workers=workers,
            progress=progress,
            settings=plan.prepare if transfer else loaded.prepare_settings(),
            console=console,
        )
        scheme = Cache.open(cache).scheme
        if metric is None:
            metric = tuning.DEFAULT_METRIC.get(loaded.kind) or f"{next(iter(scheme.regions))}_dice"
        if transfer:
            trainer = tuning.transfer_trainer(
                plan, cache, device=device, console=console, progress=progress
            )
        else:
            trainer = tuning.recipe_trainer(
                cache, device=device, data=data, console=console, progress=progress
            )
        name = study or default_name
        result = tuning.tune(
            loaded,
            search,
            trainer,
            folder=out / f"tune-{name}",
            study_name=name,
            metric=metric,
            valid_metrics=metric_names(scheme),
            storage=storage,
            trials=trials,
            timeout=timeout,
            pruner=pruner,
            seed=seed,
            settings=settings,
            best_tables=best_tables,
            best_command=best_command,
            console=console,
        )
        console.print(f"Study folder: {result.folder}")

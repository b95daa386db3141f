"""A recipe → one fit of one Learner with the paper's callbacks → one run folder.

The runner is a composition of the library's pieces, not a second implementation:

- ``recipe_dataloaders``: the patch ``DataBlock`` (``braver.data.blocks``) with the recipe's
  geometry, batch size, split, augmentation;
- ``recipe_learner``: ``braver_learner`` with the recipe's network and optimiser;
- ``recipe_callbacks``: ``CascadeFirst`` (cascades), ``DualStage``, ``PaperSchedule``,
  ``KeepBest`` (``braver.train.stages``, ``braver.train.safety``);
- ``train_from_recipe``: the above, plus the run folder's callbacks (``History``,
  ``Checkpoint``) and its files — run.json and recipe.toml at the start, history.csv and a
  checkpoint after every epoch, model.safetensors, learning_curves.png and metrics.json at the
  end. ``resume=RUN`` continues an interrupted run from its last finished epoch. Its steps
  are functions of their own, each tested alone: ``new_start`` / ``resumed_start``,
  ``class_frequencies``, ``starting_model``, ``new_run_info``, ``freeze_groups``,
  ``record_fit``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from braver.atomic import write_json, write_text
from braver.data.cache import Cache
from braver.errors import BraverError
from braver.recipe import Recipe, load_recipe
from braver.runs import RunInfo, load_run_info, new_run_dir, save_run_info, save_weights
from braver.train.compose import (  # noqa: F401  (the runner's public pieces)
    Distributed,
    recipe_callbacks,
    recipe_dataloaders,
    recipe_learner,
    recipe_model,
    resolve_device,
    total_epochs,
)
from braver.train.run_folder import (  # noqa: F401  (Checkpoint, save_checkpoint: public here too)
    CHECKPOINT,
    PROGRESS,
    Checkpoint,
    _finish,
    _run_callbacks,
    _say,
    save_checkpoint,
)


def train_from_recipe(
    recipe: Recipe,
    *,
    cache: str | Path | Cache | None = None,
    out: str | Path = "runs",
    device: str = "cpu",
    data: str | Path | None = None,
    resume: str | Path | None = None,
    wandb: bool = False,
    console: Console | None = None,
    progress: bool | None = None,
    evaluate: bool = True,
    model: torch.nn.Module | Any = None,
    freeze: Sequence[str] = (),
    keep_trainable: Sequence[str] = (),
    run_extra: dict[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train the recipe's model on a prepared cache and return the run folder.

    ``cache`` is a prepared braver cache (``braver.data.cache``); ``data`` is only recorded.
    ``resume`` continues the run folder of an interrupted run (its own recipe and cache).
    Progress bars are drawn when ``progress`` (default: the console is a terminal).
    Under ``torch.distributed`` every rank trains on its own shard of each epoch's patches
    and rank 0 writes the run folder.

    Transfer (``braver.studies.transfer``): ``model`` starts from this network instead of the
    recipe's (a module, or a function of the training cases' class frequencies that returns
    one); ``freeze`` names groups (``braver.models.naming``) kept frozen in every stage, except
    the parameters named in ``keep_trainable`` (e.g. re-initialised ones); a cascade's first
    network is not trained alone when that leaves it nothing to train.
    ``run_extra`` is merged into run.json's ``extra``; ``callbacks`` join every fit.
    """
    from braver.train.callbacks import read_history

    dist = Distributed.current()
    console = console if dist.main else None
    device = resolve_device(device)
    if progress is None or not dist.main:
        progress = console is not None and console.is_terminal
    started = time.time()
    if wandb and dist.main:
        from braver.train.tracking import require_wandb

        require_wandb()  # before anything is written: a missing package is one clear error

    if resume is not None:
        start = resumed_start(resume, freeze, keep_trainable)
        _say(console, f"[bold]Resuming[/] {start.folder} after {_where(start.state)}")
    else:
        start = new_start(recipe, cache, freeze, keep_trainable)
    recipe, cache, state = start.recipe, start.cache, start.state
    train_cases, valid_cases = start.train_cases, start.valid_cases

    torch.manual_seed(recipe.data.seed)
    frequencies = class_frequencies(cache, train_cases)
    checkpoint = start.folder / CHECKPOINT if start.folder is not None else None
    model = starting_model(recipe, cache, frequencies, model, checkpoint)

    folder, info = start.folder, start.info
    if folder is None:
        folder = _new_run(out, recipe, dist)
        info = new_run_info(
            recipe, model, cache, train_cases, valid_cases, data=data, device=device,
            run_extra=run_extra,
        )  # fmt: skip
        if dist.main:
            write_text(folder / "recipe.toml", recipe.to_toml())
            save_run_info(folder, info)
        _say(console, f"[bold]Run folder[/] {folder}")
        _say(console, f"Watch it live: [bold]braver dashboard {folder.parent}[/]")
    _announce_model(recipe, model, train_cases, valid_cases, device, console)

    dls = recipe_dataloaders(
        recipe,
        cache,
        train_cases,
        valid_cases,
        model.input_sizes,
        device=device,
        dist=dist,
    )
    _announce_flips(recipe, model, console)
    freeze_groups(model, start.freeze, start.keep_trainable)
    learn = recipe_learner(recipe, dls, model, path=folder, progress=False)
    learn.rank = dist.rank
    if device.startswith("cuda"):
        learn.to_bf16()

    history_rows = read_history(folder / "history.csv") if resume is not None else []
    trainable_log = dict(info.extra.get("trainable_parameters", {}))
    run_callbacks, progress_bar, tracker = _run_callbacks(
        recipe, folder, info, history_rows, trainable_log, console, progress, wandb and dist.main,
        run_extra or {},
    )  # fmt: skip
    run_callbacks += list(callbacks)
    fit_callbacks = recipe_callbacks(
        recipe,
        model,
        state=state,
        first_callbacks=[Checkpoint(folder, model, state, "first"), *run_callbacks],
    )
    first = next((cb for cb in fit_callbacks if type(cb).__name__ == "CascadeFirst"), None)
    learn.epoch_offset = state["epochs_done"] if state.get("fit") == "main" else 0
    remaining = total_epochs(recipe) - learn.epoch_offset
    try:
        if "main" not in state["finished"]:
            learn.fit(
                max(remaining, 0),
                cbs=[
                    *fit_callbacks,
                    Checkpoint(folder, model, state, "main"),
                    *run_callbacks,
                ],
            )
    except BaseException:
        if tracker is not None:
            tracker.finish(folder, exit_code=1)
        raise
    finally:
        if progress_bar is not None:
            progress_bar.close()
    if first is not None and first.skipped:
        _say(
            console,
            "[bold cyan]first[/]: not trained alone (the first network is frozen)",
        )

    model = learn.network
    model.requires_grad_(True)
    diverged = bool(getattr(learn, "diverged", False))
    if diverged:
        _say(
            console,
            "[yellow]training diverged[/]: kept the best epoch's weights (see history)",
        )
    if not weights_finite(model):
        state["diverged"] = True
        if dist.main:
            write_json(folder / PROGRESS, state)
        if tracker is not None:
            tracker.finish(folder, exit_code=1)
        raise BraverError(
            "training diverged (the loss became NaN) and no weights were written",
            folder,
            f"lower the learning rate, e.g. --set optim.lr={recipe.optim.lr / 5:g}",
        )
    # stages an interrupted process ended first (progress.json), then this process's own
    info.extra["kept_epochs"] = {
        **state.get("kept_epochs", {}),
        **info.extra.get("kept_epochs", {}),
    }
    record_fit(info, learn, first, round(time.time() - started, 1), trainable_log)
    maps: dict = {}  # class maps of validation cases predicted with the final weights
    if recipe.select.by == "volume" and valid_cases and evaluate:
        maps = _select_weights(recipe, model, learn, cache, valid_cases, device, info, console)
    postprocess = None
    if recipe.postprocess and valid_cases and evaluate:
        postprocess = _choose_postprocess(
            recipe, model, cache, valid_cases, device, console, maps=maps
        )
        info.extra["postprocess"] = postprocess.to_dict()
    rollbacks = getattr(learn, "rollbacks", [])
    if rollbacks or diverged:
        info.extra["rollbacks"] = rollbacks
        info.extra["diverged"] = diverged
    if dist.main:
        save_run_info(folder, info)
        save_weights(folder, model)
        _finish(
            folder, model, cache, valid_cases, history_rows, device, evaluate, console, info,
            postprocess=postprocess, maps=maps,
        )  # fmt: skip
        state["done"] = True
        state["diverged"] = diverged
        write_json(folder / PROGRESS, state)
        (folder / CHECKPOINT).unlink(missing_ok=True)
        from braver.report import write_report_html

        write_report_html(folder)
    if tracker is not None:
        tracker.finish(folder, exit_code=1 if diverged else 0)
    return folder


# ---------------------------------------------------------------------------------------------
# the pieces of train_from_recipe, in the order it uses them


def _first_state() -> dict[str, Any]:
    return {"finished": [], "fit": None, "epochs_done": 0}


@dataclass
class Start:
    """Where a fit starts: the cases of a new run (no folder yet) or an interrupted run's."""

    recipe: Recipe
    cache: Cache
    train_cases: list[str]
    valid_cases: list[str]
    #: progress.json: fits finished, the fit under way and its epochs done (and more)
    state: dict[str, Any] = field(default_factory=_first_state)
    folder: Path | None = None
    info: RunInfo | None = None
    freeze: Sequence[str] = ()
    keep_trainable: Sequence[str] = ()


def new_start(
    recipe: Recipe,
    cache: str | Path | Cache | None,
    freeze: Sequence[str] = (),
    keep_trainable: Sequence[str] = (),
) -> Start:
    """A new run on ``cache``: its labelled cases split into training and validation cases by
    the recipe's seed (and its fold, ``data.fold``, for cross-validation)."""
    from braver.data.sampling import split_cases

    if cache is None:
        raise BraverError("no cache to train on", None, "pass --data or use the phantoms")
    cache = cache if isinstance(cache, Cache) else Cache.open(cache)
    labelled = [c for c in cache.case_ids if cache.case(c).has_label]
    if len(labelled) < 1:
        raise BraverError("has no labelled case to train on", cache.root, "prepare labels")
    try:
        train_cases, valid_cases = split_cases(
            labelled,
            recipe.data.validation_fraction,
            recipe.data.seed,
            recipe.data.min_validation_cases,
            fold=recipe.data.fold if recipe.data.fold >= 0 else None,
            folds=recipe.data.folds,
        )
    except BraverError as error:  # too many folds for this cache's cases: name the cache
        raise BraverError(str(error).rstrip("."), cache.root) from None
    return Start(
        recipe,
        cache,
        train_cases,
        valid_cases,
        freeze=freeze,
        keep_trainable=keep_trainable,
    )


def resumed_start(
    folder: str | Path, freeze: Sequence[str] = (), keep_trainable: Sequence[str] = ()
) -> Start:
    """An interrupted run: its own recipe, cache, cases and progress; a transfer setup's frozen
    groups unless others are given."""
    folder = Path(folder)
    info = load_run_info(folder)
    recipe = load_recipe(folder / "recipe.toml")
    state = _first_state()
    if (folder / PROGRESS).exists():
        state.update(json.loads((folder / PROGRESS).read_text()))
    if state.get("done"):
        raise BraverError(
            "this run has already finished", folder, "start a new run without --resume"
        )
    transfer = info.extra.get("transfer", {})  # a transfer setup keeps its frozen groups
    return Start(
        recipe,
        Cache.open(info.cache),
        list(info.extra["train_cases"]),
        list(info.validation_cases),
        state,
        folder,
        info,
        freeze or transfer.get("freeze", ()),
        keep_trainable or transfer.get("kept_trainable", ()),
    )


def class_frequencies(cache: Cache, train_cases: Sequence[str]) -> list[float]:
    """Each class's share of the training cases' foreground voxels; a class absent from them
    gets a small floor (1e-4 of the total), so its log prior is finite."""
    from braver.data.sampling import PatchSampler

    totals = PatchSampler.from_cache(cache, train_cases).class_totals.astype(np.float64)
    totals = np.maximum(totals, 1e-4 * totals.sum())
    return (totals / totals.sum()).tolist()


def starting_model(
    recipe: Recipe,
    cache: Cache,
    frequencies: list[float],
    model: torch.nn.Module | Any = None,
    checkpoint: Path | None = None,
) -> torch.nn.Module:
    """The network a fit starts from: ``model`` (a module, or a function of the class
    frequencies, given None when the recipe does not set biases from them), else the
    recipe's; with the weights of ``checkpoint`` when that file exists."""
    if model is not None and not isinstance(model, torch.nn.Module):
        model = model(frequencies if recipe.model.bias_from_frequencies else None)
    if model is None:
        model = recipe_model(recipe, cache, frequencies)
    if checkpoint is not None and checkpoint.exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(checkpoint)))
    return model


def new_run_info(
    recipe: Recipe,
    model: torch.nn.Module,
    cache: Cache,
    train_cases: Sequence[str],
    valid_cases: Sequence[str],
    *,
    data: str | Path | None = None,
    device: str = "cpu",
    run_extra: dict[str, Any] | None = None,
) -> RunInfo:
    """run.json of a new run: what it trains, on which cases of which cache, prepared how."""
    info = RunInfo(
        kind=recipe.kind,
        model=model.config,
        label_scheme=cache.scheme.to_json(),
        channels=cache.channels,
        cache=str(cache.root),
        data=str(data) if data is not None else None,
        validation_cases=list(valid_cases),
        prepare=dict(cache.summary.get("settings", {})),
        extra={
            "recipe": recipe.name,
            "train_cases": list(train_cases),
            "device": device,
        },
    )
    info.extra.update(run_extra or {})
    return info


def freeze_groups(
    model: torch.nn.Module, freeze: Sequence[str], keep_trainable: Sequence[str] = ()
) -> None:
    """Stop the gradients of the named groups' parameters (``braver.models.naming``), except
    the parameters named in ``keep_trainable``."""
    from braver.train.callbacks import group_parameters

    if not freeze:
        return
    kept = set(keep_trainable)
    params = dict(model.named_parameters())
    for name in group_parameters(model, freeze):
        if name not in kept:
            params[name].requires_grad_(False)


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def record_fit(info: RunInfo, learn, first, seconds: float, trainable_log: dict) -> None:
    """run.json's account of a finished fit: trainable parameters per stage, training time
    (added to a resumed run's), and the epochs whose weights each fit kept."""
    info.extra["trainable_parameters"] = trainable_log
    info.extra["train_seconds"] = seconds + float(info.extra.get("train_seconds", 0.0))
    info.extra["kept_epochs"] = {
        **info.extra.get("kept_epochs", {}),
        **getattr(learn, "kept", {}),
    }
    if first is not None and getattr(learn, "first_learner", None) is not None:
        info.extra["kept_epochs"].update(getattr(learn.first_learner, "kept", {}))


def _announce_model(recipe, model, train_cases, valid_cases, device, console) -> None:
    from braver.models.naming import parameter_count

    mode = recipe.data.mode + (f" (k = {recipe.data.tile})" if recipe.data.mode == "tile" else "")
    _say(
        console,
        f"[bold]Model[/] {recipe.model.name} ({parameter_count(model):,} parameters, inputs "
        f"{'+'.join(str(s) for s in model.input_sizes)}), {len(train_cases)} training / "
        f"{len(valid_cases)} validation cases, {mode} mode, device {device}",
    )


def _select_weights(recipe, model, learn, cache, valid_cases, device, info, console) -> dict:
    """The weights kept, chosen on whole validation volumes (``select.by = "volume"``); returns
    the kept weights' class maps."""
    from braver.train.selection import select_weights

    chosen = valid_cases[: recipe.select.cases or None]
    _say(console, f"[bold]Choosing[/] the weights on {len(chosen)} validation volumes")
    selection = select_weights(
        model, learn, cache, chosen, device=device, tempered=recipe.select.tempered
    )
    info.extra["selection"] = selection.to_dict()
    scores = ", ".join(f"{k} {v:.3f}" for k, v in selection.mean_dice.items())
    _say(console, f"  kept [bold]{selection.kept}[/] (mean Dice {scores})")
    model.train()
    return selection.maps  # the kept weights' class maps: not predicted again


def _choose_postprocess(recipe, model, cache, valid_cases, device, console, maps=None):
    """The recipe's ``[postprocess]`` for this run: ``"auto"`` keys chosen on the validation
    volumes (``braver.postprocess.recipe_options``). ``maps``: class maps of the final weights
    already predicted; the cases it lacks are predicted and added to it."""
    from braver.inference import class_maps
    from braver.postprocess import AUTO, describe, recipe_options
    from braver.train.selection import MAPS_BUDGET_BYTES

    auto = any(value == AUTO for value in recipe.postprocess.values())
    found = class_maps(model.eval(), cache, valid_cases, device, maps=maps) if auto else []
    small = sum(classes.nbytes for classes, _, _ in found) <= MAPS_BUDGET_BYTES
    if found and maps is not None and small:
        maps.update(
            {case: classes for case, (classes, _, _) in zip(valid_cases, found, strict=True)}
        )
    options, _ = recipe_options(recipe.postprocess, found, cache.scheme, where=recipe.source)
    model.train()
    _say(console, f"[bold]Post-processing[/] {describe(options)}")
    return options


def _announce_flips(recipe: Recipe, model, console) -> None:
    from braver.data.patches import PatchGeometry, symmetric

    sizes = [tuple(model.input_sizes)]
    if hasattr(model, "first"):
        sizes.insert(0, tuple(model.first.input_sizes))
    for key in sizes:
        if recipe.data.flip and not symmetric(PatchGeometry(key, 1)):
            _say(
                console,
                f"[yellow]data.flip is off for inputs {'+'.join(map(str, key))}[/]: an even "
                "input size has no centre pixel, so a mirrored tile would move its labels",
            )


def _where(state: dict) -> str:
    done = ", ".join(state.get("finished", [])) or "nothing"
    current = state.get("fit")
    return f"{done} finished" + (
        f", {state.get('epochs_done', 0)} epochs of {current}" if current else ""
    )


def _new_run(out: str | Path, recipe: Recipe, dist: Distributed) -> Path:
    if dist.world == 1:
        return new_run_dir(out, recipe.name)
    # every rank must agree on the folder: rank 0 makes it and broadcasts the name
    names = [str(new_run_dir(out, recipe.name)) if dist.main else None]
    torch.distributed.broadcast_object_list(names, src=0)
    return Path(names[0])

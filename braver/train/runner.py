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
  end. ``resume=RUN`` continues an interrupted run from its last finished epoch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from rich.console import Console

from braver.atomic import write_json, write_text
from braver.data.cache import Cache
from braver.errors import BraverError
from braver.recipe import Recipe, load_recipe
from braver.runs import RunInfo, load_run_info, new_run_dir, save_run_info, save_weights

CHECKPOINT = "checkpoint.safetensors"
PROGRESS = "progress.json"


@dataclass
class Distributed:
    """Rank and world size of this process (1 process unless torch.distributed is set up)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Distributed:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """``auto``/``None`` → cuda when available, else cpu; ``cpu``, ``cuda``, ``cuda:N`` checked.

    The one device resolver of braver (the CLI's ``--device`` and the library alike)."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise BraverError(
            f"unknown device {name!r}", None, "use auto, cpu, cuda or cuda:N"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BraverError(
            f"device {name!r} was asked for but torch sees no CUDA device", None, "use cpu"
        )
    if parsed.type not in ("cpu", "cuda"):
        raise BraverError(f"device {name!r} is not supported", None, "use cpu or cuda")
    return name


def recipe_dataloaders(
    recipe: Recipe,
    cache: Cache | str | Path,
    train_cases: Sequence[str],
    valid_cases: Sequence[str],
    input_sizes: Sequence[int],
    *,
    device: str = "cpu",
    dist: Distributed | None = None,
):
    """The patch DataLoaders a recipe trains on (balanced stage-1 sampling to start with)."""
    from braver.data.blocks import patch_dataloaders
    from braver.data.patches import Augment

    dist = dist or Distributed()
    data = recipe.data
    tile = data.tile if data.mode == "tile" else 1
    dls = patch_dataloaders(
        cache,
        train_cases,
        valid_cases,
        input_sizes,
        tile=tile,
        bs=data.batch_size,
        train_patches=recipe.stage1.patches_per_epoch,
        valid_patches=data.validation_patches,
        sampling=recipe.stage1.sampling,
        seed=data.seed,
        device=device,
        on_device=data.on_device,
        rank=dist.rank,
        world=dist.world,
        class_weight_power=recipe.optim.class_weight_power,
        augment=Augment(flip=data.flip, intensity=data.intensity),
    )
    if len(dls.loaders) > 1:  # every rank scores the same validation patches
        dls.valid.rank, dls.valid.world = 0, 1
    return dls


def recipe_model(recipe: Recipe, cache: Cache, frequencies: Sequence[float] | None = None):
    """The recipe's network for the cache's channels and classes."""
    from braver.models import create_model

    return create_model(
        recipe.model.name,
        in_channels=len(cache.channels),
        num_classes=cache.scheme.num_classes,
        maxout_k=recipe.model.maxout_k,
        init=recipe.model.init,
        dropout=recipe.model.dropout,
        class_frequencies=frequencies if recipe.model.bias_from_frequencies else None,
    )


def recipe_learner(recipe: Recipe, dls, model: torch.nn.Module, **kwargs):
    """``braver_learner`` with the recipe's optimiser and tile mode."""
    from braver.train.learner import braver_learner

    return braver_learner(
        dls, model, optim=recipe.optim, tile_mode=recipe.data.mode == "tile", **kwargs
    )


def _class_weighting(recipe: Recipe) -> bool:
    return recipe.data.mode == "tile" and recipe.optim.class_weights


def recipe_callbacks(
    recipe: Recipe,
    model: torch.nn.Module,
    *,
    state: dict | None = None,
    first_callbacks: Sequence[Callback] = (),
) -> list[Callback]:
    """The paper's schedule for ``learn.fit(total_epochs(recipe))``: ``CascadeFirst`` (for a
    cascade), ``DualStage``, ``PaperSchedule`` and ``KeepBest``. ``state`` is a resumed run's
    progress (``progress.json``); ``first_callbacks`` join the first network's own fit."""
    from braver.train.safety import KeepBest
    from braver.train.stages import CascadeFirst, DualStage, PaperSchedule

    state = state or {}
    weighting = _class_weighting(recipe)
    callbacks: list[Callback] = []
    if hasattr(model, "first") and hasattr(model, "second"):
        in_first = state.get("fit") == "first"
        callbacks.append(
            CascadeFirst(
                recipe.cascade.first_epochs,
                recipe.cascade.first_stage2_epochs,
                patches=recipe.cascade.first_patches_per_epoch,
                stage2_patches=recipe.stage2.patches_per_epoch,
                stage2_lr=recipe.stage2.lr,
                class_weighting=weighting,
                cbs=[PaperSchedule(recipe.optim), KeepBest(), *first_callbacks],
                done="first" in state.get("finished", []),
                epoch_offset=state.get("epochs_done", 0) if in_first else 0,
                stage2_start=state.get("stage2_start") if in_first else None,
            )
        )
    main = state.get("fit") == "main"
    callbacks += [
        DualStage(
            recipe.stage1.epochs,
            recipe.stage2.epochs,
            stage2_train=recipe.stage2.train or ["output"],
            stage1_lr=recipe.stage1.lr,
            stage2_lr=recipe.stage2.lr,
            stage1_patches=recipe.stage1.patches_per_epoch,
            stage2_patches=recipe.stage2.patches_per_epoch,
            stage1_sampling=recipe.stage1.sampling,
            stage2_sampling=recipe.stage2.sampling,
            stage1_patience=recipe.stage1.patience,
            stage2_patience=recipe.stage2.patience,
            class_weighting=weighting,
            prior_shift=recipe.stage2.prior_shift,
            stage2_start=state.get("stage2_start") if main else None,
        ),
        PaperSchedule(recipe.optim),
        KeepBest(),
    ]
    return callbacks


def total_epochs(recipe: Recipe) -> int:
    """Epochs of the main fit (both stages; a cascade's first network trains before it)."""
    return recipe.stage1.epochs + recipe.stage2.epochs


class Checkpoint(Callback):
    """After every epoch: the whole model's weights (safetensors) and where the run stands."""

    order = 70

    def __init__(self, folder: Path, model: torch.nn.Module, state: dict, fit: str):
        self.folder, self.full_model, self.state, self.fit_name = folder, model, state, fit

    def after_epoch(self):
        learn = self.learn
        self.state["fit"] = self.fit_name
        self.state["epochs_done"] = getattr(learn, "epoch_offset", 0) + self.epoch + 1
        self.state["stage"] = getattr(learn, "stage", None)
        self.state["stage2_start"] = getattr(learn, "stage2_start", None)
        if getattr(learn, "rank", 0) == 0:
            save_checkpoint(self.folder, self.full_model, self.state)

    def after_fit(self):
        if self.fit_name not in self.state["finished"]:
            self.state["finished"].append(self.fit_name)
        self.state.update(fit=None, epochs_done=0, stage=None, stage2_start=None)
        if getattr(self.learn, "rank", 0) == 0:
            save_checkpoint(self.folder, self.full_model, self.state)


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict) -> None:
    from safetensors.torch import save_file

    from braver.atomic import atomic_path

    model = getattr(model, "module", model)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / CHECKPOINT) as tmp:
        save_file(weights, str(tmp))
    write_json(folder / PROGRESS, state)


class Announce(Callback):
    """Prints each stage as it starts (epochs, patches, trainable parameters) and records the
    trainable parameters per stage in ``log``."""

    order = -3

    def __init__(self, recipe: Recipe, console: Console | None, log: dict, folder=None, info=None):
        self.recipe, self.console, self.log = recipe, console, log
        self.folder, self.info = folder, info

    def stage_started(self, stage: str) -> None:
        from braver.models.naming import trainable_parameters

        dl = self.learn.dls.train
        trainable = trainable_parameters(getattr(self.learn.model, "module", self.learn.model))
        self.log[stage] = trainable
        if self.info is not None and getattr(self.learn, "rank", 0) == 0:
            self.info.extra["trainable_parameters"] = dict(self.log)  # the dashboard shows it
            save_run_info(self.folder, self.info)
        unit = "tiles" if dl.geometry.tile > 1 else "patches"
        weighted = " (class-weighted pixels)" if dl.class_weighting else ""
        _say(
            self.console,
            f"[bold cyan]{stage}[/]: {dl.patches_per_epoch:,} {dl.sampling} {unit} an epoch"
            f"{weighted}; trainable parameters {trainable:,}",
        )


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


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
    from braver.data.sampling import PatchSampler, split_cases
    from braver.models.naming import parameter_count
    from braver.train.callbacks import group_parameters, read_history

    dist = Distributed.current()
    console = console if dist.main else None
    device = resolve_device(device)
    if progress is None or not dist.main:
        progress = console is not None and console.is_terminal
    started = time.time()
    if wandb and dist.main:
        from braver.train.tracking import require_wandb

        require_wandb()  # before anything is written: a missing package is one clear error

    state: dict[str, Any] = {"finished": [], "fit": None, "epochs_done": 0}
    if resume is not None:
        folder = Path(resume)
        info = load_run_info(folder)
        recipe = load_recipe(folder / "recipe.toml")
        if (folder / PROGRESS).exists():
            state = {**state, **json.loads((folder / PROGRESS).read_text())}
        if state.get("done"):
            raise BraverError(
                "this run has already finished", folder, "start a new run without --resume"
            )
        cache = Cache.open(info.cache)
        train_cases = list(info.extra["train_cases"])
        valid_cases = list(info.validation_cases)
        transfer = info.extra.get("transfer", {})  # a transfer setup keeps its frozen groups
        freeze = freeze or transfer.get("freeze", ())
        keep_trainable = keep_trainable or transfer.get("kept_trainable", ())
        _say(console, f"[bold]Resuming[/] {folder} after {_where(state)}")
    else:
        if cache is None:
            raise BraverError("no cache to train on", None, "pass --data or use the phantoms")
        cache = cache if isinstance(cache, Cache) else Cache.open(cache)
        labelled = [c for c in cache.case_ids if cache.case(c).has_label]
        if len(labelled) < 1:
            raise BraverError("has no labelled case to train on", cache.root, "prepare labels")
        train_cases, valid_cases = split_cases(
            labelled,
            recipe.data.validation_fraction,
            recipe.data.seed,
            recipe.data.min_validation_cases,
        )
        folder = None

    torch.manual_seed(recipe.data.seed)
    totals = PatchSampler.from_cache(cache, train_cases).class_totals.astype(np.float64)
    # a class absent from the training cases gets a small floor, so its log prior is finite
    totals = np.maximum(totals, 1e-4 * totals.sum())
    frequencies = (totals / totals.sum()).tolist()
    if model is not None and not isinstance(model, torch.nn.Module):
        model = model(frequencies if recipe.model.bias_from_frequencies else None)
    if model is None:
        model = recipe_model(recipe, cache, frequencies)
    if resume is not None and (folder / CHECKPOINT).exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(folder / CHECKPOINT)))

    if folder is None:
        folder = _new_run(out, recipe, dist)
        info = RunInfo(
            kind=recipe.kind,
            model=model.config,
            label_scheme=cache.scheme.to_json(),
            channels=cache.channels,
            cache=str(cache.root),
            data=str(data) if data is not None else None,
            validation_cases=valid_cases,
            prepare=dict(cache.summary.get("settings", {})),
            extra={"recipe": recipe.name, "train_cases": train_cases, "device": device},
        )
        info.extra.update(run_extra or {})
        if dist.main:
            write_text(folder / "recipe.toml", recipe.to_toml())
            save_run_info(folder, info)
        _say(console, f"[bold]Run folder[/] {folder}")
        _say(console, f"Watch it live: [bold]braver dashboard {folder.parent}[/]")
    mode = recipe.data.mode + (f" (k = {recipe.data.tile})" if recipe.data.mode == "tile" else "")
    _say(
        console,
        f"[bold]Model[/] {recipe.model.name} ({parameter_count(model):,} parameters, inputs "
        f"{'+'.join(str(s) for s in model.input_sizes)}), {len(train_cases)} training / "
        f"{len(valid_cases)} validation cases, {mode} mode, device {device}",
    )

    dls = recipe_dataloaders(
        recipe, cache, train_cases, valid_cases, model.input_sizes, device=device, dist=dist
    )
    _announce_flips(recipe, model, console)
    kept = set(keep_trainable)
    if freeze:
        params = dict(model.named_parameters())
        for name in group_parameters(model, freeze):
            if name not in kept:
                params[name].requires_grad_(False)
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
                cbs=[*fit_callbacks, Checkpoint(folder, model, state, "main"), *run_callbacks],
            )
    except BaseException:
        if tracker is not None:
            tracker.finish(folder, exit_code=1)
        raise
    finally:
        if progress_bar is not None:
            progress_bar.close()
    if first is not None and first.skipped:
        _say(console, "[bold cyan]first[/]: not trained alone (the first network is frozen)")

    model = learn.network
    model.requires_grad_(True)
    diverged = bool(getattr(learn, "diverged", False))
    if diverged:
        _say(console, "[yellow]training diverged[/]: kept the best epoch's weights (see history)")
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
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
    seconds = round(time.time() - started, 1)
    info.extra["trainable_parameters"] = trainable_log
    info.extra["train_seconds"] = seconds + float(info.extra.get("train_seconds", 0.0))
    info.extra["kept_epochs"] = {**info.extra.get("kept_epochs", {}), **getattr(learn, "kept", {})}
    if first is not None and getattr(learn, "first_learner", None) is not None:
        info.extra["kept_epochs"].update(getattr(learn.first_learner, "kept", {}))
    if recipe.select.by == "volume" and valid_cases and evaluate:
        from braver.train.selection import select_weights

        chosen = valid_cases[: recipe.select.cases or None]
        _say(console, f"[bold]Choosing[/] the weights on {len(chosen)} validation volumes")
        selection = select_weights(
            model, learn, cache, chosen, device=device, tempered=recipe.select.tempered
        )
        info.extra["selection"] = selection
        scores = ", ".join(f"{k} {v:.3f}" for k, v in selection["mean_dice"].items())
        _say(console, f"  kept [bold]{selection['kept']}[/] (mean Dice {scores})")
        model.train()
    rollbacks = getattr(learn, "rollbacks", [])
    if rollbacks or diverged:
        info.extra["rollbacks"] = rollbacks
        info.extra["diverged"] = diverged
    if dist.main:
        save_run_info(folder, info)
        save_weights(folder, model)
        _finish(folder, model, cache, valid_cases, history_rows, device, evaluate, console, info)
        state["done"] = True
        state["diverged"] = diverged
        write_json(folder / PROGRESS, state)
        (folder / CHECKPOINT).unlink(missing_ok=True)
        from braver.report import write_report_html

        write_report_html(folder)
    if tracker is not None:
        tracker.finish(folder, exit_code=1 if diverged else 0)
    return folder


def _run_callbacks(
    recipe, folder, info, history_rows, trainable_log, console, progress, wandb, run_extra
):
    """The callbacks of the run folder (every fit): history, stage announcements, live status,
    progress, previews, W&B. Returns ``(callbacks, progress callback, W&B tracker)``."""
    from braver.train.callbacks import History
    from braver.train.progress import TrainingProgress
    from braver.train.tracking import LiveStatus, PreviewCallback, WandbTracker

    callbacks: list[Callback] = [
        History(folder / "history.csv", rows=history_rows),
        Announce(recipe, console, trainable_log, folder=folder, info=info),
        LiveStatus(),
    ]
    progress_bar = TrainingProgress(console, live=progress) if console is not None else None
    if progress_bar is not None:
        callbacks.append(progress_bar)
    report = recipe.report
    if report.previews and report.preview_cases > 0:
        callbacks.append(
            PreviewCallback(
                cases=report.preview_cases,
                slices=report.preview_slices,
                budget=report.preview_budget,
            )
        )
    tracker = WandbTracker(group=run_extra.get("wandb_group")) if wandb else None
    if tracker is not None:
        callbacks.append(tracker)
    return callbacks, progress_bar, tracker


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


def _finish(folder, model, cache, valid_cases, history_rows, device, evaluate, console, info):
    """learning_curves.png and metrics.json (whole-volume Dice on the validation cases)."""
    from braver.report import plot_learning_curves

    if history_rows:
        plot_learning_curves(folder / "history.csv", folder / "learning_curves.png")
    patch = {}
    if history_rows:
        last = history_rows[-1]
        patch = {k: _number(v) for k, v in last.items() if k not in ("stage", "epoch", "time")}
    metrics: dict[str, Any] = {"validation_cases": valid_cases, "patch": patch}
    if evaluate and valid_cases:
        from braver.inference import evaluate_cached_cases
        from braver.metrics import summarize

        _say(console, f"[bold]Evaluating[/] whole volumes of {len(valid_cases)} validation cases")
        start = time.time()
        rows = evaluate_cached_cases(model.eval(), cache, valid_cases, device)
        summary = summarize(rows)
        metrics.update({k: v["mean"] for k, v in summary.items()})
        metrics["summary"] = summary
        metrics["cases"] = rows
        metrics["evaluate_seconds"] = round(time.time() - start, 1)
    metrics["train_seconds"] = info.extra.get("train_seconds")
    write_json(folder / "metrics.json", metrics)
    shown = {k: v for k, v in metrics.items() if k.endswith("_dice")}
    if shown:
        _say(console, "  ".join(f"{k} [bold]{v:.3f}[/]" for k, v in shown.items()))
    _say(console, f"[bold green]Done[/] {folder}")


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


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

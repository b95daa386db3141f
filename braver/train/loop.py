"""``train_from_recipe``: one recipe + one cache → one run folder (the paper's two phases).

Phases, each one fastai fit with its own schedule, each epoch checkpointed:

- ``first`` (cascades only): the first TwoPathCNN alone on balanced patches of its own size,
  then frozen (paper 3.3: "we first train the TwoPathCNN, then fix its parameters").
- ``stage1``: balanced patches (paper 3.2, first phase).
- ``stage2``: natural patches with every group but the output layer frozen (second phase).

The run folder (``braver.runs``) gets run.json and recipe.toml at the start, history.csv and
a checkpoint after every epoch, and model.safetensors, learning_curves.png and metrics.json
at the end. ``resume=RUN`` continues an interrupted run from its last finished epoch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from rich.console import Console

from braver.atomic import write_json, write_text
from braver.data.cache import Cache
from braver.errors import BraverError
from braver.recipe import Recipe, StageSection, load_recipe
from braver.runs import RunInfo, load_run_info, new_run_dir, save_run_info, save_weights

CHECKPOINT = "checkpoint.safetensors"
PROGRESS = "progress.json"


@dataclass
class Phase:
    """One fit: which part of the model learns, on which patches, for how long."""

    name: str
    epochs: int
    sampling: str
    patches_per_epoch: int
    lr: float | None
    train: list[str]
    freeze: list[str] = field(default_factory=list)
    patience: int = 0
    first_network: bool = False  # train ``model.first`` alone on its own patch size


def plan_phases(recipe: Recipe, model: torch.nn.Module) -> list[Phase]:
    """The fits a recipe asks for, in order (see the module docstring)."""
    cascade = hasattr(model, "first") and hasattr(model, "second")
    phases = []
    if cascade and recipe.cascade.first_epochs > 0:
        phases.append(
            Phase(
                "first",
                recipe.cascade.first_epochs,
                "balanced",
                recipe.cascade.first_patches_per_epoch,
                None,
                [],
                patience=recipe.stage1.patience,
                first_network=True,
            )
        )
    for name in ("stage1", "stage2"):
        stage: StageSection = getattr(recipe, name)
        train = list(stage.train)
        if cascade:  # a bare part name means the part of the second (final) network
            train = [g if g.split(".")[0] in ("first", "second") else f"second.{g}" for g in train]
            train = train or ["second"]
        phases.append(
            Phase(
                name,
                stage.epochs,
                stage.sampling,
                stage.patches_per_epoch,
                stage.lr,
                train,
                freeze=["first"] if cascade else [],
                patience=stage.patience,
            )
        )
    return phases


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


class Checkpoint(Callback):
    """After every epoch: the model's weights (safetensors) and where the run stands."""

    order = 70

    def __init__(self, folder: Path, model: torch.nn.Module, state: dict, phase: str, offset: int):
        self.folder, self.full_model, self.state = folder, model, state
        self.phase, self.offset = phase, offset

    def after_epoch(self):
        self.state["phase"] = self.phase
        self.state["epochs_done"] = self.offset + self.epoch + 1
        if getattr(self.learn, "rank", 0) == 0:
            save_checkpoint(self.folder, self.full_model, self.state)


def save_checkpoint(folder: Path, model: torch.nn.Module, state: dict) -> None:
    from safetensors.torch import save_file

    from braver.atomic import atomic_path

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / CHECKPOINT) as tmp:
        save_file(weights, str(tmp))
    write_json(folder / PROGRESS, state)


def _say(console: Console | None, text: str) -> None:
    if console is not None:
        console.print(text, highlight=False)


def train_from_recipe(
    recipe: Recipe,
    *,
    cache: str | Path | None = None,
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

    Transfer (``braver.transfer_study``): ``model`` starts from this network instead of
    ``create_model`` (a module, or a function of the training cases' class frequencies that
    returns one); ``freeze`` names groups (``braver.models.naming``) kept frozen in every phase,
    except the parameters named in ``keep_trainable`` (e.g. re-initialised ones); a cascade's
    ``first`` phase is skipped when that leaves its first network nothing to train.
    ``run_extra`` is merged into run.json's ``extra``; ``callbacks`` join every fit.
    """
    from braver.data.blocks import (
        Augment,
        PatchGeometry,
        patch_dataloaders,
        set_sampling,
        symmetric,
    )
    from braver.data.sampling import PatchSampler, split_cases
    from braver.models import create_model
    from braver.models.naming import parameter_count
    from braver.train.callbacks import (
        History,
        freeze_groups,
        group_parameters,
        read_history,
        train_only,
    )
    from braver.train.learner import build_learner, fast_conv_backward, fit_stage

    extra_callbacks = list(callbacks)
    dist = Distributed.current()
    console = console if dist.main else None
    device = _check_device(device)
    if progress is None or not dist.main:
        progress = console is not None and console.is_terminal
    started = time.time()
    if wandb and dist.main:
        _require_wandb()

    state: dict[str, Any] = {"finished": [], "phase": None, "epochs_done": 0}
    if resume is not None:
        folder = Path(resume)
        info = load_run_info(folder)
        recipe = load_recipe(folder / "recipe.toml")
        if (folder / PROGRESS).exists():
            state = json.loads((folder / PROGRESS).read_text())
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

    scheme = cache.scheme
    torch.manual_seed(recipe.data.seed)
    train_sampler = PatchSampler.from_cache(cache, train_cases, scheme.num_classes)
    totals = train_sampler.class_totals.astype(np.float64)
    frequencies = (totals / totals.sum()).tolist() if recipe.model.bias_from_frequencies else None
    if model is not None and not isinstance(model, torch.nn.Module):
        model = model(frequencies)
    if model is None:
        model = create_model(
            recipe.model.name,
            in_channels=len(cache.channels),
            num_classes=scheme.num_classes,
            maxout_k=recipe.model.maxout_k,
            init=recipe.model.init,
            dropout=recipe.model.dropout,
            class_frequencies=frequencies,
        )
    if resume is not None and (folder / CHECKPOINT).exists():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(folder / CHECKPOINT)))
    model.to(device)

    if folder is None:
        folder = _new_run(out, recipe, dist)
        info = RunInfo(
            kind=recipe.kind,
            model=model.config,
            label_scheme=scheme.to_json(),
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
    _say(
        console,
        f"[bold]Model[/] {recipe.model.name} ({parameter_count(model):,} parameters, inputs "
        f"{'+'.join(str(s) for s in model.input_sizes)}), {len(train_cases)} training / "
        f"{len(valid_cases)} validation cases, {recipe.data.mode} mode"
        + (f" (k = {recipe.data.tile})" if recipe.data.mode == "tile" else "")
        + f", device {device}",
    )

    tile = recipe.data.tile if recipe.data.mode == "tile" else 1
    tile_mode = tile > 1
    loader_kw = dict(
        tile=tile,
        bs=recipe.data.batch_size,
        valid_patches=recipe.data.validation_patches,
        seed=recipe.data.seed,
        device=device,
        on_device=recipe.data.on_device,
        rank=dist.rank,
        world=dist.world,
        class_weight_power=recipe.optim.class_weight_power,
        augment=Augment(flip=recipe.data.flip, intensity=recipe.data.intensity),
    )
    history_rows = read_history(folder / "history.csv") if resume is not None else []
    trainable_log = dict(info.extra.get("trainable_parameters", {}))
    wandb_run = _start_wandb(folder, recipe) if wandb and dist.main else None

    dls_cache: dict[tuple, Any] = {}

    def loaders(input_sizes):
        key = tuple(input_sizes)
        if key not in dls_cache and recipe.data.flip and not symmetric(PatchGeometry(key, tile)):
            _say(
                console,
                f"[yellow]data.flip is off for inputs {'+'.join(map(str, key))}[/]: an even "
                "input size has no centre pixel, so a mirrored tile would move its labels",
            )
        if key not in dls_cache:
            dls_cache[key] = patch_dataloaders(
                cache, train_cases, valid_cases, input_sizes, **loader_kw
            )
        return dls_cache[key]

    kept = set(keep_trainable)
    frozen = [p for p in group_parameters(model, freeze) if p not in kept] if freeze else []
    for phase in plan_phases(recipe, model):
        if phase.name in state["finished"] or phase.epochs == 0:
            continue
        if phase.first_network and frozen:
            first = [n for n, _ in model.first.named_parameters()]
            if all(f"first.{n}" in frozen for n in first):
                _say(console, f"[bold cyan]{phase.name}[/]: skipped (the first network is frozen)")
                continue
        start_epoch = state["epochs_done"] if state.get("phase") == phase.name else 0
        net = model.first if phase.first_network else model
        dls = loaders(net.input_sizes)
        weighting = tile_mode and phase.sampling == "balanced" and recipe.optim.class_weights
        set_sampling(dls, phase.sampling, phase.patches_per_epoch, class_weighting=weighting)
        # the validation loader is not sharded: every rank scores the same patches, so early
        # stopping decides the same everywhere
        if len(dls.loaders) > 1:
            dls.valid.rank, dls.valid.world = 0, 1
        dls.train.epoch = start_epoch
        trainable = train_only(net, phase.train)
        if phase.freeze:
            trainable = freeze_groups(model, phase.freeze)
        if frozen:
            trainable = _freeze_parameters(model, net, frozen)
        trainable_log[phase.name] = trainable
        _say(
            console,
            f"[bold cyan]{phase.name}[/]: {phase.epochs} epochs of {phase.patches_per_epoch:,} "
            f"{phase.sampling} {'tiles' if tile_mode else 'patches'}"
            + (" (class-weighted pixels)" if weighting else "")
            + f"; trainable parameters {trainable:,}"
            + (f" ({', '.join(phase.train)})" if phase.train else ""),
        )
        if not device.startswith("cuda"):
            fast_conv_backward(net)
        fit_model = net
        if dist.world > 1:
            fit_model = torch.nn.parallel.DistributedDataParallel(net)
        learn = build_learner(
            dls, fit_model, recipe.optim, scheme, path=folder, tile_mode=tile_mode
        )
        learn.rank = dist.rank
        if not progress:
            learn.remove_cb(ProgressCallback)
        if device.startswith("cuda"):
            learn.to_bf16()
        history = History(
            folder / "history.csv",
            phase.name,
            history_rows,
            on_row=None if progress else (lambda row: _say(console, _row_text(row))),
        )
        history.epoch_offset = start_epoch
        callbacks = [history, Checkpoint(folder, model, state, phase.name, start_epoch)]
        callbacks += list(extra_callbacks)
        if wandb_run is not None:
            from fastai.callback.wandb import WandbCallback

            callbacks.append(WandbCallback(log_preds=False, log_model=False))
        fit_stage(
            learn,
            recipe.optim,
            phase.epochs,
            lr=phase.lr,
            patience=phase.patience,
            start_epoch=start_epoch,
            cbs=callbacks,
        )
        state["finished"].append(phase.name)
        state["phase"], state["epochs_done"] = None, 0
        if dist.main:
            save_checkpoint(folder, model, state)
        if phase.first_network:
            freeze_groups(model, ["first"])

    model.requires_grad_(True)
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        # TerminateOnNaNCallback stopped the fit; weights are not written, so no later
        # command mistakes this folder for a finished run
        raise BraverError(
            "training diverged (the loss became NaN) and no weights were written",
            folder,
            f"lower the learning rate, e.g. --set optim.lr={recipe.optim.lr / 5:g}",
        )
    seconds = round(time.time() - started, 1)
    info.extra["trainable_parameters"] = trainable_log
    info.extra["train_seconds"] = seconds + float(info.extra.get("train_seconds", 0.0))
    if dist.main:
        save_run_info(folder, info)
        save_weights(folder, model)
        _finish(folder, model, cache, valid_cases, history_rows, device, evaluate, console, info)
        state["done"] = True
        write_json(folder / PROGRESS, state)
        (folder / CHECKPOINT).unlink(missing_ok=True)
    if wandb_run is not None:
        wandb_run.finish()
    return folder


def _freeze_parameters(model: torch.nn.Module, net: torch.nn.Module, names: list[str]) -> int:
    """Freeze these parameters of ``model`` (full names); trainable parameters left in ``net``."""
    from braver.models.naming import trainable_parameters

    params = dict(model.named_parameters())
    for name in names:
        params[name].requires_grad_(False)
        params[name].grad = None
    return trainable_parameters(net)


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


def _row_text(row: dict) -> str:
    parts = [f"{row['stage']} epoch {row['epoch']}"]
    for key, value in row.items():
        if key in ("stage", "epoch"):
            continue
        if key == "time":
            parts.append(f"{value:.0f} s")
            continue
        parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return "  ".join(parts)


def _where(state: dict) -> str:
    done = ", ".join(state.get("finished", [])) or "nothing"
    current = state.get("phase")
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


def _check_device(device: str) -> str:
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BraverError(
            "--device cuda was asked for but torch sees no CUDA device", None, "use --device cpu"
        )
    if not (device == "cpu" or device.startswith("cuda")):
        raise BraverError(f"unknown device {device!r}", None, "use cpu or cuda")
    return device


def _require_wandb() -> None:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise BraverError(
            "--wandb needs the wandb package, which is not installed",
            None,
            "pip install wandb, or braver with its wandb extra (WANDB_MODE=offline needs no account)",
        ) from None


def _start_wandb(folder: Path, recipe: Recipe):
    import wandb

    return wandb.init(
        project=os.environ.get("WANDB_PROJECT", "braver"),
        name=folder.name,
        dir=str(folder),
        config=recipe.to_dict(),
    )

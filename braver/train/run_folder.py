"""The run folder's side of training: checkpoints, progress.json, stage announcements, the
trackers a run always has (history, live status, progress, previews, W&B), and the files
written at the end (learning curves, metrics.json)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from fastai.callback.core import Callback
from rich.console import Console

from braver.atomic import write_json
from braver.recipe import Recipe
from braver.runs import save_run_info

CHECKPOINT = "checkpoint.safetensors"
PROGRESS = "progress.json"


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
        self._record_kept()
        if getattr(learn, "rank", 0) == 0:
            save_checkpoint(self.folder, self.full_model, self.state)

    def _record_kept(self) -> None:
        # the epochs the stages ended so far kept (KeepBest): a resumed process trains only
        # the rest, so run.json takes the earlier ones from here
        kept = getattr(self.learn, "kept", {})
        if kept:
            self.state["kept_epochs"] = {**self.state.get("kept_epochs", {}), **kept}

    def after_fit(self):
        self._record_kept()
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
                budget=report.preview_budget or None,  # 0: after every epoch
            )
        )
    tracker = WandbTracker(group=run_extra.get("wandb_group")) if wandb else None
    if tracker is not None:
        callbacks.append(tracker)
    return callbacks, progress_bar, tracker


def _finish(
    folder, model, cache, valid_cases, history_rows, device, evaluate, console, info,
    postprocess=None, maps=None,
):  # fmt: skip
    """learning_curves.png and metrics.json (whole-volume Dice on the validation cases).
    ``maps``: class maps the final weights already predicted (scored, not predicted again)."""
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
        rows = evaluate_cached_cases(
            model.eval(), cache, valid_cases, device, postprocess=postprocess, maps=maps
        )
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

"""Training one transfer setup: the brain network adapted, some groups frozen, one run folder.

:func:`train_setup` builds the adapted network (:func:`braver.transfer.adapt_for_transfer`,
with the setup's kept outputs and class-map strategy), hands it to the recipe runner
(:func:`braver.train.train_from_recipe`) with the setup's frozen groups, and records what the
comparison needs: accuracy on the training batches, CPU seconds per epoch, and the number of
parameters that were trained. :class:`FrozenSlices` keeps the transferred input channels of a
partly re-initialised layer inside a frozen group bit-identical.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from rich.console import Console

from braver.recipe import Recipe
from braver.studies.transfer_setups import Setup


def frozen_slices(model, freeze: list[str], description: dict) -> dict[str, list[int]]:
    """Partly re-initialised weights inside frozen groups: the input channels that keep their
    transferred values (a cascade's second network: its image channels, while its weights on
    the first network's new class map learn)."""
    from braver.train.callbacks import group_parameters
    from braver.transfer import input_layout

    frozen = set(group_parameters(model, freeze)) if freeze else set()
    layout = input_layout(model)
    slices = {}
    for name in description["partly_reinitialised"]:
        if name not in frozen:
            continue
        channels, start = [], 0
        for kind, count in layout[name.rsplit(".", 1)[0]]:
            if kind != "class_map":
                channels += list(range(start, start + count))
            start += count
        slices[name] = channels
    return slices


class FrozenSlices(Callback):
    """Keeps some input channels of trainable weights bit-identical: restores them after every
    optimiser step (weight decay and momentum included)."""

    order = 90  # after every callback that changes weights in after_step

    def __init__(self, slices: dict[str, list[int]]):
        self.slices = slices
        self.saved: dict[str, tuple] = {}

    def bind(self, model) -> None:
        params = dict(model.named_parameters())
        self.saved = {
            name: (params[name], params[name].detach()[:, channels].clone(), channels)
            for name, channels in self.slices.items()
        }

    def frozen_count(self, param) -> int:
        for p, values, _ in self.saved.values():
            if p is param:
                return values.numel()
        return 0

    def after_step(self):
        import torch

        with torch.no_grad():
            for param, values, channels in self.saved.values():
                param[:, channels] = values.to(param.device)


class TrainRecord(Callback):
    """Per epoch: accuracy on the training batches and the process's CPU seconds (robust to
    other jobs sharing the CPU, unlike wall time); which parameters were trained."""

    order = 60  # before History (65), after the Recorder

    def __init__(self, slices: FrozenSlices | None = None):
        self.slices = slices
        self.accuracies: list[float] = []
        self.cpu_seconds: list[float] = []
        self.trained: dict[int, int] = {}
        self.correct = self.total = 0

    def before_fit(self):
        for param in self.learn.model.parameters():
            if param.requires_grad:
                frozen = self.slices.frozen_count(param) if self.slices else 0
                self.trained[id(param)] = param.numel() - frozen

    def before_epoch(self):
        self.correct = self.total = 0
        self.cpu_start = time.process_time()

    def after_batch(self):
        if not self.training:
            return
        pred, target = self.learn.pred, self.learn.y
        predicted = pred.argmax(1)
        self.correct = self.correct + (predicted == target).sum()
        self.total += target.numel()

    def after_epoch(self):
        correct = float(self.correct)
        self.accuracies.append(correct / self.total if self.total else math.nan)
        self.cpu_seconds.append(round(time.process_time() - self.cpu_start, 2))

    @property
    def trained_parameters(self) -> int:
        return sum(self.trained.values())


def second_network_frozen(model, freeze: list[str], keep: list[str]) -> bool:
    """True when ``freeze`` leaves a cascade's second network no parameter to train."""
    from braver.train.callbacks import group_parameters

    if not (hasattr(model, "first") and hasattr(model, "second")) or not freeze:
        return False
    frozen = set(group_parameters(model, freeze)) - set(keep)
    return all(name in frozen for name, _ in model.named_parameters() if name.startswith("second."))


def train_setup(
    setup: Setup,
    recipe: Recipe,
    brain,
    brain_run: Path,
    cache,
    *,
    out: Path,
    device: str,
    data: Path | None,
    strategy: str,
    class_map: str,
    console: Console | None,
    progress: bool,
    callbacks: Sequence[Any] = (),
) -> Path:
    """One setup → one run folder (kind ``liver``); ``callbacks`` join every fit."""
    from braver.models import create_model
    from braver.train import train_from_recipe
    from braver.transfer import adapt_for_transfer

    in_channels, num_classes = len(cache.channels), cache.scheme.num_classes
    config = brain.config
    class_map = setup.class_map or class_map
    adapt = {"class_map": class_map, "keep_outputs": setup.keep_outputs}
    recipe = replace(
        recipe,
        name=f"{recipe.name}-{setup.slug}",
        model=replace(
            recipe.model,
            name=config["name"],
            maxout_k=config["maxout_k"],
            dropout=config["dropout"],
            init=config.get("init", recipe.model.init),
        ),
    )
    extra: dict[str, Any] = {
        "transfer": {
            "setup": setup.name,
            "freeze": setup.freeze,
            "source_run": None if setup.baseline else str(brain_run),
            "architecture_from": str(brain_run),
            "strategy": None if setup.baseline else strategy,
            "class_map": None if setup.baseline else class_map,
            "baseline": setup.baseline,
            "kept_outputs": setup.keep_outputs,
            "seed_setup": setup.seed.seed_name if setup.seed else None,
        }
    }
    if setup.baseline:
        keep: list[str] = []

        def build(frequencies):
            return create_model(
                **{
                    **config,
                    "in_channels": in_channels,
                    "num_classes": num_classes,
                    "class_frequencies": frequencies,
                }
            )

    keeper = FrozenSlices({})
    if not setup.baseline:
        probe, description = adapt_for_transfer(brain, in_channels, num_classes, strategy, **adapt)
        keep = [*description["reinitialised"], *description["partly_reinitialised"]]
        extra["transfer"]["kept_trainable"] = keep
        keeper = FrozenSlices(frozen_slices(probe, setup.freeze, description))
        if setup.seed is not None:
            # the seed trained its InputCascadeCNN as one network: whatever a setup trains
            # learns from the cascade's loss (the first network's output layer through the
            # frozen second network), with no phase of the first network alone; stage 2
            # re-trains the output layers the setup trains (E2E: the final one)
            recipe = replace(
                recipe,
                cascade=replace(recipe.cascade, joint=True),
                stage2=replace(recipe.stage2, train=list(setup.seed.trains or ["output"])),
            )
            extra["transfer"]["schedule"] = (
                "the seed's way: the cascade trains as one network on its own loss (no phase "
                "of the first network alone); stage 2 re-trains "
                + ", ".join(setup.seed.trains or ["second.output"])
            )
        elif second_network_frozen(probe, setup.freeze, keep):
            # only the first network learns, in its own fit before the main one: it gets the
            # main stages' epochs and patches, and the main fit has none
            recipe = replace(
                recipe,
                cascade=replace(
                    recipe.cascade,
                    first_epochs=recipe.stage1.epochs,
                    first_patches_per_epoch=recipe.stage1.patches_per_epoch,
                ),
                stage1=replace(recipe.stage1, epochs=0),
                stage2=replace(recipe.stage2, epochs=0),
            )
            extra["transfer"]["schedule"] = (
                "the second network is frozen: the first network trains alone for stage 1's "
                "epochs and patches (then its stage 2), the main fit has no epochs"
            )
        extra["transfer"]["frozen_slices"] = {
            name: f"input channels {channels} kept frozen"
            for name, channels in keeper.slices.items()
        }

        def build(frequencies):
            model, description = adapt_for_transfer(
                brain, in_channels, num_classes, strategy, class_frequencies=frequencies, **adapt
            )
            extra["transfer"]["description"] = description
            keeper.bind(model)
            return model

    record = TrainRecord(keeper)
    run = train_from_recipe(
        recipe,
        cache=cache,
        out=out,
        device=device,
        data=data,
        console=console,
        progress=progress,
        model=build,
        freeze=setup.freeze,
        keep_trainable=keep,
        run_extra=extra,
        callbacks=[record, keeper, *callbacks],
    )
    _record_training(run, record)
    return run


def _record_training(run: Path, record: TrainRecord) -> None:
    """Train accuracy per epoch into history.csv (and the curves), the totals into run.json
    and metrics.json."""
    import json

    from braver.atomic import write_json
    from braver.report import plot_learning_curves
    from braver.runs import load_run_info, save_run_info
    from braver.train.callbacks import read_history, write_history

    history = run / "history.csv"
    rows = read_history(history)
    if rows and record.accuracies:
        for row, value in zip(rows, record.accuracies, strict=False):
            row["train_patch_accuracy"] = value
        write_history(history, rows)
        plot_learning_curves(history, run / "learning_curves.png")
    info = load_run_info(run)
    info.extra["transfer"]["trained_parameters"] = record.trained_parameters
    info.extra["transfer"]["cpu_seconds_per_epoch"] = record.cpu_seconds
    save_run_info(run, info)
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if record.accuracies:
            metrics.setdefault("patch", {})["train_patch_accuracy"] = record.accuracies[-1]
        metrics["trained_parameters"] = record.trained_parameters
        write_json(metrics_path, metrics)


__all__ = ["FrozenSlices", "TrainRecord", "frozen_slices", "second_network_frozen", "train_setup"]

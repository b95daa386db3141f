"""fastai callbacks for the paper's training: freezing, regularisation, class weights, history.

Freezing and weight decay: fastai's ``zero_grad`` leaves zero tensors in ``.grad`` rather than
``None``, and its optimiser steps every parameter that has a gradient tensor, so weight decay
and momentum keep moving a parameter after ``requires_grad`` is switched off. ``FreezeGroups``
(and ``freeze_groups``) therefore also drop the frozen parameters' gradients, before every step,
so a frozen parameter stays bit-identical.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from torch import nn

from braver.atomic import write_text
from braver.models.naming import resolve_group, trainable_parameters


def _model_of(learn_or_model: Learner | nn.Module) -> nn.Module:
    return learn_or_model.model if isinstance(learn_or_model, Learner) else learn_or_model


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (names are the model's own)."""
    return getattr(model, "module", model)


def group_parameters(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Parameter names of the named groups or layers (``braver.models.naming.resolve_group``)."""
    model = _unwrap(model)
    found: list[str] = []
    for name in names:
        for param in resolve_group(model, name):
            if param not in found:
                found.append(param)
    return found


def freeze_groups(learn_or_model: Learner | nn.Module, names: Iterable[str]) -> int:
    """Freeze the named groups (``local``, ``global``, ``output``, ``first``, or a layer name).

    Their parameters stop requiring gradients and lose any stored gradient, so no optimiser
    step (weight decay and momentum included) can move them. Returns the number of trainable
    parameters left.
    """
    model = _unwrap(_model_of(learn_or_model))
    params = dict(model.named_parameters())
    for name in group_parameters(model, names):
        params[name].requires_grad_(False)
        params[name].grad = None
    return trainable_parameters(model)


def unfreeze_groups(learn_or_model: Learner | nn.Module, names: Iterable[str]) -> int:
    """Make the named groups trainable again; returns the number of trainable parameters."""
    model = _unwrap(_model_of(learn_or_model))
    params = dict(model.named_parameters())
    for name in group_parameters(model, names):
        params[name].requires_grad_(True)
    return trainable_parameters(model)


def train_only(learn_or_model: Learner | nn.Module, names: Sequence[str]) -> int:
    """Freeze every parameter outside the named groups (an empty list trains everything)."""
    model = _unwrap(_model_of(learn_or_model))
    keep = set(group_parameters(model, names)) if names else None
    for name, param in model.named_parameters():
        trainable = keep is None or name in keep
        param.requires_grad_(trainable)
        if not trainable:
            param.grad = None
    return trainable_parameters(model)


class FreezeGroups(Callback):
    """Freeze named groups for a fit (and keep them bit-identical); unfreeze them after.

    ``FreezeGroups(["local", "global"])`` is the paper's second phase for a TwoPathCNN.
    """

    order = -5

    def __init__(self, names: Sequence[str], unfreeze_after: bool = True):
        self.names, self.unfreeze_after = list(names), unfreeze_after

    def before_fit(self):
        freeze_groups(self.learn, self.names)

    def before_step(self):
        _drop_frozen_grads(self.learn.model)

    def after_fit(self):
        if self.unfreeze_after:
            unfreeze_groups(self.learn, self.names)


class DropFrozenGrads(Callback):
    """Set ``.grad = None`` on every parameter that does not require a gradient, before a step."""

    order = -5

    def before_fit(self):
        _drop_frozen_grads(self.learn.model)

    def before_step(self):
        _drop_frozen_grads(self.learn.model)


def _drop_frozen_grads(model: nn.Module) -> None:
    for param in model.parameters():
        if not param.requires_grad:
            param.grad = None


def _kernels(model: nn.Module) -> list[torch.Tensor]:
    return [
        m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad
    ]


class L1Penalty(Callback):
    """Adds ``l1 · Σ|w|`` over the trainable kernels to the training loss (paper: L1 used)."""

    order = 0

    def __init__(self, l1: float):
        self.l1 = l1

    def after_loss(self):
        if self.training and self.l1 > 0:
            penalty = sum(w.abs().sum() for w in _kernels(self.learn.model))
            self.learn.loss_grad = self.learn.loss_grad + self.l1 * penalty


class MaxNorm(Callback):
    """After each step, rescale every output kernel whose L2 norm exceeds ``max_norm``."""

    order = 0

    def __init__(self, max_norm: float):
        self.max_norm = max_norm

    def after_step(self):
        if self.max_norm > 0:
            with torch.no_grad():
                for w in _kernels(self.learn.model):
                    w.copy_(torch.renorm(w, 2, 0, self.max_norm))


class ClassWeights(Callback):
    """Tile mode: per-pixel class weights that stand in for balanced sampling.

    The loaders compute, for each epoch's label blocks, weights that make every class present
    weigh the same in total (``PatchDL.class_weighting``); this hands them to the loss before
    every batch, training and validation alike.
    """

    order = 1

    def before_batch(self):
        weights = getattr(self.learn.dl, "class_weights", None)
        if weights is not None:
            weights = weights.to(self.learn.y.device)
        self.learn.loss_func.weight = weights

    def after_fit(self):
        self.learn.loss_func.weight = None


class History(Callback):
    """``history.csv``: one row per epoch of every stage, with ``stage``, ``lr`` and ``momentum``.

    The stage is ``learn.stage`` (set by ``DualStage``/``CascadeFirst``; else ``stage``), the
    epoch counts from the start of the run (``learn.epoch_offset`` for a resumed fit), ``lr``
    and ``momentum`` are the values the epoch used. Rewritten (atomically) after each epoch on
    rank 0, so an interrupted run keeps its rows; ``rows`` may start with the rows of an
    earlier, resumed part of the run.
    """

    order = 52  # after the Recorder (50) has logged the epoch, before DivergenceGuard (55)

    def __init__(self, path: Path, stage: str = "fit", rows: list[dict] | None = None, on_row=None):
        self.path, self.stage = Path(path), stage
        self.rows = rows if rows is not None else []
        self.on_row = on_row

    def before_epoch(self):
        self.started = time.time()

    def after_epoch(self):
        learn = self.learn
        recorder = learn.recorder
        names = [str(n) for n in recorder.metric_names[1:-1]]  # no "epoch", no "time"
        values = recorder.log[1 : 1 + len(names)]
        row = {
            "stage": getattr(learn, "stage", None) or self.stage,
            "epoch": getattr(learn, "epoch_offset", 0) + self.epoch,
        }
        for name, value in zip(names, values, strict=False):
            row[name] = _plain(value)
        hypers = learn.opt.hypers[-1] if learn.opt is not None else {}
        row["lr"] = _plain(getattr(learn, "epoch_lr", hypers.get("lr", "")))
        row["momentum"] = _plain(getattr(learn, "epoch_momentum", hypers.get("mom", "")))
        if getattr(learn, "rolled_back", False):
            row["rolled_back"] = 1
        row["time"] = round(time.time() - self.started, 2)  # seconds (fastai's column name)
        self.rows.append(row)
        if getattr(learn, "rank", 0) == 0:
            write_history(self.path, self.rows)
        if self.on_row is not None:
            self.on_row(row)


def _plain(value):
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def write_history(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def read_history(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))

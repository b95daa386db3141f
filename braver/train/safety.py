"""Training that survives and keeps its best: best-epoch weights, divergence rollback, bounds.

- ``KeepBest``: remembers the weights of each stage's best epoch (the highest mean patch Dice
  over the regions, or the lowest validation loss) and puts them back when the stage ends (as
  fastai's ``SaveModelCallback`` does, but in memory and per stage, so stage 2 starts from
  stage 1's best epoch); ``learn.kept`` says which epoch each stage kept.
- ``DivergenceGuard``: a non-finite loss, or an epoch whose training loss is ``spike`` times the
  stage's best, rolls the weights back to the last good epoch, clears the optimiser's momentum
  and halves the learning rate (``learn.lr_scale``), at most ``retries`` times; after that the
  fit stops with ``learn.diverged = True`` (the runner then keeps the best weights it has).
- ``WeightBound``: the paper's bound on the absolute value of the kernel weights (§3.2),
  applied after every step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from fastai.callback.core import Callback, CancelEpochException, CancelFitException
from torch import nn


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    model = getattr(model, "module", model)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(state[key].to(value.device))


def _last_losses(learn) -> tuple[float, float]:
    """(train loss, validation loss) of the epoch the Recorder just logged."""
    values = learn.recorder.values[-1] if learn.recorder.values else []
    train = float(values[0]) if len(values) > 0 else math.nan
    valid = float(values[1]) if len(values) > 1 else math.nan
    return train, valid


def _last_dice(learn) -> float:
    """Mean of the ``*_dice`` metrics the Recorder just logged; NaN when there are none."""
    recorder = learn.recorder
    values = recorder.values[-1] if recorder.values else []
    names = list(recorder.metric_names)[1 : len(values) + 1]
    dice = [float(v) for n, v in zip(names, values, strict=False) if str(n).endswith("_dice")]
    dice = [v for v in dice if math.isfinite(v)]
    return sum(dice) / len(dice) if dice else math.nan


@dataclass
class Kept:
    """The epoch a stage kept and its score (lower is better: the validation loss, or minus
    the mean patch Dice)."""

    epoch: int
    valid_loss: float
    state: dict


class KeepBest(Callback):
    """Per stage, the weights of the best epoch are restored when the stage ends
    (``learn.kept[stage]`` = that epoch).

    ``by="dice"``: the highest mean of the validation ``*_dice`` metrics (the validation loss
    when the learner has none); ``by="valid_loss"``: the lowest validation loss. A balanced or
    class-weighted validation loss can rise from overconfidence while the Dice still improves.
    Without a validation set it keeps the last epoch."""

    order = 60  # after the Recorder (50) has logged the epoch

    def __init__(self, by: str = "dice"):
        if by not in ("dice", "valid_loss"):
            raise ValueError(f"KeepBest(by={by!r}): choose 'dice' or 'valid_loss'")
        self.by = by

    def before_fit(self):
        self.best: dict[str, Kept] = getattr(self.learn, "best_states", {})
        self.learn.best_states = self.best
        self.learn.kept = getattr(self.learn, "kept", {})

    def after_epoch(self):
        if getattr(self.learn, "rolled_back", False):
            return
        stage = getattr(self.learn, "stage", "fit")
        _, valid = _last_losses(self.learn)
        dice = _last_dice(self.learn) if self.by == "dice" else math.nan
        if math.isfinite(dice):
            score = -dice
        else:
            score = valid if math.isfinite(valid) else -float(self.learn.epoch)  # no valid: last
        kept = self.best.get(stage)
        if kept is None or score < kept.valid_loss:
            epoch = getattr(self.learn, "epoch_offset", 0) + self.epoch
            self.best[stage] = Kept(epoch, score, _state(self.learn.model))

    def stage_ended(self, stage: str) -> None:
        kept = self.best.get(stage)
        if kept is None:
            return
        _load(self.learn.model, kept.state)
        self.learn.kept[stage] = kept.epoch

    def after_fit(self):
        stage = getattr(self.learn, "stage", "fit")
        if stage not in self.learn.kept:
            self.stage_ended(stage)


def _chance_loss(learn) -> float:
    """Cross-entropy of a uniform prediction over the learner's classes, ln K (class weights
    leave it unchanged); inf when the classes are unknown."""
    scheme = getattr(learn, "scheme", None)
    classes = getattr(scheme, "num_classes", 0) if scheme is not None else 0
    return math.log(classes) if classes > 1 else math.inf


class DivergenceGuard(Callback):
    """Roll back a diverged epoch and lower the learning rate, ``retries`` times at most.

    An epoch diverged when its training loss is not finite, its weights are not, or the loss
    is above ``spike`` times the stage's best epoch so far or times ln K (a uniform guess over
    K classes), whichever is lower."""

    order = 55  # after the Recorder, before KeepBest

    def __init__(self, retries: int = 2, spike: float = 10.0, factor: float = 0.5):
        self.retries, self.spike, self.factor = retries, spike, factor

    def before_fit(self):
        self.good = _state(self.learn.model)
        self.best_train: dict[str, float] = {}
        self.left = self.retries
        self.learn.lr_scale = getattr(self.learn, "lr_scale", 1.0)
        self.learn.diverged = False
        self.learn.rollbacks = getattr(self.learn, "rollbacks", [])

    def before_epoch(self):
        self.learn.rolled_back = False

    def after_batch(self):
        if self.training and not bool(torch.isfinite(self.learn.loss.detach()).all()):
            raise CancelEpochException  # stop the epoch now; after_epoch rolls back

    def after_epoch(self):
        stage = getattr(self.learn, "stage", "fit")
        train, _ = _last_losses(self.learn)
        # the reference: the stage's best epoch so far, and at most the loss of a uniform
        # prediction (ln K), so that a first epoch already blown up counts as a spike too
        best = min(self.best_train.get(stage, math.inf), _chance_loss(self.learn))
        weights_finite = all(bool(torch.isfinite(p).all()) for p in self.learn.model.parameters())
        if math.isfinite(train) and weights_finite and train <= self.spike * best:
            self.best_train[stage] = min(best, train)
            self.good = _state(self.learn.model)
            return
        self._roll_back(stage, train)

    def _roll_back(self, stage: str, train: float) -> None:
        epoch = getattr(self.learn, "epoch_offset", 0) + self.epoch
        _load(self.learn.model, self.good)
        if self.learn.opt is not None:
            self.learn.opt.clear_state()
        smooth = getattr(getattr(self.learn, "recorder", None), "smooth_loss", None)
        if smooth is not None:
            smooth.reset()  # the next epoch's training loss must not carry this one's
        self.learn.rolled_back = True
        self.learn.rollbacks.append({"stage": stage, "epoch": epoch, "train_loss": train})
        if self.left <= 0:
            self.learn.diverged = True
            warnings.warn(
                f"training diverged in {stage} epoch {epoch} (training loss {train:.4g}) after "
                f"{self.retries} rollbacks; stopping with the last good weights",
                stacklevel=2,
            )
            raise CancelFitException
        self.left -= 1
        self.learn.lr_scale *= self.factor
        warnings.warn(
            f"{stage} epoch {epoch} diverged (training loss {train:.4g}): rolled back to the last "
            f"good epoch, learning rate × {self.learn.lr_scale:g}",
            stacklevel=2,
        )


class WeightBound(Callback):
    """Clip every trainable kernel weight to ``[-bound, bound]`` after each step (paper §3.2:
    "we bounded the absolute value of the kernel weights")."""

    order = 1

    def __init__(self, bound: float):
        self.bound = bound

    def after_step(self):
        if self.bound <= 0:
            return
        with torch.no_grad():
            for module in self.learn.model.modules():
                if isinstance(module, nn.Conv2d) and module.weight.requires_grad:
                    module.weight.clamp_(-self.bound, self.bound)

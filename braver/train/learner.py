"""A fastai ``Learner`` from a recipe: SGD with rising momentum, per-epoch decay, regularisers.

Havaei et al. (2017, section 4): stochastic gradient descent with momentum 0.5 rising to
0.9, learning rate 0.005 decayed by a constant factor every epoch, L1 and L2
regularisation, dropout, early stopping on validation loss. The model's output is
(B, K, k, k) logits, the target (B, k, k) classes; the loss is cross-entropy on the flattened
pixels (with per-class weights in tile mode).
"""

from __future__ import annotations

import types
from functools import partial

import torch
import torch.nn.functional as F
from fastai.callback.schedule import ParamScheduler
from fastai.callback.tracker import EarlyStoppingCallback, TerminateOnNaNCallback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import SGD
from torch import nn

from braver.data.labels import LabelScheme
from braver.models.layers import ConvBackwardByConvolutions
from braver.recipe import OptimSection
from braver.train.callbacks import ClassWeights, DropFrozenGrads, L1Penalty, MaxNorm


class PixelCrossEntropy(nn.Module):
    """Cross-entropy over every labelled pixel: logits (B, K, k, k) or (B, K), target (B, k, k).

    ``weight`` (K,) per-class weights, set by ``ClassWeights`` in tile mode; ``None`` otherwise.
    """

    def __init__(self):
        super().__init__()
        self.weight: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        classes = logits.shape[1]
        flat = logits.float().movedim(1, -1).reshape(-1, classes)
        return F.cross_entropy(flat, target.reshape(-1), weight=self.weight)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def decodes(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.argmax(dim=1)


def _conv_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(self.kernel_size):  # one output pixel: the layer's own path
        return type(self).forward(self, x)
    return ConvBackwardByConvolutions.apply(x, self.weight, self.bias)


def _plain_convolution_types() -> tuple[type, ...]:
    """Layer types whose forward is a plain convolution (whatever path they take for it)."""
    from braver.models import layers

    return (nn.Conv2d, *[t for t in (getattr(layers, "OutputConv", None),) if t is not None])


def fast_conv_backward(model: nn.Module) -> list[str]:
    """Give the plain valid convolutions of ``model`` the faster CPU backward (same values).

    Only plain convolutions (``nn.Conv2d`` and the models' ``OutputConv``; not ``Maxout``, whose
    forward does more) with stride 1, no padding, no dilation and one group are changed (their
    ``forward`` on the instance); weights and state dict are untouched. Returns the names of
    the layers changed.
    """
    changed = []
    plain = _plain_convolution_types()
    for name, module in model.named_modules():
        if (
            type(module) in plain
            and module.stride == (1, 1)
            and module.padding == (0, 0)
            and module.dilation == (1, 1)
            and module.groups == 1
        ):
            module.forward = types.MethodType(_conv_forward, module)
            changed.append(name)
    return changed


def epoch_schedules(
    optim: OptimSection, lr: float, epochs: int, start_epoch: int = 0
) -> dict[str, callable]:
    """ParamScheduler functions for a fit of ``epochs - start_epoch`` epochs.

    ``lr`` is ``lr · decay^e`` during epoch ``e`` (a step per epoch, paper 4); momentum rises
    linearly from ``momentum_start`` to ``momentum_end`` over ``momentum_epochs`` epochs, then
    stays. ``start_epoch`` lets a resumed fit pick the schedule up where it stopped.
    """
    remaining = max(epochs - start_epoch, 1)

    def epoch_at(pct: float) -> float:
        return start_epoch + pct * remaining

    def learning_rate(pct: float) -> float:
        return lr * optim.lr_decay ** int(min(epoch_at(pct), epochs - 1e-9))

    def momentum(pct: float) -> float:
        span = max(optim.momentum_epochs, 1)
        rise = min(epoch_at(pct) / span, 1.0)
        return optim.momentum_start + (optim.momentum_end - optim.momentum_start) * rise

    return {"lr": learning_rate, "mom": momentum}


def build_learner(
    dls: DataLoaders,
    model: nn.Module,
    optim: OptimSection,
    scheme: LabelScheme,
    *,
    path=".",
    tile_mode: bool = False,
) -> Learner:
    """The Learner: SGD (momentum, L2 as coupled weight decay), metrics, regularisers.

    Parameter groups follow ``braver.models.naming.param_groups`` (so ``freeze()`` and
    ``FreezeGroups`` act on named groups). Metrics: per-region Dice and patch accuracy
    (``braver.metrics.region_dice_metrics``).
    """
    from braver.metrics import region_dice_metrics
    from braver.models.naming import param_groups

    callbacks = [
        DropFrozenGrads(),
        L1Penalty(optim.l1),
        MaxNorm(optim.max_norm),
        TerminateOnNaNCallback(),  # a diverged run stops instead of training on NaN
    ]
    if tile_mode:
        callbacks.append(ClassWeights())
    learn = Learner(
        dls,
        model,
        loss_func=PixelCrossEntropy(),
        opt_func=partial(SGD, mom=optim.momentum_start, decouple_wd=False),
        lr=optim.lr,
        wd=optim.l2,
        wd_bn_bias=False,
        splitter=lambda m: param_groups(getattr(m, "module", m)),
        metrics=region_dice_metrics(scheme),
        cbs=callbacks,
        path=path,
        model_dir=".",
        train_bn=True,
    )
    learn.logger = _quiet
    return learn


def _quiet(*args, **kwargs) -> None:
    """The Recorder prints raw epoch lists when there is no progress bar; braver prints rows."""


def fit_stage(
    learn: Learner,
    optim: OptimSection,
    epochs: int,
    *,
    lr: float | None = None,
    patience: int = 0,
    start_epoch: int = 0,
    cbs: list | None = None,
) -> None:
    """One fit of ``epochs`` epochs with the paper's schedule, optionally stopping early."""
    if epochs - start_epoch <= 0:
        return
    scheds = epoch_schedules(optim, lr if lr is not None else optim.lr, epochs, start_epoch)
    callbacks = [ParamScheduler(scheds), *(cbs or [])]
    if patience > 0 and len(learn.dls.loaders) > 1:
        callbacks.append(EarlyStoppingCallback(monitor="valid_loss", patience=patience))
    learn.fit(epochs - start_epoch, cbs=callbacks, reset_opt=True)

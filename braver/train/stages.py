"""The paper's training schedule as fastai callbacks on one Learner.

- ``PaperSchedule``: per epoch of a stage, the learning rate falls linearly to ``lr · decay`` at
  epoch ``saturate`` and stays there (Pylearn2's ``LinearDecayOverEpoch``, the paper's "decay
  factor 10^-1"); momentum rises linearly from 0.5 to 0.9 (Pylearn2's ``MomentumAdjustor``).
  Both restart at the start of every stage.
- ``DualStage``: one ``fit`` of ``stage1 + stage2`` epochs. Stage 1 draws balanced patches;
  stage 2 (Havaei et al. 2017, §3.2) draws the data's natural distribution and trains only the
  output layer, every other parameter frozen (bit-identical), then restores what it froze.
- ``CascadeFirst``: a cascade's first TwoPathCNN trained alone, both stages, on its own input
  size, then frozen (and, frozen, it runs in eval mode: ``CascadeCNN.train``) before the fit
  of the whole cascade goes on.

The current stage is ``learn.stage`` (``"stage1"``, ``"stage2"``, ``"first.stage1"`` …), its first
epoch ``learn.stage_start``; ``History`` writes it into ``history.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from fastai.callback.core import Callback, CancelFitException

from braver.data.blocks import set_sampling
from braver.recipe import OptimSection


def paper_lr(optim: OptimSection, lr: float, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (0-based) of a stage: linear to ``lr · lr_decay`` at
    ``lr_saturate``, then flat."""
    progress = min(epoch / max(optim.lr_saturate, 1), 1.0)
    return lr * (1.0 - (1.0 - optim.lr_decay) * progress)


def paper_momentum(optim: OptimSection, epoch: int) -> float:
    """Momentum of epoch ``epoch`` of a stage: linear from start to end over momentum_epochs."""
    progress = min(epoch / max(optim.momentum_epochs, 1), 1.0)
    return optim.momentum_start + (optim.momentum_end - optim.momentum_start) * progress


class PaperSchedule(Callback):
    """Sets the optimiser's learning rate and momentum at the start of every epoch.

    The epoch counts from the start of the current stage (``learn.stage_start``); the base
    rate is ``learn.stage_lr`` when a stage sets one, else ``optim.lr``. ``learn.lr_scale``
    (lowered by ``DivergenceGuard`` after a rollback) multiplies the rate. The values used are
    ``learn.epoch_lr`` / ``learn.epoch_momentum`` (``History`` writes them).
    """

    order = -4  # after DualStage has switched the stage, before the epoch's first batch

    def __init__(self, optim: OptimSection):
        self.optim = optim

    def before_epoch(self):
        learn = self.learn
        epoch = _run_epoch(learn) - getattr(learn, "stage_start", 0)
        base = getattr(learn, "stage_lr", None) or self.optim.lr
        lr = paper_lr(self.optim, base, epoch) * getattr(learn, "lr_scale", 1.0)
        momentum = paper_momentum(self.optim, epoch)
        learn.opt.set_hyper("lr", lr)
        learn.opt.set_hyper("mom", momentum)
        learn.epoch_lr, learn.epoch_momentum = lr, momentum


def _run_epoch(learn) -> int:
    """The epoch of the whole run (a resumed fit starts at ``learn.epoch_offset``)."""
    return getattr(learn, "epoch_offset", 0) + learn.epoch


class DualStage(Callback):
    """The paper's two stages in one fit: balanced patches, then natural patches with all but
    the output layer frozen.

    ``learn.fit(stage1 + stage2, cbs=DualStage(stage1, stage2))``. ``stage2_train`` names the
    groups stage 2 trains (``braver.models.naming``; default the final output layer);
    ``stage2_lr`` its base learning rate; ``patience`` ends a stage early when the validation
    loss has not improved for that many epochs (stage 1 then hands over to stage 2, which still
    runs its own epochs). ``prior_shift`` moves the output biases by ``τ · log(natural / balanced
    class frequency)`` when stage 2 starts (0: off). Tile mode: ``class_weighting`` weights
    pixels per class in stage 1 (the balanced stage) and not in stage 2.

    A resumed fit (``learn.epoch_offset`` epochs already done) passes ``stage2_start`` (the
    run's epoch at which stage 2 began, if it had).
    """

    order = -6

    def __init__(
        self,
        stage1_epochs: int,
        stage2_epochs: int = 0,
        *,
        stage2_train: Sequence[str] = ("output",),
        stage1_lr: float | None = None,
        stage2_lr: float | None = None,
        stage1_patches: int | None = None,
        stage2_patches: int | None = None,
        stage1_sampling: str = "balanced",
        stage2_sampling: str = "natural",
        stage1_patience: int = 0,
        stage2_patience: int = 0,
        class_weighting: bool = False,
        prior_shift: float = 0.0,
        names: tuple[str, str] = ("stage1", "stage2"),
        stage2_start: int | None = None,
    ):
        self.epochs = (stage1_epochs, stage2_epochs)
        self.stage2_train = list(stage2_train)
        self.lrs = (stage1_lr, stage2_lr)
        self.patches = (stage1_patches, stage2_patches)
        self.samplings = (stage1_sampling, stage2_sampling)
        self.patience = (stage1_patience, stage2_patience)
        self.class_weighting, self.prior_shift = class_weighting, prior_shift
        self.names = names
        self.stage2_start = stage2_start

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs)

    def before_fit(self):
        self.index = None
        self.frozen_here: list[torch.nn.Parameter] = []
        self.best, self.waited = math.inf, 0
        start = _run_epoch(self.learn)
        if self.stage2_start is not None and start >= self.stage2_start:
            self._enter(1, self.stage2_start, resumed=True)
        elif self.epochs[0] > 0:
            self._enter(0, 0)
        else:
            self._enter(1, 0)

    def before_epoch(self):
        epoch = _run_epoch(self.learn)
        self.learn.dls.train.epoch = epoch  # patches are drawn for the run's epoch (resume)
        if self.index == 0 and (epoch >= self.epochs[0] or self.stop_stage):
            if self.epochs[1] == 0:
                raise CancelFitException
            self._end_stage()
            self._enter(1, epoch)
        if self.index == 1 and (
            epoch >= self.learn.stage_start + self.epochs[1] or self.stop_stage
        ):
            raise CancelFitException

    def after_epoch(self):
        patience = self.patience[self.index]
        if patience <= 0 or len(self.learn.dls.loaders) < 2:
            return
        # this epoch's validation loss: the Recorder (order 50) files the epoch after this
        # callback runs, so it is read from the Recorder's running log [epoch, train, valid, …]
        log = self.learn.recorder.log
        loss = float(log[2]) if len(log) > 2 else math.nan
        if loss < self.best:
            self.best, self.waited = loss, 0
            return
        self.waited += 1
        if self.waited >= patience:
            self.stop_stage = True  # the next epoch ends the stage (in stage 2, the fit)

    def after_fit(self):
        self._end_stage()
        for param in self.frozen_here:  # give back what stage 2 froze
            param.requires_grad_(True)
        self.frozen_here = []

    # -- the switch ------------------------------------------------------------------------
    def _enter(self, index: int, start_epoch: int, resumed: bool = False) -> None:
        learn = self.learn
        self.index, self.stop_stage = index, False
        self.best, self.waited = math.inf, 0
        learn.stage, learn.stage_start, learn.stage_lr = (
            self.names[index],
            start_epoch,
            self.lrs[index],
        )
        if index == 1:
            learn.stage2_start = start_epoch
        set_sampling(
            learn.dls,
            self.samplings[index],
            self.patches[index],
            class_weighting=self.class_weighting and index == 0,
        )
        if index == 1:
            self._freeze_all_but(self.stage2_train)
            if isinstance(learn.model, torch.nn.parallel.DistributedDataParallel):
                from braver.train.learner import distributed

                learn.model = distributed(learn.model)  # DDP must see what is frozen now
            if self.prior_shift > 0 and not resumed:
                shift_output_prior(learn.model, learn.dls.train.sampler, self.prior_shift)
            if learn.opt is not None:
                learn.opt.clear_state()  # momentum of stage 1 belongs to other parameters
        for cb in learn.cbs:
            if hasattr(cb, "stage_started"):
                cb.stage_started(learn.stage)

    def _end_stage(self) -> None:
        for cb in self.learn.cbs:
            if hasattr(cb, "stage_ended"):
                cb.stage_ended(self.learn.stage)

    def _freeze_all_but(self, names: Sequence[str]) -> None:
        from braver.train.callbacks import group_parameters

        model = getattr(self.learn.model, "module", self.learn.model)
        keep = set(group_parameters(model, _final_network_names(model, names)))
        for name, param in model.named_parameters():
            if name not in keep and param.requires_grad:
                param.requires_grad_(False)
                param.grad = None
                self.frozen_here.append(param)


def _final_network_names(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """In a cascade a bare part name (``output``) means the part of the second network."""
    if not (hasattr(model, "first") and hasattr(model, "second")):
        return list(names)
    return [n if n.split(".")[0] in ("first", "second") else f"second.{n}" for n in names]


def output_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The final output convolution (``output``, or ``second.output`` in a cascade)."""
    model = getattr(model, "module", model)
    return model.second.output if hasattr(model, "second") else model.output


def shift_output_prior(model: torch.nn.Module, sampler, amount: float) -> None:
    """Add ``amount · log(natural / balanced frequency)`` to the final output biases.

    A network trained on balanced patches estimates p(class | patch) under a uniform prior;
    under the natural prior its logits move by log(π_c / (1/K)) (Bayes). ``amount`` in [0, 1]
    tempers the move.
    """
    layer = output_layer(model)
    if getattr(layer, "bias", None) is None:
        return
    totals = torch.as_tensor(sampler.class_totals, dtype=torch.float64)
    present = totals > 0
    freq = totals / totals.sum()
    shift = torch.zeros_like(freq)
    shift[present] = torch.log(freq[present] * int(present.sum()))
    with torch.no_grad():
        layer.bias.add_((amount * shift).to(layer.bias))


class CascadeFirst(Callback):
    """Before the fit: train a cascade's first network alone (both stages), then freeze it.

    ``stage1_epochs`` balanced epochs of ``patches`` patches and ``stage2_epochs`` natural
    epochs (output layer only) on the first network's own input size, in a Learner of its
    own that shares the parent's data, optimiser settings and the callbacks in ``cbs``
    (history, checkpoints). Parameters frozen before (a transfer setup) stay frozen; when
    every parameter of the first network is frozen there is nothing to train and it is
    skipped. ``done=True`` (a resumed run past this point) only freezes.
    """

    order = -30

    def __init__(
        self,
        stage1_epochs: int,
        stage2_epochs: int = 1,
        *,
        patches: int | None = None,
        stage2_patches: int | None = None,
        stage2_lr: float | None = None,
        class_weighting: bool = False,
        cbs: Sequence[Callback] = (),
        done: bool = False,
        epoch_offset: int = 0,
        stage2_start: int | None = None,
    ):
        self.epochs = (stage1_epochs, stage2_epochs)
        self.patches = (patches, stage2_patches)
        self.stage2_lr, self.class_weighting = stage2_lr, class_weighting
        self.cbs, self.done = list(cbs), done
        self.epoch_offset, self.stage2_start = epoch_offset, stage2_start
        self.skipped = self.first_diverged = False

    def before_fit(self):
        model = getattr(self.learn.model, "module", self.learn.model)
        if not hasattr(model, "first"):
            return
        first = model.first
        trainable = any(p.requires_grad for p in first.parameters())
        if not self.done and trainable and sum(self.epochs) > 0:
            self._train_first(first)
        elif not self.done:
            self.skipped = True
        for param in first.parameters():
            param.requires_grad_(False)
            param.grad = None
        self.done = True
        model.train(self.learn.model.training)  # a frozen first network runs in eval mode

    def after_fit(self):
        # the cascade's DivergenceGuard clears learn.diverged when its fit starts (after this
        # callback's before_fit), so a diverged first network marks the run at the end
        if self.first_diverged:
            self.learn.diverged = True

    def _train_first(self, first: torch.nn.Module) -> None:
        from braver.data.blocks import with_geometry
        from braver.train.learner import braver_learner

        parent = self.learn
        dls = with_geometry(parent.dls, first.input_sizes)
        sub = braver_learner(
            dls,
            first,
            optim=parent.optim,
            scheme=parent.scheme,
            path=parent.path,
            tile_mode=parent.tile_mode,
            progress=any(type(cb).__name__ == "ProgressCallback" for cb in parent.cbs),
        )
        sub.epoch_offset = self.epoch_offset
        sub.rank = getattr(parent, "rank", 0)
        stages = DualStage(
            self.epochs[0],
            self.epochs[1],
            stage1_patches=self.patches[0],
            stage2_patches=self.patches[1],
            stage2_lr=self.stage2_lr,
            class_weighting=self.class_weighting,
            names=("first.stage1", "first.stage2"),
            stage2_start=self.stage2_start,
        )
        remaining = stages.total_epochs - self.epoch_offset
        if remaining > 0:
            sub.fit(remaining, cbs=[stages, *self.cbs])
        for cb in self.cbs:  # callbacks shared with the parent's fit belong to it again
            cb.learn = parent
        parent.first_learner = sub
        self.first_diverged = bool(getattr(sub, "diverged", False))

"""``CascadeFirst``: a cascade's first network trained alone through both stages, then frozen.

Fast (a tiny cache, one-epoch stages): the runner's cascade test trains the same path through a
whole recipe, but it is marked slow.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback

from braver.data.blocks import patch_dataloaders
from braver.models import create_model
from braver.recipe import OptimSection
from braver.train import braver_learner
from braver.train.stages import (
    CascadeFirst,
    DualStage,
    PaperSchedule,
    output_layer,
    paper_lr,
    paper_momentum,
    shift_output_prior,
)

OPTIM = OptimSection(lr=0.01, lr_decay=0.5, lr_saturate=2, momentum_start=0.5, momentum_end=0.9)


def _cascade_learner(cache, progress=False, **options):
    torch.manual_seed(0)
    model = create_model("mf_cascade", dropout=0.0)
    ids = cache.case_ids
    dls = patch_dataloaders(
        cache, ids[:3], ids[3:], model.input_sizes, tile=4, bs=2, train_patches=4, valid_patches=2
    )
    options = {"tile_mode": True, **options}
    return braver_learner(dls, model, optim=OPTIM, progress=progress, **options), model


class _Wrapped(torch.nn.Module):
    """A model wrapped the way DistributedDataParallel wraps it (``.module``)."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *inputs):
        return self.module(*inputs)


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _Spy(Callback):
    """Joins the first network's fit: what each epoch trains with, and the weights at stage
    boundaries."""

    order = 80

    def __init__(self):
        self.epochs, self.starts, self.learners = [], {}, []

    def before_fit(self):
        self.learners.append(self.learn)

    def before_train(self):
        learn, dl = self.learn, self.learn.dls.train
        self.starts.setdefault(learn.stage, _state(learn.model))
        self.epochs.append(
            {
                "stage": learn.stage,
                "epoch": getattr(learn, "epoch_offset", 0) + learn.epoch,
                "sampling": dl.sampling,
                "patches": dl.patches_per_epoch,
                "weighting": dl.class_weighting,
                "sizes": tuple(dl.geometry.input_sizes),
                "lr": learn.opt.hypers[-1]["lr"],
                "rank": getattr(learn, "rank", None),
            }
        )

    def after_fit(self):
        self.end = _state(self.learn.model)


class _Parent(Callback):
    """Joins the cascade's own fit: the first network's state while the second one trains."""

    order = 80

    def before_fit(self):
        self.start = _state(self.learn.model)

    def before_train(self):
        model = getattr(self.learn.model, "module", self.learn.model)
        first = model.first
        self.modes = (first.training, model.second.training)
        self.frozen = [(p.requires_grad, p.grad) for p in first.parameters()]


def test_the_first_network_trains_both_stages_alone_then_stays_frozen(tiny_cache, tmp_path):
    scheme = dataclasses.replace(tiny_cache.scheme)  # the parent's own, not the cache's
    learn, model = _cascade_learner(tiny_cache, path=tmp_path, scheme=scheme, tile_mode=False)
    spy, parent = _Spy(), _Parent()
    cascade_first = CascadeFirst(
        2, 1, patches=6, stage2_patches=8, stage2_lr=0.002, class_weighting=True,
        cbs=[PaperSchedule(OPTIM), spy],
    )  # fmt: skip
    initial = _state(model.first)
    learn.fit(1, lr=OPTIM.lr, cbs=[cascade_first, parent])

    # its own Learner, on the first network and its own input size, sharing the settings
    sub = learn.first_learner
    assert spy.learners == [sub] and sub is not learn
    assert sub.model is model.first
    assert sub.optim is learn.optim and sub.scheme is scheme
    assert sub.path == tmp_path and sub.tile_mode is False
    assert not any(isinstance(cb, ProgressCallback) for cb in sub.cbs)
    assert spy.learn is learn  # the shared callbacks belong to the cascade's fit again
    assert cascade_first.done and not cascade_first.skipped
    # both stages of the paper: balanced (class-weighted tiles) then natural, output layer only
    seen = [
        (e["stage"], e["epoch"], e["sampling"], e["patches"], e["weighting"]) for e in spy.epochs
    ]
    assert seen == [
        ("first.stage1", 0, "balanced", 6, True),
        ("first.stage1", 1, "balanced", 6, True),
        ("first.stage2", 2, "natural", 8, False),
    ]
    assert {e["sizes"] for e in spy.epochs} == {model.first.input_sizes} != {model.input_sizes}
    assert [e["lr"] for e in spy.epochs] == pytest.approx([0.01, paper_lr(OPTIM, 0.01, 1), 0.002])
    assert {e["rank"] for e in spy.epochs} == {0}
    # stage 1 trains the hidden layers; stage 2 only the first network's output layer
    stage2 = spy.starts["first.stage2"]
    assert not torch.equal(stage2["local.conv1.weight"], initial["local.conv1.weight"])
    for name, value in spy.end.items():
        if name.startswith("output."):
            assert not torch.equal(value, stage2[name]), name
        else:
            assert torch.equal(value, stage2[name]), name
    # then frozen (no grads, eval mode) while the second network trains
    assert parent.frozen and all(
        not trainable and grad is None for trainable, grad in parent.frozen
    )
    assert parent.modes == (False, True)
    final = _state(model)
    for name, value in spy.end.items():
        assert torch.equal(final[f"first.{name}"], value), name
        assert torch.equal(parent.start[f"first.{name}"], value), name
    assert not torch.equal(final["second.output.weight"], parent.start["second.output.weight"])


class _Diverge(Callback):
    def after_fit(self):
        self.learn.diverged = True


def test_a_resumed_first_network_goes_on_where_it_stopped(tiny_cache):
    """epoch_offset: the epochs still to train; stage2_start: the stage 2 schedule goes on."""
    learn, model = _cascade_learner(tiny_cache, progress=True)
    learn.rank = 1
    spy = _Spy()
    learn.fit(
        1,
        cbs=CascadeFirst(
            2, 2, stage2_lr=0.002, epoch_offset=3, stage2_start=2,
            cbs=[PaperSchedule(OPTIM), spy, _Diverge()],
        ),
    )  # fmt: skip
    assert [(e["stage"], e["epoch"]) for e in spy.epochs] == [("first.stage2", 3)]
    assert spy.epochs[0]["lr"] == pytest.approx(paper_lr(OPTIM, 0.002, 1))
    assert spy.epochs[0]["rank"] == 1  # the parent's rank
    assert any(isinstance(cb, ProgressCallback) for cb in learn.first_learner.cbs)
    assert learn.first_learner.n_epoch == 1  # the progress bar counts the epochs left
    assert learn.diverged  # a first network that diverged marks the run

    learn, model = _cascade_learner(tiny_cache)
    spy = _Spy()
    learn.fit(1, cbs=CascadeFirst(2, epoch_offset=1, cbs=[spy]))  # stage 2: one epoch
    seen = [(e["stage"], e["epoch"], e["weighting"]) for e in spy.epochs]
    assert seen == [("first.stage1", 1, False), ("first.stage2", 2, False)]
    assert not learn.diverged

    learn, model = _cascade_learner(tiny_cache)
    spy = _Spy()
    learn.fit(1, cbs=CascadeFirst(1, 1, epoch_offset=2, cbs=[spy]))  # every epoch done
    assert spy.learners == [] and not learn.diverged
    assert not any(p.requires_grad for p in model.first.parameters())


def test_one_epoch_of_stage_one_alone_is_trained(tiny_cache):
    learn, model = _cascade_learner(tiny_cache)
    spy = _Spy()
    learn.fit(1, cbs=CascadeFirst(1, 0, cbs=[spy]))
    assert [(e["stage"], e["epoch"]) for e in spy.epochs] == [("first.stage1", 0)]


@pytest.mark.parametrize("case", ["done", "all frozen", "no epochs"])
def test_a_first_network_with_nothing_to_train_is_only_frozen(tiny_cache, case):
    learn, model = _cascade_learner(tiny_cache)
    if case == "all frozen":
        model.first.requires_grad_(False)
    if case == "done":
        learn.model = _Wrapped(model)  # as DistributedDataParallel wraps it
    spy, parent = _Spy(), _Parent()
    epochs = (0, 0) if case == "no epochs" else (1, 1)
    callback = CascadeFirst(*epochs, done=case == "done", cbs=[spy])
    learn.fit(1, cbs=[callback, parent])
    assert spy.epochs == [] and not hasattr(learn, "first_learner")
    assert callback.done and callback.skipped == (case != "done")
    assert all(not trainable and grad is None for trainable, grad in parent.frozen)
    assert parent.modes == (False, True)
    final = _state(model)
    for name, value in parent.start.items():
        if name.startswith("first."):
            assert torch.equal(final[name], value), name


def test_a_plain_twopath_network_is_left_alone(tiny_cache):
    learn, model = _twopath_learner(tiny_cache, train_patches=4)
    callback = CascadeFirst(1, 1)
    learn.fit(1, cbs=callback)
    assert not callback.done and not callback.skipped
    assert all(p.requires_grad for p in model.parameters())


def test_the_output_layer_of_a_cascade_or_a_wrapped_model_gets_the_prior_shift():
    from types import SimpleNamespace

    cascade, twopath = create_model("mf_cascade"), create_model("twopath")
    assert output_layer(cascade) is cascade.second.output
    assert output_layer(_Wrapped(twopath)) is twopath.output
    assert output_layer(_Wrapped(cascade)) is cascade.second.output
    sampler = SimpleNamespace(class_totals=np.array([70.0, 10.0, 20.0, 0.0]))
    before = {n: p.detach().clone() for n, p in cascade.named_parameters()}
    shift_output_prior(_Wrapped(cascade), sampler, 0.5)
    want = 0.5 * torch.log(torch.tensor([0.7, 0.1, 0.2, 1.0]) * 3)  # absent class: no shift
    want[3] = 0.0
    torch.testing.assert_close(cascade.second.output.bias - before["second.output.bias"], want)
    for name, param in cascade.named_parameters():
        if name != "second.output.bias":
            assert torch.equal(param, before[name]), name
    # a class seen once is present: it gets its shift too
    before = cascade.second.output.bias.detach().clone()
    shift_output_prior(cascade, SimpleNamespace(class_totals=np.array([80, 10, 9, 1])), 1.0)
    want = torch.log(torch.tensor([0.8, 0.1, 0.09, 0.01]) * 4)
    torch.testing.assert_close(cascade.second.output.bias - before, want)


def test_paper_schedule_alone_counts_from_the_fit_and_applies_the_rate_scale(tiny_cache):
    """Without DualStage (no stage start, no stage rate); a rollback's rate scale multiplies."""
    learn, model = _twopath_learner(tiny_cache)
    learn.lr_scale = 0.5
    seen = []

    class Rates(Callback):
        order = 80

        def before_train(self):
            seen.extend([self.learn.opt.hypers[-1]["lr"], self.learn.opt.hypers[-1]["mom"]])

    learn.fit(3, cbs=[PaperSchedule(OPTIM), Rates()])
    # lr 0.01 falls to 0.005 at epoch 2, halved; momentum 0.5 → 0.9 over 10 epochs
    assert seen == pytest.approx([0.005, 0.5, 0.00375, 0.54, 0.0025, 0.58])


def test_a_bare_part_name_means_the_second_network_of_a_cascade():
    from braver.train.stages import _final_network_names

    cascade = create_model("mf_cascade")
    assert _final_network_names(cascade, ["output", "first.local", "second.global", "local"]) == [
        "second.output", "first.local", "second.global", "second.local",
    ]  # fmt: skip
    assert _final_network_names(create_model("twopath"), ["output", "local"]) == [
        "output", "local",
    ]  # fmt: skip


def test_dual_stage_on_a_cascade_trains_the_second_output_layer_in_stage_two(tiny_cache):
    learn, model = _cascade_learner(tiny_cache)
    learn.model = _Wrapped(model)  # as DistributedDataParallel wraps it
    model.first.local.requires_grad_(False)  # frozen before the fit (a transfer setup)
    before = {}

    class Stage2(Callback):
        order = 80

        def before_train(self):
            if self.learn.stage == "stage2" and not before:
                before.update(_state(model))
                self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]

    spy = Stage2()
    learn.fit(2, cbs=[DualStage(1, 1), spy])
    assert spy.trainable == ["second.output.weight", "second.output.bias"]
    final = _state(model)
    for name, value in final.items():
        if name.startswith("second.output."):
            assert not torch.equal(value, before[name]), name
        else:
            assert torch.equal(value, before[name]), name
    # what stage 2 froze is given back; what was frozen before stays frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if not n.startswith("first.local")}


def test_a_one_epoch_ramp_reaches_its_end_value_after_one_epoch():
    optim = OptimSection(
        lr_decay=0.1, lr_saturate=1, momentum_start=0.5, momentum_end=0.9, momentum_epochs=1
    )
    assert [paper_lr(optim, 1.0, e) for e in (0, 1, 2)] == pytest.approx([1.0, 0.1, 0.1])
    assert [paper_momentum(optim, e) for e in (0, 1, 2)] == pytest.approx([0.5, 0.9, 0.9])


def _twopath_learner(cache, train_patches=2):
    torch.manual_seed(0)
    model = create_model("twopath", dropout=0.0)
    ids = cache.case_ids
    dls = patch_dataloaders(
        cache, ids[:3], ids[3:], model.input_sizes, tile=4, bs=2, train_patches=train_patches,
        valid_patches=2,
    )  # fmt: skip
    return braver_learner(dls, model, optim=OPTIM, tile_mode=True, progress=False), model


class _Stages(Callback):
    """Each epoch's stage and class weighting, the stages announced, and the output bias."""

    order = 80

    def __init__(self):
        self.epochs, self.started, self.ended, self.bias = [], [], [], []
        self.momentum, self.momentum_after = [], []

    def stage_started(self, stage):
        self.started.append(stage)

    def stage_ended(self, stage):
        self.ended.append(stage)

    def before_train(self):
        self.epochs.append((self.learn.stage, self.learn.dls.train.class_weighting))
        self.bias.append(self.learn.model.output.bias.detach().clone())
        opt = self.learn.opt  # parameters with a momentum buffer
        self.momentum.append(sum("grad_avg" in opt.state[p] for p, *_ in opt.all_params()))

    def after_train(self):
        self.bias.append(self.learn.model.output.bias.detach().clone())
        opt = self.learn.opt
        self.momentum_after.append(sum("grad_avg" in opt.state[p] for p, *_ in opt.all_params()))


def test_dual_stage_defaults_no_stage_two_no_weighting_no_prior_shift(tiny_cache):
    learn, model = _twopath_learner(tiny_cache)
    spy = _Stages()
    learn.fit(2, cbs=[DualStage(1), spy])  # stage 2 has no epochs: the fit ends after stage 1
    assert spy.epochs == [("stage1", False)] and spy.started == ["stage1"]
    learn, model = _twopath_learner(tiny_cache)
    spy = _Stages()
    learn.fit(3, cbs=[DualStage(1, 1), spy])  # the fit ends with stage 2's last epoch
    assert spy.epochs == [("stage1", False), ("stage2", False)]
    assert spy.ended == ["stage1", "stage2"]
    assert learn.stage2_start == 1  # recorded for a resume (progress.json)
    # stage 2 starts without stage 1's momentum
    assert spy.momentum == [0, 0] and spy.momentum_after[0] == 8  # every parameter had one
    assert torch.equal(spy.bias[1], spy.bias[2])  # no prior shift between the stages


def test_a_fit_resumed_where_stage_two_began_does_not_shift_the_prior_again(tiny_cache):
    learn, model = _twopath_learner(tiny_cache)
    learn.epoch_offset = 1  # epoch 0 (stage 1) done; stage 2 began at epoch 1
    before = model.output.bias.detach().clone()
    spy = _Stages()
    learn.fit(1, cbs=[DualStage(1, 1, prior_shift=1.0, stage2_start=1), spy])
    assert spy.epochs == [("stage2", False)] and spy.started == ["stage2"]
    assert torch.equal(spy.bias[0], before)
    assert learn.stage_start == 1


def test_dual_stage_without_stage_one_starts_in_stage_two_at_epoch_zero(tiny_cache):
    learn, model = _twopath_learner(tiny_cache)
    spy, rates = _Stages(), []

    class Rates(Callback):
        order = 80

        def before_train(self):
            rates.append(self.learn.opt.hypers[-1]["lr"])

    learn.fit(2, cbs=[DualStage(0, 2, stage2_lr=0.002), PaperSchedule(OPTIM), spy, Rates()])
    assert spy.epochs == [("stage2", False), ("stage2", False)] and spy.started == ["stage2"]
    assert rates == pytest.approx([0.002, paper_lr(OPTIM, 0.002, 1)])


def test_paper_schedule_on_a_plain_fastai_learner():
    """No DualStage, no DivergenceGuard: the rate of the fit's epoch, unscaled."""
    import torch.nn.functional as F
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.optimizer import SGD

    torch.manual_seed(0)
    data = list(zip(torch.randn(8, 3), torch.randint(0, 2, (8,)), strict=True))
    dls = DataLoaders.from_dsets(data, data, bs=4, device="cpu")
    learn = Learner(dls, torch.nn.Linear(3, 2), loss_func=F.cross_entropy, opt_func=SGD)
    rates = []

    class Rates(Callback):
        order = 80

        def before_train(self):
            rates.append((self.learn.opt.hypers[-1]["lr"], self.learn.opt.hypers[-1]["mom"]))

    learn.fit(3, cbs=[PaperSchedule(OPTIM), Rates()])
    assert [r for r, _ in rates] == pytest.approx([0.01, 0.0075, 0.005])
    assert [m for _, m in rates] == pytest.approx([0.5, 0.54, 0.58])


def test_stage_two_starts_with_the_prior_shift_of_the_natural_frequencies(tiny_cache):
    learn, model = _twopath_learner(tiny_cache)
    spy = _Stages()
    learn.fit(2, cbs=[DualStage(1, 1, prior_shift=0.5), spy])
    totals = learn.dls.train.sampler.class_totals.astype(float)
    want = 0.5 * torch.log(torch.tensor(totals / totals.sum() * 4, dtype=torch.float32))
    torch.testing.assert_close(spy.bias[2] - spy.bias[1], want)


@pytest.mark.parametrize("metrics", [True, False])
def test_stage_patience_counts_epochs_without_a_better_validation_loss(metrics):
    """Patience 2: the stage stops after the second epoch in a row that is not the best."""
    from types import SimpleNamespace

    stages = DualStage(9, 9, stage1_patience=2)
    log = [0, 1.0, None, 0.5] if metrics else [0, 1.0, None]  # epoch, train, valid, a metric
    stages.learn = SimpleNamespace(
        dls=SimpleNamespace(loaders=[0, 1]), recorder=SimpleNamespace(log=log)
    )
    stages.index, stages.best, stages.waited, stages.stop_stage = 0, math.inf, 0, False
    stopped = []
    for loss in [1.0, 0.8, 0.9, 0.7, 0.75, 0.76]:  # best, best, not, best, not, not
        log[2] = loss
        stages.after_epoch()
        stopped.append(stages.stop_stage)
    assert stopped == [False, False, False, False, False, True]

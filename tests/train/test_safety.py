"""DivergenceGuard's rollback in a real fit (epoch of a resumed run, rate scale, optimiser
state), History's earlier rows, read_history and train_only."""

import math
import warnings

import pytest
import torch
from fastai.callback.core import Callback

from braver.data.blocks import patch_dataloaders
from braver.models import create_model
from braver.models.naming import parameter_count, resolve_group
from braver.recipe import OptimSection
from braver.train import braver_learner, train_only
from braver.train.callbacks import History, read_history


def _learner(cache, retries=2, tmp_path=None, optim=None):
    torch.manual_seed(0)
    model = create_model("twopath", in_channels=4, num_classes=4, dropout=0.0)
    ids = cache.case_ids
    dls = patch_dataloaders(
        cache, ids[:3], ids[3:], model.input_sizes, tile=4, bs=2, train_patches=4, valid_patches=2
    )
    optim = optim or OptimSection(lr=0.01, momentum_start=0.9, divergence_retries=retries)
    return braver_learner(
        dls, model, optim=optim, tile_mode=True, progress=False, path=tmp_path or "."
    )


class _Blow(Callback):
    """From fit epoch 1 on, a learning rate that diverges."""

    order = -3

    def before_epoch(self):
        if self.epoch >= 1:
            self.learn.opt.set_hyper("lr", 1e9)


class _Look(Callback):
    """At the start of each epoch: the rate scale and whether momentum buffers exist."""

    order = 90

    def __init__(self):
        self.scales, self.momentum = [], []

    def before_epoch(self):
        self.scales.append(self.learn.lr_scale)
        state = self.learn.opt.state
        self.momentum.append(
            any("grad_avg" in state.get(p, {}) for p in self.learn.model.parameters())
        )


@pytest.mark.parametrize("offset", [None, 5])
def test_rollbacks_name_the_runs_epoch_halve_the_scale_and_clear_momentum(tiny_cache, offset):
    learn = _learner(tiny_cache, retries=2)
    if offset is not None:
        learn.epoch_offset = offset  # a resumed run: fit epoch e is run epoch offset + e
    look = _Look()
    with pytest.warns(UserWarning, match="diverged"):
        learn.fit(5, cbs=[_Blow(), look])
    assert [r["epoch"] for r in learn.rollbacks] == [e + (offset or 0) for e in (1, 2, 3)]
    assert all(r["stage"] == "fit" for r in learn.rollbacks)
    assert all(not math.isfinite(r["train_loss"]) or r["train_loss"] > 1 for r in learn.rollbacks)
    assert learn.diverged
    # the scale halves at each rollback that is retried: 1, then 0.5, then 0.25
    assert look.scales == [1.0, 1.0, 0.5, 0.25]
    # epoch 1 starts with epoch 0's momentum; after a rollback the optimiser starts afresh
    assert look.momentum[1] and not look.momentum[2] and not look.momentum[3]


def test_history_keeps_the_earlier_rows_of_a_resumed_run(tiny_cache, tmp_path):
    learn = _learner(tiny_cache, tmp_path=tmp_path)
    earlier = [{"stage": "stage1", "epoch": 0, "train_loss": 1.5}]
    path = tmp_path / "history.csv"
    learn.epoch_offset = 1
    learn.fit(1, cbs=[History(path, stage="stage1", rows=list(earlier))])
    rows = read_history(path)
    assert [(r["stage"], r["epoch"]) for r in rows] == [("stage1", "0"), ("stage1", "1")]
    assert rows[0]["train_loss"] == "1.5"
    assert read_history(tmp_path / "missing.csv") == []
    learn.fit(1, cbs=[History(tmp_path / "fresh.csv")])  # a new run: its own rows only
    assert [r["stage"] for r in read_history(tmp_path / "fresh.csv")] == ["fit"]


def test_train_only_nothing_named_trains_everything_and_drops_frozen_grads():
    model = create_model("twopath")
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    assert train_only(model, []) == parameter_count(model)
    assert all(p.grad is not None for p in model.parameters())
    train_only(model, ["output"])
    output = set(resolve_group(model, "output"))
    for name, param in model.named_parameters():
        assert (param.grad is not None) == (name in output), name


BOUND = 2.0**-8  # exact in float32


def test_the_weight_bound_holds_every_trained_kernel_and_leaves_frozen_ones(tiny_cache):
    """optim.weight_bound in a real fit: every trainable kernel ends within ±bound, some on it
    (the bound acted), while a frozen group keeps its weights, beyond the bound included."""
    learn = _learner(tiny_cache, optim=OptimSection(lr=0.05, weight_bound=BOUND))
    model = learn.model
    with torch.no_grad():
        model.local.conv1.weight.mul_(3.0)  # frozen below, and partly beyond the bound
    frozen = model.local.conv1.weight.detach().clone()
    model.local.conv1.weight.requires_grad_(False)
    assert frozen.abs().max() > BOUND
    learn.fit(2)
    assert torch.equal(model.local.conv1.weight, frozen)
    trained = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    trained = [w for w in trained if w.requires_grad]
    assert len(trained) == 3
    for weight in trained:
        assert float(weight.detach().abs().max()) <= BOUND
    at_bound = sum(int((w.detach().abs() == BOUND).sum()) for w in trained)
    assert at_bound > 0


class _GradNorm(Callback):
    """The gradients' global L2 norm as the optimiser gets them (after every clip)."""

    order = 95

    def __init__(self):
        self.norms = []

    def before_step(self):
        grads = [p.grad for p in self.learn.model.parameters() if p.grad is not None]
        self.norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            )
        )


def test_gradient_clipping_bounds_the_norm_the_optimiser_sees(tiny_cache):
    free, clipped = _GradNorm(), _GradNorm()
    _learner(tiny_cache, optim=OptimSection(lr=0.01)).fit(1, cbs=[free])
    _learner(tiny_cache, optim=OptimSection(lr=0.01, grad_clip=1e-3)).fit(1, cbs=[clipped])
    assert max(free.norms) > 1e-3  # without the clip the norm is above it ...
    assert all(n <= 1e-3 * 1.0001 for n in clipped.norms)  # ... with it, never


class _Huge(Callback):
    """Epoch 0's training loss finite but enormous (what a too-high rate with a weight bound
    gives: no NaN ever appears)."""

    order = -1

    def after_loss(self):
        if self.training and self.epoch == 0:
            self.learn.loss = self.learn.loss * 1e5
            self.learn.loss_grad = self.learn.loss_grad * 1e5


def test_a_first_epoch_already_blown_up_is_rolled_back(tiny_cache):
    """No earlier epoch to compare with: the reference is a uniform guess, ln K."""
    learn = _learner(tiny_cache, retries=2)
    start = {k: v.clone() for k, v in learn.model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(2, cbs=[_Huge()])
    assert [r["epoch"] for r in learn.rollbacks] == [0]
    assert learn.rollbacks[0]["train_loss"] > 10 * math.log(4)
    assert learn.lr_scale == 0.5 and not learn.diverged
    # the epoch after the rollback started from the initial weights and trained normally
    assert not all(torch.equal(start[k], v) for k, v in learn.model.state_dict().items())

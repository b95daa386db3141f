"""Class weights, L1, max-norm and stage patience, each observed in a real (tiny) fit."""

import math

import pytest
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback

from braver.data.blocks import patch_dataloaders
from braver.models import create_model
from braver.recipe import OptimSection
from braver.train import braver_learner
from braver.train.stages import DualStage


def _learner(cache, optim, class_weighting=False, valid_patches=2, seed=0):
    torch.manual_seed(seed)
    model = create_model("twopath", in_channels=4, num_classes=4, dropout=0.0)
    ids = cache.case_ids
    dls = patch_dataloaders(
        cache,
        ids[:3],
        ids[3:],
        model.input_sizes,
        tile=4,
        bs=2,
        train_patches=4,
        valid_patches=valid_patches,
        class_weighting=class_weighting,
    )
    return braver_learner(dls, model, optim=optim, tile_mode=True, progress=False)


def _kernels(model):
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_class_weights_reach_the_training_loss(tiny_cache):
    """Every training batch's loss is the class-weighted cross-entropy of its pixels."""
    seen = []

    class Spy(Callback):
        order = 90  # after ClassWeights (1) set the weights, after the loss was computed

        def after_loss(self):
            if self.training:
                logits = self.learn.pred.detach()
                flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
                target = self.learn.yb[0].reshape(-1)
                weights = self.learn.dl.class_weights
                seen.append(
                    (
                        float(self.learn.loss),
                        float(F.cross_entropy(flat, target, weight=weights)),
                        float(F.cross_entropy(flat, target)),
                    )
                )

    learn = _learner(tiny_cache, OptimSection(lr=0.01), class_weighting=True)
    learn.fit(1, cbs=[Spy()])
    assert seen
    for loss, weighted, _ in seen:
        assert loss == pytest.approx(weighted, rel=1e-5)
    # the weights matter: on the imbalanced tiles the plain loss is another number
    assert any(abs(plain - weighted) > 1e-3 * abs(weighted) for _, weighted, plain in seen)
    assert learn.loss_func.weight is None  # handed back after the fit


def _fit_kernels(cache, optim, epochs=2):
    learn = _learner(cache, optim)
    learn.fit(epochs, lr=optim.lr)
    return learn.model


def test_l1_penalty_shrinks_the_kernels(tiny_cache):
    """Same seed, same patches: with L1 the kernels' total |w| ends below the run without it."""
    plain = _fit_kernels(tiny_cache, OptimSection(lr=0.01, l1=0.0))
    l1 = _fit_kernels(tiny_cache, OptimSection(lr=0.01, l1=0.05))
    torch.manual_seed(0)  # the start both fits had (_learner seeds the same way)
    start = create_model("twopath", in_channels=4, num_classes=4, dropout=0.0)
    total = [sum(float(w.abs().sum()) for w in _kernels(m)) for m in (start, plain, l1)]
    assert total[2] < total[1] - 0.01 * total[0]
    # each step moves every kernel weight by lr · l1 · sign(w) towards 0 on top of the data term
    assert total[2] < total[0]


def test_max_norm_rescales_each_filter_to_the_bound(tiny_cache):
    """Filters above the bound end exactly on it (renorm), not anywhere below it."""
    torch.manual_seed(0)
    start = create_model("twopath", in_channels=4, num_classes=4, dropout=0.0)
    norms = [w.detach().flatten(1).norm(dim=1) for w in _kernels(start)]
    bound = 0.5 * float(min(n.min() for n in norms))  # every filter starts above it
    model = _fit_kernels(tiny_cache, OptimSection(lr=1e-4, max_norm=bound), epochs=1)
    for w in _kernels(model):
        after = w.detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(
            after, torch.full_like(after, bound), rtol=1e-3, atol=0
        )  # renorm's 1e-7


class _Stages(Callback):
    order = 80

    def __init__(self):
        self.stages = []

    def after_epoch(self):
        self.stages.append(self.learn.stage)


def test_stage_patience_ends_each_stage_when_the_validation_loss_stops_improving(tiny_cache):
    """lr = 0: the validation loss never improves after the first epoch, so a patience of 1
    ends stage 1 after its second epoch (stage 2 takes over) and stage 2 after its second."""
    learn = _learner(tiny_cache, OptimSection(lr=0.0), valid_patches=4)
    spy = _Stages()
    stages = DualStage(5, 4, stage1_patience=1, stage2_patience=1)
    learn.fit(9, lr=0.0, cbs=[stages, spy])
    losses = [float(v[1]) for v in learn.recorder.values]
    assert spy.stages == ["stage1", "stage1", "stage2", "stage2"]
    # every epoch, the last of each stage included, is recorded (stage 2 validates on natural
    # patches, so its loss is another constant)
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[0] == losses[1] and losses[2] == losses[3]
    # without patience every epoch runs
    learn = _learner(tiny_cache, OptimSection(lr=0.0), valid_patches=4)
    spy = _Stages()
    learn.fit(9, lr=0.0, cbs=[DualStage(5, 4), spy])
    assert spy.stages == ["stage1"] * 5 + ["stage2"] * 4

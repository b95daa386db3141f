"""KeepBest: the epoch each stage keeps, by mean patch Dice or by validation loss."""

import math

import pytest
import torch
from torch import nn

from braver.models import create_model
from braver.recipe import load_recipe, shipped_recipe
from braver.train.compose import recipe_callbacks
from braver.train.safety import KeepBest

NAMES = ["epoch", "train_loss", "valid_loss", "whole_tumor_dice", "tumor_core_dice", "time"]
# epoch: (valid loss, whole tumour Dice, core Dice). The loss is lowest at epoch 1, the mean
# Dice highest at epoch 3 (a class-weighted loss that rises from overconfidence).
EPOCHS = [(0.50, 0.60, 0.40), (0.40, 0.62, 0.42), (0.90, 0.80, 0.60), (1.10, 0.85, 0.65)]


class _Recorder:
    def __init__(self, names):
        self.values, self.metric_names = [], names


class _Learn:
    def __init__(self, names=NAMES):
        self.model = nn.Linear(1, 1, bias=False)
        self.recorder = _Recorder(names)
        self.stage, self.epoch, self.epoch_offset = "stage1", 0, 10


def _fit(by, epochs=EPOCHS, names=NAMES):
    learn = _Learn(names)
    callback = KeepBest(by=by)
    callback.learn = learn
    callback.before_fit()
    for epoch, values in enumerate(epochs):
        learn.epoch = epoch
        with torch.no_grad():
            learn.model.weight.fill_(float(epoch))
        learn.recorder.values.append([0.3, *values][: len(names) - 2])
        callback.after_epoch()
    callback.stage_ended("stage1")
    return learn


def test_dice_keeps_the_epoch_with_the_highest_mean_patch_dice():
    learn = _fit("dice")
    assert learn.kept == {"stage1": 13}  # the run's epoch: offset 10 + epoch 3
    assert float(learn.model.weight.detach()) == 3.0  # its weights are back in the model
    assert learn.best_states["stage1"].valid_loss == pytest.approx(-(0.85 + 0.65) / 2)


def test_valid_loss_keeps_the_epoch_with_the_lowest_loss():
    learn = _fit("valid_loss")
    assert learn.kept == {"stage1": 11}
    assert float(learn.model.weight.detach()) == 1.0


def test_dice_falls_back_to_the_loss_without_dice_metrics():
    names = ["epoch", "train_loss", "valid_loss", "patch_accuracy", "time"]
    learn = _fit("dice", [(0.5, 0.9), (0.4, 0.1), (0.6, 0.95)], names)
    assert learn.kept == {"stage1": 11}


def test_a_nan_dice_epoch_is_not_kept():
    learn = _fit("dice", [(0.5, 0.6, 0.4), (0.4, math.nan, math.nan), (0.9, 0.5, 0.4)])
    assert learn.kept == {"stage1": 10}  # epoch 1 falls back to its loss, never below -0.5


def test_keep_best_refuses_an_unknown_criterion():
    with pytest.raises(ValueError, match="dice"):
        KeepBest(by="accuracy")


@pytest.mark.parametrize("by", ["dice", "valid_loss"])
def test_the_recipe_chooses_the_criterion(by):
    recipe = load_recipe(shipped_recipe("brain"), [f"select.epoch_by={by}"])
    model = create_model("twopath", num_classes=4)
    kept = [c for c in recipe_callbacks(recipe, model) if isinstance(c, KeepBest)]
    assert [c.by for c in kept] == [by]


def test_the_shipped_recipes_keep_by_dice_and_refuse_other_values():
    from braver.errors import BraverError

    assert load_recipe(shipped_recipe("brain")).select.epoch_by == "dice"
    from braver.studies.transfer import load_liver_recipe

    assert load_liver_recipe(shipped_recipe("liver"))[0].select.epoch_by == "dice"
    with pytest.raises(BraverError, match="epoch_by"):
        load_recipe(shipped_recipe("brain"), ["select.epoch_by=accuracy"])

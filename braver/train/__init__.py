"""Training: a fastai Learner from a recipe, the paper's two phases, freezing by group name."""

from braver.train.callbacks import (
    ClassWeights,
    FreezeGroups,
    History,
    L1Penalty,
    MaxNorm,
    freeze_groups,
    train_only,
    unfreeze_groups,
)
from braver.train.learner import PixelCrossEntropy, build_learner, epoch_schedules, fit_stage
from braver.train.loop import Phase, plan_phases, train_from_recipe

__all__ = [
    "ClassWeights",
    "FreezeGroups",
    "History",
    "L1Penalty",
    "MaxNorm",
    "Phase",
    "PixelCrossEntropy",
    "build_learner",
    "epoch_schedules",
    "fit_stage",
    "freeze_groups",
    "plan_phases",
    "train_from_recipe",
    "train_only",
    "unfreeze_groups",
]

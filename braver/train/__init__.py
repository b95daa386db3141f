"""Training: one fastai Learner, the paper's schedule as callbacks, and the recipe runner."""

from braver.train.callbacks import (
    ClassWeights,
    DropFrozenGrads,
    FreezeGroups,
    History,
    L1Penalty,
    MaxNorm,
    freeze_groups,
    train_only,
    unfreeze_groups,
)
from braver.train.compose import (
    recipe_callbacks,
    recipe_dataloaders,
    recipe_learner,
    recipe_model,
    resolve_device,
    total_epochs,
)
from braver.train.learner import BraverLearner, PixelCrossEntropy, braver_learner
from braver.train.runner import train_from_recipe
from braver.train.safety import DivergenceGuard, KeepBest, WeightBound
from braver.train.stages import CascadeFirst, DualStage, PaperSchedule, paper_lr, paper_momentum

__all__ = [
    "BraverLearner",
    "CascadeFirst",
    "ClassWeights",
    "DivergenceGuard",
    "DropFrozenGrads",
    "DualStage",
    "FreezeGroups",
    "History",
    "KeepBest",
    "L1Penalty",
    "MaxNorm",
    "PaperSchedule",
    "PixelCrossEntropy",
    "WeightBound",
    "braver_learner",
    "freeze_groups",
    "paper_lr",
    "paper_momentum",
    "recipe_callbacks",
    "recipe_dataloaders",
    "recipe_learner",
    "recipe_model",
    "resolve_device",
    "total_epochs",
    "train_from_recipe",
    "train_only",
    "unfreeze_groups",
]

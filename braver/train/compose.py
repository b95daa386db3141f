"""A recipe's pieces, each a library call a notebook can make too: the patch DataLoaders, the
network, the Learner and the paper's callbacks (``braver.train.runner`` composes them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from fastai.callback.core import Callback

from braver.data.cache import Cache
from braver.devices import resolve_device  # noqa: F401  (the runner's device resolver)
from braver.recipe import Recipe


@dataclass
class Distributed:
    """Rank and world size of this process (1 process unless torch.distributed is set up)."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Distributed:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())
        return cls()

    @property
    def main(self) -> bool:
        return self.rank == 0


def recipe_dataloaders(
    recipe: Recipe,
    cache: Cache | str | Path,
    train_cases: Sequence[str],
    valid_cases: Sequence[str],
    input_sizes: Sequence[int],
    *,
    device: str = "cpu",
    dist: Distributed | None = None,
):
    """The patch DataLoaders a recipe trains on (balanced stage-1 sampling to start with)."""
    from braver.data.blocks import patch_dataloaders
    from braver.data.patches import Augment

    dist = dist or Distributed()
    data = recipe.data
    tile = data.tile if data.mode == "tile" else 1
    dls = patch_dataloaders(
        cache,
        train_cases,
        valid_cases,
        input_sizes,
        tile=tile,
        bs=data.batch_size,
        train_patches=recipe.stage1.patches_per_epoch,
        valid_patches=data.validation_patches,
        sampling=recipe.stage1.sampling,
        seed=data.seed,
        device=device,
        on_device=data.on_device,
        rank=dist.rank,
        world=dist.world,
        class_weight_power=recipe.optim.class_weight_power,
        augment=Augment(flip=data.flip, intensity=data.intensity),
    )
    if len(dls.loaders) > 1:  # every rank scores the same validation patches
        dls.valid.rank, dls.valid.world = 0, 1
    return dls


def recipe_model(recipe: Recipe, cache: Cache, frequencies: Sequence[float] | None = None):
    """The recipe's network for the cache's channels and classes."""
    from braver.models import create_model

    return create_model(
        recipe.model.name,
        in_channels=len(cache.channels),
        num_classes=cache.scheme.num_classes,
        maxout_k=recipe.model.maxout_k,
        init=recipe.model.init,
        dropout=recipe.model.dropout,
        class_frequencies=frequencies if recipe.model.bias_from_frequencies else None,
    )


def recipe_learner(recipe: Recipe, dls, model: torch.nn.Module, **kwargs):
    """``braver_learner`` with the recipe's optimiser and tile mode."""
    from braver.train.learner import braver_learner

    return braver_learner(
        dls, model, optim=recipe.optim, tile_mode=recipe.data.mode == "tile", **kwargs
    )


def _class_weighting(recipe: Recipe) -> bool:
    return recipe.data.mode == "tile" and recipe.optim.class_weights


def recipe_callbacks(
    recipe: Recipe,
    model: torch.nn.Module,
    *,
    state: dict | None = None,
    first_callbacks: Sequence[Callback] = (),
) -> list[Callback]:
    """The paper's schedule for ``learn.fit(total_epochs(recipe))``: ``CascadeFirst`` (for a
    cascade, unless ``cascade.joint``), ``DualStage``, ``PaperSchedule`` and ``KeepBest``. ``state`` is a resumed run's
    progress (``progress.json``); ``first_callbacks`` join the first network's own fit."""
    from braver.train.safety import KeepBest
    from braver.train.stages import CascadeFirst, DualStage, PaperSchedule

    state = state or {}
    weighting = _class_weighting(recipe)
    callbacks: list[Callback] = []
    if hasattr(model, "first") and hasattr(model, "second") and not recipe.cascade.joint:
        in_first = state.get("fit") == "first"
        callbacks.append(
            CascadeFirst(
                recipe.cascade.first_epochs,
                recipe.cascade.first_stage2_epochs,
                patches=recipe.cascade.first_patches_per_epoch,
                stage2_patches=recipe.stage2.patches_per_epoch,
                stage2_lr=recipe.stage2.lr,
                class_weighting=weighting,
                cbs=[
                    PaperSchedule(recipe.optim),
                    KeepBest(by=recipe.select.epoch_by),
                    *first_callbacks,
                ],
                done="first" in state.get("finished", []),
                epoch_offset=state.get("epochs_done", 0) if in_first else 0,
                stage2_start=state.get("stage2_start") if in_first else None,
            )
        )
    main = state.get("fit") == "main"
    callbacks += [
        DualStage(
            recipe.stage1.epochs,
            recipe.stage2.epochs,
            stage2_train=recipe.stage2.train or ["output"],
            stage1_lr=recipe.stage1.lr,
            stage2_lr=recipe.stage2.lr,
            stage1_patches=recipe.stage1.patches_per_epoch,
            stage2_patches=recipe.stage2.patches_per_epoch,
            stage1_sampling=recipe.stage1.sampling,
            stage2_sampling=recipe.stage2.sampling,
            stage1_patience=recipe.stage1.patience,
            stage2_patience=recipe.stage2.patience,
            class_weighting=weighting,
            prior_shift=recipe.stage2.prior_shift,
            stage2_start=state.get("stage2_start") if main else None,
        ),
        PaperSchedule(recipe.optim),
        KeepBest(by=recipe.select.epoch_by),
    ]
    return callbacks


def total_epochs(recipe: Recipe) -> int:
    """Epochs of the main fit (both stages; a cascade's first network trains before it)."""
    return recipe.stage1.epochs + recipe.stage2.epochs

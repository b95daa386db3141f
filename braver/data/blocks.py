"""fastai blocks for multi-scale patches: a stock ``DataBlock`` → ``DataLoaders`` of patch batches.

A user composes them the fastai way::

    dblock = DataBlock(
        blocks=(MultiScalePatchBlock((33, 65)), PatchMaskBlock),
        get_items=labelled_cases,
        splitter=CaseSplitter(valid_pct=0.2, seed=0),
    )
    dls = dblock.dataloaders(cache, bs=128, patches_per_epoch=100_000)
    dls.show_batch()

(``patch_datablock(...)`` builds exactly this.) The items of the ``DataBlock`` are *cases*
(``CachedCase``), so the split is by case. Patches are not items: every epoch, a ``PatchDL``
draws its centres ``(case, z, y, x)`` afresh from its cases (``balanced`` or ``natural``,
``braver.data.sampling``) and hands each batch to the ``GatherPatches`` batch transform as one
index tensor, which cuts every patch of the batch at once (``braver.data.patches``). fastai's
per-item pipeline (about 75 µs an item) never runs on the training path.

Batches are ``(TensorPatch, …, TensorPatchMask)``: one input per scale (local first), aligned on
the same centre pixel, then the ``k × k`` label block. The typed tensors know how to show
themselves, so ``dls.show_batch()`` draws every scale with its label block outlined and
``learn.show_results()`` draws truth beside prediction.

The training split (``split_idx == 0``) draws new centres every epoch and applies ``augment``;
the validation split and ``dls.test_dl(cases)`` draw ``valid_patches`` centres once (seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders

from braver.data.cache import Cache, CachedCase
from braver.data.loader import GatherPatches, PatchDL
from braver.data.patches import (
    Augment,
    PatchGeometry,
)
from braver.data.sampling import split_cases
from braver.data.tensors import TensorPatch, TensorPatchMask
from braver.errors import BraverError

__all__ = [
    "CaseSplitter",
    "GatherPatches",
    "MultiScalePatchBlock",
    "PatchDL",
    "PatchMaskBlock",
    "TensorPatch",
    "TensorPatchMask",
    "labelled_cases",
    "patch_datablock",
    "patch_dataloaders",
    "set_sampling",
]


def MultiScalePatchBlock(input_sizes: Sequence[int] = (33,), tile: int = 1) -> TransformBlock:
    """Inputs of a patch batch: aligned patches of every size in ``input_sizes`` (local first)
    centred on the same pixel, or ``tile × tile`` dense tiles of them (``tile`` = k > 1).

    Its items are cases; the block brings the ``PatchDL`` that draws and gathers patches."""
    geometry = PatchGeometry(tuple(int(s) for s in input_sizes), int(tile))
    return TransformBlock(dl_type=PatchDL, dls_kwargs={"geometry": geometry})


def PatchMaskBlock() -> TransformBlock:
    """Targets of a patch batch: the ``k × k`` label block at the centre of the patches."""
    return TransformBlock()


def labelled_cases(source: Cache | str | Path) -> list[CachedCase]:
    """The labelled cases of a prepared cache (the ``get_items`` of a patch ``DataBlock``)."""
    cache = source if isinstance(source, Cache) else Cache.open(source)
    cases = [cache.case(c) for c in cache.case_ids]
    labelled = [c for c in cases if c.has_label]
    if not labelled:
        raise BraverError("has no labelled case to train on", cache.root, "prepare labels")
    return labelled


class CaseSplitter:
    """Split a list of cases into training and validation *by case* (seeded), never by patch.

    ``valid_cases`` names the validation cases explicitly; otherwise ``valid_pct`` of them
    (at least ``min_valid``) are drawn with ``seed``, or with ``fold`` the seed's ``folds``-fold
    cross-validation part ``fold`` validates (``braver.data.sampling.split_cases``).
    """

    def __init__(
        self,
        valid_pct: float = 0.2,
        seed: int = 0,
        min_valid: int = 1,
        valid_cases: Sequence[str] | None = None,
        fold: int | None = None,
        folds: int = 5,
    ):
        self.valid_pct, self.seed, self.min_valid = valid_pct, seed, min_valid
        self.valid_cases = None if valid_cases is None else list(valid_cases)
        self.fold, self.folds = fold, folds

    def __call__(self, cases: Sequence[CachedCase]) -> tuple[list[int], list[int]]:
        ids = [c.case_id for c in cases]
        if self.valid_cases is None:
            _, valid = split_cases(
                ids, self.valid_pct, self.seed, self.min_valid, self.fold, self.folds
            )
        else:
            unknown = sorted(set(self.valid_cases) - set(ids))
            if unknown:
                raise BraverError(
                    f"validation case {unknown[0]} is not a labelled case of the cache",
                    None,
                    f"choose among {', '.join(ids[:8])}{' …' if len(ids) > 8 else ''}",
                )
            valid = self.valid_cases
        chosen = set(valid)
        return (
            [i for i, c in enumerate(ids) if c not in chosen],
            [i for i, c in enumerate(ids) if c in chosen],
        )


def input_sizes_of(model: Any) -> tuple[int, ...]:
    """Input sizes of a model, a registered model name, or a sequence of sizes."""
    if isinstance(model, str):
        from braver.models import create_model

        return tuple(create_model(model, in_channels=1, num_classes=2).input_sizes)
    if hasattr(model, "input_sizes"):
        return tuple(model.input_sizes)
    return tuple(int(s) for s in model)


def patch_datablock(
    model: Any = "twopath",
    *,
    tile: int = 1,
    valid_pct: float = 0.2,
    seed: int = 0,
    min_valid: int = 1,
    valid_cases: Sequence[str] | None = None,
    fold: int | None = None,
    folds: int = 5,
) -> DataBlock:
    """A stock fastai ``DataBlock`` of multi-scale patches for ``model`` (a name, a model or
    input sizes): ``(MultiScalePatchBlock, PatchMaskBlock)``, cases as items, split by case
    (``fold``: that part of a ``folds``-fold cross-validation validates)."""
    return DataBlock(
        blocks=(MultiScalePatchBlock(input_sizes_of(model), tile), PatchMaskBlock()),
        get_items=labelled_cases,
        splitter=CaseSplitter(valid_pct, seed, min_valid, valid_cases, fold, folds),
        n_inp=1,
    )


def patch_dataloaders(
    cache: Cache | str | Path,
    train_cases: Sequence[str] | None = None,
    valid_cases: Sequence[str] | None = None,
    input_sizes: Any = (33,),
    *,
    tile: int = 1,
    bs: int = 128,
    train_patches: int = 10_000,
    valid_patches: int = 2_000,
    sampling: str = "balanced",
    seed: int = 0,
    device="cpu",
    on_device: bool = True,
    rank: int = 0,
    world: int = 1,
    class_weighting: bool = False,
    class_weight_power: float = 1.0,
    augment: Augment | None = None,
    valid_pct: float = 0.2,
) -> DataLoaders:
    """``patch_datablock(...).dataloaders(cache, …)`` with the split given as case ids.

    ``train_cases``/``valid_cases`` restrict and split the cache's labelled cases (``None``:
    every labelled case, split with ``valid_pct`` and ``seed``). Batches are ``(input_1, …,
    input_n, label)`` with ``n = len(input_sizes)``; label is (B, k, k) int64.
    """
    cache = cache if isinstance(cache, Cache) else Cache.open(cache)
    keep = None
    if train_cases is not None:
        keep = set(train_cases) | set(valid_cases or ())
    dblock = DataBlock(
        blocks=(MultiScalePatchBlock(input_sizes_of(input_sizes), tile), PatchMaskBlock()),
        get_items=lambda source: [
            c for c in labelled_cases(source) if keep is None or c.case_id in keep
        ],
        splitter=CaseSplitter(
            valid_pct, seed, valid_cases=list(valid_cases) if train_cases is not None else None
        ),
        n_inp=1,
    )
    if train_cases is not None and not valid_cases:  # no validation split: one loader
        dblock.splitter = lambda items: (list(range(len(items))),)
    return dblock.dataloaders(
        cache,
        bs=bs,
        device=device,
        sampling=sampling,
        patches_per_epoch=train_patches,
        valid_patches=valid_patches,
        seed=seed,
        augment=augment,
        on_device=on_device,
        class_weighting=class_weighting,
        class_weight_power=class_weight_power,
        rank=rank,
        world=world,
    )


def with_geometry(dls: DataLoaders, input_sizes: Sequence[int]) -> DataLoaders:
    """The same loaders (cases, sampling, seeds) cutting patches for other input sizes
    (e.g. a cascade's first network)."""
    geometry = PatchGeometry(tuple(input_sizes), dls.loaders[0].geometry.tile)
    return DataLoaders(*[dl.new(geometry=geometry) for dl in dls.loaders], device=dls.device)


def set_sampling(
    dls: DataLoaders,
    sampling: str,
    n: int | None = None,
    class_weighting: bool | None = None,
) -> None:
    """Switch every loader to ``sampling`` (the training loader to ``n`` centres per epoch)
    and turn tile-mode class weighting on or off."""
    for i, dl in enumerate(dls.loaders):
        if dl.sampling != sampling:
            dl.sampling, dl.centres = sampling, None
        if class_weighting is not None and dl.class_weighting != class_weighting:
            dl.class_weighting, dl.centres = class_weighting, None
        if i == 0 and n is not None:
            dl.patches_per_epoch = n

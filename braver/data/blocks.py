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

import numpy as np
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.torch_core import TensorImage, TensorMask
from fasttransform import Transform

from braver.data.cache import Cache, CachedCase
from braver.data.patches import (
    Augment,
    PatchGeometry,
    balanced_weights,
    make_volumes,
    symmetric,
)
from braver.data.sampling import PatchSampler, split_cases
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

# label colours for overlays: background transparent, then red, green, yellow, blue, …
_COLOURS = np.array(
    [
        [0, 0, 0, 0],
        [1, 0.2, 0.2, 0.55],
        [0.2, 0.9, 0.2, 0.45],
        [1, 0.9, 0.1, 0.55],
        [0.2, 0.5, 1, 0.5],
    ]
)


class TensorPatch(TensorImage):
    """One scale of a multi-scale patch batch: (B, C, S, S), z-scored (or CT-windowed) values."""

    def show(self, ctx=None, channel: int = -1, title: str | None = None, **kwargs):
        import matplotlib.pyplot as plt

        image = self.detach().cpu().float()
        if image.dim() == 3:
            image = image[channel]
        ax = ctx if ctx is not None else plt.subplots(figsize=(2.5, 2.5))[1]
        ax.imshow(image.numpy(), cmap="gray")
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=8)
        return ax


class TensorPatchMask(TensorMask):
    """Label blocks of a patch batch: (B, k, k) class indices (k = 1 in the paper's patch mode)."""

    def show(self, ctx=None, side: int | None = None, title: str | None = None, **kwargs):
        """Overlay the label block centred in an axis of ``side`` pixels (the patch's)."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle

        labels = self.detach().cpu().long().numpy()
        ax = ctx if ctx is not None else plt.subplots(figsize=(2.5, 2.5))[1]
        k = labels.shape[-1]
        side = side or k
        start = side // 2 - k // 2
        rgba = _COLOURS[np.clip(labels, 0, len(_COLOURS) - 1)]
        extent = (start - 0.5, start + k - 0.5, start + k - 0.5, start - 0.5)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        ax.add_patch(
            Rectangle((start - 0.5, start - 0.5), k, k, fill=False, edgecolor="white", lw=0.8)
        )
        ax.set_xlim(-0.5, side - 0.5)
        ax.set_ylim(side - 0.5, -0.5)
        ax.set_axis_off()
        if title:
            ax.set_title(title, fontsize=8)
        return ax


class GatherPatches(Transform):
    """Batch transform: (B, 4) centres → ``(TensorPatch × n_scales, TensorPatchMask)``.

    ``augment`` (training loaders only) transforms the gathered tiles (``Augment``), drawing
    from a generator seeded with ``seed``.
    """

    order = 0

    def __init__(self, volumes, geometry: PatchGeometry, augment: Augment | None = None, seed=0):
        super().__init__()
        self.volumes, self.geometry = volumes, geometry
        self.augment = augment if augment is not None and augment.active else None
        self.generator = torch.Generator().manual_seed(seed)

    def encodes(self, centres: torch.Tensor):
        tiles, labels = self.volumes.gather(centres, self.geometry)
        if self.augment is not None:
            tiles, labels = self.augment(tiles, labels, self.geometry, self.generator)
        device = centres.device
        inputs = tuple(TensorPatch(t.to(device)) for t in self.geometry.crop_inputs(tiles))
        return (*inputs, TensorPatchMask(labels.to(device)))


def _cases_of(dataset) -> list[CachedCase]:
    items = getattr(dataset, "items", dataset)
    cases = [item[0] if isinstance(item, tuple) else item for item in items]
    bad = [c for c in cases if not isinstance(c, CachedCase)]
    if bad:
        raise BraverError(
            f"patch loaders take prepared cases, not {type(bad[0]).__name__}",
            None,
            "pass cache.cases() (or labelled_cases(cache)) items",
        )
    return cases


def _cache_of(cases: Sequence[CachedCase]) -> Cache:
    roots = {c.folder.parent.parent for c in cases}
    if len(roots) != 1:
        raise BraverError("the cases come from several caches", None, "use one prepared cache")
    return Cache.open(roots.pop())


class PatchDL(TfmdDL):
    """A ``TfmdDL`` over cases whose batches are patches drawn afresh every epoch.

    ``get_idxs`` draws the epoch's centres (``sampling`` = ``balanced`` or ``natural``, seeded by
    ``seed`` and the epoch count; the validation split draws ``valid_patches`` once); batches
    are index tensors of up to ``bs`` centres, gathered by ``GatherPatches``. ``rank``/``world``
    give each process of a distributed run its own shard of every epoch.
    """

    _settings = (
        "geometry",
        "sampling",
        "patches_per_epoch",
        "valid_patches",
        "seed",
        "augment",
        "on_device",
        "class_weighting",
        "class_weight_power",
        "rank",
        "world",
    )

    def __init__(
        self,
        dataset=None,
        *,
        geometry: PatchGeometry | None = None,
        sampling: str = "balanced",
        patches_per_epoch: int = 10_000,
        valid_patches: int = 2_000,
        seed: int = 0,
        augment: Augment | None = None,
        on_device: bool = True,
        class_weighting: bool = False,
        class_weight_power: float = 1.0,
        rank: int = 0,
        world: int = 1,
        bs: int = 128,
        device=None,
        **kwargs,
    ):
        if geometry is None:
            raise BraverError(
                "a PatchDL needs the patch geometry", None, "use MultiScalePatchBlock(input_sizes)"
            )
        self.cases = _cases_of(dataset)
        if not self.cases:
            raise BraverError(
                "a patch loader has no case to draw patches from", None, "check the split"
            )
        self.cache = _cache_of(self.cases)
        self.geometry, self.sampling, self.seed = geometry, sampling, seed
        self.patches_per_epoch, self.valid_patches = patches_per_epoch, valid_patches
        self.augment, self.on_device = augment, on_device
        self.class_weighting, self.class_weight_power = class_weighting, class_weight_power
        self.rank, self.world, self.epoch = rank, world, 0
        self.training = getattr(dataset, "split_idx", 0) in (0, None)
        self.fixed = not self.training
        unlabelled = [c.case_id for c in self.cases if not c.has_label]
        if unlabelled:
            raise BraverError(
                f"case {unlabelled[0]} has no label to draw patches by",
                self.cases[0].folder.parent,
                "predict whole volumes with learn.predict_case / predict_volume instead",
            )
        num_classes = self.cache.scheme.num_classes
        self.sampler = PatchSampler.from_cache(
            self.cache, [c.case_id for c in self.cases], num_classes
        )
        device = torch.device(device) if device is not None else torch.device("cpu")
        volumes = make_volumes(
            self.cache, [c.case_id for c in self.cases], geometry, device, on_device
        )
        gather = GatherPatches(
            volumes,
            geometry,
            augment if self.training else None,
            seed=seed + 1000 * rank + (0 if self.training else 1),
        )
        self.centres: np.ndarray | None = None
        self.class_weights: torch.Tensor | None = None
        for key in ("after_batch", "num_workers", "n", "after_item", "before_batch", "shuffle"):
            kwargs.pop(key, None)  # centres come in random order; the gather is the pipeline
        super().__init__(
            dataset=dataset,
            bs=bs,
            n=self.patches if self.training else self.valid_patches,
            num_workers=0,
            indexed=False,
            after_batch=[gather],
            device=device,
            do_setup=False,
            **kwargs,
        )

    @property
    def patches(self) -> int:
        return self.patches_per_epoch if self.training else self.valid_patches

    @property
    def n_inp(self) -> int:
        return len(self.geometry.input_sizes)

    @property
    def gather(self) -> GatherPatches:
        return self.after_batch.fs[0]

    def __len__(self) -> int:
        per_rank = -(-self.patches // self.world)
        return -(-per_rank // self.bs)

    def new(self, dataset=None, cls=None, **kwargs):
        """The same loader settings on another dataset (validation split, ``test_dl``) or with
        other settings (``dl.new(sampling="natural")``, ``geometry=…``)."""
        settings = {key: getattr(self, key) for key in self._settings}
        settings.update({k: v for k, v in kwargs.items() if k in self._settings})
        passthrough = {k: v for k, v in kwargs.items() if k not in self._settings}
        passthrough.pop("n", None)
        passthrough.pop("get_idxs", None)  # fastai's reorder: our draws are already in order
        return type(self)(
            self.dataset if dataset is None else dataset,
            bs=kwargs.get("bs", self.bs),
            device=kwargs.get("device", self.device),
            **settings,
            **{k: v for k, v in passthrough.items() if k not in ("bs", "device")},
        )

    def draw(self, epoch: int) -> np.ndarray:
        """The centres of ``epoch`` for this rank (every rank draws the same, then shards)."""
        rng = np.random.default_rng([self.seed, epoch])
        centres = self.sampler.sample(self.patches, self.sampling, rng)
        return centres[self.rank :: self.world]

    def get_idxs(self):
        """Draws the epoch's centres (once per epoch; once for good when ``fixed``) and
        returns the item order, 0 … n − 1 (the draw is already random)."""
        if self.centres is None or not self.fixed:
            self.centres = self.draw(0 if self.fixed else self.epoch)
            if not self.fixed:
                self.epoch += 1
            self.class_weights = (
                balanced_weights(self.label_histogram(), self.class_weight_power)
                if self.class_weighting
                else None
            )
        return list(range(len(self.centres)))

    def sample(self):
        """Batch starts into the centres ``get_idxs`` drew for this epoch (no second draw)."""
        if self.centres is None:
            self.get_idxs()
        return iter(range(0, len(self.centres), self.bs))

    def create_batches(self, samps):
        for start in samps:
            yield torch.from_numpy(self.centres[start : start + self.bs])

    def one_batch(self):
        if self.centres is None:
            self.get_idxs()
            if not self.fixed:  # a peek: the first epoch still draws its own centres
                self.epoch -= 1
        batch = torch.from_numpy(self.centres[: self.bs])
        self._shown_centres = batch
        if self.device is not None:
            batch = batch.to(self.device)
        return self.after_batch(batch)

    def label_histogram(self) -> np.ndarray:
        """Pixel counts per class over this epoch's label blocks (for tile-mode weights)."""
        counts = np.zeros(self.sampler.num_classes, dtype=np.int64)
        label_only = PatchGeometry((1,), self.geometry.tile)
        for start in range(0, len(self.centres), 4096):
            chunk = torch.from_numpy(self.centres[start : start + 4096])
            _, labels = self.gather.volumes.gather(chunk, label_only)
            counts += np.bincount(
                labels.reshape(-1).cpu().numpy(), minlength=self.sampler.num_classes
            )[: self.sampler.num_classes]
        return counts

    # -- showing ---------------------------------------------------------------------------
    def show_batch(self, b=None, max_n: int = 6, channel: int = -1, show: bool = True, **kwargs):
        """Each sample a row: every scale with its label block outlined and coloured."""
        context = None
        if b is None:
            b = self.one_batch()
            context = self.context_labels(self._shown_centres, self.geometry.input_sizes[0])
        inputs, labels = b[: self.n_inp], b[self.n_inp]
        n = min(max_n, len(labels))
        titles = [f"{s}×{s}" for s in self.geometry.input_sizes]
        masks = [labels] if context is None else [labels, context]
        names = ["label"] if context is None else ["label", "labels around it"]
        return self._grid(inputs, masks, titles, names, n, channel, show)

    def context_labels(self, centres: torch.Tensor, side: int) -> TensorPatchMask:
        """The labels of the whole ``side × side`` window around each centre (for showing)."""
        window = PatchGeometry((1,), side if side % 2 else side + 1)
        _, labels = self.gather.volumes.gather(centres, window)
        return TensorPatchMask(labels)

    def show_results(self, b, out, max_n: int = 6, channel: int = -1, show: bool = True, **kwargs):
        """Each sample a row: the scales, then truth and prediction over the local scale."""
        inputs, labels = b[: self.n_inp], b[self.n_inp]
        prediction = out[0] if isinstance(out, (tuple, list)) else out
        prediction = TensorPatchMask(torch.as_tensor(prediction).reshape(labels.shape))
        n = min(max_n, len(labels))
        titles = [f"{s}×{s}" for s in self.geometry.input_sizes]
        return self._grid(
            inputs, [labels, prediction], titles, ["truth", "prediction"], n, channel, show
        )

    def _grid(self, inputs, masks, titles, mask_titles, n, channel, show):
        import matplotlib.pyplot as plt

        columns = len(inputs) + len(masks)
        figure, axes = plt.subplots(n, columns, figsize=(2.2 * columns, 2.2 * n), squeeze=False)
        local_side = inputs[0].shape[-1]
        for row in range(n):
            for col, (x, title) in enumerate(zip(inputs, titles, strict=True)):
                ax = axes[row, col]
                TensorPatch(x[row]).show(ctx=ax, channel=channel, title=title if row == 0 else None)
                TensorPatchMask(masks[0][row]).show(ctx=ax, side=x.shape[-1])
            for j, (mask, title) in enumerate(zip(masks, mask_titles, strict=True)):
                ax = axes[row, len(inputs) + j]
                TensorPatch(inputs[0][row]).show(ctx=ax, channel=channel)
                TensorPatchMask(mask[row]).show(
                    ctx=ax, side=local_side, title=title if row == 0 else None
                )
        figure.tight_layout()
        if not show:
            return figure
        return figure


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
    (at least ``min_valid``) are drawn with ``seed`` (``braver.data.sampling.split_cases``).
    """

    def __init__(
        self,
        valid_pct: float = 0.2,
        seed: int = 0,
        min_valid: int = 1,
        valid_cases: Sequence[str] | None = None,
    ):
        self.valid_pct, self.seed, self.min_valid = valid_pct, seed, min_valid
        self.valid_cases = None if valid_cases is None else list(valid_cases)

    def __call__(self, cases: Sequence[CachedCase]) -> tuple[list[int], list[int]]:
        ids = [c.case_id for c in cases]
        if self.valid_cases is None:
            _, valid = split_cases(ids, self.valid_pct, self.seed, self.min_valid)
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
) -> DataBlock:
    """A stock fastai ``DataBlock`` of multi-scale patches for ``model`` (a name, a model or
    input sizes): ``(MultiScalePatchBlock, PatchMaskBlock)``, cases as items, split by case."""
    return DataBlock(
        blocks=(MultiScalePatchBlock(input_sizes_of(model), tile), PatchMaskBlock()),
        get_items=labelled_cases,
        splitter=CaseSplitter(valid_pct, seed, min_valid, valid_cases),
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


def flips_apply(geometry: PatchGeometry) -> bool:
    """Whether ``data.flip`` can act on this geometry (every input size odd)."""
    return symmetric(geometry)

"""``PatchDL``: the fastai ``TfmdDL`` whose items are cases and whose batches are patches.

Every epoch it draws its centres ``(case, z, y, x)`` afresh (``balanced`` or ``natural``,
``braver.data.sampling``; the validation split and ``test_dl`` draw once, seeded) and hands each
batch to the ``GatherPatches`` batch transform as one index tensor, which cuts every patch of
the batch at once (``braver.data.patches``). fastai's per-item pipeline never runs on this path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from fastai.data.core import TfmdDL
from fasttransform import Transform

from braver.data.cache import Cache, CachedCase
from braver.data.patches import Augment, PatchGeometry, balanced_weights, make_volumes
from braver.data.sampling import PatchSampler
from braver.data.tensors import TensorPatch, TensorPatchMask, patch_grid
from braver.errors import BraverError


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
        return patch_grid(inputs, masks, titles, names, n, channel)

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
        return patch_grid(inputs, [labels, prediction], titles, ["truth", "prediction"], n, channel)

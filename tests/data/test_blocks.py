"""The fastai side: DataBlock, PatchDL epochs, splits, shards, typed batches."""

import numpy as np
import torch

from braver.data.blocks import patch_dataloaders
from braver.data.patches import Augment


def test_dataloaders_yield_one_input_per_size(cache):
    dls = patch_dataloaders(
        cache, ["c0"], ["c1"], (5, 9), tile=1, bs=16, train_patches=40, valid_patches=20
    )
    assert dls.n_inp == 2
    batches = list(dls.train)
    assert len(batches) == len(dls.train) == 3
    local, wide, label = batches[0]
    assert local.shape == (16, 4, 5, 5) and wide.shape == (16, 4, 9, 9)
    assert label.shape == (16, 1, 1) and label.dtype == torch.int64
    # a new epoch draws new centres; validation centres stay fixed
    first = dls.train.centres.copy()
    list(dls.train)
    assert not np.array_equal(first, dls.train.centres)
    v1 = [b[-1] for b in dls.valid]
    v2 = [b[-1] for b in dls.valid]
    assert all(torch.equal(a, b) for a, b in zip(v1, v2, strict=True))
    # validation centres come only from the validation case
    assert set(dls.valid.centres[:, 0].tolist()) == {0}
    assert dls.valid.sampler.case_ids == ["c1"]


def test_ranks_draw_disjoint_shards(cache):
    kw = dict(tile=1, bs=8, train_patches=40, valid_patches=8)
    a = patch_dataloaders(cache, ["c0", "c1"], [], (5,), rank=0, world=2, **kw).train
    b = patch_dataloaders(cache, ["c0", "c1"], [], (5,), rank=1, world=2, **kw).train
    full = patch_dataloaders(cache, ["c0", "c1"], [], (5,), **kw).train
    a.get_idxs(), b.get_idxs(), full.get_idxs()
    np.testing.assert_array_equal(
        np.concatenate([a.centres, b.centres]),
        np.concatenate([full.centres[0::2], full.centres[1::2]]),
    )
    assert len(a) == 3


def test_augmentation_only_touches_the_training_loader(paired_cache):
    kw = dict(tile=2, bs=8, train_patches=8, valid_patches=8, seed=0)
    dls = patch_dataloaders(paired_cache, ["p0"], ["p1"], (5,), **kw)
    aug = patch_dataloaders(paired_cache, ["p0"], ["p1"], (5,), augment=Augment(True, 0.1), **kw)
    assert aug.train.gather.augment is not None and aug.valid.gather.augment is None
    for a, b in zip(next(iter(dls.valid)), next(iter(aug.valid)), strict=True):
        assert torch.equal(a, b)

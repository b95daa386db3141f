import numpy as np
import pytest
import torch

from braver.data.blocks import (
    Augment,
    DeviceVolumes,
    GatherPatches,
    MappedVolumes,
    PatchGeometry,
    balanced_weights,
    gather_windows,
    patch_dataloaders,
    symmetric,
)
from braver.data.cache import Cache, write_case, write_summary
from braver.data.labels import BRATS_2023


def naive_crop(volume, z, top, left, side):
    """One window by hand, zero outside the volume."""
    channels, _, height, width = volume.shape
    out = np.zeros((channels, side, side), volume.dtype)
    for r in range(side):
        for c in range(side):
            yy, xx = top + r, left + c
            if 0 <= yy < height and 0 <= xx < width:
                out[:, r, c] = volume[:, z, yy, xx]
    return out


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    ids = []
    for n, shape in enumerate([(3, 30, 26), (2, 12, 40)]):
        # every voxel holds a distinct value: any misplaced pixel shows
        image = np.arange(4 * np.prod(shape), dtype=np.float32).reshape(4, *shape) % 2048
        image += n * 0.5
        label = rng.integers(0, 4, size=shape).astype(np.uint8)
        write_case(tmp_path, f"c{n}", image, label, {"case_id": f"c{n}"})
        ids.append(f"c{n}")
    write_summary(
        tmp_path, {"label_scheme": BRATS_2023.to_json(), "channels": list("abcd"), "cases": ids}
    )
    return Cache.open(tmp_path)


def test_gather_windows_equals_naive_crops():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(2, 3, 15, 17)).astype(np.float16)
    n = 50
    z = rng.integers(0, 3, n)
    top = rng.integers(-12, 14, n)
    left = rng.integers(-12, 16, n)
    got = gather_windows(volume, z, top, left, 9)
    for i in range(n):
        np.testing.assert_array_equal(got[i], naive_crop(volume, z[i], top[i], left[i], 9))


@pytest.mark.parametrize("tile", [1, 4])
@pytest.mark.parametrize("sizes", [(5,), (5, 9), (5, 8)])
def test_batch_gather_equals_naive_crops(cache, sizes, tile):
    geometry = PatchGeometry(sizes, tile)
    centres = []
    for case, (z, y, x) in enumerate([(3, 30, 26), (2, 12, 40)]):
        for zz, yy, xx in [(0, 0, 0), (z - 1, y - 1, x - 1), (1, y // 2, x // 2), (0, 1, x - 2)]:
            centres.append((case, zz, yy, xx))
    centres = torch.tensor(centres)
    volumes = MappedVolumes(cache, ["c0", "c1"])
    tiles, labels = volumes.gather(centres, geometry)
    images = [cache.case(c).image for c in ("c0", "c1")]
    truth = [cache.case(c).label for c in ("c0", "c1")]
    for i, (case, z, y, x) in enumerate(centres.tolist()):
        k = tile
        want_label = naive_crop(truth[case][None], z, y - k // 2, x - k // 2, k)[0]
        np.testing.assert_array_equal(labels[i].numpy(), want_label)
        inputs = geometry.crop_inputs(tiles[i : i + 1])
        for size, got in zip(sizes, inputs, strict=True):
            side = size + k - 1
            # input i is centred on the label block: its pixel s//2 + j labels block pixel j
            top = y - k // 2 - size // 2
            left = x - k // 2 - size // 2
            want = naive_crop(images[case], z, top, left, side).astype(np.float32)
            np.testing.assert_array_equal(got[0].numpy(), want)

    device = DeviceVolumes(cache, ["c0", "c1"], pad=geometry.side, device="cpu")
    tiles2, labels2 = device.gather(centres, geometry)
    torch.testing.assert_close(tiles2, tiles, rtol=0, atol=0)
    torch.testing.assert_close(labels2, labels, rtol=0, atol=0)


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


def test_balanced_weights():
    w = balanced_weights(np.array([90, 10, 0, 0]))
    np.testing.assert_allclose(w.numpy(), [100 / 180, 100 / 20, 0, 0])
    soft = balanced_weights(np.array([90, 10, 0, 0]), power=0.5)
    np.testing.assert_allclose(soft.numpy(), [(100 / 180) ** 0.5, (100 / 20) ** 0.5, 0, 0])


def test_crops_match_the_models_convention():
    from braver.models import create_model, crop_inputs

    model = create_model("local_cascade", dropout=0.0)
    geometry = PatchGeometry(model.input_sizes, 3)
    tiles = torch.randn(2, 4, geometry.side, geometry.side)
    for ours, theirs in zip(geometry.crop_inputs(tiles), crop_inputs(model, tiles), strict=True):
        torch.testing.assert_close(ours, theirs)


@pytest.fixture
def paired_cache(tmp_path):
    """Labels are a function of channel 0 (label = value % 4), so any misaligned pair shows."""
    rng = np.random.default_rng(3)
    shape = (2, 20, 23)
    image = rng.integers(1, 200, size=(4, *shape)).astype(np.float32)
    image[:, :, :3] = 0  # a zero border: the foreground test of the intensity jitter
    label = (image[0] % 4).astype(np.uint8)
    write_case(tmp_path, "p0", image, label, {"case_id": "p0"})
    write_summary(
        tmp_path, {"label_scheme": BRATS_2023.to_json(), "channels": list("abcd"), "cases": ["p0"]}
    )
    return Cache.open(tmp_path)


def _centres(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    rows = [np.zeros(n, int)] + [rng.integers(0, s, n) for s in shape]
    return torch.from_numpy(np.stack(rows, axis=1))


def test_flips_keep_inputs_and_labels_paired(paired_cache):
    geometry = PatchGeometry((5, 9), 4)
    assert symmetric(geometry)
    centres = _centres(64, (2, 20, 23))
    plain = GatherPatches(MappedVolumes(paired_cache, ["p0"]), geometry)
    flipped = GatherPatches(
        MappedVolumes(paired_cache, ["p0"]), geometry, Augment(flip=True), seed=1
    )
    local0, wide0, label0 = plain(centres)
    local, wide, label = flipped(centres)
    k = geometry.tile
    # local input pixel (2 + r, 2 + c) is the centre of the window that labels (r, c)
    centre = local[:, 0, 2 : 2 + k, 2 : 2 + k]
    assert torch.equal(label, (centre % 4).long())
    # the wide input is the same tile: its middle equals the local input
    assert torch.equal(wide[:, :, 2:-2, 2:-2], local)
    changed = (label != label0).flatten(1).any(dim=1) | (local != local0).flatten(1).any(dim=1)
    assert 0.6 < changed.float().mean() < 1.0  # 7 of 8 symmetries move a tile
    # every tile is one of the 8 symmetries of its unaugmented self
    for i in range(len(centres)):
        options = []
        for t in (False, True):
            base = local0[i].transpose(-1, -2) if t else local0[i]
            for dims in ((), (-1,), (-2,), (-1, -2)):
                options.append(base.flip(dims) if dims else base)
        assert any(torch.equal(local[i], o) for o in options)


def test_flips_are_skipped_for_even_input_sizes(paired_cache):
    geometry = PatchGeometry((5, 8), 2)
    assert not symmetric(geometry)
    centres = _centres(16, (2, 20, 23))
    plain = GatherPatches(MappedVolumes(paired_cache, ["p0"]), geometry)
    flipped = GatherPatches(
        MappedVolumes(paired_cache, ["p0"]), geometry, Augment(flip=True), seed=1
    )
    for a, b in zip(plain(centres), flipped(centres), strict=True):
        assert torch.equal(a, b)


def test_intensity_jitter_scales_and_shifts_inside_the_foreground(paired_cache):
    geometry = PatchGeometry((5,), 1)
    centres = _centres(200, (2, 20, 23), seed=2)
    plain = GatherPatches(MappedVolumes(paired_cache, ["p0"]), geometry)
    jitter = GatherPatches(
        MappedVolumes(paired_cache, ["p0"]), geometry, Augment(intensity=0.2), seed=4
    )
    (x0, y0), (x1, y1) = plain(centres), jitter(centres)
    assert torch.equal(y0, y1)  # labels untouched
    inside = (x0 != 0).any(dim=1, keepdim=True).expand_as(x0)
    assert torch.equal(x1[~inside], x0[~inside])  # zeros outside the foreground stay 0
    # per tile and channel, x1 = s * x0 + b with s in [0.8, 1.2] and b in [-0.2, 0.2]
    for i in range(len(centres)):
        for c in range(4):
            m = inside[i, c]
            if m.sum() < 2 or x0[i, c][m].std() == 0:
                continue
            a, b = x0[i, c][m].double(), x1[i, c][m].double()
            s = ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum()
            shift = (b - s * a).mean()
            assert 0.8 - 1e-4 <= s <= 1.2 + 1e-4 and -0.2 - 1e-3 <= shift <= 0.2 + 1e-3
            torch.testing.assert_close(b, s * a + shift, rtol=1e-5, atol=1e-3)


def test_augmentation_only_touches_the_training_loader(paired_cache):
    kw = dict(tile=2, bs=8, train_patches=8, valid_patches=8, seed=0)
    dls = patch_dataloaders(paired_cache, ["p0"], ["p0"], (5,), **kw)
    aug = patch_dataloaders(paired_cache, ["p0"], ["p0"], (5,), augment=Augment(True, 0.1), **kw)
    assert aug.train.gather.augment is not None and aug.valid.gather.augment is None
    for a, b in zip(next(iter(dls.valid)), next(iter(aug.valid)), strict=True):
        assert torch.equal(a, b)

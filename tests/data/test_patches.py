"""Patch gathering: vectorised windows, both volume stores, augmentation."""

import numpy as np
import pytest
import torch

from braver.data.blocks import GatherPatches
from braver.data.patches import (
    Augment,
    DeviceVolumes,
    MappedVolumes,
    PatchGeometry,
    balanced_weights,
    gather_windows,
    symmetric,
)


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


def _centres(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    rows = [np.zeros(n, int)] + [rng.integers(0, s, n) for s in shape]
    return torch.from_numpy(np.stack(rows, axis=1))


def _plain(gather):
    """The batch transform as plain tensors (fastai's typed tensors refuse mixed comparisons)."""
    return lambda centres: tuple(t.as_subclass(torch.Tensor) for t in gather(centres))


def test_flips_keep_inputs_and_labels_paired(paired_cache):
    geometry = PatchGeometry((5, 9), 4)
    assert symmetric(geometry)
    centres = _centres(64, (2, 20, 23))
    plain = GatherPatches(MappedVolumes(paired_cache, ["p0"]), geometry)
    flipped = GatherPatches(
        MappedVolumes(paired_cache, ["p0"]), geometry, Augment(flip=True), seed=1
    )
    local0, wide0, label0 = _plain(plain)(centres)
    local, wide, label = _plain(flipped)(centres)
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
    for a, b in zip(_plain(plain)(centres), _plain(flipped)(centres), strict=True):
        assert torch.equal(a, b)


def test_intensity_jitter_scales_and_shifts_inside_the_foreground(paired_cache):
    geometry = PatchGeometry((5,), 1)
    centres = _centres(200, (2, 20, 23), seed=2)
    plain = GatherPatches(MappedVolumes(paired_cache, ["p0"]), geometry)
    jitter = GatherPatches(
        MappedVolumes(paired_cache, ["p0"]), geometry, Augment(intensity=0.2), seed=4
    )
    (x0, y0), (x1, y1) = _plain(plain)(centres), _plain(jitter)(centres)
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

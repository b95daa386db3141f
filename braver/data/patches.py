"""Patch gathering: every patch of a batch cut at once, from memory maps or GPU-resident volumes.

The fast path that fastai's per-item pipeline cannot give (about 75 µs per item): the items
of an epoch are patch centres ``(case, z, y, x)`` drawn by ``braver.data.sampling``, and
``MappedVolumes`` / ``DeviceVolumes`` cut every patch of a batch in one vectorised call. The
fastai side (blocks, ``DataBlock``, ``PatchDL``) lives in ``braver.data.blocks``.

Geometry. A model takes input ``i`` of side ``input_sizes[i] + k - 1`` and labels ``k x k``
pixels (``k = 1`` is the paper's patch mode). One tile of side ``T = max(input_sizes) + k - 1``
is gathered per centre; its ``k x k`` label block starts ``max(input_sizes) // 2`` pixels in,
and the centre pixel ``(y, x)`` is the block's element ``(k // 2, k // 2)``. Input ``i`` is the
crop starting ``M // 2 - s // 2`` in (``braver.models.crop_inputs``: a patch of side ``s``
covers ``[c - s // 2, c - s // 2 + s)`` around its centre ``c``). Everything outside the cached
volume reads as 0 (the cache is zero outside the foreground), so centres near borders are
padded, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

from braver.data.cache import Cache


@dataclass(frozen=True)
class PatchGeometry:
    """Sides of the gathered tile, of each input and of the label block."""

    input_sizes: tuple[int, ...]
    tile: int = 1  # k

    @property
    def side(self) -> int:
        return max(self.input_sizes) + self.tile - 1

    @property
    def label_offset(self) -> int:
        """Offset of the label block inside the tile (rows and columns)."""
        return max(self.input_sizes) // 2

    @property
    def corner_shift(self) -> int:
        """Tile top-left = centre - corner_shift."""
        return self.label_offset + self.tile // 2

    def crop_inputs(self, tiles: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Centre crops of side ``s + k - 1`` for every input size ``s`` (local first)."""
        out = []
        for size in self.input_sizes:
            side = size + self.tile - 1
            start = self.label_offset - size // 2
            out.append(tiles[..., start : start + side, start : start + side])
        return tuple(out)


def gather_windows(
    volume: np.ndarray,
    z: np.ndarray,
    y0: np.ndarray,
    x0: np.ndarray,
    side: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Windows ``volume[:, z, y0:y0+side, x0:x0+side]`` for every row at once, zero outside.

    ``volume`` (C, Z, Y, X) (a memory map is fine); returns (n, C, side, side), written into
    ``out`` when given (any dtype: the values are cast on the way). Windows fully inside are
    copied through a strided view; the others from a zero-padded copy of just the slices they
    touch. No Python loop over windows.
    """
    volume = np.asarray(volume)
    channels, _, height, width = volume.shape
    if out is None:
        out = np.empty((len(z), channels, side, side), dtype=volume.dtype)
    inside = (y0 >= 0) & (x0 >= 0) & (y0 + side <= height) & (x0 + side <= width)
    all_inside = bool(inside.all())
    if inside.any():
        # (Z, Y', X', C, side, side): one fancy index copies a (C, side, side) block per row
        windows = sliding_window_view(volume, (side, side), axis=(2, 3)).transpose(1, 2, 3, 0, 4, 5)
        if all_inside:
            out[...] = windows[z, y0, x0]
            return out
        out[inside] = windows[z[inside], y0[inside], x0[inside]]
    # windows that cross the border: zero-pad just the slices they touch, just enough
    border = ~inside
    zb, yb, xb = z[border], y0[border], x0[border]
    slices, slice_of_row = np.unique(zb, return_inverse=True)
    low = max(0, int(-yb.min()), int(-xb.min()))
    high = max(0, int((yb + side - height).max()), int((xb + side - width).max()))
    canvas = np.zeros(
        (channels, len(slices), height + low + high, width + low + high), dtype=volume.dtype
    )
    canvas[:, :, low : low + height, low : low + width] = volume[:, slices]
    windows = sliding_window_view(canvas, (side, side), axis=(2, 3)).transpose(1, 2, 3, 0, 4, 5)
    out[border] = windows[slice_of_row, yb + low, xb + low]
    return out


class MappedVolumes:
    """Cases read through memory maps: memory stays flat however many cases there are."""

    def __init__(self, cache: Cache, case_ids: Sequence[str]):
        cases = [cache.case(c) for c in case_ids]
        self.images = [c.image for c in cases]
        self.labels = [c.label for c in cases]
        self.channels = self.images[0].shape[0]

    def gather(self, centres: torch.Tensor, geometry: PatchGeometry):
        """(B, 4) centres → tiles (B, C, T, T) float32, labels (B, k, k) int64 (CPU tensors).

        Rows are grouped by case (one vectorised gather per case present), so the batch
        comes back ordered by case; centres and labels stay paired.
        """
        rows = centres.cpu().numpy()
        rows = rows[np.argsort(rows[:, 0], kind="stable")]
        side, k = geometry.side, geometry.tile
        tiles = np.empty((len(rows), self.channels, side, side), dtype=self.images[0].dtype)
        labels = np.empty((len(rows), 1, k, k), dtype=np.uint8)
        cases, starts = np.unique(rows[:, 0], return_index=True)
        ends = np.append(starts[1:], len(rows))
        for i, a, b in zip(cases, starts, ends, strict=True):
            z, y, x = rows[a:b, 1], rows[a:b, 2], rows[a:b, 3]
            shift = geometry.corner_shift
            gather_windows(self.images[i], z, y - shift, x - shift, side, out=tiles[a:b])
            label = self.labels[i][None]
            gather_windows(label, z, y - k // 2, x - k // 2, k, out=labels[a:b])
        return torch.from_numpy(tiles).float(), torch.from_numpy(labels[:, 0]).long()


class DeviceVolumes:
    """Every case zero-padded and flattened into one tensor on ``device`` (the GPU path).

    Gathering is one ``torch.take`` with broadcast flat indices for the whole batch.
    """

    def __init__(self, cache: Cache, case_ids: Sequence[str], pad: int, device="cpu"):
        cases = [cache.case(c) for c in case_ids]
        self.pad = pad
        self.device = torch.device(device)
        images, labels, shapes, starts = [], [], [], []
        offset = 0
        for case in cases:
            image = torch.from_numpy(np.array(case.image))
            image = torch.nn.functional.pad(image, (pad, pad, pad, pad))
            label = torch.from_numpy(np.array(case.label))
            label = torch.nn.functional.pad(label[None], (pad, pad, pad, pad))[0]
            shapes.append(image.shape)
            starts.append(offset)
            offset += image.numel()
            images.append(image.reshape(-1).to(self.device))
            labels.append(label.reshape(-1).to(self.device))
        self.image = torch.cat(images)
        # the label of a voxel sits at the same flat position within its channel-0 block
        self.label_blocks = labels
        label_starts = np.cumsum([0] + [lab.numel() for lab in labels[:-1]])
        self.label = torch.cat(labels)
        shapes = np.asarray(shapes, dtype=np.int64)  # (cases, 4): C, Z, Yp, Xp
        self.channels = int(shapes[0, 0])
        self.strides = torch.as_tensor(
            np.stack(
                [
                    shapes[:, 1] * shapes[:, 2] * shapes[:, 3],  # channel
                    shapes[:, 2] * shapes[:, 3],  # slice
                    shapes[:, 3],  # row
                ],
                axis=1,
            ),
            device=self.device,
        )
        self.starts = torch.as_tensor(np.asarray(starts), device=self.device)
        self.label_starts = torch.as_tensor(label_starts, device=self.device)

    def gather(self, centres: torch.Tensor, geometry: PatchGeometry):
        centres = centres.to(self.device)
        side, k = geometry.side, geometry.tile
        case, z, y, x = centres.unbind(1)
        stride_c, stride_z, stride_y = self.strides[case].unbind(1)
        steps = torch.arange(side, device=self.device)
        top = y + self.pad - geometry.corner_shift
        left = x + self.pad - geometry.corner_shift
        base = self.starts[case] + z * stride_z + top * stride_y + left  # (B,)
        channels = torch.arange(self.channels, device=self.device)
        index = (
            base[:, None, None, None]
            + channels[None, :, None, None] * stride_c[:, None, None, None]
            + steps[None, None, :, None] * stride_y[:, None, None, None]
            + steps[None, None, None, :]
        )
        tiles = torch.take(self.image, index).float()
        lsteps = torch.arange(k, device=self.device)
        lbase = (
            self.label_starts[case]
            + z * stride_z
            + (y + self.pad - k // 2) * stride_y
            + (x + self.pad - k // 2)
        )
        lindex = (
            lbase[:, None, None]
            + lsteps[None, :, None] * stride_y[:, None, None]
            + lsteps[None, None, :]
        )
        labels = torch.take(self.label, lindex).long()
        return tiles, labels


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation of whole tiles, applied to the batch at once.

    ``flip``: each tile (and its label block) is mirrored left-right and up-down and
    transposed at random (the 8 symmetries of the square), only when every input size is
    odd (the label block then sits symmetrically in the tile, so the pairs stay aligned).
    ``intensity``: each channel of each tile is scaled by U(1 − a, 1 + a) and shifted by
    U(−a, a) (z-scored units) inside the foreground; 0 = off.
    """

    flip: bool = False
    intensity: float = 0.0

    @property
    def active(self) -> bool:
        return self.flip or self.intensity > 0

    def __call__(
        self,
        tiles: torch.Tensor,
        labels: torch.Tensor,
        geometry: PatchGeometry,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(tiles)
        if self.flip and symmetric(geometry):
            for dims in ((-1,), (-2,)):
                pick = torch.rand(n, generator=generator) < 0.5
                tiles = _where_rows(pick, tiles.flip(dims), tiles)
                labels = _where_rows(pick, labels.flip(dims), labels)
            pick = torch.rand(n, generator=generator) < 0.5
            tiles = _where_rows(pick, tiles.transpose(-1, -2), tiles)
            labels = _where_rows(pick, labels.transpose(-1, -2), labels)
        if self.intensity > 0:
            a = self.intensity
            channels = tiles.shape[1]
            scale = 1 + a * (2 * torch.rand(n, channels, 1, 1, generator=generator) - 1)
            shift = a * (2 * torch.rand(n, channels, 1, 1, generator=generator) - 1)
            inside = (tiles != 0).any(dim=1, keepdim=True)
            tiles = torch.where(inside, tiles * scale.to(tiles) + shift.to(tiles), tiles)
        return tiles.contiguous(), labels.contiguous()


def symmetric(geometry: PatchGeometry) -> bool:
    """Whether mirroring a tile keeps every input crop and the label block in place."""
    return all(size % 2 == 1 for size in geometry.input_sizes)


def _where_rows(pick: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    pick = pick.to(a.device).reshape(-1, *([1] * (a.dim() - 1)))
    return torch.where(pick, a, b)


def balanced_weights(counts: np.ndarray, power: float = 1.0) -> torch.Tensor:
    """Per-class loss weights ``(N / (P · n_c)) ** power`` for the P classes present.

    ``power = 1``: every present class weighs the same in total (balanced); smaller powers
    soften the correction (0: plain cross-entropy).
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = (counts[present].sum() / (present.sum() * counts[present])) ** power
    return torch.as_tensor(weights, dtype=torch.float32)


def make_volumes(
    cache: Cache, case_ids: Sequence[str], geometry: PatchGeometry, device, on_device: bool
):
    """GPU-resident volumes on CUDA when asked, memory maps otherwise."""
    device = torch.device(device)
    if on_device and device.type == "cuda":
        return DeviceVolumes(cache, case_ids, pad=geometry.side, device=device)
    return MappedVolumes(cache, case_ids)

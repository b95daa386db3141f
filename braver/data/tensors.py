"""Typed patch tensors that show themselves, and the grid ``show_batch``/``show_results`` draw."""

from __future__ import annotations

import numpy as np
from fastai.torch_core import TensorImage, TensorMask

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


def patch_grid(inputs, masks, titles, mask_titles, n: int, channel: int = -1):
    """A figure of ``n`` rows: every input scale with the first mask over it, then each mask
    over the local scale (``masks`` are label blocks or label windows)."""
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
    return figure

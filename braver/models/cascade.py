"""The cascaded architectures (Havaei et al. 2017, §3.1.2, Fig. 3).

A first TwoPathCNN runs on a larger patch; its class map (softmax probabilities, one channel
per class, as in the paper) enters a second TwoPathCNN that sees the 33×33 patch:

============  ==================  ============  =================================================
model         first CNN's input   class map     enters the second CNN …
============  ==================  ============  =================================================
InputCascade  65×65               33×33         concatenated to its 33×33 input (both paths)
LocalCascade  56×56               24×24         after the local path's first hidden layer
MFCascade     53×53               21×21         before the output layer ("mean-field")
============  ==================  ============  =================================================

``forward(local, wide)`` takes the 33-side input first (``input_sizes[0]``) and the first
network's input second, both centred on the same pixels; a single tensor of side
``max(input_sizes) + k − 1`` is cropped for you (:func:`braver.models.crop_inputs`).
The first network is a plain :class:`TwoPathCNN` (``model.first``, input 33×33) that the paper
trains on its own before training the second with the first frozen.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from braver.models._registry import register_model
from braver.models.layers import PAPER_INIT_RANGE
from braver.models.twopath import (
    COMMON_DEFAULTS,
    DEFAULT_DROPOUT,
    PATCH_SIZE,
    BraverModel,
    TwoPathCNN,
    check_options,
)


def crop_offsets(input_sizes: Sequence[int]) -> tuple[int, ...]:
    """Offset of each input inside the largest one.

    A patch of side ``s`` centred on pixel ``c`` covers ``[c − s//2, c − s//2 + s)``; so inside
    the largest patch (side ``m``) the one of side ``s`` starts at ``m//2 − s//2``.
    """
    largest = max(input_sizes)
    return tuple(largest // 2 - s // 2 for s in input_sizes)


class CascadeCNN(BraverModel):
    """Two TwoPathCNNs; the first one's softmax class map feeds the second at ``class_map_at``."""

    class_map_at: str = ""
    #: (second CNN's input, first CNN's input)
    input_sizes: tuple[int, int] = (PATCH_SIZE, PATCH_SIZE)

    def __init__(
        self,
        in_channels: int = COMMON_DEFAULTS["in_channels"],
        num_classes: int = COMMON_DEFAULTS["num_classes"],
        maxout_k: int = COMMON_DEFAULTS["maxout_k"],
        dropout: float = DEFAULT_DROPOUT,
        class_frequencies: Sequence[float] | None = None,
        bias: bool = True,
        init_range: float = PAPER_INIT_RANGE,
        init: str = "paper",
    ):
        super().__init__()
        options = check_options(
            in_channels=in_channels,
            num_classes=num_classes,
            maxout_k=maxout_k,
            dropout=dropout,
            class_frequencies=class_frequencies,
            bias=bias,
            init_range=init_range,
            init=init,
        )
        self._store_options(options)
        self.first = TwoPathCNN(**options)
        self.second = TwoPathCNN(**options, class_map_at=self.class_map_at)
        # how much larger the first network's input is than the second's
        self._map_shrink = self.input_sizes[1] - self.input_sizes[0]

    @property
    def first_frozen(self) -> bool:
        """Whether every parameter of the first network is frozen (``requires_grad`` off)."""
        return not any(p.requires_grad for p in self.first.parameters())

    def train(self, mode: bool = True) -> CascadeCNN:
        """Train mode for the cascade, but a frozen first network always runs in eval mode.

        The paper fixes the first TwoPathCNN before training the second: a fixed network must
        give the second one the same class map for the same patch, so its dropout stays off.
        """
        super().train(mode)
        if mode and self.first_frozen:
            self.first.eval()
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """``(local, wide)`` → logits (B, num_classes, k, k); see the module docstring."""
        if len(inputs) == 1:
            inputs = crop_inputs_for(self.input_sizes, inputs[0])
        if len(inputs) != 2:
            raise ValueError(
                f"{type(self).__name__} takes 2 inputs (sides {self.input_sizes} + k − 1), "
                f"got {len(inputs)}"
            )
        local, wide = inputs
        lh, lw = local.shape[-2:]
        wh, ww = wide.shape[-2:]
        if wh - lh != self._map_shrink or ww - lw != self._map_shrink:
            raise ValueError(
                f"{type(self).__name__}: inputs of sides {(lh, lw)} and {(wh, ww)} are not "
                f"{self.input_sizes} + the same k − 1"
            )
        class_map = torch.softmax(self.first(wide), dim=1)
        return self.second(local, class_map=class_map)

    def receptive_fields(self) -> dict[str, int]:
        """Receptive field (image pixels) of one unit of each layer, by dotted name."""
        first = self.first.receptive_fields()
        second = self.second.receptive_fields(class_map_field=first["output"])
        return {
            **{f"first.{k}": v for k, v in first.items()},
            **{f"second.{k}": v for k, v in second.items()},
        }


class InputCascadeCNN(CascadeCNN):
    """First CNN on 65×65 → 33×33 class map, concatenated to the second CNN's 33×33 input."""

    model_name = "input_cascade"
    class_map_at = "input"
    input_sizes = (PATCH_SIZE, 65)


class LocalCascadeCNN(CascadeCNN):
    """First CNN on 56×56 → 24×24 map, joined after the second CNN's first local hidden layer.

    56 is even: its centre is taken as pixel 28 (``crop_offsets``), so the first CNN's map sits
    half a pixel from the local path's 4×4-pooled grid, an offset inherent to the paper's sizes.
    """

    model_name = "local_cascade"
    class_map_at = "local"
    input_sizes = (PATCH_SIZE, 56)


class MFCascadeCNN(CascadeCNN):
    """First CNN on 53×53 → 21×21 map, joined before the second CNN's output layer."""

    model_name = "mf_cascade"
    class_map_at = "output"
    input_sizes = (PATCH_SIZE, 53)


def crop_inputs_for(input_sizes: Sequence[int], big: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Centre crops of ``big`` (side ``max(input_sizes) + k − 1``) for each input size."""
    largest = max(input_sizes)
    h, w = big.shape[-2:]
    if h < largest or w < largest:
        raise ValueError(f"input of side {(h, w)} is smaller than the model's {largest}")
    crops = []
    for size, offset in zip(input_sizes, crop_offsets(input_sizes), strict=True):
        ch, cw = h - (largest - size), w - (largest - size)
        crops.append(big[..., offset : offset + ch, offset : offset + cw])
    return tuple(crops)


def _cascade_factory(cls: type[CascadeCNN], name: str, alias: str, doc: str):
    def factory(
        in_channels: int = 4,
        num_classes: int = 4,
        maxout_k: int = 2,
        dropout: float = DEFAULT_DROPOUT,
        class_frequencies: Sequence[float] | None = None,
        bias: bool = True,
        init_range: float = PAPER_INIT_RANGE,
        init: str = "paper",
    ) -> CascadeCNN:
        return cls(
            in_channels, num_classes, maxout_k, dropout, class_frequencies, bias, init_range, init
        )

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = doc
    return register_model(factory, aliases=(alias,))


input_cascade = _cascade_factory(
    InputCascadeCNN,
    "input_cascade",
    "InputCascadeCNN",
    "InputCascadeCNN: a 65×65 TwoPathCNN's class map joins the 33×33 input of a second one.",
)
local_cascade = _cascade_factory(
    LocalCascadeCNN,
    "local_cascade",
    "LocalCascadeCNN",
    "LocalCascadeCNN: a 56×56 TwoPathCNN's class map joins the second's first local hidden layer.",
)
mf_cascade = _cascade_factory(
    MFCascadeCNN,
    "mf_cascade",
    "MFCascadeCNN",
    "MFCascadeCNN: a 53×53 TwoPathCNN's class map joins the second's output layer.",
)

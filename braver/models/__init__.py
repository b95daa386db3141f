"""The networks of Havaei et al. (2017): TwoPathCNN and the three cascades, via a registry.

>>> model = create_model("input_cascade", in_channels=4, num_classes=5)
>>> model.input_sizes                      # (33, 65): local input first
>>> logits = model(*crop_inputs(model, tile))   # tile side 65 + k − 1 → (B, 5, k, k)

Every model is fully convolutional (valid convolutions, stride 1): input ``i`` of side
``input_sizes[i] + k − 1`` gives a k×k map of logits; k = 1 is the paper's patch mode.
"""

from __future__ import annotations

import torch
from torch import nn

from braver.models._registry import create_model, list_models, model_entry, register_model
from braver.models.cascade import (
    CascadeCNN,
    InputCascadeCNN,
    LocalCascadeCNN,
    MFCascadeCNN,
    crop_inputs_for,
    crop_offsets,
)
from braver.models.layers import CentreCrop, Maxout
from braver.models.naming import (
    expand_name,
    group_names,
    param_group_names,
    param_groups,
    parameter_count,
    resolve_group,
    resolve_layer,
    trainable_parameters,
    weight_layers,
)
from braver.models.twopath import BraverModel, TwoPathCNN


def crop_inputs(model: nn.Module, big: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The inputs to pass to ``model(*inputs)``, cut from one tensor centred on the same pixels.

    ``big`` is (…, max(input_sizes) + kh − 1, max(input_sizes) + kw − 1); input ``i`` is its
    centre crop of side ``input_sizes[i] + k − 1``. A patch of side ``s`` centred on pixel
    ``c`` covers ``[c − s//2, c − s//2 + s)`` (for the even 56 of LocalCascade: 28 before the
    centre pixel, 27 after). Crops are views (no copy).
    """
    return crop_inputs_for(model.input_sizes, big)


def input_padding(model: nn.Module) -> tuple[int, int]:
    """Zero padding (before, after) along each spatial axis so that every pixel of an image
    gets a prediction: a padded image of side n + before + after gives an n-side output."""
    largest = max(model.input_sizes)
    return largest // 2, largest - 1 - largest // 2


__all__ = [
    "BraverModel",
    "CascadeCNN",
    "CentreCrop",
    "InputCascadeCNN",
    "LocalCascadeCNN",
    "MFCascadeCNN",
    "Maxout",
    "TwoPathCNN",
    "create_model",
    "crop_inputs",
    "crop_offsets",
    "expand_name",
    "group_names",
    "input_padding",
    "list_models",
    "model_entry",
    "param_group_names",
    "param_groups",
    "parameter_count",
    "register_model",
    "resolve_group",
    "resolve_layer",
    "trainable_parameters",
    "weight_layers",
]

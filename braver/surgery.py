"""Test-time surgery on a trained network: identity replacement, switch and copy of layers.

Every function returns a modified deep copy and never changes the model it is given. Layers
are named as in :mod:`braver.models.naming` (full dotted name or unique suffix). The copy
keeps a list of what was done in ``variant.surgery`` (``[{"op": "identity", "layer": …}, …]``);
its ``config`` still describes the intact architecture, so rebuild variants by replaying the
operations on the intact model, not with ``create_model(**config)``.

Identity replacement removes a *unit*: the convolution with its maxout (the pooling layers
around it stay). A valid k×k convolution shrinks the map by k − 1, so the identity is a centre
crop by the same amount, and every layer after it sees the size it expects. It must also keep
the number of maps, so only a layer whose input and output channel counts match can go: with
the paper's sizes that is ``local.conv2`` (64 → 64 maps) of each TwoPathCNN — not in the second
network of a LocalCascade, which also takes the first one's class map there (64 + K → 64).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from braver.errors import BraverError
from braver.models.layers import CentreCrop, Maxout
from braver.models.naming import expand_name, parameter_count, resolve_layer, weight_layers

__all__ = [
    "copy_layer",
    "expand_name",
    "identity_candidates",
    "layer_shape",
    "parameters_removed",
    "replace_with_identity",
    "same_shape_layers",
    "switch_layers",
]


def _maps(layer: nn.Conv2d) -> tuple[int, int]:
    """(input channels, output maps) of a weight layer (maps after the maxout)."""
    out = layer.out_features if isinstance(layer, Maxout) else layer.out_channels
    return layer.in_channels, out


def identity_candidates(model: nn.Module) -> list[str]:
    """Layers that :func:`replace_with_identity` accepts (as many maps out as in)."""
    return [
        name for name, layer in weight_layers(model).items() if _maps(layer)[0] == _maps(layer)[1]
    ]


def _record(variant: nn.Module, operation: dict[str, Any]) -> None:
    variant.surgery = [*getattr(variant, "surgery", []), operation]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[attr] = module  # "global" is a keyword: no setattr


def replace_with_identity(model: nn.Module, name: str) -> nn.Module:
    """A copy of ``model`` with the layer ``name`` (conv + maxout) replaced by a centre crop.

    Refuses (``BraverError``) where the layer changes the number of maps, naming the layers
    that could be replaced instead.
    """
    full = resolve_layer(model, name)
    layer = weight_layers(model)[full]
    maps_in, maps_out = _maps(layer)
    if maps_in != maps_out:
        candidates = identity_candidates(model)
        instead = (
            f"layers that can be: {', '.join(candidates)}"
            if candidates
            else "no layer of this model keeps its number of maps"
        )
        raise BraverError(
            f"cannot replace {full} by an identity: it turns {maps_in} input channels into "
            f"{maps_out} maps, and an identity keeps the number of channels",
            hint=instead,
        )
    variant = copy.deepcopy(model)
    shrink = layer.kernel_size[0] - 1
    _set_submodule(variant, full, CentreCrop(shrink, replaces=full))
    _record(variant, {"op": "identity", "layer": full})
    return variant


def layer_shape(layer: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shape of each parameter of a layer, plus its maxout pieces, for compatibility checks."""
    shape: dict[str, tuple[int, ...]] = {n: tuple(p.shape) for n, p in layer.named_parameters()}
    shape["pieces"] = (getattr(layer, "pieces", 1),)
    return shape


def _describe(layer: nn.Module) -> str:
    w = "×".join(map(str, layer.weight.shape))
    extra = f", maxout K={layer.pieces}" if isinstance(layer, Maxout) else ""
    bias = "" if layer.bias is not None else ", no bias"
    return f"weights {w}{extra}{bias}"


def same_shape_layers(model: nn.Module, name: str) -> list[str]:
    """Other layers whose parameters have exactly the shapes of layer ``name``."""
    full = resolve_layer(model, name)
    layers = weight_layers(model)
    reference = layer_shape(layers[full])
    return [n for n, layer in layers.items() if n != full and layer_shape(layer) == reference]


def _pair(model: nn.Module, a: str, b: str, verb: str) -> tuple[str, str]:
    first, second = resolve_layer(model, a), resolve_layer(model, b)
    if first == second:
        raise BraverError(f"cannot {verb} {first} with itself", hint="name two different layers")
    layers = weight_layers(model)
    if layer_shape(layers[first]) != layer_shape(layers[second]):
        matches = same_shape_layers(model, first)
        hint = (
            f"layers of the same shape as {first}: {', '.join(matches)}"
            if matches
            else f"no other layer of this model has the shape of {first}"
        )
        raise BraverError(
            f"cannot {verb} {first} ({_describe(layers[first])}) with {second} "
            f"({_describe(layers[second])}): the shapes differ",
            hint=hint,
        )
    return first, second


def switch_layers(model: nn.Module, a: str, b: str) -> nn.Module:
    """A copy of ``model`` with the weights (and biases) of layers ``a`` and ``b`` exchanged.

    The layers must have parameters of the same shapes (e.g. ``first.local.conv2`` and
    ``second.local.conv2`` of an InputCascade); otherwise a ``BraverError`` lists the layers
    that do match.
    """
    first, second = _pair(model, a, b, "switch")
    variant = copy.deepcopy(model)
    layers = weight_layers(variant)
    with torch.no_grad():
        for (_, p), (_, q) in zip(
            layers[first].named_parameters(), layers[second].named_parameters(), strict=True
        ):
            held = p.detach().clone()
            p.copy_(q)
            q.copy_(held)
    _record(variant, {"op": "switch", "layers": [first, second]})
    return variant


def copy_layer(model: nn.Module, source: str, target: str) -> nn.Module:
    """A copy of ``model`` whose layer ``target`` has the weights of layer ``source``."""
    first, second = _pair(model, source, target, "copy")
    variant = copy.deepcopy(model)
    layers = weight_layers(variant)
    with torch.no_grad():
        for (_, p), (_, q) in zip(
            layers[first].named_parameters(), layers[second].named_parameters(), strict=True
        ):
            q.copy_(p)
    _record(variant, {"op": "copy", "source": first, "target": second})
    return variant


def parameters_removed(original: nn.Module, variant: nn.Module) -> int:
    """How many parameters the variant has fewer than the original (0 for switch and copy)."""
    return parameter_count(original) - parameter_count(variant)


def is_intact(model: nn.Module) -> bool:
    """True when no layer of ``model`` was replaced by an identity."""
    return not any(isinstance(m, CentreCrop) for m in model.modules())

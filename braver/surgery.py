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

Keeping one path. The two paths of a TwoPathCNN meet in a concatenation that feeds the output
layer (64 local maps + 160 global maps). ``keep_only(model, "local")`` removes the global path
and the output layer's weights on its 160 maps; the local path's maps, the output layer's
weights on them and its biases stay. This is exactly the ablation "global features set to zero
before the output layer" (zero maps add nothing through those weights), but the removed
parameters are gone and the removed path is not computed, so "parameters removed" and "seconds
per volume" are real. ``keep global`` does the same the other way round. In a cascade,
``local``/``global`` mean the path in both networks, ``first.local`` … the path in one network,
and ``first``/``second`` a whole network: ``keep second`` runs the second network alone with the
first one's class map removed (its weights on the class map dropped: the ablation "class map set
to zero"), and ``keep first`` returns the first network's own class scores for the same pixels.
In the seed study's words (an InputCascadeCNN), ``second`` is the "local scale" and ``first``
the "global scale" network. Caveat: in a LocalCascade the first network's class map enters the
second network's local path, so ``keep global`` also cuts the first network off (it still runs).

The module is a little over 400 lines because the four operations share their naming and
shape checks; the study that scores them is :mod:`braver.studies.surgery`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from braver.errors import BraverError
from braver.models.cascade import CascadeCNN, crop_offsets
from braver.models.layers import CentreCrop, Maxout, OutputConv, spatial_growth
from braver.models.naming import (
    expand_name,
    group_prefixes,
    parameter_count,
    resolve_layer,
    weight_layers,
)
from braver.models.twopath import TwoPathCNN

__all__ = [
    "NETWORKS",
    "PATHS",
    "OneNetwork",
    "RemovedPath",
    "copy_layer",
    "expand_name",
    "identity_candidates",
    "is_intact",
    "keep_choices",
    "keep_only",
    "layer_shape",
    "layer_table",
    "parameters_removed",
    "replace_with_identity",
    "same_shape_layers",
    "same_shape_pairs",
    "switch_layers",
]

PATHS = ("local", "global")
NETWORKS = ("first", "second")


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


# ---------------------------------------------------------------------------------------------
# keep one path / one network (see the module docstring)


class RemovedPath(nn.Module):
    """Stands in for a removed path: no maps at all, of the size the path's maps would have.

    Its (B, 0, h, w) output joins the concatenation before the output layer without adding a
    channel, so the output layer (re-built on the kept channels) sees only the kept path.
    """

    def __init__(self, shrink: int, replaces: str = ""):
        super().__init__()
        self.shrink = shrink
        self.replaces = replaces

    def forward(self, x: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        return x.new_zeros((x.shape[0], 0, h - self.shrink, w - self.shrink))

    def extra_repr(self) -> str:
        return f"shrink={self.shrink}, replaces={self.replaces!r}"


def _path_shrink(path: nn.Module) -> int:
    """How many pixels a path's valid layers take off the side of its input."""
    if isinstance(path, RemovedPath):
        return path.shrink
    total = 0
    for module in path.modules():
        total += module.shrink if isinstance(module, CentreCrop) else spatial_growth(module)
    return total


def _sliced_conv(conv: nn.Conv2d, keep: Sequence[int]) -> nn.Conv2d:
    """A copy of ``conv`` that takes only the input channels ``keep`` (weights carried over)."""
    index = torch.as_tensor(list(keep), dtype=torch.long)
    kernel = conv.kernel_size[0]
    bias = conv.bias is not None
    if isinstance(conv, Maxout):
        new = Maxout(len(keep), conv.out_features, kernel, pieces=conv.pieces, bias=bias)
    elif isinstance(conv, OutputConv):
        new = OutputConv(len(keep), conv.out_channels, kernel, bias=bias)
    else:
        new = nn.Conv2d(len(keep), conv.out_channels, kernel, bias=bias)
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, index.to(conv.weight.device)])
        if bias:
            new.bias.copy_(conv.bias)
    new.train(conv.training)
    return new


def _output_channels(network: TwoPathCNN) -> dict[str, range]:
    """Which input channels of the output layer come from which part of the concatenation."""
    total = network.output.in_channels
    extra = network.num_classes if network.class_map_at == "output" else 0
    global_path = network.global_path
    if isinstance(global_path, RemovedPath) or isinstance(network.local, RemovedPath):
        raise BraverError("a path of this network was already removed", hint="keep one path once")
    global_maps = global_path.conv1.out_features
    local_maps = total - global_maps - extra
    return {
        "local": range(0, local_maps),
        "global": range(local_maps, local_maps + global_maps),
        "class_map": range(local_maps + global_maps, total),
    }


def _remove_path(network: TwoPathCNN, path: str, full_name: str) -> None:
    """In place: replace ``path`` of ``network`` by a RemovedPath, slice its output layer."""
    channels = _output_channels(network)
    kept = [c for part, span in channels.items() if part != path for c in span]
    network.output = _sliced_conv(network.output, kept)
    shrink = _path_shrink(network._modules[path])
    network._modules[path] = RemovedPath(shrink, replaces=full_name)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def keep_only(model: nn.Module, part: str) -> nn.Module:
    """A copy of ``model`` that keeps only ``part`` (see the module docstring).

    ``part``: ``local`` / ``global`` (that path in every network), ``first.local`` … (that path
    in one network of a cascade, the other network intact), or ``first`` / ``second`` (one
    network of a cascade). Anything else is a ``BraverError`` listing what can be kept.
    """
    part = part.strip().strip(".")
    groups = group_prefixes(model)
    is_cascade = isinstance(model, CascadeCNN)
    keepable = [g for g in groups if g.split(".")[-1] in PATHS] + (
        list(NETWORKS) if is_cascade else []
    )
    if part not in keepable:
        what = "a path or a network" if is_cascade else "a path"
        raise BraverError(
            f"cannot keep {part!r}: keep takes {what} of this model",
            hint=f"use one of {', '.join(keepable)}",
        )
    if part in NETWORKS:
        variant = OneNetwork(model, part)
        other = "second" if part == "first" else "first"
        removed = [other] + ([f"{part}'s class map input"] if part == "second" else [])
    else:
        variant = copy.deepcopy(model)
        path = part.split(".")[-1]
        other = "global" if path == "local" else "local"
        removed = []
        for prefix in groups[part]:
            network_prefix = prefix.rpartition(".")[0]
            network = variant.get_submodule(network_prefix) if network_prefix else variant
            full = _join(network_prefix, other)
            _remove_path(network, other, full)
            removed.append(full)
    variant.surgery = [
        *getattr(model, "surgery", []),
        {"op": "keep", "keep": part, "removed": removed},
    ]
    return variant


class OneNetwork(nn.Module):
    """One network of a cascade on its own, with the cascade's inputs and output pixels.

    ``first``: the first network's class scores for the pixels the cascade labels (a centre
    crop of its larger output map). ``second``: the second network with its weights on the
    first one's class map dropped (the class map counts as zero).
    """

    def __init__(self, cascade: CascadeCNN, which: str):
        super().__init__()
        if which not in NETWORKS:
            raise ValueError(f"which must be one of {NETWORKS}")
        self.which = which
        self.input_sizes = tuple(cascade.input_sizes)
        self.in_channels = cascade.in_channels
        self.num_classes = cascade.num_classes
        self.options = dict(cascade.options)
        network = copy.deepcopy(getattr(cascade, which))
        if which == "second":
            _drop_class_map(network, cascade.in_channels)
        self.add_module(which, network)
        # the first network's output pixel j sits under the cascade's output pixel j − offset
        self.offset = crop_offsets(self.input_sizes)[0]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        local, wide = inputs
        if self.which == "second":
            return self._modules["second"](local)
        scores = self._modules["first"](wide)
        side = self.input_sizes[0] - 1
        h, w = local.shape[-2] - side, local.shape[-1] - side
        o = self.offset
        return scores[..., o : o + h, o : o + w]


def _drop_class_map(network: TwoPathCNN, in_channels: int) -> None:
    """In place: remove the class-map input of a cascade's second network (ablation to zero)."""
    at = network.class_map_at
    if at == "input":  # class map appended after the image channels of both paths
        keep = range(in_channels)
        network.local.conv1 = _sliced_conv(network.local.conv1, keep)
        network.global_path.conv1 = _sliced_conv(network.global_path.conv1, keep)
    elif at == "local":  # appended after the local path's first hidden maps
        conv2 = network.local.conv2
        keep = range(conv2.in_channels - network.num_classes)
        network.local.conv2 = _sliced_conv(conv2, keep)
    elif at == "output":
        channels = _output_channels(network)
        network.output = _sliced_conv(network.output, [*channels["local"], *channels["global"]])
    network.class_map_at = None


# ---------------------------------------------------------------------------------------------
# listing


def layer_table(model: nn.Module) -> list[dict]:
    """One row per weight layer: group, kind, weight shape, maps, parameters, what surgery can do."""
    from braver.models.summary import summary_rows

    layers = weight_layers(model)
    candidates = set(identity_candidates(model))
    rows = []
    for row in summary_rows(model):
        if row.layer not in layers:
            continue
        layer = layers[row.layer]
        identity = (
            "yes"
            if row.layer in candidates
            else f"no ({layer.in_channels} → {_maps(layer)[1]} maps)"
        )
        partners = same_shape_layers(model, row.layer)
        rows.append(
            {
                "layer": row.layer,
                "group": row.group,
                "kind": row.kind,
                "weights": "×".join(map(str, layer.weight.shape)),
                "maps": f"{layer.in_channels} → {_maps(layer)[1]}",
                "params": row.params,
                "identity": identity,
                "switch_or_copy_with": ", ".join(partners) if partners else "—",
            }
        )
    return rows


def keep_choices(model: nn.Module) -> list[str]:
    """What ``keep`` accepts on ``model``."""
    groups = [g for g in group_prefixes(model) if g.split(".")[-1] in PATHS]
    return groups + (list(NETWORKS) if isinstance(model, CascadeCNN) else [])


def same_shape_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Every pair of layers that ``switch_layers``/``copy_layer`` accept, each once, sorted."""
    layers = weight_layers(model)
    return sorted(
        {
            tuple(sorted((name, other)))
            for name in layers
            for other in same_shape_layers(model, name)
        }
    )

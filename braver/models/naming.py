"""Stable dotted names for layers and groups of layers, for freezing, summaries and surgery.

Weight layers (every model)::

    local.conv1  local.conv2  global.conv1  output          TwoPathCNN
    first.local.conv1 … first.output  second.local.conv1 … second.output   cascades

A layer may be named by any unique dotted suffix: ``conv2`` or ``local.conv2`` in a
TwoPathCNN; in a cascade ``conv2`` matches ``first.local.conv2`` and ``second.local.conv2``
(ambiguous, an error here; :func:`expand_name` returns both), so write ``second.local.conv2``.
Only whole components match: ``conv`` does not match ``conv2``.

Groups: ``local``, ``global``, ``output`` are the two paths and the output layer; in a cascade
they mean the path (or output layer) in *both* networks, ``first`` / ``second`` are a whole
network, and ``first.local``, ``second.output`` … one part of one network. In a cascade, "local
scale" and "global scale" of the seed paper are the networks ``second`` (33×33 input) and
``first`` (the larger input); ``local``/``global`` always mean the paths inside a network.
"""

from __future__ import annotations

from torch import nn

from braver.errors import BraverError
from braver.models.layers import CentreCrop
from braver.models.twopath import TwoPathCNN

PARTS = ("local", "global", "output")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def networks(model: nn.Module) -> list[tuple[str, TwoPathCNN]]:
    """The TwoPathCNNs inside ``model`` with their prefixes (``""`` for a bare TwoPathCNN)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, TwoPathCNN)]


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer with weights (the maxout convolutions and output layers), by dotted name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def expand_name(model: nn.Module, name: str) -> list[str]:
    """Every full weight-layer name that ``name`` equals or is a dotted suffix of."""
    name = name.strip().strip(".")
    return [full for full in weight_layers(model) if full == name or full.endswith("." + name)]


def resolve_layer(model: nn.Module, name: str) -> str:
    """The one full dotted layer name that ``name`` selects (exact or unique suffix).

    An unknown or ambiguous name is a ``BraverError`` listing the candidates.
    """
    matches = expand_name(model, name)
    if len(matches) == 1:
        return matches[0]
    layers = list(weight_layers(model))
    if matches:
        raise BraverError(
            f"layer name {name!r} is ambiguous: it matches {', '.join(matches)}",
            hint="give the full dotted name",
        )
    removed = [
        n
        for n, m in model.named_modules()
        if isinstance(m, CentreCrop) and (n == name or n.endswith("." + name))
    ]
    if removed:
        raise BraverError(
            f"layer {removed[0]} was replaced by an identity and has no weights",
            hint=f"the remaining layers are: {', '.join(layers)}",
        )
    raise BraverError(f"no layer named {name!r}", hint=f"the layers are: {', '.join(layers)}")


def group_prefixes(model: nn.Module) -> dict[str, list[str]]:
    nets = networks(model)
    groups: dict[str, list[str]] = {}
    cascade = any(prefix for prefix, _ in nets)
    if cascade:
        for part in PARTS:
            groups[part] = [_join(prefix, part) for prefix, _ in nets]
        for prefix, _ in nets:
            groups[prefix] = [prefix]
    for prefix, _ in nets:
        for part in PARTS:
            groups[_join(prefix, part)] = [_join(prefix, part)]
    return groups


def group_names(model: nn.Module) -> list[str]:
    """Every group name ``model`` understands (``local``, ``global``, ``output``, ``first`` …)."""
    return list(group_prefixes(model))


def param_group_names(model: nn.Module) -> list[str]:
    """Names of the groups of :func:`param_groups`, in order: one per part of each network.

    TwoPathCNN: ``local, global, output``; cascades: ``first.local, first.global, first.output,
    second.local, second.global, second.output``. The output layer of the final network is
    last, so fastai's ``freeze()`` (all groups but the last) is the paper's second phase, and
    freezing the first three groups of a cascade freezes its first network.
    """
    return [_join(prefix, part) for prefix, _ in networks(model) for part in PARTS]


def _params_under(model: nn.Module, prefixes: list[str]) -> list[str]:
    return [
        name
        for name, _ in model.named_parameters()
        if any(name.startswith(prefix + ".") for prefix in prefixes)
    ]


def resolve_group(model: nn.Module, name: str) -> list[str]:
    """Parameter names of a group (see the module docstring) or of one layer (dotted name or
    unique suffix). Unknown or ambiguous names are a ``BraverError`` listing the candidates."""
    name = name.strip().strip(".")
    groups = group_prefixes(model)
    if name in groups:
        return _params_under(model, groups[name])
    matches = expand_name(model, name)
    if len(matches) == 1:
        return _params_under(model, matches)
    if matches:
        raise BraverError(
            f"{name!r} is not a group and matches several layers: {', '.join(matches)}",
            hint=f"give a full dotted layer name, or a group: {', '.join(groups)}",
        )
    raise BraverError(
        f"no group or layer named {name!r}",
        hint=f"groups: {', '.join(groups)}; layers: {', '.join(weight_layers(model))}",
    )


def param_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters split by :func:`param_group_names`; usable as a fastai ``splitter``."""
    params = dict(model.named_parameters())
    return [
        [params[n] for n in _params_under(model, [group])] for group in param_group_names(model)
    ]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainable_parameters(model: nn.Module) -> int:
    """How many parameters will be trained (``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

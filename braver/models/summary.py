"""What a model is made of: one row per layer, and its groups (``braver models summary``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from braver.models.cascade import crop_inputs_for
from braver.models.layers import CentreCrop, Maxout
from braver.models.naming import (
    _params_under,
    group_prefixes,
    networks,
    parameter_count,
    trainable_parameters,
)


@dataclass(frozen=True)
class LayerRow:
    """One layer: where it sits, what it does and what it costs.

    ``output_side`` is the side of its output map in patch mode (one labelled pixel; in a
    cascade the first network then labels the whole map the second one needs);
    ``receptive_field`` is the side of the image region one of its units sees.
    """

    group: str
    layer: str
    kind: str
    kernel: int
    in_maps: int
    out_maps: int
    pieces: int
    params: int
    output_side: tuple[int, int]
    receptive_field: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GroupRow:
    """One group name, its parameters and its layers."""

    group: str
    params: int
    layers: tuple[str, ...]


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, Maxout):
        return "conv + maxout" if module.pieces > 1 else "conv (linear, K=1)"
    if isinstance(module, nn.Conv2d):
        return "conv (output)"
    if isinstance(module, nn.MaxPool2d):
        return "max-pool, stride 1"
    if isinstance(module, CentreCrop):
        return "identity (centre crop)"
    return None  # dropout, containers


def _kernel(module: nn.Module) -> int:
    if isinstance(module, CentreCrop):
        return module.shrink + 1
    k = module.kernel_size
    return k[0] if isinstance(k, tuple) else k


def _shapes(model: nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """Input and output shape of every module in patch mode (one zero patch, no autograd)."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = []
    for name, module in model.named_modules():
        if _kind(module) is not None:

            def hook(mod, inputs, output, name=name):
                shapes[name] = (inputs[0].shape, output.shape)

            hooks.append(module.register_forward_hook(hook))
    parameter = next(model.parameters())
    side = max(model.input_sizes)
    big = torch.zeros(
        1, model.in_channels, side, side, dtype=parameter.dtype, device=parameter.device
    )
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*crop_inputs_for(model.input_sizes, big))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def summary_rows(model: nn.Module) -> list[LayerRow]:
    """One row per weight layer, pooling layer and surgical identity, in forward order."""
    shapes = _shapes(model)
    fields = model.receptive_fields()
    rows = []
    for prefix, network in networks(model):
        for name, module in network.named_modules():
            kind = _kind(module)
            if kind is None:
                continue
            full = f"{prefix}.{name}" if prefix else name
            part = name.split(".")[0]
            group = f"{prefix}.{part}" if prefix else part
            (_, in_c, _, _), (_, out_c, oh, ow) = shapes[full]
            rows.append(
                LayerRow(
                    group=group,
                    layer=full,
                    kind=kind,
                    kernel=_kernel(module),
                    in_maps=int(in_c),
                    out_maps=int(out_c),
                    pieces=getattr(module, "pieces", 1),
                    params=sum(p.numel() for p in module.parameters(recurse=False)),
                    output_side=(int(oh), int(ow)),
                    receptive_field=fields[full],
                )
            )
    return rows


def group_rows(model: nn.Module) -> list[GroupRow]:
    """Every group name with its parameter count and layers."""
    rows = []
    for group, prefixes in group_prefixes(model).items():
        params = _params_under(model, prefixes)
        named = dict(model.named_parameters())
        layers = tuple(dict.fromkeys(p.rsplit(".", 1)[0] for p in params))
        rows.append(GroupRow(group, sum(named[p].numel() for p in params), layers))
    return rows


def totals(model: nn.Module) -> dict[str, int | tuple[int, ...]]:
    """Parameter totals, input sizes and receptive field of the whole model."""
    fields = model.receptive_fields()
    return {
        "params": parameter_count(model),
        "trainable": trainable_parameters(model),
        "input_sizes": tuple(model.input_sizes),
        "receptive_field": max(fields.values()),
    }

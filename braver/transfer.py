"""Adapt a trained network to other input channels and other classes (brain MRI → liver CT).

The adapted network is a fresh ``create_model(**config)`` with the new ``in_channels`` and
``num_classes`` whose weights are taken from the trained one, so a run folder reloads it with
``create_model(**model.config)`` + its state dict like any other model. Each function returns
``(new_model, description)``; the description is a JSON-serialisable dict saying what was
copied, what was derived and how, and what was re-initialised, for the run folder.

Which input channels a layer sees (per TwoPathCNN, see :mod:`braver.models.cascade`):

* ``local.conv1``, ``global.conv1``: the image channels; in the second network of an
  InputCascade also the first network's class map (``num_classes`` channels, last).
* ``local.conv2``: 64 hidden maps (+ the class map in a LocalCascade's second network).
* ``output``: 224 hidden maps (+ the class map in an MFCascade's second network).

Image channels, by ``strategy`` (new channel count C' from C, e.g. 4 MRI → 1 CT):

* ``"sum"`` — W'[:, j] = Σ_c W[:, c] / C': an image whose C' channels all equal x gives the
  first layers exactly what the trained network got from C channels all equal to x.
* ``"average"`` — W'[:, j] = mean_c W[:, c]: the response to one CT channel has the size of the
  response to one MRI channel (1/C of "sum" for C' = 1).
* ``"repeat"`` — as if the CT channel were repeated (tiled) to C channels and fed to the
  untouched weights. Done exactly by folding: W'[:, j] = Σ_{c ≡ j (mod C')} W[:, c], so the
  config stays plain; needs C divisible by C'. For C' = 1 the weights equal "sum"; training
  differs from a literal repeat only in that SGD moves the folded kernel at 1× instead of C×.
* ``"reinit"`` — U(−a, a) as an untrained network.

With the same number of channels, every strategy but "reinit" copies the weights.

Class-map channels of a cascade's second network: the first network's output layer is
re-initialised for the new classes, so its class map means something new (and has
``num_classes`` channels: 5 brain → 3 liver). ``class_map="reinit"`` (default) re-initialises
the second network's weights on those channels U(−a, a); ``"background"`` keeps the weights
on channel 0 (background / normal tissue in every braver label scheme) and re-initialises the
others; ``"keep"`` keeps the weights on the first ``num_classes`` channels (fewer classes only).
A frozen layer keeps whatever these start at: train the layers listed under ``class_map``
(or accept that the class map reaches the second network only through the layers that are
trained).

Kept output layers (``keep_outputs``): an output layer that a transfer setup keeps frozen
would be useless re-initialised, so it may keep the trained weights of the first
``num_classes`` classes instead (class 0 is background in every braver label scheme; the
others keep their brain meaning, e.g. necrosis and edema answering for liver and tumour).
The seed study's setups (:mod:`braver.studies.transfer`) freeze output layers this way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from braver.errors import BraverError
from braver.models import create_model
from braver.models.layers import CentreCrop
from braver.models.naming import networks, weight_layers
from braver.models.twopath import GLOBAL_MAPS, LOCAL_MAPS

STRATEGIES = ("sum", "average", "repeat", "reinit")
CLASS_MAP_STRATEGIES = ("reinit", "background", "keep")
DEFAULT_STRATEGY = "sum"

_STRATEGY_RULES = {
    "sum": "weights summed over the {old} input channels (÷ {new}): an image whose {new} channel(s) "
    "all equal x gives what the trained network got from {old} channels all equal to x",
    "average": "weights averaged over the {old} input channels",
    "repeat": "the {new} new channel(s) repeated (tiled) to {old} channels, folded into the "
    "weights exactly (for 1 channel identical to 'sum')",
    "reinit": "weights re-initialised U(−{a}, {a})",
    "copy": "same number of channels: weights copied",
}


def input_layout(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """For each weight layer, its input channels as segments ``(kind, count)`` in order;
    kind is ``image``, ``hidden`` or ``class_map``."""
    layout: dict[str, list[tuple[str, int]]] = {}
    for prefix, net in networks(model):
        at = net.class_map_at
        k = net.num_classes
        image = [("image", net.in_channels)] + ([("class_map", k)] if at == "input" else [])
        conv2 = [("hidden", LOCAL_MAPS)] + ([("class_map", k)] if at == "local" else [])
        output = [("hidden", LOCAL_MAPS + GLOBAL_MAPS)] + (
            [("class_map", k)] if at == "output" else []
        )
        for name, segments in (
            ("local.conv1", image),
            ("global.conv1", image),
            ("local.conv2", conv2),
            ("output", output),
        ):
            layout[f"{prefix}.{name}" if prefix else name] = segments
    return layout


def _uniform(shape: Sequence[int], a: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(-a, a)


def _adapt_image(w: torch.Tensor, new: int, strategy: str, a: float) -> tuple[torch.Tensor, str]:
    old = w.shape[1]
    shape = (w.shape[0], new, *w.shape[2:])
    if strategy == "reinit":
        return _uniform(shape, a, w), "reinit"
    if new == old:
        return w.clone(), "copy"
    if strategy == "sum":
        return (w.sum(1, keepdim=True) / new).expand(shape).clone(), "sum"
    if strategy == "average":
        return w.mean(1, keepdim=True).expand(shape).clone(), "average"
    # repeat: channel c of the tiled input is new channel c % new
    return w.view(w.shape[0], old // new, new, *w.shape[2:]).sum(1), "repeat"


def _adapt_class_map(w: torch.Tensor, new: int, strategy: str, a: float) -> torch.Tensor:
    if strategy == "keep":
        return w[:, :new].clone()
    fresh = _uniform((w.shape[0], new, *w.shape[2:]), a, w)
    if strategy == "background":
        fresh[:, 0] = w[:, 0]
    return fresh


def _check(
    model: nn.Module, strategy: str, class_map: str, in_channels: int, keeps_classes: bool
) -> None:
    if not hasattr(model, "config"):
        raise BraverError(
            "this model has no config", hint="build it with braver.models.create_model"
        )
    if any(isinstance(m, CentreCrop) for m in model.modules()):
        raise BraverError(
            "this network had layers replaced by surgery", hint="adapt the intact network"
        )
    if strategy not in STRATEGIES:
        raise BraverError(
            f"unknown channel strategy {strategy!r}", hint=f"choose one of: {', '.join(STRATEGIES)}"
        )
    if class_map not in CLASS_MAP_STRATEGIES:
        raise BraverError(
            f"unknown class-map strategy {class_map!r}",
            hint=f"choose one of: {', '.join(CLASS_MAP_STRATEGIES)}",
        )
    if not isinstance(in_channels, int) or in_channels < 1:
        raise BraverError(
            f"in_channels must be a positive integer, got {in_channels!r}", hint="1 for CT"
        )
    old = model.in_channels
    if keeps_classes and num_classes_of(model) < keeps_classes:
        raise BraverError(
            f"cannot keep {keeps_classes} classes of a network trained on {num_classes_of(model)}",
            hint="re-initialise the output layers (no kept outputs, class_map reinit or background)",
        )
    if strategy == "repeat" and old % in_channels:
        raise BraverError(
            f"cannot repeat {in_channels} channels to fill the network's {old}",
            hint=f"use 'sum' or 'average', or a channel count that divides {old}",
        )


def _rebuild(
    model: nn.Module,
    *,
    in_channels: int,
    num_classes: int,
    strategy: str,
    class_map: str,
    new_outputs: bool,
    class_frequencies: Sequence[float] | None,
    keep_outputs: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    keeps = new_outputs and (bool(keep_outputs) or class_map == "keep")
    _check(model, strategy, class_map, in_channels, num_classes if keeps else 0)
    old_config = model.config
    keep_frequencies = not new_outputs and class_frequencies is None
    config = {
        **old_config,
        "in_channels": in_channels,
        "num_classes": num_classes,
        "class_frequencies": old_config["class_frequencies"]
        if keep_frequencies
        else class_frequencies,
    }
    parameter = next(model.parameters())
    new_model = create_model(**config).to(device=parameter.device, dtype=parameter.dtype)
    new_model.train(model.training)
    a = float(old_config["init_range"])
    old_layers, new_layers = weight_layers(model), weight_layers(new_model)
    old_layout, new_layout = input_layout(model), input_layout(new_model)

    outputs = [n for n in new_layers if n == "output" or n.endswith(".output")]
    unknown = sorted(set(keep_outputs) - set(outputs))
    if unknown:
        raise BraverError(
            f"{unknown[0]} is not an output layer of this network",
            hint=f"output layers: {', '.join(outputs)}",
        )
    image_layers, class_map_layers, reinitialised = {}, [], []
    partly: dict[str, str] = {}
    with torch.no_grad():
        for name, new_layer in new_layers.items():
            old_layer = old_layers[name]
            if name in outputs and new_outputs and name not in keep_outputs:
                reinitialised += [f"{name}.{p}" for p, _ in new_layer.named_parameters()]
                continue  # fresh from create_model: U(−a, a), biases 0 or log frequencies
            rows = slice(0, num_classes) if name in keep_outputs else slice(None)
            pieces, start = [], 0
            for kind, count in old_layout[name]:
                w = old_layer.weight[rows, start : start + count]
                start += count
                if kind == "hidden":
                    pieces.append(w.clone())
                elif kind == "image":
                    adapted, rule = _adapt_image(w, in_channels, strategy, a)
                    pieces.append(adapted)
                    image_layers[name] = rule
                else:  # class map
                    if new_outputs:
                        pieces.append(_adapt_class_map(w, num_classes, class_map, a))
                        class_map_layers.append(name)
                        first = sum(c for k, c in new_layout[name] if k != "class_map")
                        kept = "channel 0 kept, " if class_map == "background" else ""
                        if class_map != "keep":
                            partly[f"{name}.weight"] = (
                                f"input channels {first}–{first + num_classes - 1} (class map): "
                                f"{kept}re-initialised U(−{a}, {a})"
                            )
                    else:
                        pieces.append(w.clone())
            new_layer.weight.copy_(torch.cat(pieces, dim=1))
            if old_layer.bias is not None:
                new_layer.bias.copy_(old_layer.bias[rows])

    old_in, old_classes = model.in_channels, model.num_classes
    rules = sorted(set(image_layers.values()))
    description: dict[str, Any] = {
        "model": old_config["name"],
        "from": {"in_channels": old_in, "num_classes": old_classes},
        "to": {"in_channels": in_channels, "num_classes": num_classes},
        "input_channels": {
            "strategy": strategy,
            "layers": list(image_layers),
            "rule": "; ".join(
                _STRATEGY_RULES[r].format(old=old_in, new=in_channels, a=a) for r in rules
            ),
        },
        "output": {
            "layers": outputs,
            "reinitialised": bool(new_outputs) and not keep_outputs,
            "kept": [
                f"{name}: the trained weights of classes 0–{num_classes - 1} kept"
                for name in outputs
                if name in keep_outputs
            ],
            "initialisation": (
                f"kernels U(−{a}, {a}), biases "
                + ("log class frequencies" if config["class_frequencies"] else "0")
            )
            if new_outputs
            else "copied",
        },
        "reinitialised": reinitialised,
        "partly_reinitialised": partly,
    }
    if any(net.class_map_at for _, net in networks(model)):
        description["class_map"] = {
            "strategy": class_map if new_outputs else "copy",
            "layers": class_map_layers,
            "channels": f"{old_classes} → {num_classes}",
            "note": (
                f"the first network's output layer was re-initialised for {num_classes} classes, "
                "so the second network's weights on its class map were "
                + {
                    "reinit": "re-initialised U(−a, a)",
                    "background": "re-initialised except on channel 0 (background)",
                    "keep": f"kept on its first {num_classes} channels",
                }[class_map]
                + "; a frozen layer keeps them at that start"
            )
            if new_outputs
            else "classes unchanged: weights on the class map copied",
        }
    return new_model, description


def adapt_input_channels(
    model: nn.Module, new_in_channels: int, strategy: str = DEFAULT_STRATEGY
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` taking ``new_in_channels`` image channels (see the module docstring);
    classes, output layers and class-map weights are kept."""
    return _rebuild(
        model,
        in_channels=new_in_channels,
        num_classes=model.num_classes,
        strategy=strategy,
        class_map="reinit",
        new_outputs=False,
        class_frequencies=None,
    )


def reinit_output(
    model: nn.Module,
    num_classes: int,
    class_frequencies: Sequence[float] | None = None,
    class_map: str = "reinit",
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with new output layer(s) for ``num_classes`` classes.

    In a cascade both networks' output layers are new (the first one's class map now has
    ``num_classes`` channels too) and the second network's weights on that map are handled by
    ``class_map``. Output biases are log ``class_frequencies`` when given, else 0.
    """
    return _rebuild(
        model,
        in_channels=model.in_channels,
        num_classes=num_classes,
        strategy="sum",
        class_map=class_map,
        new_outputs=True,
        class_frequencies=class_frequencies,
    )


def adapt_for_transfer(
    model: nn.Module,
    in_channels: int,
    num_classes: int,
    strategy: str = DEFAULT_STRATEGY,
    *,
    class_frequencies: Sequence[float] | None = None,
    class_map: str = "reinit",
    keep_outputs: Sequence[str] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """The trained ``model`` adapted to ``in_channels`` and ``num_classes`` in one step: image
    channels by ``strategy``, output layer(s) re-initialised (those named in ``keep_outputs``
    keep their first ``num_classes`` classes), a cascade's class-map weights by ``class_map``.
    Returns ``(new_model, description)``; ``new_model.config`` rebuilds it."""
    return _rebuild(
        model,
        in_channels=in_channels,
        num_classes=num_classes,
        strategy=strategy,
        class_map=class_map,
        new_outputs=True,
        class_frequencies=class_frequencies,
        keep_outputs=keep_outputs,
    )


def num_classes_of(model: nn.Module) -> int:
    """The number of classes a braver network was built for."""
    return int(model.config["num_classes"])


__all__ = [
    "CLASS_MAP_STRATEGIES",
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "adapt_for_transfer",
    "adapt_input_channels",
    "input_layout",
    "reinit_output",
]

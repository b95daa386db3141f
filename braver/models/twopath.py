"""TwoPathCNN (Havaei et al. 2017, §3.1.1, Fig. 2), and the keywords every braver model takes.

On a 33×33 patch (valid convolutions, stride-1 pooling)::

    local path   conv 7×7 → 64 maps, maxout   33 → 27
                 max-pool 4×4, stride 1       27 → 24   ← LocalCascade joins its class map here
                 conv 3×3 → 64 maps, maxout   24 → 22
                 max-pool 2×2, stride 1       22 → 21
    global path  conv 13×13 → 160 maps, maxout 33 → 21
    concatenate  21×21×224                             ← MFCascade joins its class map here
    output       conv 21×21 → num_classes logits  21 → 1   (softmax lives in the loss)

A tile of side 33 + k − 1 gives a k×k map of logits in one pass (the paper's dense mode).

Dropout: the paper (§3.2) masks "each hidden or input unit" with some probability but does not
say which layers nor the probability it used. braver drops hidden units only: the output of
every hidden layer (after the local path's two pooling layers and after the global path's
maxout), i.e. every unit that reaches the next weight layer, never the image or a cascade's
class map. ``dropout`` defaults to 0.2 (braver's choice; the paper gives 0.5 only as an example).

Initialisation (§3.2): kernels U(−0.005, 0.005), hidden biases 0; with ``class_frequencies``
the output biases are ``log(frequency)`` of each label, as the paper initialises them, so the
untrained network predicts the class prior. Without them the output biases start at 0 (a
uniform prior, which suits a first stage on balanced patches).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from braver.errors import BraverError
from braver.models._registry import register_model
from braver.models.layers import (
    PAPER_INIT_RANGE,
    Maxout,
    MaxPool,
    OutputConv,
    dropout_layer,
    init_uniform_,
    spatial_growth,
)

PATCH_SIZE = 33
LOCAL_MAPS = 64
GLOBAL_MAPS = 160
OUTPUT_KERNEL = 21
#: where a cascade's class map can enter a TwoPathCNN
CLASS_MAP_POINTS = ("input", "local", "output")

DEFAULT_DROPOUT = 0.2

#: The keywords every registered model takes, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "in_channels": 4,
    "num_classes": 4,
    "maxout_k": 2,
    "dropout": DEFAULT_DROPOUT,
    "class_frequencies": None,
    "bias": True,
    "init_range": PAPER_INIT_RANGE,
    "init": "paper",
}

#: Kernel initialisations: the paper's U(−a, a) for every layer (default), or He-uniform
#: scaled per layer by its fan-in (ours). With a = 0.005 the two-layer local path starts ~10x
#: weaker than the global path; "he" evens that out, but on the phantom profile it needs a
#: lower learning rate (0.005 diverges) and did not beat the paper's init in a short CPU run.
INITS = ("paper", "he")


def check_options(
    *,
    in_channels: int,
    num_classes: int,
    maxout_k: int,
    dropout: float,
    class_frequencies: Sequence[float] | None,
    bias: bool,
    init_range: float,
    init: str = "paper",
) -> dict[str, Any]:
    """Validate the common keywords; return them normalised (the model's ``options``)."""

    def bad(message: str, hint: str) -> BraverError:
        return BraverError(message, hint=hint)

    if not isinstance(in_channels, int) or in_channels < 1:
        raise bad(f"in_channels must be a positive integer, got {in_channels!r}", "e.g. 4 for MRI")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise bad(f"num_classes must be an integer ≥ 2, got {num_classes!r}", "e.g. 4 for BraTS")
    if not isinstance(maxout_k, int) or maxout_k < 1:
        raise bad(f"maxout_k must be a positive integer, got {maxout_k!r}", "the paper uses 2")
    if not 0 <= float(dropout) < 1:
        raise bad(f"dropout must be in [0, 1), got {dropout!r}", "e.g. 0.2")
    if not float(init_range) > 0:
        raise bad(f"init_range must be > 0, got {init_range!r}", "the paper uses 0.005")
    if init not in INITS:
        raise bad(f"init must be one of {list(INITS)}, got {init!r}", "the paper's is 'paper'")
    options = {
        "in_channels": in_channels,
        "num_classes": num_classes,
        "maxout_k": maxout_k,
        "dropout": float(dropout),
        "class_frequencies": None,
        "bias": bool(bias),
        "init_range": float(init_range),
        "init": init,
    }
    if class_frequencies is None:
        return options
    freqs = [float(f) for f in class_frequencies]
    if len(freqs) != num_classes or any(not f > 0 or not math.isfinite(f) for f in freqs):
        raise bad(
            f"class_frequencies must be {num_classes} positive numbers, got {list(class_frequencies)}",
            "take them from the cache's summary.json (class_frequencies)",
        )
    if not bias:
        raise bad(
            "class_frequencies set the output biases but bias=False",
            "drop class_frequencies or use bias=True",
        )
    options["class_frequencies"] = freqs
    return options


class BraverModel(nn.Module):
    """Common bookkeeping: keywords, ``config`` and ``input_sizes``."""

    #: registry name written into ``config``
    model_name: str = ""
    input_sizes: tuple[int, ...] = (PATCH_SIZE,)

    def _store_options(self, options: dict[str, Any]) -> None:
        self.options = dict(options)
        self.in_channels = options["in_channels"]
        self.num_classes = options["num_classes"]

    @property
    def config(self) -> dict[str, Any]:
        """JSON-serialisable keywords such that ``create_model(**config)`` rebuilds the model."""
        return {"name": self.model_name, **self.options}


class LocalPath(nn.Module):
    """conv 7×7 (maxout) → pool 4×4/1 → [class map] → conv 3×3 (maxout) → pool 2×2/1."""

    def __init__(
        self, in_channels: int, maxout_k: int, dropout: float, bias: bool, class_map_channels: int
    ):
        super().__init__()
        self.conv1 = Maxout(in_channels, LOCAL_MAPS, 7, pieces=maxout_k, bias=bias)
        self.pool1 = MaxPool(4)
        self.dropout1 = dropout_layer(dropout)
        self.conv2 = Maxout(
            LOCAL_MAPS + class_map_channels, LOCAL_MAPS, 3, pieces=maxout_k, bias=bias
        )
        self.pool2 = MaxPool(2)
        self.dropout2 = dropout_layer(dropout)

    def forward(self, x: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout1(self.pool1(self.conv1(x)))
        if class_map is not None:
            x = torch.cat([x, class_map], dim=1)
        return self.dropout2(self.pool2(self.conv2(x)))


class GlobalPath(nn.Module):
    """conv 13×13 (maxout), 160 maps."""

    def __init__(self, in_channels: int, maxout_k: int, dropout: float, bias: bool):
        super().__init__()
        self.conv1 = Maxout(in_channels, GLOBAL_MAPS, 13, pieces=maxout_k, bias=bias)
        self.dropout1 = dropout_layer(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout1(self.conv1(x))


class TwoPathCNN(BraverModel):
    """The two-pathway network of Havaei et al. on 33×33 patches (see the module docstring).

    ``class_map_at`` is used inside cascades: the second network takes the first one's class
    map (``num_classes`` channels, appended after the other channels) at its ``"input"``,
    after the local path's first hidden layer (``"local"``) or before the output layer
    (``"output"``); pass it to :meth:`forward` as ``class_map``.
    """

    model_name = "twopath"
    input_sizes = (PATCH_SIZE,)

    def __init__(
        self,
        in_channels: int = COMMON_DEFAULTS["in_channels"],
        num_classes: int = COMMON_DEFAULTS["num_classes"],
        maxout_k: int = COMMON_DEFAULTS["maxout_k"],
        dropout: float = DEFAULT_DROPOUT,
        class_frequencies: Sequence[float] | None = None,
        bias: bool = True,
        init_range: float = PAPER_INIT_RANGE,
        class_map_at: str | None = None,
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
        if class_map_at is not None and class_map_at not in CLASS_MAP_POINTS:
            raise BraverError(
                f"class_map_at must be one of {list(CLASS_MAP_POINTS)} or None, got {class_map_at!r}"
            )
        if class_map_at is not None:
            options["class_map_at"] = class_map_at
        self._store_options(options)
        self.class_map_at = class_map_at
        extra = num_classes if class_map_at is not None else 0
        image_channels = in_channels + (extra if class_map_at == "input" else 0)

        self.local = LocalPath(
            image_channels, maxout_k, dropout, bias, extra if class_map_at == "local" else 0
        )
        # "global" is a Python keyword: register the path under that name explicitly so the
        # dotted names read global.conv1 (reach it as ``model.global_path``)
        self.add_module("global", GlobalPath(image_channels, maxout_k, dropout, bias))
        out_in = LOCAL_MAPS + GLOBAL_MAPS + (extra if class_map_at == "output" else 0)
        self.output = OutputConv(out_in, num_classes, OUTPUT_KERNEL, bias=bias)
        self.reset_parameters()

    @property
    def global_path(self) -> GlobalPath:
        return self._modules["global"]  # type: ignore[return-value]

    def reset_parameters(self) -> None:
        """Kernels U(−a, a) (or He-uniform), biases 0; output biases log class frequencies."""
        a = self.options["init_range"]
        he = self.options.get("init", "paper") == "he"
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.weight[0].numel()
                init_uniform_(module, math.sqrt(6.0 / fan_in) if he else a)
        freqs = self.options["class_frequencies"]
        if freqs is not None:
            set_output_bias_(self.output, freqs)

    def forward(self, x: torch.Tensor, class_map: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, 33+k−1, 33+k−1) → logits (B, num_classes, k, k); rectangles work the same."""
        if (class_map is None) != (self.class_map_at is None):
            raise ValueError(
                "this TwoPathCNN expects a class map"
                if class_map is None
                else "this TwoPathCNN takes no class map"
            )
        if self.class_map_at == "input":
            x = torch.cat([x, class_map], dim=1)
        local = self.local(x, class_map if self.class_map_at == "local" else None)
        features = [local, self.global_path(x)]
        if self.class_map_at == "output":
            features.append(class_map)
        return self.output(torch.cat(features, dim=1))

    def receptive_fields(self, class_map_field: int = 0) -> dict[str, int]:
        """Side of the image region seen by one unit of each layer, by local dotted name.

        ``class_map_field`` is the receptive field of one pixel of the incoming class map
        (33 for a cascade's first TwoPathCNN). Stride 1 everywhere: each layer adds kernel − 1.
        """
        fields: dict[str, int] = {}
        start = max(1, class_map_field) if self.class_map_at == "input" else 1
        field = start
        for name, module in self.local.named_children():
            if name == "conv2" and self.class_map_at == "local":
                field = max(field, class_map_field)
            field += spatial_growth(module)
            fields[f"local.{name}"] = field
        local_field = field
        field = start
        for name, module in self.global_path.named_children():
            field += spatial_growth(module)
            fields[f"global.{name}"] = field
        joined = max(local_field, field)
        if self.class_map_at == "output":
            joined = max(joined, class_map_field)
        fields["output"] = joined + spatial_growth(self.output)
        return fields


def set_output_bias_(layer: nn.Conv2d, class_frequencies: Sequence[float]) -> None:
    """Output biases = log of the normalised class frequencies (softmax of them = the prior)."""
    if layer.bias is None:
        raise BraverError("the output layer has no bias", hint="build the model with bias=True")
    freqs = torch.tensor([float(f) for f in class_frequencies], dtype=torch.float64)
    if freqs.numel() != layer.out_channels:
        raise BraverError(
            f"{freqs.numel()} class frequencies for an output layer of {layer.out_channels} classes",
            hint="give one frequency per class",
        )
    with torch.no_grad():
        layer.bias.copy_(torch.log(freqs / freqs.sum()).to(layer.bias.dtype))


@register_model(aliases=("TwoPathCNN",))
def twopath(
    in_channels: int = 4,
    num_classes: int = 4,
    maxout_k: int = 2,
    dropout: float = DEFAULT_DROPOUT,
    class_frequencies: Sequence[float] | None = None,
    bias: bool = True,
    init_range: float = PAPER_INIT_RANGE,
    class_map_at: str | None = None,
    init: str = "paper",
) -> TwoPathCNN:
    """TwoPathCNN: a local (7×7, 3×3) and a global (13×13) path on 33×33 patches."""
    return TwoPathCNN(
        in_channels,
        num_classes,
        maxout_k,
        dropout,
        class_frequencies,
        bias,
        init_range,
        class_map_at,
        init,
    )

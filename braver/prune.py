"""The surgery study behind ``braver prune``: variants of a trained network, scored side by side.

A *variant* is the trained network after one operation (see :mod:`braver.surgery`):

``identity NAME``   the layer (convolution + maxout) replaced by an identity, a centre crop by
                    kernel − 1 so the maps after it keep their size;
``switch A B``      the weights of two layers of the same shape exchanged;
``copy SRC DST``    the weights of SRC copied onto DST;
``keep PART``       one path (or, in a cascade, one network) kept and the rest removed.

Every variant and the intact network are evaluated on the same cases, one case at a time (each
case is read or preprocessed once, then every variant predicts it), so their rows compare like
with like: whole-volume dense prediction (``braver.inference.predict_volume``), Dice per region
(``braver.metrics.region_scores``), the accuracy over the image foreground, and the seconds the
network took per volume.

Keeping one path. The two paths of a TwoPathCNN meet in a concatenation that feeds the output
layer (64 local maps + 160 global maps). ``keep local`` removes the global path and the output
layer's weights on its 160 maps; the local path's maps, the output layer's weights on them and
its biases stay. This is exactly the ablation "global features set to zero before the output
layer" (zero maps add nothing through those weights), but the removed parameters are gone and
the removed path is not computed, so "parameters removed" and "seconds per volume" are real.
``keep global`` does the same the other way round. In a cascade, ``local``/``global`` mean the
path in both networks, ``first.local`` … the path in one network, and ``first``/``second`` a
whole network: ``keep second`` runs the second network alone with the first one's class map
removed (its weights on the class map dropped: the ablation "class map set to zero"), and
``keep first`` returns the first network's own class scores for the same pixels. In the seed
study's words (an InputCascadeCNN), ``second`` is the "local scale" and ``first`` the "global
scale" network. Caveat: in a LocalCascade the first network's class map enters the second
network's local path, so ``keep global`` also cuts the first network off (it still runs).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from torch import nn

from braver.errors import BraverError
from braver.models.cascade import CascadeCNN, crop_offsets
from braver.models.layers import CentreCrop, Maxout, OutputConv, spatial_growth
from braver.models.naming import expand_name, group_prefixes, weight_layers
from braver.models.twopath import TwoPathCNN
from braver.surgery import (
    copy_layer,
    identity_candidates,
    parameters_removed,
    replace_with_identity,
    same_shape_layers,
    switch_layers,
)

OPERATIONS = ("identity", "switch", "copy", "keep")
PATHS = ("local", "global")
NETWORKS = ("first", "second")
#: what the accuracy column measures
ACCURACY = "foreground_accuracy"
ACCURACY_MEANING = (
    "foreground_accuracy: share of the voxels inside the image foreground (any channel ≠ 0) "
    "given their true class, over all cases"
)

# ---------------------------------------------------------------------------------------------
# recipe


@dataclass
class PruneRecipe:
    """The default variants of ``braver prune`` (``recipes/prune.toml``) and how to evaluate.

    ``identity`` is ``"each"`` (every layer that keeps its number of maps, alone) or a list of
    layer names; ``keep`` lists paths; ``keep_network`` lists networks (cascades only, skipped
    for a TwoPathCNN); ``switch``/``copy`` list pairs of layer names. ``cases`` 0 is every case.
    """

    identity: str | list[str] = "each"
    keep: list[str] = field(default_factory=lambda: ["local", "global"])
    keep_network: list[str] = field(default_factory=lambda: ["second", "first"])
    switch: list[list[str]] = field(default_factory=list)
    copy: list[list[str]] = field(default_factory=list)
    cases: int = 0
    batch_size: int = 0
    source: str | None = None


_SECTIONS = {
    "variants": ("identity", "keep", "keep_network", "switch", "copy"),
    "evaluation": ("cases", "batch_size"),
}


def load_prune_recipe(path: str | Path | None = None) -> PruneRecipe:
    """Read a prune recipe (default: the shipped ``recipes/prune.toml``); unknown keys are errors."""
    if path is None:
        from braver.recipe import shipped_recipe

        path = shipped_recipe("prune")
    path = Path(path)
    if not path.is_file():
        raise BraverError("no such prune recipe", path, "pass a .toml file like recipes/prune.toml")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BraverError(f"is not valid TOML ({error})", path, "fix the file") from None
    values: dict[str, Any] = {}
    for section, content in data.items():
        if section not in _SECTIONS:
            raise BraverError(
                f"unknown table [{section}]", path, f"known tables: {', '.join(_SECTIONS)}"
            )
        if not isinstance(content, dict):
            raise BraverError(f"{section} must be a table", path, f"write [{section}]")
        for key, value in content.items():
            if key not in _SECTIONS[section]:
                raise BraverError(
                    f"unknown key {section}.{key}",
                    path,
                    f"known keys in [{section}]: {', '.join(_SECTIONS[section])}",
                )
            values[key] = _check_value(key, value, f"{section}.{key}", path)
    return PruneRecipe(**values, source=str(path))


def _check_value(key: str, value: Any, where: str, path: Path) -> Any:
    def names(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(n, str) and n.strip() for n in v)

    if key == "identity":
        if value == "each" or names(value):
            return value
        raise BraverError(f'{where} must be "each" or a list of layer names', path, "fix it")
    if key in ("keep", "keep_network"):
        allowed = PATHS if key == "keep" else NETWORKS
        if names(value) and all(v.split(".")[-1] in allowed or v in allowed for v in value):
            return list(value)
        raise BraverError(
            f"{where} must be a list of {' / '.join(allowed)}", path, f"e.g. {list(allowed)}"
        )
    if key in ("switch", "copy"):
        if isinstance(value, list) and all(names(p) and len(p) == 2 for p in value):
            return [list(p) for p in value]
        raise BraverError(
            f"{where} must be a list of pairs of layer names",
            path,
            'e.g. [["first.local.conv2", "second.local.conv2"]]',
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BraverError(f"{where} must be an integer ≥ 0", path, "0 means the default")
    return value


# ---------------------------------------------------------------------------------------------
# operations and variants


@dataclass(frozen=True)
class Operation:
    """One requested operation: ``identity`` (one name), ``switch``/``copy`` (two), ``keep`` (one)."""

    kind: str
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in OPERATIONS:
            raise BraverError(
                f"unknown surgery operation {self.kind!r}", hint=f"use one of {list(OPERATIONS)}"
            )
        arity = 2 if self.kind in ("switch", "copy") else 1
        if len(self.names) != arity:
            raise BraverError(
                f"{self.kind} takes {arity} name(s), got {list(self.names)}",
                hint=f"write --{self.kind} " + " ".join(["NAME"] * arity),
            )


@dataclass
class Variant:
    """A network to evaluate: the intact one or one operation applied to it."""

    name: str
    model: nn.Module
    parameters_removed: int = 0
    operations: list[dict] = field(default_factory=list)
    note: str = ""


def recipe_operations(recipe: PruneRecipe, model: nn.Module) -> list[Operation]:
    """The operations a recipe asks for on ``model`` (``identity = "each"`` expanded)."""
    identity = identity_candidates(model) if recipe.identity == "each" else recipe.identity
    operations = [Operation("identity", (name,)) for name in identity]
    operations += [Operation("keep", (name,)) for name in recipe.keep]
    if isinstance(model, CascadeCNN):
        operations += [Operation("keep", (name,)) for name in recipe.keep_network]
    operations += [Operation("switch", tuple(pair)) for pair in recipe.switch]
    operations += [Operation("copy", tuple(pair)) for pair in recipe.copy]
    return operations


def build_variants(model: nn.Module, operations: Sequence[Operation]) -> list[Variant]:
    """The intact network first, then one variant per operation (or per layer an identity name
    matches: in a cascade ``conv2`` is ``first.local.conv2`` and ``second.local.conv2``).

    Every operation is checked before anything is evaluated; a bad name or an incompatible
    layer is a ``BraverError`` that says what to use instead.
    """
    variants = [Variant("intact", model)]
    seen: set[str] = {"intact"}
    for operation in operations:
        for variant in _variants_of(model, operation):
            if variant.name not in seen:  # the same layer asked for twice: one row
                seen.add(variant.name)
                variants.append(variant)
    return variants


def _variants_of(model: nn.Module, operation: Operation) -> list[Variant]:
    kind, names = operation.kind, operation.names
    if kind == "identity":
        return _identity_variants(model, names[0])
    if kind == "keep":
        changed = keep_only(model, names[0])
        return [_variant(model, changed, _keep_label(model, changed.surgery[-1]))]
    if kind == "switch":
        changed = switch_layers(model, *names)
        a, b = changed.surgery[-1]["layers"]
        return [_variant(model, changed, f"switch {a} ↔ {b}")]
    changed = copy_layer(model, *names)
    step = changed.surgery[-1]
    return [_variant(model, changed, f"copy {step['source']} → {step['target']}")]


def _variant(model: nn.Module, changed: nn.Module, name: str, note: str = "") -> Variant:
    return Variant(
        name, changed, parameters_removed(model, changed), list(changed.surgery), note=note
    )


def _identity_variants(model: nn.Module, name: str) -> list[Variant]:
    """One variant per layer ``name`` matches; with several matches (a cascade's ``conv2``),
    those that cannot become an identity are skipped and said so, unless none can."""
    matches = expand_name(model, name)
    if len(matches) <= 1:  # unknown names get resolve_layer's error, listing the layers
        changed = replace_with_identity(model, name)
        return [_variant(model, changed, f"identity {changed.surgery[-1]['layer']}")]
    candidates = set(identity_candidates(model))
    usable = [m for m in matches if m in candidates]
    skipped = [m for m in matches if m not in candidates]
    if not usable:
        replace_with_identity(model, matches[0])  # raises the refusal naming what can go
    note = f"{name!r} matches {len(matches)} layers ({', '.join(matches)}): one row each"
    if skipped:
        note += f"; {', '.join(skipped)} skipped (changes the number of maps)"
    variants = []
    for full in usable:
        changed = replace_with_identity(model, full)
        variants.append(_variant(model, changed, f"identity {full}", note))
    return variants


def _keep_label(model: nn.Module, step: dict) -> str:
    part = step["keep"]
    if part in NETWORKS:
        scale = "local scale" if part == "second" else "global scale"
        return f"keep {part} ({scale}; {step['removed'][0]} removed)"
    return f"keep {part} ({', '.join(step['removed'])} removed)"


# ---------------------------------------------------------------------------------------------
# keep one path / one network


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
            "yes" if row.layer in candidates else f"no ({layer.in_channels} → {_maps(layer)} maps)"
        )
        partners = same_shape_layers(model, row.layer)
        rows.append(
            {
                "layer": row.layer,
                "group": row.group,
                "kind": row.kind,
                "weights": "×".join(map(str, layer.weight.shape)),
                "maps": f"{layer.in_channels} → {_maps(layer)}",
                "params": row.params,
                "identity": identity,
                "switch_or_copy_with": ", ".join(partners) if partners else "—",
            }
        )
    return rows


def _maps(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, Maxout) else layer.out_channels


def keep_choices(model: nn.Module) -> list[str]:
    """What ``keep`` accepts on ``model``."""
    groups = [g for g in group_prefixes(model) if g.split(".")[-1] in PATHS]
    return groups + (list(NETWORKS) if isinstance(model, CascadeCNN) else [])


# ---------------------------------------------------------------------------------------------
# evaluation


@dataclass
class StudyCase:
    """One labelled volume on the preprocessed (cropped canonical) grid."""

    case_id: str
    image: np.ndarray  # (C, Z, Y, X)
    label: np.ndarray  # (Z, Y, X) class indices
    spacing_zyx: tuple[float, ...]
    full_shape_zyx: tuple[int, ...]  # uncropped canonical shape, for the worst HD95


def cached_cases(cache, case_ids: Sequence[str]) -> Iterator[StudyCase]:
    """Cases of a prepared cache, read one at a time."""
    for case_id in case_ids:
        case = cache.case(case_id)
        if not case.has_label:
            raise BraverError(
                f"case {case_id!r} has no label to score against",
                case.folder,
                "evaluate on labelled cases",
            )
        meta = case.meta
        yield StudyCase(
            case_id,
            np.asarray(case.image, dtype=np.float32),
            np.asarray(case.label),
            tuple(float(s) for s in meta["spacing_zyx"]),
            tuple(meta.get("canonical_shape_zyx", case.label.shape)),
        )


def prepared_cases(run_info, cases: Sequence) -> Iterator[StudyCase]:
    """Raw dataset cases preprocessed in memory with the run's prepare settings, one at a time."""
    from braver.data.preprocess import PrepareSettings, preprocess_case
    from braver.inference import channel_order, check_compatible

    settings = PrepareSettings.from_dict(run_info.prepare)
    for case in cases:
        check_compatible(run_info, case)
        prepared = preprocess_case(case, settings)
        meta = prepared.meta
        yield StudyCase(
            case.case_id,
            np.asarray(prepared.image[channel_order(run_info, case)], dtype=np.float32),
            np.asarray(prepared.label),
            tuple(float(s) for s in meta["spacing_zyx"]),
            tuple(meta.get("canonical_shape_zyx", prepared.label.shape)),
        )


@dataclass
class StudyResult:
    """Rows (one per variant, intact first) and every per-case score."""

    rows: list[dict]
    per_case: dict[str, list[dict]]
    regions: list[str]
    notes: list[str]

    @property
    def dice_columns(self) -> list[str]:
        return [f"{region}_dice" for region in self.regions]


#: called as ``step(case_id, variant_name)`` before each prediction
Step = Callable[[str, str], None]


def run_study(
    variants: Sequence[Variant],
    cases: Iterable[StudyCase],
    scheme,
    *,
    device: str | torch.device = "cpu",
    batch_size: int | None = None,
    step: Step | None = None,
) -> StudyResult:
    """Predict every case with every variant and score it; one row per variant.

    Rows: ``variant``, ``parameters_removed``, ``foreground_accuracy`` (pooled over the voxels
    of all cases), ``<region>_dice`` (mean over cases), ``seconds_per_volume`` (mean time of the
    dense prediction alone), then ``delta_…`` against the intact network and ``note``.
    """
    from braver.inference import predict_volume
    from braver.metrics import region_scores, worst_hd95_mm

    device = torch.device(device)
    regions = list(scheme.regions)
    per_case: dict[str, list[dict]] = {v.name: [] for v in variants}
    correct = dict.fromkeys(per_case, 0)
    counted = dict.fromkeys(per_case, 0)
    for variant in variants:
        variant.model.to(device)
    warmed = False
    for case in cases:
        foreground = (case.image != 0).any(axis=0)
        truth = case.label
        worst = worst_hd95_mm(case.full_shape_zyx, case.spacing_zyx)
        if not warmed:  # first calls pay one-off costs (kernel choice, allocation): not timed
            _warm_up(variants, case.image, device, batch_size)
            warmed = True
        for variant in variants:
            if step is not None:
                step(case.case_id, variant.name)
            start = time.perf_counter()
            probs = predict_volume(variant.model, case.image, device=device, batch_size=batch_size)
            seconds = time.perf_counter() - start
            classes = probs.argmax(axis=0).astype(np.uint8)
            scores = region_scores(classes, truth, scheme, case.spacing_zyx, worst_hd95=worst)
            hits = int(np.count_nonzero((classes == truth) & foreground))
            voxels = int(np.count_nonzero(foreground))
            correct[variant.name] += hits
            counted[variant.name] += voxels
            per_case[variant.name].append(
                {
                    "case": case.case_id,
                    ACCURACY: hits / voxels if voxels else math.nan,
                    **scores,
                    "seconds": seconds,
                }
            )
    if not any(per_case.values()):
        raise BraverError("no case to evaluate", hint="pass --data DATA with labelled cases")
    rows = []
    for variant in variants:
        records = per_case[variant.name]
        row: dict[str, Any] = {
            "variant": variant.name,
            "parameters_removed": variant.parameters_removed,
            ACCURACY: correct[variant.name] / counted[variant.name]
            if counted[variant.name]
            else math.nan,
        }
        for region in regions:
            row[f"{region}_dice"] = float(np.mean([r[f"{region}_dice"] for r in records]))
        row["seconds_per_volume"] = float(np.mean([r["seconds"] for r in records]))
        rows.append(row)
    intact = rows[0]
    compared = [ACCURACY, *(f"{region}_dice" for region in regions)]
    for row, variant in zip(rows, variants, strict=True):
        for key in compared:
            row[f"delta_{key}"] = None if row is intact else row[key] - intact[key]
        row["note"] = variant.note
    notes = list(dict.fromkeys(v.note for v in variants if v.note))
    return StudyResult(rows, per_case, regions, notes)


def _warm_up(variants: Sequence[Variant], image: np.ndarray, device, batch_size) -> None:
    from braver.inference import predict_volume

    counts = np.count_nonzero(image.reshape(image.shape[0], image.shape[1], -1), axis=(0, 2))
    z = int(counts.argmax())
    for variant in variants:
        predict_volume(variant.model, image[:, z : z + 1], device=device, batch_size=batch_size)


def variant_records(variants: Sequence[Variant]) -> list[dict]:
    """What each variant is, for the JSON report."""
    return [
        {
            "variant": v.name,
            "operations": v.operations,
            "parameters_removed": v.parameters_removed,
            "note": v.note,
        }
        for v in variants
    ]


__all__ = [
    "ACCURACY",
    "Operation",
    "OneNetwork",
    "PruneRecipe",
    "RemovedPath",
    "StudyCase",
    "StudyResult",
    "Variant",
    "build_variants",
    "cached_cases",
    "keep_choices",
    "keep_only",
    "layer_table",
    "load_prune_recipe",
    "prepared_cases",
    "recipe_operations",
    "run_study",
    "variant_records",
]

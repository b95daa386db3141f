"""Recipes: the typed schema of a training run, loaded from TOML, with dotted overrides.

A recipe file is plain TOML whose tables mirror the dataclasses below. An optional
``[phantom]`` table holds a partial recipe merged over the base when training runs on the
built-in phantom set (no ``--data``): the paper's values stay in the base tables, the values
sized for a 2-core CPU live in one clearly separated place.

Unknown keys and values of the wrong type are errors that name the key and the file.

Length: one schema for every recipe (train, prune, the liver recipe's [transfer]) with one
validator, so that every table reports bad keys the same way; the tables are short dataclasses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import tomllib

from braver.errors import BraverError

SAMPLINGS = ("balanced", "natural")
MODES = ("patch", "tile")


@dataclass
class ModelSection:
    """Which network and its keywords for ``braver.models.create_model``."""

    name: str = "twopath"
    maxout_k: int = 2
    dropout: float = 0.5
    bias_from_frequencies: bool = True
    init: str = "paper"  # "paper": kernels U(-0.005, 0.005); "he": scaled by each layer's fan-in


@dataclass
class DataSection:
    """How patches are cut and batched, and how cases are split."""

    mode: str = "patch"  # "patch": the paper's one label per input; "tile": k x k labels
    tile: int = 1  # k: labelled pixels per side of one pass (mode "tile")
    batch_size: int = 128
    validation_fraction: float = 0.2
    min_validation_cases: int = 1
    # k-fold cross-validation: -1 splits by validation_fraction; 0 … folds - 1 validates that
    # fold of the seed's order (braver.data.sampling.split_cases)
    fold: int = -1
    folds: int = 5
    validation_patches: int = 4096
    seed: int = 0
    on_device: bool = True  # keep the volumes on the GPU when training on CUDA
    flip: bool = False  # training tiles mirrored / transposed at random (odd input sizes)
    intensity: float = 0.0  # per-tile, per-channel scale U(1 ± a) and shift U(± a); 0: off


@dataclass
class OptimSection:
    """SGD with momentum, the paper's learning-rate schedule, regularisation (paper 3.2, 4).

    The learning rate falls linearly from ``lr`` to ``lr · lr_decay`` over the first
    ``lr_saturate`` epochs of a stage, then stays (Pylearn2's ``LinearDecayOverEpoch``, which
    the paper's "decay factor 10^-1" names); momentum rises linearly from ``momentum_start`` to
    ``momentum_end`` over ``momentum_epochs`` epochs (Pylearn2's ``MomentumAdjustor``).
    """

    lr: float = 0.005
    lr_decay: float = 0.1  # the rate reached at lr_saturate, as a fraction of lr
    lr_saturate: int = 10  # epoch of a stage at which the linear decay reaches lr · lr_decay
    momentum_start: float = 0.5
    momentum_end: float = 0.9
    momentum_epochs: int = 10  # epochs over which momentum rises linearly
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float = 0.0  # 0: off; else each kernel's L2 norm is clipped to this
    weight_bound: float = 0.0  # 0: off; else every kernel weight is clipped to [-b, b]
    grad_clip: float = 0.0  # 0: off; else the gradients' global L2 norm is clipped to this
    class_weights: bool = True  # mode "tile": per-pixel weights that stand in for balancing
    class_weight_power: float = 1.0  # 1: balanced; below 1 softer (tile mode)
    divergence_retries: int = 2  # a diverged epoch rolls back and halves the rate this often
    spike_factor: float = 10.0  # a training loss this many times the stage's best or ln K: diverged


@dataclass
class StageSection:
    """One training stage: how many epochs of which patches, and what stays fixed."""

    epochs: int = 1
    sampling: str = "balanced"
    patches_per_epoch: int = 100_000
    lr: float | None = None  # None: continue from the optimiser section's value
    train: list[str] = field(default_factory=list)  # groups trained; empty: every group
    patience: int = 0  # early stopping on validation loss; 0: off
    # stage 2 only: at its start the output biases move by prior_shift · log(class frequency
    # / balanced frequency), the natural prior the paper's output biases carry; 0: off
    prior_shift: float = 0.0


@dataclass
class SelectSection:
    """Which weights a run keeps, chosen on whole validation volumes after training.

    Candidates: the stage-1 model (its best epoch), the stage-2 model, and the stage-2 model
    with a tempered prior (its output biases moved back by ``(1 − tempered) · log(natural /
    balanced frequency)``); the one with the highest mean Dice over the regions is kept.
    """

    by: str = "volume"  # "volume": compare the candidates; "last": keep stage 2 as trained
    cases: int = 5  # validation volumes to compare on (0: all)
    tempered: float = 0.5  # the tempered candidate keeps this share of the natural prior
    # The epoch each stage keeps (KeepBest): "dice", the highest mean patch Dice over the
    # regions, or "valid_loss", the lowest validation loss. On the realistic brain phantoms the
    # class-weighted validation loss was lowest at epoch 3 of 20 while patch Dice rose to
    # epoch 13 (bench/quality.py); on the easy and liver phantoms both pick the same epoch.
    epoch_by: str = "dice"


@dataclass
class ReportSection:
    """What a run writes for people to look at while it trains (``braver dashboard``)."""

    previews: bool = True  # prediction overlays of a few validation slices, per epoch
    preview_cases: int = 2
    preview_slices: int = 5
    preview_budget: float = (
        0.05  # previews take at most this share of training time; 0: every epoch
    )


@dataclass
class CascadeSection:
    """Cascades (paper 3.1.2): the first TwoPathCNN is trained alone with both stages of 3.2,
    then fixed (and run without dropout) while the second trains; ``joint``: trained as one
    network instead (the seed study's transfer setups)."""

    first_epochs: int = 1  # its balanced stage
    first_patches_per_epoch: int = 100_000
    first_stage2_epochs: int = 1  # its natural stage (output layer only); 0: skip
    # True: the cascade trains as one network, as the seed study trained its InputCascadeCNN:
    # no phase of the first network alone; its trainable layers learn from the cascade's loss
    joint: bool = False


@dataclass
class Recipe:
    """A whole training recipe."""

    name: str = "brain"
    kind: str = "brain"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    stage1: StageSection = field(default_factory=StageSection)
    stage2: StageSection = field(
        default_factory=lambda: StageSection(sampling="natural", train=["output"])
    )
    cascade: CascadeSection = field(default_factory=CascadeSection)
    report: ReportSection = field(default_factory=ReportSection)
    select: SelectSection = field(default_factory=SelectSection)
    # post-processing of whole volumes (braver.postprocess options; "auto": chosen on the
    # validation cases at the end of training)
    postprocess: dict[str, Any] = field(default_factory=dict)
    # how `--data` is prepared (braver.preprocess.PrepareSettings keys); phantoms keep their own
    prepare: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)  # file it came from (not written)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data

    def to_toml(self) -> str:
        """The resolved recipe as TOML (the run folder's ``recipe.toml``)."""
        return dump_toml(self.to_dict())

    def prepare_settings(self, **changes):
        """``[prepare]`` (with ``changes``) as ``braver.preprocess.PrepareSettings``."""
        from braver.preprocess import PrepareSettings

        try:
            return _build(PrepareSettings, {**self.prepare, **changes}, "prepare.", self.source)
        except BraverError as error:  # PrepareSettings' own checks name no file
            if error.path is not None:
                raise
            raise BraverError(f"[prepare]: {str(error).rstrip('.')}", self.source) from None

    def validate(self) -> Recipe:
        path = self.source
        checks = [
            ("data.mode", self.data.mode in MODES, f"one of {', '.join(MODES)}"),
            ("data.tile", self.data.tile >= 1, "a positive integer"),
            ("data.batch_size", self.data.batch_size >= 1, "a positive integer"),
            (
                "data.validation_fraction",
                0.0 <= self.data.validation_fraction < 1.0,
                "a fraction in [0, 1)",
            ),
            ("data.intensity", 0 <= self.data.intensity < 1, "in [0, 1)"),
            ("data.folds", self.data.folds >= 2, "an integer of 2 or more"),
            (
                "data.fold",
                -1 <= self.data.fold < self.data.folds,
                f"-1 (no folds) or a fold from 0 to {self.data.folds - 1}",
            ),
            ("optim.lr", self.optim.lr > 0, "positive"),
            ("optim.lr_decay", 0 < self.optim.lr_decay <= 1, "in (0, 1]"),
            ("optim.lr_saturate", self.optim.lr_saturate >= 1, "a positive integer"),
            ("optim.weight_bound", self.optim.weight_bound >= 0, "non-negative"),
            ("optim.grad_clip", self.optim.grad_clip >= 0, "non-negative"),
            ("optim.divergence_retries", self.optim.divergence_retries >= 0, "non-negative"),
            ("optim.spike_factor", self.optim.spike_factor > 1, "greater than 1"),
            ("optim.momentum_start", 0 <= self.optim.momentum_start < 1, "in [0, 1)"),
            ("optim.momentum_end", 0 <= self.optim.momentum_end < 1, "in [0, 1)"),
            ("optim.l1", self.optim.l1 >= 0, "non-negative"),
            ("optim.l2", self.optim.l2 >= 0, "non-negative"),
            ("optim.max_norm", self.optim.max_norm >= 0, "non-negative"),
            ("optim.class_weight_power", 0 <= self.optim.class_weight_power <= 1, "in [0, 1]"),
            ("model.maxout_k", self.model.maxout_k >= 1, "a positive integer"),
            ("select.by", self.select.by in ("volume", "last"), "one of volume, last"),
            ("select.cases", self.select.cases >= 0, "non-negative"),
            ("select.tempered", 0 <= self.select.tempered < 1, "in [0, 1)"),
            (
                "select.epoch_by",
                self.select.epoch_by in ("dice", "valid_loss"),
                "one of dice, valid_loss",
            ),
            ("report.preview_cases", self.report.preview_cases >= 0, "non-negative"),
            ("report.preview_slices", self.report.preview_slices >= 1, "a positive integer"),
            ("report.preview_budget", 0 <= self.report.preview_budget <= 1, "in [0, 1]"),
            ("model.dropout", 0 <= self.model.dropout < 1, "in [0, 1)"),
            ("model.init", self.model.init in ("paper", "he"), "one of paper, he"),
        ]
        for name in ("stage1", "stage2"):
            stage: StageSection = getattr(self, name)
            checks += [
                (f"{name}.epochs", stage.epochs >= 0, "a non-negative integer"),
                (f"{name}.sampling", stage.sampling in SAMPLINGS, f"one of {', '.join(SAMPLINGS)}"),
                (f"{name}.patches_per_epoch", stage.patches_per_epoch >= 1, "a positive integer"),
                (f"{name}.patience", stage.patience >= 0, "a non-negative integer"),
                (f"{name}.prior_shift", 0 <= stage.prior_shift <= 1, "in [0, 1]"),
            ]
        self.prepare_settings()  # unknown or bad [prepare] keys: one error naming the file
        from braver.postprocess import AUTO, PostprocessOptions

        PostprocessOptions.from_dict(
            {k: v for k, v in self.postprocess.items() if v != AUTO}, where=self.source
        )
        names = {f.name for f in fields(PostprocessOptions)}
        unknown = sorted(set(self.postprocess) - names)
        if unknown:
            raise BraverError(
                f"unknown key postprocess.{unknown[0]}", self.source, f"known: {', '.join(names)}"
            )
        for key, ok, expected in checks:
            if not ok:
                value = _get_dotted(self.to_dict(), key)
                raise BraverError(f"{key} = {value!r} must be {expected}", path, "fix the recipe")
        return self


def load_recipe(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> Recipe:
    """Read a recipe file, merge the ``[profile]`` table (e.g. ``phantom``), apply overrides.

    ``overrides`` are ``section.key=value`` strings; values are parsed as TOML
    (``3``, ``0.01``, ``true``, ``"text"``, ``["output"]``) and fall back to a bare string.
    """
    path = Path(path)
    return recipe_from_dict(read_recipe_file(path), path, overrides=overrides, profile=profile)


def read_recipe_file(path: str | Path) -> dict[str, Any]:
    """The TOML tables of a recipe file; a missing or broken file is one clear error."""
    path = Path(path)
    if not path.exists():
        raise BraverError("recipe not found", path, "pass a .toml file or a shipped recipe name")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BraverError(f"is not valid TOML ({error})", path, "fix the syntax") from None


def recipe_from_dict(
    data: dict[str, Any],
    source: str | Path | None = None,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    profile: str | None = None,
) -> Recipe:
    """Build and validate a ``Recipe`` from parsed TOML (see ``load_recipe``)."""
    data = dict(data)
    profiles = {k: data.pop(k) for k in PROFILES if k in data}
    if profile is not None and profile in profiles:
        data = _deep_merge(data, profiles[profile])
    for item in overrides:
        key, value = parse_override(item, source)
        _set_dotted(data, key, value)
    recipe = _build(Recipe, data, "", source)
    recipe.source = str(source) if source is not None else None
    return recipe.validate()


PROFILES = ("phantom",)


def shipped_recipe(name: str) -> Path:
    """Path of a recipe shipped in ``braver.recipes`` (``brain`` → ``brain.toml``)."""
    from importlib.resources import files

    path = Path(str(files("braver.recipes").joinpath(f"{name}.toml")))
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise BraverError(
            f"no shipped recipe named {name!r}",
            None,
            f"choose one of {', '.join(available)} or pass a .toml file",
        )
    return path


def parse_override(item: str, source: object = None) -> tuple[str, Any]:
    """``"stage1.epochs=3"`` → ``("stage1.epochs", 3)``."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BraverError(
            f"override {item!r} is not KEY=VALUE", None, "write e.g. --set stage1.epochs=3"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def _build(cls: type, data: Any, prefix: str, source: object) -> Any:
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(data, dict):
        raise BraverError(f"{where} must be a table", source, "fix the recipe")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise BraverError(
            f"unknown key {prefix}{unknown[0]}",
            source,
            f"known keys in {where}: {', '.join(known)}",
        )
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{prefix}{name}", source)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, source: object) -> Any:
    if is_dataclass(tp):
        return _build(tp, value, f"{key}.", source)
    origin, args = get_origin(tp), get_args(tp)
    if args and type(None) in args:  # X | None
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key, source)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise BraverError(f"{key} = {value!r} must be a list", source, "fix the recipe")
        return [_convert(args[0], v, key, source) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (
        not isinstance(value, tp) or (tp is int and isinstance(value, bool))
    ):
        raise BraverError(
            f"{key} = {value!r} must be {tp.__name__}", source, "fix the recipe or the --set value"
        )
    return value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise BraverError(f"override {key!r}: {part} is not a table", None, "check the key")
    node[parts[-1]] = value


def _get_dotted(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def dump_toml(data: dict[str, Any]) -> str:
    """Write a nested dict of scalars, lists and tables as TOML (enough for recipes)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items() if v is not None]
    for name, table in tables.items():
        lines += ["", f"[{name}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


# ---------------------------------------------------------------------------------------------
# Study recipes, read with the same typed machinery (unknown keys and values of the wrong type
# name the key and the file): the [variants] and [evaluation] tables of a prune recipe
# (recipes/prune.toml) and the [transfer] table of a liver recipe (recipes/liver.toml).


@dataclass
class PruneVariants:
    """``[variants]``: what ``braver prune`` runs when no variant option is given.

    ``identity`` is ``"each"`` (every layer that keeps its number of maps, alone) or a list of
    layer names; ``keep`` lists paths; ``keep_network`` lists networks (cascades only, skipped
    for a TwoPathCNN); ``switch``/``copy`` list pairs of layer names.
    """

    identity: str | list[str] = "each"
    keep: list[str] = field(default_factory=lambda: ["local", "global"])
    keep_network: list[str] = field(default_factory=lambda: ["second", "first"])
    switch: list[list[str]] = field(default_factory=list)
    copy: list[list[str]] = field(default_factory=list)


@dataclass
class PruneEvaluation:
    """``[evaluation]``: how many cases (0: all) and slices per forward pass (0: default)."""

    cases: int = 0
    batch_size: int = 0


@dataclass
class PruneRecipe:
    """A prune recipe: the default variants and how to evaluate them."""

    variants: PruneVariants = field(default_factory=PruneVariants)
    evaluation: PruneEvaluation = field(default_factory=PruneEvaluation)
    source: str | None = field(default=None, compare=False)

    def validate(self) -> PruneRecipe:
        from braver.surgery import NETWORKS, PATHS

        def names(value: Any) -> bool:
            return isinstance(value, list) and all(isinstance(n, str) and n.strip() for n in value)

        v, path = self.variants, self.source
        if not (v.identity == "each" or names(v.identity)):
            _bad("variants.identity", v.identity, '"each" or a list of layer names', path)
        for key, allowed in (("keep", PATHS), ("keep_network", NETWORKS)):
            value = getattr(v, key)
            if not all(n.split(".")[-1] in allowed for n in value):
                _bad(f"variants.{key}", value, f"a list of {' / '.join(allowed)}", path)
        for key in ("switch", "copy"):
            value = getattr(v, key)
            if not all(len(pair) == 2 for pair in value):
                _bad(
                    f"variants.{key}",
                    value,
                    'a list of pairs of layer names, e.g. [["first.output", "second.output"]]',
                    path,
                )
        for key in ("cases", "batch_size"):
            if getattr(self.evaluation, key) < 0:
                _bad(f"evaluation.{key}", getattr(self.evaluation, key), "0 or more", path)
        return self


def load_prune_recipe(path: str | Path | None = None) -> PruneRecipe:
    """Read a prune recipe (default: the shipped ``recipes/prune.toml``)."""
    path = Path(path) if path is not None else shipped_recipe("prune")
    recipe = _build(PruneRecipe, read_recipe_file(path), "", path)
    recipe.source = str(path)
    return recipe.validate()


@dataclass
class TransferSetupSpec:
    """One setup of a transfer study: a freeze value and the name shown in its table row."""

    freeze: str
    name: str | None = None  # default: "freeze <freeze>", or the seed setup's own name


@dataclass
class TransferSetups:
    """The setups run when no ``--freeze`` is given, per architecture."""

    twopath: list[TransferSetupSpec] = field(default_factory=list)
    cascade: list[TransferSetupSpec] = field(default_factory=list)


@dataclass
class TransferSection:
    """``[transfer]`` of a liver recipe: input-channel strategy, class-map weights, setups."""

    strategy: str = "sum"
    class_map: str = "reinit"
    baseline: bool = True  # the default setups end with the same network from scratch
    setups: TransferSetups = field(default_factory=TransferSetups)

    def validate(self, path: object = None) -> TransferSection:
        from braver.transfer import CLASS_MAP_STRATEGIES, STRATEGIES

        if self.strategy not in STRATEGIES:
            _bad("transfer.strategy", self.strategy, f"one of {', '.join(STRATEGIES)}", path)
        if self.class_map not in CLASS_MAP_STRATEGIES:
            _bad("transfer.class_map", self.class_map, f"one of {', '.join(CLASS_MAP_STRATEGIES)}", path)  # fmt: skip
        return self


def transfer_section(table: dict[str, Any], source: object = None) -> TransferSection:
    """The ``[transfer]`` table as a ``TransferSection``; a setup may be written as a bare freeze
    value (``"local"``) or as ``{ name = "...", freeze = "..." }``."""
    table = dict(table)
    setups = table.get("setups")
    if isinstance(setups, dict):
        table["setups"] = {
            kind: [{"freeze": item} if isinstance(item, str) else item for item in items]
            if isinstance(items, list)
            else items
            for kind, items in setups.items()
        }
    return _build(TransferSection, table, "transfer.", source).validate(source)


def _bad(key: str, value: Any, expected: str, path: object) -> None:
    raise BraverError(f"{key} = {value!r} must be {expected}", path, "fix the recipe")

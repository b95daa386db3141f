"""Recipes: the typed schema of a training run, loaded from TOML, with dotted overrides.

A recipe file is plain TOML whose tables mirror the dataclasses below. An optional
``[phantom]`` table holds a partial recipe merged over the base when training runs on the
built-in phantom set (no ``--data``): the paper's values stay in the base tables, the values
sized for a 2-core CPU live in one clearly separated place.

Unknown keys and values of the wrong type are errors that name the key and the file.
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
    validation_patches: int = 4096
    seed: int = 0
    on_device: bool = True  # keep the volumes on the GPU when training on CUDA
    flip: bool = False  # training tiles mirrored / transposed at random (odd input sizes)
    intensity: float = 0.0  # per-tile, per-channel scale U(1 ± a) and shift U(± a); 0: off


@dataclass
class OptimSection:
    """SGD with momentum, per-epoch learning-rate decay, and regularisation (paper 4.1)."""

    lr: float = 0.005
    lr_decay: float = 0.1  # multiplied into the learning rate after every epoch
    momentum_start: float = 0.5
    momentum_end: float = 0.9
    momentum_epochs: int = 10  # epochs over which momentum rises linearly
    l1: float = 0.0
    l2: float = 0.0
    max_norm: float = 0.0  # 0: off; else each kernel's L2 norm is clipped to this
    class_weights: bool = True  # mode "tile": per-pixel weights that stand in for balancing
    class_weight_power: float = 1.0  # 1: balanced; below 1 softer (tile mode)


@dataclass
class StageSection:
    """One training stage: how many epochs of which patches, and what stays fixed."""

    epochs: int = 1
    sampling: str = "balanced"
    patches_per_epoch: int = 100_000
    lr: float | None = None  # None: continue from the optimiser section's value
    train: list[str] = field(default_factory=list)  # groups trained; empty: every group
    patience: int = 0  # early stopping on validation loss; 0: off


@dataclass
class CascadeSection:
    """Cascades (paper 3.3): the first TwoPathCNN is trained alone, frozen, then the second."""

    first_epochs: int = 1
    first_patches_per_epoch: int = 100_000


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
    source: str | None = field(default=None, compare=False)  # file it came from (not written)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("source")
        return data

    def to_toml(self) -> str:
        """The resolved recipe as TOML (the run folder's ``recipe.toml``)."""
        return dump_toml(self.to_dict())

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
            ("optim.lr", self.optim.lr > 0, "positive"),
            ("optim.lr_decay", 0 < self.optim.lr_decay <= 1, "in (0, 1]"),
            ("optim.momentum_start", 0 <= self.optim.momentum_start < 1, "in [0, 1)"),
            ("optim.momentum_end", 0 <= self.optim.momentum_end < 1, "in [0, 1)"),
            ("optim.l1", self.optim.l1 >= 0, "non-negative"),
            ("optim.l2", self.optim.l2 >= 0, "non-negative"),
            ("optim.max_norm", self.optim.max_norm >= 0, "non-negative"),
            ("optim.class_weight_power", 0 <= self.optim.class_weight_power <= 1, "in [0, 1]"),
            ("model.maxout_k", self.model.maxout_k >= 1, "a positive integer"),
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
            ]
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

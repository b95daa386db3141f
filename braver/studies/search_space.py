"""Search spaces of ``braver tune``: TOML over dotted recipe keys, checked by the recipe schema.

::

    "optim.lr" = { low = 1e-4, high = 0.05, log = true }     # float range (log scale)
    "optim.momentum_epochs" = { low = 1, high = 10 }        # integer range (an int key)
    "model.init" = ["paper", "he"]                           # choices
    [phantom]                                               # replaces keys on the phantoms
    "data.batch_size" = [8, 16, 32]

Every value a key can take is applied to the base recipe through ``braver.recipe`` before a
study starts, so an unknown key, a wrong type or a value out of range is one error naming the
key and the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from braver.errors import BraverError
from braver.recipe import PROFILES, Recipe, recipe_from_dict

RANGE_KEYS = ("low", "high", "log", "step")


@dataclass(frozen=True)
class SpaceParam:
    """One searched recipe key: a float or integer range, or a list of choices."""

    key: str
    kind: str  # "float", "int" or "choice"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def suggest(self, trial) -> Any:
        """The trial's value for this key (Optuna's ``suggest_*``)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(
                self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return trial.suggest_categorical(self.key, list(self.choices))

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one this key can take (the base recipe's value, for trial 0)."""
        if self.kind == "choice":
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.step:
            steps = (value - self.low) / self.step
            if abs(steps - round(steps)) > 1e-9:
                return False
        return self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"key": self.key, "choices": list(self.choices)}
        out = {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        scale = " (log)" if self.log else ""
        return f"{self.key} in [{self.low:g}, {self.high:g}]{scale}"


@dataclass
class SearchSpace:
    """The searched keys of a study and the file they came from."""

    params: list[SpaceParam]
    source: str | None = None

    def suggest(self, trial) -> dict[str, Any]:
        return {p.key: p.suggest(trial) for p in self.params}

    def to_dict(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]

    def without(self, keys: Sequence[str]) -> tuple[SearchSpace, list[str]]:
        """The space less ``keys``, and which of them it had."""
        dropped = [p.key for p in self.params if p.key in keys]
        kept = [p for p in self.params if p.key not in keys]
        return SearchSpace(kept, self.source), dropped

    def base_values(self, recipe: Recipe) -> dict[str, Any]:
        """The recipe's own values of the searched keys that lie inside the space."""
        values = {}
        for param in self.params:
            value = _get_dotted(recipe.to_dict(), param.key)
            if param.contains(value):
                values[param.key] = value
        return values


def default_space_path() -> Path:
    """The shipped search space (``recipes/tune_space.toml``)."""
    from importlib.resources import files

    return Path(str(files("braver.recipes").joinpath("tune_space.toml")))


def load_space(path: str | Path, recipe: Recipe, profile: str | None = None) -> SearchSpace:
    """Read a search-space file and check every value it can give against ``recipe``'s schema.

    ``profile`` (e.g. ``phantom``) merges that table of the file over its base keys.
    """
    path = Path(path)
    if not path.exists():
        raise BraverError("search space not found", path, "pass a .toml file with --space")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise BraverError(f"is not valid TOML ({error})", path, "fix the syntax") from None
    profiles = {name: data.pop(name) for name in PROFILES if name in data}
    specs = dict(_flatten(data))
    if profile is not None and profile in profiles:
        if not isinstance(profiles[profile], dict):
            raise BraverError(f"[{profile}] must be a table", path, "fix the search space")
        specs.update(_flatten(profiles[profile]))
    if not specs:
        raise BraverError(
            "defines no parameter to search",
            path,
            'add e.g. "optim.lr" = { low = 1e-4, high = 0.05, log = true }',
        )
    params = [_parse_param(key, spec, recipe, path) for key, spec in specs.items()]
    return SearchSpace(params, str(path))


def _flatten(table: dict, prefix: str = ""):
    """``{"optim": {"lr": {...}}}`` and ``{"optim.lr": {...}}`` alike → ``("optim.lr", {...})``."""
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not any(k in value for k in RANGE_KEYS):
            yield from _flatten(value, f"{key}.")
        else:
            yield key, value


def _parse_param(key: str, spec: Any, recipe: Recipe, path: Path) -> SpaceParam:
    if isinstance(spec, list):
        if not spec:
            raise BraverError(f"{key} lists no choice", path, "give at least one value")
        for value in spec:
            if isinstance(value, list | dict):
                raise BraverError(
                    f"{key}: a choice must be a number, a string or a boolean, not {value!r}",
                    path,
                    "fix the search space",
                )
            apply_params(recipe, {key: value}, source=path)  # unknown key, type, range
        return SpaceParam(key, "choice", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise BraverError(
            f"{key} = {spec!r} must be a range {{ low = …, high = … }} or a list of choices",
            path,
            "fix the search space (fixed values belong in the recipe or --set)",
        )
    unknown = sorted(set(spec) - set(RANGE_KEYS))
    if unknown:
        raise BraverError(
            f"{key}: unknown range field {unknown[0]!r}",
            path,
            f"a range has {', '.join(RANGE_KEYS)}",
        )
    if "low" not in spec or "high" not in spec:
        raise BraverError(f"{key}: a range needs both low and high", path, "add the missing one")
    low, high = spec["low"], spec["high"]
    log, step = spec.get("log", False), spec.get("step")
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BraverError(f"{key}: {name} = {value!r} must be a number", path, "fix the range")
    if not isinstance(log, bool):
        raise BraverError(f"{key}: log = {log!r} must be true or false", path, "fix the range")
    if not low < high:
        raise BraverError(f"{key}: low = {low!r} must be below high = {high!r}", path, "fix it")
    if log and low <= 0:
        raise BraverError(f"{key}: a log range needs low > 0, not {low!r}", path, "fix it")
    if log and step is not None:
        raise BraverError(f"{key}: a log range takes no step", path, "drop log or step")
    if step is not None and step <= 0:
        raise BraverError(f"{key}: step = {step!r} must be positive", path, "fix it")
    try:
        current = _get_dotted(recipe.to_dict(), key)
    except (KeyError, TypeError):
        current = None  # an unknown key: the recipe schema names it just below
    if current is not None and (isinstance(current, bool) or not isinstance(current, int | float)):
        raise BraverError(
            f"{key} is not a number, so it takes a list of choices, not a range",
            path,
            f'write e.g. "{key}" = [{_literal(current)}]',
        )
    lowest = apply_params(recipe, {key: low}, source=path)  # unknown key, type, range
    apply_params(recipe, {key: high}, source=path)
    value = _get_dotted(lowest.to_dict(), key)
    kind = "int" if isinstance(value, int) else "float"
    if kind == "int" and step is not None and not isinstance(step, int):
        raise BraverError(f"{key}: step = {step!r} must be an integer", path, "fix the range")
    return SpaceParam(key, kind, low=low, high=high, log=log, step=step)


def apply_params(
    recipe: Recipe,
    params: dict[str, Any],
    *,
    source: str | Path | None = None,
    name: str | None = None,
) -> Recipe:
    """``recipe`` with dotted keys replaced (checked by the recipe schema; errors name
    ``source``), renamed to ``name`` when given."""
    data = recipe.to_dict()
    if name is not None:
        data["name"] = name
    overrides = [f"{key}={_literal(value)}" for key, value in params.items()]
    return recipe_from_dict(data, source, overrides=overrides)


def _literal(value: Any) -> str:
    """A value as TOML text (for ``recipe_from_dict``'s overrides)."""
    return json.dumps(value)


def _get_dotted(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data

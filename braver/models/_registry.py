"""Model registry in the style of timm: ``@register_model`` factories and ``create_model``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from braver.errors import BraverError


@dataclass(frozen=True)
class ModelEntry:
    """One registered factory."""

    name: str
    factory: Callable[..., nn.Module]
    aliases: tuple[str, ...]
    description: str

    @property
    def keywords(self) -> tuple[str, ...]:
        return tuple(inspect.signature(self.factory).parameters)


_MODELS: dict[str, ModelEntry] = {}
_LOOKUP: dict[str, str] = {}  # normalised name or alias → registry name


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def register_model(
    factory: Callable[..., nn.Module] | None = None, *, aliases: tuple[str, ...] = ()
) -> Any:
    """Register ``factory`` under its function name (usable bare or with ``aliases=``)."""

    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        doc = (fn.__doc__ or "").strip().splitlines()
        entry = ModelEntry(name, fn, tuple(aliases), doc[0] if doc else "")
        for key in (name, *aliases):
            other = _LOOKUP.get(_normalise(key))
            if other is not None and other != name:
                raise ValueError(f"model name {key!r} is already registered for {other!r}")
            _LOOKUP[_normalise(key)] = name
        _MODELS[name] = entry
        return fn

    return register(factory) if factory is not None else register


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (or an alias such as ``TwoPathCNN``)."""
    key = _LOOKUP.get(_normalise(str(name)))
    if key is None:
        valid = ", ".join(f"{e.name} ({', '.join(e.aliases)})" for e in _MODELS.values())
        raise BraverError(f"unknown model {name!r}", hint=f"choose one of: {valid}")
    return _MODELS[key]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; ``create_model(**model.config)`` rebuilds ``model``.

    Keywords every model takes: ``in_channels`` (4), ``num_classes`` (4), ``maxout_k`` (2),
    ``dropout`` (0.2), ``class_frequencies`` (None: output biases 0), ``bias`` (True),
    ``init_range`` (0.005: kernels U(−a, a)).
    """
    entry = model_entry(name)
    allowed = entry.keywords
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise BraverError(
            f"model {entry.name!r} takes no keyword {', '.join(map(repr, unknown))}",
            hint=f"its keywords are: {', '.join(allowed)}",
        )
    return entry.factory(**kwargs)

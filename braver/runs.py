"""Run folders: everything a later command needs from a training run, in one directory.

Layout of ``runs/<recipe>-<YYYYmmdd-HHMMSS>/``::

    run.json            what kind of run (``brain``/``liver``/…), the model config (keywords of
                        ``braver.models.create_model``), label scheme, channels, the cache and
                        dataset it was trained on, validation case ids, prepare settings
    recipe.toml         the resolved recipe
    model.safetensors   weights (loads without executing code)
    history.csv, learning_curves.png, metrics.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from braver.atomic import atomic_path, write_json
from braver.data.labels import LabelScheme
from braver.errors import BraverError

if TYPE_CHECKING:
    import torch

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class RunInfo:
    """The contents of ``run.json``."""

    kind: str
    model: dict[str, Any]
    label_scheme: dict[str, Any]
    channels: list[str]
    cache: str | None = None
    data: str | None = None
    validation_cases: list[str] = field(default_factory=list)
    prepare: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> LabelScheme:
        return LabelScheme.from_json(self.label_scheme)


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``runs_dir/<name>-<UTC timestamp>`` (a suffix keeps two runs in a second apart)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(runs_dir) / f"{name}-{stamp}"
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    folder.mkdir(parents=True)
    return folder


def save_run_info(folder: str | Path, info: RunInfo) -> Path:
    return write_json(Path(folder) / RUN_FILE, info.__dict__)


def load_run_info(folder: str | Path) -> RunInfo:
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.exists():
        raise BraverError(
            "is not a braver run folder (no run.json)",
            folder,
            "pass a folder written by 'braver train' or 'braver transfer'",
        )
    try:
        return RunInfo(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise BraverError(
            f"run.json cannot be read ({error})", path, "train again or restore the file"
        ) from None


def save_weights(folder: str | Path, model: torch.nn.Module) -> Path:
    """Write the model's state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    target = Path(folder) / WEIGHTS_FILE
    with atomic_path(target) as tmp:
        save_file(state, str(tmp))
    return target


def load_model(folder: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, RunInfo]:
    """Rebuild the model of a run from ``run.json`` and load its safetensors weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from braver.models import create_model

    folder = Path(folder)
    info = load_run_info(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise BraverError(
            "has no model.safetensors",
            folder,
            "the run did not finish; train again or pass another run",
        )
    model = create_model(**info.model)
    try:
        state = load_file(str(weights), device=device)
    except (SafetensorError, OSError) as error:
        raise BraverError(
            f"weights cannot be read ({error})", weights, "the file is damaged; train again"
        ) from None
    model.load_state_dict(state)
    return model.to(device).eval(), info


def find_latest_run(runs_dir: str | Path, kind: str | None = None) -> Path | None:
    """The most recently created finished run under ``runs_dir`` (of ``kind``, if given)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    best: tuple[float, Path] | None = None
    for path in runs_dir.glob(f"*/{RUN_FILE}"):
        folder = path.parent
        if not (folder / WEIGHTS_FILE).exists():
            continue
        if kind is not None:
            try:
                if json.loads(path.read_text()).get("kind") != kind:
                    continue
            except json.JSONDecodeError:
                continue
        mtime = (folder / WEIGHTS_FILE).stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, folder)
    return best[1] if best else None


def resolve_run(run: str | Path | None, runs_dir: str | Path, kind: str, command: str) -> Path:
    """RUN given → check it; RUN omitted → the latest ``kind`` run, or a message saying what to run."""
    if run is not None:
        load_run_info(run)
        return Path(run)
    latest = find_latest_run(runs_dir, kind)
    if latest is None:
        raise BraverError(
            f"no finished {kind} run",
            runs_dir,
            f"run 'braver train {kind}' first, or pass RUN to '{command}'",
        )
    return latest


def validation_cache(folder: str | Path, info: RunInfo, hint: str):
    """The run's prepared cache, checked to exist and to list validation cases.

    ``hint`` says what to do instead (each command offers its own ``--data``).
    """
    from braver.data.cache import Cache

    run_file = Path(folder) / RUN_FILE
    if not info.cache or not info.validation_cases:
        raise BraverError("records no cache with validation cases", run_file, hint)
    cache_path = Path(info.cache)
    if not cache_path.exists():
        raise BraverError(
            f"the run's cache {cache_path} is gone",
            run_file,
            f"prepare it again ('braver data prepare') or {hint}",
        )
    return Cache.open(cache_path)


def load_run(
    folder: str | Path,
    *,
    device: str = "cpu",
    cache: str | Path | None = None,
    progress: bool = True,
):
    """A run folder back as a ready ``BraverLearner`` (weights, recipe, data), without pickle.

    The model is rebuilt from ``run.json`` and its safetensors weights; the DataLoaders are
    the run's own (its recipe's patch settings, its training and validation cases) on its
    prepared cache, or on ``cache`` when the data has moved. ``learn.predict_case``,
    ``learn.evaluate_volumes``, ``learn.show_results`` and further fits work on it.
    For the network alone, ``load_model(folder)``.
    """
    from braver.data.cache import Cache
    from braver.recipe import load_recipe
    from braver.train.compose import recipe_dataloaders, recipe_learner

    folder = Path(folder)
    model, info = load_model(folder, device=device)
    recipe_file = folder / "recipe.toml"
    if not recipe_file.exists():
        raise BraverError("has no recipe.toml", folder, "load the network with load_model")
    recipe = load_recipe(recipe_file)
    root = Path(cache) if cache is not None else (Path(info.cache) if info.cache else None)
    if root is None or not root.exists():
        raise BraverError(
            f"the run's cache {root} is not there",
            folder / RUN_FILE,
            "pass cache= (a prepared copy of the data) or use load_model(folder)",
        )
    prepared = Cache.open(root)
    train_cases = list(info.extra.get("train_cases", []))
    valid_cases = list(info.validation_cases)
    if not train_cases:
        labelled = {c for c in prepared.case_ids if prepared.case(c).has_label}
        train_cases = sorted(labelled - set(valid_cases))
    dls = recipe_dataloaders(
        recipe, prepared, train_cases, valid_cases, model.input_sizes, device=device
    )
    learn = recipe_learner(recipe, dls, model.train(), path=folder, progress=progress)
    learn.run_info = info
    return learn

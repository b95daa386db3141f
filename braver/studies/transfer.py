"""``braver transfer liver``: a trained brain network reused on liver CT, one setup per freeze.

A *setup* is one training run on the liver data that starts from the brain network adapted
by :func:`braver.transfer.adapt_for_transfer` (image channels by a named strategy, output
layers re-initialised for background/liver/tumour) and keeps some groups frozen in every
phase. The *baseline* trains the same architecture from scratch. Every setup writes an
ordinary run folder (kind ``liver``), so ``braver evaluate`` and ``braver predict`` work on it;
the study writes the comparison (one row per setup) as a rich table, CSV, JSON and a PNG.

Freeze values (``--freeze``; a comma list freezes several together):

* ``local``, ``global``: the paths of every network; ``output``: the output layer(s);
* ``both``: every group but the output (``local,global``); ``none``: fine-tune everything;
* ``first``, ``second``: a whole network of a cascade; ``first.local`` … and layer names
  (``braver.models.naming``).

Parameters that the adaptation re-initialised stay trainable whatever is frozen: they start
from nothing. That is the output layer(s), and in a cascade the second network's weights on the
first network's class map (5 brain classes → 3 liver classes): when that network is frozen,
only those input channels of its first layers learn (:class:`FrozenSlices` restores the others
after every step). In the seed's InputCascadeCNN "local scale" is the 33×33 second network (freeze
``first``) and "global scale" the 65×65 first network (freeze ``second``).

The recipe (``recipes/liver.toml``) is a training recipe plus two tables read here:
``[transfer]`` (strategy, class_map, baseline, the default setups per architecture) and
``[prepare]`` (preprocessing of ``--data``, e.g. the CT window).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from rich.console import Console

from braver.errors import BraverError
from braver.recipe import Recipe, parse_override, read_recipe_file, recipe_from_dict

PRESETS = {"both": ["local", "global"], "none": []}
TABLES = ("transfer", "prepare")
# the comparison's columns that the bar chart shows
CHART = ("train_accuracy", "valid_accuracy", "liver_dice", "tumor_dice")


@dataclass
class SetupSpec:
    """One setup as written in the recipe or on the command line."""

    freeze: str  # "local", "first,output", "none", …
    name: str | None = None  # label in the table (default: "freeze <freeze>")


@dataclass
class TransferSettings:
    """The ``[transfer]`` and ``[prepare]`` tables of a liver recipe."""

    strategy: str = "sum"
    class_map: str = "reinit"
    baseline: bool = True  # the default setups include the from-scratch baseline
    setups: dict[str, list[SetupSpec]] = field(default_factory=dict)  # "twopath"/"cascade"
    prepare: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


@dataclass
class Setup:
    """A setup resolved against a model: the groups it freezes."""

    name: str
    freeze: list[str]
    spec: str
    baseline: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "setup"


def load_liver_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), profile: str | None = None
) -> tuple[Recipe, TransferSettings]:
    """The training recipe and the transfer settings of a liver recipe file.

    ``overrides`` (``--set``) may also name ``transfer.*`` and ``prepare.*`` keys.
    """
    path = Path(path)
    data = read_recipe_file(path)
    tables = {name: dict(data.pop(name, {})) for name in TABLES}
    rest = []
    for item in overrides:
        key, value = parse_override(item, path)
        table, _, name = key.partition(".")
        if table in TABLES and name:
            tables[table][name] = value
        else:
            rest.append(item)
    recipe = recipe_from_dict(data, path, overrides=rest, profile=profile)
    return recipe, _settings(tables["transfer"], tables["prepare"], path)


def _settings(table: dict, prepare: dict, path: Path) -> TransferSettings:
    from braver.preprocess import PrepareSettings
    from braver.transfer import CLASS_MAP_STRATEGIES, STRATEGIES

    known = {"strategy", "class_map", "baseline", "setups"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise BraverError(
            f"unknown key transfer.{unknown[0]}", path, f"known keys: {', '.join(sorted(known))}"
        )
    settings = TransferSettings(source=str(path))
    settings.strategy = str(table.get("strategy", settings.strategy))
    settings.class_map = str(table.get("class_map", settings.class_map))
    if settings.strategy not in STRATEGIES:
        raise BraverError(
            f"transfer.strategy = {settings.strategy!r} is not a strategy",
            path,
            f"choose one of: {', '.join(STRATEGIES)}",
        )
    if settings.class_map not in CLASS_MAP_STRATEGIES:
        raise BraverError(
            f"transfer.class_map = {settings.class_map!r} is not a class-map strategy",
            path,
            f"choose one of: {', '.join(CLASS_MAP_STRATEGIES)}",
        )
    baseline = table.get("baseline", settings.baseline)
    if not isinstance(baseline, bool):
        raise BraverError(f"transfer.baseline = {baseline!r} must be true or false", path)
    settings.baseline = baseline
    setups = table.get("setups", {})
    if not isinstance(setups, dict):
        raise BraverError("transfer.setups must be a table", path, "see recipes/liver.toml")
    for kind, items in setups.items():
        if kind not in ("twopath", "cascade"):
            raise BraverError(
                f"unknown key transfer.setups.{kind}", path, "known keys: twopath, cascade"
            )
        settings.setups[kind] = [
            _setup_spec(item, f"transfer.setups.{kind}", path) for item in items
        ]
    try:
        PrepareSettings.from_dict(_tuples(prepare))
    except BraverError as error:
        raise BraverError(f"[prepare]: {error}", path, "fix the recipe") from None
    except TypeError as error:
        raise BraverError(f"[prepare]: {error}", path, "fix the recipe") from None
    settings.prepare = prepare
    return settings


def _tuples(prepare: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in prepare.items()}


def _setup_spec(item: Any, key: str, path: Path) -> SetupSpec:
    if isinstance(item, str):
        return SetupSpec(item)
    if (
        isinstance(item, dict)
        and isinstance(item.get("freeze"), str)
        and set(item)
        <= {
            "freeze",
            "name",
        }
    ):
        return SetupSpec(item["freeze"], item.get("name"))
    raise BraverError(
        f"{key}: {item!r} is not a setup",
        path,
        'write a freeze value ("local") or { name = "local scale", freeze = "first" }',
    )


def is_cascade(model) -> bool:
    return hasattr(model, "first") and hasattr(model, "second")


def resolve_freeze(model, value: str) -> list[str]:
    """The groups one ``--freeze`` value freezes (presets expanded, every name checked)."""
    from braver.models.naming import group_names, resolve_group, weight_layers

    groups: list[str] = []
    for name in (n.strip() for n in value.split(",")):
        if not name:
            continue
        for group in PRESETS.get(name, [name]):
            try:
                resolve_group(model, group)
            except BraverError as error:
                raise BraverError(
                    f"--freeze {name!r}: not a group or layer of this "
                    f"{model.config['name']} network",
                    hint=f"presets: both, none; groups: {', '.join(group_names(model))}; "
                    f"layers: {', '.join(weight_layers(model))}"
                    + (f" ({error})" if "matches several" in str(error) else ""),
                ) from None
            if group not in groups:
                groups.append(group)
    return groups


def plan_setups(
    model,
    freeze: list[str] | None,
    baseline: bool,
    settings: TransferSettings,
) -> list[Setup]:
    """The setups to run: the ``--freeze`` values (or the recipe's defaults for this
    architecture), then the baseline when asked for. Every name is checked first."""
    if freeze:
        specs = [SetupSpec(v) for v in freeze]
    else:
        kind = "cascade" if is_cascade(model) else "twopath"
        specs = settings.setups.get(kind, [])
        baseline = baseline or settings.baseline
        if not specs and not baseline:
            raise BraverError(
                f"the recipe lists no default setups for a {kind} network",
                settings.source,
                "pass --freeze GROUP, or add transfer.setups." + kind,
            )
    setups = []
    for spec in specs:
        groups = resolve_freeze(model, spec.freeze)
        name = spec.name or f"freeze {spec.freeze.replace(',', '+')}"
        setups.append(Setup(name, groups, spec.freeze))
    if baseline:
        setups.append(Setup("baseline (from scratch)", [], "none", baseline=True))
    names = [s.name for s in setups]
    for i, setup in enumerate(setups):  # repeated names get a number
        if names.count(setup.name) > 1:
            setup.name = f"{setup.name} #{names[: i + 1].count(setup.name)}"
    return setups


def frozen_slices(model, freeze: list[str], description: dict) -> dict[str, list[int]]:
    """Partly re-initialised weights inside frozen groups: the input channels that keep their
    transferred values (a cascade's second network: its image channels, while its weights on
    the first network's new class map learn)."""
    from braver.train.callbacks import group_parameters
    from braver.transfer import input_layout

    frozen = set(group_parameters(model, freeze)) if freeze else set()
    layout = input_layout(model)
    slices = {}
    for name in description["partly_reinitialised"]:
        if name not in frozen:
            continue
        channels, start = [], 0
        for kind, count in layout[name.rsplit(".", 1)[0]]:
            if kind != "class_map":
                channels += list(range(start, start + count))
            start += count
        slices[name] = channels
    return slices


class FrozenSlices(Callback):
    """Keeps some input channels of trainable weights bit-identical: restores them after every
    optimiser step (weight decay and momentum included)."""

    order = 90  # after every callback that changes weights in after_step

    def __init__(self, slices: dict[str, list[int]]):
        self.slices = slices
        self.saved: dict[str, tuple] = {}

    def bind(self, model) -> None:
        params = dict(model.named_parameters())
        self.saved = {
            name: (params[name], params[name].detach()[:, channels].clone(), channels)
            for name, channels in self.slices.items()
        }

    def frozen_count(self, param) -> int:
        for p, values, _ in self.saved.values():
            if p is param:
                return values.numel()
        return 0

    def after_step(self):
        import torch

        with torch.no_grad():
            for param, values, channels in self.saved.values():
                param[:, channels] = values.to(param.device)


class TrainRecord(Callback):
    """Per epoch: accuracy on the training batches and the process's CPU seconds (robust to
    other jobs sharing the CPU, unlike wall time); which parameters were trained."""

    order = 60  # before History (65), after the Recorder

    def __init__(self, slices: FrozenSlices | None = None):
        self.slices = slices
        self.accuracies: list[float] = []
        self.cpu_seconds: list[float] = []
        self.trained: dict[int, int] = {}
        self.correct = self.total = 0

    def before_fit(self):
        for param in self.learn.model.parameters():
            if param.requires_grad:
                frozen = self.slices.frozen_count(param) if self.slices else 0
                self.trained[id(param)] = param.numel() - frozen

    def before_epoch(self):
        self.correct = self.total = 0
        self.cpu_start = time.process_time()

    def after_batch(self):
        if not self.training:
            return
        pred, target = self.learn.pred, self.learn.y
        predicted = pred.argmax(1)
        self.correct = self.correct + (predicted == target).sum()
        self.total += target.numel()

    def after_epoch(self):
        correct = float(self.correct)
        self.accuracies.append(correct / self.total if self.total else math.nan)
        self.cpu_seconds.append(round(time.process_time() - self.cpu_start, 2))

    @property
    def trained_parameters(self) -> int:
        return sum(self.trained.values())


@dataclass
class StudyResult:
    folder: Path
    rows: list[dict]


def run_study(
    recipe: Recipe,
    settings: TransferSettings,
    setups: list[Setup],
    *,
    brain_run: Path,
    cache: Path,
    out: Path,
    device: str = "cpu",
    data: Path | None = None,
    strategy: str | None = None,
    console: Console | None = None,
    progress: bool = False,
    study_folder: Path | None = None,
) -> StudyResult:
    """Train every setup (one run folder each) and write the comparison to the study folder."""
    from braver.data.cache import Cache
    from braver.runs import load_model, new_run_dir

    brain, brain_info = load_model(brain_run, device="cpu")
    cache_obj = Cache.open(cache)
    strategy = strategy or settings.strategy
    folder = study_folder or new_run_dir(out, f"transfer-{recipe.kind}")
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta = {
        "source_run": str(brain_run),
        "source_model": brain.config,
        "strategy": strategy,
        "class_map": settings.class_map,
        "recipe": settings.source,
        "cache": str(cache),
        "data": str(data) if data is not None else None,
        "device": device,
        "setups": [{"name": s.name, "freeze": s.freeze, "baseline": s.baseline} for s in setups],
    }
    for i, setup in enumerate(setups, 1):
        if console is not None:
            console.rule(f"[bold]{i}/{len(setups)}: {setup.name}[/]")
        run = train_setup(
            setup,
            recipe,
            brain,
            brain_run,
            cache_obj,
            out=out,
            device=device,
            data=data,
            strategy=strategy,
            class_map=settings.class_map,
            console=console,
            progress=progress,
        )
        rows.append(comparison_row(setup, run))
        write_comparison(folder, rows, meta, console=None)
    write_comparison(folder, rows, meta, console=console)
    return StudyResult(folder, rows)


def train_setup(
    setup: Setup,
    recipe: Recipe,
    brain,
    brain_run: Path,
    cache,
    *,
    out: Path,
    device: str,
    data: Path | None,
    strategy: str,
    class_map: str,
    console: Console | None,
    progress: bool,
) -> Path:
    """One setup → one run folder (kind ``liver``)."""
    from braver.models import create_model
    from braver.train import train_from_recipe
    from braver.transfer import adapt_for_transfer

    in_channels, num_classes = len(cache.channels), cache.scheme.num_classes
    config = brain.config
    recipe = replace(
        recipe,
        name=f"{recipe.name}-{setup.slug}",
        model=replace(
            recipe.model,
            name=config["name"],
            maxout_k=config["maxout_k"],
            dropout=config["dropout"],
            init=config.get("init", recipe.model.init),
        ),
    )
    extra: dict[str, Any] = {
        "transfer": {
            "setup": setup.name,
            "freeze": setup.freeze,
            "source_run": None if setup.baseline else str(brain_run),
            "architecture_from": str(brain_run),
            "strategy": None if setup.baseline else strategy,
            "class_map": None if setup.baseline else class_map,
            "baseline": setup.baseline,
        }
    }
    if setup.baseline:
        keep: list[str] = []

        def build(frequencies):
            return create_model(
                **{
                    **config,
                    "in_channels": in_channels,
                    "num_classes": num_classes,
                    "class_frequencies": frequencies,
                }
            )

    keeper = FrozenSlices({})
    if not setup.baseline:
        probe, description = adapt_for_transfer(
            brain, in_channels, num_classes, strategy, class_map=class_map
        )
        keep = [*description["reinitialised"], *description["partly_reinitialised"]]
        extra["transfer"]["kept_trainable"] = keep
        keeper = FrozenSlices(frozen_slices(probe, setup.freeze, description))
        extra["transfer"]["frozen_slices"] = {
            name: f"input channels {channels} kept frozen"
            for name, channels in keeper.slices.items()
        }

        def build(frequencies):
            model, description = adapt_for_transfer(
                brain, in_channels, num_classes, strategy,
                class_frequencies=frequencies, class_map=class_map,
            )  # fmt: skip
            extra["transfer"]["description"] = description
            keeper.bind(model)
            return model

    record = TrainRecord(keeper)
    run = train_from_recipe(
        recipe,
        cache=cache,
        out=out,
        device=device,
        data=data,
        console=console,
        progress=progress,
        model=build,
        freeze=setup.freeze,
        keep_trainable=keep,
        run_extra=extra,
        callbacks=[record, keeper],
    )
    _record_training(run, record)
    return run


def _record_training(run: Path, record: TrainRecord) -> None:
    """Train accuracy per epoch into history.csv (and the curves), the totals into run.json
    and metrics.json."""
    import json

    from braver.atomic import write_json
    from braver.report import plot_learning_curves
    from braver.runs import load_run_info, save_run_info
    from braver.train.callbacks import read_history, write_history

    history = run / "history.csv"
    rows = read_history(history)
    if rows and record.accuracies:
        for row, value in zip(rows, record.accuracies, strict=False):
            row["train_patch_accuracy"] = value
        write_history(history, rows)
        plot_learning_curves(history, run / "learning_curves.png")
    info = load_run_info(run)
    info.extra["transfer"]["trained_parameters"] = record.trained_parameters
    info.extra["transfer"]["cpu_seconds_per_epoch"] = record.cpu_seconds
    save_run_info(run, info)
    metrics_path = run / "metrics.json"
    if metrics_path.exists():
        metrics = json.loads(metrics_path.read_text())
        if record.accuracies:
            metrics.setdefault("patch", {})["train_patch_accuracy"] = record.accuracies[-1]
        metrics["trained_parameters"] = record.trained_parameters
        write_json(metrics_path, metrics)


def comparison_row(setup: Setup, run: Path) -> dict:
    """One row of the comparison from a finished setup's run folder."""
    import json

    from braver.runs import load_run_info
    from braver.train.callbacks import read_history

    info = load_run_info(run)
    metrics = json.loads((run / "metrics.json").read_text())
    history = read_history(run / "history.csv")
    seconds = [_float(r.get("time")) for r in history]
    seconds = [s for s in seconds if not math.isnan(s)]
    last = history[-1] if history else {}
    cpu = info.extra["transfer"].get("cpu_seconds_per_epoch") or []
    return {
        "setup": setup.name,
        "freeze": ", ".join(setup.freeze) or "none",
        "trainable_parameters": int(info.extra["transfer"]["trained_parameters"]),
        "epochs": len(history),
        "seconds_per_epoch": round(sum(seconds) / len(seconds), 2) if seconds else None,
        "cpu_seconds_per_epoch": round(sum(cpu) / len(cpu), 2) if cpu else None,
        "train_seconds": info.extra.get("train_seconds"),
        "train_accuracy": _float(last.get("train_patch_accuracy")),
        "valid_accuracy": _float(last.get("patch_accuracy")),
        "liver_dice": metrics.get("liver_dice"),
        "tumor_dice": metrics.get("tumor_dice"),
        "run": str(run),
    }


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


SHOWN = {  # terminal table: column → heading (the files keep every column)
    "setup": "setup",
    "freeze": "frozen",
    "trainable_parameters": "trained params",
    "seconds_per_epoch": "s / epoch",
    "cpu_seconds_per_epoch": "CPU s / epoch",
    "train_accuracy": "train acc",
    "valid_accuracy": "valid acc",
    "liver_dice": "liver Dice",
    "tumor_dice": "tumour Dice",
}


def write_comparison(folder: Path, rows: list[dict], meta: dict, console: Console | None) -> None:
    """transfer.csv, transfer.json (rows + how they were made), transfer.png; the table is
    printed when a console is given."""
    import io

    from braver.report import plot_bars, rich_table, write_table

    title = f"Transfer {Path(meta['source_run']).name} → liver ({meta['strategy']} channels)"
    write_table(
        rows,
        folder,
        "transfer",
        title=title,
        json_data={**meta, "rows": rows, "written": time.strftime("%Y-%m-%d %H:%M:%S")},
        console=Console(file=io.StringIO(), width=200),
    )
    plot_bars(rows, list(CHART), folder / "transfer.png", label_key="setup", title=title)
    if console is not None:
        shown = [{SHOWN[k]: row.get(k) for k in SHOWN} for row in rows]
        console.print(rich_table(shown, title))
        for row in rows:
            console.print(f"  {row['setup']}: {row['run']}", highlight=False)


__all__ = [
    "PRESETS",
    "Setup",
    "SetupSpec",
    "StudyResult",
    "TrainRecord",
    "TransferSettings",
    "comparison_row",
    "load_liver_recipe",
    "plan_setups",
    "resolve_freeze",
    "run_study",
    "train_setup",
]

"""``braver transfer liver``: a trained brain network reused on liver CT, one setup per freeze.

A *setup* is one training run on the liver data that starts from the brain network adapted
by :func:`braver.transfer.adapt_for_transfer` (image channels by a named strategy, output
layers re-initialised for background/liver/tumour) and keeps some groups frozen in every
stage. The *baseline* trains the same architecture from scratch. Every setup writes an
ordinary run folder (kind ``liver``), so ``braver evaluate`` and ``braver predict`` work on it;
the study writes the comparison (one row per setup) as a rich table, CSV, JSON and a PNG.

Freeze values (``--freeze``; a comma list freezes several together):

* ``local``, ``global``: the paths. On a TwoPathCNN ``local`` freezes its local path (the 7×7
  and 3×3 convolutions) and ``global`` its 13×13 path; on a cascade they freeze that path in
  *both* networks (``first.local`` and ``second.local``). ``output``: the output layer(s);
* ``both``: every group but the output (``local,global``); ``none``: fine-tune everything;
* ``first``, ``second``: a whole network of a cascade; ``first.local`` … and layer names
  (``braver.models.naming``);
* the seed study's four setups (cascades), named for what trains (:data:`SEED_SETUPS`):
  ``seed-local-output`` (the seed's "local scale": only the 33×33 second network's output layer
  trains), ``seed-global-output`` ("global scale": only the first network's output layer),
  ``seed-both-outputs`` ("global & local scale") and ``seed-e2e`` (everything). Every feature
  layer of both networks is frozen, the second network's weights on the class map included;
  a frozen output layer keeps the brain weights of its first classes (``keep_outputs`` in
  :mod:`braver.transfer`) and the class-map weights are kept (``class_map = "keep"``), since
  a frozen layer re-initialised would learn nothing. As the seed did, the cascade trains as one
  network (``cascade.joint``): what a setup trains learns from the cascade's loss (the first
  network's output layer through the frozen second network), with no phase of the first
  network alone. Their rows carry the seed's own figures.

Otherwise, parameters that the adaptation re-initialised stay trainable whatever is frozen:
they start from nothing. That is the output layer(s), and in a cascade the second network's
weights on the first network's class map (5 brain classes → 3 liver classes): when that
network is frozen, only those input channels of its first layers learn (:class:`FrozenSlices`
restores the others after every step).

The recipe (``recipes/liver.toml``) is a training recipe plus two tables read here:
``[transfer]`` (:class:`braver.recipe.TransferSection`: strategy, class_map, baseline, the
default setups per architecture) and ``[prepare]`` (:class:`braver.preprocess.PrepareSettings`
for ``--data``, e.g. the CT window and normalisation).

Length: planning (which setups, from which run) and running a study with its table; setups
and the training of one setup are in transfer_setups and transfer_training.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from braver.errors import BraverError
from braver.preprocess import PrepareSettings
from braver.recipe import (
    Recipe,
    TransferSection,
    _build,
    _set_dotted,
    parse_override,
    read_recipe_file,
    recipe_from_dict,
    shipped_recipe,
    transfer_section,
)
from braver.studies.transfer_setups import (
    PRESETS,
    SEED_SETUPS,
    SeedSetup,
    Setup,
    SetupSpec,
    plan_setups,
    resolve_freeze,
    seed_setup,
)
from braver.studies.transfer_training import TrainRecord, train_setup

TABLES = ("transfer", "prepare")
# the comparison's columns that the bar chart shows
CHART = ("train_accuracy", "valid_accuracy", "liver_dice", "tumor_dice")


@dataclass
class TransferSettings:
    """The ``[transfer]`` and ``[prepare]`` tables of a liver recipe."""

    transfer: TransferSection = field(default_factory=TransferSection)
    prepare: PrepareSettings = field(default_factory=PrepareSettings)
    source: str | None = None

    @property
    def strategy(self) -> str:
        return self.transfer.strategy

    @property
    def class_map(self) -> str:
        return self.transfer.class_map

    @property
    def baseline(self) -> bool:
        return self.transfer.baseline


def load_liver_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), profile: str | None = None
) -> tuple[Recipe, TransferSettings]:
    """The training recipe and the transfer settings of a liver recipe file.

    ``overrides`` (``--set``) may also name ``transfer.*`` and ``prepare.*`` keys. Unknown
    keys and values of the wrong type are errors that name the key and the file.
    """
    path = Path(path)
    data = read_recipe_file(path)
    tables = {name: dict(data.pop(name, {})) for name in TABLES}
    rest = []
    for item in overrides:
        key, value = parse_override(item, path)
        table, _, name = key.partition(".")
        if table in TABLES and name:
            _set_dotted(tables[table], name, value)
        else:
            rest.append(item)
    recipe = recipe_from_dict(data, path, overrides=rest, profile=profile)
    try:
        prepare = _build(PrepareSettings, tables["prepare"], "prepare.", path)
    except BraverError as error:  # PrepareSettings' own checks name no file
        if error.path is not None:
            raise
        raise BraverError(f"[prepare]: {str(error).rstrip('.')}", path) from None
    settings = TransferSettings(transfer_section(tables["transfer"], path), prepare, str(path))
    return recipe, settings


@dataclass
class TransferPlan:
    """A study checked and ready to train: the recipe, the brain run, the setups."""

    recipe: Recipe
    settings: TransferSettings
    brain_run: Path
    brain: Any  # the brain network (nn.Module), on the CPU
    setups: list[Setup]
    strategy: str
    data: Path | None = None
    latest: bool = False  # the brain run was picked as the latest one under ``runs``

    @property
    def prepare(self) -> PrepareSettings:
        """How ``--data`` is to be prepared (the recipe's ``[prepare]`` table)."""
        return self.settings.prepare


def plan_transfer_study(
    recipe: str | Path = "liver",
    *,
    source: str | Path | None = None,
    runs: str | Path = "runs",
    freeze: list[str] | None = None,
    baseline: bool = False,
    strategy: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    data: str | Path | None = None,
) -> TransferPlan:
    """Read the recipe, find the brain run and check every setup before any work.

    ``recipe``: a shipped name (``liver``) or a ``.toml`` file; its ``[phantom]`` profile is
    used without ``data``. ``source``: the brain run (default: the latest under ``runs``).
    ``freeze``: one setup per value (default: the recipe's setups for this architecture).
    """
    from braver.runs import find_latest_run, load_model, load_run_info
    from braver.transfer import STRATEGIES

    if strategy is not None and strategy not in STRATEGIES:
        raise BraverError(
            f"unknown channel strategy {strategy!r}", hint=f"choose one of: {', '.join(STRATEGIES)}"
        )
    path = Path(recipe)
    if path.suffix != ".toml":
        path = shipped_recipe(str(recipe))
    loaded, settings = load_liver_recipe(path, overrides, profile=None if data else "phantom")
    latest = source is None
    if source is None:
        source = find_latest_run(runs, "brain")
        if source is None:
            raise BraverError(
                "no finished brain run", runs, "run 'braver train brain' first, or pass --from RUN"
            )
    source = Path(source)
    info = load_run_info(source)
    if info.kind == loaded.kind:
        raise BraverError(
            f"is already a {info.kind} run",
            source,
            "pass a brain run with --from (transfer starts from another task)",
        )
    brain, _ = load_model(source)
    setups = plan_setups(brain, freeze, baseline, settings)  # every name checked first
    return TransferPlan(
        loaded,
        settings,
        source,
        brain,
        setups,
        strategy or settings.strategy,
        Path(data) if data is not None else None,
        latest,
    )


@dataclass
class TransferStudy:
    """What a transfer study made: one row per setup and the folder of the comparison."""

    folder: Path
    rows: list[dict]
    title: str

    def table(self):
        """The terminal table (the seed's columns beside braver's where a row has them)."""
        return comparison_table(self.rows, self.title)


def run_transfer_study(
    plan: TransferPlan,
    *,
    cache: str | Path,
    out: str | Path = "runs",
    device: str | None = None,
    console: Console | None = None,
    progress: bool = False,
    study_folder: Path | None = None,
) -> TransferStudy:
    """Train every setup of ``plan`` on ``cache`` (one run folder each under ``out``) and write
    the comparison (transfer.csv, .json, .png) to ``study_folder`` (default: a new
    ``OUT/transfer-liver-<time>``). ``device``: default CUDA when available."""
    from braver.data.cache import Cache
    from braver.runs import new_run_dir

    if device is None:
        from braver.inference import resolve_device

        device = str(resolve_device("auto"))
    out = Path(out)
    cache_obj = Cache.open(cache)
    settings, setups = plan.settings, plan.setups
    folder = study_folder or new_run_dir(out, f"transfer-{plan.recipe.kind}")
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    meta = {
        "source_run": str(plan.brain_run),
        "source_model": plan.brain.config,
        "strategy": plan.strategy,
        "class_map": settings.class_map,
        "recipe": settings.source,
        "cache": str(cache),
        "prepare": settings.prepare.to_dict() if plan.data is not None else None,
        "data": str(plan.data) if plan.data is not None else None,
        "device": device,
        "setups": [
            {
                "name": s.name,
                "freeze": s.freeze,
                "baseline": s.baseline,
                "kept_outputs": s.keep_outputs,
                "class_map": s.class_map or settings.class_map,
                "seed_setup": s.seed.seed_name if s.seed else None,
            }
            for s in setups
        ],
    }
    for i, setup in enumerate(setups, 1):
        if console is not None:
            console.rule(f"[bold]{i}/{len(setups)}: {setup.name}[/]")
        run = train_setup(
            setup,
            plan.recipe,
            plan.brain,
            plan.brain_run,
            cache_obj,
            out=out,
            device=device,
            data=plan.data,
            strategy=plan.strategy,
            class_map=settings.class_map,
            console=console,
            progress=progress,
        )
        rows.append(comparison_row(setup, run))
        write_comparison(folder, rows, meta)
    title = write_comparison(folder, rows, meta)
    return TransferStudy(folder, rows, title)


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
    seed = setup.seed
    return {
        "setup": setup.name,
        "freeze": ", ".join(setup.freeze) or "none",
        "seed_setup": seed.seed_name if seed else None,
        "trainable_parameters": int(info.extra["transfer"]["trained_parameters"]),
        "seed_trainable_parameters": seed.trainable_parameters if seed else None,
        "epochs": len(history),
        "seconds_per_epoch": round(sum(seconds) / len(seconds), 2) if seconds else None,
        "seed_seconds_per_epoch": seed.seconds_per_epoch if seed else None,
        "cpu_seconds_per_epoch": round(sum(cpu) / len(cpu), 2) if cpu else None,
        "train_seconds": info.extra.get("train_seconds"),
        "train_accuracy": _float(last.get("train_patch_accuracy")),
        "seed_train_accuracy": seed.train_accuracy if seed else None,
        "valid_accuracy": _float(last.get("patch_accuracy")),
        "seed_valid_accuracy": seed.valid_accuracy if seed else None,
        # a cascade whose second network is frozen trains (and is scored per patch) as its
        # first network alone; the Dice columns are always the whole network's
        "accuracy_of": "first network alone"
        if str(last.get("stage", "")).startswith("first")
        else "network",
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
    "seed_trainable_parameters": "seed",
    "seconds_per_epoch": "s / epoch",
    "seed_seconds_per_epoch": "seed",
    "cpu_seconds_per_epoch": "CPU s / epoch",
    "train_accuracy": "train acc",
    "seed_train_accuracy": "seed",
    "valid_accuracy": "valid acc",
    "seed_valid_accuracy": "seed",
    "liver_dice": "liver Dice",
    "tumor_dice": "tumour Dice",
}
SEED_COLUMNS = [k for k in SHOWN if k.startswith("seed_")]


def comparison_table(rows: list[dict], title: str):
    """The rows as a rich table: braver's figures, each followed by the seed's (``seed``) when
    a row is one of the seed's setups; the seed's own name for the setup under the setup."""
    from braver.report import rich_table

    seeded = any(row.get("seed_setup") for row in rows)
    shown = []
    for row in rows:
        cells = {}
        for key, heading in SHOWN.items():
            if key in SEED_COLUMNS and not seeded:
                continue
            value = row.get(key)
            if key == "setup" and row.get("seed_setup"):
                value = f"{value} (seed: {row['seed_setup']})"
            cells[heading if heading != "seed" else f"{SHOWN[_before(key)]} (seed)"] = value
        shown.append(cells)
    return rich_table(shown, title)


def _before(seed_key: str) -> str:
    keys = list(SHOWN)
    return keys[keys.index(seed_key) - 1]


def write_comparison(folder: Path, rows: list[dict], meta: dict) -> str:
    """transfer.csv, transfer.json (rows + how they were made), transfer.png; returns the
    table's title."""
    import io

    from braver.report import plot_bars, write_table

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
    return title


__all__ = [
    "PRESETS",
    "SEED_SETUPS",
    "SeedSetup",
    "Setup",
    "SetupSpec",
    "TrainRecord",
    "TransferPlan",
    "TransferSettings",
    "TransferStudy",
    "comparison_row",
    "comparison_table",
    "load_liver_recipe",
    "plan_setups",
    "plan_transfer_study",
    "resolve_freeze",
    "run_transfer_study",
    "seed_setup",
    "train_setup",
]

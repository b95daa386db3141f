"""What the dashboard shows, read from the run folders: plain JSON-able dicts, no web code.

A run folder (``braver.runs``) is ``<runs>/<name>/`` with ``run.json``; while it trains it
gains ``history.csv``, ``progress.json``, ``checkpoint.safetensors``, ``live.json`` and
``previews/`` (``braver.train.tracking``), and at the end ``model.safetensors`` and
``metrics.json``. Studies: ``<runs>/<name>/transfer.json`` (``braver transfer``) and
``<runs>/<run>/prune-*/prune.json`` (``braver prune``).

Status of a run, from its files alone:

``done``         model.safetensors is written (and the evaluation, if any, is over)
``diverged``     progress.json or live.json says so, or history.csv holds a loss that is not finite
``running``      the process named in live.json is alive on this host, or the folder was
                 written to recently (another host: live.json or history.csv fresher than
                 ``stale_seconds``, at least three epochs' time)
``interrupted``  none of these: the process is gone; ``braver train --resume`` continues it
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import tomllib

RUN_FILE = "run.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
PROGRESS = "progress.json"
LIVE = "live.json"
HISTORY = "history.csv"
METRICS = "metrics.json"
PREVIEW_INDEX = "previews/index.json"
STALE_SECONDS = 600.0

#: history.csv columns that are bookkeeping rather than losses or metrics
BOOKKEEPING = frozenset(
    {"epoch", "stage", "time", "lr", "learning_rate", "mom", "momentum", "wd", "rolled_back"}
)


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or being replaced."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def number(value: Any) -> float | None:
    """A finite float, or None (empty cells, text, NaN and infinities)."""
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become None (browsers reject NaN in JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def read_history(folder: Path) -> tuple[list[str], list[dict]]:
    """history.csv as (columns, rows); numbers parsed, empty or non-finite cells None."""
    path = folder / HISTORY
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            raw = list(reader)
            columns = list(reader.fieldnames or [])
    except OSError:
        return [], []
    rows = []
    for record in raw:
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key is None:  # cells beyond the header
                continue
            if key == "stage":
                row[key] = value or None
                continue
            parsed = number(value)
            row[key] = int(parsed) if key == "epoch" and parsed is not None else parsed
        rows.append(row)
    return columns, rows


def diverged_history(folder: Path) -> bool:
    """A loss cell that is written but not a finite number (``nan``, ``inf``)."""
    try:
        with open(folder / HISTORY, newline="") as f:
            for record in csv.DictReader(f):
                for key, value in record.items():
                    written = key and key.endswith("loss") and value not in ("", None)
                    if written and number(value) is None:
                        return True
    except OSError:
        return False
    return False


def process_alive(live: dict | None) -> bool:
    """live.json's process is running on this host."""
    if not live or live.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(live["pid"]), 0)
    except PermissionError:
        return True
    except (OSError, KeyError, TypeError, ValueError):
        return False
    return True


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def last_write(folder: Path) -> float | None:
    """When the run last wrote one of its progress files."""
    times = [_mtime(folder / name) for name in (LIVE, HISTORY, PROGRESS, CHECKPOINT, RUN_FILE)]
    live = read_json(folder / LIVE)
    if isinstance(live, dict) and number(live.get("updated")) is not None:
        times.append(float(live["updated"]))
    times = [t for t in times if t is not None]
    return max(times) if times else None


def run_status(folder: Path, rows: list[dict] | None = None, now: float | None = None) -> str:
    """``done``, ``diverged``, ``running`` or ``interrupted`` (see the module docstring)."""
    now = time.time() if now is None else now
    live = read_json(folder / LIVE)
    live = live if isinstance(live, dict) else None
    alive = process_alive(live)
    if (folder / WEIGHTS_FILE).exists() and ((folder / METRICS).exists() or not alive):
        return "done"
    progress = read_json(folder / PROGRESS)
    if (
        (isinstance(progress, dict) and progress.get("diverged"))
        or (live is not None and live.get("status") == "diverged")
        or diverged_history(folder)
    ):
        return "diverged"
    if alive:
        return "running"
    if live is not None and live.get("host") == socket.gethostname():
        return "interrupted"  # its process is gone
    if rows is None:
        rows = read_history(folder)[1]
    seconds = [r["time"] for r in rows if r.get("time") is not None]
    stale = max(STALE_SECONDS, 3 * (sum(seconds) / len(seconds))) if seconds else STALE_SECONDS
    written = last_write(folder)
    return "running" if written is not None and now - written < stale else "interrupted"


def planned_epochs(folder: Path, model_name: str | None) -> dict[str, int]:
    """Epochs per stage that recipe.toml asks for (a cascade's ``first`` phase included)."""
    try:
        recipe = tomllib.loads((folder / "recipe.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    plan: dict[str, int] = {}
    cascade = bool(model_name) and "cascade" in str(model_name)
    first = recipe.get("cascade", {}).get("first_epochs")
    if cascade and isinstance(first, int) and first > 0:
        plan["first"] = first
    for stage in ("stage1", "stage2"):
        epochs = recipe.get(stage, {}).get("epochs")
        if isinstance(epochs, int) and epochs > 0:
            plan[stage] = epochs
    return plan


def _label(info: dict) -> dict[str, Any]:
    extra = info.get("extra") or {}
    model = info.get("model") or {}
    cache = str(info.get("cache") or "")
    data = info.get("data") or ("phantoms" if "phantom" in cache else Path(cache).name or None)
    return {
        "kind": info.get("kind"),
        "recipe": extra.get("recipe"),
        "model": model.get("name"),
        "data": data,
    }


def best_values(columns: list[str], rows: list[dict]) -> dict[str, float]:
    """Best validation value of each metric column (lowest loss, highest score)."""
    best: dict[str, float] = {}
    for column in columns:
        if column in BOOKKEEPING or column.startswith("train"):
            continue
        values = [r[column] for r in rows if r.get(column) is not None]
        if values:
            best[column] = min(values) if column.endswith("loss") else max(values)
    return best


def run_summary(folder: Path, now: float | None = None) -> dict[str, Any]:
    """One line of the runs list."""
    info = read_json(folder / RUN_FILE)
    info = info if isinstance(info, dict) else {}
    columns, rows = read_history(folder)
    status = run_status(folder, rows, now)
    live = read_json(folder / LIVE)
    live = live if isinstance(live, dict) else {}
    label = _label(info)
    plan = planned_epochs(folder, label["model"])
    last = rows[-1] if rows else {}
    stage = last.get("stage") or live.get("stage")
    if status == "running" and live.get("stage"):
        stage = live["stage"]
    done_per_stage: dict[str, int] = {}
    for row in rows:
        done_per_stage[row.get("stage") or "fit"] = (
            done_per_stage.get(row.get("stage") or "fit", 0) + 1
        )
    epochs_done = len(rows)
    epochs_planned = sum(plan.values()) or None
    seconds = [r["time"] for r in rows if r.get("time") is not None]
    eta = None
    if status == "running" and seconds and epochs_planned:
        remaining = sum(max(0, n - done_per_stage.get(s, 0)) for s, n in plan.items())
        eta = round(remaining * sum(seconds[-5:]) / len(seconds[-5:]), 1)
    metrics = read_json(folder / METRICS)
    metrics = metrics if isinstance(metrics, dict) else {}
    final = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k.endswith("_dice")
    }
    return {
        "name": folder.name,
        **label,
        "status": status,
        "stage": stage,
        "epoch": epochs_done,
        "epochs": epochs_planned,
        "eta_seconds": eta,
        "seconds_per_epoch": round(sum(seconds) / len(seconds), 2) if seconds else None,
        "best": best_values(columns, rows),
        "final": final,
        "updated": last_write(folder),
        "version": _version(folder),
    }


def _version(folder: Path) -> str:
    """Changes whenever a file the run page shows changes (the page re-renders then)."""
    parts = []
    for name in (HISTORY, METRICS, PREVIEW_INDEX, PROGRESS, WEIGHTS_FILE, LIVE):
        mtime = _mtime(folder / name)
        parts.append(f"{mtime:.3f}" if mtime is not None else "-")
    return "/".join(parts)


def preview_index(folder: Path) -> dict | None:
    index = read_json(folder / PREVIEW_INDEX)
    return index if isinstance(index, dict) and index.get("cases") else None


def run_details(folder: Path, now: float | None = None) -> dict[str, Any]:
    """Everything the run page draws: summary, history, schedules, metrics, previews, studies."""
    info = read_json(folder / RUN_FILE)
    info = info if isinstance(info, dict) else {}
    columns, rows = read_history(folder)
    metrics = read_json(folder / METRICS)
    extra = info.get("extra") or {}
    return {
        "summary": run_summary(folder, now),
        "columns": columns,
        "history": rows,
        "planned": planned_epochs(folder, (info.get("model") or {}).get("name")),
        "trainable_parameters": extra.get("trainable_parameters") or {},
        "info": {
            "channels": info.get("channels"),
            "model": info.get("model"),
            "cache": info.get("cache"),
            "data": info.get("data"),
            "validation_cases": info.get("validation_cases") or [],
            "device": extra.get("device"),
            "train_seconds": extra.get("train_seconds"),
        },
        "metrics": metrics if isinstance(metrics, dict) else None,
        "previews": preview_index(folder),
        "live": read_json(folder / LIVE),
        "studies": [study_summary(p) for p in sorted(folder.glob("*/prune.json"))],
        "files": [
            name
            for name in ("learning_curves.png", "recipe.toml", "report.html")
            if (folder / name).exists()
        ],
    }


# ---------------------------------------------------------------------------------------------
# studies


def study_summary(path: Path) -> dict[str, Any]:
    """A transfer (transfer.json) or surgery (prune.json) study: kind, where, how many rows."""
    data = read_json(path)
    data = data if isinstance(data, dict) else {}
    rows = data.get("rows") or []
    kind = "transfer" if path.name == "transfer.json" else "surgery"
    source = data.get("source_run") if kind == "transfer" else data.get("run")
    return {
        "kind": kind,
        "name": path.parent.name,
        "path": str(path.parent),  # replaced by a path relative to the runs folder by callers
        "source": Path(source).name if source else None,
        "rows": len(rows),
        "updated": _mtime(path),
    }


def study_details(path: Path) -> dict[str, Any]:
    """The study's rows and the columns to chart (Dice of each region, ΔDice for surgery)."""
    data = read_json(path)
    data = data if isinstance(data, dict) else {}
    rows = data.get("rows") or []
    summary = study_summary(path)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if summary["kind"] == "transfer":
        label = "setup"
        chart = [c for c in columns if c.endswith("_dice") or c.endswith("_accuracy")]
        shown = [
            c
            for c in (
                "setup",
                "freeze",
                "trainable_parameters",
                "epochs",
                "seconds_per_epoch",
                "cpu_seconds_per_epoch",
                "train_accuracy",
                "valid_accuracy",
                "liver_dice",
                "tumor_dice",
            )
            if c in columns
        ]
        shown += [c for c in columns if c not in shown and c != "run"]
    else:
        label = "variant"
        chart = [c for c in columns if c.startswith("delta_") and c.endswith("_dice")]
        shown = [c for c in columns if c not in ("note",)] + (["note"] if "note" in columns else [])
    meta = {k: v for k, v in data.items() if k not in ("rows", "per_case", "variants")}
    return {**summary, "label": label, "columns": shown, "chart": chart, "rows": rows, "meta": meta}


def find_studies(root: Path) -> list[Path]:
    """Study files under the runs folder: ``*/transfer.json`` and ``*/prune-*/prune.json``."""
    found = list(root.glob("*/transfer.json")) + list(root.glob("*/*/prune.json"))
    return sorted(found, key=lambda p: _mtime(p) or 0, reverse=True)


def find_runs(root: Path) -> list[Path]:
    """Run folders directly under ``root``, newest first."""
    runs = [p.parent for p in root.glob(f"*/{RUN_FILE}")]
    return sorted(runs, key=lambda p: _mtime(p / RUN_FILE) or 0, reverse=True)


def overview(root: Path, now: float | None = None) -> dict[str, Any]:
    """The runs list and the studies, for the dashboard's first page."""
    root = Path(root)
    studies = []
    for path in find_studies(root):
        summary = study_summary(path)
        summary["path"] = path.parent.relative_to(root).as_posix()
        studies.append(summary)
    return {
        "root": str(root.resolve()),
        "runs": [run_summary(folder, now) for folder in find_runs(root)],
        "studies": studies,
        "now": time.time() if now is None else now,
    }

"""Callbacks that let people watch a run: preview overlays, a live status file, Weights & Biases.

Each one finds what it needs from the run folder (``self.learn.path``): ``run.json`` names the
cache and the validation cases, the ``History`` callback (or ``history.csv``) the stage and the
epoch's row. They act on rank 0 only and add them to every fit of a run (``callbacks=``).

Files they write in the run folder (read by ``braver dashboard`` and ``report.html``)::

    previews/index.json                 cases, slices, channels, stage, epoch, version
    previews/<case>/<channel>_z<Z>.png  one greyscale PNG per channel and slice (written once)
    previews/<case>/truth_z<Z>.png      the truth as a transparent colour overlay (once)
    previews/<case>/pred_z<Z>.png       the prediction after the latest epoch (overwritten)
    previews/<case>/overlay.png         image | truth | prediction of the case's main slice
    live.json                           process id, host, stage, epoch, batch, loss, updated

Length: previews, live status and W&B are the three things a run tells the outside while it
trains; they share the run-folder conventions above (one file to read for the dashboard).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
from fastai.callback.core import Callback

from braver.atomic import atomic_path, write_json

PREVIEW_DIR = "previews"
PREVIEW_INDEX = "index.json"
LIVE_FILE = "live.json"


# ---------------------------------------------------------------------------------------------
# what every tracker needs from the learner


def is_main_rank(learn) -> bool:
    return getattr(learn, "rank", 0) == 0


def history_callback(learn):
    """The fit's ``History`` callback (it knows the stage and the epoch offset), or None."""
    return next((cb for cb in learn.cbs if hasattr(cb, "stage") and hasattr(cb, "rows")), None)


def last_history_row(learn) -> dict | None:
    """The row of the epoch that just ended: from ``History``, else the end of history.csv."""
    history = history_callback(learn)
    if history is not None and history.rows:
        return dict(history.rows[-1])
    path = Path(learn.path) / "history.csv"
    if path.exists():
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        return rows[-1] if rows else None
    return None


def current_stage(learn) -> str:
    """The stage being trained: ``learn.stage`` when a stage callback sets it, else History's."""
    stage = getattr(learn, "stage", None)
    if stage:
        return str(stage)
    history = history_callback(learn)
    if history is not None:
        return str(history.stage)
    row = last_history_row(learn)
    return str(row.get("stage", "fit")) if row else "fit"


def epoch_offset(learn) -> int:
    """Epochs done before this fit started (earlier stages, or a resumed run's first part)."""
    offset = getattr(learn, "epoch_offset", None)
    if offset is None:
        offset = getattr(history_callback(learn), "epoch_offset", 0)
    return int(offset or 0)


def _number(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number


# ---------------------------------------------------------------------------------------------
# preview overlays


def _safe_name(case_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", case_id) or "case"


def preview_slices(label_zyx: np.ndarray | None, image_czyx: np.ndarray, count: int) -> list[int]:
    """``count`` axial slices spread evenly over the tumour (non-background label), or over
    the foreground when the case has no tumour; the slice with the most tumour replaces the
    nearest of them."""
    if label_zyx is not None and np.any(label_zyx):
        counts = np.count_nonzero(np.asarray(label_zyx).reshape(len(label_zyx), -1), axis=1)
    else:
        counts = np.count_nonzero(
            np.asarray(image_czyx).reshape(image_czyx.shape[0], image_czyx.shape[1], -1),
            axis=(0, 2),
        )
    present = np.flatnonzero(counts)
    if present.size == 0:
        return [int(image_czyx.shape[1] // 2)]
    most = int(counts.argmax())
    spread = np.linspace(present[0], present[-1], max(count, 1)).round().astype(int)
    spread[np.abs(spread - most).argmin()] = most
    return sorted({int(z) for z in spread})


def _grey(image_zyx: np.ndarray) -> np.ndarray:
    """uint8 greyscale of slices, scaled between the 1st and 99th percentile of the foreground;
    zero (outside the foreground) stays black."""
    image = np.asarray(image_zyx, dtype=np.float32)
    inside = image[image != 0]
    low, high = np.percentile(inside, (1, 99)) if inside.size else (0.0, 1.0)
    scaled = np.clip((image - low) / max(high - low, 1e-6), 0, 1) * 255
    scaled[image == 0] = 0
    return scaled.astype(np.uint8)


def class_overlay(classes_yx: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGBA uint8 of a class map: each class in its colour (``report.CLASS_COLOURS``),
    background transparent."""
    from braver.report import CLASS_COLOURS

    palette = np.array([(*c, 1.0) for c in CLASS_COLOURS], dtype=np.float32)
    classes = np.asarray(classes_yx, dtype=np.int64)
    rgba = palette[classes % len(palette)]
    rgba[..., 3] = np.where(classes > 0, alpha, 0.0)
    return (rgba * 255).round().astype(np.uint8)


def hex_colour(rgb) -> str:
    """``#rrggbb`` of an RGB triple in 0..1."""
    return "#" + "".join(f"{round(v * 255):02x}" for v in rgb)


def _upright(array: np.ndarray) -> np.ndarray:
    """Rows with Y upwards (anterior up in canonical RAS), as ``report.plot_overlay`` draws."""
    return np.ascontiguousarray(array[::-1])


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path


def composite(grey_yx: np.ndarray, truth_yx: np.ndarray | None, pred_yx: np.ndarray) -> np.ndarray:
    """RGB uint8: the image, truth over the image, prediction over the image, side by side
    (upright; small slices enlarged to at least 128 pixels high)."""
    base = np.repeat(grey_yx[..., None], 3, axis=2).astype(np.float32)
    panels = [base]
    for classes in (truth_yx, pred_yx):
        if classes is None:
            continue
        overlay = class_overlay(classes).astype(np.float32)
        alpha = overlay[..., 3:] / 255
        panels.append(base * (1 - alpha) + overlay[..., :3] * alpha)
    gap = np.full((base.shape[0], 2, 3), 255, np.float32)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    row = _upright(row.round().astype(np.uint8))
    scale = max(1, math.ceil(128 / row.shape[0]))
    return np.repeat(np.repeat(row, scale, axis=0), scale, axis=1)


class PreviewCallback(Callback):
    """After an epoch: the prediction on a few slices of a few validation cases.

    The first call writes each case's slices of every channel and its truth overlay; every
    call writes the prediction overlays and bumps ``previews/index.json``'s ``version`` (the
    dashboard reloads the images when it changes). ``cases`` validation cases (run.json's
    order) × ``slices`` slices per case, predicted densely.

    Previews stay cheap: they are made after every ``every``-th epoch, and, with ``budget``,
    only once the training time since the last ones is at least their own time / ``budget``
    (5 %): after every epoch where they cost little beside an epoch; on a busy 2-core CPU,
    where one phantom case's 5 slices took 6 s against 80 s epochs, about every third epoch.
    The first epoch and the last epoch of a fit always get them.
    """

    order = 75  # after History (65) and the checkpoint (70): the row and weights are written

    def __init__(
        self, cases: int = 2, slices: int = 5, every: int = 1, budget: float | None = 0.05
    ):
        self.n_cases, self.n_slices, self.every = cases, slices, max(1, every)
        self.budget = budget
        self.cases: list[dict] | None = None
        self.version = 0
        self.cost = 0.0  # seconds the last previews took
        self.made_at: float | None = None  # when they were made

    @property
    def folder(self) -> Path:
        return Path(self.learn.path) / PREVIEW_DIR

    def before_fit(self):
        if is_main_rank(self.learn) and self.cases is None:
            self.cases = self._prepare()

    def _prepare(self) -> list[dict]:
        """Choose the cases and slices; write the channel and truth PNGs once."""
        from braver.data.cache import Cache
        from braver.runs import load_run_info

        info = load_run_info(self.learn.path)
        previous = self.folder / PREVIEW_INDEX
        if previous.exists():  # a resumed run: go on counting, so no browser keeps an old image
            try:
                self.version = int(json.loads(previous.read_text()).get("version", 0))
            except (ValueError, AttributeError):
                self.version = 0
        if not info.cache or not info.validation_cases or not Path(info.cache).exists():
            return []
        cache = Cache.open(info.cache)
        self.label_scheme = cache.scheme
        channels = list(info.channels or cache.channels)
        from braver.inference import display_channel

        cases = []
        for case_id in info.validation_cases[: self.n_cases]:
            case = cache.case(case_id)
            image = np.asarray(case.image)
            label = np.asarray(case.label) if case.has_label else None
            slices = preview_slices(label, image, self.n_slices)
            folder = self.folder / _safe_name(case_id)
            names = (
                channels
                if len(channels) == image.shape[0]
                else [f"c{i}" for i in range(len(image))]
            )
            greys = {}
            for c, name in enumerate(names):
                grey = _grey(image[c, slices])
                greys[name] = grey
                for z, plane in zip(slices, grey, strict=True):
                    write_png(folder / f"{_safe_name(name)}_z{z}.png", _upright(plane))
            if label is not None:
                for z in slices:
                    write_png(folder / f"truth_z{z}.png", _upright(class_overlay(label[z])))
            spacing = case.meta.get("spacing_zyx", [1.0, 1.0, 1.0])
            main_slice = (
                max(slices, key=lambda z: np.count_nonzero(label[z]))
                if label is not None
                else slices[len(slices) // 2]
            )
            cases.append(
                {
                    "case": case_id,
                    "folder": folder.name,
                    "slices": slices,
                    "channels": [_safe_name(n) for n in names],
                    "display": _safe_name(names[display_channel(names)]),
                    "truth": label is not None,
                    "size": [int(image.shape[2]), int(image.shape[3])],
                    "aspect": float(spacing[1]) / float(spacing[2]),
                    "main_slice": main_slice,
                    "_image": np.array(image[:, slices], dtype=np.float32),
                    "_grey": greys[names[display_channel(names)]],
                    "_label": label,
                }
            )
        return cases

    def after_epoch(self):
        if not is_main_rank(self.learn) or not self.cases:
            return
        if not self._due():
            return
        from braver.inference import predict_volume

        started = time.perf_counter()
        model = getattr(self.learn.model, "module", self.learn.model)
        device = next(model.parameters()).device
        modes = {m: m.training for m in model.modules()}  # a frozen part may stay in eval mode
        try:
            for case in self.cases:
                slices = case["slices"]
                probs = predict_volume(model, case["_image"], device=device)
                classes = probs.argmax(axis=0).astype(np.uint8)
                folder = self.folder / case["folder"]
                for z, plane in zip(slices, classes, strict=True):
                    write_png(folder / f"pred_z{z}.png", _upright(class_overlay(plane)))
                main = slices.index(case["main_slice"])
                truth = case["_label"][case["main_slice"]] if case["_label"] is not None else None
                write_png(
                    folder / "overlay.png", composite(case["_grey"][main], truth, classes[main])
                )
        finally:
            for module, mode in modes.items():
                module.training = mode
        self.version += 1
        self.write_index()
        self.cost, self.made_at = time.perf_counter() - started, time.perf_counter()

    def _due(self) -> bool:
        if self.epoch + 1 == self.n_epoch or self.made_at is None:
            return True
        if (self.epoch + 1) % self.every:
            return False
        if self.budget is None:
            return True
        return (time.perf_counter() - self.made_at) * self.budget >= self.cost

    def write_index(self) -> Path:
        from braver.report import CLASS_COLOURS

        row = last_history_row(self.learn) or {}
        classes = [
            {"name": name, "colour": hex_colour(CLASS_COLOURS[i % len(CLASS_COLOURS)])}
            for i, name in enumerate(self.label_scheme.class_names)
        ][1:]  # background is not drawn
        index = {
            "version": self.version,
            "stage": row.get("stage", current_stage(self.learn)),
            "epoch": row.get("epoch", epoch_offset(self.learn) + self.epoch),
            "updated": time.time(),
            "classes": classes,
            "cases": [{k: v for k, v in c.items() if not k.startswith("_")} for c in self.cases],
        }
        return write_json(self.folder / PREVIEW_INDEX, index)


# ---------------------------------------------------------------------------------------------
# live status


class LiveStatus(Callback):
    """``live.json``: who is training this run and where it stands, every few seconds.

    The dashboard tells a running run from an interrupted one by the process id (same host)
    or by how fresh ``updated`` is; ``status`` becomes ``diverged`` when the loss turned NaN.
    """

    order = 90

    def __init__(self, every: float = 2.0):
        self.every, self.written, self.started = every, 0.0, None

    def before_fit(self):
        self.started = self.started or time.time()
        self.status = "running"
        self.write(force=True)

    def after_batch(self):
        if self.training:
            self.write()

    def after_epoch(self):
        self.write(force=True)

    def after_cancel_fit(self):
        loss = _number(getattr(self.learn, "loss", None))
        if getattr(self.learn, "diverged", False) or (loss is not None and not math.isfinite(loss)):
            self.status = "diverged"
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not is_main_rank(self.learn) or (not force and now - self.written < self.every):
            return
        offset = epoch_offset(self.learn)
        loss = _number(getattr(self.learn, "smooth_loss", None))  # set by fastai's Recorder
        status = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": self.started,
            "updated": now,
            "status": self.status,
            "stage": current_stage(self.learn),
            "epoch": offset + int(getattr(self.learn, "epoch", 0)),
            "epochs": offset + int(getattr(self.learn, "n_epoch", 0)),
            "batch": int(getattr(self.learn, "iter", 0)),
            "batches": int(getattr(self.learn, "n_iter", 0) or 0),
            "loss": loss if loss is not None and math.isfinite(loss) else None,
        }
        write_json(Path(self.learn.path) / LIVE_FILE, status)
        self.written = now


# ---------------------------------------------------------------------------------------------
# Weights & Biases


def require_wandb():
    """The wandb module, or a clear error saying how to install it."""
    from braver.errors import BraverError

    try:
        import wandb
    except ImportError:
        raise BraverError(
            "--wandb needs the wandb package, which is not installed",
            None,
            "pip install wandb, or braver with its wandb extra (WANDB_MODE=offline needs no account)",
        ) from None
    return wandb


def run_config(folder: Path) -> dict:
    """What W&B records as the run's config: the resolved recipe and run.json's model."""
    config: dict[str, Any] = {}
    recipe = folder / "recipe.toml"
    if recipe.exists():
        config.update(tomllib.loads(recipe.read_text()))
    run_file = folder / "run.json"
    if run_file.exists():
        info = json.loads(run_file.read_text())
        config["run"] = {
            k: info.get(k) for k in ("kind", "model", "channels", "cache", "data", "prepare")
        }
        config["run"]["validation_cases"] = info.get("validation_cases", [])
    config["run_folder"] = str(folder)
    return config


class WandbTracker(Callback):
    """Weights & Biases through wandb's own API: config, every epoch, previews, final table.

    One W&B run per run folder, started at the first fit (``dir`` = the run folder, so an
    offline run lies in ``<run>/wandb/offline-run-*``). Every epoch logs the history row as
    ``<stage>/<column>`` with ``epoch`` counting through the stages, and the preview overlays
    (``previews/<case>``) when ``PreviewCallback`` wrote new ones. ``finish()`` after the
    run's evaluation logs learning_curves.png, metrics.json's per-case table and its means
    (also the run's summary), then closes the W&B run. Set ``WANDB_MODE=offline`` to log
    without a network or an account.
    """

    order = 80  # after History (65), the checkpoint (70) and the previews (75)

    def __init__(self, project: str | None = None, group: str | None = None):
        self.project, self.group = project, group
        self.wandb_run = None
        self.folder: Path | None = None
        self.logged_epochs = 0
        self.preview_version = None

    def before_fit(self):
        if is_main_rank(self.learn) and self.wandb_run is None:
            self.start(Path(self.learn.path))

    def start(self, folder: Path):
        wandb = require_wandb()
        self.folder = Path(folder)
        self.wandb_run = wandb.init(
            project=self.project or os.environ.get("WANDB_PROJECT", "braver"),
            name=self.folder.name,
            group=self.group,  # e.g. the transfer study the run belongs to
            dir=str(self.folder),
            config=run_config(self.folder),
            reinit="create_new",  # one W&B run per run folder, also in a transfer study
            settings=wandb.Settings(console="off", silent=True),
        )
        self.wandb_run.define_metric("epoch")
        self.wandb_run.define_metric("*", step_metric="epoch")
        return self.wandb_run

    def after_epoch(self):
        if self.wandb_run is None:
            return
        row = last_history_row(self.learn) or {}
        stage = str(row.get("stage", current_stage(self.learn)))
        data: dict[str, Any] = {"epoch": self.logged_epochs}
        for key, value in row.items():
            number = _number(value)
            if key not in ("stage", "epoch") and number is not None:
                data[f"{stage}/{'seconds' if key == 'time' else key}"] = number
        data.update(self._previews(stage, row.get("epoch")))
        self.wandb_run.log(data)
        self.logged_epochs += 1

    def _previews(self, stage: str, epoch) -> dict:
        wandb = require_wandb()
        index_file = Path(self.learn.path) / PREVIEW_DIR / PREVIEW_INDEX
        if not index_file.exists():
            return {}
        index = json.loads(index_file.read_text())
        if index.get("version") == self.preview_version:
            return {}
        self.preview_version = index.get("version")
        images = {}
        for case in index.get("cases", []):
            png = index_file.parent / case["folder"] / "overlay.png"
            if png.exists():
                caption = f"{case['case']} slice {case['main_slice']}: image | truth | prediction ({stage} epoch {epoch})"
                images[f"previews/{case['case']}"] = wandb.Image(str(png), caption=caption)
        return images

    def finish(self, folder: str | Path | None = None, exit_code: int = 0) -> None:
        """Log the run's end products (curves, whole-volume metrics) and close the W&B run
        (``exit_code`` other than 0 marks it failed, e.g. after an error or divergence)."""
        if self.wandb_run is None:
            return
        wandb = require_wandb()
        folder = Path(folder) if folder is not None else self.folder
        final: dict[str, Any] = {"epoch": self.logged_epochs}
        curves = folder / "learning_curves.png"
        if curves.exists():
            final["learning_curves"] = wandb.Image(str(curves))
        metrics_file = folder / "metrics.json"
        if metrics_file.exists():
            metrics = json.loads(metrics_file.read_text())
            cases = metrics.get("cases") or []
            if cases:
                columns = list(dict.fromkeys(k for row in cases for k in row))
                table = wandb.Table(
                    columns=columns, data=[[r.get(c) for c in columns] for r in cases]
                )
                final["whole_volume_metrics"] = table
            means = {
                k: v
                for k, v in metrics.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            }
            final.update({f"final/{k}": v for k, v in means.items()})
            self.wandb_run.summary.update(means)
        self.wandb_run.log(final)
        self.wandb_run.finish(exit_code=exit_code)
        self.wandb_run = None

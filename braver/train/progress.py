"""Training progress that fits where it runs: a live rich display in a terminal, one plain line
per epoch in a log file or a CI job (where fastai's bars would fill the log with ``\\r``)."""

from __future__ import annotations

import math
from typing import Any

from fastai.callback.core import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from braver.train.tracking import current_stage, epoch_offset, is_main_rank, last_history_row


def epoch_line(row: dict, epochs: int | None = None) -> str:
    """One epoch of ``history.csv`` as a line: stage, epoch (1-based, of ``epochs``), values."""
    epoch = int(row.get("epoch", 0)) + 1
    parts = [f"{row.get('stage', 'fit')} epoch {epoch}" + (f"/{epochs}" if epochs else "")]
    for key, value in row.items():
        if key in ("stage", "epoch"):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            parts.append(f"{key} {value}")
            continue
        if key == "time":
            parts.append(f"{number:.0f} s")
        elif key in ("lr", "learning_rate"):
            parts.append(f"lr {number:.2e}")
        else:
            parts.append(f"{key} {number:.4f}")
    return "  ".join(parts)


class TrainingProgress(Callback):
    """Stage, epoch, batch, loss and time left, for one fit at a time.

    ``live`` (default: the console is a terminal) draws a rich progress line that moves with
    every batch (train and validation) and prints each epoch's row above it; otherwise each
    epoch prints one plain line and nothing else. Replaces fastai's ``ProgressCallback``
    (remove it from the Learner). Only rank 0 prints.
    """

    order = 66  # after History (65): the epoch's row is there to print

    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console if console is not None else Console()
        self.live = self.console.is_terminal if live is None else live
        self.bar: Progress | None = None
        self.task = None

    @property
    def active(self) -> bool:
        return is_main_rank(self.learn)

    def before_fit(self):
        if not self.active:
            return
        offset = epoch_offset(self.learn)
        self.epochs = offset + int(self.learn.n_epoch)
        if not self.live:
            return
        batches = len(self.learn.dls.train) + (
            len(self.learn.dls.valid) if len(self.learn.dls.loaders) > 1 else 0
        )
        self.bar = Progress(
            TextColumn("[bold cyan]{task.fields[stage]}[/]"),
            BarColumn(),
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            TextColumn("{task.fields[phase]} {task.fields[batch]}"),
            TextColumn("loss {task.fields[loss]}"),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task(
            "fit",
            total=max(1, int(self.learn.n_epoch) * batches),
            stage=current_stage(self.learn),
            epoch=offset + 1,
            epochs=self.epochs,
            phase="train",
            batch="",
            loss="—",
        )
        self.bar.start()

    def before_epoch(self):
        self._update(
            stage=current_stage(self.learn),
            epoch=epoch_offset(self.learn) + int(self.learn.epoch) + 1,
        )

    def before_train(self):
        self._update(phase="train", batch=f"0/{len(self.learn.dls.train)}")

    def before_validate(self):
        self._update(phase="valid", batch=f"0/{len(self.learn.dls.valid)}")

    def after_batch(self):
        if self.bar is None:
            return
        fields: dict[str, Any] = {"batch": f"{int(self.learn.iter) + 1}/{self.learn.n_iter}"}
        if self.learn.training:
            loss = getattr(self.learn, "smooth_loss", None)  # set by fastai's Recorder
            loss = float(loss) if loss is not None else math.nan
            fields["loss"] = f"{loss:.4f}"
        self.bar.update(self.task, advance=1, **fields)

    def after_epoch(self):
        if not self.active:
            return
        row = last_history_row(self.learn)
        if row is not None:
            self.console.print(epoch_line(row, self.epochs), highlight=False)

    def after_fit(self):
        self.close()

    def close(self) -> None:
        """Stop the live display (also safe to call after an exception)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar, self.task = None, None

    def _update(self, **fields) -> None:
        if self.bar is not None:
            self.bar.update(self.task, **fields)

"""A whole dataset → the cache: parallel, resumable and atomic (``prepare_dataset``).

Cases run in worker processes; each writes its folder under a temporary name and renames it
into place (``braver.data.cache.write_case``). A case whose fingerprint (source files' size and
mtime, the settings, the preprocessing version) matches what the cache holds is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from braver.data.cache import case_folder, write_case, write_summary
from braver.data.formats import Case, Dataset, discover
from braver.errors import BraverError
from braver.preprocess.case import preprocess_case
from braver.preprocess.settings import PREPROCESS_VERSION, PrepareSettings


def fingerprint(case: Case, settings: PrepareSettings) -> str:
    """What a cached case was made from: source files (name, size, mtime), settings, version."""
    files = []
    for path in case.source_files:
        try:
            stat = path.stat()
        except OSError:
            raise BraverError("does not exist", path, "check the dataset folder") from None
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "files": files,
        "case_id": case.case_id,
        "format": case.format,
        "channels": list(case.channels),
        "volume_index": list(case.volume_index) if case.volume_index else None,
        "n4_corrected": list(case.n4_corrected),
        "settings": settings.to_dict(),
        "version": PREPROCESS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _cached_meta(out: Path, case_id: str) -> dict | None:
    folder = case_folder(out, case_id)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if (folder / "image.npy").exists() else None


@dataclass
class CaseOutcome:
    case_id: str
    status: str  # "prepared" | "skipped" | "failed"
    reason: str = ""
    seconds: float = 0.0
    n4_seconds: float = 0.0  # of ``seconds``, in N4 bias-field correction


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` did: one outcome per case and the summary it wrote."""

    cache: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    #: what the dataset layout chose that a user should hear about (``Dataset.notes``)
    notes: list[str] = field(default_factory=list)

    def _with(self, status: str) -> list[CaseOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def prepared(self) -> list[CaseOutcome]:
        return self._with("prepared")

    @property
    def skipped(self) -> list[CaseOutcome]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseOutcome]:
        return self._with("failed")

    def table(self, max_skipped: int = 20):
        """A rich Table of the cases that were skipped or failed, with the reason.

        Every failed case gets a row; skipped (up-to-date) cases beyond ``max_skipped`` are
        folded into one summary row.
        """
        from rich.table import Table

        table = Table(
            title=f"{self.cache}: {len(self.prepared)} prepared, "
            f"{len(self.skipped)} skipped, {len(self.failed)} failed"
        )
        table.add_column("case", no_wrap=True)
        table.add_column("status")
        table.add_column("reason", overflow="fold")
        skipped = self.skipped
        for outcome in skipped[:max_skipped]:
            table.add_row(outcome.case_id, "[dim]skipped[/]", outcome.reason)
        if len(skipped) > max_skipped:
            table.add_row(f"… {len(skipped) - max_skipped} more", "[dim]skipped[/]", "up to date")
        for outcome in self.failed:
            table.add_row(outcome.case_id, "[red]failed[/]", outcome.reason)
        return table


def _prepare_one(
    case: Case, settings: PrepareSettings, out: str, fp: str, on_step=None
) -> tuple[str, Any, float, float]:
    """Worker: preprocess and write one case.

    Returns (status, meta or reason, seconds, seconds of N4).
    """
    start = time.perf_counter()
    try:
        prepared = preprocess_case(case, settings, on_step)
        prepared.meta["fingerprint"] = fp
        write_case(out, case.case_id, prepared.image, prepared.label, prepared.meta)
        seconds = time.perf_counter() - start
        return "prepared", prepared.meta, seconds, prepared.seconds.get("n4", 0.0)
    except BraverError as error:
        return "failed", str(error), time.perf_counter() - start, 0.0
    except MemoryError:
        return "failed", f"{case.folder}: out of memory; prepare with fewer --workers.", 0.0, 0.0
    except Exception as error:  # a worker must report, not kill the whole run
        return (
            "failed",
            f"{case.folder}: {type(error).__name__}: {error}.",
            time.perf_counter() - start,
            0.0,
        )


def _init_worker() -> None:
    # one process per case already uses every core; keep libraries from oversubscribing
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # pragma: no cover - SimpleITK is a dependency
        pass


def prepare_dataset(
    data: str | Path | Dataset,
    out: str | Path,
    settings: PrepareSettings | None = None,
    *,
    format: str | None = None,
    workers: int = 1,
    progress: bool = True,
    console=None,
) -> PrepareReport:
    """Preprocess every case of ``data`` into the cache folder ``out``; resumable.

    Cases already in the cache with the same fingerprint are skipped. Cases run in
    ``workers`` processes; a case that fails is reported in the returned ``PrepareReport``
    (``report.failed``) and the others proceed. ``summary.json`` is written from every case
    that is in the cache (prepared now or skipped) and lists the failed ones under "failed".
    """
    dataset = data if isinstance(data, Dataset) else discover(data, format)
    settings = settings or PrepareSettings()
    check_n4(settings, dataset)
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise BraverError("exists and is not a folder", out, "choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out, notes=list(dataset.notes))

    metas: dict[str, dict] = {}
    todo: list[tuple[Case, str]] = []
    for case in dataset.cases:
        fp = fingerprint(case, settings)
        meta = _cached_meta(out, case.case_id)
        if meta is not None and meta.get("fingerprint") == fp:
            metas[case.case_id] = meta
            report.outcomes.append(CaseOutcome(case.case_id, "skipped", "up to date"))
        else:
            todo.append((case, fp))

    n4_on = settings.n4_applies(dataset.modality)
    for case_id, status, result, seconds, n4_seconds in _run(
        todo, settings, out, workers, progress, console, n4_on
    ):
        if status == "prepared":
            metas[case_id] = result
            report.outcomes.append(CaseOutcome(case_id, "prepared", "", seconds, n4_seconds))
        else:
            report.outcomes.append(CaseOutcome(case_id, "failed", result, seconds))

    order = {c.case_id: i for i, c in enumerate(dataset.cases)}
    report.outcomes.sort(key=lambda o: order[o.case_id])
    if metas:
        report.summary = dataset_summary(
            dataset, [metas[c.case_id] for c in dataset.cases if c.case_id in metas], settings
        )
        report.summary["failed"] = {o.case_id: o.reason for o in report.failed}
        report.summary["notes"] = report.notes
        write_summary(out, report.summary)
    return report


def check_n4(settings: PrepareSettings, dataset: Dataset) -> None:
    """N4 only on MRI, and only on channels the dataset has (else one sentence and the fix).

    ``n4=None`` (the default) is N4 on the channels of ``n4_channels`` that an MRI dataset
    has, and no N4 on CT; ``n4=True`` asks for it, so CT or a missing channel is an error.
    """
    if settings.n4 is False:
        return
    if dataset.modality != "mri":
        if settings.n4:
            raise BraverError(
                "N4 bias-field correction is for MRI, and this dataset is CT",
                dataset.root,
                "leave out --n4 and --n4-channels",
            )
        return
    unknown = [name for name in settings.n4_channels if name not in dataset.channels]
    if settings.n4 and (unknown or not settings.n4_channels):
        raise BraverError(
            f"N4 channels {', '.join(unknown) or '(none)'} are not channels of this dataset",
            dataset.root,
            f"choose --n4-channels among {', '.join(dataset.channels)}",
        )


class _CaseStep:
    """Shows a case's slow step ("BraTS_001: N4 t1c") in the bar while it runs (one worker)."""

    def __init__(self, bar, task, case_id: str):
        self.bar, self.task, self.case_id = bar, task, case_id

    def __call__(self, text: str) -> None:
        self.bar.update(self.task, now=f"{self.case_id}: {text}")


def _run(todo, settings, out, workers, progress, console, n4_on=False):
    """Yield (case_id, status, meta-or-reason, seconds, N4 seconds) as cases finish, with a
    progress bar whose last column shows the N4 time so far (and, with one worker, the
    case and channel being corrected)."""
    if not todo:
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]prepare[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    if n4_on:
        columns.append(TextColumn("N4 {task.fields[n4]:.0f} s of {task.fields[busy]:.0f} s"))
    columns.append(TextColumn("{task.fields[now]}"))
    bar = Progress(*columns, console=console, disable=not progress, transient=False)
    workers = max(1, min(int(workers), len(todo)))
    totals = {"n4": 0.0, "busy": 0.0}

    def done(task, case, seconds, n4_seconds):
        totals["n4"] += n4_seconds
        totals["busy"] += seconds
        bar.update(task, advance=1, now=case.case_id, **totals)

    with bar:
        task = bar.add_task("prepare", total=len(todo), now="", **totals)
        if workers == 1:
            for case, fp in todo:
                bar.update(task, now=case.case_id)
                step = _CaseStep(bar, task, case.case_id) if progress else None
                status, result, seconds, n4_seconds = _prepare_one(
                    case, settings, str(out), fp, step
                )
                done(task, case, seconds, n4_seconds)
                yield case.case_id, status, result, seconds, n4_seconds
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork where there is one: workers start at once and scripts without a __main__ guard
        # work; the workers only run numpy/nibabel/SimpleITK code, never torch
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
            futures = {
                pool.submit(_prepare_one, case, settings, str(out), fp): case for case, fp in todo
            }
            try:
                for future in as_completed(futures):
                    case = futures[future]
                    try:
                        status, result, seconds, n4_seconds = future.result()
                    except Exception as error:  # the worker process died (e.g. killed for memory)
                        status, result, seconds, n4_seconds = (
                            "failed",
                            f"{case.folder}: worker failed ({error}).",
                            0.0,
                            0.0,
                        )
                    done(task, case, seconds, n4_seconds)
                    yield case.case_id, status, result, seconds, n4_seconds
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


def dataset_summary(dataset: Dataset, metas: list[dict], settings: PrepareSettings) -> dict:
    """Dataset-wide figures from per-case metas: pooled channel mean/std, class frequencies.

    ``mean``/``std`` are of the cached (normalised) values inside the foreground, pooled over
    cases; ``raw_mean``/``raw_std`` likewise before normalisation (after clipping).
    """
    channels = list(dataset.channels)
    counts = np.array([m["foreground_voxels"] for m in metas], dtype=np.float64)
    summary_stats = {}
    for key in ("mean", "raw_mean"):
        std_key = key.replace("mean", "std")
        means = np.array([[s[key] for s in m["channel_stats"]] for m in metas])
        stds = np.array([[s[std_key] for s in m["channel_stats"]] for m in metas])
        total = counts.sum() or 1.0
        pooled_mean = (counts[:, None] * means).sum(0) / total
        pooled_var = (counts[:, None] * (stds**2 + means**2)).sum(0) / total - pooled_mean**2
        summary_stats[key] = pooled_mean.tolist()
        summary_stats[std_key] = np.sqrt(np.maximum(pooled_var, 0)).tolist()
    num_classes = dataset.scheme.num_classes
    class_counts = np.zeros(num_classes, dtype=np.int64)
    labelled = 0
    for meta in metas:
        if meta.get("class_counts") is not None:
            class_counts += np.asarray(meta["class_counts"], dtype=np.int64)
            labelled += 1
    total_voxels = int(class_counts.sum())
    return {
        "format": dataset.format,
        "source": str(dataset.root.resolve()),
        "label_scheme": dataset.scheme.to_json(),
        "channels": channels,
        "modality": dataset.modality,
        "cases": [m["case_id"] for m in metas],
        "labelled_cases": labelled,
        **summary_stats,
        "class_counts": class_counts.tolist(),
        "class_frequencies": (class_counts / total_voxels).tolist()
        if total_voxels
        else [0.0] * num_classes,
        "settings": settings.to_dict(),
        "preprocess_version": PREPROCESS_VERSION,
    }


def default_workers() -> int:
    """Worker processes for ``prepare``: one per core, at most 8 (each holds one case)."""
    return max(1, min(8, os.cpu_count() or 1))


__all__ = [
    "PrepareSettings",
    "PrepareReport",
    "CaseOutcome",
    "prepare_dataset",
    "check_n4",
    "fingerprint",
    "dataset_summary",
    "default_workers",
]

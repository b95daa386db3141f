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


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` did: one outcome per case and the summary it wrote."""

    cache: Path
    outcomes: list[CaseOutcome] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

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
    case: Case, settings: PrepareSettings, out: str, fp: str
) -> tuple[str, Any, float]:
    """Worker: preprocess and write one case. Returns (status, meta or reason, seconds)."""
    start = time.perf_counter()
    try:
        prepared = preprocess_case(case, settings)
        prepared.meta["fingerprint"] = fp
        write_case(out, case.case_id, prepared.image, prepared.label, prepared.meta)
        return "prepared", prepared.meta, time.perf_counter() - start
    except BraverError as error:
        return "failed", str(error), time.perf_counter() - start
    except MemoryError:
        return "failed", f"{case.folder}: out of memory; prepare with fewer --workers.", 0.0
    except Exception as error:  # a worker must report, not kill the whole run
        return (
            "failed",
            f"{case.folder}: {type(error).__name__}: {error}.",
            time.perf_counter() - start,
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
    report = PrepareReport(out)

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

    for case_id, status, result, seconds in _run(todo, settings, out, workers, progress, console):
        if status == "prepared":
            metas[case_id] = result
            report.outcomes.append(CaseOutcome(case_id, "prepared", "", seconds))
        else:
            report.outcomes.append(CaseOutcome(case_id, "failed", result, seconds))

    order = {c.case_id: i for i, c in enumerate(dataset.cases)}
    report.outcomes.sort(key=lambda o: order[o.case_id])
    if metas:
        report.summary = dataset_summary(
            dataset, [metas[c.case_id] for c in dataset.cases if c.case_id in metas], settings
        )
        report.summary["failed"] = {o.case_id: o.reason for o in report.failed}
        write_summary(out, report.summary)
    return report


def check_n4(settings: PrepareSettings, dataset: Dataset) -> None:
    """N4 only on MRI, and only on channels the dataset has (else one sentence and the fix)."""
    if not settings.n4:
        return
    if dataset.modality != "mri":
        raise BraverError(
            "N4 bias-field correction is for MRI, and this dataset is CT",
            dataset.root,
            "leave out --n4 and --n4-channels",
        )
    unknown = [name for name in settings.n4_channels if name not in dataset.channels]
    if unknown or not settings.n4_channels:
        raise BraverError(
            f"N4 channels {', '.join(unknown) or '(none)'} are not channels of this dataset",
            dataset.root,
            f"choose --n4-channels among {', '.join(dataset.channels)}",
        )


def _run(todo, settings, out, workers, progress, console):
    """Yield (case_id, status, meta-or-reason, seconds) as cases finish, with a progress bar."""
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

    bar = Progress(
        TextColumn("[bold]prepare[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[last]}"),
        console=console,
        disable=not progress,
        transient=False,
    )
    workers = max(1, min(int(workers), len(todo)))
    with bar:
        task = bar.add_task("prepare", total=len(todo), last="")
        if workers == 1:
            for case, fp in todo:
                status, result, seconds = _prepare_one(case, settings, str(out), fp)
                bar.update(task, advance=1, last=case.case_id)
                yield case.case_id, status, result, seconds
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
                        status, result, seconds = future.result()
                    except Exception as error:  # the worker process died (e.g. killed for memory)
                        status, result, seconds = (
                            "failed",
                            f"{case.folder}: worker failed ({error}).",
                            0.0,
                        )
                    bar.update(task, advance=1, last=case.case_id)
                    yield case.case_id, status, result, seconds
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

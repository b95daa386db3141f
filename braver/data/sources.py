"""Where training data comes from: the built-in phantoms, or a dataset folder prepared once.

``training_cache(kind, data)`` is what ``braver train`` and ``braver transfer`` (and
``braver tune``) train on: without ``data`` the built-in phantom set of ``kind`` (generated and
prepared once under the braver cache, ``braver.data.phantoms``); with ``data`` that folder
prepared into ``dataset_cache(data)`` — a cache keyed by the folder's resolved path, so the
same folder is prepared once and reused (preparation is resumable per case).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rich.console import Console

from braver.data.cache import Cache
from braver.errors import BraverError

#: ``BRAVER_PHANTOMS=tiny``: a few small phantoms instead of the built-in set (tests, docs)
TINY = {"brain": {"cases": 6, "shape": (40, 40, 16)}, "liver": {"cases": 6, "shape": (48, 48, 16)}}


def phantom_cache(kind: str = "brain", progress: bool = True, difficulty: str = "easy") -> Cache:
    """The built-in phantom set of ``kind`` (``brain`` or ``liver``), prepared once.

    With the environment variable ``BRAVER_PHANTOMS=tiny``, six small phantoms prepared
    without N4 (seconds instead of a minute): what the README's example runs on in the tests.
    """
    import os

    from braver.data.phantoms import default_phantom_cache

    if os.environ.get("BRAVER_PHANTOMS", "") == "tiny":
        return _tiny_phantoms(kind, progress)
    return Cache.open(default_phantom_cache(kind, progress=progress, difficulty=difficulty)[1])


def _tiny_phantoms(kind: str, progress: bool) -> Cache:
    from braver.data.phantoms import synth_brain, synth_liver
    from braver.paths import cache_root
    from braver.preprocess import PrepareSettings, prepare_dataset

    if kind not in TINY:
        raise BraverError(f"unknown phantom kind {kind!r}", None, "choose 'brain' or 'liver'")
    base = cache_root() / "phantoms" / f"tiny-{kind}"
    cache = base / "cache"
    if (cache / "summary.json").exists():
        return Cache.open(cache)
    synth = synth_brain if kind == "brain" else synth_liver
    dataset = synth(base / "dataset", seed=2017, overwrite=True, progress=progress, **TINY[kind])
    prepare_dataset(dataset, cache, PrepareSettings(n4=False), progress=progress)
    return Cache.open(cache)


def dataset_cache(data: str | Path) -> Path:
    """Where the prepared cache of a dataset folder lives: keyed by its resolved path."""
    from braver.paths import cache_root

    resolved = Path(data).expanduser().resolve()
    key = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    return cache_root() / "datasets" / f"{resolved.name}-{key}"


def prepare_data(
    data: str | Path,
    *,
    format: str | None = None,
    workers: int = 1,
    progress: bool = True,
    settings=None,
    console: Console | None = None,
) -> Path:
    """Prepare a dataset folder into its cache (``dataset_cache``); returns the cache folder.

    Cases that cannot be prepared are reported (the first reason shown) and left out; no
    preparable case at all is an error naming the folder.
    """
    from braver.preprocess import prepare_dataset

    data = Path(data)
    if not data.exists():
        raise BraverError("dataset folder not found", data, "check the --data path")
    cache = dataset_cache(data)
    if console is not None:
        console.print(f"Preparing [bold]{data}[/] into the cache {cache}")
    report = prepare_dataset(
        data, cache, settings, format=format, workers=workers, progress=progress, console=console
    )
    if console is not None:
        for note in report.notes:
            console.print(f"[yellow]note[/]: {note}")
    if report.failed and console is not None:
        first = report.failed[0]
        console.print(
            f"[yellow]{len(report.failed)} case(s) could not be prepared[/] "
            f"(first: {first.case_id}: {first.reason}); training on the others"
        )
    if not report.summary and not (cache / "summary.json").exists():
        raise BraverError("no case could be prepared", data, "see 'braver data inspect'")
    return cache


def training_cache(
    kind: str,
    data: str | Path | None = None,
    *,
    format: str | None = None,
    workers: int = 1,
    progress: bool = True,
    settings=None,
    console: Console | None = None,
) -> Path:
    """The cache to train on: the phantoms of ``kind`` without ``data``, else ``data``
    prepared with ``settings`` (``braver.preprocess.PrepareSettings``)."""
    if data is not None:
        return prepare_data(
            data,
            format=format,
            workers=workers,
            progress=progress,
            settings=settings,
            console=console,
        )
    if console is not None:
        console.print(
            f"No --data: using the built-in phantom {kind} set "
            f"(recipe profile [bold]phantom[/], sized for a CPU)"
        )
    return phantom_cache(kind, progress=progress).root

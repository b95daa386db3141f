"""Where braver keeps generated data and runs by default."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root of braver's own cache (phantom datasets and their preprocessed arrays).

    ``$BRAVER_CACHE`` wins, then ``$XDG_CACHE_HOME/braver``, then ``~/.cache/braver``.
    """
    if env := os.environ.get("BRAVER_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "braver"


def default_runs_dir() -> Path:
    """Run folders go to ``./runs`` unless a command is told otherwise."""
    return Path.cwd() / "runs"

"""The one exception type that the CLI turns into a single clear sentence and a non-zero exit."""

from __future__ import annotations

from pathlib import Path


class BraverError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    The message names the file (when there is one), what is wrong, and what to do about it.
    The CLI prints it as one sentence with exit code 2 and no traceback (unless ``--debug``).
    """

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = Path(path) if path is not None else None
        self.hint = hint
        text = f"{self.path}: {message}" if self.path is not None else message
        if hint:
            text = f"{text.rstrip('.')}; {hint}"
        if not text.endswith("."):
            text += "."
        super().__init__(text)

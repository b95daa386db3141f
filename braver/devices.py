"""The one device resolver: ``auto`` → cuda when available, else cpu; names checked."""

from __future__ import annotations

import torch

from braver.errors import BraverError


def resolve_device(device: str | torch.device | None = "auto") -> str:
    """``auto``/``None`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cpu``, ``cuda`` and
    ``cuda:N`` are checked (an unknown name or a missing GPU is one clear ``BraverError``)."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise BraverError(
            f"unknown device {name!r}", None, "pass --device auto, cpu, cuda or cuda:N"
        ) from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BraverError(
            f"device {name!r} was asked for but CUDA is not available",
            None,
            "pass --device cpu (or auto)",
        )
    if parsed.type not in ("cpu", "cuda"):
        raise BraverError(f"device {name!r} is not supported", None, "pass --device cpu or cuda")
    return name

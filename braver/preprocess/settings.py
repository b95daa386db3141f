"""What ``braver data prepare`` does to every case: ``PrepareSettings`` and the version stamp.

The settings are part of each cached case's fingerprint and are recorded in its meta, so that
``predict`` preprocesses a new case exactly as the training cache was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from braver.errors import BraverError

# Bump when the arrays written for the same input and settings change.
PREPROCESS_VERSION = 1


@dataclass
class PrepareSettings:
    """What ``braver data prepare`` does to every case; part of each case's fingerprint."""

    clip_percentiles: tuple[float, float] = (1.0, 99.0)  # MRI, of foreground intensities
    n4: bool = False  # N4 bias-field correction (MRI only)
    n4_channels: tuple[str, ...] = ("t1", "t1c")
    n4_shrink: int = 4  # N4 runs on a grid shrunk by this factor; the field is applied in full
    hu_window: tuple[float, float] = (-200.0, 300.0)  # CT: clipped to this and scaled to [0, 1]
    body_threshold_hu: float = -500.0  # CT foreground: voxels above this (air is about -1000)
    crop_margin: int = 0  # voxels kept around the foreground box on every side

    def __post_init__(self) -> None:
        self.clip_percentiles = tuple(float(p) for p in self.clip_percentiles)
        self.hu_window = tuple(float(v) for v in self.hu_window)
        self.n4_channels = tuple(self.n4_channels)
        low, high = self.clip_percentiles
        if not 0 <= low < high <= 100:
            raise BraverError(
                f"clip percentiles {list(self.clip_percentiles)} must satisfy 0 <= low < high <= 100"
            )
        if not self.hu_window[0] < self.hu_window[1]:
            raise BraverError(
                f"HU window {list(self.hu_window)} must be [low, high] with low < high"
            )
        if self.crop_margin < 0 or self.n4_shrink < 1:
            raise BraverError("crop_margin must be >= 0 and n4_shrink >= 1")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrepareSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BraverError(
                f"unknown preprocessing settings {unknown}", None, f"known: {sorted(known)}"
            )
        return cls(**data)


__all__ = ["PREPROCESS_VERSION", "PrepareSettings"]

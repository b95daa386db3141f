"""What ``braver data prepare`` does to every case: ``PrepareSettings`` and the version stamp.

The settings are part of each cached case's fingerprint and are recorded in its meta, so that
``predict`` preprocesses a new case exactly as the training cache was.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from braver.errors import BraverError

# Bump when the arrays written for the same input and settings change.
# 2: the paper's order (clip, then N4, then z-score; N4 ran before the clip in 1).
PREPROCESS_VERSION = 2

CT_NORMALISATIONS = ("unit", "zscore")


def _pair(value: Any, what: str, example: str) -> tuple[float, float]:
    """``value`` as two floats ``(low, high)``, or one sentence saying what it must be."""
    if not isinstance(value, str | bytes):
        try:
            low, high = (float(v) for v in value)
            return low, high
        except (TypeError, ValueError):
            pass
    raise BraverError(f"{what} {value!r} must be two numbers [low, high]", None, f"e.g. {example}")


@dataclass
class PrepareSettings:
    """What ``braver data prepare`` does to every case; part of each case's fingerprint."""

    clip_percentiles: tuple[float, float] = (1.0, 99.0)  # MRI, of foreground intensities
    # N4 bias-field correction, after the clip (the paper, section 4). None: on for MRI, never
    # for CT; True asks for it (an error on CT); False: off.
    n4: bool | None = None
    n4_channels: tuple[str, ...] = ("t1", "t1c")  # the paper's; with n4=None, those present
    n4_shrink: int = 4  # N4 runs on a grid shrunk by this factor; the field is applied in full
    hu_window: tuple[float, float] = (-200.0, 300.0)  # CT: clipped to this window, then ...
    # ... "zscore": z-scored inside the body, as MRI (the default: the brain networks were
    # trained on z-scores, and it transfers better, bench/quality.py); "unit": scaled to [0, 1]
    ct_normalisation: str = "zscore"
    body_threshold_hu: float = -500.0  # CT foreground: voxels above this (air is about -1000)
    crop_margin: int = 0  # voxels kept around the foreground box on every side (file grid)
    # in-plane (Y, X) voxel size of the cached arrays, mm; None keeps the file's spacing.
    # Slices (Z) are never resampled: the networks see axial 2D patches.
    target_spacing_mm: float | None = None

    def __post_init__(self) -> None:
        self.clip_percentiles = _pair(self.clip_percentiles, "clip percentiles", "[1.0, 99.0]")
        self.hu_window = _pair(self.hu_window, "HU window", "[-200.0, 300.0]")
        if isinstance(self.n4_channels, str):
            self.n4_channels = (self.n4_channels,)
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
        if self.n4 is not None and not isinstance(self.n4, bool):
            raise BraverError(f"n4 = {self.n4!r} must be true, false or left out (MRI: on)")
        if self.ct_normalisation not in CT_NORMALISATIONS:
            raise BraverError(
                f"ct_normalisation = {self.ct_normalisation!r} is not a CT normalisation",
                None,
                f"choose one of: {', '.join(CT_NORMALISATIONS)}",
            )
        if self.target_spacing_mm is not None:
            if isinstance(self.target_spacing_mm, bool) or not self.target_spacing_mm > 0:
                raise BraverError(
                    f"target_spacing_mm = {self.target_spacing_mm!r} must be a positive number "
                    "of millimetres",
                    None,
                    "e.g. 1.0 for brain MRI, or leave it out to keep the file's spacing",
                )
            self.target_spacing_mm = float(self.target_spacing_mm)

    def n4_applies(self, modality: str) -> bool:
        """Whether N4 runs on a dataset of ``modality`` ("mri" | "ct")."""
        return modality == "mri" and self.n4 is not False

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
        # a run recorded before CT could be z-scored had its CT scaled to [0, 1]
        return cls(**{"ct_normalisation": "unit", **data})


__all__ = ["PREPROCESS_VERSION", "CT_NORMALISATIONS", "PrepareSettings"]

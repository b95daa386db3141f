"""Label schemes: original label values, contiguous class names, and the regions scored.

Every dataset format maps its label values to contiguous class indices ``0..n-1``; the
scheme keeps the original values so predictions are written back as the dataset wrote them.
Regions (what Dice and HD95 are reported on) are unions of classes, named by class name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from braver.errors import BraverError


@dataclass(frozen=True)
class LabelScheme:
    """Original label values, the class name of each, and the evaluated regions."""

    name: str
    values: tuple[int, ...]
    class_names: tuple[str, ...]
    regions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.values) != len(self.class_names):
            raise ValueError("one class name per label value")

    @property
    def num_classes(self) -> int:
        return len(self.values)

    def region_classes(self, region: str) -> tuple[int, ...]:
        """Class indices that make up ``region``."""
        return tuple(self.class_names.index(c) for c in self.regions[region])

    def to_classes(self, label: np.ndarray, path: object = None) -> np.ndarray:
        """Map original label values to contiguous class indices (uint8).

        Unknown values are an error naming the file and the values found.
        """
        lut_size = max(int(label.max(initial=0)), max(self.values)) + 1
        if label.min(initial=0) < 0:
            raise BraverError(
                f"label has negative values; expected {list(self.values)} ({self.name})",
                path,
                "check that this is the segmentation file",
            )
        lut = np.full(lut_size, 255, dtype=np.uint8)
        lut[list(self.values)] = np.arange(len(self.values), dtype=np.uint8)
        classes = lut[label.astype(np.int64, copy=False)]
        if (classes == 255).any():
            unknown = sorted(set(np.unique(label).tolist()) - set(self.values))
            raise BraverError(
                f"unexpected label values {unknown}; the {self.name} layout uses {list(self.values)}",
                path,
                "pass --format to choose another layout or fix the segmentation",
            )
        return classes

    def to_values(self, classes: np.ndarray) -> np.ndarray:
        """Map class indices back to the original label values."""
        lut = np.asarray(self.values, dtype=np.int16)
        out = lut[classes.astype(np.int64, copy=False)]
        return out.astype(np.uint8 if max(self.values) < 256 else np.int16)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "values": list(self.values),
            "class_names": list(self.class_names),
            "regions": {k: list(v) for k, v in self.regions.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> LabelScheme:
        return cls(
            name=data["name"],
            values=tuple(data["values"]),
            class_names=tuple(data["class_names"]),
            regions={k: tuple(v) for k, v in data.get("regions", {}).items()},
        )


# BraTS regions, in every edition: whole tumour = every tumour class, core = whole minus
# edema, enhancing = the enhancing class. BRATS 2013 calls the first "complete".
_BRATS_REGIONS = {
    "whole_tumor": ("necrosis", "edema", "enhancing"),
    "tumor_core": ("necrosis", "enhancing"),
    "enhancing_tumor": ("enhancing",),
}

BRATS_2021 = LabelScheme(
    "BraTS 2018-2021",
    (0, 1, 2, 4),
    ("background", "necrosis", "edema", "enhancing"),
    _BRATS_REGIONS,
)
BRATS_2023 = LabelScheme(
    "BraTS 2023",
    (0, 1, 2, 3),
    ("background", "necrosis", "edema", "enhancing"),
    _BRATS_REGIONS,
)
BRATS_2013 = LabelScheme(
    "BRATS 2013",
    (0, 1, 2, 3, 4),
    ("background", "necrosis", "edema", "non_enhancing", "enhancing"),
    {
        "whole_tumor": ("necrosis", "edema", "non_enhancing", "enhancing"),
        "tumor_core": ("necrosis", "non_enhancing", "enhancing"),
        "enhancing_tumor": ("enhancing",),
    },
)
MSD_BRAIN = LabelScheme(
    "MSD Task01_BrainTumour",
    (0, 1, 2, 3),
    ("background", "edema", "non_enhancing", "enhancing"),
    {
        "whole_tumor": ("edema", "non_enhancing", "enhancing"),
        "tumor_core": ("non_enhancing", "enhancing"),
        "enhancing_tumor": ("enhancing",),
    },
)
LIVER = LabelScheme(
    "liver CT (LiTS / MSD Task03)",
    (0, 1, 2),
    ("background", "liver", "tumor"),
    {"liver": ("liver", "tumor"), "tumor": ("tumor",)},
)

SCHEMES = {s.name: s for s in (BRATS_2021, BRATS_2023, BRATS_2013, MSD_BRAIN, LIVER)}

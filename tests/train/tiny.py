"""A tiny labelled cache that a TwoPathCNN can learn something from in a few steps.

Imported by tests/train/conftest.py and tests/cli/test_train.py (by path).
"""

from __future__ import annotations

import numpy as np

from braver.data.cache import Cache, write_case, write_summary
from braver.data.labels import BRATS_2021

#: a recipe's --set values for one short fit on the tiny cache (every stage, cascades too)
TINY = [
    "data.mode=tile",
    "data.tile=4",
    "data.batch_size=2",
    "data.validation_fraction=0.25",
    "data.validation_patches=4",
    "stage1.epochs=1",
    "stage1.patches_per_epoch=4",
    "stage2.epochs=1",
    "stage2.patches_per_epoch=4",
    "cascade.first_epochs=1",
    "cascade.first_patches_per_epoch=4",
    "cascade.first_stage2_epochs=1",
    "model.dropout=0.0",
]


def write_tiny_cache(root, cases: int = 4, shape=(4, 40, 40), seed: int = 0) -> Cache:
    """Round head (foreground), a tumour of three nested classes, each bright in one channel."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    yy, xx = np.mgrid[:height, :width]
    ids = []
    for n in range(cases):
        head = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.45 * height) ** 2
        cy, cx = rng.integers(14, height - 14), rng.integers(14, width - 14)
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        label2d = np.zeros((height, width), np.uint8)
        label2d[r2 < 49] = 2  # edema
        label2d[r2 < 16] = 1  # necrosis
        label2d[r2 < 4] = 3  # enhancing
        label = np.repeat(label2d[None], depth, axis=0)
        image = rng.normal(0, 0.3, size=(4, depth, height, width)).astype(np.float32)
        for c in range(4):
            image[c] += 2.0 * (label == c)
        image *= head
        write_case(
            root,
            f"tiny{n:02d}",
            image,
            label,
            {"case_id": f"tiny{n:02d}", "spacing_zyx": [1.0, 1.0, 1.0], "channels": list("abcd")},
        )
        ids.append(f"tiny{n:02d}")
    write_summary(
        root,
        {
            "label_scheme": BRATS_2021.to_json(),
            "channels": ["t1", "t1c", "t2", "flair"],
            "cases": ids,
            "settings": {"tiny": True},
        },
    )
    return Cache.open(root)

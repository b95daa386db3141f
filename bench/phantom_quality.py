"""Quality of the default phantom run: whole-volume Dice of `braver train brain` and its time.

Trains the shipped brain recipe with its phantom profile (what `braver train brain` does
without --data) on the built-in phantom set, and prints the whole-volume validation Dice per
region, per case, and the seconds spent. Variants show where the figures come from:

    python bench/phantom_quality.py                       # the default run
    python bench/phantom_quality.py --prepare no-n4       # the cache without bias correction
    python bench/phantom_quality.py --set data.flip=false --set data.intensity=0

`--prepare` re-prepares the phantom dataset into a temporary cache with other settings
(``default``: the phantom cache's own, N4 on all four channels; ``no-n4``; ``paper-n4``: N4
on T1 and T1c only, as the paper). The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

PREPARE = {
    "default": None,
    "no-n4": {"n4": False},
    "paper-n4": {"n4": True, "n4_channels": ("t1", "t1c")},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", choices=sorted(PREPARE), default="default")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()

    import importlib.resources

    import torch
    from rich.console import Console

    from braver.data.phantoms import default_phantom_cache
    from braver.preprocess import PrepareSettings, default_workers, prepare_dataset
    from braver.recipe import load_recipe
    from braver.train import train_from_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    start = time.perf_counter()
    dataset, cache = default_phantom_cache("brain", progress=False)
    phantom_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="braver-bench-") as tmp:
        if PREPARE[args.prepare] is not None:
            cache = Path(tmp) / "cache"
            settings = PrepareSettings(**PREPARE[args.prepare])
            report = prepare_dataset(
                dataset, cache, settings, workers=default_workers(), progress=False
            )
            if report.failed:
                raise SystemExit(f"prepare failed: {report.failed[0].reason}")
        recipe_path = importlib.resources.files("braver.recipes") / "brain.toml"
        recipe = load_recipe(recipe_path, args.overrides, profile="phantom")
        start = time.perf_counter()
        run = train_from_recipe(
            recipe, cache=cache, out=Path(tmp) / "runs", console=console, progress=False
        )
        seconds = time.perf_counter() - start
        metrics = json.loads((run / "metrics.json").read_text())
    result = {
        "bench": "phantom_quality",
        "prepare": args.prepare,
        "overrides": args.overrides,
        "whole_tumor_dice": round(metrics["whole_tumor_dice"], 4),
        "tumor_core_dice": round(metrics["tumor_core_dice"], 4),
        "enhancing_tumor_dice": round(metrics["enhancing_tumor_dice"], 4),
        "whole_tumor_dice_per_case": {
            row["case"]: round(row["whole_tumor_dice"], 4) for row in metrics["cases"]
        },
        "train_and_evaluate_seconds": round(seconds, 1),
        "phantom_cache_seconds": round(phantom_seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

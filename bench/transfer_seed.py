"""The seed study's transfer table on the liver phantoms, and the CT normalisation choice.

Runs `braver transfer liver` (the shipped recipe with its phantom profile) from a cascade
brain run on the built-in liver phantoms, prepared once per CT normalisation (``unit``: the HU
window scaled to [0, 1]; ``zscore``: z-scored inside the body, as the brain's MRI channels
were), and prints one row per (normalisation, setup): trainable parameters, seconds per epoch,
train and validation patch accuracy, liver and tumour Dice, beside the seed's own figures.

    python bench/transfer_seed.py --from runs/brain-phantom-…            # the seed's four setups
    python bench/transfer_seed.py --from RUN --normalisation unit --normalisation zscore \\
        --freeze seed-both-outputs --set stage1.epochs=3

The last line of stdout is one JSON object; ``ratio`` is E2E's seconds per epoch over
"global & local scale"'s (the seed: 30 s / 9.5 s, "1/3 of the time for −1%").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

KEPT = (
    "setup",
    "seed_setup",
    "trainable_parameters",
    "seed_trainable_parameters",
    "seconds_per_epoch",
    "seed_seconds_per_epoch",
    "cpu_seconds_per_epoch",
    "epochs",
    "train_accuracy",
    "seed_train_accuracy",
    "valid_accuracy",
    "seed_valid_accuracy",
    "accuracy_of",
    "liver_dice",
    "tumor_dice",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, required=True, help="brain run")
    parser.add_argument(
        "--normalisation", action="append", choices=("unit", "zscore"), default=None
    )
    parser.add_argument("--freeze", action="append", default=None, help="default: the recipe's")
    parser.add_argument("--baseline", action="store_true", help="also train from scratch")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()

    import torch
    from rich.console import Console

    from braver.data.phantoms import PREPARE_LIVER, default_phantom_cache
    from braver.preprocess import PrepareSettings, default_workers, prepare_dataset
    from braver.studies.transfer import plan_transfer_study, run_transfer_study

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    plan = plan_transfer_study(
        "liver",
        source=args.source,
        freeze=args.freeze,
        baseline=args.baseline,
        overrides=[*args.overrides, "transfer.baseline=false"]
        if not args.baseline
        else args.overrides,
    )
    dataset, _ = default_phantom_cache("liver", progress=False)
    results: dict[str, list[dict]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="braver-bench-") as tmp:
        for normalisation in args.normalisation or ["unit"]:
            cache = Path(tmp) / f"cache-{normalisation}"
            settings = PrepareSettings(**{**PREPARE_LIVER, "ct_normalisation": normalisation})
            report = prepare_dataset(
                dataset, cache, settings, workers=default_workers(), progress=False
            )
            if report.failed:
                raise SystemExit(f"could not prepare the liver phantoms: {report.failed[0]}")
            study = run_transfer_study(
                plan, cache=cache, out=Path(tmp) / f"runs-{normalisation}", device="cpu",
                console=console,
            )  # fmt: skip
            console.print(study.table())
            results[normalisation] = [{k: row.get(k) for k in KEPT} for row in study.rows]
    print(json.dumps(_summary(args, plan, results, time.perf_counter() - started)))


def _summary(args, plan, results: dict, seconds: float) -> dict:
    import torch

    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": "cpu",
        },
        "source_run": str(args.source),
        "source_model": plan.brain.config["name"],
        "overrides": args.overrides,
        "total_seconds": round(seconds, 1),
        "rows": results,
    }
    first = next(iter(results.values()))
    by_seed = {row["seed_setup"]: row for row in first if row.get("seed_setup")}
    both, e2e = by_seed.get("global & local scale"), by_seed.get("E2E")
    if both and e2e and both["seconds_per_epoch"]:
        out["ratio"] = round(e2e["seconds_per_epoch"] / both["seconds_per_epoch"], 2)
        out["valid_accuracy_e2e_minus_both"] = round(
            e2e["valid_accuracy"] - both["valid_accuracy"], 4
        )
    return out


if __name__ == "__main__":
    main()

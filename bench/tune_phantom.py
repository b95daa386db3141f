"""`braver tune brain` on the phantoms against the shipped phantom profile, same validation cases.

Runs (or resumes) a study of the shipped search space (recipes/tune_space.toml) on the
built-in phantom set with a short schedule, then trains the shipped phantom profile as
`braver train brain` does (its full schedule), and compares whole-volume whole-tumour Dice on
the same validation cases (one split: ``data.seed`` is not searched):

    python bench/tune_phantom.py                                   # 12 trials of 5 epochs
    python bench/tune_phantom.py --trials 20 --set stage1.epochs=8
    python bench/tune_phantom.py --out runs --reference runs/brain-phantom-…   # reuse both

``--out`` keeps the study (a second call resumes it); ``--reference RUN`` takes an already
trained shipped-profile run instead of training one. The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--set", dest="overrides", action="append", default=None)
    parser.add_argument("--out", type=Path, default=None, help="keeps the study (default: temp)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds for new trials")
    parser.add_argument("--reference", type=Path, default=None, help="a shipped-profile run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    overrides = args.overrides if args.overrides is not None else ["stage1.epochs=5"]

    import torch
    from rich.console import Console

    from braver.data.phantoms import default_phantom_cache
    from braver.recipe import load_recipe, shipped_recipe
    from braver.studies.tune import default_space_path, load_space, recipe_trainer, tune
    from braver.train import train_from_recipe

    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(stderr=True)
    _, cache = default_phantom_cache("brain", progress=False)
    with tempfile.TemporaryDirectory(prefix="braver-bench-") as tmp:
        out = args.out or Path(tmp)
        recipe = load_recipe(shipped_recipe("brain"), overrides, profile="phantom")
        space = load_space(default_space_path(), recipe, profile="phantom")
        start = time.perf_counter()
        result = tune(
            recipe,
            space,
            recipe_trainer(cache, console=console),
            folder=out / f"tune-{recipe.name}",
            study_name=recipe.name,
            metric="whole_tumor_dice",
            trials=args.trials,
            timeout=args.timeout,
            console=console,
        )
        tune_seconds = time.perf_counter() - start
        study = result.study
        states = [t.state.name.lower() for t in study.trials]
        baseline = next((t for t in study.trials if t.user_attrs.get("baseline")), None)
        best_run = Path(result.best["run"])

        reference = args.reference
        reference_seconds = None
        if reference is None:
            start = time.perf_counter()
            shipped = load_recipe(shipped_recipe("brain"), profile="phantom")
            reference = train_from_recipe(
                shipped, cache=cache, out=out / "reference", console=console, progress=False
            )
            reference_seconds = round(time.perf_counter() - start, 1)
        best_metrics = json.loads((best_run / "metrics.json").read_text())
        reference_metrics = json.loads((reference / "metrics.json").read_text())
        same_cases = _cases(best_run) == _cases(reference)

    shipped_dice = reference_metrics["whole_tumor_dice"]
    best_dice = result.best["whole_tumor_dice"]
    figures = {
        "bench": "tune_phantom",
        "overrides": overrides,
        "trials": {s: states.count(s) for s in sorted(set(states))},
        "best_trial": result.best["trial"],
        "best_params": result.best["params"],
        "best_whole_tumor_dice": round(best_dice, 4),
        "best_dice_per_region": {k: round(best_metrics[k], 4) for k in _dice_keys(best_metrics)},
        "baseline_trial_whole_tumor_dice": (
            round(baseline.value, 4) if baseline is not None and baseline.value else None
        ),
        "shipped_profile_whole_tumor_dice": round(shipped_dice, 4),
        "shipped_profile_dice_per_region": {
            k: round(reference_metrics[k], 4) for k in _dice_keys(reference_metrics)
        },
        "same_validation_cases": same_cases,
        "validation_cases": len(reference_metrics.get("validation_cases", [])),
        "tune_seconds": round(tune_seconds, 1),
        "shipped_profile_seconds": reference_seconds,
        "ratio": round(best_dice / shipped_dice, 4) if shipped_dice else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "machine": platform.machine(),
        "device": "cpu",
        "torch": torch.__version__,
    }
    print(json.dumps(figures))


def _cases(run: Path) -> list[str]:
    return list(json.loads((run / "run.json").read_text())["validation_cases"])


def _dice_keys(metrics: dict) -> list[str]:
    """The whole-volume Dice keys present in a metrics.json."""
    return [k for k in metrics if k.endswith("_dice") and isinstance(metrics[k], int | float)]


if __name__ == "__main__":
    main()

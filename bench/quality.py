"""Quality where it is hard: whole-volume Dice per region on the phantoms, before and after
post-processing, and the post-processing values measured on the validation cases.

Three figures, each from a run trained as a user would train it (phantom profile of the
shipped recipe, the built-in phantom caches):

- ``brain-easy``: ``braver train brain`` on the default (easy) phantoms;
- ``brain-realistic``: the same recipe on the realistic phantoms (look-alikes, low contrast,
  small and multiple lesions, thick slices, scanner variation; ``braver data synth
  --difficulty realistic``);
- ``liver``: ``braver transfer liver --freeze local`` from the brain-easy run on the liver
  phantoms (easy; ``--liver-difficulty realistic`` for the realistic ones).

For each, the validation cases are predicted once (dense, no post-processing) and every
post-processing option (``braver.postprocess``) is chosen in turn by ``select_option``
(highest mean Dice over the regions and cases, the gentlest value on a tie) from
``braver.postprocess.CANDIDATES``: brain — ``min_component_voxels``, then ``fill_holes``;
liver — ``largest_component``, then ``inside_organ_dilation_mm``, ``min_component_voxels``,
``fill_holes`` (``choose_options``). The values are chosen
on the same validation cases they are reported on: the "postprocessed" Dice is the optimistic
end; "raw" is the network alone.

    python bench/quality.py                                   # all three (tens of minutes)
    python bench/quality.py --only brain-easy --runs runs-q   # one, keeping its run folder
    python bench/quality.py --only liver --brain-run runs-q/brain-phantom-…  # reuse a run
    python bench/quality.py --reuse brain-easy=RUN            # measure an existing run only
    python bench/quality.py --only liver --brain-run RUN --liver-prepare target_spacing_mm=3.75
                                                    # the liver phantoms prepared another way
    python bench/quality.py --only liver --brain-run RUN --liver-folds 5
                  # five transfers, each validated on one fold of the 16 cases (data.fold):
                  # every case scored once, the Dice a mean over all 16 (``pooled``)
    python bench/quality.py --only liver --brain-run RUN --liver-align-oracle
                  # each liver case shifted so that its liver's median (from its labels: an
                  # oracle, not a method) is the same in every case; what calibrating each
                  # case to its liver could buy at most

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

STUDIES = ("brain-easy", "brain-realistic", "liver")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(STUDIES), help="comma list of " + ", ".join(STUDIES)
    )
    parser.add_argument("--runs", type=Path, default=None, help="keep run folders here")
    parser.add_argument(
        "--brain-run", type=Path, default=None, help="liver: transfer from this run"
    )
    parser.add_argument(
        "--reuse", action="append", default=[], help="STUDY=RUN: measure this run, do not train"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--liver-set", dest="liver_overrides", action="append", default=[])
    parser.add_argument("--liver-difficulty", choices=("easy", "realistic"), default="easy")
    parser.add_argument(
        "--liver-prepare",
        action="append",
        default=[],
        help="KEY=VALUE of [prepare] (e.g. target_spacing_mm=2.5): the liver phantoms are "
        "prepared again with these settings into a cache of their own",
    )
    parser.add_argument(
        "--liver-align-oracle",
        action="store_true",
        help="liver: shift each case so that its true liver's median is the mean of them all",
    )
    parser.add_argument(
        "--liver-folds",
        type=int,
        default=0,
        help="liver: K transfers, fold k of K validating each (data.fold): every case once",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    studies = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    reuse = dict(item.split("=", 1) for item in args.reuse)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {
        "bench": "quality",
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="braver-quality-") as tmp:
        runs = args.runs or Path(tmp) / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        brain_run = args.brain_run
        for study in studies:
            start, folds = time.perf_counter(), []
            if study in reuse:
                run, trained = Path(reuse[study]), None
            elif study.startswith("brain"):
                difficulty = study.split("-", 1)[1]
                run, trained = train_brain(difficulty, args.overrides, runs)
            else:
                source = brain_run or (Path(reuse["brain-easy"]) if "brain-easy" in reuse else None)
                if source is None:
                    raise SystemExit("liver: pass --brain-run RUN or run brain-easy first")
                for fold in range(args.liver_folds) if args.liver_folds else [None]:
                    split = (
                        []
                        if fold is None
                        else [f"data.fold={fold}", f"data.folds={args.liver_folds}"]
                    )
                    run, trained = transfer_liver(
                        source,
                        args.liver_overrides + split,
                        runs,
                        args.liver_difficulty,
                        args.liver_prepare,
                        align=args.liver_align_oracle,
                    )
                    if fold is not None:
                        folds.append({"fold": fold, **measure(run), "train_seconds": trained})
            if study == "brain-easy":
                brain_run = brain_run or run
            figures = pooled(folds) if study == "liver" and folds else measure(run)
            figures["overrides"] = args.liver_overrides if study == "liver" else args.overrides
            if study == "liver":
                figures["prepare"] = args.liver_prepare
                figures["align_oracle"] = args.liver_align_oracle
            figures["train_seconds"] = figures.get("train_seconds") or (
                trained if trained is not None else figures["run_train_seconds"]
            )
            figures["bench_seconds"] = round(time.perf_counter() - start, 1)
            figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            result[study.replace("-", "_")] = figures
            print(json.dumps({study: figures}), flush=True)  # partial results as they come
    result.update(
        {
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "machine": platform.machine(),
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        }
    )
    print(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# training as a user would


def _console():
    from rich.console import Console

    return Console(stderr=True)


def train_brain(difficulty: str, overrides: list[str], runs: Path) -> tuple[Path, float]:
    """``braver train brain`` (phantom profile) on the phantoms of this difficulty."""
    from braver.data.phantoms import default_phantom_cache
    from braver.recipe import load_recipe, shipped_recipe
    from braver.train import train_from_recipe

    _, cache = default_phantom_cache("brain", progress=False, difficulty=difficulty)
    recipe = load_recipe(shipped_recipe("brain"), overrides, profile="phantom")
    start = time.perf_counter()
    run = train_from_recipe(recipe, cache=cache, out=runs, console=_console(), progress=False)
    return Path(run), round(time.perf_counter() - start, 1)


def transfer_liver(
    brain_run: Path,
    overrides: list[str],
    runs: Path,
    difficulty: str,
    prepare: list[str] = (),
    align: bool = False,
) -> tuple[Path, float]:
    """``braver transfer liver --freeze local`` (phantom profile) from ``brain_run``; with
    ``prepare`` (``KEY=VALUE`` of ``PrepareSettings``) on the liver phantoms prepared again;
    with ``align``, on a copy of the cache aligned on each case's true liver (``aligned``)."""
    from braver.data.phantoms import PREPARE_LIVER, default_phantom_cache
    from braver.studies.transfer import plan_transfer_study, run_transfer_study

    plan = plan_transfer_study("liver", source=brain_run, freeze=["local"], overrides=overrides)
    dataset, cache = default_phantom_cache("liver", progress=False, difficulty=difficulty)
    if prepare:
        cache = prepared_again(dataset, {**PREPARE_LIVER, **_parsed(prepare)}, runs)
    if align:
        cache = aligned(Path(cache), runs)
    start = time.perf_counter()
    study = run_transfer_study(plan, cache=cache, out=runs, device="cpu", console=_console())
    return Path(study.rows[0]["run"]), round(time.perf_counter() - start, 1)


def _parsed(pairs: list[str]) -> dict:
    """``KEY=VALUE`` pairs, values read as TOML (numbers, strings, lists)."""
    import tomllib

    return {k: tomllib.loads(f"v = {v}")["v"] for k, v in (p.split("=", 1) for p in pairs)}


def prepared_again(dataset: Path, settings: dict, runs: Path) -> Path:
    """The phantom ``dataset`` prepared with ``settings`` into a cache under ``runs``."""
    from braver.preprocess import PrepareSettings, prepare_dataset

    prepare = PrepareSettings(**settings)
    tag = "-".join(f"{k}{v}" for k, v in sorted(settings.items()))
    cache = runs / f"cache-{dataset.parent.name}-{tag}".replace(" ", "")
    prepare_dataset(dataset, cache, prepare, progress=False)
    return cache


def aligned(cache: Path, runs: Path) -> Path:
    """A copy of the liver ``cache`` whose cases are shifted so that the median of each one's
    liver voxels (label 1, from the labels) is the mean of those medians: an oracle, to tell
    how much of the tumour Dice the per-case calibration of the liver's density holds back."""
    import shutil

    import numpy as np

    out = runs / f"{cache.name}-aligned"
    if out.exists():  # made for an earlier fold: the same cases, shifted the same
        return out
    shutil.copytree(cache, out)
    images, medians = {}, {}
    for case in sorted(p for p in (out / "cases").iterdir() if p.is_dir()):
        image = images[case] = np.load(case / "image.npy")
        label = np.load(case / "label.npy").reshape(image.shape[1:])
        medians[case] = float(np.median(image[0][label == 1].astype(np.float32)))
    target = float(np.mean(list(medians.values())))
    for case, image in images.items():
        shifted = image.astype(np.float32) + np.float32(target - medians[case])
        np.save(case / "image.npy", shifted.astype(image.dtype))
    return out


# ---------------------------------------------------------------------------------------------
# measuring


def measure(run: Path) -> dict:
    """Dice per region of the run's validation cases, raw and post-processed, and the values."""
    from braver.inference import class_maps
    from braver.postprocess import NONE, choose_options, postprocess, region_dice
    from braver.runs import load_model, validation_cache

    model, info = load_model(run)
    cache = validation_cache(run, info, "train the run again")
    scheme = cache.scheme
    cases = class_maps(model, cache, info.validation_cases)

    def mean_dice(options) -> dict:
        totals: dict[str, float] = {}
        for pred, truth, spacing in cases:
            cleaned = postprocess(pred, scheme, options, spacing_zyx=spacing)
            for key, value in region_dice(cleaned, truth, scheme).items():
                totals[key] = totals.get(key, 0.0) + value / len(cases)
        return {k: round(v, 4) for k, v in totals.items()}

    options, tables = choose_options(cases, scheme, base=NONE)
    return {
        "run": str(run),
        "kind": info.kind,
        "recipe": _run_recipe(run),
        "validation_cases": len(cases),
        "run_train_seconds": info.extra.get("train_seconds"),
        "dice_raw": mean_dice(NONE),
        "postprocess_chosen": options.to_dict(),
        "dice_postprocessed": mean_dice(options),
        "postprocess_tables": {
            name: [{k: _rounded(v) for k, v in row.items()} for row in rows]
            for name, rows in tables.items()
        },
    }


def pooled(folds: list[dict]) -> dict:
    """The folds of a cross-validation as one figure: each Dice the mean over every validation
    case of every fold (each fold's mean weighted by its number of cases), the folds kept."""
    total = sum(f["validation_cases"] for f in folds)

    def mean(key: str) -> dict:
        names = folds[0][key]
        return {
            name: round(sum(f[key][name] * f["validation_cases"] for f in folds) / total, 4)
            for name in names
        }

    return {
        "kind": folds[0]["kind"],
        "recipe": folds[0]["recipe"],
        "validation_cases": total,
        "dice_raw": mean("dice_raw"),
        "dice_postprocessed": mean("dice_postprocessed"),
        "train_seconds": round(sum(f["train_seconds"] for f in folds), 1),
        "folds": [
            {
                k: f[k]
                for k in (
                    "fold",
                    "run",
                    "validation_cases",
                    "dice_raw",
                    "postprocess_chosen",
                    "dice_postprocessed",
                    "train_seconds",
                )
            }
            for f in folds
        ],
    }


def _rounded(value):
    return round(value, 4) if isinstance(value, float) else value


def _run_recipe(run: Path) -> dict:
    """The resolved recipe the run recorded (recipe.toml), for the JSON."""
    from braver.recipe import read_recipe_file

    path = run / "recipe.toml"
    return read_recipe_file(path) if path.exists() else {}


if __name__ == "__main__":
    main()

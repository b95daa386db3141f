"""How far can intensities alone go? A voxel classifier beside a run, on the same cases.

For the cache and the training / validation cases a run recorded, every voxel is described
by its channels' intensities, each also smoothed in plane at three scales (Gaussian sigma 1,
3 and 8 pixels: the neighbourhood a 2D patch sees, without its shapes), and a gradient-boosted
classifier (scikit-learn's ``HistGradientBoostingClassifier``, class-balanced, on voxels drawn
evenly per class from the training cases) labels the validation volumes, its probabilities
moved to the training cases' class frequencies by Bayes' rule (``voxels``; as trained:
``voxels_balanced``). It and the run's network are scored (and their voxel confusion matrices
summed: rows the true class, columns the class found) on whole volumes with no post-processing, region by region.

What it tells: where the voxel classifier scores far below the network, the network uses
shape and context; where it scores as high or higher, the network is not using a cue that
intensity alone gives; where both are low, the phantom leaves little in the intensities to
tell the region by (e.g. a non-enhancing core drawn as bright as edema).

    python bench/voxel_baseline.py runs/brain-phantom-…
    python bench/voxel_baseline.py runs/liver-phantom-freeze-local-… --per-class 30000

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

SIGMAS = (1.0, 3.0, 8.0)


def features(image):
    """(C, Z, Y, X) → (Z, Y, X, C · (1 + len(SIGMAS))) float32: raw and smoothed in plane."""
    import numpy as np
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float32)
    planes = [image]
    for sigma in SIGMAS:
        planes.append(gaussian_filter(image, (0, 0, sigma, sigma), mode="constant"))
    return np.concatenate(planes, axis=0).transpose(1, 2, 3, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder (its cache and case split)")
    parser.add_argument("--per-class", type=int, default=20000, help="training voxels per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch
    from sklearn.ensemble import HistGradientBoostingClassifier

    from braver.data.cache import Cache
    from braver.inference import predict_volume, score_classes
    from braver.postprocess import NONE
    from braver.runs import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    model, info = load_model(args.run)
    cache = Cache.open(info.cache)
    scheme = cache.scheme
    train_cases = info.extra.get("train_cases", [])
    if not train_cases:
        raise SystemExit(f"{args.run}: run.json lists no training cases; pass a braver run")

    # training voxels: foreground only (the network never labels the zero background either)
    xs, ys = [], []
    totals = np.zeros(scheme.num_classes)
    per_case = max(1, args.per_class // len(train_cases))
    for case_id in train_cases:
        case = cache.case(case_id)
        feats = features(case.image)
        label = np.asarray(case.label)
        foreground = (np.asarray(case.image) != 0).any(axis=0)
        totals += np.bincount(label[foreground], minlength=scheme.num_classes)[: len(totals)]
        for cls in range(scheme.num_classes):
            where = np.flatnonzero((label == cls) & foreground)
            if len(where):
                pick = rng.choice(where, size=min(per_case, len(where)), replace=False)
                xs.append(feats.reshape(-1, feats.shape[-1])[pick])
                ys.append(np.full(len(pick), cls))
    x, y = np.concatenate(xs), np.concatenate(ys)
    fitted = time.perf_counter()
    classifier = HistGradientBoostingClassifier(
        max_iter=200, class_weight="balanced", random_state=args.seed
    ).fit(x, y)
    fit_seconds = time.perf_counter() - fitted

    # trained class-balanced (a uniform prior), as the network's stage 1; "voxels" moves it to
    # the training cases' natural prior (Bayes' rule), as stage 2 calibrates the network
    log_prior = np.log(np.maximum(totals, 1) / totals.sum())
    rows = {"voxels": [], "voxels_balanced": [], "network": []}
    k = scheme.num_classes
    confusion = {name: np.zeros((k, k), dtype=np.int64) for name in rows}  # truth x found
    for case_id in info.validation_cases:
        case = cache.case(case_id)
        feats = features(case.image)
        foreground = (np.asarray(case.image) != 0).any(axis=0)
        log_p = np.log(np.maximum(classifier.predict_proba(feats[foreground]), 1e-12))
        found = {}
        for name, shift in (("voxels", log_prior[classifier.classes_]), ("voxels_balanced", 0.0)):
            found[name] = np.zeros(foreground.shape, dtype=np.uint8)
            found[name][foreground] = classifier.classes_[(log_p + shift).argmax(1)]
        found["network"] = predict_volume(model, case.image).argmax(0).astype(np.uint8)
        truth = np.asarray(case.label).ravel().astype(np.int64)
        for name, classes in found.items():
            confusion[name] += np.bincount(truth * k + classes.ravel(), minlength=k * k).reshape(
                k, k
            )
            scored = score_classes(case, classes, scheme, NONE).row
            rows[name].append({k: v for k, v in scored.items() if k.endswith("_dice")})
        print(
            case_id,
            "  ".join(
                f"{k} voxels {rows['voxels'][-1][k]:.3f} network {rows['network'][-1][k]:.3f}"
                for k in rows["voxels"][-1]
            ),
            flush=True,
        )
    regions = list(rows["voxels"][0])
    mean = {
        name: {k: round(float(np.mean([r[k] for r in found])), 4) for k in regions}
        for name, found in rows.items()
    }
    print(
        json.dumps(
            {
                "bench": "voxel_baseline",
                "run": str(args.run),
                "features": f"{len(cache.channels)} channels x (raw + Gaussian {list(SIGMAS)})",
                "training_voxels": int(len(y)),
                "fit_seconds": round(fit_seconds, 1),
                "validation_cases": list(info.validation_cases),
                "dice": mean,
                "classes": list(scheme.class_names),
                "confusion": {name: m.tolist() for name, m in confusion.items()},
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_end": [round(v, 2) for v in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()

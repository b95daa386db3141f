"""How well does a liver run use the one cue a tumour has: its density against the liver?

For each validation case of a liver run (``braver transfer liver``), inside the TRUE liver
(labels liver + tumour) the voxels are ranked three ways and each ranking's AUC for "is
tumour" is printed: the network's tumour probability, darkness (−intensity: most phantom and
LiTS tumours are hypodense) and the distance from the liver's median intensity (hypo- and
hyperdense). An AUC of 0.5 is chance, 1 a perfect ranking. Each true tumour (a connected
component of at least 20 voxels) gets a row too: its size, its contrast (median against the
liver's median), what the network labels its voxels (background / liver / tumour shares) and
its mean tumour probability; and the network's false tumour voxels are counted, inside the
true liver and out.

It also scores a rule that knows the true liver: "tumour = darker than the case's liver median
by more than t", with one offset t (in the cache's normalised units) chosen on the TRAINING
cases of the run and applied to its validation cases. Where the network's tumour Dice falls
below this rule, it is not using the density contrast that the rule gets from one number.

    python bench/tumour_cues.py runs/liver-phantom-freeze-local-…

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def auc(scores, positive) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    import numpy as np
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def rule_dice(image, label, offsets) -> list[float]:
    """Dice of "darker than the true liver's median by more than t" inside the liver, for each
    offset t (the liver's voxels and median are taken once)."""
    import numpy as np

    organ = label > 0
    values = image[organ]
    truth = label[organ] == 2
    darkness = float(np.median(values)) - values
    scores = []
    for offset in offsets:
        predicted = darkness > offset
        denominator = int(predicted.sum() + truth.sum())
        scores.append(
            1.0 if denominator == 0 else float(2 * (predicted & truth).sum() / denominator)
        )
    return scores


def tumour_rows(image, label, probs, predicted, min_voxels: int = 20) -> list[dict]:
    """One row per true tumour component of at least ``min_voxels`` voxels (largest first):
    voxels, contrast to the liver's median, shares of its voxels ``predicted`` each class,
    mean tumour probability (one pass over the volume per statistic, not per component)."""
    import numpy as np
    from scipy import ndimage

    liver_median = float(np.median(image[label == 1])) if (label == 1).any() else 0.0
    components, count = ndimage.label(label == 2)
    flat = components.ravel()
    voxels = np.bincount(flat, minlength=count + 1)
    found = np.bincount(flat * 3 + np.minimum(predicted.ravel(), 2), minlength=3 * (count + 1))
    shares = found.reshape(count + 1, 3) / np.maximum(voxels, 1)[:, None]
    tumour_probability = np.bincount(flat, weights=probs[2].ravel(), minlength=count + 1)
    kept = [i for i in range(1, count + 1) if voxels[i] >= min_voxels]
    medians = ndimage.median(image, components, kept) if kept else []
    rows = [
        {
            "voxels": int(voxels[i]),
            "contrast": round(float(median) - liver_median, 3),
            "predicted_background": round(float(shares[i, 0]), 3),
            "predicted_liver": round(float(shares[i, 1]), 3),
            "predicted_tumour": round(float(shares[i, 2]), 3),
            "mean_tumour_probability": round(float(tumour_probability[i] / voxels[i]), 3),
        }
        for i, median in zip(kept, np.atleast_1d(medians), strict=True)
    ]
    return sorted(rows, key=lambda row: -row["voxels"])


def liver_run(run: Path):
    """``(model, run info, cache)`` of a liver run folder; exits with one sentence otherwise."""
    from braver.data.cache import Cache
    from braver.runs import load_model

    model, info = load_model(run)
    cache = Cache.open(info.cache)
    names = [c.lower() for c in cache.scheme.class_names]
    if names[:3] != ["background", "liver", "tumor"]:
        raise SystemExit(f"{run}: not a liver run (classes {names}); pass a liver run folder")
    return model, info, cache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a liver run folder")
    parser.add_argument(
        "--on",
        choices=("validation", "training"),
        default="validation",
        help="the cases ranked and scored (training: how well the network fits its own data)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from braver.inference import predict_volume, score_classes
    from braver.postprocess import NONE

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, info, cache = liver_run(args.run)

    def arrays(case_id):
        case = cache.case(case_id)
        return np.asarray(case.image[0], dtype=np.float32), np.asarray(case.label)

    offsets = np.round(np.arange(0.0, 1.51, 0.05), 2)
    train_cases = info.extra.get("train_cases", [])
    train = [arrays(c) for c in train_cases]
    train_dice = np.mean([rule_dice(i, lab, offsets) for i, lab in train], axis=0)
    offset = float(offsets[int(np.argmax(train_dice))])

    rows = []
    scored_cases = info.validation_cases if args.on == "validation" else train_cases
    for case_id in scored_cases:
        image, label = arrays(case_id)
        probs = predict_volume(model, cache.case(case_id).image)
        predicted = probs.argmax(0).astype(np.uint8)  # once: scored, counted and per tumour
        organ = label > 0
        tumour = label[organ] == 2
        values = image[organ]
        scored = score_classes(cache.case(case_id), predicted, cache.scheme, NONE)
        rows.append(
            {
                "case": case_id,
                "tumour_fraction_of_liver": round(float(tumour.mean()), 4),
                "auc_network": round(auc(probs[2][organ], tumour), 4),
                "auc_darkness": round(auc(-values, tumour), 4),
                "auc_distance_from_median": round(
                    auc(np.abs(values - np.median(values)), tumour), 4
                ),
                "tumor_dice_network": round(float(scored.row["tumor_dice"]), 4),
                "tumor_dice_rule": round(rule_dice(image, label, [offset])[0], 4),
                "false_tumour_voxels": int(((predicted == 2) & (label != 2)).sum()),
                "false_tumour_voxels_in_liver": int(((predicted == 2) & (label == 1)).sum()),
                "tumours": tumour_rows(image, label, probs, predicted),
            }
        )
        print("  ".join(f"{k} {v}" for k, v in rows[-1].items() if k != "tumours"), flush=True)
        for tumour_row in rows[-1]["tumours"]:
            print("    tumour  " + "  ".join(f"{k} {v}" for k, v in tumour_row.items()))
    keys = [k for k in rows[0] if k not in ("case", "tumours")]
    mean = {k: round(float(np.nanmean([r[k] for r in rows])), 4) for k in keys}
    print(
        json.dumps(
            {
                "bench": "tumour_cues",
                "run": str(args.run),
                "rule_offset": offset,
                "rule_train_dice": round(float(train_dice.max()), 4),
                "training_cases": len(train),
                "scored": args.on,
                "mean": mean,
                "cases": rows,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()

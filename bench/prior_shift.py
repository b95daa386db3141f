"""Is a run's output miscalibrated? Whole-volume Dice as the output biases move toward the
natural class prior.

A network trained on balanced patches or class-weighted tiles estimates p(class | patch) under
a uniform prior; adding ``s · log(π_c · K)`` to its output biases (π: the training cases' class
frequencies, K classes) moves it toward the natural prior by ``s`` (0: as trained, 1: Bayes).
Each validation volume is predicted once; every shift is applied to its log-probabilities
(softmax is shift-invariant per voxel), so a sweep costs one pass over the volumes.

    python bench/prior_shift.py runs/liver-phantom-freeze-local-…
    python bench/prior_shift.py RUN --shifts -0.5 0 0.25 0.5 1 --postprocess

The last line of stdout is one JSON object: per shift the mean Dice per region and per case.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder")
    parser.add_argument(
        "--shifts", type=float, nargs="+", default=[-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    )
    parser.add_argument(
        "--postprocess",
        action="store_true",
        help="score after the run's post-processing (default: the raw class maps)",
    )
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import numpy as np
    import torch

    from braver.data.cache import Cache
    from braver.inference import predict_volume, score_classes
    from braver.postprocess import NONE
    from braver.runs import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, info = load_model(args.run)
    model.eval()
    cache = Cache.open(info.cache)
    scheme = cache.scheme
    totals = np.zeros(scheme.num_classes)
    for case_id in info.extra.get("train_cases", []):
        label = np.asarray(cache.case(case_id).label).ravel()
        totals += np.bincount(label, minlength=scheme.num_classes)[: scheme.num_classes]
    present = totals > 0
    log_prior = np.zeros(scheme.num_classes)
    log_prior[present] = np.log(totals[present] / totals.sum() * present.sum())
    options = info.extra.get("postprocess") if args.postprocess else NONE
    logp = {}
    for case_id in info.validation_cases:
        probs = predict_volume(model, cache.case(case_id).image)
        with np.errstate(divide="ignore"):
            logp[case_id] = np.log(probs)
    rows = []
    for shift in args.shifts:
        cases = []
        for case_id, values in logp.items():
            classes = (values + shift * log_prior[:, None, None, None]).argmax(axis=0)
            scored = score_classes(cache.case(case_id), classes.astype(np.uint8), scheme, options)
            cases.append(
                {k: v for k, v in scored.row.items() if k == "case" or k.endswith("_dice")}
            )
        regions = [k for k in cases[0] if k.endswith("_dice")]
        mean = {k: round(float(np.mean([c[k] for c in cases])), 4) for k in regions}
        rows.append({"shift": shift, **mean, "cases": cases})
        print(f"shift {shift:+.2f}  " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    print(
        json.dumps(
            {
                "bench": "prior_shift",
                "run": str(args.run),
                "log_prior": [round(float(v), 4) for v in log_prior],
                "postprocess": bool(args.postprocess),
                "rows": rows,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    main()

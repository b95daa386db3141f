"""Which weights a run keeps: the stage-1 model, the stage-2 model, or stage 2 with a tempered
prior, compared on whole validation volumes (recipe ``[select]``).

The paper's natural-distribution stage is meant to calibrate the output layer; on small
classes (liver tumours) it can erase them. Patch-level validation cannot tell, because its
patches are drawn by the stage's own sampling; whole volumes can. ``select_weights`` scores each
candidate on the same validation volumes (mean Dice over the scheme's regions), loads the
best into the model and says what it compared.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from braver.train.safety import _load, _state
from braver.train.stages import output_layer, shift_output_prior


def mean_dice(summary: dict[str, dict]) -> float:
    """Mean over the regions of the mean whole-volume Dice (``braver.metrics.summarize``)."""
    values = [v["mean"] for k, v in summary.items() if k.endswith("_dice")]
    return float(sum(values) / len(values)) if values else 0.0


def candidates(model: torch.nn.Module, learn, tempered: float) -> dict[str, dict]:
    """``{name: state_dict}``: ``stage2`` (the model as it is), ``stage1`` (that stage's kept
    weights, when a stage 2 ran after it) and ``stage2-tempered``."""
    final = _state(model)
    options = {"stage2": final}
    best = getattr(learn, "best_states", {})
    if "stage1" in best and "stage2" in best:
        options["stage1"] = best["stage1"].state
    layer = output_layer(model)
    if "stage2" in best and getattr(layer, "bias", None) is not None:
        shift_output_prior(model, learn.dls.train.sampler, -(1.0 - tempered))
        options["stage2-tempered"] = _state(model)
        _load(model, final)
    if "stage2" not in best:  # no stage 2: nothing to choose between
        return {"stage1": final}
    return options


def select_weights(
    model: torch.nn.Module,
    learn,
    cache,
    case_ids: Sequence[str],
    *,
    device: str = "cpu",
    tempered: float = 0.5,
    postprocess=None,
) -> dict:
    """Score every candidate on ``case_ids``, keep the best in ``model``; returns
    ``{"kept": name, "mean_dice": {name: value}, "cases": [...]}``."""
    from braver.inference import evaluate_cached_cases
    from braver.metrics import summarize

    options = candidates(model, learn, tempered)
    scores = {}
    for name, state in options.items():
        _load(model, state)
        rows = evaluate_cached_cases(
            model.eval(), cache, list(case_ids), device, postprocess=postprocess
        )
        scores[name] = round(mean_dice(summarize(rows)), 6)
    kept = max(scores, key=lambda name: (scores[name], name == "stage2"))
    _load(model, options[kept])
    return {"kept": kept, "mean_dice": scores, "cases": list(case_ids)}

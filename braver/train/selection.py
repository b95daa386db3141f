"""Which weights a run keeps: the stage-1 model, the stage-2 model, or stage 2 with a tempered
prior, compared on whole validation volumes (recipe ``[select]``).

The paper's natural-distribution stage is meant to calibrate the output layer; on small
classes (liver tumours) it can erase them. Patch-level validation cannot tell, because its
patches are drawn by the stage's own sampling; whole volumes can. ``select_weights`` scores each
candidate on the same validation volumes (mean Dice over the scheme's regions), loads the
best into the model and says what it compared.

Each volume is predicted once per set of weights: the tempered candidate differs from stage 2
only by a constant per class added to the output biases, so its class map is the argmax of
stage 2's log-probabilities plus that constant (softmax is shift-invariant per pixel). The kept
candidate's class maps come back with the choice, so the run's post-processing choice and its
final evaluation need not predict the same volumes again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from braver.train.safety import _load, _state
from braver.train.stages import output_layer, shift_output_prior

MAPS_BUDGET_BYTES = 1 << 30
"""Class maps kept for reuse at most (all candidates, uint8): above it they are predicted again."""


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


@dataclass
class Selection:
    """What ``select_weights`` chose. ``maps``: the kept weights' class maps of the scored
    cases (``{case_id: argmax}``, before post-processing), empty when over the memory budget."""

    kept: str
    mean_dice: dict[str, float]
    cases: list[str]
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        """What run.json records (``extra.selection``)."""
        return {"kept": self.kept, "mean_dice": dict(self.mean_dice), "cases": list(self.cases)}


def _bias_shift(model: torch.nn.Module, options: dict[str, dict]) -> torch.Tensor | None:
    """The tempered candidate's output biases minus stage 2's (one value per class)."""
    if "stage2-tempered" not in options:
        return None
    layer = output_layer(model)
    network = getattr(model, "module", model)
    key = next(name for name, p in network.named_parameters() if p is layer.bias)
    return (options["stage2-tempered"][key] - options["stage2"][key]).double()


def select_weights(
    model: torch.nn.Module,
    learn,
    cache,
    case_ids: Sequence[str],
    *,
    device: str = "cpu",
    tempered: float = 0.5,
    postprocess=None,
    budget_bytes: int = MAPS_BUDGET_BYTES,
) -> Selection:
    """Score every candidate on ``case_ids``, keep the best in ``model``.

    Ties go to ``stage2`` (the paper's model). Scores are mean Dice over the scheme's regions
    after ``postprocess`` (the scheme's defaults when None).
    """
    from braver.inference import predict_volume, score_classes
    from braver.metrics import summarize

    options = candidates(model, learn, tempered)
    shift = _bias_shift(model, options)
    predicted = [name for name in options if name != "stage2-tempered"]
    voxels = sum(int(np.prod(cache.case(c).label.shape)) for c in case_ids)
    keep = voxels * len(options) <= budget_bytes
    rows: dict[str, list[dict]] = {name: [] for name in options}
    maps: dict[str, dict[str, np.ndarray]] = {name: {} for name in options}
    model.eval()
    for case_id in case_ids:
        case = cache.case(case_id)
        for name in predicted:
            _load(model, options[name])
            probs = predict_volume(model, case.image, device=device)
            found = {name: probs.argmax(axis=0).astype(np.uint8)}
            if name == "stage2" and shift is not None:
                with np.errstate(divide="ignore"):
                    logp = np.log(probs)
                logp += shift.numpy().astype(logp.dtype)[:, None, None, None]
                found["stage2-tempered"] = logp.argmax(axis=0).astype(np.uint8)
            for key, classes in found.items():
                rows[key].append(score_classes(case, classes, cache.scheme, postprocess).row)
                if keep:
                    maps[key][case_id] = classes
    scores = {name: round(mean_dice(summarize(rows[name])), 6) for name in options}
    kept = max(scores, key=lambda name: (scores[name], name == "stage2"))
    _load(model, options[kept])
    return Selection(kept, scores, list(case_ids), maps[kept])

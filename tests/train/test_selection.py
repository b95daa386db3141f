"""Which weights a run keeps: candidates compared on whole validation volumes."""

import json

import pytest
import torch

from braver.data.sampling import PatchSampler
from braver.models import create_model
from braver.recipe import load_recipe, shipped_recipe
from braver.train import runner, selection
from braver.train.safety import Kept, _load, _state


class _Learn:
    """What select_weights reads of a Learner: the kept states and the training sampler."""

    def __init__(self, cache, best):
        self.best_states = best

        class _Train:
            sampler = PatchSampler.from_cache(cache, cache.case_ids)

        class _Dls:
            train = _Train()

        self.dls = _Dls()


def _truth_probs(model, image, device="cpu", **_):
    """A stand-in for predict_volume: the case's own labels as logits (3 per voxel) plus the
    loaded output biases, so the biases decide what survives."""
    import numpy as np

    label = _truth_probs.label
    logits = np.stack([3.0 * (label == c) for c in range(4)]).astype(np.float32)
    logits += model.output.bias.detach().numpy()[:, None, None, None]
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def test_the_candidate_that_scores_best_on_volumes_is_kept(tiny_cache, monkeypatch):
    import numpy as np

    torch.manual_seed(0)
    model = create_model("twopath", num_classes=4)
    with torch.no_grad():  # stage 2: background favoured so much that every tumour is lost
        model.output.bias.copy_(torch.tensor([9.0, 0.0, 0.0, 0.0]))
    stage2 = _state(model)
    stage1 = {k: v.clone() for k, v in stage2.items()}
    stage1["output.bias"] = torch.zeros(4)  # stage 1: the labels come through
    case = tiny_cache.case("tiny00")
    _truth_probs.label = np.asarray(case.label)
    calls = []
    monkeypatch.setattr(
        "braver.inference.predict_volume",
        lambda model, image, **kw: calls.append(1) or _truth_probs(model, image),
    )
    learn = _Learn(tiny_cache, {"stage1": Kept(3, 0.5, stage1), "stage2": Kept(5, 0.4, stage2)})
    result = selection.select_weights(model, learn, tiny_cache, ["tiny00"], tempered=0.5)
    assert set(result.mean_dice) == {"stage1", "stage2", "stage2-tempered"}
    assert len(calls) == 2  # one prediction per set of weights: tempered comes from stage 2's
    assert result.kept == "stage1" and result.mean_dice["stage1"] == pytest.approx(1.0)
    assert result.mean_dice["stage2"] == pytest.approx(0.0)
    assert torch.equal(model.output.bias, stage1["output.bias"])  # the kept weights are loaded
    np.testing.assert_array_equal(result.maps["tiny00"], _truth_probs.label)  # kept's own map
    assert result.to_dict() == {
        "kept": "stage1",
        "mean_dice": result.mean_dice,
        "cases": ["tiny00"],
    }
    # tempered: stage 2's biases moved back by half the natural log prior, scored between
    totals = learn.dls.train.sampler.class_totals.astype(float)
    shift = -0.5 * np.log(totals / totals.sum() * 4)
    biases = np.array([9.0, 0, 0, 0]) + shift
    expected = (_truth_probs.label[None] == np.arange(4)[:, None, None, None]) * 3.0
    tempered_map = (expected + biases[:, None, None, None]).argmax(axis=0)
    from braver.inference import score_classes

    row = score_classes(case, tempered_map.astype(np.uint8), tiny_cache.scheme).row
    dice = [v for k, v in row.items() if k.endswith("_dice")]
    assert result.mean_dice["stage2-tempered"] == pytest.approx(sum(dice) / len(dice), abs=1e-6)


def test_the_tempered_map_equals_predicting_with_the_tempered_weights(tiny_cache):
    """argmax(log p + Δbias) of stage 2 is what the tempered weights predict."""
    import numpy as np

    from braver.inference import predict_volume

    torch.manual_seed(1)
    model = create_model("twopath", num_classes=4).eval()
    with torch.no_grad():
        model.output.bias.copy_(torch.tensor([2.0, -1.0, 0.5, -0.5]))
    learn = _Learn(tiny_cache, {"stage1": Kept(0, 1, _state(model)), "stage2": Kept(1, 1, None)})
    options = selection.candidates(model, learn, 0.2)
    shift = selection._bias_shift(model, options)
    assert shift is not None and float(shift.abs().max()) > 0.1
    image = tiny_cache.case("tiny00").image
    probs = predict_volume(model, image)
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    derived = (logp + shift.numpy()[:, None, None, None]).argmax(axis=0)
    _load(model, options["stage2-tempered"])
    direct = predict_volume(model, image).argmax(axis=0)
    assert (derived != probs.argmax(axis=0)).any()  # the shift changes some voxels
    np.testing.assert_array_equal(derived, direct)


def test_stage_two_is_kept_when_it_is_as_good(tiny_cache, monkeypatch):
    model = create_model("twopath", num_classes=4)
    state = _state(model)
    monkeypatch.setattr(
        "braver.inference.score_classes",
        lambda case, classes, scheme, postprocess=None: type(
            "S", (), {"row": {"whole_tumor_dice": 0.5}}
        )(),
    )
    learn = _Learn(tiny_cache, {"stage1": Kept(0, 1, state), "stage2": Kept(1, 1, state)})
    assert selection.select_weights(model, learn, tiny_cache, ["tiny00"]).kept == "stage2"


def test_no_maps_are_kept_over_the_memory_budget(tiny_cache):
    model = create_model("twopath", num_classes=4)
    state = _state(model)
    learn = _Learn(tiny_cache, {"stage1": Kept(0, 1, state), "stage2": Kept(1, 1, state)})
    kept = selection.select_weights(model, learn, tiny_cache, ["tiny00"])
    assert set(kept.maps) == {"tiny00"}
    _load(model, state)  # the kept candidate was loaded: start from the same weights
    over = selection.select_weights(model, learn, tiny_cache, ["tiny00"], budget_bytes=10)
    assert over.maps == {} and over.mean_dice == kept.mean_dice


def test_the_run_records_its_choice(tiny_cache, tmp_path):
    sets = [
        "data.mode=tile", "data.tile=4", "data.batch_size=2", "data.validation_fraction=0.25",
        "data.validation_patches=4", "stage1.epochs=1", "stage1.patches_per_epoch=4",
        "stage2.epochs=1", "stage2.patches_per_epoch=4", "model.dropout=0.0",
    ]  # fmt: skip
    recipe = load_recipe(shipped_recipe("brain"), [*sets, "postprocess.min_component_voxels=0"])
    folder = runner.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path)
    info = json.loads((folder / "run.json").read_text())
    chosen = info["extra"]["selection"]
    assert set(chosen["mean_dice"]) == {"stage1", "stage2", "stage2-tempered"}
    assert chosen["mean_dice"][chosen["kept"]] == max(chosen["mean_dice"].values())
    metrics = json.loads((folder / "metrics.json").read_text())  # scored with the kept weights
    regions = [k for k in metrics if k.endswith("_dice")]
    mean = sum(metrics[k] for k in regions) / len(regions)
    assert mean == pytest.approx(chosen["mean_dice"][chosen["kept"]], abs=1e-5)


def test_the_run_chooses_its_post_processing_on_the_validation_volumes(tiny_cache, tmp_path):
    from braver.postprocess import MIN_COMPONENT_CANDIDATES

    sets = [
        "data.mode=tile", "data.tile=4", "data.batch_size=2", "data.validation_fraction=0.25",
        "data.validation_patches=4", "stage1.epochs=1", "stage1.patches_per_epoch=4",
        "stage2.epochs=0", "model.dropout=0.0", "select.by=last",
    ]  # fmt: skip
    recipe = load_recipe(shipped_recipe("brain"), sets)
    assert recipe.postprocess["min_component_voxels"] == "auto"
    folder = runner.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path)
    chosen = json.loads((folder / "run.json").read_text())["extra"]["postprocess"]
    assert chosen["min_component_voxels"] in MIN_COMPONENT_CANDIDATES
    assert chosen["fill_holes"] is False
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0 <= metrics["whole_tumor_dice"] <= 1


def test_each_validation_volume_is_predicted_once_per_set_of_weights(tiny_cache, tmp_path):
    """Selection predicts stage 1 and stage 2; post-processing and the final evaluation reuse
    the kept weights' maps, and score what predicting the saved model again gives."""
    import braver.inference as inference
    from braver.runs import load_model

    sets = [
        "data.mode=tile", "data.tile=4", "data.batch_size=2", "data.validation_fraction=0.25",
        "data.validation_patches=4", "stage1.epochs=1", "stage1.patches_per_epoch=4",
        "stage2.epochs=1", "stage2.patches_per_epoch=4", "model.dropout=0.0",
        "report.previews=false",
    ]  # fmt: skip
    recipe = load_recipe(shipped_recipe("brain"), sets)
    assert recipe.postprocess["min_component_voxels"] == "auto"
    calls = []
    original = inference.predict_volume

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    inference.predict_volume = counting
    try:
        folder = runner.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path)
    finally:
        inference.predict_volume = original
    info = json.loads((folder / "run.json").read_text())
    valid = info["validation_cases"]
    assert len(calls) == 2 * len(valid)
    metrics = json.loads((folder / "metrics.json").read_text())
    model = load_model(folder)[0].eval()
    rows = inference.evaluate_cached_cases(
        model, tiny_cache, valid, postprocess=info["extra"]["postprocess"]
    )
    assert [r["whole_tumor_dice"] for r in rows] == pytest.approx(
        [r["whole_tumor_dice"] for r in metrics["cases"]], abs=1e-9
    )


def test_metrics_are_scored_with_the_recipes_post_processing(tiny_cache, tmp_path):
    """metrics.json scores the kept maps with the run's own post-processing, not the defaults."""
    from braver.inference import evaluate_cached_cases
    from braver.runs import load_model

    sets = [
        "data.mode=tile", "data.tile=4", "data.batch_size=2", "data.validation_fraction=0.25",
        "data.validation_patches=4", "stage1.epochs=1", "stage1.patches_per_epoch=4",
        "stage2.epochs=1", "stage2.patches_per_epoch=4", "model.dropout=0.0",
        "report.previews=false", "postprocess.min_component_voxels=100000",
    ]  # fmt: skip
    folder = runner.train_from_recipe(
        load_recipe(shipped_recipe("brain"), sets), cache=tiny_cache.root, out=tmp_path
    )
    info = json.loads((folder / "run.json").read_text())
    assert info["extra"]["postprocess"]["min_component_voxels"] == 100000
    metrics = json.loads((folder / "metrics.json").read_text())
    model = load_model(folder)[0].eval()
    valid = info["validation_cases"]

    def scores(postprocess):
        rows = evaluate_cached_cases(model, tiny_cache, valid, postprocess=postprocess)
        return [r[k] for r in rows for k in sorted(r) if k.endswith("_dice")]

    recorded = [r[k] for r in metrics["cases"] for k in sorted(r) if k.endswith("_dice")]
    assert recorded == pytest.approx(scores({"min_component_voxels": 100000}), abs=1e-9)
    assert recorded != pytest.approx(scores(None), abs=1e-6)  # the defaults keep components

"""Which weights a run keeps: candidates compared on whole validation volumes."""

import json

import pytest
import torch

from braver.data.sampling import PatchSampler
from braver.models import create_model
from braver.recipe import load_recipe, shipped_recipe
from braver.train import runner, selection
from braver.train.safety import Kept, _state


class _Learn:
    """What select_weights reads of a Learner: the kept states and the training sampler."""

    def __init__(self, cache, best):
        self.best_states = best

        class _Train:
            sampler = PatchSampler.from_cache(cache, cache.case_ids)

        class _Dls:
            train = _Train()

        self.dls = _Dls()


def test_the_candidate_that_scores_best_on_volumes_is_kept(tiny_cache, monkeypatch):
    torch.manual_seed(0)
    model = create_model("twopath", num_classes=4)
    with torch.no_grad():
        model.output.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0]))
    stage2 = _state(model)
    stage1 = {k: v.clone() for k, v in stage2.items()}
    stage1["output.bias"] = torch.tensor([1.0, 0.0, 0.0, 0.0])

    # a volume score that depends on the weights loaded: background bias 1 is "best"
    def fake(model, cache, case_ids, device, postprocess=None):
        b = float(model.output.bias[0].detach())
        return [{"case": c, "whole_tumor_dice": 1 - abs(1 - b) / 10} for c in case_ids]

    monkeypatch.setattr("braver.inference.evaluate_cached_cases", fake)
    learn = _Learn(tiny_cache, {"stage1": Kept(3, 0.5, stage1), "stage2": Kept(5, 0.4, stage2)})
    result = selection.select_weights(model, learn, tiny_cache, ["tiny00"], tempered=0.5)
    assert set(result["mean_dice"]) == {"stage1", "stage2", "stage2-tempered"}
    assert result["kept"] == "stage1" and result["mean_dice"]["stage1"] == pytest.approx(1.0)
    assert result["mean_dice"]["stage2"] == pytest.approx(0.9)
    assert torch.equal(model.output.bias, stage1["output.bias"])  # the kept weights are loaded
    # the tempered candidate moved the stage-2 biases back by half the natural log prior
    totals = learn.dls.train.sampler.class_totals.astype(float)
    shift = -0.5 * torch.log(torch.tensor(totals / totals.sum() * 4))
    assert result["mean_dice"]["stage2-tempered"] == pytest.approx(
        1 - abs(1 - float(shift[0])) / 10
    )


def test_stage_two_is_kept_when_it_is_as_good(tiny_cache, monkeypatch):
    model = create_model("twopath", num_classes=4)
    state = _state(model)
    monkeypatch.setattr(
        "braver.inference.evaluate_cached_cases",
        lambda model, cache, ids, device, postprocess=None: [{"whole_tumor_dice": 0.5}],
    )
    learn = _Learn(tiny_cache, {"stage1": Kept(0, 1, state), "stage2": Kept(1, 1, state)})
    assert selection.select_weights(model, learn, tiny_cache, ["tiny00"])["kept"] == "stage2"


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

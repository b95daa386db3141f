"""The surgery study: keeping one path or network, variants, the prune recipe, the scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from seeded import randomised
from torch import nn

from braver.data.labels import BRATS_2021
from braver.errors import BraverError
from braver.metrics import region_scores, worst_hd95_mm
from braver.models import create_model, crop_inputs, parameter_count
from braver.prune import (
    ACCURACY,
    OneNetwork,
    Operation,
    PruneRecipe,
    StudyCase,
    build_variants,
    keep_choices,
    keep_only,
    layer_table,
    load_prune_recipe,
    recipe_operations,
    run_study,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tile(model: nn.Module, k: int = 3, seed: int = 1) -> tuple[torch.Tensor, ...]:
    side = max(model.input_sizes) + k - 1
    big = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(seed))
    return crop_inputs(model, big)


def zeroed(module: nn.Module):
    """A forward hook that sets the module's output to zero (the ablation keep must equal)."""
    return module.register_forward_hook(lambda mod, inputs, output: torch.zeros_like(output))


@pytest.mark.parametrize("name", ["twopath", "mf_cascade", "input_cascade"])
@pytest.mark.parametrize("kept", ["local", "global"])
def test_keep_path_equals_zeroing_the_other_path(name, kept):
    model = randomised(name)
    inputs = tile(model)
    variant = keep_only(model, kept)
    removed = "global" if kept == "local" else "local"
    hooks = [zeroed(m) for n, m in model.named_modules() if n.split(".")[-1] == removed]
    assert len(hooks) == (1 if name == "twopath" else 2)
    with torch.no_grad():
        expected = model(*inputs)
        for hook in hooks:
            hook.remove()
        intact = model(*inputs)
        got = variant(*inputs)
    assert got.shape == expected.shape == (2, 4, 3, 3)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, intact, atol=1e-3)
    assert variant.surgery[-1]["op"] == "keep" and not hasattr(model, "surgery")


def test_keep_removes_the_path_and_its_output_weights():
    model = create_model("twopath")
    variant = keep_only(model, "local")
    global_path = 4 * 320 * 13 * 13 + 320
    output_on_global = 4 * 160 * 21 * 21
    assert parameter_count(model) - parameter_count(variant) == global_path + output_on_global
    assert variant.output.in_channels == 64
    assert isinstance(model.output, nn.Conv2d) and model.output.in_channels == 224


def test_keep_one_path_in_one_network_of_a_cascade():
    model = randomised("input_cascade")
    variant = keep_only(model, "second.local")
    assert variant.surgery[-1]["removed"] == ["second.global"]
    assert variant.first.output.in_channels == 224 and variant.second.output.in_channels == 64
    inputs = tile(model)
    hook = zeroed(model.second.global_path)
    with torch.no_grad():
        assert torch.allclose(variant(*inputs), model(*inputs), atol=1e-5)
    hook.remove()


@pytest.mark.parametrize("name", ["input_cascade", "local_cascade", "mf_cascade"])
def test_keep_second_network_equals_a_zero_class_map(name):
    model = randomised(name)
    inputs = tile(model)
    variant = keep_only(model, "second")
    assert isinstance(variant, OneNetwork)

    def zero_class_map(module, args, kwargs):
        return args, {**kwargs, "class_map": torch.zeros_like(kwargs["class_map"])}

    hook = model.second.register_forward_pre_hook(zero_class_map, with_kwargs=True)
    with torch.no_grad():
        expected = model(*inputs)
        hook.remove()
        assert torch.allclose(variant(*inputs), expected, atol=1e-5)
        assert not torch.allclose(model(*inputs), expected, atol=1e-3)
    assert parameter_count(model) - parameter_count(variant) == parameter_count(model.first) + (
        parameter_count(model.second) - parameter_count(variant.second)
    )


@pytest.mark.parametrize("name", ["input_cascade", "local_cascade", "mf_cascade"])
def test_keep_first_network_labels_the_same_pixels(name):
    model = randomised(name)
    local, wide = tile(model, k=4)
    variant = keep_only(model, "first")
    with torch.no_grad():
        # the first network run on the 33-side input centred on the same pixels
        assert torch.allclose(variant(local, wide), model.first(local), atol=1e-5)
    assert variant.surgery == [{"op": "keep", "keep": "first", "removed": ["second"]}]


def test_keep_refuses_what_is_not_a_path_or_network():
    with pytest.raises(BraverError, match="cannot keep 'output'.*use one of local, global"):
        keep_only(create_model("twopath"), "output")
    with pytest.raises(BraverError, match="cannot keep 'first'.*use one of local, global"):
        keep_only(create_model("twopath"), "first")
    assert keep_choices(create_model("mf_cascade"))[-2:] == ["first", "second"]


def test_identity_name_matching_both_networks_gives_one_variant_each():
    model = create_model("input_cascade")
    variants = build_variants(model, [Operation("identity", ("conv2",))])
    assert [v.name for v in variants] == [
        "intact",
        "identity first.local.conv2",
        "identity second.local.conv2",
    ]
    assert "'conv2' matches 2 layers" in variants[1].note
    assert variants[1].parameters_removed == 64 * 2 * 64 * 9 + 64 * 2
    # in a LocalCascade the second conv2 also takes the class map: skipped, and said so
    variants = build_variants(create_model("local_cascade"), [Operation("identity", ("conv2",))])
    assert [v.name for v in variants] == ["intact", "identity first.local.conv2"]
    assert "second.local.conv2 skipped" in variants[1].note


def test_bad_names_and_incompatible_layers_are_refused_before_any_work():
    model = create_model("twopath")
    with pytest.raises(BraverError, match="no layer named 'conv9'.*local.conv1, local.conv2"):
        build_variants(model, [Operation("identity", ("conv9",))])
    with pytest.raises(BraverError, match="cannot replace local.conv1.*can be: local.conv2"):
        build_variants(model, [Operation("identity", ("local.conv1",))])
    with pytest.raises(BraverError, match="cannot replace local.conv1"):  # both conv1 refuse
        build_variants(model, [Operation("identity", ("conv1",))])
    with pytest.raises(BraverError, match="ambiguous"):  # switch/copy keep the ambiguity error
        build_variants(create_model("input_cascade"), [Operation("switch", ("conv2", "output"))])
    with pytest.raises(BraverError, match="switch takes 2 name"):
        Operation("switch", ("conv2",))


def test_shipped_recipe_gives_the_seed_study():
    recipe = load_prune_recipe()
    assert recipe.identity == "each" and recipe.keep == ["local", "global"]
    names = [v.name for v in build_variants(*_ops(recipe, "twopath"))]
    assert names == [
        "intact",
        "identity local.conv2",
        "keep local (global removed)",
        "keep global (local removed)",
    ]
    names = [v.name for v in build_variants(*_ops(recipe, "input_cascade"))]
    assert names[1:3] == ["identity first.local.conv2", "identity second.local.conv2"]
    assert names[-2:] == [
        "keep second (local scale; first removed)",
        "keep first (global scale; second removed)",
    ]
    pairs = PruneRecipe(
        identity=[], keep=[], keep_network=[], switch=[["first.output", "second.output"]]
    )
    assert [v.name for v in build_variants(*_ops(pairs, "local_cascade"))] == [
        "intact",
        "switch first.output ↔ second.output",
    ]


def _ops(recipe, name):
    model = create_model(name)
    return model, recipe_operations(recipe, model)


def test_recipe_errors_name_the_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[variants]\nidentity = "each"\nkepp = ["local"]\n')
    with pytest.raises(BraverError, match=r"unknown key variants.kepp.*known keys in \[variants\]"):
        load_prune_recipe(path)
    path.write_text("[evaluate]\ncases = 1\n")
    with pytest.raises(BraverError, match=r"unknown table \[evaluate\]"):
        load_prune_recipe(path)
    path.write_text('[variants]\nkeep = ["output"]\n')
    with pytest.raises(BraverError, match="variants.keep must be a list of local / global"):
        load_prune_recipe(path)
    path.write_text('[variants]\nswitch = [["a"]]\n[evaluation]\ncases = 2\n')
    with pytest.raises(BraverError, match="pairs of layer names"):
        load_prune_recipe(path)
    path.write_text('[variants]\nidentity = ["conv2"]\n[evaluation]\ncases = 2\n')
    recipe = load_prune_recipe(path)
    assert recipe.identity == ["conv2"] and recipe.cases == 2 and recipe.keep == ["local", "global"]


def test_layer_table_says_what_each_operation_accepts():
    rows = {r["layer"]: r for r in layer_table(create_model("input_cascade"))}
    assert rows["second.local.conv2"]["identity"] == "yes"
    assert rows["second.local.conv1"]["identity"] == "no (8 → 64 maps)"
    assert rows["first.output"]["switch_or_copy_with"] == "second.output"
    assert rows["first.global.conv1"]["weights"] == "320×4×13×13"


def phantom_case(case_id: str, seed: int) -> StudyCase:
    """A 12×40×40 volume: a 4×16×16 block of foreground holding a small tumour."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, 12, 40, 40), np.float32)
    image[:, 4:8, 12:28, 12:28] = rng.normal(size=(4, 4, 16, 16)) + 0.5
    label = np.zeros((12, 40, 40), np.uint8)
    label[5:7, 16:24, 16:24] = 2  # edema
    label[5:7, 18:22, 18:22] = 3  # enhancing
    label[6, 19:21, 19:21] = 1  # necrosis
    return StudyCase(case_id, image, label, (1.0, 1.0, 1.0), (12, 40, 40))


def test_run_study_scores_every_variant_on_the_same_cases():
    # untrained with a prior: every computed pixel is edema, whatever the path kept
    model = create_model("twopath", class_frequencies=[0.01, 0.01, 0.97, 0.01], dropout=0.0)
    variants = build_variants(model, [Operation("keep", ("local",))])
    cases = [phantom_case("a", 0), phantom_case("b", 1)]
    steps = []
    result = run_study(variants, iter(cases), BRATS_2021, step=lambda c, v: steps.append((c, v)))
    assert steps == [(c.case_id, v.name) for c in cases for v in variants]
    intact, kept = result.rows
    assert [r["variant"] for r in result.rows] == ["intact", "keep local (global removed)"]
    # the foreground is the 4×16×16 block, all predicted edema: accuracy = edema's share
    truth_edema = 2 * (64 - 16)
    assert intact[ACCURACY] == pytest.approx(truth_edema / (4 * 16 * 16))
    classes = np.zeros((12, 40, 40), np.uint8)
    classes[4:8, 12:28, 12:28] = 2
    expected = region_scores(
        classes,
        cases[0].label,
        BRATS_2021,
        (1.0, 1.0, 1.0),
        worst_hd95=worst_hd95_mm((12, 40, 40), (1, 1, 1)),
    )
    assert result.per_case["intact"][0]["whole_tumor_dice"] == pytest.approx(
        expected["whole_tumor_dice"]
    )
    assert intact["whole_tumor_dice"] == pytest.approx(2 * 128 / (4 * 16 * 16 + 128))
    assert intact["tumor_core_dice"] == 0.0
    assert intact["delta_whole_tumor_dice"] is None and kept["delta_whole_tumor_dice"] == 0.0
    assert kept["parameters_removed"] == 4 * 320 * 169 + 320 + 4 * 160 * 441
    assert intact["seconds_per_volume"] > 0 and kept["seconds_per_volume"] > 0
    assert list(intact) == [
        "variant",
        "parameters_removed",
        ACCURACY,
        "whole_tumor_dice",
        "tumor_core_dice",
        "enhancing_tumor_dice",
        "seconds_per_volume",
        f"delta_{ACCURACY}",
        "delta_whole_tumor_dice",
        "delta_tumor_core_dice",
        "delta_enhancing_tumor_dice",
        "note",
    ]

"""Channel and class adaptation of a trained network (brain MRI → liver CT)."""

from __future__ import annotations

import json

import pytest
import torch
from seeded import randomised

from braver.errors import BraverError
from braver.models import create_model, crop_inputs, list_models
from braver.surgery import replace_with_identity
from braver.transfer import adapt_for_transfer, adapt_input_channels, input_layout, reinit_output

pytestmark = pytest.mark.usefixtures("one_thread")


def run(model, x):
    with torch.no_grad():
        return model(*crop_inputs(model, x))


@pytest.mark.parametrize("name", list_models())
def test_sum_gives_the_original_output_on_equal_channels(name):
    model = randomised(name, num_classes=5)
    adapted, description = adapt_input_channels(model, 1, "sum")
    x = torch.randn(2, 1, max(model.input_sizes) + 3, max(model.input_sizes) + 3)
    assert torch.allclose(run(adapted, x), run(model, x.repeat(1, 4, 1, 1)), atol=1e-4)
    assert adapted.config["in_channels"] == 1 and adapted.config["num_classes"] == 5
    assert description["input_channels"]["strategy"] == "sum"


def test_repeat_is_the_tiled_input_to_the_untouched_weights():
    model = randomised("input_cascade")
    adapted, _ = adapt_input_channels(model, 2, "repeat")
    x = torch.randn(1, 2, 67, 67)
    assert torch.allclose(run(adapted, x), run(model, x.repeat(1, 2, 1, 1)), atol=1e-4)
    with pytest.raises(BraverError, match="cannot repeat 3 channels"):
        adapt_input_channels(model, 3, "repeat")


def test_average_and_reinit_weights():
    model = randomised("twopath")
    average, _ = adapt_input_channels(model, 1, "average")
    assert torch.allclose(
        average.local.conv1.weight, model.local.conv1.weight.mean(1, keepdim=True)
    )
    fresh, description = adapt_input_channels(model, 1, "reinit")
    assert fresh.global_path.conv1.weight.abs().max() <= 0.005
    assert torch.equal(fresh.local.conv2.weight, model.local.conv2.weight)
    assert torch.equal(fresh.output.weight, model.output.weight)
    assert "re-initialised" in description["input_channels"]["rule"]


def test_adapt_for_transfer_brain_to_liver_cascade():
    torch.manual_seed(0)
    brain = randomised("input_cascade", num_classes=5)
    liver, description = adapt_for_transfer(brain, 1, 3, "sum", class_frequencies=[0.9, 0.08, 0.02])
    assert liver.config == {
        **brain.config,
        "in_channels": 1,
        "num_classes": 3,
        "class_frequencies": [0.9, 0.08, 0.02],
    }
    # image weights summed, hidden layers copied
    assert torch.allclose(
        liver.first.local.conv1.weight, brain.first.local.conv1.weight.sum(1, keepdim=True)
    )
    assert torch.allclose(
        liver.second.global_path.conv1.weight[:, :1],
        brain.second.global_path.conv1.weight[:, :4].sum(1, keepdim=True),
    )
    assert torch.equal(liver.second.local.conv2.weight, brain.second.local.conv2.weight)
    # both outputs re-initialised for 3 classes with the prior as biases
    for output in (liver.first.output, liver.second.output):
        assert output.weight.shape == (3, 224, 21, 21) and output.weight.abs().max() <= 0.005
        assert torch.allclose(output.bias.softmax(0), torch.tensor([0.9, 0.08, 0.02]))
    # the second network's weights on the 3-channel class map re-initialised
    w = liver.second.local.conv1.weight
    assert w.shape == (128, 4, 7, 7) and w[:, 1:].abs().max() <= 0.005
    assert description["class_map"]["layers"] == ["second.local.conv1", "second.global.conv1"]
    assert description["class_map"]["channels"] == "5 → 3"
    assert "first.output.weight" in description["reinitialised"]
    assert "second.local.conv1.weight" in description["partly_reinitialised"]
    json.dumps(description)
    # a run folder can rebuild it
    rebuilt = create_model(**json.loads(json.dumps(liver.config)))
    rebuilt.load_state_dict(liver.state_dict())
    x = torch.randn(2, 1, 70, 70)
    assert run(liver.eval(), x).shape == (2, 3, 6, 6)
    assert torch.equal(run(rebuilt.eval(), x), run(liver, x))


@pytest.mark.parametrize(
    ("name", "layer", "first_map_channel"),
    [("local_cascade", "second.local.conv2", 64), ("mf_cascade", "second.output", 224)],
)
def test_class_map_channels_of_the_other_cascades(name, layer, first_map_channel):
    brain = randomised(name, num_classes=5)
    liver, description = reinit_output(brain, 3, class_map="background")
    new = liver.get_submodule(layer).weight
    old = brain.get_submodule(layer).weight
    assert new.shape[1] == first_map_channel + 3
    if layer.endswith("output"):
        assert f"{layer}.weight" in description["reinitialised"]
    else:
        assert torch.equal(new[:, :first_map_channel], old[:, :first_map_channel])
        assert torch.equal(new[:, first_map_channel], old[:, first_map_channel])  # background kept
        assert description["class_map"]["layers"] == [layer]
    assert liver.config["in_channels"] == 4


def test_input_layout():
    layout = input_layout(create_model("input_cascade", num_classes=5))
    assert layout["first.local.conv1"] == [("image", 4)]
    assert layout["second.local.conv1"] == [("image", 4), ("class_map", 5)]
    assert input_layout(create_model("local_cascade"))["second.local.conv2"] == [
        ("hidden", 64),
        ("class_map", 4),
    ]
    assert input_layout(create_model("mf_cascade"))["second.output"] == [
        ("hidden", 224),
        ("class_map", 4),
    ]


def test_adaptation_never_changes_the_input_model():
    brain = randomised("mf_cascade")
    before = {n: p.clone() for n, p in brain.state_dict().items()}
    adapt_for_transfer(brain, 1, 3, "average")
    assert all(torch.equal(p, before[n]) for n, p in brain.state_dict().items())


def test_bad_strategies_and_surgery_variants_are_refused():
    model = create_model("twopath")
    with pytest.raises(BraverError, match="sum, average, repeat, reinit"):
        adapt_for_transfer(model, 1, 3, "mean")
    with pytest.raises(BraverError, match="reinit, background"):
        adapt_for_transfer(model, 1, 3, class_map="map")
    with pytest.raises(BraverError, match="surgery"):
        adapt_for_transfer(replace_with_identity(model, "conv2"), 1, 3)
    with pytest.raises(BraverError, match="num_classes"):
        adapt_for_transfer(model, 1, 1)


def test_kept_outputs_and_class_map_keep_the_first_classes():
    brain = randomised("input_cascade", num_classes=5)
    liver, description = adapt_for_transfer(
        brain, 1, 3, class_map="keep", keep_outputs=["first.output"]
    )
    # the kept output: the brain's weights and biases of classes 0, 1, 2
    assert torch.equal(liver.first.output.weight, brain.first.output.weight[:3])
    assert torch.equal(liver.first.output.bias, brain.first.output.bias[:3])
    # the other output re-initialised; the class-map weights kept on channels 4, 5, 6 (of 4 + 5)
    assert liver.second.output.weight.abs().max() <= 0.005
    for layer in ("local.conv1", "global_path.conv1"):
        new = liver.second.get_submodule(layer).weight
        old = brain.second.get_submodule(layer).weight
        assert new.shape[1] == 1 + 3 and torch.equal(new[:, 1:], old[:, 4:7])
    assert description["reinitialised"] == ["second.output.weight", "second.output.bias"]
    assert description["partly_reinitialised"] == {}
    assert description["output"]["kept"] == [
        "first.output: the trained weights of classes 0–2 kept"
    ]
    assert "kept on its first 3 channels" in description["class_map"]["note"]
    with pytest.raises(BraverError, match="second.conv1 is not an output layer"):
        adapt_for_transfer(brain, 1, 3, keep_outputs=["second.conv1"])
    with pytest.raises(BraverError, match="cannot keep 6 classes of a network trained on 5"):
        adapt_for_transfer(brain, 1, 6, class_map="keep")


@pytest.mark.parametrize("class_map", ["reinit", "background"])
def test_class_map_channels_are_drawn_afresh_but_a_kept_background(class_map):
    """The second network's weights on the new class map are new draws (the background map's
    kept with ``background``), not the brain network's weights on its first classes."""
    torch.manual_seed(0)
    brain = create_model("input_cascade", num_classes=5)
    with torch.no_grad():
        for param in brain.parameters():
            param.add_(0.01 * torch.randn_like(param))
    liver, _ = reinit_output(brain, 3, class_map=class_map)
    for layer in ("second.local.conv1", "second.global_path.conv1"):
        new = liver.get_submodule(layer).weight[:, 4:]  # the 3 class-map channels
        old = brain.get_submodule(layer).weight[:, 4:]  # the brain's 5
        assert new.shape[1] == 3
        fresh = [1, 2] if class_map == "background" else [0, 1, 2]
        for channel in fresh:
            same = torch.isclose(new[:, channel], old[:, channel]).float().mean()
            assert same < 0.01, (layer, channel)
        if class_map == "background":
            assert torch.equal(new[:, 0], old[:, 0])
        image = [m.get_submodule(layer).weight[:, :4] for m in (liver, brain)]
        assert torch.equal(*image)  # the image channels: copied

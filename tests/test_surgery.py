"""Test-time surgery: identity replacement, switch, copy, keeping one path or network."""

from __future__ import annotations

import pytest
import torch
from seeded import randomised
from torch import nn

from braver.errors import BraverError
from braver.models import CentreCrop, create_model, crop_inputs, parameter_count, weight_layers
from braver.surgery import (
    OneNetwork,
    copy_layer,
    expand_name,
    identity_candidates,
    keep_choices,
    keep_only,
    layer_table,
    parameters_removed,
    replace_with_identity,
    same_shape_layers,
    same_shape_pairs,
    switch_layers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def centred_delta_(layer) -> None:
    """conv2 as an identity: each of the K pieces of map n copies input channel n."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        for n in range(layer.out_features):
            for j in range(layer.pieces):
                layer.weight[n * layer.pieces + j, n, 1, 1] = 1.0


def test_identity_keeps_shapes_and_removes_the_layer_parameters():
    model = randomised("twopath")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    variant = replace_with_identity(model, "conv2")
    assert isinstance(variant.local.conv2, CentreCrop) and variant.local.conv2.shrink == 2
    assert list(weight_layers(variant)) == ["local.conv1", "global.conv1", "output"]
    assert parameters_removed(model, variant) == 64 * 2 * 64 * 9 + 64 * 2
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        assert variant(x).shape == model(x).shape == (2, 4, 8, 8)
    # the input model is untouched
    assert isinstance(model.local.conv2, nn.Conv2d)
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())
    assert variant.surgery == [{"op": "identity", "layer": "local.conv2"}]
    assert not hasattr(model, "surgery")


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("twopath", "conv2"),
        ("input_cascade", "second.local.conv2"),
        ("mf_cascade", "first.local.conv2"),
    ],
)
def test_identity_equals_a_centred_delta_convolution(name, layer):
    model = randomised(name)
    variant = replace_with_identity(model, layer)
    full = expand_name(model, layer)[0]
    centred_delta_(model.get_submodule(full))
    big = torch.randn(2, 4, max(model.input_sizes) + 4, max(model.input_sizes) + 4)
    with torch.no_grad():
        assert torch.allclose(variant(big), model(big), atol=1e-5)


def test_identity_refusal_names_the_replaceable_layers():
    with pytest.raises(BraverError) as error:
        replace_with_identity(create_model("twopath"), "local.conv1")
    message = str(error.value)
    assert "local.conv1" in message and "4 input channels into 64 maps" in message
    assert "layers that can be: local.conv2" in message
    # in a LocalCascade the second conv2 also takes the class map: 64 + 4 → 64
    cascade = create_model("local_cascade")
    assert identity_candidates(cascade) == ["first.local.conv2"]
    with pytest.raises(BraverError, match="68 input channels into 64 maps.*first.local.conv2"):
        replace_with_identity(cascade, "second.local.conv2")
    with pytest.raises(BraverError, match="ambiguous"):
        replace_with_identity(cascade, "conv2")


def test_identity_twice_is_a_clear_error():
    variant = replace_with_identity(create_model("twopath"), "conv2")
    with pytest.raises(BraverError, match="was replaced by an identity"):
        replace_with_identity(variant, "conv2")


def test_switch_exchanges_weights_exactly():
    model = randomised("input_cascade")
    variant = switch_layers(model, "first.local.conv2", "second.local.conv2")
    for suffix in ("weight", "bias"):
        a, b = f"first.local.conv2.{suffix}", f"second.local.conv2.{suffix}"
        assert torch.equal(variant.state_dict()[a], model.state_dict()[b])
        assert torch.equal(variant.state_dict()[b], model.state_dict()[a])
    untouched = [n for n in model.state_dict() if "local.conv2" not in n]
    assert all(torch.equal(variant.state_dict()[n], model.state_dict()[n]) for n in untouched)
    assert parameters_removed(model, variant) == 0
    assert not torch.equal(model.first.local.conv2.weight, variant.first.local.conv2.weight)
    twice = switch_layers(variant, "second.local.conv2", "first.local.conv2")
    assert all(torch.equal(twice.state_dict()[n], p) for n, p in model.state_dict().items())


def test_switch_of_different_shapes_is_refused_with_the_matching_layers():
    with pytest.raises(BraverError) as error:
        switch_layers(create_model("twopath"), "local.conv1", "global.conv1")
    message = str(error.value)
    assert "weights 128×4×7×7" in message and "weights 320×4×13×13" in message
    assert "no other layer of this model has the shape of local.conv1" in message
    with pytest.raises(BraverError, match="same shape as first.global.conv1: second.global.conv1"):
        switch_layers(create_model("mf_cascade"), "first.global.conv1", "second.output")
    with pytest.raises(BraverError, match="with itself"):
        switch_layers(create_model("twopath"), "conv2", "local.conv2")


def test_copy_layer():
    model = randomised("local_cascade")
    assert same_shape_layers(model, "first.output") == ["second.output"]
    variant = copy_layer(model, "first.output", "second.output")
    assert torch.equal(variant.second.output.weight, model.first.output.weight)
    assert torch.equal(variant.second.output.bias, model.first.output.bias)
    assert torch.equal(variant.first.output.weight, model.first.output.weight)
    assert not torch.equal(model.second.output.weight, model.first.output.weight)
    assert variant.surgery == [{"op": "copy", "source": "first.output", "target": "second.output"}]
    with pytest.raises(BraverError, match="shapes differ"):
        copy_layer(model, "first.local.conv2", "second.local.conv2")  # 64 vs 64 + 4 inputs


def test_expand_name_for_prune_rows():
    assert expand_name(create_model("input_cascade"), "conv2") == [
        "first.local.conv2",
        "second.local.conv2",
    ]
    assert expand_name(create_model("twopath"), "conv2") == ["local.conv2"]


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


def test_same_shape_pairs_lists_each_pair_once():
    assert same_shape_pairs(create_model("twopath")) == []
    pairs = same_shape_pairs(create_model("input_cascade"))
    assert ("first.local.conv2", "second.local.conv2") in pairs
    assert ("first.output", "second.output") in pairs
    assert all(a < b for a, b in pairs) and len(pairs) == len(set(pairs))


def test_layer_table_says_what_each_operation_accepts():
    rows = {r["layer"]: r for r in layer_table(create_model("input_cascade"))}
    assert rows["second.local.conv2"]["identity"] == "yes"
    assert rows["second.local.conv1"]["identity"] == "no (8 → 64 maps)"
    assert rows["first.output"]["switch_or_copy_with"] == "second.output"
    assert rows["first.global.conv1"]["weights"] == "320×4×13×13"

"""Test-time surgery: identity replacement, switch, copy, and their refusals."""

from __future__ import annotations

import pytest
import torch
from seeded import randomised
from torch import nn

from braver.errors import BraverError
from braver.models import CentreCrop, create_model, weight_layers
from braver.surgery import (
    copy_layer,
    expand_name,
    identity_candidates,
    parameters_removed,
    replace_with_identity,
    same_shape_layers,
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

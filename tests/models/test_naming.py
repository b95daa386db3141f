"""Dotted layer names, suffix resolution, groups and the fastai splitter."""

from __future__ import annotations

import pytest

from braver.errors import BraverError
from braver.models import (
    create_model,
    expand_name,
    group_names,
    param_group_names,
    param_groups,
    resolve_group,
    resolve_layer,
    trainable_parameters,
    weight_layers,
)

TWOPATH_LAYERS = ["local.conv1", "local.conv2", "global.conv1", "output"]


def test_layer_names():
    assert list(weight_layers(create_model("twopath"))) == TWOPATH_LAYERS
    cascade = list(weight_layers(create_model("input_cascade")))
    assert cascade == [f"first.{n}" for n in TWOPATH_LAYERS] + [
        f"second.{n}" for n in TWOPATH_LAYERS
    ]


def test_unique_suffix_selects_a_layer():
    model = create_model("twopath")
    assert resolve_layer(model, "conv2") == "local.conv2"
    assert resolve_layer(model, "global.conv1") == "global.conv1"
    cascade = create_model("mf_cascade")
    assert resolve_layer(cascade, "second.local.conv2") == "second.local.conv2"
    assert resolve_layer(cascade, "first.output") == "first.output"


def test_ambiguous_name_lists_the_matches():
    with pytest.raises(BraverError, match="first.local.conv2, second.local.conv2"):
        resolve_layer(create_model("input_cascade"), "conv2")
    with pytest.raises(BraverError, match="ambiguous"):
        resolve_layer(create_model("twopath"), "conv1")


def test_unknown_name_lists_the_layers():
    with pytest.raises(BraverError) as error:
        resolve_layer(create_model("twopath"), "conv")  # whole components only
    assert "local.conv1, local.conv2, global.conv1, output" in str(error.value)


def test_expand_name_returns_every_match():
    cascade = create_model("local_cascade")
    assert expand_name(cascade, "conv2") == ["first.local.conv2", "second.local.conv2"]
    assert expand_name(cascade, "second.output") == ["second.output"]
    assert expand_name(cascade, "nothing") == []


def test_groups_of_a_twopath():
    model = create_model("twopath")
    assert group_names(model) == ["local", "global", "output"]
    assert resolve_group(model, "local") == [
        "local.conv1.weight",
        "local.conv1.bias",
        "local.conv2.weight",
        "local.conv2.bias",
    ]
    assert resolve_group(model, "output") == ["output.weight", "output.bias"]
    assert resolve_group(model, "conv2") == ["local.conv2.weight", "local.conv2.bias"]


def test_groups_of_a_cascade_cover_both_levels():
    model = create_model("input_cascade")
    names = group_names(model)
    for group in ("local", "global", "output", "first", "second", "first.local", "second.global"):
        assert group in names
    local = resolve_group(model, "local")
    assert {n.split(".")[0] for n in local} == {"first", "second"}
    assert all(".local." in n for n in local)
    assert resolve_group(model, "first") == [
        n for n, _ in model.named_parameters() if n.startswith("first.")
    ]
    assert resolve_group(model, "output") == [
        "first.output.weight",
        "first.output.bias",
        "second.output.weight",
        "second.output.bias",
    ]
    with pytest.raises(BraverError, match="groups: local, global, output, first, second"):
        resolve_group(model, "middle")


@pytest.mark.parametrize("name", ["twopath", "input_cascade", "local_cascade", "mf_cascade"])
def test_param_groups_cover_every_parameter_once(name):
    model = create_model(name)
    groups = param_groups(model)
    assert len(groups) == len(param_group_names(model))
    ids = [id(p) for group in groups for p in group]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    last = model if name == "twopath" else model.second
    assert [id(p) for p in groups[-1]] == [id(last.output.weight), id(last.output.bias)]


def test_param_groups_as_fastai_splitter_freeze_all_but_output():
    from fastai.optimizer import SGD

    model = create_model("input_cascade")
    optimiser = SGD(param_groups(model), lr=0.01)
    optimiser.freeze()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["second.output.weight", "second.output.bias"]
    assert trainable_parameters(model) == model.second.output.weight.numel() + 4
    optimiser.freeze_to(3)  # the first network of the cascade
    assert all(not p.requires_grad for p in model.first.parameters())
    assert all(p.requires_grad for p in model.second.parameters())

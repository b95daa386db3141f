"""The registry: names, aliases, keywords and the errors a recipe author sees."""

from __future__ import annotations

import pytest

from braver.errors import BraverError
from braver.models import create_model, list_models, model_entry


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("TwoPathCNN", "twopath"),
        ("InputCascadeCNN", "input_cascade"),
        ("local-cascade", "local_cascade"),
        ("MFCascadeCNN", "mf_cascade"),
    ],
)
def test_aliases(alias, name):
    assert create_model(alias).config["name"] == name
    assert model_entry(alias).name == name


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(BraverError) as error:
        create_model("unet")
    message = str(error.value)
    assert "'unet'" in message
    for name in list_models():
        assert name in message


def test_unknown_keyword_lists_the_keywords():
    with pytest.raises(BraverError, match="in_channels, num_classes, maxout_k, dropout"):
        create_model("mf_cascade", channels=4)


@pytest.mark.parametrize(
    ("keywords", "text"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"maxout_k": 0}, "maxout_k"),
        ({"dropout": 1.0}, "dropout"),
        ({"class_frequencies": [0.5, 0.5]}, "4 positive numbers"),
        ({"class_frequencies": [1, 1, 1, 1], "bias": False}, "bias=False"),
    ],
)
def test_bad_values_are_clear_errors(keywords, text):
    with pytest.raises(BraverError, match=text):
        create_model("twopath", **keywords)


def test_defaults_follow_the_contract():
    model = create_model("input_cascade")
    assert model.config == {
        "name": "input_cascade",
        "in_channels": 4,
        "num_classes": 4,
        "maxout_k": 2,
        "dropout": 0.2,
        "class_frequencies": None,
        "bias": True,
        "init_range": 0.005,
        "init": "paper",
    }
    assert model.input_sizes == (33, 65)
    assert create_model("local_cascade").input_sizes == (33, 56)
    assert create_model("mf_cascade").input_sizes == (33, 53)
    assert create_model("twopath").input_sizes == (33,)


def test_he_init_scales_each_layer_by_its_fan_in():
    model = create_model("twopath", init="he")
    for layer, fan_in in ((model.local.conv1, 4 * 49), (model.output, 224 * 441)):
        bound = (6.0 / fan_in) ** 0.5
        assert float(layer.weight.abs().max()) <= bound
        assert float(layer.weight.abs().max()) > 0.9 * bound
    assert create_model(**model.config).config["init"] == "he"


def test_unknown_init_lists_the_choices():
    with pytest.raises(BraverError, match="paper"):
        create_model("twopath", init="xavier")

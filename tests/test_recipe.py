import pytest
import tomllib

from braver.errors import BraverError
from braver.recipe import load_recipe, parse_override, recipe_from_dict, shipped_recipe


def test_shipped_brain_recipe_has_the_paper_values():
    recipe = load_recipe(shipped_recipe("brain"))
    assert recipe.optim.lr == 0.005
    assert (recipe.optim.momentum_start, recipe.optim.momentum_end) == (0.5, 0.9)
    assert recipe.stage1.sampling == "balanced" and recipe.stage2.sampling == "natural"
    assert recipe.stage2.train == ["output"]
    assert recipe.data.mode == "patch" and recipe.model.name in ("twopath", "input_cascade")
    assert recipe.data.flip is False and recipe.data.intensity == 0  # the paper: no augmentation
    # the paper's bound on kernel weights and its component clean-up are on, with our values
    assert recipe.optim.weight_bound == 0.1
    assert recipe.postprocess["min_component_voxels"] == "auto"
    assert load_recipe(shipped_recipe("brain"), profile="phantom").optim.weight_bound == 0


def test_phantom_profile_is_merged_only_when_asked():
    base = load_recipe(shipped_recipe("brain"))
    phantom = load_recipe(shipped_recipe("brain"), profile="phantom")
    assert phantom.data.mode == "tile" and phantom.data.tile > 1
    assert phantom.data.flip is True and 0 < phantom.data.intensity < 1
    assert phantom.optim.momentum_start == base.optim.momentum_start  # untouched keys stay


def test_overrides_are_typed():
    recipe = load_recipe(
        shipped_recipe("brain"),
        ["stage1.epochs=3", "optim.lr=0.01", "model.name=input_cascade", 'stage2.train=["output"]'],
    )
    assert recipe.stage1.epochs == 3 and recipe.optim.lr == 0.01
    assert recipe.model.name == "input_cascade"
    assert parse_override("data.mode=tile") == ("data.mode", "tile")
    assert parse_override("optim.lr = 1e-3") == ("optim.lr", 0.001)


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[stage1]\nepochz = 3\n")
    with pytest.raises(BraverError, match=r"mine\.toml.*unknown key stage1\.epochz"):
        load_recipe(path)
    with pytest.raises(BraverError, match="unknown key optim.learning_rate"):
        load_recipe(shipped_recipe("brain"), ["optim.learning_rate=0.1"])


def test_bad_values_are_errors(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[stage1]\nepochs = "three"\n')
    with pytest.raises(BraverError, match=r"bad\.toml.*stage1\.epochs = 'three' must be int"):
        load_recipe(path)
    with pytest.raises(BraverError, match="stage2.sampling = 'random' must be one of"):
        load_recipe(shipped_recipe("brain"), ["stage2.sampling=random"])
    with pytest.raises(BraverError, match="optim.lr_decay"):
        recipe_from_dict({"optim": {"lr_decay": 1.5}}, "x.toml")
    with pytest.raises(BraverError, match=r"data\.intensity = 1\.5 must be in \[0, 1\)"):
        load_recipe(shipped_recipe("brain"), ["data.intensity=1.5"])
    with pytest.raises(
        BraverError, match=r"data\.fold = 5 must be -1 \(no folds\) or a fold from 0 to 4"
    ):
        load_recipe(shipped_recipe("brain"), ["data.fold=5"])
    with pytest.raises(
        BraverError, match=r"data\.fold = -2 must be -1 \(no folds\) or a fold from 0 to 2"
    ):
        load_recipe(shipped_recipe("brain"), ["data.folds=3", "data.fold=-2"])
    with pytest.raises(BraverError, match=r"data\.folds = 1 must be an integer of 2 or more"):
        load_recipe(shipped_recipe("brain"), ["data.folds=1", "data.fold=0"])
    assert load_recipe(shipped_recipe("brain"), ["data.fold=4"]).data.fold == 4
    with pytest.raises(BraverError, match="data.flip = 'yes' must be bool"):
        load_recipe(shipped_recipe("brain"), ['data.flip="yes"'])
    with pytest.raises(BraverError, match="not KEY=VALUE"):
        parse_override("stage1.epochs")


def test_broken_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[stage1\n")
    with pytest.raises(BraverError, match="not valid TOML"):
        load_recipe(path)
    with pytest.raises(BraverError, match="not found"):
        load_recipe(tmp_path / "nope.toml")
    with pytest.raises(BraverError, match="no shipped recipe named 'lung'"):
        shipped_recipe("lung")


def test_resolved_recipe_round_trips():
    recipe = load_recipe(shipped_recipe("brain"), ["stage1.lr=0.002"], profile="phantom")
    again = recipe_from_dict(tomllib.loads(recipe.to_toml()))
    assert again == recipe

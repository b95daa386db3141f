import csv
import importlib.util
import json
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from braver.cli.main import app
from braver.train import runner as train_runner

runner = CliRunner()

TINY = [
    "data.mode=tile",
    "data.tile=8",
    "data.batch_size=4",
    "data.validation_fraction=0.25",
    "data.validation_patches=8",
    "stage1.epochs=2",
    "stage1.patches_per_epoch=8",
    "stage2.epochs=1",
    "stage2.patches_per_epoch=8",
    "model.dropout=0.0",
]


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture
def phantoms(monkeypatch, tmp_path):
    """The phantom cache replaced by a tiny hand-made one (the real one takes a minute)."""
    path = Path(__file__).parents[1] / "train" / "tiny.py"
    spec = importlib.util.spec_from_file_location("braver_tiny_cache", path)
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    cache = tiny.write_tiny_cache(tmp_path / "cache")
    monkeypatch.setattr(
        "braver.data.phantoms.default_phantom_cache",
        lambda kind="brain", progress=True, **options: (tmp_path / "dataset", cache.root),
    )
    return cache


@pytest.mark.slow
def test_train_brain_writes_a_complete_run_folder(phantoms, tmp_path):
    result = runner.invoke(app, ["train", "brain", "--out", str(tmp_path / "runs"), *_sets(TINY)])
    assert result.exit_code == 0, result.output
    assert "phantom" in result.output and "trainable parameters" in result.output
    (folder,) = (tmp_path / "runs").iterdir()
    names = {p.name for p in folder.iterdir()}
    assert {"run.json", "recipe.toml", "model.safetensors", "history.csv", "metrics.json"} <= names
    assert "learning_curves.png" in names and "checkpoint.safetensors" not in names
    recipe = tomllib.loads((folder / "recipe.toml").read_text())  # the phantom profile, resolved
    assert recipe["data"]["flip"] is True and recipe["data"]["intensity"] == 0.1
    info = json.loads((folder / "run.json").read_text())
    assert info["kind"] == "brain" and info["model"]["name"] == "twopath"
    assert info["cache"] == str(phantoms.root) and len(info["validation_cases"]) == 1
    assert (
        info["extra"]["trainable_parameters"]["stage2"]
        < info["extra"]["trainable_parameters"]["stage1"]
    )
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == ["stage1", "stage1", "stage2"]
    assert {"train_loss", "valid_loss", "whole_tumor_dice", "patch_accuracy"} <= set(rows[0])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["whole_tumor_dice"] <= 1.0 and len(metrics["cases"]) == 1
    from braver.runs import load_model

    model, run = load_model(folder)
    assert model.input_sizes == (33,) and run.validation_cases == info["validation_cases"]


@pytest.mark.slow
def test_resume_continues_an_interrupted_run(phantoms, tmp_path, monkeypatch):
    original = train_runner.Checkpoint.after_epoch

    def interrupt(self):
        original(self)
        if self.state["stage"] == "stage1" and self.state["epochs_done"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_runner.Checkpoint, "after_epoch", interrupt)
    sets = _sets([*TINY, "stage1.epochs=3"])
    result = runner.invoke(app, ["train", "brain", "--out", str(tmp_path / "runs"), *sets])
    assert result.exit_code == 130
    (folder,) = (tmp_path / "runs").iterdir()
    assert (folder / "checkpoint.safetensors").exists() and not (
        folder / "model.safetensors"
    ).exists()
    monkeypatch.setattr(train_runner.Checkpoint, "after_epoch", original)

    result = runner.invoke(app, ["train", "brain", "--resume", str(folder)])
    assert result.exit_code == 0, result.output
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("stage1", "0"),
        ("stage1", "1"),
        ("stage1", "2"),
        ("stage2", "3"),
    ]
    assert (folder / "model.safetensors").exists()
    again = runner.invoke(app, ["train", "brain", "--resume", str(folder)])
    assert again.exit_code == 2 and "already finished" in again.output


def test_bad_recipe_key_is_one_clear_error(phantoms, tmp_path):
    result = runner.invoke(app, ["train", "brain", "--set", "stage1.epoks=2"])
    assert result.exit_code == 2
    assert "unknown key stage1.epoks" in result.output


def test_missing_recipe_file(tmp_path):
    result = runner.invoke(app, ["train", str(tmp_path / "mine.toml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output


def test_wandb_missing_is_a_clear_error(phantoms, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("no wandb")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    result = runner.invoke(
        app, ["train", "brain", "--wandb", "--out", str(tmp_path / "r"), *_sets(TINY)]
    )
    assert result.exit_code == 2 and "pip install wandb" in result.output
    assert not (tmp_path / "r").exists()  # nothing half-made


@pytest.mark.slow
def test_train_with_data_prepares_a_cache_once(tmp_path):
    from braver.data.phantoms import synth_brain

    data = synth_brain(tmp_path / "BraTS", cases=3, seed=1, shape=(24, 24, 16))
    args = ["train", "brain", "--data", str(data), "--out", str(tmp_path / "runs"), "--no-n4"]
    sets = _sets([*TINY, "data.validation_fraction=0.34", "stage1.epochs=1"])
    result = runner.invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    assert "Preparing" in result.output
    (folder,) = (tmp_path / "runs").iterdir()
    info = json.loads((folder / "run.json").read_text())
    assert info["data"] == str(data) and Path(info["cache"]).is_dir()
    # the recipe's [prepare] table and --no-n4 reach the preparation
    assert info["prepare"]["n4"] is False and info["prepare"]["target_spacing_mm"] == 1.0
    # the same folder again reuses its cache
    again = runner.invoke(app, [*args, *sets])
    assert again.exit_code == 0, again.output
    infos = [json.loads((f / "run.json").read_text()) for f in (tmp_path / "runs").iterdir()]
    assert len({i["cache"] for i in infos}) == 1

"""Each option of `braver train`, `transfer`, `evaluate` and `predict` reaches the library
call it names (the calls are spied on: no data is prepared, nothing is trained or predicted, so
these run in about a second); `braver prune --list` shows every column of every weight layer."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from braver.cli.main import app

runner = CliRunner()


@pytest.fixture
def spies(monkeypatch, tmp_path):
    """train_from_recipe, training_cache and the torchrun set-up replaced by recorders."""
    import braver.data.sources
    import braver.train
    import braver.train.distributed

    calls = {"train": [], "cache": [], "setup": [], "cleanup": []}

    def train_from_recipe(recipe, **kwargs):
        calls["train"].append((recipe, kwargs))
        return tmp_path / "runs" / "the-run"

    def training_cache(kind, data=None, **kwargs):
        calls["cache"].append((kind, data, kwargs))
        return tmp_path / "the-cache"

    def setup_from_environment(device):
        calls["setup"].append(device)
        return device + "-rank"

    monkeypatch.setattr(braver.train, "train_from_recipe", train_from_recipe)
    monkeypatch.setattr(braver.data.sources, "training_cache", training_cache)
    monkeypatch.setattr(braver.train.distributed, "setup_from_environment", setup_from_environment)
    monkeypatch.setattr(braver.train.distributed, "cleanup", lambda: calls["cleanup"].append(1))
    return calls


def test_train_hands_every_option_to_the_cache_and_the_fit(spies, tmp_path):
    data = tmp_path / "BraTS"
    data.mkdir()
    args = [
        "train", "brain", "--data", str(data), "--format", "brats", "--out", str(tmp_path / "o"),
        "--device", "cpu", "--set", "stage1.epochs=3", "--set", "optim.lr=0.002", "--wandb",
        "--workers", "3", "--no-n4",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Run folder: {tmp_path / 'runs' / 'the-run'}" in " ".join(result.output.split())
    ((kind, given_data, cache_kwargs),) = spies["cache"]
    assert (kind, given_data) == ("brain", data)
    settings = cache_kwargs.pop("settings")
    assert settings.n4 is False  # --no-n4 reaches the preparation
    assert cache_kwargs == {
        "format": "brats",
        "workers": 3,
        "progress": False,
        "console": cache_kwargs["console"],
    }
    assert cache_kwargs["console"] is not None
    ((recipe, kwargs),) = spies["train"]
    # --data: the recipe's base tables, not the phantom profile, with the --set values
    assert (recipe.name, recipe.stage1.epochs, recipe.optim.lr) == ("brain", 3, 0.002)
    assert kwargs.pop("console") is cache_kwargs["console"]
    assert kwargs == {
        "cache": tmp_path / "the-cache", "out": tmp_path / "o", "device": "cpu-rank",
        "data": data, "wandb": True, "progress": False,
    }  # fmt: skip
    assert spies["setup"] == ["cpu"] and spies["cleanup"] == [1]


def test_train_without_data_uses_the_phantom_profile_and_the_defaults(spies, tmp_path):
    result = runner.invoke(app, ["train", "brain"])
    assert result.exit_code == 0, result.output
    ((kind, given_data, cache_kwargs),) = spies["cache"]
    assert (kind, given_data, cache_kwargs["format"], cache_kwargs["workers"]) == (
        "brain", None, None, 1,
    )  # fmt: skip
    assert cache_kwargs["settings"].n4 is None  # not given: the modality decides (on for MRI)
    ((recipe, kwargs),) = spies["train"]
    assert recipe.name == "brain-phantom"
    assert (kwargs["out"], kwargs["data"], kwargs["wandb"]) == (Path("runs"), None, False)


def test_train_resume_continues_the_run_folders_own_recipe(spies, tmp_path):
    from braver.recipe import load_recipe, shipped_recipe
    from braver.runs import RunInfo, save_run_info

    folder = tmp_path / "run"
    folder.mkdir()
    recipe = load_recipe(shipped_recipe("brain"), ["stage1.epochs=7"])
    (folder / "recipe.toml").write_text(recipe.to_toml())
    save_run_info(folder, RunInfo(kind="brain", model={}, label_scheme={}, channels=[]))
    result = runner.invoke(
        app, ["train", "brain", "--resume", str(folder), "--device", "cpu", "--wandb"]
    )
    assert result.exit_code == 0, result.output
    assert spies["cache"] == [] and spies["cleanup"] == []
    ((given, kwargs),) = spies["train"]
    assert given.stage1.epochs == 7
    assert kwargs.pop("console") is not None
    assert kwargs == {"resume": folder, "device": "cpu-rank", "wandb": True, "progress": False}
    assert f"Run folder: {tmp_path / 'runs' / 'the-run'}" in " ".join(result.output.split())
    # not a run folder: one clear error, nothing trained
    result = runner.invoke(app, ["train", "brain", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and len(spies["train"]) == 1


def test_a_recipe_file_is_read_and_a_missing_one_refused(spies, tmp_path):
    from braver.recipe import shipped_recipe

    mine = tmp_path / "mine.toml"
    mine.write_text(shipped_recipe("brain").read_text().replace('name = "brain"', 'name = "mine"'))
    result = runner.invoke(app, ["train", str(mine), "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert spies["train"][0][0].name == "mine"
    result = runner.invoke(app, ["train", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2 and "recipe file not found" in result.output
    assert len(spies["train"]) == 1


def test_transfer_hands_every_option_to_the_plan_the_cache_and_the_study(
    spies, tmp_path, monkeypatch
):
    from types import SimpleNamespace

    import braver.studies.transfer

    calls = {}
    setups = [SimpleNamespace(name="local", freeze=["local"]), SimpleNamespace(name="e", freeze=[])]
    plan = SimpleNamespace(
        latest=True, brain_run=tmp_path / "brain-run", recipe=SimpleNamespace(kind="liver"),
        prepare="PREPARE", setups=setups, brain=SimpleNamespace(config={"name": "twopath"}),
        strategy="average",
    )  # fmt: skip
    study = SimpleNamespace(
        table=lambda: "THE TABLE", rows=[{"setup": "local", "run": "run-1"}],
        folder=tmp_path / "study",
    )  # fmt: skip

    def plan_transfer_study(recipe, **kwargs):
        calls["plan"] = (recipe, kwargs)
        return plan

    def run_transfer_study(given, **kwargs):
        calls["run"] = (given, kwargs)
        return study

    monkeypatch.setattr(braver.studies.transfer, "plan_transfer_study", plan_transfer_study)
    monkeypatch.setattr(braver.studies.transfer, "run_transfer_study", run_transfer_study)
    data = tmp_path / "LiTS"
    args = [
        "transfer", "liver", "--from", str(tmp_path / "brain"), "--data", str(data),
        "--format", "lits", "--freeze", "local", "--freeze", "first,second", "--baseline",
        "--strategy", "average", "--out", str(tmp_path / "o"), "--runs", str(tmp_path / "r"),
        "--device", "cpu", "--set", "stage1.epochs=2", "--workers", "2",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls["plan"] == (
        "liver",
        {
            "source": tmp_path / "brain", "runs": tmp_path / "r",
            "freeze": ["local", "first,second"], "baseline": True, "strategy": "average",
            "overrides": ["stage1.epochs=2"], "data": data,
        },
    )  # fmt: skip
    ((kind, given_data, cache_kwargs),) = spies["cache"]
    assert (kind, given_data, cache_kwargs.pop("console") is not None) == ("liver", data, True)
    assert cache_kwargs == {
        "format": "lits", "workers": 2, "progress": False, "settings": "PREPARE"
    }  # fmt: skip
    given, kwargs = calls["run"]
    assert given is plan and kwargs.pop("console") is not None
    assert kwargs == {
        "cache": tmp_path / "the-cache", "out": tmp_path / "o", "device": "cpu", "progress": False,
    }  # fmt: skip
    text = " ".join(result.output.split())
    assert f"Starting from the latest brain run: {tmp_path / 'brain-run'}" in text
    assert "2 setup(s) from twopath (brain-run), channels by average" in text
    assert "local (local frozen); e (nothing frozen)" in text
    assert "THE TABLE" in text and "local: run-1" in text
    assert f"to {tmp_path / 'study'}" in text
    # the defaults: no --set, --freeze or --from; a plan that was given its brain run
    plan.latest = False
    result = runner.invoke(app, ["transfer", "liver"])
    assert result.exit_code == 0, result.output
    assert calls["plan"][1]["overrides"] == [] and calls["plan"][1]["freeze"] is None
    assert calls["plan"][1]["runs"] == Path("runs") and "Starting from" not in result.output
    assert calls["run"][1]["out"] == Path("runs") and calls["run"][1]["device"] is None
    assert spies["cache"][1][2]["workers"] == 1


def test_prune_list_shows_each_layers_shape_parameters_and_operations(tmp_path):
    from seeded import randomised

    from braver.runs import RunInfo, save_run_info, save_weights
    from braver.surgery import layer_table

    folder = tmp_path / "run"
    folder.mkdir()
    model = randomised("twopath", 0, dropout=0.0)
    save_weights(folder, model)
    save_run_info(folder, RunInfo(kind="brain", model=model.config, label_scheme={}, channels=[]))
    # one table row a line; the console sizes itself from $COLUMNS at each print (patching
    # its width would leave it fixed for the tests that follow)
    result = runner.invoke(
        app, ["prune", str(folder), "--list", "--device", "cpu"], env={"COLUMNS": "250"}
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "layer" in line and "weights" in line)
    for title in ("layer", "weights", "params", "identity", "same shape (switch, copy)"):
        assert re.search(rf"(?<!\w){re.escape(title)}(?!\w)", header), title  # whole words
    rows = layer_table(model)
    assert {row["identity"] for row in rows} >= {"yes"} and len(rows) >= 4
    for row in rows:
        cells = [row["layer"], row["weights"], f"{row['params']:,}", row["identity"]]
        cells.append(row["switch_or_copy_with"])
        (line,) = [line for line in lines if f" {row['layer']} " in line]
        positions = [line.index(cell) for cell in cells]
        assert positions == sorted(positions), line
    # without RUN: the latest brain run under --runs, not a newer run of another kind
    runs = tmp_path / "runs"
    runs.mkdir()
    folder.rename(runs / "brain")
    _run(runs / "liver", "liver", 10**9)
    result = runner.invoke(app, ["prune", "--list", "--runs", str(runs), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "brain: twopath weight layers" in result.output


def _run(folder, kind, seconds):
    """A finished run folder of ``kind`` whose weights were written ``seconds`` after 1e9."""
    import os

    from braver.data.labels import BRATS_2021
    from braver.runs import RunInfo, save_run_info

    folder.mkdir(parents=True)
    info = RunInfo(kind=kind, model={}, label_scheme=BRATS_2021.to_json(), channels=[])
    save_run_info(folder, info)
    (folder / "model.safetensors").write_bytes(b"")
    os.utime(folder / "model.safetensors", (1e9 + seconds, 1e9 + seconds))
    return folder


@pytest.fixture
def evaluation(monkeypatch):
    """evaluate_run, evaluate_predictions, overlay_writer and write_evaluation as recorders."""
    import braver.evaluation

    calls = {}

    def recorder(name, value):
        def record(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return value

        monkeypatch.setattr(braver.evaluation, name, record)

    recorder("evaluate_run", "EVALUATION")
    recorder("evaluate_predictions", "EVALUATION")
    recorder("overlay_writer", "OVERLAYS")
    recorder("write_evaluation", None)
    return calls


def test_evaluate_hands_every_option_to_evaluate_run(evaluation, tmp_path):
    from braver.cli.predict import case_progress
    from braver.postprocess import NONE

    brain = _run(tmp_path / "runs" / "b", "brain", 1)
    _run(tmp_path / "runs" / "l", "liver", 2)  # newer, of another kind
    args = [
        "evaluate", "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
        "--format", "brats", "--device", "cpu", "--batch-size", "3", "--tta", "--no-overlays",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ((args_, kwargs),) = evaluation["evaluate_run"]
    assert args_ == (brain,)  # the latest brain run, not the newer liver one
    assert kwargs == {
        "data": tmp_path / "data", "format": "brats", "device": "cpu", "batch_size": 3,
        "tta": True, "postprocess": None, "progress": case_progress, "on_case": None,
    }  # fmt: skip
    ((args_, kwargs),) = evaluation["write_evaluation"]
    assert args_[0] == "EVALUATION" and args_[1].parent == brain
    assert args_[1].name.startswith("eval-") and kwargs["console"] is not None
    assert "overlays" not in evaluation
    # the defaults: the run's post-processing, overlays beside the metrics; or none of it
    result = runner.invoke(app, ["evaluate", str(brain), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    kwargs = evaluation["evaluate_run"][1][1]
    assert (kwargs["postprocess"], kwargs["on_case"], kwargs["tta"]) == (None, "OVERLAYS", False)
    assert (kwargs["device"], kwargs["format"], kwargs["batch_size"]) == ("auto", None, None)
    assert evaluation["overlay_writer"] == [((tmp_path / "o",), {})]
    assert evaluation["write_evaluation"][1][0][1] == tmp_path / "o"
    result = runner.invoke(app, ["evaluate", str(brain), "--no-postprocess"])
    assert result.exit_code == 0, result.output
    assert evaluation["evaluate_run"][2][1]["postprocess"] == NONE


def test_evaluate_scores_existing_segmentations_with_their_options(
    evaluation, tmp_path, monkeypatch
):
    from braver.cli.predict import case_progress

    monkeypatch.chdir(tmp_path)
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    args = ["evaluate", "--pred", str(pred), "--truth", str(truth), "--format", "msd"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert evaluation["evaluate_predictions"] == [
        ((pred, truth), {"format": "msd", "progress": case_progress, "on_case": "OVERLAYS"})
    ]
    assert evaluation["overlay_writer"] == [((Path("eval"),), {})]
    assert evaluation["write_evaluation"][0][0] == ("EVALUATION", Path("eval"))
    result = runner.invoke(app, [*args[:5], "--no-overlays", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert evaluation["evaluate_predictions"][1][1]["on_case"] is None
    assert evaluation["evaluate_predictions"][1][1]["format"] is None
    assert evaluation["write_evaluation"][1][0][1] == tmp_path / "o"
    assert "evaluate_run" not in evaluation


def test_predict_hands_every_option_to_predict_case_and_tables_each_case(tmp_path, monkeypatch):
    import csv
    from types import SimpleNamespace

    import numpy as np
    import torch

    import braver.data.formats
    import braver.inference
    import braver.runs
    from braver.postprocess import NONE, run_options

    run = _run(tmp_path / "runs" / "b", "brain", 1)
    info = braver.runs.load_run_info(run)
    info.extra["postprocess"] = {"min_component_voxels": 7}
    calls = {"discover": [], "load": [], "predict": []}

    def discover_inputs(inputs, format):
        calls["discover"].append((inputs, format))
        return [SimpleNamespace(case_id="c1")]

    def load_model(folder, device):
        calls["load"].append((folder, device))
        return "MODEL", info

    def predict_case(model, given, case, **kwargs):
        calls["predict"].append((model, given, case.case_id, kwargs))
        out = kwargs["out_dir"] / "c1_seg.nii.gz"
        return SimpleNamespace(segmentation=np.array([[0, 1], [1, 2]]), written=[out])

    monkeypatch.setattr(braver.data.formats, "discover_inputs", discover_inputs)
    monkeypatch.setattr(braver.runs, "load_model", load_model)
    monkeypatch.setattr(braver.inference, "predict_case", predict_case)
    out = tmp_path / "out"
    out.mkdir()  # an existing folder is fine
    inputs = tmp_path / "case"
    args = [
        "predict", str(run), str(inputs), "--out", str(out), "--format", "brats",
        "--batch-size", "5", "--tta", "--probabilities", "--device", "cpu",
    ]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls["discover"] == [([inputs], "brats")]
    assert calls["load"] == [(run, "cpu")]
    ((model, given, case, kwargs),) = calls["predict"]
    assert (model, given, case) == ("MODEL", info, "c1")
    assert callable(kwargs.pop("progress"))
    assert kwargs == {
        "out_dir": out, "probabilities": True, "device": torch.device("cpu"), "batch_size": 5,
        "tta": True, "postprocess": run_options(info),
    }  # fmt: skip
    assert kwargs["postprocess"].min_component_voxels == 7  # the run's own post-processing
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert (row["case"], row["shape"], row["labels"]) == ("c1", "2×2", "0:1 1:2 2:1")
    assert row["segmentation"] == "c1_seg.nii.gz"
    # the defaults; --no-postprocess; a file as --out is refused
    result = runner.invoke(app, ["predict", str(run), str(inputs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    kwargs = calls["predict"][1][3]
    assert (kwargs["probabilities"], kwargs["tta"], kwargs["batch_size"]) == (False, False, None)
    assert calls["discover"][1][1] is None
    result = runner.invoke(app, [*args[:5], "--no-postprocess"])
    assert result.exit_code == 0, result.output
    assert calls["predict"][2][3]["postprocess"] == run_options(info, NONE)
    (tmp_path / "file").write_text("")
    result = runner.invoke(app, [*args[:3], "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "exists and is not a folder" in result.output

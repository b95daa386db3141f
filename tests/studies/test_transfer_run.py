"""braver.studies.transfer's wiring without training: the plan, the study run with a stand-in
``train_setup``, each setup's comparison row and the files of the comparison."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from rich.console import Console

import braver.data.cache
import braver.report
import braver.studies.transfer as transfer
from braver.data.labels import BRATS_2021
from braver.errors import BraverError
from braver.models import create_model
from braver.runs import RunInfo, save_run_info, save_weights
from braver.studies.transfer import (
    SEED_SETUPS,
    Setup,
    comparison_row,
    plan_transfer_study,
    run_transfer_study,
)

TINY = ["data.tile=4", "stage1.epochs=1"]


def _brain_run(runs, name="brain-1", kind="brain"):
    folder = runs / name
    folder.mkdir(parents=True)
    torch.manual_seed(3)
    model = create_model("twopath", in_channels=4, num_classes=BRATS_2021.num_classes)
    save_run_info(folder, RunInfo(kind, model.config, BRATS_2021.to_json(), ["t1", "t1c", "t2", "flair"]))  # fmt: skip
    save_weights(folder, model)
    return folder, model


def test_plan_finds_the_latest_brain_run_and_plans_its_setups(tmp_path):
    runs = tmp_path / "runs"
    folder, model = _brain_run(runs)
    plan = plan_transfer_study(runs=runs, freeze=["local"], baseline=True, overrides=TINY)
    assert plan.brain_run == folder and plan.latest and plan.data is None
    assert plan.recipe.name == "liver-phantom" and plan.recipe.data.tile == 4  # --set reached it
    assert plan.strategy == "sum" == plan.settings.strategy
    assert plan.settings.source is not None and plan.settings.source.endswith("liver.toml")
    assert plan.prepare is plan.settings.prepare
    assert [(s.name, s.freeze, s.baseline) for s in plan.setups] == [
        ("freeze local", ["local"], False),
        ("baseline (from scratch)", [], True),
    ]
    for name, value in model.state_dict().items():
        assert torch.equal(plan.brain.state_dict()[name], value), name
    # the recipe's default setups, no baseline unless asked for with --freeze
    plan = plan_transfer_study("liver", runs=runs, overrides=TINY)
    assert [s.name for s in plan.setups][-1] == "baseline (from scratch)" and len(plan.setups) == 5
    plan = plan_transfer_study(runs=runs, freeze=["global"], overrides=TINY)
    assert [s.name for s in plan.setups] == ["freeze global"]


def test_plan_with_a_source_a_strategy_data_and_a_recipe_file(tmp_path):
    from braver.recipe import shipped_recipe

    folder, _ = _brain_run(tmp_path / "elsewhere")
    data = tmp_path / "lits"
    plan = plan_transfer_study(
        shipped_recipe("liver"),
        source=str(folder),
        runs=tmp_path / "none",
        freeze=["none"],
        strategy="average",
        overrides=[*TINY, "transfer.class_map=keep"],
        data=str(data),
    )
    assert plan.brain_run == folder and not plan.latest
    assert plan.strategy == "average" and plan.settings.strategy == "sum"
    assert plan.settings.class_map == "keep"
    assert plan.data == data and plan.recipe.name == "liver"  # no phantom profile with data
    assert [s.name for s in plan.setups] == ["freeze none"]


def test_plan_looks_under_runs_by_default(tmp_path, monkeypatch):
    folder, _ = _brain_run(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    plan = plan_transfer_study(freeze=["local"], overrides=TINY)
    assert plan.brain_run.resolve() == folder.resolve() and plan.latest


def test_a_table_without_seed_setups_keeps_every_other_column():
    from braver.studies.transfer import SHOWN, comparison_table

    table = comparison_table([{"setup": "freeze local", "liver_dice": 0.5}], "t")
    assert [c.header for c in table.columns] == [h for h in SHOWN.values() if h != "seed"]


def test_plan_refusals(tmp_path):
    with pytest.raises(BraverError, match="unknown channel strategy 'mean'") as error:
        plan_transfer_study(runs=tmp_path, strategy="mean")
    assert "choose one of: sum, average" in error.value.hint
    with pytest.raises(BraverError, match="no finished brain run") as error:
        plan_transfer_study(runs=tmp_path / "runs", overrides=TINY)
    assert "braver train brain" in error.value.hint
    _brain_run(tmp_path / "runs", "liver-1", kind="liver")
    with pytest.raises(BraverError, match="no finished brain run"):
        plan_transfer_study(runs=tmp_path / "runs", overrides=TINY)  # the latest *brain* run
    with pytest.raises(BraverError, match="is already a liver run") as error:
        plan_transfer_study(source=tmp_path / "runs" / "liver-1", overrides=TINY)
    assert "--from" in error.value.hint


def _fake_run(out, setup, history, *, cpu=(2.0, 3.0), trained=123, metrics=None):
    """What train_setup leaves: run.json (with the transfer record), metrics.json, history."""
    from braver.train.callbacks import write_history

    folder = out / f"liver-{setup.slug}"
    folder.mkdir(parents=True)
    extra = {"transfer": {"trained_parameters": trained, "cpu_seconds_per_epoch": list(cpu)}}
    extra["train_seconds"] = 9.5
    save_run_info(folder, RunInfo("liver", {}, {}, ["ct"], extra=extra))
    (folder / "metrics.json").write_text(json.dumps(metrics or {"liver_dice": 0.7, "tumor_dice": 0.2}))  # fmt: skip
    if history:
        write_history(folder / "history.csv", history)
    return folder


HISTORY = [
    {"epoch": 0, "time": "0.5", "train_patch_accuracy": "0.25", "stage": "stage1"},
    {
        "epoch": 0,
        "time": "1.0",
        "train_patch_accuracy": "0.5",
        "patch_accuracy": "0.4",
        "stage": "stage1",
    },
    {
        "epoch": 1,
        "time": "2.5",
        "train_patch_accuracy": "0.75",
        "patch_accuracy": "0.625",
        "stage": "stage2",
    },
]


def test_comparison_row_from_a_finished_run(tmp_path):
    setup = Setup("freeze local", ["local", "output"], "local,output")
    row = comparison_row(setup, _fake_run(tmp_path, setup, HISTORY, cpu=(2.0, 3.0, 4.5)))
    assert row == {
        "setup": "freeze local",
        "freeze": "local, output",
        "seed_setup": None,
        "trainable_parameters": 123,
        "seed_trainable_parameters": None,
        "epochs": 3,
        "seconds_per_epoch": 1.33,
        "seed_seconds_per_epoch": None,
        "cpu_seconds_per_epoch": 3.17,
        "train_seconds": 9.5,
        "train_accuracy": 0.75,
        "seed_train_accuracy": None,
        "valid_accuracy": 0.625,
        "seed_valid_accuracy": None,
        "accuracy_of": "network",
        "liver_dice": 0.7,
        "tumor_dice": 0.2,
        "run": str(tmp_path / "liver-freeze-local"),
    }
    # a seed setup; a time not a number left out; the first network alone; no CPU times
    seed = Setup("seed-e2e", [], "seed-e2e", seed=SEED_SETUPS["seed-e2e"])
    history = [
        {"time": "x", "train_patch_accuracy": "", "stage": "stage1"},
        {
            "time": "3.333",
            "train_patch_accuracy": "0.5",
            "patch_accuracy": "0.25",
            "stage": "first-stage1",
        },
    ]
    row = comparison_row(seed, _fake_run(tmp_path, seed, history, cpu=(), trained=7))
    assert row["freeze"] == "none" and row["seed_setup"] == "E2E"
    assert row["seed_trainable_parameters"] == 2_200_000 and row["seed_seconds_per_epoch"] == 30.0
    assert (row["seed_train_accuracy"], row["seed_valid_accuracy"]) == (0.89, 0.86)
    assert row["seconds_per_epoch"] == 3.33 and row["cpu_seconds_per_epoch"] is None
    assert row["accuracy_of"] == "first network alone" and row["epochs"] == 2
    assert row["trainable_parameters"] == 7 and isinstance(row["trainable_parameters"], int)
    # no history at all
    empty = Setup("empty", [], "none")
    row = comparison_row(empty, _fake_run(tmp_path, empty, [], metrics={"liver_dice": 0.1}))
    assert row["epochs"] == 0 and row["seconds_per_epoch"] is None
    assert math.isnan(row["train_accuracy"]) and math.isnan(row["valid_accuracy"])
    assert row["accuracy_of"] == "network" and row["tumor_dice"] is None


def _plan(tmp_path, setups, data=None):
    runs = tmp_path / "runs"
    _brain_run(runs)
    plan = plan_transfer_study(runs=runs, freeze=["local"], overrides=TINY)
    plan.setups = setups
    plan.data = data
    return plan


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """train_setup replaced by a recorder that writes a finished run; Cache.open and the bar
    chart recorded."""
    calls = {"train": [], "opened": [], "json_before": [], "plots": []}
    plot_bars = braver.report.plot_bars

    def record_plot(rows, keys, out_png, **kwargs):
        calls["plots"].append(([r["setup"] for r in rows], keys, out_png, kwargs))
        return plot_bars(rows, keys, out_png, **kwargs)

    monkeypatch.setattr(braver.report, "plot_bars", record_plot)

    def open_cache(root):
        calls["opened"].append(root)
        return "the cache"

    def train_setup(setup, recipe, brain, brain_run, cache, **kwargs):
        calls["train"].append((setup, recipe, brain, brain_run, cache, kwargs))
        found = list(tmp_path.glob("out/transfer-liver-*/transfer.json")) + list(
            tmp_path.glob("new/study/transfer.json")
        )
        calls["json_before"].append(
            [r["setup"] for r in json.loads(found[0].read_text())["rows"]] if found else None
        )
        return _fake_run(kwargs["out"], setup, HISTORY)

    monkeypatch.setattr(braver.data.cache.Cache, "open", staticmethod(open_cache))
    monkeypatch.setattr(transfer, "train_setup", train_setup)
    return calls


def test_the_study_trains_every_setup_and_writes_the_comparison(tmp_path, stand_in, capsys):
    setups = [
        Setup("freeze local", ["local"], "local"),
        Setup("seed-e2e", [], "seed-e2e", keep_outputs=["first.output"], class_map="keep",
              seed=SEED_SETUPS["seed-e2e"]),
        Setup("baseline (from scratch)", [], "none", baseline=True),
    ]  # fmt: skip
    plan = _plan(tmp_path, setups)
    console = Console(file=io.StringIO(), width=120)
    study = run_transfer_study(
        plan, cache=tmp_path / "cache", out=tmp_path / "out", device="cpu", console=console,
        progress=True,
    )  # fmt: skip
    assert stand_in["opened"] == [tmp_path / "cache"]
    assert [call[0] for call in stand_in["train"]] == setups
    for _setup, recipe, brain, brain_run, cache, kwargs in stand_in["train"]:
        assert recipe is plan.recipe and brain is plan.brain and brain_run == plan.brain_run
        assert cache == "the cache"
        assert kwargs == {
            "out": tmp_path / "out",
            "device": "cpu",
            "data": None,
            "strategy": "sum",
            "class_map": "reinit",
            "console": console,
            "progress": True,
        }
    # the comparison is written after every setup: a study stopped half-way keeps its rows
    assert stand_in["json_before"] == [None, ["freeze local"], ["freeze local", "seed-e2e"]]
    (folder,) = (tmp_path / "out").glob("transfer-liver-*")
    assert study.folder == folder
    assert [r["setup"] for r in study.rows] == [s.name for s in setups]
    assert study.rows[0] == comparison_row(setups[0], tmp_path / "out" / "liver-freeze-local")
    assert study.title == "Transfer brain-1 → liver (sum channels)"
    assert study.table().title == study.title
    written = json.loads((folder / "transfer.json").read_text())
    assert written["rows"] == json.loads(json.dumps(study.rows))
    assert written["source_run"] == str(plan.brain_run)
    assert written["source_model"] == plan.brain.config
    assert (written["strategy"], written["class_map"]) == ("sum", "reinit")
    assert written["recipe"] == plan.settings.source and written["cache"] == str(tmp_path / "cache")
    assert written["prepare"] is None and written["data"] is None and written["device"] == "cpu"
    assert written["setups"] == [
        {"name": "freeze local", "freeze": ["local"], "baseline": False, "kept_outputs": [],
         "class_map": "reinit", "seed_setup": None},
        {"name": "seed-e2e", "freeze": [], "baseline": False, "kept_outputs": ["first.output"],
         "class_map": "keep", "seed_setup": "E2E"},
        {"name": "baseline (from scratch)", "freeze": [], "baseline": True, "kept_outputs": [],
         "class_map": "reinit", "seed_setup": None},
    ]  # fmt: skip
    assert len(written["written"]) == 19
    with open(folder / "transfer.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["setup"] for r in table] == [s.name for s in setups]
    assert table[0]["liver_dice"] == "0.7"
    assert (folder / "transfer.png").stat().st_size > 0
    names = [s.name for s in setups]
    chart = ["train_accuracy", "valid_accuracy", "liver_dice", "tumor_dice"]
    assert stand_in["plots"] == [
        (
            names[: i + 1],
            chart,
            folder / "transfer.png",
            {"label_key": "setup", "title": study.title},
        )
        for i in [0, 1, 2, 2]
    ]
    assert capsys.readouterr().out == ""  # the table is the caller's to print, not printed here
    shown = console.file.getvalue()
    assert "1/3: freeze local" in shown and "3/3: baseline (from scratch)" in shown


def test_the_study_defaults_and_its_data_settings(tmp_path, stand_in, monkeypatch):
    import braver.inference

    asked = []

    def resolve_device(value):
        asked.append(value)
        return torch.device("cpu")

    monkeypatch.setattr(braver.inference, "resolve_device", resolve_device)
    data = tmp_path / "lits"
    plan = _plan(tmp_path, [Setup("freeze local", ["local"], "local")], data=data)
    plan.strategy = "repeat"
    monkeypatch.chdir(tmp_path)
    study = run_transfer_study(plan, cache="cache", study_folder=tmp_path / "new" / "study")
    assert asked == ["auto"]
    assert study.folder == tmp_path / "new" / "study"  # its parent made too
    ((*_, kwargs),) = stand_in["train"]
    assert kwargs["out"] == tmp_path.joinpath("runs").relative_to(tmp_path)  # default ./runs
    assert kwargs["device"] == "cpu" and kwargs["data"] == data and kwargs["strategy"] == "repeat"
    assert kwargs["console"] is None and kwargs["progress"] is False
    written = json.loads((tmp_path / "new" / "study" / "transfer.json").read_text())
    assert written["prepare"] == plan.prepare.to_dict() and written["data"] == str(data)
    assert written["device"] == "cpu" and written["strategy"] == "repeat"
    assert study.title == "Transfer brain-1 → liver (repeat channels)"
    assert not list((tmp_path / "runs").glob("transfer-*"))  # the given study folder only


@pytest.mark.parametrize(
    ("item", "words"),
    [
        ("stage1.epochs='x'", "stage1.epochs = 'x' must be int"),
        ("prepare.nonsense=1", "unknown key prepare.nonsense; known keys in prepare:"),
        ("transfer.strategy='foo'", "transfer.strategy = 'foo' must be one of sum"),
        ("prepare.hu_window=[200, 100]", "[prepare]: HU window [200.0, 100.0] must be"),
    ],
)
def test_a_bad_value_of_each_table_names_the_recipe_file(item, words):
    from braver.recipe import shipped_recipe
    from braver.studies.transfer import load_liver_recipe

    path = shipped_recipe("liver")
    with pytest.raises(BraverError) as error:
        load_liver_recipe(path, [item])
    assert error.value.path == path and words in str(error.value)
    recipe, settings = load_liver_recipe(path, ["stage1.epochs=2", "transfer.class_map='keep'"])
    assert recipe.stage1.epochs == 2 and settings.class_map == "keep"
    assert settings.source == str(path)

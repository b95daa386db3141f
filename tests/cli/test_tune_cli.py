"""Every option of `braver tune` reaches its call: the study (``braver.studies.tune.tune``), the
trainers, the cache and the transfer plan are replaced by recorders, so nothing is prepared or
trained and each test takes about a second; the defaults; bad input in one sentence."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from braver.cli.main import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def _said(result) -> str:
    return " ".join(result.output.replace("│", " ").split())


@pytest.fixture
def tuning(monkeypatch, tmp_path):
    """tune, recipe_trainer, transfer_trainer, load_space (wrapped), training_cache, Cache.open
    and plan_transfer_study as recorders; CUDA reported absent."""
    import torch

    import braver.data.cache
    import braver.data.sources
    import braver.studies.transfer
    from braver.data.labels import BRATS_2021
    from braver.studies import tune as tuning_module

    calls = {}

    def record(name, value):
        def recorder(*args, **kwargs):
            calls.setdefault(name, []).append((args, kwargs))
            return value(*args, **kwargs) if callable(value) else value

        return recorder

    real_load_space = tuning_module.load_space
    monkeypatch.setattr(
        tuning_module, "tune", record("tune", SimpleNamespace(folder=tmp_path / "study"))
    )
    monkeypatch.setattr(tuning_module, "recipe_trainer", record("recipe_trainer", "TRAINER"))
    monkeypatch.setattr(tuning_module, "transfer_trainer", record("transfer_trainer", "XTRAINER"))
    monkeypatch.setattr(tuning_module, "load_space", record("load_space", real_load_space))
    monkeypatch.setattr(braver.data.sources, "training_cache", record("cache", "CACHE"))
    calls["open_scheme"] = BRATS_2021  # the scheme of the opened cache; a test may change it
    monkeypatch.setattr(
        braver.data.cache.Cache,
        "open",
        record("open", lambda path: SimpleNamespace(scheme=calls["open_scheme"])),
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls["plan"] = None  # set by a test: what plan_transfer_study returns

    def plan_transfer_study(*args, **kwargs):
        calls.setdefault("plan_transfer_study", []).append((args, kwargs))
        return calls["plan"]

    monkeypatch.setattr(braver.studies.transfer, "plan_transfer_study", plan_transfer_study)
    return calls


def test_every_option_reaches_the_study(tuning, tmp_path):
    from braver.cli._common import console
    from braver.data.labels import BRATS_2021
    from braver.metrics import metric_names
    from braver.recipe import load_recipe, shipped_recipe
    from braver.studies.tune import default_space_path

    data, space, out = tmp_path / "data", tmp_path / "space.toml", tmp_path / "out"
    data.mkdir()
    space.write_text('"optim.lr" = { low = 0.001, high = 0.01, log = true }\n')
    args = [
        "tune", "brain", "--data", str(data), "--format", "brats", "--space", str(space),
        "--trials", "7", "--timeout", "60.5", "--study", "mine", "--storage", "sqlite:///s.db",
        "--metric", "tumor_core_dice", "--pruner", "halving", "--seed", "3", "--out", str(out),
        "--device", "cpu", "--set", "optim.l1=0", "--set", "stage1.epochs=2", "--workers", "2",
    ]  # fmt: skip
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    expected = load_recipe(shipped_recipe("brain"), ["optim.l1=0", "stage1.epochs=2"])
    ((given_space, loaded), kwargs) = tuning["load_space"][0]
    assert (given_space, loaded, kwargs) == (space, expected, {"profile": None})
    assert tuning["cache"] == [
        (
            ("brain", data),
            {
                "format": "brats", "workers": 2, "progress": False,
                "settings": expected.prepare_settings(), "console": console,
            },
        )
    ]  # fmt: skip
    assert tuning["open"] == [(("CACHE",), {})]
    assert tuning["recipe_trainer"] == [
        (("CACHE",), {"device": "cpu", "data": data, "console": console, "progress": False})
    ]
    ((recipe, search, trainer), kwargs) = tuning["tune"][0]
    assert (recipe, trainer) == (expected, "TRAINER")
    assert [p.key for p in search.params] == ["optim.lr"] and search.source == str(space)
    assert kwargs == {
        "folder": out / "tune-mine", "study_name": "mine", "metric": "tumor_core_dice",
        "valid_metrics": metric_names(BRATS_2021), "storage": "sqlite:///s.db", "trials": 7,
        "timeout": 60.5, "pruner": "halving", "seed": 3, "settings": None, "best_tables": None,
        "best_command": None, "console": console,
    }  # fmt: skip
    assert f"Study folder: {tmp_path / 'study'}" in _said(result)
    assert "transfer_trainer" not in tuning and "plan_transfer_study" not in tuning
    assert default_space_path() != space


def test_the_defaults(tuning, tmp_path, monkeypatch):
    import torch

    from braver.recipe import load_recipe, shipped_recipe
    from braver.studies.tune import default_space_path

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", "brain"], env=WIDE)
    assert result.exit_code == 0, result.output
    phantom = load_recipe(shipped_recipe("brain"), [], profile="phantom")
    assert tuning["load_space"][0] == ((default_space_path(), phantom), {"profile": "phantom"})
    ((kind, data), kwargs) = tuning["cache"][0]
    assert (kind, data, kwargs["format"], kwargs["workers"]) == ("brain", None, None, 1)
    assert tuning["recipe_trainer"][0][1]["device"] == "cpu"
    assert tuning["recipe_trainer"][0][1]["data"] is None
    ((recipe, _, _), kwargs) = tuning["tune"][0]
    assert recipe == phantom
    assert {key: kwargs[key] for key in ("folder", "study_name", "metric", "storage")} == {
        "folder": Path("runs") / "tune-brain-phantom", "study_name": "brain-phantom",
        "metric": "whole_tumor_dice", "storage": None,
    }  # fmt: skip
    assert {key: kwargs[key] for key in ("trials", "timeout", "pruner", "seed")} == {
        "trials": 20, "timeout": None, "pruner": "median", "seed": None,
    }  # fmt: skip
    # with a GPU, trials train on it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = runner.invoke(app, ["tune", "brain"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert tuning["recipe_trainer"][1][1]["device"] == "cuda"


def test_a_recipe_file_is_read(tuning, tmp_path):
    from braver.recipe import load_recipe, shipped_recipe

    mine = tmp_path / "mine.toml"
    mine.write_text(shipped_recipe("brain").read_text().replace("epochs = ", "epochs = 1"))
    result = runner.invoke(app, ["tune", str(mine), "--device", "cpu"], env=WIDE)
    assert result.exit_code == 0, result.output
    expected = load_recipe(mine, [], profile="phantom")
    assert expected != load_recipe(shipped_recipe("brain"), [], profile="phantom")
    assert tuning["tune"][0][0][0] == expected


def test_a_recipe_of_another_kind_optimises_its_first_regions_dice(tuning, tmp_path):
    from braver.data.labels import LIVER
    from braver.recipe import shipped_recipe

    tuning["open_scheme"] = LIVER  # a cache of other labels: its first region, "liver"
    lung = tmp_path / "lung.toml"
    lung.write_text(shipped_recipe("brain").read_text().replace('kind = "brain"', 'kind = "lung"'))
    result = runner.invoke(app, ["tune", str(lung), "--device", "cpu"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert tuning["tune"][0][0][0].kind == "lung"
    assert tuning["tune"][0][1]["metric"] == "liver_dice"


@pytest.mark.parametrize(
    "args, said",
    [
        (["brain", "--pruner", "sometimes"],
         "error: unknown pruner 'sometimes'; choose median, halving, none."),
        (["missing.toml"], "error: missing.toml: recipe file not found; check the path."),
        (["brain", "--freeze", "local"],
         "--from, --freeze and --strategy tune a transfer recipe (one with a [transfer] table); "
         "use e.g. 'braver tune liver --from RUN --freeze local'."),
        (["brain", "--from", "RUN"], "--from, --freeze and --strategy tune a transfer recipe"),
        (["brain", "--strategy", "mean"], "--from, --freeze and --strategy tune a transfer"),
    ],
)  # fmt: skip
def test_bad_input_is_one_sentence_and_nothing_runs(tuning, tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["tune", *args, "--device", "cpu"], env=WIDE)
    assert result.exit_code == 2
    assert said in _said(result)
    assert "tune" not in tuning and "cache" not in tuning


def _plan(tuning, tmp_path, setups=1, latest=True, overrides=()):
    from braver.recipe import shipped_recipe
    from braver.studies.transfer import load_liver_recipe

    recipe, settings = load_liver_recipe(shipped_recipe("liver"), overrides, profile="phantom")
    brain_run = tmp_path / "runs" / "brain-run"
    tuning["plan"] = SimpleNamespace(
        recipe=recipe,
        settings=settings,
        brain_run=brain_run,
        setups=[SimpleNamespace(freeze=["local"], slug="freeze-local")] * setups,
        strategy="mean",
        latest=latest,
        prepare=settings.prepare,
    )
    return tuning["plan"]


def test_a_transfer_study_tunes_one_setup_of_the_plan(tuning, tmp_path):
    from braver.cli._common import console
    from braver.studies.tune import TRANSFER_FIXED

    plan = _plan(tuning, tmp_path, overrides=["optim.lr=0.003"])
    data = tmp_path / "liver"
    args = [
        "tune", "liver", "--from", "BRAIN", "--freeze", "local", "--strategy", "copy",
        "--runs", "RUNS", "--set", "optim.lr=0.003", "--data", str(data), "--device", "cpu",
        "--format", "lits", "--workers", "3", "--out", str(tmp_path / "out"),
    ]  # fmt: skip
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    ((path,), kwargs) = tuning["plan_transfer_study"][0]
    assert path.name == "liver.toml"
    assert kwargs == {
        "source": Path("BRAIN"), "runs": Path("RUNS"), "freeze": ["local"], "strategy": "copy",
        "overrides": ["optim.lr=0.003"], "data": data,
    }  # fmt: skip
    assert tuning["cache"][0] == (
        ("liver", data),
        {"format": "lits", "workers": 3, "progress": False, "settings": plan.prepare,
         "console": console},
    )  # fmt: skip
    assert tuning["transfer_trainer"] == [
        ((plan, "CACHE"), {"device": "cpu", "console": console, "progress": False})
    ]
    assert "recipe_trainer" not in tuning
    ((recipe, search, trainer), kwargs) = tuning["tune"][0]
    assert (recipe, trainer) == (plan.recipe, "XTRAINER")
    assert search.params and not {p.key for p in search.params} & set(TRANSFER_FIXED)
    assert kwargs["study_name"] == f"{plan.recipe.name}-freeze-local"
    assert kwargs["folder"] == tmp_path / "out" / f"tune-{plan.recipe.name}-freeze-local"
    assert kwargs["metric"] == "tumor_dice"
    assert kwargs["settings"] == {
        "transfer": {
            "from": str(plan.brain_run.resolve()), "freeze": ["local"], "strategy": "mean",
        }
    }  # fmt: skip
    assert kwargs["best_tables"] == {
        "transfer": {"strategy": "mean", "class_map": plan.settings.class_map},
        "prepare": plan.prepare.to_dict(),
    }
    assert kwargs["best_command"] == (
        f"braver transfer best.toml --from {plan.brain_run} --freeze local [--data DATA]"
    )
    said = _said(result)
    assert f"Starting from the latest brain run: {plan.brain_run}" in said
    assert "Not searched in transfer (the brain run fixes them): model.init, model.dropout" in said


def test_a_transfer_study_defaults_and_refusals(tuning, tmp_path):
    _plan(tuning, tmp_path, latest=False)
    result = runner.invoke(app, ["tune", "liver", "--device", "cpu"], env=WIDE)
    assert result.exit_code == 0, result.output
    kwargs = tuning["plan_transfer_study"][0][1]
    assert kwargs == {
        "source": None, "runs": Path("runs"), "freeze": None, "strategy": None,
        "overrides": [], "data": None,
    }  # fmt: skip
    assert "Starting from" not in result.output
    # two setups: one sentence, nothing prepared
    _plan(tuning, tmp_path, setups=2)
    result = runner.invoke(app, ["tune", "liver", "--device", "cpu"], env=WIDE)
    assert result.exit_code == 2 and len(tuning["cache"]) == 1
    assert (
        "a study tunes one transfer setup, and the recipe has 2; pass one --freeze, "
        "e.g. --freeze local."
    ) in _said(result)
    # a space of the keys the brain run fixes only
    _plan(tuning, tmp_path)
    space = tmp_path / "space.toml"
    space.write_text('"model.dropout" = { low = 0.0, high = 0.5 }\n')
    args = ["tune", "liver", "--device", "cpu", "--space", str(space)]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 2 and len(tuning["cache"]) == 1
    assert f"{space}: has no key left to search in transfer; add optim.* keys." in _said(result)

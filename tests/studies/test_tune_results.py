"""What a study writes (braver.studies.tune_results), on studies built trial by trial in memory."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from rich.console import Console

from braver.errors import BraverError
from braver.recipe import load_recipe, shipped_recipe
from braver.studies import tune_results
from braver.studies.search_space import SearchSpace, SpaceParam
from braver.studies.tune_results import (
    BestRecipe,
    TuneResult,
    history_figure,
    param_importances,
    plot_history,
    trial_rows,
    write_results,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = FloatDistribution(0.001, 0.02, log=True)
INIT = CategoricalDistribution(["paper", "he"])
SPACE = [
    SpaceParam("optim.lr", "float", 0.001, 0.02, log=True),
    SpaceParam("model.init", "choice", choices=("paper", "he")),
]


def _trial(state, value=None, seconds=None, steps=0, **params):
    trial = create_trial(
        state=state,
        value=value,
        params=params,
        distributions={k: {"lr": LR, "init": INIT}[k] for k in params},
        intermediate_values={i: 0.1 * i for i in range(steps)},
    )
    if seconds is not None:
        trial.datetime_start = dt.datetime(2026, 1, 1)
        trial.datetime_complete = trial.datetime_start + dt.timedelta(seconds=seconds)
    else:
        trial.datetime_complete = None
    return trial


def _study(values, direction="maximize", pruned=(), name="s"):
    """A study whose complete trials have ``values`` (learning rates spread, inits alternate)
    and pruned trials at the numbers in ``pruned``."""
    study = optuna.create_study(study_name=name, direction=direction)
    values = list(values)
    for number in range(len(values) + len(pruned)):
        lr, init = 0.001 * (1 + number), ("paper", "he")[number % 2]
        params = {"optim.lr": lr, "model.init": init}
        state = TrialState.PRUNED if number in pruned else TrialState.COMPLETE
        value = None if number in pruned else values.pop(0)
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params=params,
                distributions={"optim.lr": LR, "model.init": INIT},
                user_attrs={"run": f"/runs/trials/t-trial{number:04d}-20260101-000000"},
                intermediate_values={0: 0.1} if number in pruned else {},
            )
        )
    return study


def _recipe():
    return load_recipe(shipped_recipe("brain"), ["stage1.epochs=1"], profile="phantom")


def test_a_row_per_trial_with_every_searched_key_its_duration_epochs_run_and_note():
    trials = [
        _trial(TrialState.COMPLETE, 0.5, seconds=12.34, steps=3, lr=0.002),
        _trial(TrialState.FAIL, None, seconds=0.26, init="he"),
        _trial(TrialState.RUNNING, None, lr=0.004, init="paper"),
        _trial(TrialState.COMPLETE, 0.25, seconds=1.0, lr=0.003, init="paper"),
    ]
    trials[0].user_attrs.update(baseline=True, run="/r/t-trial0000-x")
    trials[1].user_attrs.update(error="training diverged", run="/r/t-trial0001-x")
    trials[2].user_attrs.update(interrupted=True)
    for number, trial in enumerate(trials):
        trial.number = number
    study = type("Study", (), {"trials": trials})()
    rows = trial_rows(study, "whole_tumor_dice")
    fields = ["trial", "state", "whole_tumor_dice", "seconds", "lr", "init", "epochs", "run"]
    assert [list(row) for row in rows] == [fields + ["note"]] * 3 + [fields]
    assert [[row[k] for k in fields] for row in rows] == [
        [0, "complete", 0.5, 12.3, 0.002, None, 3, "t-trial0000-x"],  # a key it did not search
        [1, "fail", None, 0.3, None, "he", None, "t-trial0001-x"],  # no epoch reported
        [2, "running", None, None, 0.004, "paper", None, None],  # not over: no duration
        [3, "complete", 0.25, 1.0, 0.003, "paper", None, None],
    ]
    assert [row.get("note") for row in rows] == [
        "recipe's values", "training diverged", "interrupted", None
    ]  # fmt: skip
    assert isinstance(rows[3]["seconds"], float)  # rounded to tenths, not to whole seconds


def test_the_results_of_a_finished_study(tmp_path, monkeypatch):
    import braver.report

    drawn = []
    real_plot_bars = braver.report.plot_bars

    def plot_bars(*args, **kwargs):
        drawn.append((args, kwargs))
        return real_plot_bars(*args, **kwargs)

    monkeypatch.setattr(braver.report, "plot_bars", plot_bars)
    figures = []
    real_history_figure = tune_results.history_figure
    monkeypatch.setattr(
        tune_results,
        "history_figure",
        lambda *args: figures.append(args) or real_history_figure(*args),
    )
    study = _study([0.40, 0.70, 0.55, 0.60, 0.45], pruned=(2,), name="s1")
    recipe = _recipe()
    space = SearchSpace(SPACE, str(tmp_path / "space.toml"))
    best_recipe = BestRecipe(recipe, space, {"transfer": {"freeze": "local"}})
    console = Console(file=io.StringIO(), width=300)
    result = write_results(
        study, tmp_path, best_recipe, "liver_dice", url="sqlite:///x.db", console=console
    )
    assert isinstance(result, TuneResult) and result.folder == tmp_path and result.study is study
    assert [row["trial"] for row in result.rows] == [0, 1, 2, 3, 4, 5]
    # trial 1 is the best: best.toml names the study, the trial and the metric
    header = (tmp_path / "best.toml").read_text().split("\n")[:2]
    assert header == [
        "# braver tune: the best trial of study 's1' (trial 1),",
        "# liver_dice = 0.7000 on the validation cases of its run folder",
    ]
    importances = param_importances(study)
    assert set(importances) == {"optim.lr", "model.init"}
    assert json.loads((tmp_path / "tune.json").read_text()) == {
        "study": "s1",
        "storage": "sqlite:///x.db",
        "metric": "liver_dice",
        "direction": "maximize",
        "space": [p.to_dict() for p in SPACE],
        "space_file": str(tmp_path / "space.toml"),
        "trials": {"complete": 5, "pruned": 1},
        "best": {
            "trial": 1,
            "liver_dice": 0.7,
            "params": {"optim.lr": 0.002, "model.init": "he"},
            "run": "/runs/trials/t-trial0001-20260101-000000",
            "importances": pytest.approx(importances),
        },
    }
    ((rows, keys, png), options) = drawn[0]
    assert rows == [{"parameter": k, "importance": v} for k, v in importances.items()]
    assert keys == ["importance"] and png == tmp_path / "importances.png"
    assert options == dict(
        label_key="parameter", title="Parameter importances for liver_dice (fANOVA, 5 trials)"
    )
    assert figures == [(study, "liver_dice")]  # the history's values are the metric's
    for png in ("history.png", "importances.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    said = " ".join(console.file.getvalue().split())
    assert f"Best trial 1: liver_dice 0.7000 → {tmp_path / 'best.toml'}" in said
    assert "importances.png needs" not in said


def test_one_finished_trial_has_no_importances_and_says_so(tmp_path):
    study = _study([0.5], pruned=(1,))
    space = SearchSpace(SPACE, "space.toml")
    console = Console(file=io.StringIO(), width=300)
    result = write_results(
        study, tmp_path, BestRecipe(_recipe(), space), "whole_tumor_dice", url="u", console=console
    )
    assert result.best["importances"] == {} and not (tmp_path / "importances.png").exists()
    assert (tmp_path / "best.toml").exists() and (tmp_path / "history.png").exists()
    said = console.file.getvalue().splitlines()
    assert "importances.png needs two finished trials that differ" in said
    assert param_importances(_study([0.5, 0.5])) == {}  # two trials, one value: nothing to say
    assert set(param_importances(_study([0.5, 0.6]))) == {"optim.lr", "model.init"}  # two do


def test_importances_are_optunas_fanova_with_a_fixed_seed():
    study = _study([0.40, 0.70, 0.55, 0.60, 0.45, 0.52, 0.66])
    evaluator = optuna.importance.FanovaImportanceEvaluator
    seeded = [
        dict(optuna.importance.get_param_importances(study, evaluator=evaluator(seed=seed)))
        for seed in (0, 1)
    ]
    assert seeded[0] != seeded[1]  # the forest depends on its seed: the seed matters
    assert param_importances(study) == seeded[0]
    assert param_importances(study) == seeded[0]  # and again: the same figures


def test_the_history_plot_shows_each_value_and_the_best_so_far(tmp_path):
    study = _study([0.3, 0.5, 0.4], pruned=(2,), name="s2")
    figure = history_figure(study, "whole_tumor_dice")
    (ax,) = figure.axes
    points, best, pruned = ax.get_lines()
    assert list(points.get_xdata()) == [0, 1, 3] and list(points.get_ydata()) == [0.3, 0.5, 0.4]
    assert (points.get_marker(), points.get_linestyle()) == ("o", "None")
    assert list(best.get_xdata()) == [0, 1, 3] and list(best.get_ydata()) == [0.3, 0.5, 0.5]
    assert best.get_drawstyle() == "steps-post"  # the best holds until the next trial
    assert (list(pruned.get_xdata()), list(pruned.get_ydata())) == ([], [])
    assert (pruned.get_marker(), pruned.get_linestyle()) == ("None", "None")  # a legend line
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["whole_tumor_dice", "best so far", "1 pruned (not shown)"]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("trial", "whole_tumor_dice")
    assert ax.get_title() == "Study s2: optimisation history"
    # a minimised metric: the best so far is the lowest, and without pruned trials no third line
    figure = history_figure(_study([0.5, 0.3, 0.4], direction="minimize"), "whole_tumor_hd95_mm")
    (ax,) = figure.axes
    points, best = ax.get_lines()
    assert list(best.get_ydata()) == [0.5, 0.3, 0.3]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "whole_tumor_hd95_mm", "best so far"
    ]  # fmt: skip
    out = plot_history(study, "whole_tumor_dice", tmp_path / "history.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and list(tmp_path.iterdir()) == [out]


def test_best_toml_refuses_a_value_the_recipe_cannot_take_naming_the_space_file(tmp_path):
    (trial,) = _study([0.5]).trials
    trial.params["model.init"] = "orthogonal"  # e.g. the space file was edited since
    best = BestRecipe(_recipe(), SearchSpace(SPACE, "spaces/brain.toml"))
    with pytest.raises(BraverError) as error:
        best.write(tmp_path / "best.toml", trial, "whole_tumor_dice", "s")
    assert "spaces/brain.toml" in str(error.value) and not (tmp_path / "best.toml").exists()
    assert not list(Path(tmp_path).iterdir())

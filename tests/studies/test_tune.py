"""braver tune: Optuna studies over recipe keys on a tiny cache, one short trial each."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from braver.cli.main import app
from braver.errors import BraverError
from braver.recipe import load_recipe, shipped_recipe
from braver.studies.tune import (
    PRUNED_FILE,
    load_space,
    metric_direction,
    recipe_trainer,
    tune,
)

_spec = importlib.util.spec_from_file_location(
    "braver_tiny_cache", Path(__file__).parents[1] / "train" / "tiny.py"
)
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

runner = CliRunner()

# one balanced epoch of 8 tiles and no second stage: a trial trains and evaluates in seconds
TINY = [
    "data.mode=tile",
    "data.tile=8",
    "data.batch_size=4",
    "data.validation_fraction=0.25",
    "data.validation_patches=8",
    "stage1.epochs=1",
    "stage1.patches_per_epoch=8",
    "stage2.epochs=0",
    "model.dropout=0.0",
]
SPACE = '"optim.lr" = { low = 0.001, high = 0.02, log = true }\n"model.init" = ["paper", "he"]\n'

# what a process of the kill and sharing tests runs: a study on the tiny cache
WORKER = """
import sys
from pathlib import Path
from braver.recipe import load_recipe, shipped_recipe
from braver.studies.tune import load_space, recipe_trainer, tune

cache, folder, space, trials, *overrides = sys.argv[1:]
recipe = load_recipe(shipped_recipe("brain"), overrides, profile="phantom")
tune(recipe, load_space(space, recipe), recipe_trainer(cache), folder=Path(folder),
     study_name="shared", metric="whole_tumor_dice", trials=int(trials))
"""


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


def _recipe(*extra):
    return load_recipe(shipped_recipe("brain"), [*TINY, *extra], profile="phantom")


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


@pytest.fixture
def phantoms(monkeypatch, tmp_path):
    """The phantom cache replaced by the tiny one (the real one takes a minute)."""
    cache = tiny.write_tiny_cache(tmp_path / "cache")
    monkeypatch.setattr(
        "braver.data.phantoms.default_phantom_cache",
        lambda kind="brain", progress=True, **options: (tmp_path / "dataset", cache.root),
    )
    return cache


def _load(folder: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def _states(study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.mark.slow
def test_a_three_trial_study_writes_its_results_and_best_recipe_trains(
    phantoms, space_file, tmp_path, one_thread
):
    out = tmp_path / "runs"
    args = ["tune", "brain", "--trials", "3", "--space", str(space_file), "--out", str(out)]
    result = runner.invoke(app, [*args, "--study", "t", "--seed", "0", *_sets(TINY)])
    assert result.exit_code == 0, result.output
    folder = out / "tune-t"
    assert "Study t: whole_tumor_dice" in result.output and "Best" in result.output
    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert {r["state"] for r in rows} == {"complete"}
    # trial 0 is the recipe's own values, the others are sampled inside the space
    assert float(rows[0]["optim.lr"]) == 0.005 and rows[0]["model.init"] == "paper"
    assert all(0.001 <= float(r["optim.lr"]) <= 0.02 for r in rows)
    for row in rows:  # every trial is an ordinary run folder with its own metrics
        metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
        assert metrics["whole_tumor_dice"] == pytest.approx(float(row["whole_tumor_dice"]))
        assert (Path(row["run"]) / "model.safetensors").exists()
    assert len({r["run"] for r in rows}) == 3
    for png in ("history.png", "importances.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((folder / "tune.json").read_text())
    best_row = max(rows, key=lambda r: float(r["whole_tumor_dice"]))
    assert summary["best"]["trial"] == int(best_row["trial"])
    assert summary["trials"] == {"complete": 3}

    best = load_recipe(folder / "best.toml")  # the schema accepts it as is
    assert best.optim.lr == pytest.approx(float(best_row["optim.lr"]))
    assert best.model.init == best_row["model.init"]
    assert best.stage1.epochs == 1 and best.data.tile == 8  # the --set values stay
    trained = runner.invoke(app, ["train", str(folder / "best.toml"), "--out", str(tmp_path / "b")])
    assert trained.exit_code == 0, trained.output
    (run,) = (tmp_path / "b").iterdir()
    assert run.name.startswith("brain-phantom-tuned-") and (run / "metrics.json").exists()

    # the same command again: nothing left to run, the study is reported as it is
    again = runner.invoke(app, [*args, "--study", "t", *_sets(TINY)])
    assert again.exit_code == 0, again.output
    assert "3 of 3 trials finished" in again.output
    assert len(_load(folder, "t").trials) == 3


@pytest.mark.slow
def test_the_pruner_stops_a_trial_whose_first_epoch_is_poor(phantoms, space_file, tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{folder / 'study.db'}", study_name="p", direction="maximize"
    )
    lr = optuna.distributions.FloatDistribution(1e-6, 2e-6, log=True)
    # an earlier trial that reached Dice 1.0 from its first epoch on
    study.add_trial(
        optuna.trial.create_trial(
            params={"optim.lr": 1e-6},
            distributions={"optim.lr": lr},
            value=1.0,
            intermediate_values={0: 1.0, 1: 1.0, 2: 1.0},
        )
    )
    space_file.write_text('"optim.lr" = { low = 1e-6, high = 2e-6, log = true }\n')
    recipe = _recipe("stage1.epochs=3", "stage2.epochs=1", "stage2.patches_per_epoch=8")
    result = tune(
        recipe,
        load_space(space_file, recipe),
        recipe_trainer(phantoms.root),
        folder=folder,
        study_name="p",
        metric="whole_tumor_dice",
        trials=2,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )
    trial = result.study.trials[1]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [0]
    assert trial.intermediate_values[0] < 1.0
    run = Path(trial.user_attrs["run"])
    pruned = json.loads((run / PRUNED_FILE).read_text())
    assert pruned["trial"] == 1 and pruned["epoch"] == 0
    assert pruned["monitor"] == "whole_tumor_dice"
    with open(run / "history.csv") as f:  # epochs 1-2 of stage 1 and stage 2 never ran
        assert [r["stage"] for r in csv.DictReader(f)] == ["stage1"]
    assert not (run / "metrics.json").exists() and not (run / "model.safetensors").exists()
    assert [r["state"] for r in result.rows] == ["complete", "pruned"]


def _worker(tmp_path, cache, folder, space, trials, *extra) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # output to a file, not a pipe: nobody reads a pipe while the worker runs, and a full pipe
    # (progress output on a loaded machine) would block the worker for good
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(
        [sys.executable, str(script), str(cache), str(folder), str(space), str(trials)]
        + [*TINY, *extra],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log.close()  # the child has its own copy
    return process


def _output(tmp_path) -> str:
    return (tmp_path / "worker.log").read_text()


def _wait_for(folder: Path, ready, process: subprocess.Popen, seconds: float = 600) -> list:
    """Poll the study until ``ready(trials)``; its trials then. Fails once ``process`` ended."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:  # the worker died: say why now, not after the deadline
            raise AssertionError(
                f"the worker process ended ({process.returncode}) before it got there:\n"
                + _output(folder.parent)
            )
        if (folder / "study.db").exists():
            try:
                trials = _load(folder, "shared").trials
            except Exception:  # the study is not created yet
                trials = []
            if ready(trials):
                return trials
        time.sleep(0.2)
    raise AssertionError("the worker process did not get there in time")


def _tune_here(folder: Path, cache: Path, space: Path, trials: int, *extra):
    recipe = _recipe(*extra)
    return tune(
        recipe,
        load_space(space, recipe),
        recipe_trainer(cache),
        folder=folder,
        study_name="shared",
        metric="whole_tumor_dice",
        trials=trials,
    )


@pytest.mark.slow
def test_a_killed_study_resumes_with_its_finished_trials(tmp_path, space_file, one_thread):
    cache = tiny.write_tiny_cache(tmp_path / "cache")
    folder = tmp_path / "study"
    # two epochs a trial, so that the process is killed inside one
    process = _worker(tmp_path, cache.root, folder, space_file, 2, "stage1.epochs=2")

    def second_trial_started(trials):
        return len(trials) == 2 and trials[1].user_attrs.get("pid") is not None

    try:
        trials = _wait_for(folder, second_trial_started, process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert trials[0].state == TrialState.COMPLETE, _output(tmp_path)
    before = _load(folder, "shared").trials
    assert before[1].state == TrialState.RUNNING  # as the killed process left it

    result = _tune_here(folder, cache.root, space_file, 2, "stage1.epochs=2")
    after = result.study.trials
    assert after[1].state == TrialState.FAIL and after[1].user_attrs["interrupted"]
    assert after[0].state == TrialState.COMPLETE and after[0].value == before[0].value
    assert after[0].params == before[0].params  # the finished trial is kept as it was
    assert [t.state for t in after[2:]] == [TrialState.COMPLETE]  # one more to reach 2
    assert [r.get("note") for r in result.rows][1] == "interrupted"


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path, space_file, one_thread):
    cache = tiny.write_tiny_cache(tmp_path / "cache")
    folder = tmp_path / "study"
    other = _worker(tmp_path, cache.root, folder, space_file, 3)
    try:  # this process joins once the other one has its first trial running
        _wait_for(folder, lambda trials: any(t.user_attrs.get("pid") for t in trials), other)
        _tune_here(folder, cache.root, space_file, 3)
    finally:
        other.wait(timeout=240)
    assert other.returncode == 0, _output(tmp_path)
    trials = _load(folder, "shared").trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 3 and len(trials) == len(complete)  # none lost or failed
    assert [t.number for t in trials] == list(range(len(trials)))
    assert {t.user_attrs["pid"] for t in trials} == {other.pid, os.getpid()}
    runs = [t.user_attrs["run"] for t in trials]
    assert len(set(runs)) == len(trials) and all(Path(r, "metrics.json").exists() for r in runs)
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == len(trials)  # no point (the recipe's own included) tried twice
    assert sum(bool(t.user_attrs.get("baseline")) for t in trials) == 1
    with open(folder / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == len(trials)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"optim.learning_rate" = { low = 0.001, high = 0.1 }\n', ["optim.learning_rate"]),
        ('"model.dropout" = ["high", "low"]\n', ["model.dropout", "'high'", "float"]),
        ('"data.batch_size" = { low = 1.5, high = 8 }\n', ["data.batch_size", "1.5", "int"]),
        ('"model.init" = { low = 0, high = 1 }\n', ["model.init", "list of choices"]),
        ('"model.dropout" = { low = 0.2, high = 1.0 }\n', ["model.dropout", "[0, 1)"]),
        ('"optim.l2" = { low = 0.0, high = 0.1, log = true }\n', ["optim.l2", "low > 0"]),
        ('"optim.lr" = 0.01\n', ["optim.lr", "range"]),
        ("[optim]\nlr = { low = 0.1, hi = 0.2 }\n", ["optim.lr", "'hi'"]),
    ],
)
def test_a_bad_space_is_refused_naming_the_key_and_the_file(tmp_path, text, words):
    path = tmp_path / "bad_space.toml"
    path.write_text(text)
    with pytest.raises(BraverError) as error:
        load_space(path, _recipe())
    message = str(error.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_the_cli_refuses_a_bad_space_in_one_sentence(tmp_path):
    path = tmp_path / "bad_space.toml"
    path.write_text('"optim.momentum" = [0.5, 0.9]\n')
    result = runner.invoke(app, ["tune", "brain", "--space", str(path)])
    assert result.exit_code == 2
    assert "unknown key optim.momentum" in result.output and "bad_space.toml" in result.output
    assert "Traceback" not in result.output


def test_the_shipped_space_fits_the_shipped_recipes():
    from braver.studies.tune import default_space_path

    for profile in (None, "phantom"):
        recipe = load_recipe(shipped_recipe("brain"), profile=profile)
        space = load_space(default_space_path(), recipe, profile=profile)
        keys = {p.key for p in space.params}
        assert {"model.init", "model.dropout", "optim.lr", "optim.lr_decay"} <= keys
        assert {"optim.momentum_end", "optim.l1", "optim.l2", "data.batch_size"} <= keys
        # the recipe's own values lie inside the space, so trial 0 is the recipe itself
        assert set(space.base_values(recipe)) == keys
    phantom = load_space(default_space_path(), recipe, profile="phantom")
    (batch,) = [p for p in phantom.params if p.key == "data.batch_size"]
    assert batch.choices == (8, 16, 32)


def test_a_resumed_study_must_keep_its_settings(tmp_path, space_file):
    folder = tmp_path / "study"
    folder.mkdir()
    study = optuna.create_study(
        storage=f"sqlite:///{folder / 'study.db'}", study_name="s", direction="maximize"
    )
    recipe = _recipe()
    settings = {
        "recipe": {k: v for k, v in recipe.to_dict().items() if k != "name"},
        "space": load_space(space_file, recipe).to_dict(),
        "metric": "whole_tumor_dice",
    }
    study.set_user_attr("settings", json.loads(json.dumps(settings)))
    changed = _recipe("stage1.epochs=4")
    with pytest.raises(BraverError, match=r"study 's' .*\(stage1\.epochs: 1 then, 4 now\)"):
        tune(
            changed,
            load_space(space_file, changed),
            recipe_trainer(tmp_path / "no-cache"),
            folder=folder,
            study_name="s",
            metric="whole_tumor_dice",
            trials=1,
        )
    with pytest.raises(BraverError, match="maximizes its metric"):
        tune(
            recipe,
            load_space(space_file, recipe),
            recipe_trainer(tmp_path / "no-cache"),
            folder=folder,
            study_name="s",
            metric="whole_tumor_hd95_mm",
            trials=1,
        )


def test_distances_and_losses_are_minimised():
    assert metric_direction("whole_tumor_dice") == "maximize"
    assert metric_direction("tumor_core_hd95_mm") == "minimize"
    assert metric_direction("valid_loss") == "minimize"


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tune_liver_searches_one_transfer_setup(tmp_path, monkeypatch, one_thread):
    from braver.studies.transfer import load_liver_recipe

    tests = Path(__file__).parents[1]
    transfer = _load_module(tests / "studies" / "test_transfer_study.py", "braver_tune_transfer")
    brain = _load_module(tests / "cli" / "test_evaluate.py", "braver_tune_brain_run")
    cache = transfer.write_tiny_liver_cache(tmp_path)
    monkeypatch.setattr(
        "braver.data.phantoms.default_phantom_cache",
        lambda kind="brain", progress=True, **options: (tmp_path / "liver", cache),
    )
    run = brain.make_run(tmp_path / "brain-1")
    space = tmp_path / "space.toml"
    space.write_text(SPACE.replace('"model.init"', '"model.dropout" = [0.0, 0.5]\n"model.init"'))
    out = tmp_path / "runs"
    tiny_liver = [*transfer.TINY, "stage2.epochs=0"]
    args = ["tune", "liver", "--from", str(run), "--freeze", "local", "--trials", "2"]
    result = runner.invoke(
        app, [*args, "--space", str(space), "--out", str(out), *_sets(tiny_liver)]
    )
    assert result.exit_code == 0, result.output
    assert "Not searched in transfer (the brain run fixes them): model.dropout, model.init" in (
        " ".join(result.output.split())
    )
    folder = out / "tune-liver-phantom-freeze-local"
    study = _load(folder, "liver-phantom-freeze-local")
    assert _states(study) == ["COMPLETE", "COMPLETE"]
    assert all(set(t.params) == {"optim.lr"} for t in study.trials)
    assert all(0 <= t.value <= 1 for t in study.trials)  # tumor_dice, the liver default
    for trial in study.trials:
        info = json.loads((Path(trial.user_attrs["run"]) / "run.json").read_text())
        assert info["kind"] == "liver" and info["extra"]["transfer"]["freeze"] == ["local"]
        assert info["extra"]["transfer"]["source_run"] == str(run)
    text = (folder / "best.toml").read_text()
    assert f"braver transfer best.toml --from {run} --freeze local" in text
    recipe, settings = load_liver_recipe(folder / "best.toml")
    assert settings.strategy == "sum" and recipe.kind == "liver"
    assert recipe.optim.lr == pytest.approx(study.best_trial.params["optim.lr"])

    again = runner.invoke(app, [*args, "--space", str(space), "--out", str(out)])
    assert again.exit_code == 2  # the same study without the --set values: refused
    assert "was started with other settings" in " ".join(again.output.split())


class _Trainer:
    """Stands in for ``recipe_trainer`` (no training, a few milliseconds a trial): each trial
    gets a run folder whose metrics.json holds ten times its learning rate, and its callbacks
    see one epoch with that value; the trial numbered ``fail`` ends in a BraverError."""

    def __init__(self, fail: int = -1, seconds: float = 0.0):
        self.fail, self.seconds, self.calls = fail, seconds, []

    def __call__(self, recipe, out, callbacks):
        from types import SimpleNamespace

        from fastai.callback.core import CancelFitException

        self.calls.append((recipe, out, callbacks))
        time.sleep(self.seconds)
        run = out / f"{recipe.name}-20260101-000000"
        run.mkdir(parents=True)
        value = recipe.optim.lr * 10
        for callback in callbacks:
            names = ["epoch", "train_loss", "valid_loss", "whole_tumor_dice", "time"]
            recorder = SimpleNamespace(metric_names=names, log=[0, 1.0, 0.9, value, "0:01"])
            callback.learn = SimpleNamespace(recorder=recorder)
            with contextlib.suppress(CancelFitException):  # a pruned epoch ends the fit
                callback.after_epoch()
            callback.after_fit()  # optuna.TrialPruned when the pruner said so
        if recipe.name.endswith(f"trial{self.fail:04d}"):
            raise BraverError("training diverged", run, "lower the learning rate")
        (run / "metrics.json").write_text(json.dumps({"whole_tumor_dice": value}))
        return run


class _PruneTrial(optuna.pruners.BasePruner):
    def __init__(self, number: int):
        self.number = number

    def prune(self, study, trial) -> bool:
        return trial.number == self.number


def test_a_study_runs_prunes_fails_and_resumes_its_trials(tmp_path, space_file, monkeypatch):
    """The study's wiring, with the training stood in for (the slow tests train for real)."""
    import io
    import socket

    import tomllib
    from rich.console import Console

    from braver.studies import tune_results
    from braver.studies.tune import OptunaPruning

    recipe, folder = _recipe(), tmp_path / "runs" / "tune-s"  # its parents made too
    space = load_space(space_file, recipe)
    trainer = _Trainer(fail=3)
    console = Console(file=io.StringIO(), width=200)
    options = dict(
        folder=folder, study_name="s", metric="whole_tumor_dice", seed=0, pruner=_PruneTrial(2),
        settings={"brain_run": "r1"}, best_tables={"transfer": {"freeze": "local"}},
        best_command="braver train best.toml --data here", console=console,
    )  # fmt: skip
    result = tune(recipe, space, trainer, trials=4, **options)
    output = console.file.getvalue()
    assert "Study s" in output and "0 of 4 trials finished" in output
    assert all(f"  {param.describe()}" in output for param in space.params)
    study = _load(folder, "s")
    # a failed trial does not count among the trials asked for: a fifth trial replaces it
    assert _states(study) == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    assert study.user_attrs["settings"]["brain_run"] == "r1"
    assert study.user_attrs["settings"]["metric"] == "whole_tumor_dice"
    # trial 0 is the recipe's own values; every trial trains the recipe with its values
    assert study.trials[0].params == {"optim.lr": recipe.optim.lr, "model.init": "paper"}
    for trial, (trained, out, callbacks) in zip(study.trials, trainer.calls, strict=True):
        assert trained.name == f"{recipe.name}-trial{trial.number:04d}"
        assert (trained.optim.lr, trained.model.init) == tuple(trial.params.values())
        assert trained.stage1.epochs == 1 and out == folder / "trials"
        (pruning,) = callbacks
        assert isinstance(pruning, OptunaPruning) and pruning.trial.number == trial.number
        assert (pruning.monitor, pruning.sign) == ("whole_tumor_dice", 1.0)
        assert trial.user_attrs["run"] == str(out / f"{trained.name}-20260101-000000")
        assert trial.user_attrs["host"] == socket.gethostname()
        assert trial.user_attrs["pid"] == os.getpid()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert [t.value for t in complete] == [
        pytest.approx(t.params["optim.lr"] * 10) for t in complete
    ]
    pruned, failed = study.trials[2], study.trials[3]
    lr = pruned.params["optim.lr"]
    assert pruned.intermediate_values == {0: pytest.approx(lr * 10)}
    written = json.loads((Path(pruned.user_attrs["run"]) / PRUNED_FILE).read_text())
    assert written == {"trial": 2, "epoch": 0, "monitor": "whole_tumor_dice", "value": lr * 10}
    assert "trial 2 pruned after epoch 0" in output
    for trial in study.trials:  # each trial's values, said as it starts
        assert f"optim.lr = {trial.params['optim.lr']:.4g}  model.init = " in output
    assert "training diverged" in failed.user_attrs["error"]
    assert "trial 3 failed" in output
    best = max(complete, key=lambda t: t.value)
    assert result.best["trial"] == best.number and result.best["params"] == best.params
    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["trial"], r["state"]) for r in rows] == [
        ("0", "complete"), ("1", "complete"), ("2", "pruned"), ("3", "fail"), ("4", "complete")
    ]  # fmt: skip
    assert rows[0]["note"] == "recipe's values" and "training diverged" in rows[3]["note"]
    for row, trial in zip(rows, study.trials, strict=True):  # full paths, and where they ran
        assert (row["run"], row["host"]) == (trial.user_attrs["run"], socket.gethostname())
        assert row["epochs"] == "1"  # each trial reported its one epoch
        assert float(row["seconds"]) == round(float(row["seconds"]), 1)
    assert [row["run"] for row in result.rows] == [
        Path(t.user_attrs["run"]).name for t in study.trials
    ]  # the table: the run folders' names
    text = (folder / "best.toml").read_text()
    assert f"trial {best.number})" in text and "braver train best.toml --data here" in text
    assert f"# {best.user_attrs['run']}\n" in text and "# searched: optim.lr = " in text
    tuned = tomllib.loads(text)
    assert tuned["name"] == f"{recipe.name}-tuned" and tuned["transfer"] == {"freeze": "local"}
    assert tuned["optim"]["lr"] == pytest.approx(best.params["optim.lr"])
    summary = json.loads((folder / "tune.json").read_text())
    assert summary["trials"] == {"complete": 3, "pruned": 1, "fail": 1}
    assert (summary["study"], summary["direction"]) == ("s", "maximize")
    assert summary["best"]["trial"] == best.number
    assert (folder / "history.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "importances.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["best"]["importances"]) == {"optim.lr", "model.init"}
    assert summary["best"]["run"] == best.user_attrs["run"]
    assert result.study.study_name == "s"
    assert "Study s: whole_tumor_dice" in output  # the trials table
    assert f"Best trial {best.number}: whole_tumor_dice" in output

    # resumed for one trial more after a process died in trial 6: it is marked failed,
    # another machine's (trial 5) is not
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}")
    study = optuna.load_study(study_name="s", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for host, pid in (("elsewhere", 1), (socket.gethostname(), dead.pid)):
        trial = study.ask()
        trial.set_user_attr("host", host)
        trial.set_user_attr("pid", pid)
    console.file = io.StringIO()  # the plots were checked above: not drawn again
    monkeypatch.setattr(tune_results, "plot_history", lambda *args: None)
    monkeypatch.setattr(tune_results, "param_importances", lambda study: {})
    tune(recipe, space, trainer, trials=5, **options)
    output = console.file.getvalue()
    assert "4 of 5 trials finished, 1 interrupted marked failed" in output
    study = _load(folder, "s")
    assert _states(study)[5:] == ["RUNNING", "FAIL", "COMPLETE"]
    assert "interrupted" not in study.trials[5].user_attrs
    assert study.trials[6].user_attrs["interrupted"] is True
    with open(folder / "trials.csv") as f:
        assert [row["note"] for row in csv.DictReader(f)][6] == "interrupted"
    assert len(trainer.calls) == 6  # only trial 7 trained
    tune(recipe, space, trainer, trials=5, **options)  # nothing left to do: nothing trains
    assert len(trainer.calls) == 6 and len(_load(folder, "s").trials) == 8


def test_the_pruners_by_name():
    from braver.studies.tune import make_pruner

    assert isinstance(make_pruner("median"), optuna.pruners.MedianPruner)
    assert isinstance(make_pruner("halving"), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(BraverError, match="unknown pruner 'best'"):
        make_pruner("best")


def test_the_trainers_hand_a_trial_to_the_training_with_their_settings(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import braver.train
    from braver.studies import transfer_training
    from braver.studies.tune import transfer_trainer

    calls = []
    monkeypatch.setattr(braver.train, "train_from_recipe", lambda *a, **k: calls.append((a, k)))
    recipe, console, callbacks = _recipe(), object(), [object()]
    train = recipe_trainer("cache", device="cuda", data="raw", console=console, progress=True)
    train(recipe, tmp_path / "trials", callbacks)
    assert calls.pop() == (
        (recipe,),
        dict(
            cache="cache", out=tmp_path / "trials", device="cuda", data="raw", console=console,
            progress=True, evaluate=True, callbacks=callbacks,
        ),
    )  # fmt: skip
    cache = tiny.write_tiny_cache(tmp_path / "liver")
    setup = SimpleNamespace(baseline=False)
    settings = SimpleNamespace(class_map="reinit")
    plan = SimpleNamespace(
        setups=[setup], brain="net", brain_run="run", data="ct", strategy="s", settings=settings
    )
    monkeypatch.setattr(transfer_training, "train_setup", lambda *a, **k: calls.append((a, k)))
    train = transfer_trainer(plan, cache.root, device="cuda", console=console, progress=True)
    train(recipe, tmp_path / "trials", callbacks)
    (args, kwargs) = calls.pop()
    assert args[:4] == (setup, recipe, "net", "run") and args[4].root == cache.root
    assert kwargs == dict(
        out=tmp_path / "trials", device="cuda", data="ct", strategy="s", class_map="reinit",
        console=console, progress=True, callbacks=callbacks,
    )  # fmt: skip
    for setups in ([setup, setup], [SimpleNamespace(baseline=True)]):  # one adapted setup
        with pytest.raises(BraverError, match="a study tunes one transfer setup"):
            transfer_trainer(SimpleNamespace(**{**vars(plan), "setups": setups}), cache.root)


def test_a_study_whose_trials_all_failed_says_so_and_writes_no_best(tmp_path, space_file):
    import io

    from rich.console import Console

    recipe, folder = _recipe(), tmp_path / "study"
    console = Console(file=io.StringIO(), width=200)
    trainer = _Trainer(fail=0, seconds=1.0)
    result = tune(
        recipe, load_space(space_file, recipe), trainer, folder=folder, study_name="s",
        metric="whole_tumor_hd95_mm", trials=2, timeout=0.5, console=console,
    )  # fmt: skip
    assert len(trainer.calls) == 1  # the timeout ends the study after its first trial
    (pruning,) = trainer.calls[0][2]  # a distance: the validation loss, minimised as it is
    assert (pruning.monitor, pruning.sign) == ("valid_loss", 1.0)
    assert result.best is None and not (folder / "best.toml").exists()
    said = console.file.getvalue().splitlines()
    assert "no trial finished: no best.toml and no plots" in said
    assert json.loads((folder / "tune.json").read_text())["trials"] == {"fail": 1}


def test_a_study_whose_trials_keep_failing_stops_after_as_many_failures_as_trials(
    tmp_path, space_file
):
    import io

    from rich.console import Console

    class Failing(_Trainer):
        def __call__(self, recipe, out, callbacks):
            self.calls.append((recipe, out, callbacks))
            if len(self.calls) > 10:  # not caught by the study: the test fails, never hangs
                raise RuntimeError("the study did not stop after its failures")
            raise BraverError("training diverged", out, "lower the learning rate")

    recipe, folder = _recipe(), tmp_path / "study"
    console = Console(file=io.StringIO(), width=200)
    trainer = Failing()
    tune(
        recipe, load_space(space_file, recipe), trainer, folder=folder, study_name="s",
        metric="whole_tumor_dice", trials=3, seed=0, console=console,
    )  # fmt: skip
    assert len(trainer.calls) == 3  # 3 trials needed: 3 failures and it stops, not forever
    assert _states(_load(folder, "s")) == ["FAIL"] * 3
    assert "3 trials failed: the study stops here" in console.file.getvalue()


def test_the_studys_small_steps(tmp_path):
    from types import SimpleNamespace

    from braver.studies.tune import OptunaPruning, _epoch, _monitor, _run_folder, safe_url

    assert safe_url("postgresql://u:secret@h/db") == "postgresql://u:***@h/db"
    assert safe_url("nonsense:secret@db.example") == "db.example"  # not a URL: the host part
    # a Dice is followed epoch by epoch; other metrics by the validation loss, signed
    assert _monitor("whole_tumor_dice", "maximize") == ("whole_tumor_dice", 1.0)
    assert _monitor("whole_tumor_hd95_mm", "minimize") == ("valid_loss", 1.0)
    assert _monitor("whole_tumor_sensitivity", "maximize") == ("valid_loss", -1.0)
    assert _run_folder(tmp_path, "t-trial0001") is None  # the trial failed before its folder
    for name in ("t-trial0001-20260101-000000", "t-trial0001-20260102-000000", "t-trial0002-x"):
        (tmp_path / name).mkdir()
    assert _run_folder(tmp_path, "t-trial0001") == tmp_path / "t-trial0001-20260102-000000"
    assert _epoch(SimpleNamespace(pruned=None)) == "?"
    reported = []
    trial = SimpleNamespace(report=lambda *args: reported.append(args), should_prune=lambda: False)
    pruning = OptunaPruning(trial, "whole_tumor_dice")
    names = ["epoch", "train_loss", "valid_loss", "whole_tumor_dice", "time"]
    for value in (None, float("nan"), 0.5):  # missing or not finite: not reported
        log = [0, 1.0, 0.9, *([value] if value is not None else []), "0:01"]
        pruning.learn = SimpleNamespace(
            recorder=SimpleNamespace(metric_names=names[: len(log)], log=log)
        )
        pruning.after_epoch()
    assert reported == [(0.5, 2)] and pruning.pruned is None  # steps count every epoch


def test_a_seeded_study_samples_the_same_values_again(tmp_path, space_file, monkeypatch):
    from braver.studies import tune as tune_module

    monkeypatch.setattr(tune_module, "write_results", lambda *args, **kwargs: None)
    recipe = _recipe()
    sampled = []
    for folder in ("a", "b"):
        tune(
            recipe, load_space(space_file, recipe), _Trainer(), folder=tmp_path / folder,
            study_name="s", metric="whole_tumor_dice", trials=3, seed=7, baseline=False,
        )  # fmt: skip
        sampled.append([t.params for t in _load(tmp_path / folder, "s").trials])
    assert sampled[0] == sampled[1] and len({t["optim.lr"] for t in sampled[0]}) == 3


def test_a_space_parameter_suggests_checks_records_and_describes_its_values():
    from braver.studies.search_space import SearchSpace, SpaceParam

    lr = SpaceParam("optim.lr", "float", 0.001, 0.1, log=True)
    batch = SpaceParam("data.batch_size", "int", 8, 64, log=True)
    epochs = SpaceParam("stage1.epochs", "int", 1, 10, step=3)
    l2 = SpaceParam("optim.l2", "float", 0.0, 0.01, step=0.001)
    init = SpaceParam("model.init", "choice", choices=("paper", "he", 1))

    class Trial:  # records what Optuna is asked for
        def __init__(self):
            self.asked = []

        def __getattr__(self, name):
            return lambda *args, **kwargs: self.asked.append((name, args, kwargs)) or args[0]

    trial = Trial()
    for param in (lr, batch, epochs, l2, init):
        assert param.suggest(trial) == param.key
    assert trial.asked == [
        ("suggest_float", ("optim.lr", 0.001, 0.1), {"log": True, "step": None}),
        ("suggest_int", ("data.batch_size", 8, 64), {"log": True, "step": 1}),
        ("suggest_int", ("stage1.epochs", 1, 10), {"log": False, "step": 3}),
        ("suggest_float", ("optim.l2", 0.0, 0.01), {"log": False, "step": 0.001}),
        ("suggest_categorical", ("model.init", ["paper", "he", 1]), {}),
    ]
    # the recipe's value is inside the space: the same type among the choices, on the steps
    assert init.contains("he") and init.contains(1)
    assert not init.contains(1.0) and not init.contains(True) and not init.contains("x")
    assert lr.contains(0.005) and not lr.contains(0.2) and not lr.contains(True)
    assert not lr.contains("0.005")
    assert epochs.contains(4) and not epochs.contains(5) and not epochs.contains(13)
    assert lr.contains(0.001) and lr.contains(0.1) and epochs.contains(1)  # the ends are in
    assert [p.to_dict() for p in (lr, epochs, init)] == [
        {"key": "optim.lr", "kind": "float", "low": 0.001, "high": 0.1, "log": True},
        {"key": "stage1.epochs", "kind": "int", "low": 1, "high": 10, "step": 3},
        {"key": "model.init", "choices": ["paper", "he", 1]},
    ]
    assert lr.describe() == "optim.lr in [0.001, 0.1] (log)"
    assert epochs.describe() == "stage1.epochs in [1, 10]"
    assert init.describe() == "model.init in {paper, he, 1}"
    space, dropped = SearchSpace([lr, init], "space.toml").without(["model.init", "optim.l2"])
    assert (space.params, space.source, dropped) == ([lr], "space.toml", ["model.init"])


def test_a_space_file_becomes_its_parameters(tmp_path):
    from braver.studies.search_space import SpaceParam

    path = tmp_path / "space.toml"
    path.write_text(
        '"optim.lr" = { low = 0.001, high = 0.1, log = true }\n'
        '"stage1.epochs" = { low = 1, high = 10, step = 3 }\n'
        '"optim.l2" = { low = 0.0, high = 0.01, step = 0.001 }\n'
        '"model.init" = ["paper", "he"]\n'
    )
    space = load_space(path, _recipe())
    assert space.source == str(path)  # named by the errors of trial recipes, and in tune.json
    assert space.params == [
        SpaceParam("optim.lr", "float", 0.001, 0.1, log=True),
        SpaceParam("stage1.epochs", "int", 1, 10, step=3),
        SpaceParam("optim.l2", "float", 0.0, 0.01, step=0.001),
        SpaceParam("model.init", "choice", choices=("paper", "he")),
    ]
    for text, words in (
        ('"optim.l2" = { low = 0.0, high = 0.01, step = "x" }\n', "step = 'x' must be a number"),
        ('"stage1.epochs" = { low = 1, high = 10, step = 1.5 }\n', "step = 1.5 must be an integer"),
        ('"optim.l2" = { low = "x", high = 0.01 }\n', "low = 'x' must be a number"),
        ('"optim.l2" = { low = 0.0, high = "y" }\n', "high = 'y' must be a number"),
        ('"optim.l2" = { low = 0.0 }\n', "a range needs both low and high"),
        ('"optim.l2" = { low = 0.01, high = 0.01 }\n', "low = 0.01 must be below high"),
        ('"optim.l2" = { low = 0.0, high = 0.01, step = 0 }\n', "step = 0 must be positive"),
        ('"optim.momentum" = { low = 0.1, high = 0.2 }\n', "unknown key optim.momentum"),
    ):
        path.write_text(text)
        with pytest.raises(BraverError, match=words):
            load_space(path, _recipe())


def test_a_process_is_alive_only_when_it_runs_and_is_another():
    from braver.studies.tune import _alive

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _alive(sleeper.pid) is True
        with pytest.raises(subprocess.TimeoutExpired):  # asked with signal 0: not signalled
            sleeper.wait(timeout=0.3)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _alive(dead.pid) is False
    assert _alive(os.getpid()) is False  # this process starts no trial before the check
    assert _alive(str(sleeper.pid)) is False and _alive(None) is False  # not a recorded pid
    assert _alive(1) is True  # init: alive (asking it may be refused, still running)


def test_best_toml_says_where_it_came_from_and_merges_its_tables(tmp_path, space_file):
    from types import SimpleNamespace

    import tomllib

    from braver.studies.tune_results import BestRecipe

    recipe = _recipe()
    space = load_space(space_file, recipe)
    trial = SimpleNamespace(
        number=7, value=0.81234, params={"optim.lr": 0.002, "model.init": "he"}, user_attrs={}
    )
    tables = {"prepare": {"hu_window": [-100.0, 200.0]}, "transfer": {"freeze": "local"}}
    path = BestRecipe(recipe, space, tables).write(
        tmp_path / "best.toml", trial, "whole_tumor_dice", "s1"
    )
    text = path.read_text()
    header = text.split("\n")[:6]
    assert header[:5] == [
        "# braver tune: the best trial of study 's1' (trial 7),",
        "# whole_tumor_dice = 0.8123 on the validation cases of its run folder",
        "# ",  # no run folder recorded
        "# searched: optim.lr = 0.002, model.init = he",
        "# train it with: braver train best.toml [--data DATA]",
    ]
    assert header[5].startswith("name = ")  # the recipe right after the header
    tuned = tomllib.loads(text)
    assert tuned["name"] == f"{recipe.name}-tuned"
    assert tuned["optim"]["lr"] == pytest.approx(0.002) and tuned["model"]["init"] == "he"
    # a table the recipe has is merged into (its other keys kept); a new one is added
    assert tuned["prepare"]["hu_window"] == [-100.0, 200.0]
    assert tuned["prepare"]["target_spacing_mm"] == recipe.prepare["target_spacing_mm"]
    assert tuned["transfer"] == {"freeze": "local"}


def test_only_this_machines_dead_trials_are_marked_failed(tmp_path):
    import socket

    from braver.studies.tune import _fail_interrupted

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    here = socket.gethostname()
    try:
        for host, pid in ((here, sleeper.pid), ("elsewhere", dead.pid), (here, dead.pid)):
            trial = study.ask()
            trial.set_user_attr("host", host)
            trial.set_user_attr("pid", pid)
        assert _fail_interrupted(study, storage, "s") == [2]  # here and gone: only trial 2
    finally:
        sleeper.kill()
        sleeper.wait()
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.RUNNING, TrialState.RUNNING, TrialState.FAIL]
    assert study.trials[2].user_attrs["interrupted"] is True


def test_the_pruners_settings():
    from braver.studies.tune import make_pruner

    median = make_pruner("median")  # from the second epoch on, once three trials reported
    assert (median._n_startup_trials, median._n_warmup_steps) == (3, 1)
    assert make_pruner("halving")._reduction_factor == 3


def test_the_studys_checks_and_counts(tmp_path):
    from braver.studies.tune import OptunaPruning, _count, _first_difference, _metric_value

    # settings: a key only one side has is not a difference; a table against a value is
    assert _first_difference({"a": 1, "b": 2}, {"a": 1}, "recipe") is None
    assert _first_difference({"a": {"b": 1}}, {"a": {"b": 2}}, "recipe") == "a.b: 1 then, 2 now"
    assert _first_difference({"a": 1}, 3, "space") == "space: {'a': 1} then, 3 now"
    # an unknown metric: the error lists the run's numeric metrics
    (tmp_path / "metrics.json").write_text(json.dumps({"liver_dice": 0.8, "case": "x"}))
    assert _metric_value(tmp_path, "liver_dice") == 0.8
    with pytest.raises(BraverError, match=r"has no 'tumour_dice'.*choose one of liver_dice\.$"):
        _metric_value(tmp_path, "tumour_dice")
    # finished: complete or pruned, not failed or running
    study = optuna.create_study()
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(
            optuna.trial.create_trial(state=state, value=0.5 if state.name == "COMPLETE" else None)
        )
    study.ask()
    assert _count(study) == 2
    # a pruned trial's exception says when and why
    pruning = OptunaPruning(None, "whole_tumor_dice")
    pruning.pruned = {"epoch": 3, "monitor": "whole_tumor_dice", "value": 0.12345}
    with pytest.raises(
        optuna.TrialPruned, match=r"^pruned after epoch 3 \(whole_tumor_dice 0.1235\)$"
    ):
        pruning.after_fit()


def test_an_epoch_without_validation_values_is_not_reported():
    from types import SimpleNamespace

    from braver.studies.tune import OptunaPruning

    reported = []
    trial = SimpleNamespace(report=lambda *args: reported.append(args), should_prune=lambda: False)
    pruning = OptunaPruning(trial, "whole_tumor_dice")
    names = ["epoch", "train_loss", "valid_loss", "whole_tumor_dice", "time"]
    # fastai's log when the validation was skipped: the training loss and the time only
    pruning.learn = SimpleNamespace(
        recorder=SimpleNamespace(metric_names=names, log=[0, 1.0, "0:01"])
    )
    pruning.after_epoch()
    assert reported == [] and pruning.step == 1


def test_the_trainers_defaults(monkeypatch):
    import braver.train

    calls = []
    monkeypatch.setattr(braver.train, "train_from_recipe", lambda *a, **k: calls.append(k))
    recipe_trainer("cache")(_recipe(), Path("trials"), [])
    (kwargs,) = calls
    assert (kwargs["device"], kwargs["data"], kwargs["console"], kwargs["progress"]) == (
        "cpu", None, None, False
    )  # fmt: skip


def test_the_transfer_trainers_defaults(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from braver.studies import transfer_training
    from braver.studies.tune import transfer_trainer

    calls = []
    monkeypatch.setattr(transfer_training, "train_setup", lambda *a, **k: calls.append(k))
    cache = tiny.write_tiny_cache(tmp_path / "liver")
    plan = SimpleNamespace(
        setups=[SimpleNamespace(baseline=False)], brain="net", brain_run="run", data=None,
        strategy="s", settings=SimpleNamespace(class_map="reinit"),
    )  # fmt: skip
    transfer_trainer(plan, cache.root)(_recipe(), tmp_path / "trials", [])
    (kwargs,) = calls
    assert (kwargs["device"], kwargs["console"], kwargs["progress"]) == ("cpu", None, False)


def test_a_study_runs_twenty_trials_unless_told_and_accepts_a_known_metric(
    tmp_path, space_file, monkeypatch
):
    from braver.studies import tune as tune_module

    monkeypatch.setattr(tune_module, "write_results", lambda *args, **kwargs: None)
    # Optuna collects garbage after each trial (0.4 s here, with torch loaded): not what is
    # tested, and 20 trials of it
    monkeypatch.setattr("gc.collect", lambda *args: 0)
    recipe = _recipe()
    tune(
        recipe, load_space(space_file, recipe), _Trainer(), folder=tmp_path, study_name="s",
        metric="whole_tumor_dice", valid_metrics=["whole_tumor_dice", "core_dice"],
        pruner="none", seed=0,
    )  # fmt: skip
    assert _states(_load(tmp_path, "s")) == ["COMPLETE"] * 20
    with pytest.raises(BraverError, match="unknown metric 'liver_dice'"):
        tune(
            recipe, load_space(space_file, recipe), _Trainer(), folder=tmp_path, study_name="t",
            metric="liver_dice", valid_metrics=["whole_tumor_dice"],
        )  # fmt: skip


def test_a_study_says_each_trial_and_keeps_its_table_while_it_runs(tmp_path, space_file):
    import io

    from rich.console import Console

    class Reading(_Trainer):  # what trials.csv holds when each trial starts
        def __call__(self, recipe, out, callbacks):
            table = out.parent / "trials.csv"
            self.tables.append(table.read_text().splitlines()[0] if table.exists() else None)
            return super().__call__(recipe, out, callbacks)

    recipe, folder = _recipe(), tmp_path / "study"
    trainer = Reading()
    trainer.tables = []
    console = Console(file=io.StringIO(), width=200)
    tune(
        recipe, load_space(space_file, recipe), trainer, folder=folder, study_name="s",
        metric="whole_tumor_dice", trials=2, seed=0, console=console,
    )  # fmt: skip
    # the table is written after each trial, with the metric's column
    assert trainer.tables[0] is None and "whole_tumor_dice" in trainer.tables[1].split(",")
    lines = console.file.getvalue().splitlines()
    assert lines[0].endswith("whole_tumor_dice (maximize), 0 of 2 trials finished")
    study = _load(folder, "s")
    for trial in study.trials:
        assert any(f"trial {trial.number} (" in line and f"({trial.number} of 2 finished)" in line
                   for line in lines)  # fmt: skip
        assert f"trial {trial.number} whole_tumor_dice {trial.value:.4f}" in lines
    # renamed, the same recipe resumes its study; another space does not
    from braver.studies.search_space import apply_params

    renamed = apply_params(recipe, {}, name="other")
    tune(
        renamed, load_space(space_file, recipe), trainer, folder=folder, study_name="s",
        metric="whole_tumor_dice", trials=3, seed=0,
    )  # fmt: skip
    assert _states(_load(folder, "s")) == ["COMPLETE"] * 3
    other_space = tmp_path / "other.toml"
    other_space.write_text('"optim.lr" = { low = 0.001, high = 0.05, log = true }\n')
    with pytest.raises(BraverError, match=r"other settings \(space: "):
        tune(
            recipe, load_space(other_space, recipe), trainer, folder=folder, study_name="s",
            metric="whole_tumor_dice", trials=4,
        )  # fmt: skip


def test_a_metric_that_rises_as_the_loss_falls_is_followed_by_the_negated_loss(
    tmp_path, space_file
):
    trainer = _Trainer()
    recipe = _recipe()
    tune(
        recipe, load_space(space_file, recipe), trainer, folder=tmp_path, study_name="s",
        metric="whole_tumor_sensitivity", trials=1,
    )  # fmt: skip
    ((_, _, (pruning,)),) = trainer.calls
    assert (pruning.monitor, pruning.sign) == ("valid_loss", -1.0)


def test_a_studys_storage_and_sampler(tmp_path):
    from braver.studies.tune import GRACE_SECONDS, HEARTBEAT_SECONDS, _open_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    # few trials: fewer random start-up trials than Optuna's 10 (a third of them, 2 to 10)
    for trials, startup in ((3, 2), (13, 4), (60, 10)):
        study, storage, created = _open_study(url, f"s{trials}", "maximize", "none", 0, trials)
        assert created and study.sampler._n_startup_trials == startup
        assert study.sampler._multivariate is True and study.sampler._constant_liar is True
        assert isinstance(study.pruner, optuna.pruners.NopPruner)
    # a process that died in a trial is noticed by the others after the grace period
    assert (storage.heartbeat_interval, storage.grace_period) == (HEARTBEAT_SECONDS, GRACE_SECONDS)
    study, _, created = _open_study(url, "s3", "maximize", "median", 0, 3)
    assert not created and isinstance(study.pruner, optuna.pruners.MedianPruner)


def test_a_study_that_another_process_is_creating_opens_once_its_schema_is_there(
    tmp_path, monkeypatch
):
    import sqlalchemy.exc

    from braver.studies import tune as tune_module

    calls = []

    class Racing(optuna.storages.RDBStorage):  # what a second process meets while the first
        def __init__(self, url, **kwargs):  # one writes the schema
            calls.append(url)
            if len(calls) == 1:  # the tables the other process has just created
                raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception())
            if len(calls) == 2:  # the version stamp it has just written
                raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {}, Exception())
            super().__init__(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", Racing)
    monkeypatch.setattr(tune_module.time, "sleep", lambda seconds: None)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _, created = tune_module._open_study(url, "s", "maximize", "none", 0, 3)
    assert created and len(calls) == 3
    # a storage that keeps failing is still refused in one sentence, after the last attempt
    failed = []

    def failing(url, **kwargs):
        failed.append(url)
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", failing)
    with pytest.raises(BraverError, match="cannot open the study storage"):
        tune_module._open_study(url, "t", "maximize", "none", 0, 3)
    assert len(failed) == tune_module.STORAGE_ATTEMPTS
    failed.clear()  # a server is not waited for again: its error is not a schema being written
    with pytest.raises(BraverError, match="cannot open the study storage"):
        tune_module._open_study("postgresql://braver@db.invalid/s", "t", "maximize", "none", 0, 3)
    assert len(failed) == 1


OPEN_TOGETHER = """
import sys, time
from pathlib import Path
from braver.studies.tune import _open_study

url, name, ready, go = sys.argv[1:]
Path(ready).touch()
while not Path(go).exists():  # both processes open the study within a millisecond
    time.sleep(0.001)
_open_study(url, name, "maximize", "none", 0, 3)
"""


@pytest.mark.slow
def test_processes_that_open_one_new_study_together_all_open_it(tmp_path):
    # a fresh SQLite file opened by two processes at once: both write its schema, and without
    # a second attempt one in four of them failed (table exists, UNIQUE alembic_version)
    script = tmp_path / "open.py"
    script.write_text(OPEN_TOGETHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for pair in range(3):
        url = f"sqlite:///{tmp_path / f'study{pair}.db'}"
        ready = [tmp_path / f"ready{pair}-{k}" for k in range(2)]
        go = tmp_path / f"go{pair}"
        processes = [
            subprocess.Popen(
                [sys.executable, str(script), url, "s", str(flag), str(go)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )  # fmt: skip
            for flag in ready
        ]
        deadline = time.time() + 120
        while not all(flag.exists() for flag in ready) and time.time() < deadline:
            time.sleep(0.05)
        go.touch()
        for process in processes:
            output, _ = process.communicate(timeout=120)
            assert process.returncode == 0, output
        assert optuna.load_study(study_name="s", storage=url).trials == []


def test_a_process_of_another_user_counts_as_alive(monkeypatch):
    from braver.studies import tune as tune_module

    def refused(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(tune_module.os, "kill", refused)
    assert tune_module._alive(os.getpid() + 1) is True


def test_a_pruned_trial_starts_no_later_fit():
    from fastai.callback.core import CancelFitException

    from braver.studies.tune import OptunaPruning

    pruning = OptunaPruning(None, "whole_tumor_dice")
    pruning.before_fit()  # not pruned: the fit goes on
    pruning.pruned = {"epoch": 0, "monitor": "whole_tumor_dice", "value": 0.1}
    with pytest.raises(CancelFitException):
        pruning.before_fit()

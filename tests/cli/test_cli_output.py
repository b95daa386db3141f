"""What the commands tell the user: the sentence for bad input (naming the option), the command
named when no finished run is found, `braver predict`'s per-case progress, timing and table
title. The library calls are replaced by recorders, so each test takes about a second."""

import csv
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from braver.cli.main import app

runner = CliRunner()
WIDE = {"COLUMNS": "250"}  # one error sentence a line


def _said(result) -> str:
    """The output as one line of words (rich boxes and wrapping removed)."""
    return " ".join(result.output.replace("│", " ").split())


def test_evaluate_names_the_options_of_a_bad_combination(tmp_path):
    result = runner.invoke(app, ["evaluate", "--pred", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2
    assert "Invalid value for --pred/--truth: --pred and --truth go together" in _said(result)
    result = runner.invoke(app, ["evaluate", "--truth", str(tmp_path)], env=WIDE)
    assert result.exit_code == 2 and "--pred and --truth go together" in _said(result)
    both = ["--pred", str(tmp_path), "--truth", str(tmp_path)]
    for args in (["evaluate", str(tmp_path), *both], ["evaluate", "--data", str(tmp_path), *both]):
        result = runner.invoke(app, args, env=WIDE)
        assert result.exit_code == 2
        assert (
            "Invalid value for --pred: score existing segmentations (--pred/--truth) "
            "or a run (RUN --data), not both"
        ) in _said(result)


def test_predict_without_inputs_says_what_is_missing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    result = runner.invoke(app, ["predict", str(run), "--out", str(tmp_path / "o")], env=WIDE)
    assert result.exit_code == 2
    assert "Invalid value for INPUT: give at least one INPUT after RUN" in _said(result)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["evaluate"],
        ["predict", "case", "--out", "o"],
        ["prune", "--list"],
    ],
    ids=["evaluate", "predict", "prune"],
)
def test_without_a_finished_run_the_command_is_named(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    result = runner.invoke(app, [*args, "--runs", "runs"], env=WIDE)
    assert result.exit_code == 2
    assert (
        "runs: no finished brain run; run 'braver train brain' first, "
        f"or pass RUN to 'braver {args[0]}'."
    ) in _said(result)


@pytest.fixture
def predicting(tmp_path, monkeypatch):
    """A run folder; discover_inputs, load_model and predict_case as recorders; a clock that
    advances 1.234 s per case; the progress over cases recorded."""
    import braver.cli.predict
    import braver.data.formats
    import braver.inference
    import braver.runs
    from braver.data.labels import BRATS_2021
    from braver.runs import RunInfo, save_run_info

    run = tmp_path / "runs" / "my-run"
    run.mkdir(parents=True)
    info = RunInfo(kind="brain", model={}, label_scheme=BRATS_2021.to_json(), channels=[])
    save_run_info(run, info)
    (run / "model.safetensors").write_bytes(b"")
    calls = {"progress": [], "steps": [], "done": 0, "predicted": []}

    def discover_inputs(inputs, format):
        return [SimpleNamespace(case_id="c1"), SimpleNamespace(case_id="c2")]

    def predict_case(model, given, case, **kwargs):
        calls["predicted"].append((case.case_id, kwargs["progress"]))
        return SimpleNamespace(
            segmentation=np.zeros((2, 3), np.uint8), written=[kwargs["out_dir"] / "seg.nii.gz"]
        )

    @contextmanager
    def case_progress(total, description):
        calls["progress"].append((total, description))

        class Tracker:
            def step(self, case_id):
                calls["steps"].append(case_id)
                return f"callback of {case_id}"

            def done(self):
                calls["done"] += 1

        yield Tracker()

    ticks = iter([10.0, 11.234, 20.0, 22.5])
    clock = SimpleNamespace(perf_counter=lambda: next(ticks))
    monkeypatch.setattr(braver.data.formats, "discover_inputs", discover_inputs)
    monkeypatch.setattr(braver.runs, "load_model", lambda folder, device: ("MODEL", info))
    monkeypatch.setattr(braver.inference, "predict_case", predict_case)
    monkeypatch.setattr(braver.cli.predict, "case_progress", case_progress)
    monkeypatch.setattr(braver.cli.predict, "time", clock)
    return run, calls


def test_predict_shows_each_case_and_records_its_seconds(predicting, tmp_path):
    run, calls = predicting
    out = tmp_path / "out"
    args = ["predict", str(run), "a", "b", "--out", str(out), "--device", "cpu"]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    # one bar over the 2 cases, its slice bar named after the case being predicted
    assert calls["progress"] == [(2, "cases")]
    assert calls["steps"] == ["c1", "c2"] and calls["done"] == 2
    assert calls["predicted"] == [("c1", "callback of c1"), ("c2", "callback of c2")]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [(row["case"], row["seconds"]) for row in rows] == [("c1", "1.23"), ("c2", "2.5")]
    # the table is titled with the run it predicted with (the latest, when RUN is omitted)
    assert "Predictions (my-run)" in _said(result)
    assert f"wrote 2 segmentation(s) to {out}" in _said(result)


def test_the_layer_list_is_titled_with_the_run_and_the_network(tmp_path):
    from seeded import randomised

    from braver.runs import RunInfo, save_run_info, save_weights

    folder = tmp_path / "my-run"
    folder.mkdir()
    model = randomised("twopath", 0, dropout=0.0)
    save_weights(folder, model)
    save_run_info(folder, RunInfo(kind="brain", model=model.config, label_scheme={}, channels=[]))
    result = runner.invoke(app, ["prune", str(folder), "--list", "--device", "cpu"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert result.output.lstrip().startswith("my-run: twopath weight layers")


def test_a_path_is_not_a_run_without_its_run_file(tmp_path):
    from braver.cli.predict import split_run

    run, case = tmp_path / "run", tmp_path / "case"
    run.mkdir()
    case.mkdir()
    assert split_run([run, case]) == (None, [run, case])
    (run / "run.json").write_text("{}")
    assert split_run([run, case]) == (run, [case])
    assert split_run([run]) == (run, [])
    assert split_run([]) == (None, [])
    assert split_run([Path("nope")]) == (None, [Path("nope")])


def test_case_progress_counts_cases_and_shows_the_slices_of_the_current_one(monkeypatch):
    import braver.cli.predict
    from braver.cli.predict import case_progress

    calls = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            calls.append("closed")

        def add_task(self, description, total):
            calls.append(("task", description, total))
            return f"task{len(calls)}"

        def update(self, task, **fields):
            calls.append((task, fields))

        def advance(self, task):
            calls.append(("advance", task))

    monkeypatch.setattr(braver.cli.predict, "progress_bar", Bar)
    with case_progress(3, "cases") as tracker:
        assert calls == [("task", "cases", 3), ("task", "  slices", None)]
        callback = tracker.step("case-7")
        assert calls[-1] == ("task2", {"description": "  case-7", "completed": 0, "total": None})
        callback(5, 40)
        assert calls[-1] == ("task2", {"completed": 5, "total": 40})
        tracker.done()
        assert calls[-1] == ("advance", "task1")
    assert calls[-1] == "closed"

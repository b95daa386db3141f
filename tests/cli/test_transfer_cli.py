"""`braver transfer liver` end to end: a tiny brain run + a tiny liver cache."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from braver.cli.main import app

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
TESTS = Path(__file__).parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


study = _load(TESTS / "studies" / "test_transfer_study.py", "braver_test_transfer_study")
evaluate = _load(TESTS / "cli" / "test_evaluate.py", "braver_test_evaluate")


def _sets(values):
    return [arg for value in values for arg in ("--set", value)]


@pytest.fixture
def liver_phantoms(monkeypatch, tmp_path):
    """The liver phantom cache replaced by a tiny one (the real one is 16 96x96x40 cases)."""
    cache = study.write_tiny_liver_cache(tmp_path)
    calls = []

    def fake(kind="brain", progress=True, **options):
        calls.append(kind)
        return tmp_path / "liver", cache

    monkeypatch.setattr("braver.data.phantoms.default_phantom_cache", fake)
    return calls


def test_without_a_brain_run_says_what_to_run(tmp_path, monkeypatch, liver_phantoms):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["transfer", "liver", "--freeze", "local"])
    assert result.exit_code == 2
    assert "no finished brain run; run 'braver train brain' first, or pass --from RUN" in (
        result.output
    )
    result = runner.invoke(app, ["transfer", "liver", "--from", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "is not a braver run folder" in result.output
    assert not liver_phantoms


def test_bad_group_and_strategy_fail_before_any_training(tmp_path, monkeypatch, liver_phantoms):
    evaluate.make_run(tmp_path / "runs" / "brain-1")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["transfer", "liver", "--freeze", "local", "--freeze", "frist"])
    assert result.exit_code == 2
    assert "--freeze 'frist': not a group or layer of this twopath network" in result.output
    assert "groups: local, global, output" in result.output
    result = runner.invoke(app, ["transfer", "liver", "--freeze", "local", "--strategy", "mean"])
    assert result.exit_code == 2 and "unknown channel strategy 'mean'" in result.output
    assert "Traceback" not in result.output
    assert not liver_phantoms and sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "brain-1"
    ]


@pytest.mark.slow
def test_transfer_liver_writes_runs_and_the_comparison(tmp_path, monkeypatch, liver_phantoms):
    evaluate.make_run(tmp_path / "runs" / "brain-1")
    monkeypatch.chdir(tmp_path)
    args = ["transfer", "liver", "--freeze", "local", "--freeze", "both", "--baseline"]
    result = runner.invoke(app, [*args, *_sets(study.TINY)])
    assert result.exit_code == 0, result.output
    assert "Starting from the latest brain run: runs/brain-1" in result.output
    assert liver_phantoms == ["liver"]
    (folder,) = Path("runs").glob("transfer-liver-*")
    assert {p.name for p in folder.iterdir()} == {"transfer.csv", "transfer.json", "transfer.png"}
    with open(folder / "transfer.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["setup"] for r in rows] == ["freeze local", "freeze both", "baseline (from scratch)"]
    assert [r["freeze"] for r in rows] == ["local", "local, global", "none"]
    trained = [int(r["trainable_parameters"]) for r in rows]
    assert trained[1] < trained[0] < trained[2]
    for row in rows:
        for key in ("train_accuracy", "valid_accuracy", "liver_dice", "tumor_dice"):
            assert 0.0 <= float(row[key]) <= 1.0, key
        assert float(row["seconds_per_epoch"]) > 0 and float(row["cpu_seconds_per_epoch"]) > 0
    report = json.loads((folder / "transfer.json").read_text())
    assert report["source_run"] == "runs/brain-1" and report["strategy"] == "sum"
    assert "Transfer brain-1 → liver (sum channels)" in result.output
    # every setup is an ordinary liver run folder
    for row in rows:
        info = json.loads((Path(row["run"]) / "run.json").read_text())
        assert info["kind"] == "liver" and info["model"]["name"] == "twopath"
        assert info["extra"]["transfer"]["setup"] == row["setup"]
    baseline = json.loads((Path(rows[2]["run"]) / "run.json").read_text())["extra"]["transfer"]
    assert baseline["baseline"] and baseline["source_run"] is None
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", rows[0]["run"], "--out", str(out), "--no-overlays"])
    assert result.exit_code == 0, result.output
    assert "liver_dice" in json.loads((out / "metrics.json").read_text())["summary"]


@pytest.mark.slow
def test_transfer_on_an_msd_liver_folder_prepares_it_with_the_recipe_window(tmp_path):
    layouts = _load(TESTS / "data" / "fixture_layouts.py", "braver_test_fixture_layouts")
    task = layouts.write_msd_liver(tmp_path / "msd", cases=2)
    brain = evaluate.make_run(tmp_path / "brain")
    out = tmp_path / "runs"
    args = ["transfer", "liver", "--from", str(brain), "--data", str(task), "--out", str(out)]
    window = [
        "--freeze",
        "both",
        "--set",
        "prepare.hu_window=[-100, 200]",
        "--set",
        "data.mode=tile",
    ]
    result = runner.invoke(app, [*args, *window, *_sets(study.TINY)])
    assert result.exit_code == 0, result.output
    (run,) = out.glob("liver-freeze-both-*")  # the base recipe: no phantom profile
    info = json.loads((run / "run.json").read_text())
    assert info["data"] == str(task) and info["prepare"]["hu_window"] == [-100.0, 200.0]
    assert Path(info["cache"]).name.startswith("Task03_Liver-")
    assert info["channels"] == ["ct"] and info["extra"]["transfer"]["freeze"] == ["local", "global"]

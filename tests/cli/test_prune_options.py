"""`braver prune`'s option parsing (two-word --switch / --copy) and every option reaching
``run_surgery_study`` (replaced by a recorder: nothing is evaluated, about a second)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from braver.cli.main import app
from braver.cli.prune import join_pairs

runner = CliRunner()
WIDE = {"COLUMNS": "250"}


def test_join_pairs_takes_two_words_after_each_pair_option():
    assert join_pairs([]) == []
    assert join_pairs(["--copy", "a", "b", "c"]) == ["--copy", "a b", "c"]  # a third is RUN
    assert join_pairs(["--copy=a", "b", "--switch", "c", "d"]) == [
        "--copy", "a b", "--switch", "c d",
    ]  # fmt: skip
    assert join_pairs(["--switch", "a"]) == ["--switch", "a"]  # left for the check
    assert join_pairs(["--switch"]) == ["--switch", ""]
    assert join_pairs(["--switch", "-x"]) == ["--switch", "", "-x"]
    # other options and their values are kept; after "--" nothing is joined
    assert join_pairs(["--keep", "a", "b"]) == ["--keep", "a", "b"]
    assert join_pairs(["--keep=a", "--", "--switch", "a", "b"]) == [
        "--keep=a", "--", "--switch", "a", "b",
    ]  # fmt: skip
    assert join_pairs(["r", "--", "x"]) == ["r", "--", "x"]


@pytest.fixture
def surgery(monkeypatch, tmp_path):
    """run_surgery_study as a recorder returning a study with a one-line table."""
    import braver.studies.surgery

    calls = []

    def run_surgery_study(run, **kwargs):
        calls.append((run, kwargs))
        return SimpleNamespace(table=lambda: "THE TABLE", folder=tmp_path / "study")

    monkeypatch.setattr(braver.studies.surgery, "run_surgery_study", run_surgery_study)
    return calls


def test_every_option_reaches_the_surgery_study(surgery, tmp_path):
    from braver.studies.surgery import ACCURACY_MEANING

    run = tmp_path / "run"
    args = [
        "prune", str(run), "--data", "DATA", "--identity", "conv2", "--identity", "local.conv1",
        "--keep", "local", "--switch", "a", "b", "--copy", "c", "d", "--copy=e", "f",
        "--out", "OUT", "--cases", "3", "--device", "cpu", "--batch-size", "4",
        "--recipe", "mine.toml", "--format", "brats", "--runs", "RUNS",
    ]  # fmt: skip
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    ((given, kwargs),) = surgery
    assert given == run
    assert callable(kwargs.pop("progress"))
    assert kwargs == {
        "identity": ["conv2", "local.conv1"], "keep": ["local"], "switch": [("a", "b")],
        "copy": [("c", "d"), ("e", "f")], "recipe": Path("mine.toml"), "data": Path("DATA"),
        "format": "brats", "cases": 3, "device": "cpu", "batch_size": 4, "out": Path("OUT"),
        "runs": Path("RUNS"),
    }  # fmt: skip
    lines = result.output.splitlines()
    assert lines[0] == "THE TABLE"
    assert " ".join(lines[1].split()) == f"* {ACCURACY_MEANING}"
    assert f"wrote prune.csv, prune.json and prune.png to {tmp_path / 'study'}" in result.output


def test_the_defaults_reach_the_surgery_study(surgery):
    result = runner.invoke(app, ["prune"], env=WIDE)
    assert result.exit_code == 0, result.output
    ((given, kwargs),) = surgery
    assert given is None
    del kwargs["progress"]
    assert kwargs == {
        "identity": [], "keep": [], "switch": [], "copy": [], "recipe": None, "data": None,
        "format": None, "cases": None, "device": "auto", "batch_size": None, "out": None,
        "runs": Path("runs"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, said",
    [
        (["--switch", "a"], "Invalid value for --switch: --switch takes two layer names "
         "(--switch A B), got 'a'"),
        (["--copy", "a"], "Invalid value for --copy: --copy takes two layer names "
         "(--copy SRC DST), got 'a'"),
        (["--copy", "a", "--list"], "--copy takes two layer names (--copy SRC DST), got 'a'"),
    ],
)  # fmt: skip
def test_a_pair_without_its_second_name_is_one_sentence(surgery, args, said):
    result = runner.invoke(app, ["prune", *args], env=WIDE)
    assert result.exit_code == 2
    assert said in " ".join(result.output.replace("│", " ").split())
    assert surgery == []


def test_the_progress_callback_drives_a_bar(surgery, monkeypatch):
    """The study's progress(description, done, total) reaches the bar's one task."""
    import braver.cli.prune

    updates = []

    class Bar:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            updates.append("closed")

        def add_task(self, description, total):
            updates.append(("task", description, total))
            return 7

        def update(self, task, **fields):
            updates.append((task, fields))

    monkeypatch.setattr(braver.cli.prune, "progress_bar", Bar)
    result = runner.invoke(app, ["prune"], env=WIDE)
    assert result.exit_code == 0, result.output
    progress = surgery[0][1]["progress"]
    assert updates == [("task", "variants × cases", None), "closed"]
    progress("intact", 1, 4)
    assert updates[-1] == (7, {"description": "intact", "completed": 1, "total": 4})

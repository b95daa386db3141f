"""The pieces every command shares (braver.cli._common) and the top-level options: the error
boundary (one red sentence, exit code 2; --debug shows the traceback; Ctrl-C exits 130), the
progress bar (drawn only on a terminal), --postprocess/--min-component."""

from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from braver.cli import _common
from braver.cli.main import app
from braver.errors import BraverError

runner = CliRunner()


@pytest.fixture
def failing(monkeypatch):
    """`braver train` raising what the test sets in ``raised[0]`` at once."""
    import braver.data.sources

    raised = [BraverError("is broken", "the/file", "mend it")]

    def training_cache(*args, **kwargs):
        raise raised[0]

    monkeypatch.setattr(braver.data.sources, "training_cache", training_cache)
    return raised


def test_a_braver_error_is_one_red_sentence_and_exit_code_2(failing, monkeypatch):
    printed = []
    monkeypatch.setattr(
        _common.err_console, "print", lambda *args, **kwargs: printed.append((args, kwargs))
    )
    result = runner.invoke(app, ["train", "brain"])
    assert result.exit_code == 2 and not isinstance(result.exception, BraverError)
    assert printed == [
        (
            ("[bold red]error:[/] the/file: is broken; mend it.",),
            {"highlight": False, "soft_wrap": True},
        )
    ]


def test_brackets_in_the_sentence_are_printed_as_they_are(failing):
    failing[0] = BraverError("needs a [transfer] table", "runs/[x]/recipe.toml", "add [transfer]")
    result = runner.invoke(app, ["train", "brain"], env={"COLUMNS": "250"})
    assert result.exit_code == 2
    assert result.output == (
        "error: runs/[x]/recipe.toml: needs a [transfer] table; add [transfer].\n"
    )


def test_debug_shows_the_error_itself(failing):
    result = runner.invoke(app, ["--debug", "train", "brain"])
    assert isinstance(result.exception, BraverError) and result.exit_code == 1
    # the option holds for its own invocation only
    result = runner.invoke(app, ["train", "brain"])
    assert result.exit_code == 2 and "the/file: is broken; mend it." in result.output


def test_ctrl_c_is_one_line_and_exit_code_130(failing, monkeypatch):
    printed = []
    monkeypatch.setattr(_common.err_console, "print", lambda *args: printed.append(args))
    failing[0] = KeyboardInterrupt()
    result = runner.invoke(app, ["train", "brain"])
    assert result.exit_code == 130 and printed == [("[yellow]interrupted[/]",)]


def test_other_errors_are_not_caught(failing):
    failing[0] = ValueError("a bug")
    result = runner.invoke(app, ["train", "brain"])
    assert isinstance(result.exception, ValueError) and result.exit_code == 1


def test_version_prints_and_exits():
    from braver import __version__

    result = runner.invoke(app, ["--version", "train", "brain"])
    assert result.exit_code == 0 and result.output == f"braver {__version__}\n"


def test_the_bar_is_drawn_only_on_a_terminal(monkeypatch):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    monkeypatch.setattr(
        _common, "sys", SimpleNamespace(stdout=SimpleNamespace(isatty=lambda: False))
    )
    assert _common.is_interactive() is False
    bar = _common.progress_bar()
    assert bar.disable is True and bar.console is _common.console
    assert bar.live.transient is True  # cleared when done
    assert [type(column) for column in bar.columns] == [
        TextColumn, BarColumn, MofNCompleteColumn, TimeElapsedColumn, TimeRemainingColumn,
    ]  # fmt: skip
    assert bar.columns[0].text_format == "{task.description}"
    assert _common.progress_bar(transient=False).live.transient is False
    monkeypatch.setattr(
        _common, "sys", SimpleNamespace(stdout=SimpleNamespace(isatty=lambda: True))
    )
    assert _common.is_interactive() is True
    assert _common.progress_bar().disable is False


def test_postprocess_choice():
    from braver.postprocess import NONE

    assert _common.postprocess_choice(True, None) is None  # the run's own options
    assert _common.postprocess_choice(True, 5) == {"min_component_voxels": 5}
    assert _common.postprocess_choice(True, 0) == {"min_component_voxels": 0}
    assert _common.postprocess_choice(False, None) == NONE
    assert _common.postprocess_choice(False, 9) == NONE.replace(min_component_voxels=9)
    assert _common.postprocess_choice(False, 9) != NONE

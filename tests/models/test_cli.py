"""`braver models list` and `braver models summary`."""

from __future__ import annotations

from typer.testing import CliRunner

from braver.cli.main import app
from braver.models import create_model
from braver.runs import RunInfo, save_run_info

runner = CliRunner()


def test_list_shows_every_model_and_the_paper_counts():
    result = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in (
        "twopath",
        "InputCascadeCNN",
        "local_cascade",
        "mf_cascade",
        "651,488",
        "802,368",
        "654,368",
        "662,513",
        "33×33 + 65×65",
    ):
        assert text in result.output


def test_summary_shows_layers_groups_and_receptive_field():
    result = runner.invoke(
        app,
        ["models", "summary", "local_cascade", "--in-channels", "1", "--num-classes", "3"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    for text in (
        "second.local.conv2",
        "first.global.conv1",
        "67 → 64 (×2)",
        "receptive field 56×56",
        "second.global",
        "1 channel, 3 classes",
    ):
        assert text in result.output


def test_summary_of_a_run_folder(tmp_path):
    model = create_model("mf_cascade", num_classes=3, class_frequencies=[0.8, 0.1, 0.1])
    save_run_info(
        tmp_path, RunInfo(kind="brain", model=model.config, label_scheme={}, channels=["ct"])
    )
    result = runner.invoke(app, ["models", "summary", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "mf_cascade (run" in result.output and "3 classes" in result.output


def test_unknown_model_is_one_clear_error():
    result = runner.invoke(app, ["models", "summary", "unet"])
    assert result.exit_code == 2
    assert "unknown model 'unet'" in result.output and "twopath" in result.output
    assert "Traceback" not in result.output

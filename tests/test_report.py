import csv
import io
import json

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from braver.data.labels import BRATS_2021
from braver.report import (
    csv_text,
    format_value,
    most_tumour_slice,
    plot_bars,
    plot_learning_curves,
    plot_overlay,
    write_table,
)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=160)


def test_write_table_prints_and_writes_csv_and_json(tmp_path):
    rows = [
        {"case": "a", "whole_tumor_dice": 0.91234567, "whole_tumor_hd95_mm": 373.13},
        {"case": "b", "whole_tumor_dice": 0.5, "voxels": 12345},  # a column only b has
    ]
    console = quiet_console()
    csv_path, json_path = write_table(rows, tmp_path / "out", "metrics", "Scores", console=console)
    text = console.file.getvalue()
    assert "Scores" in text and "0.9123" in text and "373.13" in text and "12,345" in text
    with open(csv_path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["case"] for r in read] == ["a", "b"]
    assert float(read[0]["whole_tumor_dice"]) == 0.91234567  # full precision on disk
    assert read[0]["voxels"] == "" and read[1]["whole_tumor_hd95_mm"] == ""
    assert json.loads(json_path.read_text()) == rows
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.csv", "metrics.json"]


def test_write_table_with_summary_rows_and_custom_json(tmp_path):
    rows = [{"case": "a", "x": 1.0}, {"case": "b", "x": 0.0}]
    summary = [{"case": "mean", "x": 0.5}]
    console = quiet_console()
    write_table(rows, tmp_path, "t", summary_rows=summary, console=console)
    assert json.loads((tmp_path / "t.json").read_text()) == {"rows": rows, "summary": summary}
    assert (tmp_path / "t.csv").read_text().splitlines()[-1] == "mean,0.5"
    write_table(rows, tmp_path, "u", json_data={"cases": rows}, console=console)
    assert json.loads((tmp_path / "u.json").read_text()) == {"cases": rows}


def test_format_value():
    assert format_value(0.123456) == "0.1235"
    assert format_value(373.1299) == "373.13"
    assert format_value(None) == "—"
    assert format_value(np.float32(1.5)) == "1.5000"
    assert format_value(3) == "3"
    assert format_value(True) == "yes"
    assert csv_text([{"a": np.float64(0.25), "b": [1, 2]}]) == 'a,b\n0.25,"[1, 2]"\n'


def test_most_tumour_slice_prefers_truth_then_prediction():
    truth = np.zeros((5, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    pred[1, :2, :2] = 1
    assert most_tumour_slice(truth, pred) == 1  # empty truth: the prediction decides
    truth[3, :, :] = 2
    truth[2, 0, 0] = 1
    assert most_tumour_slice(truth, pred) == 3
    assert most_tumour_slice(np.zeros_like(truth), np.zeros_like(truth)) == 2  # middle
    # liver: class 1 (liver) fills slice 3, the tumour (2) is on slice 0
    liver = np.zeros((5, 4, 4), np.uint8)
    liver[3] = 1
    liver[0, 0, 0] = 2
    assert most_tumour_slice(liver, classes=[2]) == 0
    assert most_tumour_slice(np.where(liver == 2, 0, liver), classes=[2]) == 3  # no tumour


def test_plot_overlay_writes_a_png(tmp_path, rng):
    image = rng.standard_normal((6, 40, 30)).astype(np.float32)
    truth = np.zeros((6, 40, 30), np.uint8)
    truth[4, 10:20, 10:20] = 2
    truth[4, 12:15, 12:15] = 3
    pred = np.roll(truth, 2, axis=2)
    out = plot_overlay(
        image,
        truth,
        pred,
        tmp_path / "case.png",
        scheme=BRATS_2021,
        title="case",
        spacing_zyx=(1, 1, 1),
    )
    picture = imread(out)
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]  # three panels side by side
    # the truth's edema colour (green) appears somewhere in the picture
    rgb = picture[..., :3]
    assert ((rgb[..., 1] > 0.5) & (rgb[..., 0] < 0.4) & (rgb[..., 2] < 0.4)).any()
    # without truth: two panels, narrower
    out2 = plot_overlay(image, None, pred, tmp_path / "pred_only.png")
    assert imread(out2).shape[1] < picture.shape[1]


def test_learning_curves_from_a_fastai_history(tmp_path):
    history = tmp_path / "run" / "history.csv"
    history.parent.mkdir()
    history.write_text(
        "stage,epoch,train_loss,valid_loss,whole_tumor_dice,patch_accuracy,lr,time\n"
        "stage1,0,1.2,1.1,0.20,0.5,0.01,00:03\n"
        "stage1,1,0.9,#na#,0.35,0.6,0.009,00:03\n"
        "stage2,0,0.7,0.8,0.50,0.7,0.01,00:02\n"
    )
    out = plot_learning_curves(history, tmp_path / "curves.png")
    assert imread(out).shape[1] > 800  # loss and metric panels
    losses_only = tmp_path / "losses.csv"
    losses_only.write_text(
        "epoch,train_loss,valid_loss,lr,seconds\n0,1.0,1.1,0.1,3\n1,0.5,0.6,0.1,3\n"
    )
    assert imread(plot_learning_curves(losses_only, tmp_path / "l.png")).shape[1] < 800


def test_plot_bars(tmp_path):
    rows = [
        {"variant": "intact", "whole_tumor_dice": 0.8, "tumor_core_dice": 0.6},
        {"variant": "identity conv2", "whole_tumor_dice": 0.4, "tumor_core_dice": 0.1},
    ]
    out = plot_bars(rows, ["whole_tumor_dice", "tumor_core_dice"], tmp_path / "bars.png", title="t")
    assert imread(out).ndim == 3
    with pytest.raises(ValueError):
        plot_bars([], ["x"], tmp_path / "none.png")


def _fake_runs():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "dashboard" / "fake_runs.py"
    spec = importlib.util.spec_from_file_location("fake_runs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _embedded(html: str) -> dict:
    import re

    found = re.search(
        r'<script type="application/json" id="braver-data">(.*?)</script>', html, re.S
    )
    assert found, "no embedded data"

    def no_nan(name):
        raise AssertionError(f"{name} in the embedded JSON")

    return json.loads(found.group(1), parse_constant=no_nan)


def test_report_html_is_one_file_with_curves_metrics_and_overlays(tmp_path):
    from braver.report import write_report_html

    fake = _fake_runs()
    folder = fake.write_run(tmp_path, "brain-1")
    (folder / "run.json").write_text(
        (folder / "run.json").read_text().replace('"case01"', '"case01</script>"')
    )  # a hostile name must not end the script block
    out = write_report_html(folder)
    assert out == folder / "report.html"
    html = out.read_text()
    assert "<script src=" not in html and '<link rel="stylesheet"' not in html
    assert "function lineChart" in html and ".chart-svg" in html  # script and style inlined
    data = _embedded(html)
    assert [row["valid_loss"] for row in data["run"]["history"]] == [1.0, 0.5, 0.3333, 0.25]
    assert data["run"]["metrics"]["patch"]["valid_loss"] is None  # NaN in metrics.json
    assert len(data["run"]["metrics"]["cases"]) == 3
    cases = data["run"]["previews"]["cases"]
    assert [c["channels"] for c in cases] == [["flair"], ["flair"]]  # the display channel only
    assert len(data["images"]) == 2 * 3 * 3  # 2 cases × 3 slices × (flair, truth, prediction)
    key = "brain-1/previews/case03/pred_z5.png"
    png = (folder / "previews" / "case03" / "pred_z5.png").read_bytes()
    import base64

    assert base64.b64decode(data["images"][key].split(",", 1)[1]) == png
    # the embedded JSON reads back whole: its "</" did not close the script block
    assert "case01</script>" in data["run"]["info"]["validation_cases"]


def test_report_html_of_a_run_without_previews_or_metrics(tmp_path):
    from braver.report import write_report_html

    fake = _fake_runs()
    folder = fake.write_run(tmp_path, "brain-2", status="running", previews=False)
    data = _embedded(write_report_html(folder, tmp_path / "elsewhere.html").read_text())
    assert data["run"]["previews"] is None and data["run"]["metrics"] is None
    assert data["images"] == {} and not (folder / "report.html").exists()

"""The cells of `braver data inspect`'s and `braver models`' tables, and `print_notes`."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console
from typer.testing import CliRunner

import braver.cli.data as data_cli
import braver.data.formats as formats
import braver.preprocess as preprocess
from braver.cli.main import app
from braver.errors import BraverError
from braver.models import create_model
from braver.runs import RunInfo, save_run_info

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [*map(str, args)], env={"COLUMNS": "300"})


def rows(output):
    """The body rows of every rich table in the output, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def headers(output):
    """The column titles of every rich table in the output, one list per table."""
    return [
        [cell.strip() for cell in line.split("┃")[1:-1]]
        for line in output.splitlines()
        if line.startswith("┃")
    ]


def case(case_id, channels=("t1", "t2")):
    return SimpleNamespace(case_id=case_id, channels=channels)


DESCRIPTIONS = {
    "A": {
        "case_id": "A",
        "shape": [20, 21, 16],
        "spacing": [0.5, 1.25, 3.0],
        "axcodes": "RAS",
        "dtype": "float32",
        "ranges": [[-1.5, 2.25], [0.0, 1200.0]],
        "label_counts": {0: 10, 1: 3, 4: 2},
    },
    "B": {
        "case_id": "B",
        "shape": [8, 9, 10],
        "spacing": [1.0, 1.0, 2.5],
        "axcodes": "LPS",
        "dtype": "int16",
        "ranges": [[3.0, 4.0], [5.0, 6.5]],
        "label_counts": None,
    },
}


class Dataset(SimpleNamespace):
    def __len__(self):
        return len(self.cases)


@pytest.fixture
def fake_dataset(monkeypatch, tmp_path):
    """`inspect` over three stand-in cases (C cannot be read), with its library calls recorded."""
    calls = {"describe": [], "balance": [], "montage": []}
    dataset = Dataset(
        root=tmp_path,
        format="brats2021",
        cases=[case("A"), case("B"), case("C")],
        notes=[],
        scheme="the scheme",
    )

    def describe_case(c):
        calls["describe"].append(c.case_id)
        if c.case_id == "C":
            raise BraverError("C.nii.gz is corrupt or truncated")
        return DESCRIPTIONS[c.case_id]

    def class_imbalance(descriptions, scheme):
        calls["balance"].append(([d["case_id"] for d in descriptions], scheme))
        return [
            {"value": 0, "class": "background", "voxels": 12577, "fraction": 0.982578125,
             "fraction_of_labelled": None, "background_ratio": None},
            {"value": 4, "class": "enhancing", "voxels": 1234, "fraction": 0.00296875,
             "fraction_of_labelled": 0.17040358744394618, "background_ratio": 330.97},
        ]  # fmt: skip

    monkeypatch.setattr(formats, "discover", lambda root, fmt: dataset)
    monkeypatch.setattr(preprocess, "describe_case", describe_case)
    monkeypatch.setattr(preprocess, "class_imbalance", class_imbalance)
    monkeypatch.setattr(
        preprocess, "save_montage", lambda cases, png: calls["montage"].append((cases, png))
    )
    return dataset, calls


def test_inspect_rows_hold_each_case_values(fake_dataset, tmp_path):
    dataset, calls = fake_dataset
    result = invoke("data", "inspect", tmp_path, "--png", tmp_path / "m.png")
    assert result.exit_code == 2, result.output
    assert f"{tmp_path} — brats2021, 3 case(s)" in result.output
    assert headers(result.output) == [
        ["case", "shape", "spacing mm", "orient", "dtype", "intensity range", "labels"],
        ["value", "class", "voxels", "of all", "of tumour", "background : class"],
    ]
    table = rows(result.output)
    assert table[0] == ["A", "20×21×16", "0.5×1.25×3", "RAS", "float32",
                        "t1 -1.5..2.25  t2 0..1200", "0:10 1:3 4:2"]  # fmt: skip
    assert table[1] == ["B", "8×9×10", "1×1×2.5", "LPS", "int16", "t1 3..4  t2 5..6.5", "none"]
    assert table[2] == ["C", "", "", "", "", "", "C.nii.gz is corrupt or truncated."]
    # the class balance over the readable cases, in the dataset's scheme
    assert calls["balance"] == [(["A", "B"], "the scheme")]
    titles = [line.strip() for line in result.output.splitlines()]
    assert "class balance over labelled cases" in titles
    assert table[3] == ["0", "background", "12,577", "98.258%", "", ""]
    assert table[4] == ["4", "enhancing", "1,234", "0.297%", "17.0%", "331 : 1"]
    # the montage of the readable cases only, then one sentence for the unreadable one
    assert calls["montage"] == [([dataset.cases[0], dataset.cases[1]], tmp_path / "m.png")]
    text = " ".join(result.output.split())
    assert "error: 1 of 3 case(s) could not be read; the first: C.nii.gz is corrupt" in text
    assert "Traceback" not in result.output


def test_inspect_limit_and_no_labels(fake_dataset, tmp_path):
    dataset, calls = fake_dataset
    result = invoke("data", "inspect", tmp_path, "--limit", 2, "--png", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    assert calls["describe"] == ["A", "B"] and "3 case(s)" in result.output
    assert [row[0] for row in rows(result.output)][:2] == ["A", "B"]
    assert calls["montage"] == [([dataset.cases[0], dataset.cases[1]], tmp_path / "m.png")]

    # no labelled case: no class balance table
    calls["balance"].clear()
    dataset.cases = [case("B")]
    result = invoke("data", "inspect", tmp_path)
    assert result.exit_code == 0, result.output
    assert calls["balance"] == [] and "class balance" not in result.output
    assert calls["montage"][1:] == []  # no --png: no montage


def test_inspect_with_no_readable_case_writes_no_montage(fake_dataset, tmp_path):
    dataset, calls = fake_dataset
    dataset.cases = [case("C")]
    result = invoke("data", "inspect", tmp_path, "--png", tmp_path / "m.png")
    assert result.exit_code == 2
    assert calls["montage"] == [] and calls["balance"] == []
    assert "1 of 1 case(s) could not be read" in " ".join(result.output.split())


def test_inspect_prints_the_layout_notes(fake_dataset, tmp_path):
    dataset, _ = fake_dataset
    dataset.cases = [case("B")]
    dataset.notes = [f"n{i}" for i in range(12)]
    result = invoke("data", "inspect", tmp_path)
    assert result.exit_code == 0, result.output
    assert "note: n9" in result.output and "note: n10" not in result.output
    assert "note: … 2 more (listed in the cache's summary.json)" in result.output


@pytest.mark.parametrize(("count", "limit", "shown", "more"), [(12, 10, 10, 2), (3, 3, 3, 0),
                                                               (4, 3, 3, 1), (11, None, 10, 1)])  # fmt: skip
def test_print_notes_shows_the_first_ones_and_counts_the_rest(
    monkeypatch, count, limit, shown, more
):
    out = io.StringIO()
    monkeypatch.setattr(data_cli, "err_console", Console(file=out, width=200))
    notes = [f"note {i}" for i in range(count)]
    data_cli.print_notes(notes) if limit is None else data_cli.print_notes(notes, limit)
    lines = out.getvalue().splitlines()
    assert lines[:shown] == [f"note: note {i}" for i in range(shown)]
    if more:
        assert lines[shown:] == [f"note: … {more} more (listed in the cache's summary.json)"]
    else:
        assert lines[shown:] == []


def test_models_list_rows():
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    assert headers(result.output) == [["name", "aliases", "inputs", "receptive field",
                                       "parameters", "paper's count¹", "what it is"]]  # fmt: skip
    table = {row[0]: row for row in rows(result.output)}
    assert list(table) == ["twopath", "input_cascade", "local_cascade", "mf_cascade"]
    assert table["twopath"] == ["twopath", "TwoPathCNN", "33×33", "33", "710,852", "651,488",
                                "A local (7×7, 3×3) and a global (13×13) path on 33×33 patches."]  # fmt: skip
    assert table["input_cascade"][1:6] == [
        "InputCascadeCNN", "33×33 + 65×65", "65", "1,663,112", "802,368"]  # fmt: skip
    assert table["input_cascade"][6].startswith("A 65×65 TwoPathCNN's class map")
    assert table["local_cascade"][3:6] == ["56", "1,426,312", "654,368"]
    assert table["mf_cascade"][3:6] == ["53", "1,428,760", "662,513"]


def test_models_list_joins_aliases_and_capitalises(monkeypatch):
    import braver.models as models

    entry = models.model_entry("twopath")
    fake = SimpleNamespace(aliases=("TwoPathCNN", "Other"), description="Twopath: xyz: abc")
    monkeypatch.setattr(models, "list_models", lambda: ["twopath"])
    monkeypatch.setattr(models, "model_entry", lambda name: fake if name == "twopath" else entry)
    row = rows(invoke("models", "list").output)[0]
    assert row[1] == "TwoPathCNN, Other" and row[6] == "Xyz: abc"
    fake.description = ""
    assert rows(invoke("models", "list").output)[0][6] == ""


def test_models_summary_rows_with_overrides():
    result = invoke("models", "summary", "twopath", "--maxout-k", 3, "--num-classes", 3,
                    "--in-channels", 2)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == (
        "twopath: 2 channels, 3 classes, maxout K=3, dropout 0.2; inputs 33×33; "
        "receptive field 33×33; 588,867 parameters"
    )
    assert headers(result.output) == [
        ["group", "layer", "kind", "kernel", "maps in → out", "output", "parameters",
         "receptive field"],
        ["group", "parameters", "layers"],
    ]  # fmt: skip
    table = rows(result.output)
    assert table[0] == ["local", "local.conv1", "conv + maxout", "7×7", "2 → 64 (×3)", "27×27",
                        "19,008", "7"]  # fmt: skip
    # the numbers' columns (kernel to receptive field) are right-aligned under longer titles
    raw = next(line for line in result.output.splitlines() if "local.conv1" in line)
    for cell in raw.split("│")[4:9]:
        assert cell.startswith("  ") and cell.endswith(cell.strip() + " "), raw
    assert table[1] == ["local", "local.pool1", "max-pool, stride 1", "4×4", "64 → 64", "24×24",
                        "–", "10"]  # fmt: skip
    assert table[5] == ["output", "output", "conv (output)", "21×21", "224 → 3", "1×1",
                        "296,355", "33"]  # fmt: skip
    assert table[6:] == [
        ["local", "129,792", "local.conv1, local.conv2"],
        ["global", "162,720", "global.conv1"],
        ["output", "296,355", "output"],
    ]
    text = " ".join(result.output.split())
    assert "A layer can be named by a unique suffix, e.g. conv2 for local.conv2." in text
    assert "local / global" not in text
    cascade = " ".join(invoke("models", "summary", "local_cascade").output.split())
    assert "first: the network on the 56×56 input (the seed's 'global scale')" in cascade
    assert "e.g. second.local.conv2." in cascade and "conv2 for local.conv2" not in cascade
    one = invoke("models", "summary", "twopath", "--in-channels", 1, "--maxout-k", 1)
    assert "twopath: 1 channel, 4 classes, maxout K=1" in one.output
    assert rows(one.output)[0][4] == "1 → 64"


def test_models_summary_of_a_run_folder_with_overrides(tmp_path):
    model = create_model("mf_cascade", num_classes=3, class_frequencies=[0.8, 0.1, 0.1])
    save_run_info(
        tmp_path, RunInfo(kind="brain", model=model.config, label_scheme={}, channels=["ct"])
    )
    # the run's class frequencies fit 3 classes only: dropped when the classes change
    result = invoke("models", "summary", tmp_path, "--num-classes", 5, "--maxout-k", 3)
    assert result.exit_code == 0, result.output
    first = " ".join(result.output.split("\n\n")[0].split())
    assert f"mf_cascade (run {tmp_path}): 4 channels, 5 classes, maxout K=3" in first
    kept = invoke("models", "summary", tmp_path)
    assert "3 classes, maxout K=2" in " ".join(kept.output.split())


def test_inspect_folds_long_cells_in_a_narrow_terminal(fake_dataset, tmp_path):
    dataset, _ = fake_dataset
    dataset.cases = [case("A", channels=("flair", "t1ce")), case("B")]
    result = runner.invoke(app, ["data", "inspect", str(tmp_path)], env={"COLUMNS": "60"})
    assert result.exit_code == 0, result.output
    table = result.output.split("class balance")[0]
    assert "…" not in table and "brats2021" in table  # folded onto more lines, not cut


def test_models_summary_of_a_run_without_class_frequencies(tmp_path):
    config = {k: v for k, v in create_model("twopath").config.items() if k != "class_frequencies"}
    save_run_info(tmp_path, RunInfo(kind="brain", model=config, label_scheme={}, channels=["t1"]))
    result = invoke("models", "summary", tmp_path, "--num-classes", 3)
    assert result.exit_code == 0, result.output
    assert "3 classes" in " ".join(result.output.split())


def test_inspect_goes_on_after_an_unreadable_case(fake_dataset, tmp_path):
    dataset, calls = fake_dataset
    dataset.cases = [case("C"), case("A")]
    result = invoke("data", "inspect", tmp_path)
    assert calls["describe"] == ["C", "A"] and calls["balance"] == [(["A"], "the scheme")]
    assert [row[0] for row in rows(result.output)][:2] == ["C", "A"]
    assert "1 of 2 case(s) could not be read" in " ".join(result.output.split())

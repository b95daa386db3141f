"""`braver prune` end to end on tiny runs (an untrained model with seeded weights, no training)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from seeded import randomised
from typer.testing import CliRunner

from braver.cli.main import app
from braver.cli.prune import join_pairs
from braver.data.cache import write_case, write_summary
from braver.data.labels import BRATS_2021
from braver.preprocess import PrepareSettings
from braver.runs import RunInfo, save_run_info, save_weights

pytestmark = pytest.mark.usefixtures("one_thread")

runner = CliRunner()
CASES = ["tiny_000", "tiny_001"]
DICE = ["whole_tumor_dice", "tumor_core_dice", "enhancing_tumor_dice"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Two labelled 12×40×40 cases whose foreground is a 4×16×16 block (fast to predict)."""
    root = tmp_path_factory.mktemp("prune") / "cache"
    rng = np.random.default_rng(0)
    for case_id in CASES:
        image = np.zeros((4, 12, 40, 40), np.float32)
        image[:, 4:8, 12:28, 12:28] = rng.normal(size=(4, 4, 16, 16))
        label = np.zeros((12, 40, 40), np.uint8)
        label[5:7, 15:25, 15:25] = 2
        label[5:7, 18:22, 18:22] = 3
        label[6, 19:21, 19:21] = 1
        meta = {
            "case_id": case_id,
            "channels": ["t1", "t1c", "t2", "flair"],
            "spacing_zyx": [1.0, 1.0, 1.0],
            "canonical_shape_zyx": [12, 40, 40],
            "label_scheme": BRATS_2021.to_json(),
        }
        write_case(root, case_id, image, label, meta)
    write_summary(
        root,
        {
            "label_scheme": BRATS_2021.to_json(),
            "channels": ["t1", "t1c", "t2", "flair"],
            "modality": "mri",
            "cases": CASES,
        },
    )
    return root


def make_run(folder, model_name="twopath", cache=None, seed=0):
    """A brain run with seeded random weights (variants then really differ from intact)."""
    folder.mkdir(parents=True)
    model = randomised(model_name, seed, dropout=0.0)
    save_weights(folder, model)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        cache=str(cache) if cache else None,
        validation_cases=list(CASES) if cache else [],
        prepare=PrepareSettings().to_dict(),
    )
    save_run_info(folder, info)
    return folder


def outputs(folder):
    (out,) = folder.glob("prune-*")
    report = json.loads((out / "prune.json").read_text())
    with open(out / "prune.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert (out / "prune.png").stat().st_size > 0
    return out, report, table


def check_rows(report, table, names):
    rows = report["rows"]
    assert [r["variant"] for r in rows] == names == [r["variant"] for r in table]
    assert report["cases"] == CASES
    for name in names:
        assert len(report["per_case"][name]) == len(CASES)
    intact = rows[0]
    for row in rows:
        for key in ["foreground_accuracy", *DICE]:
            assert 0.0 <= row[key] <= 1.0
            delta = row[f"delta_{key}"]
            assert (
                (delta is None) if row is intact else delta == pytest.approx(row[key] - intact[key])
            )
            mean = (
                np.mean([c[key] for c in report["per_case"][row["variant"]]])
                if key in DICE
                else None
            )
            if mean is not None:
                assert row[key] == pytest.approx(mean)
        assert row["seconds_per_volume"] > 0
    return rows


def test_default_variants_come_from_the_recipe(tmp_path, cache):
    run = make_run(tmp_path / "run", cache=cache)
    result = runner.invoke(app, ["prune", str(run)])
    assert result.exit_code == 0, result.output
    out, report, table = outputs(run)
    rows = check_rows(
        report,
        table,
        [
            "intact",
            "identity local.conv2",
            "keep local (global removed)",
            "keep global (local removed)",
        ],
    )
    assert [r["parameters_removed"] for r in rows] == [
        0,
        64 * 2 * 64 * 9 + 128,
        4 * 320 * 169 + 320 + 4 * 160 * 441,
        4 * 128 * 49 + 128 + 64 * 128 * 9 + 128 + 4 * 64 * 441,
    ]
    assert report["recipe"].endswith("prune.toml") and report["kind"] == "validation"
    assert report["variants"][1]["operations"] == [{"op": "identity", "layer": "local.conv2"}]
    assert "foreground_accuracy: share of the voxels inside the image foreground" in result.output
    # a random network's variants do change the predictions
    assert any(r["delta_foreground_accuracy"] for r in rows[1:])


def test_identity_conv2_on_the_latest_brain_run(tmp_path, cache, monkeypatch):
    run = make_run(tmp_path / "runs" / "brain-1", cache=cache)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["prune", "--identity", "conv2", "--cases", "1"])
    assert result.exit_code == 0, result.output
    out, report, table = outputs(run)
    assert [r["variant"] for r in report["rows"]] == ["intact", "identity local.conv2"]
    assert report["cases"] == CASES[:1] and report["run"] == "runs/brain-1"
    assert table[1]["note"] == ""


def test_identity_conv2_on_a_cascade_gives_one_row_per_network(tmp_path, cache):
    run = make_run(tmp_path / "run", "input_cascade", cache=cache)
    out_dir = tmp_path / "table"
    result = runner.invoke(app, ["prune", str(run), "--identity", "conv2", "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    report = json.loads((out_dir / "prune.json").read_text())
    with open(out_dir / "prune.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    rows = check_rows(
        report, table, ["intact", "identity first.local.conv2", "identity second.local.conv2"]
    )
    note = "'conv2' matches 2 layers (first.local.conv2, second.local.conv2): one row each"
    assert rows[1]["note"] == rows[2]["note"] == note == table[1]["note"]
    assert "one row each" in result.output  # the table's caption
    assert rows[1]["whole_tumor_dice"] != rows[2]["whole_tumor_dice"]


def test_switch_and_copy_on_a_cascade(tmp_path, cache):
    run = make_run(tmp_path / "run", "local_cascade", cache=cache)
    result = runner.invoke(
        app,
        [
            "prune",
            str(run),
            "--switch",
            "first.output",
            "second.output",
            "--copy",
            "second.output",
            "first.output",
            "--keep",
            "second",
            "--cases",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    _, report, _ = outputs(run)
    rows = report["rows"]
    assert [r["variant"] for r in rows] == [
        "intact",
        "keep second (local scale; first removed)",
        "switch first.output ↔ second.output",
        "copy second.output → first.output",
    ]
    assert [r["parameters_removed"] for r in rows[2:]] == [0, 0]
    assert rows[1]["parameters_removed"] > 700_000


def test_bad_names_and_incompatible_layers_exit_2(tmp_path, cache):
    run = make_run(tmp_path / "run", cache=cache)
    cases = [
        (["--identity", "conv9"], "no layer named 'conv9'; the layers are: local.conv1"),
        (["--identity", "local.conv1"], "layers that can be: local.conv2"),
        (["--keep", "output"], "cannot keep 'output'"),
        (["--switch", "local.conv1", "global.conv1"], "the shapes differ"),
        (["--switch", "local.conv1"], "--switch takes two layer names"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["prune", str(run), *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)
        assert "Traceback" not in result.output
    assert not list(run.glob("prune-*"))  # refused before anything was written
    cascade = make_run(tmp_path / "cascade", "input_cascade", cache=cache)
    result = runner.invoke(app, ["prune", str(cascade), "--copy", "conv2", "first.local.conv2"])
    assert result.exit_code == 2 and "is ambiguous" in result.output


def test_diverged_weights_are_refused(tmp_path, cache):
    from safetensors.torch import load_file, save_file

    run = make_run(tmp_path / "run", cache=cache)
    state = load_file(str(run / "model.safetensors"))
    state["output.bias"][0] = float("nan")
    save_file(state, str(run / "model.safetensors"))
    result = runner.invoke(app, ["prune", str(run), "--identity", "conv2"])
    assert result.exit_code == 2 and "the training diverged" in result.output


def test_run_without_cache_needs_data(tmp_path):
    run = make_run(tmp_path / "run")
    result = runner.invoke(app, ["prune", str(run), "--identity", "conv2"])
    assert result.exit_code == 2 and "records no cache with validation cases" in result.output
    result = runner.invoke(app, ["prune", "--runs", str(tmp_path / "none")])
    assert result.exit_code == 2 and "braver train brain" in result.output


def test_list_shows_names_and_what_each_operation_accepts(tmp_path):
    run = make_run(tmp_path / "run", "input_cascade")
    result = runner.invoke(app, ["prune", str(run), "--list"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name in ("first.local.conv1", "second.global.conv1", "second.output", "128×8×7×7"):
        assert name in text
    assert "--identity NAME: first.local.conv2, second.local.conv2" in text
    assert "--keep PART: local, global, first.local" in text and "first, second" in text
    assert "first.local.conv2 second.local.conv2; first.output second.output" in text
    assert "groups: local, global, output, first, second" in text
    assert not list(run.glob("prune-*"))


def test_prune_on_a_dataset_folder(tmp_path):
    from braver.data.phantoms import synth_brain

    data = synth_brain(tmp_path / "brains", cases=1, seed=3, shape=(24, 26, 16))
    run = make_run(tmp_path / "run")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["prune", str(run), "--data", str(data), "--keep", "global", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "prune.json").read_text())
    assert report["kind"] == "dataset" and report["cases"] == ["PhantomBrain_00000"]
    assert [r["variant"] for r in report["rows"]] == ["intact", "keep global (local removed)"]


def test_pairs_are_joined_before_parsing():
    assert join_pairs(["r", "--switch", "a", "b", "--copy=c", "d", "--list"]) == [
        "r",
        "--switch",
        "a b",
        "--copy",
        "c d",
        "--list",
    ]
    assert join_pairs(["--switch", "a", "--list"]) == ["--switch", "a", "--list"]

"""Each option of predict and evaluate changes what is written (not only that the command runs)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from braver.cli.main import app
from braver.data.labels import BRATS_2021, MSD_BRAIN
from braver.data.phantoms import synth_brain
from braver.models import create_model
from braver.preprocess import PrepareSettings
from braver.runs import RunInfo, save_run_info, save_weights

runner = CliRunner()
CASE = "PhantomBrain_00000"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return synth_brain(
        tmp_path_factory.mktemp("data") / "brains", cases=1, seed=5, shape=(24, 26, 16)
    )


def make_run(folder, scheme=BRATS_2021, frequencies=None, seed=0):
    """A run of an untrained TwoPathCNN (random weights: its answer is not left-right symmetric)."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = create_model(
        "twopath", in_channels=4, num_classes=scheme.num_classes, init_range=0.05,
        class_frequencies=frequencies,
    )  # fmt: skip
    save_weights(folder, model)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=scheme.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        prepare=PrepareSettings(n4=False).to_dict(),
    )
    save_run_info(folder, info)
    return folder


def _predict(run, data, out, *options):
    result = runner.invoke(
        app, ["predict", str(run), str(data / CASE), "--out", str(out), "--device", "cpu", *options]
    )
    assert result.exit_code == 0, result.output
    seg = nib.load(out / f"{CASE}_seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8  # a label map, stored as one
    return np.asarray(seg.dataobj)


def test_predict_tta_and_min_component_change_the_segmentation(tmp_path, data):
    run = make_run(tmp_path / "run")
    plain = _predict(run, data, tmp_path / "plain", "--no-postprocess", "--probabilities")
    tta = _predict(run, data, tmp_path / "tta", "--no-postprocess", "--probabilities", "--tta")
    probs = [
        nib.load(tmp_path / d / f"{CASE}_probabilities.nii.gz").get_fdata()
        for d in ("plain", "tta")
    ]
    assert np.abs(probs[0] - probs[1]).max() > 1e-3  # the flipped pass was averaged in
    assert (plain != tta).any()
    # a minimum component larger than the head removes every tumour voxel
    assert (plain > 0).any()
    cleaned = _predict(run, data, tmp_path / "min", "--no-postprocess", "--min-component", "100000")
    assert not (cleaned > 0).any()


def _evaluate(run, data, out, *options):
    result = runner.invoke(
        app,
        ["evaluate", str(run), "--data", str(data), "--out", str(out), "--no-overlays",
         "--device", "cpu", *options],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads((out / "metrics.json").read_text())["cases"][0]


def test_evaluate_tta_and_min_component_change_the_scores(tmp_path, data):
    run = make_run(tmp_path / "run")
    plain = _evaluate(run, data, tmp_path / "plain", "--no-postprocess")
    tta = _evaluate(run, data, tmp_path / "tta", "--no-postprocess", "--tta")
    assert plain != tta
    assert plain["whole_tumor_sensitivity"] > 0
    cleaned = _evaluate(
        run, data, tmp_path / "min", "--no-postprocess", "--min-component", "100000"
    )
    assert cleaned["whole_tumor_sensitivity"] == 0.0  # nothing left to find the tumour with


def test_a_run_of_another_label_scheme_is_refused_on_labelled_cases(tmp_path, data):
    run = make_run(tmp_path / "run", scheme=MSD_BRAIN)
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(run),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "e"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 2
    assert "labelled with BraTS 2018-2021 classes" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "e" / "metrics.json").exists()

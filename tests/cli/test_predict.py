import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from braver.cli.main import app
from braver.data.labels import BRATS_2021
from braver.data.phantoms import synth_brain
from braver.models import create_model
from braver.preprocess import PrepareSettings
from braver.runs import RunInfo, save_run_info, save_weights

runner = CliRunner()
CHANNELS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    """Two small phantom brains in the BraTS 2021 layout (LPS affine, labels 0/1/2/4)."""
    return synth_brain(
        tmp_path_factory.mktemp("data") / "brains", cases=2, seed=5, shape=(24, 26, 16)
    )


def make_run(folder, class_frequencies=(0.1, 0.2, 0.5, 0.2)):
    """A finished (untrained) brain run folder: run.json + model.safetensors."""
    folder.mkdir(parents=True)
    model = create_model(
        "twopath", in_channels=4, num_classes=4, class_frequencies=list(class_frequencies)
    )
    save_weights(folder, model)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        prepare=PrepareSettings().to_dict(),
    )
    save_run_info(folder, info)
    return folder


def test_predict_writes_niftis_that_nibabel_and_simpleitk_read(tmp_path, phantoms):
    run = make_run(tmp_path / "run")
    case = phantoms / "PhantomBrain_00000"
    out = tmp_path / "seg"
    result = runner.invoke(
        app, ["predict", str(run), str(case), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    assert "PhantomBrain_00000" in result.output
    flair = case / "PhantomBrain_00000_flair.nii.gz"
    written = nib.load(out / "PhantomBrain_00000_seg.nii.gz")
    source = nib.load(flair)
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
    values = set(np.unique(np.asarray(written.dataobj)).tolist())
    assert values <= {0, 1, 2, 4} and values - {0}  # BraTS values, something predicted
    itk_out = sitk.ReadImage(str(out / "PhantomBrain_00000_seg.nii.gz"))
    itk_in = sitk.ReadImage(str(flair))
    assert itk_out.GetSize() == itk_in.GetSize()
    np.testing.assert_allclose(itk_out.GetOrigin(), itk_in.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(itk_out.GetDirection(), itk_in.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(itk_out.GetSpacing(), itk_in.GetSpacing(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(itk_out)).tolist()) == values
    rows = json.loads((out / "predictions.json").read_text())
    assert [r["case"] for r in rows] == ["PhantomBrain_00000"]
    assert not (out / "PhantomBrain_00000_probabilities.nii.gz").exists()


def test_predict_defaults_to_the_latest_run_and_takes_image_files(tmp_path, phantoms, monkeypatch):
    make_run(tmp_path / "runs" / "brain-1")
    monkeypatch.chdir(tmp_path)
    case = phantoms / "PhantomBrain_00001"
    files = [str(case / f"PhantomBrain_00001_{key}.nii.gz") for key in CHANNELS]
    result = runner.invoke(
        app, ["predict", *files, "--out", "seg", "--probabilities", "--tta", "--min-component", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "runs/brain-1" in result.output
    probs = nib.load(tmp_path / "seg" / "PhantomBrain_00001_probabilities.nii.gz")
    assert probs.shape == (24, 26, 16, 4)


def test_predict_a_whole_dataset_folder(tmp_path, phantoms):
    run = make_run(tmp_path / "run")
    result = runner.invoke(app, ["predict", str(run), str(phantoms), "-o", str(tmp_path / "seg")])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "seg").glob("*_seg.nii.gz")) == [
        "PhantomBrain_00000_seg.nii.gz",
        "PhantomBrain_00001_seg.nii.gz",
    ]


def test_predict_errors_are_one_sentence(tmp_path, phantoms, monkeypatch):
    monkeypatch.chdir(tmp_path)
    case = str(phantoms / "PhantomBrain_00000")
    # no RUN given and no run under ./runs
    result = runner.invoke(app, ["predict", case, "--out", "seg"])
    assert result.exit_code == 2
    assert "no finished brain run" in result.output and "braver train brain" in result.output
    run = make_run(tmp_path / "run")
    # RUN after the inputs
    result = runner.invoke(app, ["predict", case, str(run), "--out", "seg"])
    assert result.exit_code == 2 and "is a run folder among the inputs" in result.output
    # RUN without inputs
    result = runner.invoke(app, ["predict", str(run), "--out", "seg"])
    assert result.exit_code == 2 and "at least one INPUT" in result.output
    # an input that does not exist
    result = runner.invoke(app, ["predict", str(run), "nowhere", "--out", "seg"])
    assert result.exit_code == 2 and "nowhere: does not exist" in result.output
    # a run without weights
    (run / "model.safetensors").unlink()
    result = runner.invoke(app, ["predict", str(run), case, "--out", "seg"])
    assert result.exit_code == 2 and "has no model.safetensors" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "seg").exists() or not list((tmp_path / "seg").glob("*_seg.nii.gz"))

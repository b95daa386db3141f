import csv
import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from braver.cli.main import app
from braver.data.labels import BRATS_2021
from braver.data.phantoms import synth_brain
from braver.metrics import metric_names
from braver.models import create_model
from braver.preprocess import PrepareSettings, prepare_dataset
from braver.runs import RunInfo, save_run_info, save_weights

runner = CliRunner()
METRICS = metric_names(BRATS_2021)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three small phantom brains (BraTS 2021 layout) and their prepared cache."""
    root = tmp_path_factory.mktemp("eval")
    data = synth_brain(root / "brains", cases=3, seed=7, shape=(24, 26, 16))
    prepare_dataset(data, root / "cache", progress=False)
    return data, root / "cache"


def make_run(folder, cache=None, validation_cases=()):
    """An untrained brain run that calls every computed voxel edema (output bias prior)."""
    folder.mkdir(parents=True)
    model = create_model(
        "twopath", in_channels=4, num_classes=4, class_frequencies=[0.01, 0.01, 0.97, 0.01]
    )
    save_weights(folder, model)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        cache=str(cache) if cache else None,
        validation_cases=list(validation_cases),
        prepare=PrepareSettings().to_dict(),
    )
    save_run_info(folder, info)
    return folder


def independent_scores(pred, truth, image):
    """The BraTS regions' scores of two label files (values 0, 1, 2, 4), from medpy and numpy.

    A region missing from the prediction but in the truth: Dice and sensitivity 0, specificity
    1 (no false positives) and HD95 the volume's diagonal in mm (braver's worst value).
    """
    from medpy.metric.binary import dc, hd95, sensitivity, specificity

    spacing = image.header.get_zooms()
    diagonal = float(np.sqrt(np.sum((np.array(truth.shape) * np.array(spacing)) ** 2)))
    scores = {}
    for region, values in (
        ("whole_tumor", (1, 2, 4)),
        ("tumor_core", (1, 4)),
        ("enhancing_tumor", (4,)),
    ):
        p, t = np.isin(pred, values), np.isin(truth, values)
        assert t.any()  # every phantom has every region
        scores[f"{region}_dice"] = dc(p, t)
        scores[f"{region}_sensitivity"] = sensitivity(p, t)
        scores[f"{region}_specificity"] = specificity(p, t)
        scores[f"{region}_hd95_mm"] = hd95(p, t, voxelspacing=spacing) if p.any() else diagonal
    return scores


def read_outputs(out):
    report = json.loads((out / "metrics.json").read_text())
    with open(out / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    return report, table


def check_outputs(out, cases):
    report, table = read_outputs(out)
    assert [r["case"] for r in report["cases"]] == cases
    assert list(report["cases"][0]) == ["case", *METRICS]
    assert set(report["summary"]) == set(METRICS)
    assert [r["case"] for r in table] == [*cases, "mean", "std", "median"]
    for metric in METRICS:
        values = [r[metric] for r in report["cases"]]
        assert all(np.isfinite(values))
        assert report["summary"][metric]["mean"] == pytest.approx(np.mean(values))
        assert report["summary"][metric]["median"] == pytest.approx(np.median(values))
        assert float(table[-3][metric]) == pytest.approx(np.mean(values))
    assert sorted(p.stem for p in (out / "overlays").glob("*.png")) == cases
    return report


def test_predict_then_score_existing_segmentations(tmp_path, dataset):
    data, _ = dataset
    run = make_run(tmp_path / "run")
    seg = tmp_path / "seg"
    assert runner.invoke(app, ["predict", str(run), str(data), "--out", str(seg)]).exit_code == 0
    out = tmp_path / "scores"
    result = runner.invoke(
        app, ["evaluate", "--pred", str(seg), "--truth", str(data), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "whole_tumor" in result.output and "median" in result.output
    cases = ["PhantomBrain_00000", "PhantomBrain_00001", "PhantomBrain_00002"]
    report = check_outputs(out, cases)
    assert report["mode"] == "segmentations" and report["geometry"] == "file grid"
    # the scores are those of the files, in millimetres of the files' grid (medpy, numpy)
    case = data / cases[1]
    truth = nib.load(case / f"{cases[1]}_seg.nii.gz")
    pred = nib.load(seg / f"{cases[1]}_seg.nii.gz")
    row = report["cases"][1]
    assert {k: row[k] for k in METRICS} == pytest.approx(
        independent_scores(np.asarray(pred.dataobj), np.asarray(truth.dataobj), truth)
    )
    assert row["whole_tumor_sensitivity"] == 1.0  # edema called over the whole brain box
    assert row["tumor_core_dice"] == 0.0  # no necrosis or enhancing predicted


@pytest.mark.slow
def test_evaluate_run_on_data_matches_predict_then_score(tmp_path, dataset, monkeypatch):
    data, _ = dataset
    run = make_run(tmp_path / "runs" / "brain-1")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--data", str(data), "--no-overlays"])
    assert result.exit_code == 0, result.output
    (out,) = run.glob("eval-*")  # default: RUN/eval-<timestamp>
    report, _ = read_outputs(out)
    assert report["mode"] == "predicted" and report["run"] == "runs/brain-1"
    assert not (out / "overlays").exists()
    seg = tmp_path / "seg"
    runner.invoke(app, ["predict", str(run), str(data), "--out", str(seg)])
    runner.invoke(app, ["evaluate", "--pred", str(seg), "--truth", str(data), "--out", "again"])
    again, _ = read_outputs(tmp_path / "again")
    assert report["cases"] == again["cases"]


def test_evaluate_run_on_its_cached_validation_cases(tmp_path, dataset):
    data, cache = dataset
    run = make_run(tmp_path / "run", cache, ["PhantomBrain_00001", "PhantomBrain_00002"])
    out = tmp_path / "val"
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = check_outputs(out, ["PhantomBrain_00001", "PhantomBrain_00002"])
    assert report["mode"] == "validation" and report["geometry"].startswith("cached")


def test_evaluate_errors_are_one_sentence(tmp_path, dataset):
    data, _ = dataset
    seg = tmp_path / "seg"
    seg.mkdir()
    # a prediction is missing
    result = runner.invoke(app, ["evaluate", "--pred", str(seg), "--truth", str(data)])
    assert result.exit_code == 2
    assert "has no prediction for 3 of 3 case(s)" in result.output
    # a prediction of the wrong shape
    for case in ("PhantomBrain_00000", "PhantomBrain_00001", "PhantomBrain_00002"):
        nib.save(
            nib.Nifti1Image(np.zeros((24, 26, 15), np.uint8), np.eye(4)), seg / f"{case}_seg.nii.gz"
        )
    result = runner.invoke(
        app, ["evaluate", "--pred", str(seg), "--truth", str(data), "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2
    assert "the prediction has shape (24, 26, 15) but the truth" in result.output
    assert not (tmp_path / "x" / "metrics.json").exists()
    # an unknown run
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nowhere"), "--data", str(data)])
    assert result.exit_code == 2 and "is not a braver run folder" in result.output
    # a run without a cache, and no --data
    run = make_run(tmp_path / "run")
    result = runner.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 2 and "records no cache with validation cases" in result.output
    # --pred without --truth, and --pred with a run
    result = runner.invoke(app, ["evaluate", "--pred", str(seg)])
    assert result.exit_code == 2 and "--pred and --truth go together" in result.output
    result = runner.invoke(app, ["evaluate", str(run), "--pred", str(seg), "--truth", str(data)])
    assert result.exit_code == 2 and "not both" in result.output
    assert "Traceback" not in result.output

"""What the dashboard reads from run folders: status, progress, best values, studies."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import pytest

from braver.dashboard import folders

_spec = importlib.util.spec_from_file_location(
    "fake_runs", Path(__file__).with_name("fake_runs.py")
)
fake = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake)


@pytest.mark.parametrize("status", ["done", "running", "interrupted", "diverged"])
def test_status_comes_from_the_files(tmp_path, status):
    folder = fake.write_run(tmp_path, "run", status=status)
    assert folders.run_status(folder) == status


def test_a_finished_run_whose_process_still_evaluates_is_running(tmp_path):
    folder = fake.write_run(tmp_path, "run", status="running")
    (folder / "model.safetensors").write_bytes(b"weights")  # weights written, metrics.json not yet
    assert folders.run_status(folder) == "running"
    (folder / "metrics.json").write_text("{}")
    assert folders.run_status(folder) == "done"


def test_without_live_json_the_age_of_the_files_decides(tmp_path):
    folder = fake.write_run(tmp_path, "run", status="running")
    (folder / "live.json").unlink()  # e.g. a run on another machine, seen through a share
    assert folders.run_status(folder) == "running"
    later = time.time() + folders.STALE_SECONDS + 5
    assert folders.run_status(folder, now=later) == "interrupted"
    # slow epochs (2 s each here) stretch the wait: three epochs' time at least
    (folder / "history.csv").write_text(fake.HEADER + "\nstage1,0,1,1,0.5,0.5,0.005,0.5,1000\n")
    assert folders.run_status(folder, now=later) == "running"


def test_a_live_json_from_another_host_counts_while_fresh(tmp_path):
    folder = fake.write_run(tmp_path, "run", status="running")
    live = json.loads((folder / "live.json").read_text())
    (folder / "live.json").write_text(json.dumps({**live, "host": "elsewhere", "pid": 1}))
    assert folders.run_status(folder) == "running"
    assert folders.run_status(folder, now=time.time() + 3600) == "interrupted"


@pytest.mark.parametrize("cell", ["nan", "inf"])
def test_a_loss_that_is_not_finite_in_history_means_diverged(tmp_path, cell):
    folder = fake.write_run(tmp_path, "run", status="running")
    with open(folder / "history.csv", "a") as f:
        f.write(f"stage1,3,{cell},1.0,0.1,0.1,0.005,0.5,2.0\n")
    assert folders.run_status(folder) == "diverged"
    folder2 = fake.write_run(tmp_path, "run2", status="interrupted")
    (folder2 / "live.json").unlink()
    (folder2 / "progress.json").write_text(json.dumps({"diverged": True}))
    assert folders.run_status(folder2) == "diverged"


def test_summary_of_a_running_run(tmp_path):
    folder = fake.write_run(
        tmp_path,
        "brain-1",
        status="running",
        stages={"stage1": 2},
        planned={"stage1": 5, "stage2": 2},
    )
    summary = folders.run_summary(folder)
    assert summary["name"] == "brain-1" and summary["status"] == "running"
    assert (summary["kind"], summary["recipe"], summary["model"]) == ("brain", "brain", "twopath")
    assert summary["data"] == "phantoms"
    assert (summary["stage"], summary["epoch"], summary["epochs"]) == ("stage1", 2, 7)
    assert summary["eta_seconds"] == pytest.approx(5 * 2.0)  # 3 + 2 epochs left, 2 s each
    assert summary["seconds_per_epoch"] == 2.0
    # lowest loss, highest score; training columns and the schedule are not "best" values
    assert summary["best"] == {"valid_loss": 0.5, "whole_tumor_dice": 0.54, "patch_accuracy": 0.63}
    assert summary["final"] == {}
    version = summary["version"]
    os.utime(folder / "history.csv", (time.time() + 10, time.time() + 10))
    assert folders.run_summary(folder)["version"] != version


def test_a_cascade_plans_its_first_network_too(tmp_path):
    folder = fake.write_run(tmp_path, "c", model="input_cascade", planned={"stage1": 2})
    (folder / "recipe.toml").write_text(
        "[cascade]\nfirst_epochs = 3\n[stage1]\nepochs = 2\n[stage2]\nepochs = 0\n"
    )
    assert folders.planned_epochs(folder, "input_cascade") == {"first": 3, "stage1": 2}
    assert folders.planned_epochs(folder, "twopath") == {"stage1": 2}


def test_run_details_hold_history_metrics_previews_and_surgery(tmp_path):
    folder = fake.write_run(tmp_path, "brain-1")
    fake.write_surgery_study(folder)
    details = folders.run_details(folder)
    assert details["columns"][:3] == ["stage", "epoch", "train_loss"]
    assert [r["stage"] for r in details["history"]] == ["stage1"] * 3 + ["stage2"]
    assert details["history"][0]["valid_loss"] == 1.0 and details["history"][3]["epoch"] == 3
    assert details["trainable_parameters"] == {"stage1": 710852, "stage2": 395140}
    assert [c["case"] for c in details["metrics"]["cases"]] == ["case03", "case01", "case02"]
    assert [c["case"] for c in details["previews"]["cases"]] == ["case03", "case01"]
    assert [s["name"] for s in details["studies"]] == ["prune-20250101-000000"]
    assert details["summary"]["final"]["whole_tumor_dice"] == pytest.approx(0.7)


def test_overview_lists_runs_and_studies_with_paths_under_the_root(tmp_path):
    run = fake.write_run(tmp_path, "brain-1")
    fake.write_run(tmp_path, "brain-2", status="running")
    fake.write_transfer_study(tmp_path)
    fake.write_surgery_study(run)
    (tmp_path / "not-a-run").mkdir()
    data = folders.overview(tmp_path)
    assert sorted(r["name"] for r in data["runs"]) == ["brain-1", "brain-2"]
    studies = {s["kind"]: s for s in data["studies"]}
    assert studies["transfer"]["path"] == "transfer-liver-20250101-000000"
    assert studies["transfer"]["source"] == "brain-a" and studies["transfer"]["rows"] == 2
    assert studies["surgery"]["path"] == "brain-1/prune-20250101-000000"
    assert studies["surgery"]["source"] == "brain-1" and studies["surgery"]["rows"] == 3


def test_study_details_chart_dice_and_delta_dice(tmp_path):
    transfer = folders.study_details(fake.write_transfer_study(tmp_path) / "transfer.json")
    assert transfer["label"] == "setup" and transfer["columns"][0] == "setup"
    assert "run" not in transfer["columns"]
    assert transfer["chart"] == ["train_accuracy", "valid_accuracy", "liver_dice", "tumor_dice"]
    run = fake.write_run(tmp_path, "brain-1")
    surgery = folders.study_details(fake.write_surgery_study(run) / "prune.json")
    assert surgery["label"] == "variant" and surgery["chart"] == ["delta_whole_tumor_dice"]
    assert surgery["columns"][-1] == "note"
    assert surgery["meta"] == {"run": str(run), "model": "twopath", "kind": "validation"}

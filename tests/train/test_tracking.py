"""Preview overlays, live.json and an offline W&B run, on one tiny training run."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from braver.train.tracking import (
    PreviewCallback,
    class_overlay,
    composite,
    preview_slices,
)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _load("tiny")
wandb_offline = _load("wandb_offline")

TINY = [*tiny.TINY, "stage1.epochs=2"]  # the shared tiny fit, with a second stage-1 epoch


def test_preview_slices_spread_over_the_tumour_and_hold_the_largest():
    label = np.zeros((20, 8, 8), np.uint8)
    label[5:15, 2:4, 2:4] = 1
    label[11, :, :] = 2  # the slice with the most tumour
    image = np.ones((2, 20, 8, 8), np.float32)
    assert preview_slices(label, image, 4) == [5, 8, 11, 14]
    assert preview_slices(label, image, 3) == [5, 11, 14]  # 10 moved to the largest
    assert preview_slices(label, image, 1) == [11]
    # no tumour: the foreground decides; no foreground: the middle slice
    image[:, :3] = 0
    assert preview_slices(np.zeros_like(label), image, 3) == [3, 11, 19]
    assert preview_slices(None, np.zeros_like(image), 3) == [10]


def test_class_overlay_is_transparent_on_background_and_coloured_elsewhere():
    rgba = class_overlay(np.array([[0, 1], [2, 3]]))
    assert rgba.dtype == np.uint8 and rgba.shape == (2, 2, 4)
    assert rgba[0, 0, 3] == 0 and (rgba[[0, 1, 1], [1, 0, 1], 3] == 140).all()
    assert tuple(rgba[0, 1, :3]) == (227, 26, 28)  # class 1 red, as in report.CLASS_COLOURS
    picture = composite(np.full((4, 4), 100, np.uint8), np.ones((4, 4), int), np.zeros((4, 4), int))
    assert picture.shape == (128, (3 * 4 + 2 * 2) * 32, 3)  # three panels, enlarged ×32
    assert tuple(picture[0, 0]) == (100, 100, 100)
    alpha = 140 / 255  # truth blended over the grey image
    assert tuple(picture[0, 6 * 32]) == tuple(
        round(100 * (1 - alpha) + c * alpha) for c in (227, 26, 28)
    )


def test_previews_take_at_most_their_budget_of_the_training_time(monkeypatch):
    from types import SimpleNamespace

    from braver.train import tracking

    clock = [1000.0]
    monkeypatch.setattr(tracking.time, "perf_counter", lambda: clock[0])
    previews = PreviewCallback(budget=0.05)
    previews.learn = SimpleNamespace(epoch=0, n_epoch=10)
    assert previews._due()  # the first epoch always gets previews
    previews.cost, previews.made_at = 6.0, 1000.0  # they took 6 s
    previews.learn.epoch = 1
    clock[0] = 1000.0 + 100  # 100 s of training: 5 % is 5 s, less than 6 s
    assert not previews._due()
    clock[0] = 1000.0 + 120
    assert previews._due()
    clock[0] = 1000.0 + 1
    previews.learn.epoch = 9  # the fit's last epoch always gets them
    assert previews._due()
    every_other = PreviewCallback(every=2, budget=None)
    every_other.learn = SimpleNamespace(epoch=0, n_epoch=10)
    every_other.made_at = 0.0
    due = []
    for epoch in range(10):
        every_other.learn.epoch = epoch
        due.append(every_other._due())
    assert [epoch for epoch, yes in enumerate(due) if yes] == [1, 3, 5, 7, 9]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One tiny run (2 + 1 epochs) with previews, live.json and W&B offline."""
    pytest.importorskip("wandb")
    from braver.recipe import load_recipe, shipped_recipe
    from braver.train import train_from_recipe

    root = tmp_path_factory.mktemp("tracked")
    saved = dict(os.environ)
    os.environ.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(root / "wandb-config"),
        WANDB_CACHE_DIR=str(root / "wandb-cache"),
        WANDB_DATA_DIR=str(root / "wandb-data"),
    )
    try:
        cache = tiny.write_tiny_cache(root / "cache")
        # the runner's own wiring: previews from the recipe, LiveStatus, W&B with --wandb
        recipe = load_recipe(
            shipped_recipe("brain"),
            [*TINY, "report.preview_cases=2", "report.preview_slices=3", "report.preview_budget=0"],
        )
        torch.manual_seed(0)
        folder = train_from_recipe(
            recipe,
            cache=cache.root,
            out=root / "runs",
            evaluate=True,
            wandb=True,
            run_extra={"wandb_group": "study-1"},
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return folder, cache


def test_previews_hold_each_channel_the_truth_and_the_latest_prediction(tracked_run):
    folder, cache = tracked_run
    index = json.loads((folder / "previews" / "index.json").read_text())
    assert index["version"] == 3  # one per epoch: 2 of stage 1, 1 of stage 2
    last = (folder / "history.csv").read_text().splitlines()[-1].split(",")
    assert (index["stage"], index["epoch"]) == ("stage2", int(last[1]))
    assert [c["name"] for c in index["classes"]] == ["necrosis", "edema", "enhancing"]
    run = json.loads((folder / "run.json").read_text())
    (case,) = index["cases"]  # the run has one validation case
    assert case["case"] == run["validation_cases"][0]
    assert case["channels"] == ["t1", "t1c", "t2", "flair"] and case["display"] == "flair"
    assert case["size"] == [40, 40] and case["aspect"] == 1.0
    label = np.asarray(cache.case(case["case"]).label)
    assert case["slices"] == preview_slices(label, np.asarray(cache.case(case["case"]).image), 3)
    for z in case["slices"]:
        truth = np.asarray(Image.open(folder / "previews" / case["folder"] / f"truth_z{z}.png"))
        # drawn upright (Y up): the PNG's first row is the volume's last
        assert np.array_equal(truth[::-1, :, 3] > 0, label[z] > 0)
        pred = np.asarray(Image.open(folder / "previews" / case["folder"] / f"pred_z{z}.png"))
        assert pred.shape == (40, 40, 4)
        flair = np.asarray(Image.open(folder / "previews" / case["folder"] / f"flair_z{z}.png"))
        assert flair.shape == (40, 40) and flair.max() == 255
    overlay = Image.open(folder / "previews" / case["folder"] / "overlay.png")
    assert overlay.size == (3 * 4 * 40 + 4 * 4, 4 * 40)  # 40 rows enlarged ×4 to reach 128


def test_live_status_names_this_process_and_the_last_stage(tracked_run):
    folder, _ = tracked_run
    live = json.loads((folder / "live.json").read_text())
    assert live["pid"] == os.getpid() and live["status"] == "running"
    last = (folder / "history.csv").read_text().splitlines()[-1].split(",")
    assert (live["stage"], live["epoch"]) == ("stage2", int(last[1]))
    assert live["epochs"] == live["epoch"] + 1  # written after the last epoch
    assert live["updated"] >= live["started"]


def test_offline_wandb_run_holds_config_metrics_images_and_the_final_table(tracked_run):
    folder, _ = tracked_run
    (offline,) = (folder / "wandb").glob("offline-run-*")
    run = wandb_offline.read_offline_run(offline)
    assert (run["name"], run["group"]) == (folder.name, "study-1")
    assert run["config"]["stage1"]["epochs"] == 2
    assert run["config"]["model"]["name"] == "twopath"
    assert (
        run["config"]["run"]["validation_cases"]
        == json.loads((folder / "run.json").read_text())["validation_cases"]
    )
    history = [row for row in run["history"] if "epoch" in row]
    epochs = [row for row in history if any(k.endswith("/train_loss") for k in row)]
    assert [row["epoch"] for row in epochs] == [0, 1, 2]
    csv_rows = (folder / "history.csv").read_text().splitlines()[1:]
    first_loss = float(csv_rows[0].split(",")[2])
    assert epochs[0]["stage1/train_loss"] == pytest.approx(first_loss)
    assert "stage2/valid_loss" in epochs[2] and "stage2/seconds" in epochs[2]
    images = [k for row in epochs for k in row if k.startswith("previews/") and k.endswith("/path")]
    assert len(images) == 3  # one case, each epoch
    assert any("learning_curves" in k for k in history[-1])
    metrics = json.loads((folder / "metrics.json").read_text())
    assert run["summary"]["whole_tumor_dice"] == pytest.approx(metrics["whole_tumor_dice"])
    files = run["files"]
    assert (
        len([f for f in files if f.startswith("media/images/previews/") and f.endswith(".png")])
        == 3
    )
    assert any(f.startswith("media/table/whole_volume_metrics") for f in files)

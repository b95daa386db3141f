"""Progress where it runs: plain lines in a log, a live display in a terminal."""

from __future__ import annotations

import io

import pytest
from fastai.callback.progress import ProgressCallback
from rich.console import Console

from braver.train.callbacks import History
from braver.train.progress import TrainingProgress, epoch_line


@pytest.fixture
def learner(tmp_path):
    from fastai.test_utils import synth_learner

    learn = synth_learner(n_trn=2, n_val=1, path=tmp_path)  # 2 train batches, 1 validation
    learn.remove_cb(ProgressCallback)
    return learn


def test_epoch_line_reads_rows_from_the_callback_and_from_the_csv():
    row = {"stage": "stage1", "epoch": 2, "train_loss": 0.5, "lr": 0.005, "time": 3.4}
    assert epoch_line(row, 20) == "stage1 epoch 3/20  train_loss 0.5000  lr 5.00e-03  3 s"
    text = {"stage": "stage2", "epoch": "0", "valid_loss": "0.25", "note": "x"}
    assert epoch_line(text) == "stage2 epoch 1  valid_loss 0.2500  note x"


def test_not_a_terminal_one_plain_line_per_epoch(learner, tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    learner.fit(3, cbs=[History(tmp_path / "history.csv", "stage1"), TrainingProgress(console)])
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"stage1 epoch {i}/3" for i in (1, 2, 3)]
    assert all("train_loss" in line and "valid_loss" in line for line in lines)
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_in_a_terminal_a_live_line_with_stage_epoch_batch_loss_and_eta(learner, tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    progress = TrainingProgress(console)
    assert progress.live
    seen = []

    class Peek(History):  # records what the live line shows after each batch
        order = 67

        def after_batch(self):
            seen.append(
                progress.bar.tasks[0].fields.copy() | {"done": progress.bar.tasks[0].completed}
            )

        def after_epoch(self):
            pass

    learner.fit(
        2, cbs=[History(tmp_path / "history.csv", "stage1"), progress, Peek(tmp_path / "x.csv")]
    )
    assert progress.bar is None  # stopped at the end of the fit
    assert (len(learner.dls.train), len(learner.dls.valid)) == (2, 1)
    assert [(s["epoch"], s["phase"], s["batch"], s["done"]) for s in seen] == [
        (1, "train", "1/2", 1),
        (1, "train", "2/2", 2),
        (1, "valid", "1/1", 3),
        (2, "train", "1/2", 4),
        (2, "train", "2/2", 5),
        (2, "valid", "1/1", 6),
    ]
    assert seen[0]["stage"] == "stage1" and seen[0]["epochs"] == 2
    assert float(seen[0]["loss"]) > 0
    text = out.getvalue()
    assert "stage1 epoch 1/2" in text and "stage1 epoch 2/2" in text
    assert "ETA" in text

"""train_from_recipe's wiring that the other runner tests leave open: a cascade's first fit in
the run folder (its checkpoints, progress and kept epochs), the W&B tracker's exit codes, and
rollbacks of a run that recovers. Tiny seeded cache, one short fit per test."""

import io
import json
from types import SimpleNamespace

import pytest
from fastai.callback.core import Callback
from rich.console import Console
from tiny import TINY as TINY_RUN

from braver.errors import BraverError
from braver.recipe import load_recipe, shipped_recipe
from braver.train import runner

TINY = [*TINY_RUN, "select.by=last"]


def _stages(folder):
    return [line.split(",")[0] for line in (folder / "history.csv").read_text().splitlines()[1:]]


def _progress(folder):
    return json.loads((folder / "progress.json").read_text())


class _Interrupt(Callback):
    """Stops the process (as Ctrl-C would) after the first fit's checkpoint of epoch 0."""

    order = 75  # after Checkpoint (70)

    def after_epoch(self):
        raise KeyboardInterrupt


def test_a_cascade_checkpoints_its_first_fit_resumes_it_and_records_its_kept_epochs(
    tiny_cache, tmp_path
):
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "model.name=mf_cascade"])
    with pytest.raises(KeyboardInterrupt):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "runs", evaluate=False,
            callbacks=[_Interrupt()],
        )  # fmt: skip
    (folder,) = (tmp_path / "runs").iterdir()
    # the first network's own fit wrote the checkpoint: its name, epochs and stage
    progress = _progress(folder)
    assert progress["fit"] == "first" and progress["finished"] == []
    assert progress["epochs_done"] == 1 and progress["stage"] == "first.stage1"
    assert (folder / "checkpoint.safetensors").exists()
    out = io.StringIO()
    runner.train_from_recipe(
        recipe, resume=folder, evaluate=False, console=Console(file=out, width=200)
    )
    assert "after nothing finished, 1 epochs of first" in out.getvalue()
    assert "not trained alone" not in out.getvalue()
    assert f"Done {folder}" in " ".join(out.getvalue().split())
    assert _stages(folder) == ["first.stage1", "first.stage2", "stage1", "stage2"]
    progress = _progress(folder)
    assert progress["finished"] == ["first", "main"] and progress["done"] is True
    info = json.loads((folder / "run.json").read_text())
    # the kept epochs of both fits: the first network's (found as CascadeFirst; its stage 2,
    # trained by this process, counted from the first fit's start) and the main fit's
    kept = info["extra"]["kept_epochs"]
    assert "postprocess" not in info["extra"]  # evaluate=False: nothing chosen on volumes
    assert (kept["first.stage2"], kept["stage1"], kept["stage2"]) == (1, 0, 1)


def test_a_cascade_whose_first_network_is_frozen_says_it_was_not_trained_alone(
    tiny_cache, tmp_path
):
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "model.name=mf_cascade"])
    out = io.StringIO()
    folder = runner.train_from_recipe(
        recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False, freeze=["first"],
        console=Console(file=out, width=200),
    )  # fmt: skip
    assert "first: not trained alone (the first network is frozen)" in out.getvalue()
    assert _stages(folder) == ["stage1", "stage2"]
    assert _progress(folder)["finished"] == ["main"]  # no first fit ran


class _FakeTracker(Callback):
    """Stands in for WandbTracker: records how the run finishes it."""

    finished: list = []

    def __init__(self, group=None):
        self.group = group

    def finish(self, folder=None, exit_code=0):
        _FakeTracker.finished.append(
            (folder, exit_code, (folder / "metrics.json").exists() if folder else None)
        )


@pytest.fixture
def tracker(monkeypatch):
    from braver.train import tracking

    monkeypatch.setattr(tracking, "require_wandb", lambda: None)
    monkeypatch.setattr(tracking, "WandbTracker", _FakeTracker)
    _FakeTracker.finished = []
    return _FakeTracker.finished


class _Blow(Callback):
    """At run epochs in ``at``, multiply the learning rate by a huge factor: a spike."""

    order = -3

    def __init__(self, at):
        self.at = set(at)

    def before_epoch(self):
        if getattr(self.learn, "epoch_offset", 0) + self.epoch in self.at:
            self.learn.opt.set_hyper("lr", 1e9)


def test_a_run_that_rolls_back_once_and_recovers_records_the_rollback(
    tiny_cache, tmp_path, tracker
):
    recipe = load_recipe(
        shipped_recipe("brain"),
        [*TINY, "stage1.epochs=3", "optim.divergence_retries=1", "optim.lr=0.01"],
    )
    model = runner.recipe_model(recipe, tiny_cache)
    with pytest.warns(UserWarning, match="stage1 epoch 1 diverged"):
        folder = runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False, wandb=True,
            callbacks=[_Blow(at=[1])], model=model,
        )  # fmt: skip
    # the network handed in comes back whole and trainable (stage 2 froze all but its output)
    assert all(p.requires_grad for p in model.parameters())
    info = json.loads((folder / "run.json").read_text())
    assert info["extra"]["diverged"] is False
    assert [(r["stage"], r["epoch"]) for r in info["extra"]["rollbacks"]] == [("stage1", 1)]
    assert _stages(folder) == ["stage1"] * 3 + ["stage2"]  # it went on to stage 2
    assert _progress(folder)["diverged"] is False
    # W&B closed once, as a success, after metrics.json was written
    assert tracker == [(folder, 0, True)]


def test_a_diverged_run_finishes_its_tracker_as_failed(tiny_cache, tmp_path, tracker):
    recipe = load_recipe(
        shipped_recipe("brain"),
        [*TINY, "stage1.epochs=2", "optim.divergence_retries=0", "optim.lr=0.01"],
    )
    with pytest.warns(UserWarning, match="diverged"):
        folder = runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False, wandb=True,
            callbacks=[_Blow(at=[1])],
        )  # fmt: skip
    assert json.loads((folder / "run.json").read_text())["extra"]["diverged"] is True
    assert tracker == [(folder, 1, True)]


def test_an_error_in_the_fit_or_nan_weights_finish_the_tracker_as_failed(
    tiny_cache, tmp_path, tracker
):
    import torch

    class Fail(Callback):
        def before_fit(self):
            raise RuntimeError("broken callback")

    recipe = load_recipe(shipped_recipe("brain"), TINY)
    with pytest.raises(RuntimeError, match="broken callback"):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "a", wandb=True, callbacks=[Fail()]
        )
    (folder,) = (tmp_path / "a").iterdir()
    assert tracker == [(folder, 1, False)]

    class Poison(Callback):
        order = 90

        def after_fit(self):
            with torch.no_grad():
                next(self.learn.model.parameters()).fill_(float("nan"))

    tracker.clear()
    with pytest.raises(BraverError, match="diverged"):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "b", wandb=True, callbacks=[Poison()]
        )
    (folder,) = (tmp_path / "b").iterdir()
    assert tracker == [(folder, 1, False)]
    assert _progress(folder)["diverged"] is True


@pytest.mark.parametrize("cases, chosen", [(2, ["v0", "v1"]), (0, ["v0", "v1", "v2"])])
def test_select_weights_scores_the_recipes_cases_device_and_tempering(monkeypatch, cases, chosen):
    """``_select_weights`` hands ``select_weights`` the first ``select.cases`` validation cases
    (0: all), the device and ``select.tempered``; records the choice; returns its maps."""
    import torch

    from braver.train import selection

    calls = []

    def select(model, learn, cache, case_ids, **kwargs):
        calls.append((learn, cache, list(case_ids), kwargs))
        model.eval()  # as the real one leaves it, after predicting
        scores = {"stage1": 0.5, "stage2": 0.25}
        return selection.Selection("stage1", scores, list(case_ids), {"v0": "map"})

    monkeypatch.setattr(selection, "select_weights", select)
    recipe = load_recipe(shipped_recipe("brain"), [f"select.cases={cases}", "select.tempered=0.25"])
    model, info = torch.nn.Linear(1, 1), SimpleNamespace(extra={})
    console = Console(file=io.StringIO(), width=200)
    maps = runner._select_weights(
        recipe, model, "LEARN", "CACHE", ["v0", "v1", "v2"], "cuda:7", info, console
    )
    assert calls == [("LEARN", "CACHE", chosen, {"device": "cuda:7", "tempered": 0.25})]
    assert info.extra["selection"] == {
        "kept": "stage1",
        "mean_dice": {"stage1": 0.5, "stage2": 0.25},
        "cases": chosen,
    }
    assert maps == {"v0": "map"} and model.training  # back in training mode
    said = console.file.getvalue()
    assert f"Choosing the weights on {len(chosen)} validation volumes" in said
    assert "kept stage1 (mean Dice stage1 0.500, stage2 0.250)" in said


def test_a_new_run_goes_to_runs_by_default(tiny_cache, tmp_path, monkeypatch):
    """Stopped as its callbacks are made (no fit): the run folder is under ./runs."""
    from pathlib import Path

    class Stop(Exception):
        pass

    def stop(recipe, folder, *args):
        raise Stop(folder)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "_run_callbacks", stop)
    with pytest.raises(Stop) as stopped:
        runner.train_from_recipe(load_recipe(shipped_recipe("brain"), TINY), cache=tiny_cache)
    assert stopped.value.args[0].parent == Path("runs")


class _InterruptMain(Callback):
    """Stops the process after the main fit's first checkpoint (the first network is done)."""

    order = 75  # after Checkpoint (70)

    def after_epoch(self):
        if not str(getattr(self.learn, "stage", "")).startswith("first."):
            raise KeyboardInterrupt


def test_a_cascade_resumed_in_its_main_fit_still_records_the_first_networks_kept_epochs(
    tiny_cache, tmp_path
):
    """The first fit ended in the interrupted process: progress.json carries what its stages
    kept (recorded as that fit ended), and the resumed run's run.json lists them."""
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "model.name=mf_cascade"])
    with pytest.raises(KeyboardInterrupt):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "runs", evaluate=False,
            callbacks=[_InterruptMain()],
        )  # fmt: skip
    (folder,) = (tmp_path / "runs").iterdir()
    progress = _progress(folder)
    assert progress["finished"] == ["first"] and progress["fit"] == "main"
    assert {"first.stage1", "first.stage2"} <= set(progress["kept_epochs"])
    runner.train_from_recipe(recipe, resume=folder, evaluate=False)
    kept = json.loads((folder / "run.json").read_text())["extra"]["kept_epochs"]
    assert (kept["first.stage1"], kept["first.stage2"]) == (0, 1)
    assert "stage2" in kept

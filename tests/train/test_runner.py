"""The recipe runner: one fit of one Learner with the paper's callbacks, into a run folder."""

import io
import json
import time

import numpy as np
import pytest
import torch
from fastai.callback.core import Callback
from rich.console import Console
from safetensors.torch import load_file
from tiny import TINY

from braver.errors import BraverError
from braver.recipe import load_recipe, shipped_recipe
from braver.train import runner


def _stages(folder):
    return [line.split(",")[0] for line in (folder / "history.csv").read_text().splitlines()[1:]]


@pytest.mark.slow
def test_cascade_trains_first_network_with_both_stages_then_keeps_it_frozen(
    tiny_cache, tmp_path, monkeypatch
):
    from braver.train import run_folder

    snapshots = {}
    save = run_folder.save_checkpoint

    def remember(folder, model, state):
        save(folder, model, state)
        key = ",".join(state["finished"])
        snapshots.setdefault(key, {k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(run_folder, "save_checkpoint", remember)
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "model.name=mf_cascade"])
    torch.manual_seed(0)
    folder = runner.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False)
    after_first = snapshots["first"]
    final = load_file(str(folder / "model.safetensors"))
    for name, value in final.items():
        if name.startswith("first."):
            assert torch.equal(value, after_first[name]), name
    changed = [
        n for n in final if n.startswith("second.") and not torch.equal(final[n], after_first[n])
    ]
    assert changed
    # the paper trains TwoPathCNN* with both phases before fixing it
    assert _stages(folder) == ["first.stage1", "first.stage2", "stage1", "stage2"]


class _Blow(Callback):
    """From epoch ``at`` on, multiply the learning rate by a huge factor: a schedule that diverges."""

    order = -3

    def __init__(self, at: int):
        self.at = at

    def before_epoch(self):
        if getattr(self.learn, "epoch_offset", 0) + self.epoch >= self.at:
            self.learn.opt.set_hyper("lr", 1e9)


class _Snapshot(Callback):
    order = 80

    def __init__(self):
        self.states = []

    def after_epoch(self):
        self.states.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})


def test_a_diverging_run_rolls_back_keeps_its_best_epoch_and_warns(tiny_cache, tmp_path):
    recipe = load_recipe(
        shipped_recipe("brain"),
        [*TINY, "stage1.epochs=3", "optim.divergence_retries=1", "optim.lr=0.01"],
    )
    snapshot = _Snapshot()
    out = io.StringIO()
    with pytest.warns(UserWarning, match="diverged"):
        folder = runner.train_from_recipe(
            recipe,
            cache=tiny_cache.root,
            out=tmp_path,
            evaluate=False,
            console=Console(file=out, width=200),
            progress=False,
            callbacks=[_Blow(at=1), snapshot],
        )
    info = json.loads((folder / "run.json").read_text())
    assert info["extra"]["diverged"] is True
    assert [r["epoch"] for r in info["extra"]["rollbacks"]] == [1, 2]
    assert info["extra"]["kept_epochs"]["stage1"] == 0
    final = load_file(str(folder / "model.safetensors"))
    for name, value in final.items():  # the good epoch's weights, not the diverged ones
        assert torch.equal(value, snapshot.states[0][name]), name
    assert "training diverged" in out.getvalue()
    assert _stages(folder) == ["stage1", "stage1", "stage1"]  # stage 2 never ran


def test_a_run_whose_weights_are_not_finite_is_an_error_and_writes_no_weights(tiny_cache, tmp_path):
    from braver.errors import BraverError
    from braver.runs import WEIGHTS_FILE

    class Poison(Callback):
        order = 90

        def after_fit(self):
            with torch.no_grad():
                next(self.learn.model.parameters()).fill_(float("nan"))

    recipe = load_recipe(shipped_recipe("brain"), TINY)
    with pytest.raises(BraverError, match="diverged"):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False, callbacks=[Poison()]
        )
    assert not list(tmp_path.glob(f"*/{WEIGHTS_FILE}"))


def test_history_records_the_learning_rate_and_momentum_each_epoch_used(tiny_cache, tmp_path):
    import csv

    recipe = load_recipe(
        shipped_recipe("brain"),
        [
            *TINY,
            "stage1.epochs=3",
            "optim.lr_saturate=2",
            "optim.momentum_epochs=2",
            "stage2.lr=0.001",
        ],  # fmt: skip
    )
    folder = runner.train_from_recipe(recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False)
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [r["stage"] for r in rows] == ["stage1"] * 3 + ["stage2"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.005, 0.00275, 0.0005, 0.001])
    assert [float(r["momentum"]) for r in rows] == pytest.approx([0.5, 0.7, 0.9, 0.5])
    # the run folder's report and live status, written by the runner's own callbacks
    assert "<html" in (folder / "report.html").read_text()[:200].lower()
    assert json.loads((folder / "live.json").read_text())["epoch"] == 3
    info = json.loads((folder / "run.json").read_text())
    assert (
        info["extra"]["trainable_parameters"]["stage2"]
        < info["extra"]["trainable_parameters"]["stage1"]
    )


@pytest.mark.slow
def test_flips_are_announced_off_for_an_even_input_size(tiny_cache, tmp_path):
    out = io.StringIO()
    recipe = load_recipe(
        shipped_recipe("brain"),
        [
            *TINY,
            "model.name=local_cascade",
            "data.flip=true",
            "cascade.first_epochs=0",
            "cascade.first_stage2_epochs=0",
        ],  # fmt: skip
    )
    runner.train_from_recipe(
        recipe,
        cache=tiny_cache.root,
        out=tmp_path,
        evaluate=False,
        console=Console(file=out, width=200),
        progress=False,
    )
    text = out.getvalue()
    assert "data.flip is off for inputs 33+56" in text and "even input size" in text


class _Interrupt(Callback):
    """Stops the process (as Ctrl-C would) after the checkpoint of run epoch ``at``."""

    order = 75  # after Checkpoint (70)

    def __init__(self, at: int):
        self.at = at

    def after_epoch(self):
        if getattr(self.learn, "epoch_offset", 0) + self.epoch == self.at:
            raise KeyboardInterrupt


class _Watch(Callback):
    """Records the weights at the start of the fit, and each epoch's drawn centres and lr."""

    order = 80

    def __init__(self):
        self.start, self.centres, self.lrs = None, [], []

    def before_fit(self):
        self.start = {k: v.clone() for k, v in self.learn.model.state_dict().items()}

    def before_train(self):
        self.lrs.append(self.learn.opt.hypers[-1]["lr"])

    def after_train(self):
        self.centres.append(self.learn.dls.train.centres.copy())


def test_resume_loads_the_checkpoint_and_continues_schedule_and_patches(tiny_cache, tmp_path):
    from braver.train.stages import paper_lr

    sets = [*TINY, "stage1.epochs=3", "optim.lr_saturate=3"]
    recipe = load_recipe(shipped_recipe("brain"), sets)
    whole = _Watch()
    runner.train_from_recipe(
        recipe, cache=tiny_cache.root, out=tmp_path / "whole", evaluate=False, callbacks=[whole]
    )
    with pytest.raises(KeyboardInterrupt):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "cut", evaluate=False,
            callbacks=[_Interrupt(at=1)],
        )  # fmt: skip
    (folder,) = (tmp_path / "cut").iterdir()
    checkpoint = load_file(str(folder / "checkpoint.safetensors"))
    resumed = _Watch()
    runner.train_from_recipe(recipe, resume=folder, evaluate=False, callbacks=[resumed])
    for name, value in checkpoint.items():  # the resumed fit starts from the checkpoint
        assert torch.equal(resumed.start[name], value), name
    # epoch 2 of the run: its own learning rate and its own patches, not epoch 0's again
    assert resumed.lrs[0] == pytest.approx(paper_lr(recipe.optim, recipe.optim.lr, 2))
    assert resumed.lrs[0] == pytest.approx(whole.lrs[2])
    assert (resumed.centres[0] == whole.centres[2]).all()
    assert not (resumed.centres[0] == whole.centres[0]).all()


def test_stage_two_trains_only_the_output_layer_on_natural_patches(tiny_cache, tmp_path):
    """Every non-output weight bit-identical through stage 2, which draws natural patches."""
    from braver.data.sampling import PatchSampler

    samplings = []
    before_stage2 = {}

    class Spy(Callback):
        order = 80

        def before_train(self):
            samplings.append((self.learn.stage, self.learn.dls.train.sampling))
            if self.learn.stage == "stage2" and not before_stage2:
                before_stage2.update(
                    {k: v.clone() for k, v in self.learn.model.state_dict().items()}
                )

    calls = []
    sample = PatchSampler.sample

    def counting(self, n, mode, rng):
        calls.append(mode)
        return sample(self, n, mode, rng)

    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "stage2.epochs=2"])
    PatchSampler.sample = counting
    try:
        folder = runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path, evaluate=False, callbacks=[Spy()]
        )
    finally:
        PatchSampler.sample = sample
    assert samplings == [("stage1", "balanced"), ("stage2", "natural"), ("stage2", "natural")]
    assert "natural" in calls
    final = load_file(str(folder / "model.safetensors"))
    for name, value in final.items():
        if name.startswith("output."):
            assert not torch.equal(value, before_stage2[name]), name
        else:
            assert torch.equal(value, before_stage2[name]), name


def test_stage_two_shifts_the_output_biases_by_the_natural_prior(tiny_cache, tmp_path):
    from braver.data.sampling import PatchSampler
    from braver.train.stages import shift_output_prior

    model = runner.recipe_model(load_recipe(shipped_recipe("brain")), tiny_cache)
    sampler = PatchSampler.from_cache(tiny_cache, tiny_cache.case_ids)
    totals = sampler.class_totals.astype(float)
    before = model.output.bias.detach().clone()
    shift_output_prior(model, sampler, 0.5)
    want = 0.5 * torch.log(torch.tensor(totals / totals.sum() * 4, dtype=torch.float32))
    torch.testing.assert_close(model.output.bias - before, want)


def test_a_run_interrupted_in_stage_two_resumes_in_stage_two(tiny_cache, tmp_path):
    """Resume after stage 2 began: stage 1 is not trained again, stage 2 goes on."""
    import csv

    sets = [*TINY, "stage1.epochs=2", "stage2.epochs=2", "select.by=last"]
    recipe = load_recipe(shipped_recipe("brain"), sets)
    with pytest.raises(KeyboardInterrupt):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, out=tmp_path / "runs", evaluate=False,
            callbacks=[_Interrupt(at=2)],
        )  # fmt: skip
    (folder,) = (tmp_path / "runs").iterdir()
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["stage"] == "stage2" and progress["stage2_start"] == 2
    watch, out = _Watch(), io.StringIO()
    runner.train_from_recipe(
        recipe, resume=folder, evaluate=False, callbacks=[watch],
        console=Console(file=out, width=200),
    )  # fmt: skip
    assert "after nothing finished, 3 epochs of main" in out.getvalue()
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [(r["stage"], r["epoch"]) for r in rows] == [
        ("stage1", "0"), ("stage1", "1"), ("stage2", "2"), ("stage2", "3"),
    ]  # fmt: skip
    assert len(watch.lrs) == 1  # only the last stage-2 epoch was trained again
    # stage 1 ended in the interrupted process: run.json still says which epoch it kept
    kept = json.loads((folder / "run.json").read_text())["extra"]["kept_epochs"]
    assert set(kept) == {"stage1", "stage2"}
    assert kept["stage1"] in (0, 1) and kept["stage2"] in (2, 3)
    from braver.train.stages import paper_lr

    # the schedule goes on inside stage 2 (its second epoch), it does not start stage 2 anew
    base = recipe.stage2.lr or recipe.optim.lr
    assert watch.lrs[0] == pytest.approx(paper_lr(recipe.optim, base, 1))


def test_a_run_records_what_it_was_given_and_chooses_on_whole_volumes(tiny_cache, tmp_path):
    """A model built from the class frequencies, frozen groups but a kept parameter, the
    extras, then weights and post-processing chosen on the validation volumes."""
    recipe = load_recipe(shipped_recipe("brain"), [*TINY, "select.by=volume", "select.cases=1"])
    frequencies, start = [], {}

    def build(given):
        frequencies.append(given)
        torch.manual_seed(1)
        model = runner.recipe_model(recipe, tiny_cache, given)
        start.update({k: v.clone() for k, v in model.state_dict().items()})
        return model

    started = time.time()
    folder = runner.train_from_recipe(
        recipe, cache=tiny_cache.root, out=tmp_path, data="the/dataset", model=build,
        freeze=["local"], keep_trainable=["local.conv1.bias"], run_extra={"setup": "test"},
    )  # fmt: skip
    elapsed = time.time() - started
    info = json.loads((folder / "run.json").read_text())
    assert 0 < info["extra"]["train_seconds"] <= elapsed + 0.1  # rounded to 0.1 s
    valid = info["validation_cases"]
    train = info["extra"]["train_cases"]
    assert sorted(train + valid) == tiny_cache.case_ids and len(valid) == 1
    # the class frequencies in the training cases' heads (every class present: no floor)
    counts = 0
    for case in map(tiny_cache.case, train):
        label = np.asarray(case.label)
        head = (np.asarray(case.image) != 0).any(axis=0) | (label > 0)
        counts = counts + np.bincount(label[head], minlength=4)
    assert frequencies == [pytest.approx((counts / counts.sum()).tolist())]
    assert (info["data"], info["cache"], info["prepare"]) == (
        "the/dataset", str(tiny_cache.root), {"tiny": True},
    )  # fmt: skip
    assert info["extra"]["setup"] == "test" and info["extra"]["recipe"] == recipe.name
    assert info["extra"]["device"] == "cpu" and "diverged" not in info["extra"]
    final = load_file(str(folder / "model.safetensors"))
    for name in ("local.conv1.weight", "local.conv2.weight", "local.conv2.bias"):
        assert torch.equal(final[name], start[name]), name  # frozen in every stage
    assert not torch.equal(final["local.conv1.bias"], start["local.conv1.bias"])
    # the weights kept, and the post-processing, chosen on the first validation volume
    selection = info["extra"]["selection"]
    assert selection["cases"] == valid[:1]
    assert selection["kept"] == max(selection["mean_dice"], key=selection["mean_dice"].get)
    assert info["extra"]["postprocess"]["fill_holes"] is False
    metrics = json.loads((folder / "metrics.json").read_text())
    assert [row["case"] for row in metrics["cases"]] == valid
    assert 0.0 <= metrics["whole_tumor_dice"] <= 1.0
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["done"] is True and progress["diverged"] is False
    assert not (folder / "checkpoint.safetensors").exists()
    with pytest.raises(BraverError, match="this run has already finished"):
        runner.train_from_recipe(recipe, resume=folder)


def test_a_run_needs_a_cache_with_labelled_cases(tmp_path):
    from braver.data.cache import write_case, write_summary
    from braver.data.labels import BRATS_2021

    recipe = load_recipe(shipped_recipe("brain"), TINY)
    with pytest.raises(BraverError, match="no cache to train on; pass --data"):
        runner.train_from_recipe(recipe, out=tmp_path)
    root = tmp_path / "cache"
    write_case(root, "c0", np.zeros((4, 2, 40, 40), np.float32), None, {"case_id": "c0"})
    write_summary(
        root, {"label_scheme": BRATS_2021.to_json(), "channels": list("abcd"), "cases": ["c0"]}
    )
    with pytest.raises(BraverError, match="cache: has no labelled case to train on"):
        runner.train_from_recipe(recipe, cache=root, out=tmp_path)
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "cache"
    ]

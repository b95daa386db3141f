"""The runner's pieces, each on its own (no fit: fast), in the order train_from_recipe uses them."""

import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from tiny import TINY

from braver.data.cache import Cache, write_case, write_summary
from braver.data.labels import BRATS_2021
from braver.data.sampling import split_cases
from braver.errors import BraverError
from braver.models import create_model
from braver.recipe import load_recipe, shipped_recipe
from braver.runs import RunInfo, save_run_info
from braver.train import runner

#: one short fit's recipe values, three epochs in all (the fit itself is replaced)
TINY_FIT = [*TINY, "stage1.epochs=2"]


def brain(*overrides):
    return load_recipe(shipped_recipe("brain"), ["model.dropout=0.0", *overrides])


def write_cache(root, labels, unlabelled=0, settings=True):
    """One case per (Z, Y, X) label array, the image non-zero (4 channels) on a 6 × 6 box;
    then ``unlabelled`` cases without a label."""
    ids = []
    for n, label in enumerate([*labels, *[None] * unlabelled]):
        image = np.zeros((4, 2, 10, 10), np.float32)
        image[:, :, 2:8, 2:8] = 1.0
        case_id = f"c{n}"
        write_case(root, case_id, image, label, {"case_id": case_id, "spacing_zyx": [1, 1, 1]})
        ids.append(case_id)
    write_summary(
        root,
        {
            "label_scheme": BRATS_2021.to_json(),
            "channels": ["t1", "t1c", "t2", "flair"],
            "cases": ids,
            **({"settings": {"clip_percentiles": [2.0, 98.0]}} if settings else {}),
        },
    )
    return Cache.open(root)


def label_with(counts):
    """A (2, 10, 10) label with ``counts[k]`` voxels of class k inside the 6 × 6 box."""
    label = np.zeros((2, 10, 10), np.uint8)
    box = label[:, 2:8, 2:8].reshape(-1)
    at = 0
    for k, count in counts.items():
        box[at : at + count] = k
        at += count
    label[:, 2:8, 2:8] = box.reshape(2, 6, 6)
    return label


def test_a_new_start_splits_the_labelled_cases_by_the_recipes_seed(tmp_path):
    cache = write_cache(tmp_path / "cache", [label_with({1: 3})] * 5, unlabelled=2)
    labelled = ["c0", "c1", "c2", "c3", "c4"]
    recipe = brain("data.validation_fraction=0.4", "data.seed=3")
    start = runner.new_start(recipe, cache.root, ["local"], ["local.conv1.bias"])
    assert isinstance(start.cache, Cache) and start.cache.root == cache.root
    assert (start.train_cases, start.valid_cases) == split_cases(labelled, 0.4, 3, 1)
    assert len(start.valid_cases) == 2 and sorted(start.train_cases + start.valid_cases) == labelled
    other = runner.new_start(brain("data.validation_fraction=0.4", "data.seed=5"), cache)
    assert other.valid_cases != start.valid_cases  # the seed chooses
    at_least = runner.new_start(
        brain("data.validation_fraction=0.01", "data.min_validation_cases=2"), cache
    )
    assert len(at_least.valid_cases) == 2
    folds = [
        runner.new_start(brain("data.seed=3", f"data.fold={k}", "data.folds=2"), cache)
        for k in (0, 1)
    ]
    assert [f.valid_cases for f in folds] == [
        split_cases(labelled, 0.2, 3, 1, fold=k, folds=2)[1] for k in (0, 1)
    ]
    assert sorted(folds[0].valid_cases + folds[1].valid_cases) == labelled  # each case once
    assert len(folds[0].valid_cases) == 3  # the fold, not the fraction's single case
    with pytest.raises(BraverError) as error:
        runner.new_start(brain("data.fold=0", "data.folds=6"), cache)
    assert str(error.value) == (
        f"{cache.root}: 6 folds need as many labelled cases; there are 5; use at most 5 folds."
    )
    assert start.state == {"finished": [], "fit": None, "epochs_done": 0}
    assert start.state is not other.state  # each start its own progress
    assert (start.folder, start.info, start.recipe) == (None, None, recipe)
    assert (start.freeze, start.keep_trainable) == (["local"], ["local.conv1.bias"])


def test_a_new_start_needs_a_cache_with_a_labelled_case(tmp_path):
    with pytest.raises(BraverError, match="no cache to train on; pass --data"):
        runner.new_start(brain(), None)
    cache = write_cache(tmp_path / "cache", [], unlabelled=1)
    with pytest.raises(BraverError, match="has no labelled case"):
        runner.new_start(brain(), cache)
    one = write_cache(tmp_path / "one", [label_with({1: 1})])
    assert runner.new_start(brain(), one).train_cases == ["c0"]  # one case: all training


def write_interrupted_run(folder, cache, progress=None, transfer=None):
    recipe = brain("stage1.epochs=7")
    model = create_model("twopath", in_channels=4, num_classes=4)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=cache.channels,
        cache=str(cache.root),
        validation_cases=["c2"],
        extra={"train_cases": ["c1", "c0"], **({"transfer": transfer} if transfer else {})},
    )
    folder.mkdir()
    save_run_info(folder, info)
    (folder / "recipe.toml").write_text(recipe.to_toml())
    if progress is not None:
        (folder / "progress.json").write_text(json.dumps(progress))
    return recipe


def test_a_resumed_start_continues_the_run_folders_cases_recipe_and_progress(tmp_path):
    cache = write_cache(tmp_path / "cache", [label_with({1: 3})] * 3)
    progress = {"finished": ["first"], "fit": "main", "epochs_done": 2, "stage": "stage1"}
    transfer = {"freeze": ["local"], "kept_trainable": ["local.conv1.bias"]}
    recipe = write_interrupted_run(tmp_path / "run", cache, progress, transfer)
    start = runner.resumed_start(str(tmp_path / "run"))
    assert start.folder == tmp_path / "run" and start.info.cache == str(cache.root)
    assert start.recipe.stage1.epochs == 7 and start.recipe.to_toml() == recipe.to_toml()
    assert start.cache.root == cache.root
    assert (start.train_cases, start.valid_cases) == (["c1", "c0"], ["c2"])
    assert start.state == progress
    # a transfer setup's groups, unless others are given
    assert (start.freeze, start.keep_trainable) == (["local"], ["local.conv1.bias"])
    given = runner.resumed_start(tmp_path / "run", ["global"], ["global.conv1.bias"])
    assert (given.freeze, given.keep_trainable) == (["global"], ["global.conv1.bias"])


def test_a_resumed_start_without_progress_starts_at_nothing_and_refuses_a_finished_run(tmp_path):
    cache = write_cache(tmp_path / "cache", [label_with({1: 3})] * 3)
    write_interrupted_run(tmp_path / "fresh", cache)
    start = runner.resumed_start(tmp_path / "fresh")
    assert start.state == {"finished": [], "fit": None, "epochs_done": 0}
    assert (start.freeze, start.keep_trainable) == ((), ())
    write_interrupted_run(tmp_path / "done", cache, {"finished": ["main"], "done": True})
    with pytest.raises(BraverError, match="already finished; start a new run without --resume"):
        runner.resumed_start(tmp_path / "done")
    assert runner.resumed_start(tmp_path / "fresh").state["finished"] == []


def test_class_frequencies_are_the_training_cases_shares_with_a_floor(tmp_path):
    labels = [label_with({1: 6, 2: 12}), label_with({1: 2, 2: 4}), label_with({3: 40})]
    cache = write_cache(tmp_path / "cache", labels)
    # 72 foreground voxels a case; c2 is not a training case here
    counts = np.array([72 * 2 - 24, 8, 16, 0], float)
    floor = 1e-4 * counts.sum()
    expected = np.maximum(counts, floor) / np.maximum(counts, floor).sum()
    frequencies = runner.class_frequencies(cache, ["c0", "c1"])
    assert isinstance(frequencies, list) and frequencies[3] > 0
    np.testing.assert_allclose(frequencies, expected, rtol=1e-12)
    np.testing.assert_allclose(sum(frequencies), 1.0)
    np.testing.assert_allclose(
        runner.class_frequencies(cache, ["c2"]), [32 / 72, 0, 0, 40 / 72], atol=2e-4
    )


def test_the_starting_model_is_the_given_one_or_the_recipes_with_the_checkpoint(tmp_path):
    cache = write_cache(tmp_path / "cache", [label_with({1: 3})])
    frequencies = [0.7, 0.1, 0.15, 0.05]
    given = []

    def build(freqs):
        given.append(freqs)
        return create_model("twopath", in_channels=4, num_classes=4)

    runner.starting_model(brain(), cache, frequencies, build)
    runner.starting_model(brain("model.bias_from_frequencies=false"), cache, frequencies, build)
    assert given == [frequencies, None]
    module = create_model("twopath", in_channels=4, num_classes=4)
    assert runner.starting_model(brain(), cache, frequencies, module) is module
    torch.manual_seed(0)
    built = runner.starting_model(brain(), cache, frequencies)
    torch.manual_seed(0)
    expected = runner.recipe_model(brain(), cache, frequencies)
    assert built.config == expected.config
    for (name, value), reference in zip(
        built.state_dict().items(), expected.state_dict().values(), strict=True
    ):
        assert torch.equal(value, reference), name
    # with the checkpoint's weights when it exists
    saved = {k: torch.full_like(v, 0.5) for k, v in expected.state_dict().items()}
    save_file(saved, str(tmp_path / "checkpoint.safetensors"))
    loaded = runner.starting_model(
        brain(), cache, frequencies, None, tmp_path / "checkpoint.safetensors"
    )
    assert all((v == 0.5).all() for v in loaded.state_dict().values())
    missing = runner.starting_model(brain(), cache, frequencies, module, tmp_path / "none")
    assert missing is module and not (module.state_dict()["local.conv1.bias"] == 0.5).all()


def test_a_new_runs_info_records_what_it_trains_on(tmp_path):
    cache = write_cache(tmp_path / "cache", [label_with({1: 3})] * 3)
    model = create_model("twopath", in_channels=4, num_classes=4)
    train, valid = ["c0", "c2"], ["c1"]
    info = runner.new_run_info(
        brain(), model, cache, train, valid, data=tmp_path / "data", device="cuda:1",
        run_extra={"setup": "s", "device": "given"},
    )  # fmt: skip
    assert (info.kind, info.model, info.channels) == ("brain", model.config, cache.channels)
    assert info.label_scheme == BRATS_2021.to_json() and info.cache == str(cache.root)
    assert info.data == str(tmp_path / "data") and info.validation_cases == ["c1"]
    assert info.prepare == {"clip_percentiles": [2.0, 98.0]}
    assert info.extra == {
        "recipe": brain().name, "train_cases": ["c0", "c2"], "device": "given", "setup": "s",
    }  # fmt: skip
    plain = runner.new_run_info(brain(), model, cache, train, valid)
    assert plain.data is None and plain.extra["device"] == "cpu"
    assert plain.extra["train_cases"] is not train
    bare = write_cache(tmp_path / "bare", [label_with({1: 3})], settings=False)
    assert runner.new_run_info(brain(), model, bare, ["c0"], []).prepare == {}


def test_freeze_groups_stops_the_groups_but_the_kept_parameters():
    model = create_model("twopath", in_channels=4, num_classes=4)
    runner.freeze_groups(model, ["local"], ["local.conv1.bias"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(name.startswith("local.") for name in frozen)
    assert "local.conv1.bias" in trainable and "local.conv1.weight" in frozen
    assert any(name.startswith("global") for name in trainable)
    untouched = create_model("twopath", in_channels=4, num_classes=4)
    runner.freeze_groups(untouched, [], ["local.conv1.bias"])
    assert all(p.requires_grad for p in untouched.parameters())


def test_weights_finite():
    model = create_model("twopath", in_channels=4, num_classes=4)
    assert runner.weights_finite(model)
    with torch.no_grad():
        model.state_dict()["local.conv1.bias"][1] = float("nan")
    assert not runner.weights_finite(model)


def test_record_fit_adds_the_time_and_the_kept_epochs():
    info = RunInfo("brain", {}, BRATS_2021.to_json(), [], extra={"train_seconds": 10.0})
    info.extra["kept_epochs"] = {"stage1": 1}
    learn = SimpleNamespace(kept={"stage2": 3}, first_learner=SimpleNamespace(kept={"first": 0}))
    log = {"stage1": 100}
    runner.record_fit(info, learn, object(), 2.5, log)
    assert info.extra["train_seconds"] == 12.5 and info.extra["trainable_parameters"] is log
    assert info.extra["kept_epochs"] == {"stage1": 1, "stage2": 3, "first": 0}
    fresh = RunInfo("brain", {}, BRATS_2021.to_json(), [])
    runner.record_fit(fresh, learn, None, 2.5, {})  # no cascade: no first network's epochs
    assert fresh.extra["train_seconds"] == 2.5 and fresh.extra["kept_epochs"] == {"stage2": 3}
    runner.record_fit(fresh, SimpleNamespace(), object(), 1.0, {})  # nothing kept
    assert fresh.extra["kept_epochs"] == {"stage2": 3} and fresh.extra["train_seconds"] == 3.5
    unkept = SimpleNamespace(kept={}, first_learner=SimpleNamespace())  # a first fit not run
    runner.record_fit(fresh, unkept, object(), 1.0, {})
    assert fresh.extra["kept_epochs"] == {"stage2": 3}


def test_where_a_resumed_run_stands():
    assert runner._where({}) == "nothing finished"
    assert runner._where({"finished": ["first"], "fit": "main", "epochs_done": 2}) == (
        "first finished, 2 epochs of main"
    )
    assert runner._where({"finished": ["first", "main"], "fit": None}) == "first, main finished"
    assert runner._where({"fit": "first"}) == "nothing finished, 0 epochs of first"


def test_flips_are_announced_off_only_for_an_even_input_size():
    def said(recipe, name):
        out = io.StringIO()
        model = create_model(name, in_channels=4, num_classes=4)
        runner._announce_flips(recipe, model, Console(file=out, width=200))
        return out.getvalue()

    flip = brain("data.flip=true")
    text = said(flip, "local_cascade")
    assert "data.flip is off for inputs 33+56" in text and "65" not in text
    assert said(flip, "twopath") == "" and said(brain("data.flip=false"), "local_cascade") == ""
    # a first network with an even input is announced too, before the cascade's
    out = io.StringIO()
    cascade = SimpleNamespace(input_sizes=(33, 56), first=SimpleNamespace(input_sizes=(34,)))
    runner._announce_flips(flip, cascade, Console(file=out, width=200))
    lines = [line for line in out.getvalue().splitlines() if "data.flip is off" in line]
    assert len(lines) == 2 and "inputs 34:" in lines[0] and "inputs 33+56:" in lines[1]


def test_the_run_folder_is_made_once_and_every_rank_gets_its_name(tmp_path, monkeypatch):
    recipe = brain()
    folder = runner._new_run(tmp_path / "runs", recipe, SimpleNamespace(world=1, main=True))
    assert folder.is_dir() and folder.parent == tmp_path / "runs" and recipe.name in folder.name
    # two processes: rank 0 makes the folder and sends its name (broadcast from rank 0)
    sent = []

    def broadcast(names, src):
        sent.append((list(names), src))
        if names[0] is None:  # another rank receives rank 0's name
            names[0] = str(tmp_path / "runs" / "from-rank-0")

    monkeypatch.setattr(torch.distributed, "broadcast_object_list", broadcast)
    main = runner._new_run(tmp_path / "two", recipe, SimpleNamespace(world=2, main=True))
    assert main.is_dir() and main.parent == tmp_path / "two" and recipe.name in main.name
    assert sent == [([str(main)], 0)]
    other = runner._new_run(tmp_path / "other", recipe, SimpleNamespace(world=2, main=False))
    assert other == tmp_path / "runs" / "from-rank-0" and not (tmp_path / "other").exists()
    assert sent[1] == ([None], 0)


def test_post_processing_is_chosen_on_the_validation_maps_known_ones_reused(
    tiny_cache, monkeypatch
):
    from braver.inference import class_maps
    from braver.postprocess import recipe_options
    from braver.train import selection

    recipe = brain()  # [postprocess] min_component_voxels = "auto", fill_holes = false
    torch.manual_seed(0)
    model = runner.recipe_model(recipe, tiny_cache, [0.1, 0.1, 0.7, 0.1])  # edema
    valid = ["tiny01", "tiny02"]
    known = np.zeros(tiny_cache.case("tiny01").label.shape, np.uint8)
    maps = {"tiny01": known}
    options = runner._choose_postprocess(recipe, model, tiny_cache, valid, "cpu", None, maps=maps)
    assert model.training  # back in training mode
    found = class_maps(model.eval(), tiny_cache, valid, "cpu", maps={"tiny01": known})
    expected, _ = recipe_options(recipe.postprocess, found, tiny_cache.scheme)
    assert options == expected and options.fill_holes is False
    assert maps["tiny01"] is known and sorted(maps) == valid
    assert (maps["tiny02"] == found[1][0]).all() and (found[1][0] > 0).any()
    # kept within the memory budget (both maps: exactly the budget), not above it
    monkeypatch.setattr(selection, "MAPS_BUDGET_BYTES", 2 * known.nbytes)
    exact = {}
    runner._choose_postprocess(recipe, model, tiny_cache, valid, "cpu", None, maps=exact)
    assert sorted(exact) == valid
    monkeypatch.setattr(selection, "MAPS_BUDGET_BYTES", 2 * known.nbytes - 1)
    few = {}
    runner._choose_postprocess(recipe, model, tiny_cache, valid, "cpu", None, maps=few)
    assert few == {}
    # without "auto" nothing is predicted
    monkeypatch.undo()
    fixed = brain("postprocess.min_component_voxels=25")
    chosen = runner._choose_postprocess(fixed, model, tiny_cache, valid, "cpu", None, maps=few)
    assert chosen.min_component_voxels == 25 and few == {}
    # a key braver cannot choose for brain: the error names the recipe file
    wrong = brain("postprocess.largest_component=auto")
    with pytest.raises(BraverError, match=r"brain\.toml: post-processing option largest_comp"):
        runner._choose_postprocess(wrong, model, tiny_cache, valid, "cpu", None, maps={})


class _Stop(Exception):
    """Ends train_from_recipe once a test has seen what it needs (before any fit)."""


def test_train_from_recipe_hands_its_arguments_to_its_steps(tiny_cache, tmp_path, monkeypatch):
    from braver.train import tracking

    calls = {}

    def stop_at(name):
        def spy(*args, **kwargs):
            calls[name] = (args, kwargs)
            raise _Stop

        monkeypatch.setattr(runner, name, spy)

    recipe = brain("data.mode=tile", "data.tile=4", "data.batch_size=2")
    stop_at("resumed_start")  # a resumed run: the folder, groups and kept parameters
    with pytest.raises(_Stop):
        runner.train_from_recipe(
            recipe, resume=tmp_path / "run", freeze=["local"], keep_trainable=["local.conv1.bias"]
        )
    assert calls["resumed_start"] == ((tmp_path / "run", ["local"], ["local.conv1.bias"]), {})
    checked = []  # W&B is checked first, and only when asked for
    monkeypatch.setattr(tracking, "require_wandb", lambda: checked.append(True))
    stop_at("new_start")
    with pytest.raises(_Stop):
        runner.train_from_recipe(
            recipe, cache=tiny_cache.root, freeze=["global"], keep_trainable=["x"]
        )
    assert calls["new_start"] == ((recipe, tiny_cache.root, ["global"], ["x"]), {}) and not checked
    with pytest.raises(_Stop):
        runner.train_from_recipe(recipe, cache=tiny_cache.root, wandb=True)
    assert checked == [True]
    # a new run as far as its callbacks: progress asked for is drawn, with the console given
    monkeypatch.undo()
    stop_at("_run_callbacks")
    console = Console(file=io.StringIO())  # not a terminal
    with pytest.raises(_Stop):
        runner.train_from_recipe(
            recipe, cache=tiny_cache, out=tmp_path / "runs", console=console, progress=True,
            run_extra={"setup": "s"},
        )  # fmt: skip
    args, _ = calls["_run_callbacks"]
    folder, info = args[1], args[2]
    assert folder.parent == tmp_path / "runs" and (folder / "run.json").exists()
    assert (args[5], args[6], args[7], args[8]) == (console, True, False, {"setup": "s"})
    assert info.extra["setup"] == "s" and info.cache == str(tiny_cache.root)
    assert "Run folder" in console.file.getvalue()


def _spy_on(monkeypatch, calls, *names):
    """Record each named step's arguments and result (the step still runs)."""
    for name in names:
        real = getattr(runner, name)

        def spy(*args, _name=name, _real=real, **kwargs):
            calls[_name] = (args, kwargs)
            calls[_name + "()"] = _real(*args, **kwargs)
            return calls[_name + "()"]

        monkeypatch.setattr(runner, name, spy)


def _fit_with(monkeypatch, calls, fit):
    """The learner's fit replaced by ``fit(learn, *args, **kwargs)`` (no training)."""
    real = runner.recipe_learner

    def learner(*args, **kwargs):
        calls["recipe_learner"] = (args, kwargs)
        learn = calls["recipe_learner()"] = real(*args, **kwargs)

        def fake_fit(*fit_args, **fit_kwargs):
            calls["fit"] = (fit_args, fit_kwargs)
            fit(learn, *fit_args, **fit_kwargs)

        learn.fit = fake_fit
        return learn

    monkeypatch.setattr(runner, "recipe_learner", learner)


def _stop(*args, **kwargs):
    raise _Stop


def test_train_from_recipe_wires_a_new_run_into_its_fit(tiny_cache, tmp_path, monkeypatch):
    from braver.train.compose import Distributed

    calls = {}
    _spy_on(
        monkeypatch, calls, "new_start", "class_frequencies", "starting_model", "_new_run",
        "new_run_info", "_announce_model", "recipe_dataloaders", "_announce_flips",
        "freeze_groups", "_run_callbacks", "recipe_callbacks",
    )  # fmt: skip
    _fit_with(monkeypatch, calls, _stop)
    recipe = brain(*TINY_FIT)
    given = runner.recipe_model(recipe, tiny_cache, [0.25] * 4)
    console = Console(file=io.StringIO())  # not a terminal: no progress bar unless asked
    extra = object()  # a callback of the caller's
    with pytest.raises(_Stop):
        runner.train_from_recipe(
            recipe, cache=tiny_cache, out=tmp_path / "runs", data="raw/brats", console=console,
            model=given, freeze=["global"], keep_trainable=["global.conv1.bias"],
            run_extra={"setup": "s"}, callbacks=[extra],
        )  # fmt: skip
    start = calls["new_start()"]
    train, valid = start.train_cases, start.valid_cases
    assert calls["class_frequencies"] == ((tiny_cache, train), {})
    frequencies = calls["class_frequencies()"]
    assert calls["starting_model"] == ((recipe, tiny_cache, frequencies, given, None), {})
    assert calls["_new_run"] == ((tmp_path / "runs", recipe, Distributed()), {})
    folder = calls["_new_run()"]
    assert calls["new_run_info"] == (
        (recipe, given, tiny_cache, train, valid),
        {"data": "raw/brats", "device": "cpu", "run_extra": {"setup": "s"}},
    )
    info = calls["new_run_info()"]
    assert (folder / "recipe.toml").read_text() == recipe.to_toml()
    written = json.loads((folder / "run.json").read_text())
    assert written["data"] == "raw/brats" and written["extra"]["device"] == "cpu"
    assert calls["_announce_model"] == ((recipe, given, train, valid, "cpu", console), {})
    assert calls["recipe_dataloaders"] == (
        (recipe, tiny_cache, train, valid, given.input_sizes),
        {"device": "cpu", "dist": Distributed()},
    )
    assert calls["_announce_flips"] == ((recipe, given, console), {})
    assert calls["freeze_groups"] == ((given, ["global"], ["global.conv1.bias"]), {})
    dls = calls["recipe_dataloaders()"]
    assert calls["recipe_learner"] == ((recipe, dls, given), {"path": folder, "progress": False})
    learn = calls["recipe_learner()"]
    assert learn.rank == 0 and learn.epoch_offset == 0
    args, _ = calls["_run_callbacks"]
    assert args == (recipe, folder, info, [], {}, console, False, False, {"setup": "s"})
    run_callbacks = calls["_run_callbacks()"][0]
    assert run_callbacks[-1] is extra  # the caller's callbacks join the run's
    (for_recipe, model), kwargs = calls["recipe_callbacks"]
    assert for_recipe is recipe and model is given and kwargs["state"] is start.state
    first_checkpoint, *rest = kwargs["first_callbacks"]
    assert rest == run_callbacks
    fit_callbacks = calls["recipe_callbacks()"]
    (epochs,), fit_kwargs = calls["fit"]
    assert epochs == recipe.stage1.epochs + recipe.stage2.epochs == 3
    cbs = fit_kwargs["cbs"]
    assert cbs[: len(fit_callbacks)] == fit_callbacks and cbs[len(fit_callbacks) + 1 :] == rest
    main_checkpoint = cbs[len(fit_callbacks)]
    for checkpoint, fit in ((first_checkpoint, "first"), (main_checkpoint, "main")):
        assert isinstance(checkpoint, runner.Checkpoint) and checkpoint.fit_name == fit
        assert checkpoint.folder == folder and checkpoint.full_model is given
        assert checkpoint.state is start.state


def test_train_from_recipe_draws_progress_by_default_only_on_a_terminal(
    tiny_cache, tmp_path, monkeypatch
):
    calls = {}
    monkeypatch.setattr(runner, "_run_callbacks", lambda *args: calls.update(args=args) or _stop())
    recipe = brain(*TINY_FIT)
    for terminal in (False, True):
        console = Console(file=io.StringIO(), force_terminal=terminal)
        with pytest.raises(_Stop):
            runner.train_from_recipe(recipe, cache=tiny_cache, out=tmp_path, console=console)
        assert calls["args"][6] is terminal


def _resumable_run(tiny_cache, tmp_path, monkeypatch, recipe):
    """A run folder interrupted after two epochs of stage 1 (one kept), with its history,
    trainable parameters and a checkpoint of seeded weights; returns (folder, weights)."""
    from braver.runs import load_run_info
    from braver.train.callbacks import write_history

    calls = {}
    _fit_with(monkeypatch, calls, _stop)
    with pytest.raises(_Stop):
        runner.train_from_recipe(recipe, cache=tiny_cache, out=tmp_path / "runs")
    monkeypatch.undo()
    folder = calls["recipe_learner"][1]["path"]
    progress = {"finished": [], "fit": "main", "epochs_done": 2, "stage": "stage1"}
    (folder / "progress.json").write_text(json.dumps({**progress, "kept_epochs": {"stage1": 1}}))
    rows = [{"stage": "stage1", "epoch": str(e), "train_loss": str(1.5 - e / 4)} for e in (0, 1)]
    write_history(folder / "history.csv", rows)
    info = load_run_info(folder)
    info.extra["trainable_parameters"] = {"stage1": 7}
    info.extra["kept_epochs"] = {"first.stage2": 4}  # kept epochs run.json has are kept too
    save_run_info(folder, info)
    torch.manual_seed(5)
    weights = runner.recipe_model(recipe, tiny_cache, [0.25] * 4).state_dict()
    save_file({k: v.contiguous() for k, v in weights.items()}, str(folder / runner.CHECKPOINT))
    return folder, weights


def test_train_from_recipe_resumes_and_records_what_its_fit_left(tiny_cache, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from braver import report
    from braver.train.callbacks import read_history

    recipe = brain(*TINY_FIT)
    folder, weights = _resumable_run(tiny_cache, tmp_path, monkeypatch, recipe)

    def fit(learn, *args, **kwargs):  # ends stage 2 after one rollback, diverged
        learn.kept, learn.rollbacks, learn.diverged = {"stage2": 3}, [("stage2", 2)], True
        learn.network.requires_grad_(False)

    calls, maps = {}, {"tiny01": np.zeros(1)}
    options = SimpleNamespace(to_dict=lambda: {"min_component_voxels": 25})
    _fit_with(monkeypatch, calls, fit)
    _spy_on(monkeypatch, calls, "starting_model", "new_run_info", "_run_callbacks", "record_fit")
    for name, result in (("_select_weights", maps), ("_choose_postprocess", options)):
        monkeypatch.setattr(
            runner, name, lambda *a, _n=name, _r=result, **k: calls.update({_n: (a, k)}) or _r
        )
    monkeypatch.setattr(runner, "_finish", lambda *a, **k: calls.update(_finish=(a, k)))
    monkeypatch.setattr(report, "write_report_html", lambda f: calls.update(report=f))
    console = Console(file=io.StringIO())
    assert runner.train_from_recipe(recipe, resume=folder, console=console) == folder
    assert "Resuming" in console.file.getvalue() and "new_run_info" not in calls
    (loaded, cache, frequencies, given, checkpoint), _ = calls["starting_model"]
    assert loaded.to_toml() == recipe.to_toml() and cache.root == tiny_cache.root
    assert given is None and checkpoint == folder / runner.CHECKPOINT
    model = calls["starting_model()"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    learn = calls["recipe_learner()"]
    assert learn.epoch_offset == 2 and calls["fit"][0] == (1,)  # the third epoch of three
    args, _ = calls["_run_callbacks"]
    info, history_rows = args[2], args[3]
    assert history_rows == read_history(folder / "history.csv") and len(history_rows) == 2
    assert args[4] == {"stage1": 7}
    (*recorded, seconds, trainable), _ = calls["record_fit"]
    assert recorded == [info, learn, None] and trainable == {"stage1": 7}
    assert isinstance(seconds, float) and 0 <= seconds < 60 and seconds == round(seconds, 1)
    valid = info.validation_cases
    assert calls["_select_weights"] == (
        (loaded, model, learn, cache, valid, "cpu", info, console),
        {},
    )
    assert calls["_choose_postprocess"] == (
        (loaded, model, cache, valid, "cpu", console),
        {"maps": maps},
    )
    assert calls["_finish"] == (
        (folder, model, cache, valid, history_rows, "cpu", True, console, info),
        {"postprocess": options, "maps": maps},
    )
    assert calls["report"] == folder
    written = json.loads((folder / "run.json").read_text())["extra"]
    # run.json's, progress.json's and the fit's
    assert written["kept_epochs"] == {"first.stage2": 4, "stage1": 1, "stage2": 3}
    assert written["rollbacks"] == [["stage2", 2]] and written["diverged"] is True
    assert written["postprocess"] == {"min_component_voxels": 25}
    assert written["trainable_parameters"] == {"stage1": 7}
    assert all(p.requires_grad for p in model.parameters())
    saved = load_file(str(folder / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["done"] is True and progress["diverged"] is True
    assert not (folder / runner.CHECKPOINT).exists()
    assert "training diverged" in console.file.getvalue()


@pytest.mark.parametrize(
    "settings, evaluate, chosen",
    [
        ([], False, []),  # not evaluating: nothing chosen on the validation volumes
        (["select.by=last"], True, ["_choose_postprocess"]),
        ([], True, ["_select_weights", "_choose_postprocess"]),
    ],
)
def test_train_from_recipe_chooses_on_the_validation_volumes_only_when_asked(
    tiny_cache, tmp_path, monkeypatch, settings, evaluate, chosen
):
    from braver import report

    calls = {}
    _fit_with(monkeypatch, calls, lambda learn, *a, **k: None)
    options = SimpleNamespace(to_dict=dict)
    for name, result in (("_select_weights", {}), ("_choose_postprocess", options)):
        monkeypatch.setattr(
            runner, name, lambda *a, _n=name, _r=result, **k: calls.update({_n: a}) or _r
        )
    monkeypatch.setattr(runner, "_finish", lambda *a, **k: calls.update(_finish=(a, k)))
    monkeypatch.setattr(report, "write_report_html", lambda f: None)
    recipe = brain(*TINY_FIT, *settings)
    runner.train_from_recipe(recipe, cache=tiny_cache, out=tmp_path, evaluate=evaluate)
    assert [name for name in ("_select_weights", "_choose_postprocess") if name in calls] == chosen
    args, kwargs = calls["_finish"]
    assert args[6] is evaluate
    assert kwargs == {"postprocess": options if chosen else None, "maps": {}}
    folder = args[0]  # a fit that neither diverged nor rolled back records neither
    assert "rollbacks" not in json.loads((folder / "run.json").read_text())["extra"]
    assert json.loads((folder / "progress.json").read_text())["diverged"] is False


def test_train_from_recipe_refuses_weights_a_fit_left_not_finite(tiny_cache, tmp_path, monkeypatch):
    def fit(learn, *args, **kwargs):
        with torch.no_grad():
            next(learn.network.parameters()).fill_(float("nan"))

    calls = {}
    _fit_with(monkeypatch, calls, fit)
    with pytest.raises(BraverError, match="diverged"):
        runner.train_from_recipe(brain(*TINY_FIT), cache=tiny_cache, out=tmp_path, evaluate=False)
    folder = calls["recipe_learner"][1]["path"]
    progress = json.loads((folder / "progress.json").read_text())
    assert progress["diverged"] is True and "done" not in progress
    assert not (folder / "model.safetensors").exists()


def test_a_run_resumed_after_its_fit_finished_is_not_fitted_again(
    tiny_cache, tmp_path, monkeypatch
):
    from braver import report

    recipe = brain(*TINY_FIT)
    folder, _ = _resumable_run(tiny_cache, tmp_path, monkeypatch, recipe)
    # interrupted while choosing its weights: the main fit is over
    (folder / "progress.json").write_text(
        json.dumps({"finished": ["main"], "fit": None, "epochs_done": 0})
    )
    calls = {}
    _fit_with(monkeypatch, calls, lambda learn, *args, **kwargs: None)
    monkeypatch.setattr(report, "write_report_html", lambda f: None)
    runner.train_from_recipe(recipe, resume=folder, evaluate=False)
    assert "recipe_learner" in calls and "fit" not in calls
    assert json.loads((folder / "progress.json").read_text())["done"] is True

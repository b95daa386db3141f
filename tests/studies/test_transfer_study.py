"""braver.studies.transfer: freeze values, setups (the seed's too), the liver recipe, fits."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

import braver.transfer
from braver.data.phantoms import synth_liver
from braver.errors import BraverError
from braver.models import create_model
from braver.preprocess import prepare_dataset
from braver.recipe import TransferSection, shipped_recipe
from braver.studies.transfer import (
    SEED_SETUPS,
    Setup,
    TransferSettings,
    comparison_table,
    load_liver_recipe,
    plan_setups,
    resolve_freeze,
    seed_setup,
    train_setup,
)

pytestmark = pytest.mark.usefixtures("one_thread")

# one short epoch per phase on 12x12 tiles (also used by tests/cli/test_transfer_cli.py)
TINY = [
    "data.tile=4",
    "data.batch_size=2",
    "data.validation_patches=4",
    "stage1.epochs=1",
    "stage1.patches_per_epoch=4",
    "stage2.epochs=1",
    "stage2.patches_per_epoch=4",
    "cascade.first_epochs=1",
    "cascade.first_patches_per_epoch=4",
]


def write_tiny_liver_cache(root):
    """Three 40x40x16 liver phantoms (LiTS layout) and their prepared cache."""
    data = synth_liver(root / "liver", cases=3, seed=0, shape=(40, 40, 16))
    prepare_dataset(data, root / "liver-cache", progress=False)
    return root / "liver-cache"


@pytest.fixture(scope="module")
def liver_cache(tmp_path_factory):
    return write_tiny_liver_cache(tmp_path_factory.mktemp("transfer"))


def liver_recipe(*extra):
    return load_liver_recipe(shipped_recipe("liver"), [*TINY, *extra], profile="phantom")


def test_freeze_presets_and_names():
    twopath = create_model("twopath")
    assert resolve_freeze(twopath, "both") == ["local", "global"]
    assert resolve_freeze(twopath, "none") == []
    assert resolve_freeze(twopath, "local, output") == ["local", "output"]
    assert resolve_freeze(twopath, "conv2") == ["conv2"]  # a layer (unique suffix)
    cascade = create_model("input_cascade")
    assert resolve_freeze(cascade, "first") == ["first"]
    assert resolve_freeze(cascade, "second.local,first") == ["second.local", "first"]
    with pytest.raises(BraverError) as error:
        resolve_freeze(twopath, "first")  # no cascade, no first network
    message = str(error.value)
    assert "--freeze 'first': not a group or layer of this twopath network" in message
    assert "presets: both, none; groups: local, global, output; layers: local.conv1" in message
    with pytest.raises(BraverError, match="presets: both, none, seed-local-output, seed-global"):
        resolve_freeze(cascade, "frist")
    with pytest.raises(BraverError, match="matches several layers"):
        resolve_freeze(cascade, "conv2")


def test_default_setups_reproduce_the_seed_study():
    _, settings = liver_recipe()
    setups = plan_setups(create_model("input_cascade"), None, False, settings)
    assert [s.name for s in setups] == [*SEED_SETUPS, "baseline (from scratch)"]
    assert [s.seed.seed_name for s in setups[:4]] == [
        "local scale",
        "global scale",
        "global & local scale",
        "E2E",
    ]
    setups = plan_setups(create_model("twopath"), None, False, settings)
    assert [(s.name, s.freeze) for s in setups] == [
        ("freeze local", ["local"]),
        ("freeze global", ["global"]),
        ("freeze both", ["local", "global"]),
        ("freeze none", []),
        ("baseline (from scratch)", []),
    ]
    assert setups[-1].baseline
    # --freeze given: those setups only, the baseline when asked for
    setups = plan_setups(create_model("twopath"), ["local", "local"], False, settings)
    assert [s.name for s in setups] == ["freeze local #1", "freeze local #2"]
    setups = plan_setups(create_model("twopath"), ["global,output"], True, settings)
    assert [s.name for s in setups] == ["freeze global+output", "baseline (from scratch)"]
    with pytest.raises(BraverError, match="no default setups"):
        plan_setups(
            create_model("twopath"), None, False, TransferSettings(TransferSection(baseline=False))
        )


def test_liver_recipe_tables_and_overrides(tmp_path):
    recipe, settings = liver_recipe("transfer.strategy=average", "prepare.hu_window=[-100, 200]")
    assert recipe.kind == "liver" and recipe.name == "liver-phantom" and recipe.data.mode == "tile"
    assert recipe.stage2.train == ["output"]  # dual-stage schedule
    assert settings.strategy == "average" and settings.baseline
    assert settings.prepare.hu_window == (-100.0, 200.0)
    base, _ = load_liver_recipe(shipped_recipe("liver"))
    assert base.data.mode == "patch" and base.name == "liver"
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "liver"\n[transfer]\nstrategy = "sum"\nfreeze = ["local"]\n')
    with pytest.raises(BraverError, match="unknown key transfer.freeze"):
        load_liver_recipe(bad)
    with pytest.raises(BraverError, match="transfer.strategy = 'median' must be one of sum"):
        liver_recipe("transfer.strategy=median")
    with pytest.raises(BraverError, match="unknown key stage1.epoch"):
        liver_recipe("stage1.epoch=2")
    with pytest.raises(BraverError, match=r"liver.toml: unknown key prepare.window; known keys"):
        liver_recipe("prepare.window=[0, 1]")
    with pytest.raises(BraverError, match=r"liver.toml: \[prepare\]: HU window \[200.0, 100.0\]"):
        liver_recipe("prepare.hu_window=[200, 100]")
    with pytest.raises(BraverError, match="transfer.setups.cascade must be a table"):
        liver_recipe("transfer.setups.cascade=[3]")


def test_seed_setups_freeze_every_feature_layer_and_the_outputs_they_do_not_train():
    cascade = create_model("input_cascade")
    features = ["first.local", "first.global", "second.local", "second.global"]
    local = seed_setup(cascade, "seed-local-output")
    assert local.freeze == [*features, "first.output"] and local.keep_outputs == ["first.output"]
    assert local.class_map == "keep" and local.seed.trainable_parameters == 600_000
    both = seed_setup(cascade, "seed-both-outputs", "both outputs")
    assert both.name == "both outputs" and both.freeze == features and both.keep_outputs == []
    e2e = seed_setup(cascade, "seed-e2e")
    assert e2e.freeze == [] and e2e.keep_outputs == [] and e2e.seed.valid_accuracy == 0.86
    with pytest.raises(BraverError, match="a setup of the seed study's InputCascadeCNN"):
        plan_setups(create_model("twopath"), ["seed-e2e"], False, TransferSettings())
    (setup,) = plan_setups(cascade, ["seed-global-output"], False, TransferSettings())
    assert setup.keep_outputs == ["second.output"] and "first.output" not in setup.freeze


def test_comparison_table_puts_the_seed_figures_beside_braver_figures():
    rows = [
        {"setup": "seed-e2e", "seed_setup": "E2E", "trainable_parameters": 10,
         "seed_trainable_parameters": 2_200_000, "valid_accuracy": 0.5,
         "seed_valid_accuracy": 0.86},
        {"setup": "baseline (from scratch)", "trainable_parameters": 12},
    ]  # fmt: skip
    table = comparison_table(rows, "t")
    headings = [c.header for c in table.columns]
    at = headings.index("trained params")
    assert headings[at + 1] == "trained params (seed)"
    assert headings[headings.index("valid acc") + 1] == "valid acc (seed)"
    assert list(table.columns[0].cells) == ["seed-e2e (seed: E2E)", "baseline (from scratch)"]
    assert list(table.columns[at + 1].cells) == ["2,200,000", "—"]
    plain = comparison_table([rows[1]], "t")
    assert not any("seed" in c.header for c in plain.columns)


def _seeded_brain(name):
    torch.manual_seed(1)
    model = create_model(name, dropout=0.0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return model


def _fit(setup, brain, liver_cache, tmp_path, monkeypatch):
    """Train one setup; returns (start weights, final weights, run folder)."""
    from braver.data.cache import Cache

    starts = []
    adapt = braver.transfer.adapt_for_transfer

    def remember(*args, **kwargs):
        model, description = adapt(*args, **kwargs)
        starts.append(copy.deepcopy(model.state_dict()))
        return model, description

    monkeypatch.setattr(braver.transfer, "adapt_for_transfer", remember)
    recipe, _ = liver_recipe()
    run = train_setup(
        setup,
        recipe,
        brain,
        tmp_path / "brain-run",
        Cache.open(liver_cache),
        out=tmp_path / "runs",
        device="cpu",
        data=None,
        strategy="sum",
        class_map="reinit",
        console=None,
        progress=False,
    )
    return (starts[-1] if starts else None), load_file(str(run / "model.safetensors")), run


def test_frozen_groups_stay_bit_identical_and_new_outputs_learn(liver_cache, tmp_path, monkeypatch):
    brain = _seeded_brain("twopath")
    setup = Setup("freeze local", ["local"], "local")
    start, final, run = _fit(setup, brain, liver_cache, tmp_path, monkeypatch)
    for name, value in final.items():
        if name.startswith("local."):
            assert torch.equal(value, start[name]), name
    assert not torch.equal(final["output.weight"], start["output.weight"])
    assert not torch.equal(final["global.conv1.weight"], start["global.conv1.weight"])
    # the CT channel's first-layer weights are the brain's summed over its 4 channels
    assert torch.allclose(
        final["local.conv1.weight"], brain.local.conv1.weight.sum(1, keepdim=True)
    )
    info = json.loads((run / "run.json").read_text())
    transfer = info["extra"]["transfer"]
    assert info["kind"] == "liver" and info["model"]["in_channels"] == 1
    assert transfer["freeze"] == ["local"] and transfer["strategy"] == "sum"
    assert transfer["description"]["reinitialised"] == ["output.weight", "output.bias"]
    local = sum(v.numel() for n, v in final.items() if n.startswith("local."))
    assert transfer["trained_parameters"] == sum(v.numel() for v in final.values()) - local
    history = (run / "history.csv").read_text().splitlines()
    assert "train_patch_accuracy" in history[0] and len(history) == 3
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["liver_dice"] <= 1 and 0 <= metrics["patch"]["train_patch_accuracy"] <= 1


def test_cascade_local_scale_keeps_the_first_network_but_its_new_output(
    liver_cache, tmp_path, monkeypatch
):
    brain = _seeded_brain("input_cascade")
    setup = Setup("local scale", ["first"], "first")
    start, final, run = _fit(setup, brain, liver_cache, tmp_path, monkeypatch)
    for name, value in final.items():
        if name.startswith("first.") and not name.startswith("first.output"):
            assert torch.equal(value, start[name]), name
    # re-initialised parameters stay trainable: the first network's output learns in its phase
    assert not torch.equal(final["first.output.weight"], start["first.output.weight"])
    assert not torch.equal(final["second.global.conv1.weight"], start["second.global.conv1.weight"])
    stages = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["first.stage1", "first.stage2", "stage1", "stage2"]


def test_first_phase_skipped_when_the_first_network_is_entirely_frozen(
    liver_cache, tmp_path, monkeypatch
):
    brain = _seeded_brain("input_cascade")
    recipe, _ = liver_recipe()
    from braver.data.cache import Cache
    from braver.train import train_from_recipe

    model, _ = braver.transfer.adapt_for_transfer(brain, 1, 3)
    before = copy.deepcopy(model.state_dict())
    run = train_from_recipe(
        recipe, cache=Cache.open(liver_cache), out=tmp_path, model=model, freeze=["first"]
    )
    stages = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert stages == ["stage1", "stage2"]
    after = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(after[n], before[n]) for n in before if n.startswith("first."))


def test_an_interrupted_setup_resumes_with_its_groups_frozen(liver_cache, tmp_path, monkeypatch):
    from braver.recipe import load_recipe
    from braver.train import runner as train_runner

    original = train_runner.Checkpoint.after_epoch

    def interrupt(self):
        original(self)
        if self.state["stage"] == "stage1" and self.state["epochs_done"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_runner.Checkpoint, "after_epoch", interrupt)
    brain = _seeded_brain("twopath")
    recipe, _ = liver_recipe("stage1.epochs=2")
    from braver.data.cache import Cache

    setup = Setup("freeze local", ["local"], "local")
    with pytest.raises(KeyboardInterrupt):
        train_setup(
            setup, recipe, brain, tmp_path / "brain-run", Cache.open(liver_cache),
            out=tmp_path / "runs", device="cpu", data=None, strategy="sum",
            class_map="reinit", console=None, progress=False,
        )  # fmt: skip
    monkeypatch.setattr(train_runner.Checkpoint, "after_epoch", original)
    (folder,) = (tmp_path / "runs").iterdir()
    start = load_file(str(folder / "checkpoint.safetensors"))
    run = train_runner.train_from_recipe(load_recipe(folder / "recipe.toml"), resume=folder)
    final = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(final[n], start[n]) for n in start if n.startswith("local."))
    assert not torch.equal(final["output.weight"], start["output.weight"])


def test_cascade_global_scale_trains_only_the_class_map_channels_of_the_second_network(
    liver_cache, tmp_path, monkeypatch
):
    brain = _seeded_brain("input_cascade")
    setup = Setup("global scale", ["second"], "second")
    start, final, run = _fit(setup, brain, liver_cache, tmp_path, monkeypatch)
    for name, value in final.items():
        if name.startswith("second.") and not name.startswith("second.output"):
            if name in ("second.local.conv1.weight", "second.global.conv1.weight"):
                assert torch.equal(value[:, :1], start[name][:, :1]), name  # the CT channel
                assert not torch.equal(value[:, 1:], start[name][:, 1:]), name  # the class map
            else:
                assert torch.equal(value, start[name]), name
    assert not torch.equal(final["first.local.conv1.weight"], start["first.local.conv1.weight"])
    transfer = json.loads((run / "run.json").read_text())["extra"]["transfer"]
    assert transfer["frozen_slices"] == {
        "second.local.conv1.weight": "input channels [0] kept frozen",
        "second.global.conv1.weight": "input channels [0] kept frozen",
    }
    second = {n: v.numel() for n, v in final.items() if n.startswith("second.")}
    first = sum(v.numel() for n, v in final.items() if n.startswith("first."))
    class_map = (
        (second["second.local.conv1.weight"] + second["second.global.conv1.weight"]) * 3 // 4
    )
    output = second["second.output.weight"] + second["second.output.bias"]
    assert transfer["trained_parameters"] == first + class_map + output


def test_seed_local_output_trains_the_second_output_layer_alone(liver_cache, tmp_path, monkeypatch):
    brain = _seeded_brain("input_cascade")
    setup = seed_setup(brain, "seed-local-output")
    start, final, run = _fit(setup, brain, liver_cache, tmp_path, monkeypatch)
    changed = sorted(n for n in final if not torch.equal(final[n], start[n]))
    assert changed == ["second.output.bias", "second.output.weight"]
    # the frozen first output keeps the brain's classes 0-2; the class-map weights are the brain's
    assert torch.equal(final["first.output.weight"], brain.first.output.weight[:3])
    assert torch.equal(
        final["second.local.conv1.weight"][:, 1:], brain.second.local.conv1.weight[:, 4:7]
    )
    transfer = json.loads((run / "run.json").read_text())["extra"]["transfer"]
    assert transfer["trained_parameters"] == 3 * 224 * 21 * 21 + 3
    assert transfer["kept_outputs"] == ["first.output"] and transfer["seed_setup"] == "local scale"
    assert transfer["kept_trainable"] == ["second.output.weight", "second.output.bias"]


def test_seed_global_output_trains_the_first_output_layer_through_the_cascade(
    liver_cache, tmp_path, monkeypatch
):
    """The seed's "global scale": the first network's output layer learns from the cascade's
    loss (through the frozen second network), in both stages, with no phase of its own."""
    from braver.train import stages

    brain = _seeded_brain("input_cascade")
    setup = seed_setup(brain, "seed-global-output")
    first_alone = []
    monkeypatch.setattr(
        stages.CascadeFirst, "_train_first", lambda self, first: first_alone.append(first)
    )
    seen = []
    real_forward = type(brain).forward

    def forward(self, *inputs):  # which inputs the fitted model gets: the cascade's own
        seen.append(tuple(x.shape[-1] for x in inputs))
        return real_forward(self, *inputs)

    monkeypatch.setattr(type(brain), "forward", forward)
    start, final, run = _fit(setup, brain, liver_cache, tmp_path, monkeypatch)
    changed = sorted(n for n in final if not torch.equal(final[n], start[n]))
    assert changed == ["first.output.bias", "first.output.weight"]
    assert torch.equal(final["second.output.weight"], brain.second.output.weight[:3])
    assert first_alone == []  # no CascadeFirst fit
    assert seen and all(len(shapes) == len(brain.input_sizes) for shapes in seen)
    transfer = json.loads((run / "run.json").read_text())["extra"]["transfer"]
    assert transfer["trained_parameters"] == 3 * 224 * 21 * 21 + 3
    assert "the cascade trains as one network" in transfer["schedule"]
    stages_run = [line.split(",")[0] for line in (run / "history.csv").read_text().splitlines()[1:]]
    assert stages_run == ["stage1", "stage2"]
    recipe = (run / "recipe.toml").read_text()
    assert "joint = true" in recipe and 'train = ["first.output"]' in recipe


def test_the_baseline_starts_from_fresh_weights_not_the_brain_networks(liver_cache, tmp_path):
    """The baseline trains the brain's architecture from scratch: no start weight is the brain's."""
    from fastai.callback.core import Callback

    from braver.data.cache import Cache

    class Start(Callback):
        order = -100

        def before_fit(self):
            if not hasattr(self, "state"):
                self.state = {k: v.clone() for k, v in self.learn.model.state_dict().items()}

    brain = _seeded_brain("twopath")
    start = Start()
    recipe, _ = liver_recipe()
    run = train_setup(
        Setup("baseline (from scratch)", [], "none", baseline=True),
        recipe,
        brain,
        tmp_path / "brain-run",
        Cache.open(liver_cache),
        out=tmp_path / "runs",
        device="cpu",
        data=None,
        strategy="sum",
        class_map="reinit",
        console=None,
        progress=False,
        callbacks=[start],
    )
    brain_state = brain.state_dict()
    same_shape = [k for k, v in start.state.items() if brain_state[k].shape == v.shape]
    assert "local.conv2.weight" in same_shape
    for name in same_shape:
        if brain_state[name].abs().sum() > 0:  # zero-initialised biases can agree by design
            assert not torch.equal(start.state[name], brain_state[name]), name
    transfer = json.loads((run / "run.json").read_text())["extra"]["transfer"]
    assert transfer["baseline"] and transfer["source_run"] is None


def test_planned_setups_keep_their_freeze_values_names_and_the_baselines_none():
    from dataclasses import replace

    from braver.recipe import TransferSetups
    from braver.studies.transfer import SetupSpec

    twopath = create_model("twopath")
    assert resolve_freeze(twopath, "local, ,global") == ["local", "global"]  # empty names skipped
    setups = plan_setups(twopath, ["local,output", "both"], True, TransferSettings())
    assert [(s.spec, s.baseline) for s in setups] == [
        ("local,output", False),
        ("both", False),
        ("none", True),
    ]
    # the recipe's default setups without the baseline: the setups alone
    section = TransferSection(
        baseline=False, setups=TransferSetups(twopath=[SetupSpec("global", "mine")])
    )
    (only,) = plan_setups(twopath, None, False, TransferSettings(section))
    assert (only.name, only.freeze, only.spec, only.baseline) == (
        "mine",
        ["global"],
        "global",
        False,
    )
    # a seed setup keeps the name it is given
    cascade = create_model("input_cascade")
    section = replace(section, setups=TransferSetups(cascade=[SetupSpec("seed-e2e", "all of it")]))
    (seed,) = plan_setups(cascade, None, False, TransferSettings(section))
    assert seed.name == "all of it" and seed.seed is SEED_SETUPS["seed-e2e"]
    assert seed.spec == "seed-e2e"


def test_frozen_slices_are_the_image_channels_of_frozen_partly_new_weights():
    from braver.studies.transfer_training import frozen_slices
    from braver.transfer import input_layout

    cascade = create_model("input_cascade", in_channels=2, num_classes=3)
    partly = ["second.local.conv1.weight", "second.global.conv1.weight"]
    description = {"partly_reinitialised": partly}
    # the image channels 0-1 keep their values; the class map's (2-4) learn
    assert frozen_slices(cascade, ["second.local"], description) == {partly[0]: [0, 1]}
    assert frozen_slices(cascade, ["second"], description) == {partly[0]: [0, 1], partly[1]: [0, 1]}
    assert frozen_slices(cascade, ["second.global"], description) == {partly[1]: [0, 1]}
    assert frozen_slices(cascade, [], description) == {}
    assert frozen_slices(cascade, ["first"], description) == {}
    # class map after the hidden maps (MFCascade's output layer): the hidden channels
    mf = create_model("mf_cascade", in_channels=1, num_classes=3)
    hidden = input_layout(mf)["second.output"][0][1]
    slices = frozen_slices(
        mf, ["second.output"], {"partly_reinitialised": ["second.output.weight"]}
    )
    assert slices == {"second.output.weight": list(range(hidden))}


def test_second_network_frozen_only_when_no_parameter_of_it_trains():
    from braver.studies.transfer_training import second_network_frozen

    cascade = create_model("input_cascade")
    assert second_network_frozen(cascade, ["second"], [])
    assert second_network_frozen(cascade, ["first", "second"], ["first.output.bias"])
    assert not second_network_frozen(cascade, ["second"], ["second.output.bias"])
    assert not second_network_frozen(cascade, ["first", "second.local"], [])
    assert not second_network_frozen(cascade, [], [])
    assert not second_network_frozen(create_model("twopath"), ["local", "global", "output"], [])

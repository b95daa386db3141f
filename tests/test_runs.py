"""braver.runs: the latest finished run of a kind, among several."""

import os

import numpy as np
import pytest
import torch

from braver.data.labels import BRATS_2021, LIVER
from braver.errors import BraverError
from braver.models import create_model
from braver.runs import (
    RunInfo,
    find_latest_run,
    load_model,
    load_run_info,
    new_run_dir,
    resolve_run,
    save_run_info,
    save_weights,
    validation_cache,
)


def _run(folder, kind, mtime, weights=True):
    folder.mkdir(parents=True)
    scheme, channels = (
        (BRATS_2021, ["t1", "t1c", "t2", "flair"]) if kind == "brain" else (LIVER, ["ct"])
    )
    model = create_model("twopath", in_channels=len(channels), num_classes=scheme.num_classes)
    save_run_info(folder, RunInfo(kind, model.config, scheme.to_json(), channels))
    if weights:
        os.utime(save_weights(folder, model), (mtime, mtime))
    return folder


def test_the_latest_run_is_the_newest_finished_one_of_its_kind(tmp_path, monkeypatch):
    from pathlib import Path

    glob = Path.glob  # the folders in name order, whatever the file system's order
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(sorted(glob(self, pattern))))
    runs = tmp_path / "runs"
    # names sort the other way round from their times: the time decides, not the name
    newer = _run(runs / "brain-a", "brain", 2_000_000)
    older = _run(runs / "brain-b", "brain", 1_000_000)
    liver = _run(runs / "liver-a", "liver", 3_000_000)
    _run(runs / "brain-c", "brain", 0, weights=False)  # unfinished (created last): skipped
    assert find_latest_run(runs, "brain") == newer
    assert find_latest_run(runs, "liver") == liver
    assert find_latest_run(runs) == liver
    assert resolve_run(None, runs, "brain", "braver predict") == newer
    assert resolve_run(older, runs, "brain", "braver predict") == older
    assert find_latest_run(tmp_path / "nowhere", "brain") is None
    (tmp_path / "empty").mkdir()
    assert find_latest_run(tmp_path / "empty", "brain") is None
    assert find_latest_run(tmp_path / "empty") is None


def test_new_run_dir_stamps_the_name_and_never_reuses_a_folder(tmp_path, monkeypatch):
    import re

    first = new_run_dir(tmp_path / "deep" / "runs", "brain")
    assert first.is_dir() and first.parent == tmp_path / "deep" / "runs"
    assert re.fullmatch(r"brain-\d{8}-\d{6}", first.name)
    # two more in the same second (a frozen clock): suffixes -2, -3
    import braver.runs as runs_module

    class Frozen:
        @staticmethod
        def now(tz):
            from datetime import datetime, timezone

            assert tz is timezone.utc  # UTC, whatever the machine's time zone
            return datetime(2024, 5, 6, 7, 8, 9, tzinfo=tz)

    monkeypatch.setattr(runs_module, "datetime", Frozen)
    made = [new_run_dir(tmp_path, "liver") for _ in range(3)]
    assert [p.name for p in made] == [
        "liver-20240506-070809", "liver-20240506-070809-2", "liver-20240506-070809-3",
    ]  # fmt: skip
    assert all(p.is_dir() for p in made)


def test_run_info_round_trips_and_bad_files_are_one_sentence(tmp_path):
    info = RunInfo(
        "liver", {"name": "twopath", "in_channels": 1}, LIVER.to_json(), ["ct"], cache="c",
        data="d", validation_cases=["a"], prepare={"hu": [-100, 200]}, extra={"x": 1},
    )  # fmt: skip
    assert save_run_info(tmp_path, info) == tmp_path / "run.json"
    assert load_run_info(tmp_path) == info
    assert load_run_info(tmp_path).scheme.class_names == LIVER.class_names
    with pytest.raises(BraverError, match=r"nowhere: is not a braver run folder \(no run.json\)"):
        load_run_info(tmp_path / "nowhere")
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(BraverError, match=r"run.json: run.json cannot be read \(Expecting"):
        load_run_info(tmp_path)
    (tmp_path / "run.json").write_text('{"kind": "brain"}')  # fields missing
    with pytest.raises(BraverError, match="run.json cannot be read"):
        load_run_info(tmp_path)


def test_load_model_gives_the_saved_weights_in_eval_mode(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    folder = _run(tmp_path / "run", "liver", 0)
    saved = load_file(str(folder / "model.safetensors"))
    model, info = load_model(folder)
    assert info.kind == "liver" and info.channels == ["ct"]
    assert not model.training and model.config == create_model(**info.model).config
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, value in saved.items():
        assert torch.equal(state[name], value), name
    (folder / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(BraverError, match="model.safetensors: weights cannot be read"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(BraverError, match=r"run: has no model.safetensors; the run did not"):
        load_model(folder)


def test_find_latest_run_skips_unreadable_run_files(tmp_path, monkeypatch):
    from pathlib import Path

    glob = Path.glob  # the broken one first (name order), whatever the file system's order
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(sorted(glob(self, pattern))))
    runs = tmp_path / "runs"
    good = _run(runs / "brain-b", "brain", 1_000_000)
    broken = _run(runs / "brain-a", "brain", 2_000_000)
    (broken / "run.json").write_text("{broken")
    assert find_latest_run(runs, "brain") == good
    assert find_latest_run(runs) == broken  # no kind asked: run.json is not read
    (tmp_path / "file").write_text("")
    assert find_latest_run(tmp_path / "file") is None


def test_resolve_run_checks_a_given_run_and_says_what_to_run(tmp_path):
    with pytest.raises(BraverError, match="is not a braver run folder"):
        resolve_run(tmp_path / "missing", tmp_path, "brain", "braver predict")
    with pytest.raises(BraverError) as error:
        resolve_run(None, tmp_path / "runs", "liver", "braver evaluate")
    assert str(error.value) == (
        f"{tmp_path / 'runs'}: no finished liver run; run 'braver train liver' first, or pass "
        "RUN to 'braver evaluate'."
    )


def test_validation_cache_needs_the_cache_and_its_validation_cases(tmp_path):
    from braver.data.cache import Cache, write_case, write_summary

    root = tmp_path / "cache"
    write_case(root, "c0", np.zeros((1, 2, 3, 3), np.float32), np.zeros((2, 3, 3), np.uint8), {})
    write_summary(root, {"label_scheme": LIVER.to_json(), "channels": ["ct"], "cases": ["c0"]})
    info = RunInfo("liver", {}, LIVER.to_json(), ["ct"], cache=str(root), validation_cases=["c0"])
    cache = validation_cache(tmp_path, info, "pass --data")
    assert isinstance(cache, Cache) and cache.case_ids == ["c0"]
    for cache_path, cases in ((str(root), []), (None, ["c0"])):
        info = RunInfo(
            "liver", {}, LIVER.to_json(), ["ct"], cache=cache_path, validation_cases=cases
        )
        with pytest.raises(BraverError) as error:
            validation_cache(tmp_path, info, "pass --data")
        assert str(error.value) == (
            f"{tmp_path / 'run.json'}: records no cache with validation cases; pass --data."
        )
    info = RunInfo("liver", {}, LIVER.to_json(), ["ct"], cache=str(tmp_path / "gone"),
                   validation_cases=["c0"])  # fmt: skip
    with pytest.raises(BraverError) as error:
        validation_cache(tmp_path, info, "pass --data")
    assert str(error.value) == (
        f"{tmp_path / 'run.json'}: the run's cache {tmp_path / 'gone'} is gone; prepare it "
        "again ('braver data prepare') or pass --data."
    )


def _tiny_cache(root):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "braver_tiny_cache", Path(__file__).parent / "train" / "tiny.py"
    )
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    return tiny.write_tiny_cache(root)


def test_load_run_gives_the_runs_learner_on_its_cache_or_a_moved_copy(tmp_path):
    import json
    import shutil

    from braver import braver_learner, load_run, patch_datablock

    cache = _tiny_cache(tmp_path / "cache")
    torch.manual_seed(0)
    dls = patch_datablock("twopath", tile=4, valid_pct=0.25).dataloaders(
        cache, bs=4, patches_per_epoch=8, valid_patches=8
    )
    learn = braver_learner(dls, "twopath", dropout=0.0, path=tmp_path, progress=False)
    folder = learn.save_run(tmp_path / "run", kind="brain")
    info = json.loads((folder / "run.json").read_text())
    train, valid = info["extra"]["train_cases"], info["validation_cases"]
    again = load_run(folder, progress=False)
    assert again.path == folder and again.run_info == load_run_info(folder)
    assert [c.case_id for c in again.dls.train.cases] == train
    assert [c.case_id for c in again.dls.valid.cases] == valid
    assert again.network.training  # ready for further fits
    assert not any(type(cb).__name__ == "ProgressCallback" for cb in again.cbs)
    assert any(type(cb).__name__ == "ProgressCallback" for cb in load_run(folder).cbs)
    # the recorded cases are used as they are (not a split made again)
    other = train[0]
    info["validation_cases"], info["extra"]["train_cases"] = [other], train[1:]
    (folder / "run.json").write_text(json.dumps(info))
    again = load_run(folder, progress=False)
    assert [c.case_id for c in again.dls.valid.cases] == [other]
    assert sorted(c.case_id for c in again.dls.train.cases) == sorted(train[1:])
    # no training cases recorded: the labelled cases that are not validation cases
    info["extra"] = {}
    (folder / "run.json").write_text(json.dumps(info))
    again = load_run(folder, progress=False)
    assert [c.case_id for c in again.dls.train.cases] == sorted(set(cache.case_ids) - {other})
    # the data moved: cache= finds it, and without it the message says so
    moved = tmp_path / "moved"
    shutil.move(cache.root, moved)
    with pytest.raises(BraverError, match=r"run.json: the run's cache .*cache is not there; pass"):
        load_run(folder, progress=False)
    assert load_run(folder, cache=moved, progress=False).dls.train.cache.root == moved
    info["cache"] = None
    (folder / "run.json").write_text(json.dumps(info))
    with pytest.raises(BraverError, match="the run's cache None is not there"):
        load_run(folder, progress=False)
    (folder / "recipe.toml").unlink()
    with pytest.raises(BraverError, match="run: has no recipe.toml; load the network with"):
        load_run(folder, cache=moved)

"""braver.runs: the latest finished run of a kind, among several."""

import os

from braver.data.labels import BRATS_2021, LIVER
from braver.models import create_model
from braver.runs import RunInfo, find_latest_run, resolve_run, save_run_info, save_weights


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


def test_the_latest_run_is_the_newest_finished_one_of_its_kind(tmp_path):
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

"""`braver data synth|inspect|prepare` through Typer's CliRunner: results and bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from braver.cli.data import FORMAT_NAMES
from braver.cli.main import app
from braver.data.formats import FORMATS

runner = CliRunner()
TINY = "20x20x16"


def invoke(*args):
    return runner.invoke(app, ["data", *map(str, args)], env={"COLUMNS": "160"})


def assert_clean_error(result, *fragments):
    """Exit code 2, one 'error:' sentence containing every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error:" in result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, (fragment, text)


@pytest.fixture
def brain(tmp_path):
    result = invoke(
        "synth", "brain", tmp_path / "brain", "--cases", 2, "--seed", 4, "--shape", TINY
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "brain"


def case_file(root, index, key):
    case = f"PhantomBrain_{index:05d}"
    return root / case / f"{case}_{key}.nii.gz"


def rewrite(path, data):
    image = nib.load(str(path))
    nib.save(nib.Nifti1Image(data, image.affine), str(path))


def test_cli_formats_match_the_library():
    assert FORMAT_NAMES == FORMATS


def test_synth_inspect_prepare(brain, tmp_path):
    assert (brain / "phantom.json").exists()
    result = invoke("inspect", brain, "--png", tmp_path / "montage.png")
    assert result.exit_code == 0, result.output
    assert "PhantomBrain_00000" in result.output and "LPS" in result.output
    assert "class balance" in result.output and "enhancing" in result.output
    assert (tmp_path / "montage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    result = invoke("prepare", brain, "--out", tmp_path / "cache", "--workers", 2)
    assert result.exit_code == 0, result.output
    assert "2 prepared" in result.output
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["cases"] == ["PhantomBrain_00000", "PhantomBrain_00001"]

    again = invoke("prepare", brain, "--out", tmp_path / "cache")
    assert again.exit_code == 0 and "2 up to date" in again.output and "skipped" in again.output


def test_prepare_with_n4_channels(brain, tmp_path):
    result = invoke(
        "prepare",
        brain,
        "--out",
        tmp_path / "cache",
        "--n4-channels",
        "t1,t2, flair",
        "--workers",
        1,
    )
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "cache" / "summary.json").read_text())["settings"]
    assert settings["n4"] is True and settings["n4_channels"] == ["t1", "t2", "flair"]
    plain = invoke("prepare", brain, "--out", tmp_path / "plain", "--workers", 1, "--no-n4")
    assert plain.exit_code == 0, plain.output
    case = "PhantomBrain_00000"
    corrected = np.load(tmp_path / "cache" / "cases" / case / "image.npy")
    untouched = np.load(tmp_path / "plain" / "cases" / case / "image.npy")
    np.testing.assert_array_equal(corrected[1], untouched[1])  # t1c is left alone
    assert not np.array_equal(corrected[3], untouched[3])  # flair is corrected

    settings = json.loads((tmp_path / "plain" / "summary.json").read_text())["settings"]
    assert settings["n4"] is False

    bad = invoke("prepare", brain, "--out", tmp_path / "bad", "--n4-channels", "t1,pd")
    assert_clean_error(bad, str(brain), "N4 channels pd", "t1, t1c, t2, flair")
    assert not (tmp_path / "bad").exists()


def test_n4_on_ct_is_refused(tmp_path):
    assert (
        invoke("synth", "liver", tmp_path / "liver", "--cases", 1, "--shape", "32,32,16").exit_code
        == 0
    )
    result = invoke("prepare", tmp_path / "liver", "--out", tmp_path / "cache", "--n4")
    assert_clean_error(result, str(tmp_path / "liver"), "CT", "leave out --n4")


def test_synth_liver_and_prepare_with_window(tmp_path):
    result = invoke("synth", "liver", tmp_path / "liver", "--cases", 1, "--shape", "32,32,16")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "liver" / "volume-0.nii").exists()
    result = invoke(
        "prepare",
        tmp_path / "liver",
        "--out",
        tmp_path / "cache",
        "--hu-window",
        "-100,200",
        "--format",
        "lits",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["settings"]["hu_window"] == [-100.0, 200.0] and summary["channels"] == ["ct"]


def test_synth_brain_with_skull(tmp_path):
    result = invoke("synth", "brain", tmp_path / "b", "--cases", 1, "--shape", TINY, "--with-skull")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "phantom.json").read_text())["skull_stripped"] is False
    t1 = np.asanyarray(nib.load(str(case_file(tmp_path / "b", 0, "t1"))).dataobj)
    assert (t1 > 0).all()


def test_synth_same_seed_same_data(tmp_path):
    for name in ("a", "b"):
        assert (
            invoke(
                "synth", "brain", tmp_path / name, "--cases", 1, "--seed", 9, "--shape", TINY
            ).exit_code
            == 0
        )
    for key in ("t1", "t1ce", "t2", "flair", "seg"):
        a = np.asanyarray(nib.load(str(case_file(tmp_path / "a", 0, key))).dataobj)
        b = np.asanyarray(nib.load(str(case_file(tmp_path / "b", 0, key))).dataobj)
        assert a.tobytes() == b.tobytes()


# --- bad input: exit code 2, one sentence naming the file and the fix, no traceback ------------


def test_synth_into_a_full_folder(brain):
    assert_clean_error(invoke("synth", "brain", brain, "--shape", TINY), str(brain), "--overwrite")


def test_synth_bad_shape(tmp_path):
    result = invoke("synth", "brain", tmp_path / "x", "--shape", "12x12")
    assert result.exit_code == 2 and "--shape takes 3 numbers" in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", ["inspect", "prepare"])
def test_empty_folder(tmp_path, command):
    (tmp_path / "empty").mkdir()
    args = ["--out", tmp_path / "cache"] if command == "prepare" else []
    assert_clean_error(
        invoke(command, tmp_path / "empty", *args), str(tmp_path / "empty"), "is empty"
    )
    assert not (tmp_path / "cache").exists()


def test_unknown_layout(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "scan.nii.gz").write_bytes(b"x")
    assert_clean_error(
        invoke("inspect", tmp_path / "data"), "does not look like any dataset layout", "--format"
    )


def test_wrong_format_forced(brain):
    assert_clean_error(
        invoke("inspect", brain, "--format", "lits"), "holds no cases in the lits layout"
    )


def test_missing_modality(brain, tmp_path):
    case_file(brain, 1, "flair").unlink()
    result = invoke("prepare", brain, "--out", tmp_path / "cache")
    assert_clean_error(result, "PhantomBrain_00001", "FLAIR", "PhantomBrain_00001_flair.nii.gz")
    assert not (tmp_path / "cache" / "cases").exists()


def test_modalities_of_different_shapes(brain, tmp_path):
    path = case_file(brain, 1, "t2")
    rewrite(path, np.ones((20, 20, 15), dtype=np.int16))
    result = invoke("prepare", brain, "--out", tmp_path / "cache", "--workers", 1)
    assert_clean_error(result, "1 of 2 case(s) failed", str(path), "co-register")
    # the good case is in the cache, the bad one is not (nothing half-written)
    assert sorted(p.name for p in (tmp_path / "cache" / "cases").iterdir()) == [
        "PhantomBrain_00000"
    ]
    assert "PhantomBrain_00001" in result.output and "failed" in result.output


def test_image_label_shape_mismatch(brain, tmp_path):
    path = case_file(brain, 0, "seg")
    rewrite(path, np.zeros((20, 20, 15), dtype=np.uint8))
    assert_clean_error(
        invoke("prepare", brain, "--out", tmp_path / "cache"), str(path), "label shape"
    )


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_corrupt_or_truncated_gzip(brain, tmp_path, damage):
    path = case_file(brain, 0, "t1ce")
    blob = path.read_bytes()
    path.write_bytes(b"garbage" * 50 if damage == "corrupt" else blob[: len(blob) // 2])
    result = invoke("prepare", brain, "--out", tmp_path / "cache")
    assert_clean_error(result, str(path), "corrupt or truncated")
    inspected = invoke("inspect", brain)
    assert_clean_error(inspected, "1 of 2 case(s) could not be read", str(path))


def test_nan_intensities(brain, tmp_path):
    path = case_file(brain, 0, "t2")
    data = np.asanyarray(nib.load(str(path)).dataobj).astype(np.float32)
    data[10, 10, 8] = np.nan
    rewrite(path, data)
    assert_clean_error(invoke("prepare", brain, "--out", tmp_path / "cache"), str(path), "NaN")


def test_unexpected_label_values(brain, tmp_path):
    path = case_file(brain, 0, "seg")
    data = np.asanyarray(nib.load(str(path)).dataobj).copy()
    data[10, 10, 8] = 7
    rewrite(path, data)
    assert_clean_error(invoke("inspect", brain), str(path), "unexpected label values [7]")
    assert_clean_error(invoke("prepare", brain, "--out", tmp_path / "cache"), str(path), "[7]")


@pytest.mark.parametrize("shape", [(20, 20), (20, 20, 16, 2, 2)])
def test_2d_and_5d_images(brain, tmp_path, shape):
    path = case_file(brain, 0, "t1")
    rewrite(path, np.ones(shape, dtype=np.int16))
    result = invoke("prepare", brain, "--out", tmp_path / "cache")
    assert_clean_error(result, str(path), f"is a {len(shape)}D image")


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["--debug", "data", "inspect", str(tmp_path / "empty")])
    assert result.exit_code != 0 and result.exception is not None
    assert type(result.exception).__name__ == "BraverError"


def test_synth_realistic_difficulty(tmp_path):
    result = invoke(
        "synth",
        "liver",
        tmp_path / "liver",
        "--cases",
        1,
        "--shape",
        "32,32,16",
        "--difficulty",
        "realistic",
    )
    assert result.exit_code == 0, result.output
    assert "realistic liver" in result.output
    assert (
        json.loads((tmp_path / "liver" / "phantom.json").read_text())["difficulty"] == "realistic"
    )
    bad = invoke("synth", "brain", tmp_path / "b", "--cases", 1, "--difficulty", "hard")
    assert bad.exit_code == 2 and not (tmp_path / "b").exists()


def test_prepare_defaults_to_n4_and_takes_spacing(brain, tmp_path):
    result = invoke("prepare", brain, "--out", tmp_path / "cache", "--workers", 1, "--spacing", 2)
    assert result.exit_code == 0, result.output
    assert "N4 took" in result.output
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["settings"]["n4"] is None and summary["settings"]["target_spacing_mm"] == 2.0
    meta = json.loads(
        (tmp_path / "cache" / "cases" / "PhantomBrain_00000" / "meta.json").read_text()
    )
    assert [s["n4"] for s in meta["channel_stats"]] == [True, True, False, False]
    assert meta["spacing_zyx"][1:] == pytest.approx([2.0, 2.0], abs=0.1)
    both = invoke("prepare", brain, "--out", tmp_path / "x", "--no-n4", "--n4-channels", "t1")
    assert both.exit_code == 2 and "leave out --no-n4" in " ".join(both.output.split())


def test_prepare_ct_zscore(tmp_path):
    result = invoke("synth", "liver", tmp_path / "liver", "--cases", 1, "--shape", TINY)
    assert result.exit_code == 0, result.output
    args = ["--out", tmp_path / "cache", "--ct-normalisation", "zscore", "--workers", 1]
    result = invoke("prepare", tmp_path / "liver", *args)
    assert result.exit_code == 0, result.output
    assert "N4 took" not in result.output
    summary = json.loads((tmp_path / "cache" / "summary.json").read_text())
    assert summary["settings"]["ct_normalisation"] == "zscore"
    assert summary["mean"] == pytest.approx([0.0], abs=1e-6)
    assert summary["std"] == pytest.approx([1.0], abs=1e-6)


def test_brats2013_notes_are_printed(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "data" / "fixture_layouts.py"
    spec = importlib.util.spec_from_file_location("braver_test_fixture_layouts", path)
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    layouts.write_brats2013(tmp_path / "data", "HG/0001", seed=1, n4itk=("t1",))
    result = invoke("inspect", tmp_path / "data")
    assert result.exit_code == 0, result.output
    assert "note: 0001: T1 is there raw" in " ".join(result.output.split())


def test_prepare_hands_every_option_to_prepare_dataset(brain, tmp_path, monkeypatch):
    """Each option of `braver data prepare` reaches the settings, folder and worker count
    that prepare_dataset is given (spied: nothing is prepared)."""
    import braver.preprocess
    from braver.preprocess import PrepareSettings
    from braver.preprocess.pipeline import PrepareReport

    calls = []

    def spy(dataset, out, settings, *, workers, progress, console):
        calls.append((dataset.root, out, settings, workers, progress, console))
        return PrepareReport(out)

    monkeypatch.setattr(braver.preprocess, "prepare_dataset", spy)
    out = tmp_path / "cache"
    result = invoke(
        "prepare", brain, "--out", out, "--workers", 3, "--clip", "2,98.5",
        "--hu-window", "-100,250", "--spacing", 1.5, "--n4-channels", "t1,t2",
        "--ct-normalisation", "unit",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "0 prepared, 0 up to date, 0 failed" in " ".join(result.output.split())
    (root, given_out, settings, workers, progress, console), *_ = calls
    assert (root, given_out, workers, progress) == (brain, out, 3, True)
    assert console is not None
    assert settings == PrepareSettings(
        n4=True,
        n4_channels=("t1", "t2"),
        clip_percentiles=(2.0, 98.5),
        hu_window=(-100.0, 250.0),
        target_spacing_mm=1.5,
        ct_normalisation="unit",
    )
    # without options: braver's defaults, N4 as the modality decides, every core up to 8
    calls.clear()
    assert invoke("prepare", brain, "--out", out).exit_code == 0
    (_, _, settings, workers, _, _), *_ = calls
    assert settings == PrepareSettings(n4=None)
    assert workers == braver.preprocess.default_workers()
    assert invoke("prepare", brain, "--out", out, "--no-n4").exit_code == 0
    assert calls[-1][2] == PrepareSettings(n4=False)
    # a forced layout is the one discovered, and bad numbers are one sentence naming the option
    assert_clean_error(
        invoke("prepare", brain, "--out", out, "--format", "lits"), "no cases in the lits layout"
    )
    for option, value in (("--clip", "1"), ("--clip", "a,b"), ("--hu-window", "-100")):
        result = invoke("prepare", brain, "--out", out, option, value)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert f"{option} takes 2 numbers, e.g. -200,300" in " ".join(result.output.split())
    assert len(calls) == 2  # none of them reached prepare_dataset


def test_synth_hands_every_option_to_the_phantom_writers(tmp_path, monkeypatch):
    """Each option of `braver data synth` reaches synth_brain / synth_liver (spied: nothing
    is written), and their defaults are the library's shapes."""
    from braver.data import phantoms

    calls = []

    def spy(name):
        def write(out, cases, seed, shape, **kwargs):
            calls.append((name, out, cases, seed, shape, kwargs))
            return out

        return write

    monkeypatch.setattr(phantoms, "synth_brain", spy("brain"))
    monkeypatch.setattr(phantoms, "synth_liver", spy("liver"))
    out = tmp_path / "set"
    result = invoke(
        "synth", "brain", out, "--cases", 3, "--seed", 5, "--shape", "20x24x16",
        "--overwrite", "--with-skull", "--difficulty", "realistic",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"wrote 3 realistic brain phantom case(s) to {out}" in " ".join(result.output.split())
    assert all(type(side) is int for side in calls[-1][4])  # whole voxels, not floats
    assert calls.pop() == (
        "brain", out, 3, 5, (20, 24, 16),
        {"overwrite": True, "progress": False, "skull_stripped": False,
         "difficulty": "realistic"},
    )  # fmt: skip
    assert invoke("synth", "brain", out).exit_code == 0
    assert calls.pop() == (
        "brain", out, 10, 0, phantoms.BRAIN_SHAPE,
        {"overwrite": False, "progress": False, "skull_stripped": True, "difficulty": "easy"},
    )  # fmt: skip
    result = invoke("synth", "liver", out, "--cases", 2, "--seed", 7, "--shape", "30x30x12",
                    "--overwrite", "--difficulty", "realistic")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert calls.pop() == (
        "liver", out, 2, 7, (30, 30, 12),
        {"overwrite": True, "progress": False, "difficulty": "realistic"},
    )  # fmt: skip
    assert invoke("synth", "liver", out).exit_code == 0
    assert calls.pop() == (
        "liver", out, 10, 0, phantoms.LIVER_SHAPE,
        {"overwrite": False, "progress": False, "difficulty": "easy"},
    )  # fmt: skip

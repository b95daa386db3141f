"""Phantom datasets: layout, determinism, labels, contrasts, geometry, the default cache."""

from __future__ import annotations

import json
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.data.phantoms import (
    BRAIN_TISSUES,
    DEFAULT_BRAIN,
    LIVER_TISSUES,
    _scanner_channel,
    brain_phantom,
    brain_phantom_tissues,
    default_phantom_cache,
    liver_phantom,
    liver_phantom_tissues,
    smooth_field,
    synth_brain,
    synth_liver,
)
from braver.errors import BraverError
from braver.preprocess import preprocess_case

SMALL = (48, 48, 32)


def test_synth_brain_writes_a_brats2021_dataset(tmp_path):
    out = synth_brain(tmp_path / "brain", cases=2, seed=3, shape=SMALL)
    dataset = discover(out)
    assert dataset.format == "brats2021"
    assert dataset.case_ids == ["PhantomBrain_00000", "PhantomBrain_00001"]
    assert all(c.has_label for c in dataset.cases)
    description = json.loads((out / "phantom.json").read_text())
    assert description["kind"] == "brain" and description["seed"] == 3
    image = nib.load(str(dataset.cases[0].images[0]))
    assert image.shape == SMALL and image.get_data_dtype() == np.int16
    assert "".join(nib.aff2axcodes(image.affine)) == "LPS"
    assert image.header.get_zooms() == (1.0, 1.0, 1.0)
    prepared = preprocess_case(dataset.cases[0])  # and it goes through preprocessing
    assert prepared.image.shape[0] == 4


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path):
    a = synth_brain(tmp_path / "a", cases=2, seed=11, shape=SMALL)
    b = synth_brain(tmp_path / "b", cases=2, seed=11, shape=SMALL)
    c = synth_brain(tmp_path / "c", cases=1, seed=12, shape=SMALL)
    for case in ("PhantomBrain_00000", "PhantomBrain_00001"):
        for key in ("t1", "t1ce", "t2", "flair", "seg"):
            name = f"{case}/{case}_{key}.nii.gz"
            left = np.asanyarray(nib.load(str(a / name)).dataobj)
            right = np.asanyarray(nib.load(str(b / name)).dataobj)
            assert left.tobytes() == right.tobytes(), name
    first = "PhantomBrain_00000/PhantomBrain_00000_t1.nii.gz"
    assert not np.array_equal(
        nib.load(str(a / first)).get_fdata(), nib.load(str(c / first)).get_fdata()
    )


def test_case_does_not_depend_on_the_number_of_cases():
    one, _, _ = brain_phantom(SMALL, np.random.default_rng([5, 1, 1]))
    again, _, _ = brain_phantom(SMALL, np.random.default_rng([5, 1, 1]))
    assert all(np.array_equal(one[k], again[k]) for k in one)


@pytest.fixture(scope="module")
def brains():
    return [brain_phantom((96, 96, 48), seed) for seed in range(6)]


def canonical(array):
    return array[::-1, ::-1, :]


def test_brain_labels_and_skull_stripping(brains):
    seen = set()
    for channels, label, _ in brains:
        values = set(np.unique(label).tolist())
        assert values <= {0, 1, 2, 4}
        seen |= values
        brain = channels["t1"] > 0
        for data in channels.values():
            assert data.dtype == np.int16
            assert ((data > 0) == brain).all()  # every modality zero exactly outside the brain
        assert not label[~brain].any()
        assert 0.3 < brain.mean() < 0.8
    assert seen == {0, 1, 2, 4}


def test_brain_with_skull():
    stripped, label, _ = brain_phantom((64, 64, 32), 5)
    head, label_head, _ = brain_phantom((64, 64, 32), 5, skull_stripped=False)
    np.testing.assert_array_equal(label, label_head)
    brain = stripped["t1"] > 0
    assert (head["t1"][~brain] > 0).mean() > 0.9  # skull, scalp, and noise in the air
    from scipy import ndimage

    inner = ndimage.binary_erosion(brain, structure=np.ones((3, 3, 3)))  # the blur's reach
    for key in stripped:
        np.testing.assert_array_equal(stripped[key][inner], head[key][inner])
    # marrow and scalp fat: bright on T1 just outside the brain
    shell = ndimage.binary_dilation(brain, iterations=8) & ~ndimage.binary_dilation(
        brain, iterations=3
    )
    assert head["t1"][shell].max() > np.median(head["t1"][brain])


def test_brain_contrasts(brains):
    """The relative contrasts radiologists read (and a network must learn)."""
    for channels, label, _ in brains:
        brain = channels["t1"] > 0
        normal = brain & (label == 0)

        def rel(name, where, channels=channels, normal=normal):
            return channels[name][where].mean() / np.median(channels[name][normal])

        if (label == 2).sum() > 50:
            assert rel("flair", label == 2) > 1.3  # edema bright on FLAIR
            assert rel("t2", label == 2) > 1.2  # and on T2
        if (label == 4).sum() > 20:
            assert rel("t1c", label == 4) > 1.3  # enhancing rim bright on T1c
            assert rel("t1c", label == 4) > rel("t1", label == 4) + 0.4  # ... not on T1
        if (label == 1).sum() > 20:
            assert rel("t1", label == 1) < 0.9  # core dark on T1
        # CSF: brightest on T2, dark on FLAIR (suppressed): the top of T2 is not FLAIR-bright
        csf_like = normal & (channels["t2"] > np.percentile(channels["t2"][normal], 97))
        assert rel("flair", csf_like) < 0.8


def test_brain_tumours_vary_in_size_and_position(brains):
    sizes, centres = [], []
    for _, label, _ in brains:
        tumour = np.argwhere(label > 0)
        sizes.append(len(tumour))
        centres.append(tumour.mean(axis=0))
    assert max(sizes) > 2 * min(sizes)
    assert np.ptp(np.array(centres)[:, 0]) > 15  # left and right hemispheres


def test_brain_phantom_default_size_is_fast():
    brain_phantom(rng=0)  # warm up imports
    start = time.perf_counter()
    channels, label, _ = brain_phantom(rng=1)
    elapsed = time.perf_counter() - start
    assert channels["t1"].shape == (128, 128, 64)
    assert elapsed < 2.0  # about 0.3-0.6 s on a laptop core; generous for a busy CI machine


def test_liver_phantom(tmp_path):
    out = synth_liver(tmp_path / "liver", cases=2, seed=0, shape=(64, 64, 32))
    dataset = discover(out)
    assert dataset.format == "lits" and dataset.case_ids == ["volume-0", "volume-1"]
    image = nib.load(str(out / "volume-0.nii"))
    hu = np.asanyarray(image.dataobj)
    label = np.asanyarray(nib.load(str(out / "segmentation-0.nii")).dataobj)
    assert hu.dtype == np.int16 and set(np.unique(label).tolist()) <= {0, 1, 2}
    assert hu.min() <= -950  # air
    assert hu.max() >= 400  # bone
    liver = hu[label == 1]
    assert 30 < np.median(liver) < 130
    assert (label == 1).sum() > 1000
    zooms = image.header.get_zooms()
    assert zooms == pytest.approx((360 / 64, 360 / 64, 160 / 32))


def test_liver_tumours_and_determinism():
    found_tumour = False
    for seed in range(4):
        hu, label, _ = liver_phantom((64, 64, 32), seed)
        again, label_again, _ = liver_phantom((64, 64, 32), seed)
        assert hu.tobytes() == again.tobytes() and label.tobytes() == label_again.tobytes()
        if (label == 2).sum() > 10:
            found_tumour = True
            tumour, liver = np.median(hu[label == 2]), np.median(hu[label == 1])
            assert abs(tumour - liver) > 10  # a visible lesion
    assert found_tumour


def test_smooth_field_statistics():
    field = smooth_field((40, 30, 20), np.random.default_rng(0), (5, 5, 4))
    assert field.dtype == np.float32 and field.shape == (40, 30, 20)
    assert abs(float(field.mean())) < 0.2 and 0.7 < float(field.std()) < 1.3
    assert np.abs(np.diff(field, axis=0)).mean() < 0.3  # smooth


def test_synth_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    out = synth_brain(tmp_path / "brain", cases=1, seed=0, shape=SMALL)
    with pytest.raises(BraverError, match="already exists and is not empty") as error:
        synth_brain(out, cases=1, seed=0, shape=SMALL)
    assert "--overwrite" in str(error.value)
    import braver.data.phantoms as phantoms

    calls = []

    def fail_on_second(shape, rng, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("interrupted")
        return brain_phantom(shape, rng, **kwargs)

    monkeypatch.setattr(phantoms, "brain_phantom", fail_on_second)
    with pytest.raises(RuntimeError):
        synth_brain(tmp_path / "half", cases=3, seed=0, shape=SMALL)
    assert not (tmp_path / "half").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["brain"]  # no temporary folder left


def test_bad_shape_and_cases(tmp_path):
    with pytest.raises(BraverError, match="phantom shape"):
        synth_brain(tmp_path / "x", cases=1, shape=(8, 8, 8))
    with pytest.raises(BraverError, match="--cases"):
        synth_liver(tmp_path / "y", cases=0)


def test_default_phantom_cache_reuse_and_rebuild_when_stale(monkeypatch):
    import braver.data.phantoms as phantoms

    monkeypatch.setattr(phantoms, "DEFAULT_BRAIN", {"cases": 2, "shape": (24, 24, 16), "seed": 1})
    dataset, cache = default_phantom_cache("brain", progress=False)
    assert Cache.open(cache).case_ids == ["PhantomBrain_00000", "PhantomBrain_00001"]
    stamp = (cache / "summary.json").stat().st_mtime_ns
    assert default_phantom_cache("brain", progress=False) == (dataset, cache)
    assert (cache / "summary.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    # a copy made by an older generator is rebuilt
    description = json.loads((dataset / "phantom.json").read_text())
    description["revision"] -= 1
    (dataset / "phantom.json").write_text(json.dumps(description))
    default_phantom_cache("brain", progress=False)
    assert (
        json.loads((dataset / "phantom.json").read_text())["revision"] == phantoms.PHANTOM_REVISION
    )
    assert (cache / "summary.json").stat().st_mtime_ns != stamp


def test_default_phantom_cache_is_n4_corrected_and_follows_its_settings(monkeypatch):
    import braver.data.phantoms as phantoms

    monkeypatch.setattr(phantoms, "DEFAULT_BRAIN", {"cases": 2, "shape": (24, 24, 16), "seed": 1})
    _, cache = default_phantom_cache("brain", progress=False)
    settings = Cache.open(cache).summary["settings"]
    assert settings["n4"] is True and settings["n4_channels"] == ["t1", "t1c", "t2", "flair"]
    corrected = np.load(cache / "cases" / "PhantomBrain_00000" / "image.npy")
    # other settings: the cases are prepared again, not reused
    monkeypatch.setattr(phantoms, "PREPARE_BRAIN", {"n4": False})
    _, again = default_phantom_cache("brain", progress=False)
    assert again == cache and Cache.open(cache).summary["settings"]["n4"] is False
    plain = np.load(cache / "cases" / "PhantomBrain_00000" / "image.npy")
    assert not np.array_equal(plain, corrected)


@pytest.mark.slow
def test_default_phantom_cache_is_made_once_and_reused():
    dataset, cache = default_phantom_cache("brain", progress=False)
    opened = Cache.open(cache)
    assert len(opened) == DEFAULT_BRAIN["cases"] == 24
    assert opened.summary["format"] == "brats2021"
    assert opened.case(opened.case_ids[0]).image.shape[0] == 4
    frequencies = opened.summary["class_frequencies"]
    assert all(f > 0 for f in frequencies)  # every class present: learnable
    assert frequencies[0] < 0.99  # ... and a real imbalance
    stamp = (cache / "summary.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert default_phantom_cache("brain") == (dataset, cache)
    assert time.perf_counter() - start < 0.5
    assert (cache / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_default_liver_cache():
    _, cache = default_phantom_cache("liver", progress=False)
    opened = Cache.open(cache)
    assert opened.channels == ["ct"] and opened.summary["modality"] == "ct"
    assert opened.summary["class_counts"][2] > 0


def test_default_phantom_cache_unknown_kind():
    with pytest.raises(BraverError, match="unknown phantom kind"):
        default_phantom_cache("lung")


# --- the realistic difficulty -------------------------------------------------------------------

REALISTIC = (80, 80, 40)
SEEDS = range(6)


@pytest.fixture(scope="module")
def realistic_brains():
    return [brain_phantom_tissues(REALISTIC, seed, difficulty="realistic") for seed in SEEDS]


@pytest.fixture(scope="module")
def easy_brains():
    return [brain_phantom_tissues(REALISTIC, seed) for seed in SEEDS]


def test_easy_is_the_default_and_realistic_is_deterministic():
    default, label, _ = brain_phantom(SMALL, 4)
    easy, easy_label, _ = brain_phantom(SMALL, 4, difficulty="easy")
    assert all(np.array_equal(default[k], easy[k]) for k in default)
    assert np.array_equal(label, easy_label)
    one, one_label, _ = brain_phantom(SMALL, 4, difficulty="realistic")
    two, two_label, _ = brain_phantom(SMALL, 4, difficulty="realistic")
    assert all(one[k].tobytes() == two[k].tobytes() for k in one)
    assert one_label.tobytes() == two_label.tobytes()
    assert not np.array_equal(one["t1"], easy["t1"])
    hu, liver_label, _ = liver_phantom((48, 48, 24), 4, difficulty="realistic")
    again, again_label, _ = liver_phantom((48, 48, 24), 4, difficulty="realistic")
    assert hu.tobytes() == again.tobytes() and liver_label.tobytes() == again_label.tobytes()
    with pytest.raises(BraverError, match="unknown phantom difficulty 'hard'"):
        brain_phantom(SMALL, 0, difficulty="hard")


def near_tumour(label, tissue, name):
    """Voxels of a normal tissue within 8 voxels of the tumour (the bias field varies slowly)."""
    near = ndimage.binary_dilation(label > 0, iterations=8) & (label == 0)
    return near & (tissue == BRAIN_TISSUES[name])


def local_contrasts(brains):
    """Per case: enhancing / nearby white matter on T1c, edema / nearby grey matter on FLAIR."""
    enhancing, edema = [], []
    for channels, label, _, tissue in brains:
        wm, gm = (
            near_tumour(label, tissue, "white_matter"),
            near_tumour(label, tissue, "grey_matter"),
        )
        if (label == 4).sum() > 20:
            enhancing.append(channels["t1c"][label == 4].mean() / channels["t1c"][wm].mean())
        edema.append(channels["flair"][label == 2].mean() / channels["flair"][gm].mean())
    return np.median(enhancing), np.median(edema)


def test_realistic_lesions_are_closer_to_normal_tissue(easy_brains, realistic_brains):
    easy_enhancing, easy_edema = local_contrasts(easy_brains)
    enhancing, edema = local_contrasts(realistic_brains)
    assert easy_enhancing > 1.35 and easy_edema > 1.35  # bright and well apart
    assert 1.02 < enhancing < 1.3  # still brighter than white matter, but weakly
    assert 1.1 < edema < 1.35  # closer to grey matter on FLAIR
    assert enhancing < easy_enhancing - 0.2 and edema < easy_edema - 0.1


def test_realistic_brain_lookalikes_exist_and_are_not_tumour(realistic_brains):
    for channels, label, _, tissue in realistic_brains:
        brain = channels["t1"] > 0
        wm = brain & (tissue == BRAIN_TISSUES["white_matter"])
        for name in ("white_matter_lesion", "dura", "vessel"):
            where = tissue == BRAIN_TISSUES[name]
            assert where.sum() > 30, name
            assert not label[where].any(), name  # unlabelled: background
        # white-matter hyperintensities: as bright as edema on FLAIR, brighter than white matter
        lesion = tissue == BRAIN_TISSUES["white_matter_lesion"]
        flair_lesion = channels["flair"][lesion].mean()
        assert flair_lesion > 1.05 * np.median(channels["flair"][wm])
        if (label == 2).sum() > 100:
            assert 0.7 < flair_lesion / channels["flair"][label == 2].mean() < 1.3
        # dura and falx: enhancing on T1c and not on T1, like an enhancing rim
        dura = tissue == BRAIN_TISSUES["dura"]
        t1c = channels["t1c"][dura].mean() / np.median(channels["t1c"][wm])
        t1 = channels["t1"][dura].mean() / np.median(channels["t1"][wm])
        assert t1c > 0.95 and t1c > t1 + 0.25


def test_realistic_brains_have_small_and_multiple_tumours(easy_brains, realistic_brains):
    def components(brains):  # sizes of the tumour components of 20 voxels or more, per case
        sizes = []
        for _, label, _, _ in brains:
            labels, _ = ndimage.label(label > 0, np.ones((3, 3, 3)))
            counts = np.bincount(labels.ravel())[1:]
            sizes.append(counts[counts >= 20])
        return sizes

    easy, realistic = components(easy_brains), components(realistic_brains)
    assert sum(len(s) >= 2 for s in realistic) >= 4  # most realistic cases: several lesions
    assert min(s.min() for s in realistic) < 50  # a lesion of a few mm (50 mm³)
    all_easy, all_realistic = np.concatenate(easy), np.concatenate(realistic)
    assert np.median(all_realistic) < 0.5 * np.median(all_easy)


def test_thick_slices_blur_along_z_only():
    image = np.zeros((4, 4, 20), np.float32)
    image[..., 10:] = 1.0  # a step between slices 9 and 10
    rng = np.random.default_rng(0)
    while True:  # the first draw that takes thick slices (70-80% of draws for FLAIR)
        state = rng.bit_generator.state
        if rng.random() < 0.8:
            break
    rng.bit_generator.state = state
    blurred = _scanner_channel(image.copy(), "flair", rng)
    profile = blurred[0, 0]
    assert (np.diff(profile) >= -1e-6).all()  # still a monotonic edge
    ramp = np.count_nonzero((profile > 0.01) & (profile < 0.99))
    assert 4 <= ramp <= 9  # two boxes of 3-5 mm: a ramp of 4-8 slices
    assert (blurred[:, :, 0] == blurred[0, 0, 0]).all()  # nothing changes within a slice


def test_realistic_scanner_variation_makes_white_matter_less_uniform(easy_brains, realistic_brains):
    def variation(brains):  # coefficient of variation of white matter, per case and channel
        return np.median(
            [
                c[k][t == BRAIN_TISSUES["white_matter"]].std()
                / c[k][t == BRAIN_TISSUES["white_matter"]].mean()
                for c, _, _, t in brains
                for k in c
            ]
        )

    easy, realistic = variation(easy_brains), variation(realistic_brains)
    assert 0.08 < easy < 0.16  # bias field, texture and noise
    assert realistic > 1.3 * easy  # a stronger field, more noise, a gamma per channel


@pytest.fixture(scope="module")
def realistic_livers():
    return [liver_phantom_tissues((64, 64, 32), seed, difficulty="realistic") for seed in range(4)]


def test_realistic_liver_tumours_are_small_several_and_low_contrast(realistic_livers):
    counts, sizes, contrasts = [], [], []
    voxel_ml = (360 / 64) * (360 / 64) * (160 / 32) / 1000
    for hu, label, _, _ in realistic_livers:
        labels, count = ndimage.label(label == 2, np.ones((3, 3, 3)))
        counts.append(count)
        sizes.extend(np.bincount(labels.ravel())[1:] * voxel_ml)
        contrasts.append(abs(np.median(hu[label == 2]) - np.median(hu[label == 1])))
    assert min(counts) >= 2 and max(counts) >= 4  # several per liver
    assert np.median(sizes) < 5.0  # most below 5 ml (a 2 cm sphere is 4.2 ml)
    assert 8 < np.median(contrasts) < 40  # 15-45 HU drawn, blurred and noisy


def test_realistic_liver_lookalikes_are_not_tumour(realistic_livers):
    for hu, label, _, tissue in realistic_livers:
        liver = np.median(hu[label == 1])
        cyst = tissue == LIVER_TISSUES["cyst"]
        assert cyst.any() and (label[cyst] == 1).all()  # labelled liver, as LiTS does
        assert np.median(hu[cyst]) < liver - 15  # darker than the liver, like a hypodense lesion
        bowel = tissue == LIVER_TISSUES["bowel"]
        assert bowel.sum() > 10 and not label[bowel].any()  # background
        assert abs(np.median(hu[bowel]) - liver) < 70  # of liver density
        touching = ndimage.binary_dilation(label == 1, iterations=2) & bowel
        assert touching.any() or bowel.sum() < 50  # against the liver


def test_synth_realistic_records_its_difficulty(tmp_path):
    out = synth_liver(
        tmp_path / "liver", cases=1, seed=0, shape=(48, 48, 24), difficulty="realistic"
    )
    assert json.loads((out / "phantom.json").read_text())["difficulty"] == "realistic"
    easy = synth_liver(tmp_path / "easy", cases=1, seed=0, shape=(48, 48, 24))
    assert "difficulty" not in json.loads((easy / "phantom.json").read_text())
    with pytest.raises(BraverError, match="unknown phantom difficulty"):
        synth_brain(tmp_path / "x", cases=1, shape=SMALL, difficulty="hard")
    assert not (tmp_path / "x").exists()


def test_liver_phantoms_are_prepared_as_the_liver_recipe_prepares_data():
    """The demo's liver cache and `braver transfer liver --data` see CT the same way."""
    from braver.data.phantoms import PREPARE_LIVER
    from braver.preprocess import PrepareSettings
    from braver.recipe import shipped_recipe
    from braver.studies.transfer import load_liver_recipe

    _, settings = load_liver_recipe(shipped_recipe("liver"), [], profile=None)
    phantom = PrepareSettings(**PREPARE_LIVER)
    assert phantom.ct_normalisation == settings.prepare.ct_normalisation == "zscore"
    assert phantom.target_spacing_mm == settings.prepare.target_spacing_mm == 5.0
    assert phantom.hu_window == settings.prepare.hu_window == (20.0, 180.0)  # a liver window

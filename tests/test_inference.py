import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from braver.data.cache import Cache
from braver.data.formats import discover
from braver.data.labels import BRATS_2021, LIVER
from braver.data.phantoms import synth_brain
from braver.errors import BraverError
from braver.inference import (
    SpectralConvolutions,
    canonical_zyx,
    class_maps,
    clean_components,
    evaluate_cached_cases,
    predict_case,
    predict_volume,
    resolve_device,
    score_segmentation,
)
from braver.metrics import metric_names, region_scores, worst_hd95_mm
from braver.models import create_model, crop_inputs
from braver.preprocess import PrepareSettings, prepare_dataset
from braver.runs import RunInfo

# an untrained network whose output biases make it call every computed pixel edema (class 2)
EDEMA_PRIOR = [0.001, 0.001, 0.997, 0.001]


def random_image(rng, shape=(4, 3, 22, 19)):
    """A (C, Z, Y, X) image that is 0 outside a box, as the cache is outside the foreground."""
    image = np.zeros(shape, np.float32)
    image[:, :, 3:19, 2:16] = rng.standard_normal((shape[0], shape[1], 16, 14))
    return image


def patch_probabilities(model, image, z, y, x):
    """Softmax of the model on the patch around each (z, y, x): the paper's per-pixel mode."""
    side = max(model.input_sizes)
    before = side // 2  # a patch of side s centred on c covers [c - s//2, c - s//2 + s)
    padded = np.pad(
        image, ((0, 0), (0, 0), (before, side - 1 - before), (before, side - 1 - before))
    )
    patches = np.stack(
        [padded[:, k, i : i + side, j : j + side] for k, i, j in zip(z, y, x, strict=True)]
    )
    with torch.no_grad():
        logits = model(*crop_inputs(model, torch.from_numpy(patches)))
    return torch.softmax(logits, dim=1)[:, :, 0, 0].numpy()


@pytest.mark.parametrize("name", ["twopath", "input_cascade", "local_cascade", "mf_cascade"])
def test_dense_volume_equals_per_patch_predictions(name, rng):
    torch.manual_seed(0)
    model = create_model(name, in_channels=4, num_classes=4, init_range=0.1).eval()
    image = random_image(rng)
    probs = predict_volume(model, image, batch_size=2)
    assert probs.shape == (4, 3, 22, 19) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    # sampled pixels: inside the foreground, on its border and in the zero surround
    z = rng.integers(0, 3, 24)
    y = np.concatenate([rng.integers(3, 19, 14), [3, 18, 0, 21, 10, 0, 21, 5, 12, 3]])
    x = np.concatenate([rng.integers(2, 16, 14), [2, 15, 0, 18, 0, 18, 9, 1, 17, 15]])
    expected = patch_probabilities(model, image, z, y, x)
    inside = (y >= 3) & (y < 19) & (x >= 2) & (x < 16)
    assert np.abs(probs[:, z, y, x].T[inside] - expected[inside]).max() < 1e-4
    # outside the foreground box nothing is run: background with probability 1
    assert (probs[0, :, :3] == 1).all() and (probs[0, :, :, 16:] == 1).all()
    if name != "twopath":
        return
    # without the crop every pixel is run and equals its patch as well
    full = predict_volume(model, image, batch_size=3, crop_to_foreground=False)
    assert np.abs(full[:, z, y, x].T - expected).max() < 1e-4
    assert np.abs(full[:, :, 3:19, 2:16] - probs[:, :, 3:19, 2:16]).max() < 1e-4


def test_spectral_convolution_equals_the_direct_one(rng):
    x = torch.from_numpy(rng.standard_normal((2, 40, 30, 27)).astype(np.float32))
    weight = torch.from_numpy(rng.uniform(-0.05, 0.05, (3, 40, 11, 11)).astype(np.float32))
    bias = torch.tensor([0.5, -1.0, 2.0])
    direct = torch.nn.functional.conv2d(x, weight, bias)
    mode = SpectralConvolutions((32, 40))
    with torch.inference_mode(), mode:
        spectral = torch.nn.functional.conv2d(x, weight, bias)
        small_kernel = torch.nn.functional.conv2d(x, weight[..., :3, :3])  # passes through
    assert spectral.shape == direct.shape == (2, 3, 20, 17)
    assert (spectral - direct).abs().max() < 1e-4
    assert len(mode._weights) == 1  # this weight went through the FFT path, once
    assert torch.equal(small_kernel, torch.nn.functional.conv2d(x, weight[..., :3, :3]))
    with mode:  # with autograd on, the layer's own convolution runs (training is untouched)
        assert torch.equal(torch.nn.functional.conv2d(x, weight, bias), direct)


@pytest.mark.parametrize("name", ["twopath", "mf_cascade"])
def test_dense_volume_with_and_without_fft(name, rng):
    torch.manual_seed(2)
    model = create_model(name, in_channels=4, num_classes=4, init_range=0.1)
    image = random_image(rng, (4, 2, 22, 19))
    fast = predict_volume(model, image, fft=True)
    plain = predict_volume(model, image, fft=False)
    # float32 rounding of the transforms: large random weights (init_range 0.1) give logits in
    # the hundreds; 1.02e-4 was measured on torch 2.14.1 (CPU), so the bound leaves room
    assert np.abs(fast - plain).max() < 3e-4


def test_empty_slices_are_skipped_and_progress_reported(rng):
    model = create_model("twopath", in_channels=2, num_classes=3)
    image = random_image(rng, (2, 5, 22, 19))
    image[:, 1] = 0
    image[:, 4] = 0
    calls = []
    model.train()
    probs = predict_volume(model, image, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 3), (3, 3)]  # three slices with foreground, in batches of two
    assert (probs[0, [1, 4]] == 1).all() and (probs[1:, [1, 4]] == 0).all()
    assert model.training  # the caller's mode is restored
    blank = predict_volume(model, np.zeros((2, 2, 8, 8), np.float32))
    assert blank.shape == (3, 2, 8, 8) and (blank[0] == 1).all()


def test_flip_tta_averages_the_mirrored_prediction(rng):
    torch.manual_seed(1)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.1)
    image = random_image(rng)
    plain = predict_volume(model, image)
    mirrored = predict_volume(model, image[..., ::-1].copy())[..., ::-1]
    tta = predict_volume(model, image, tta=True)
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-5)
    assert np.abs(tta - plain).max() > 1e-3  # the flip does change something


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(BraverError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(BraverError, match="CUDA is not available"):
            resolve_device("cuda")


# --- connected components -----------------------------------------------------------------------


def test_small_tumour_components_are_removed():
    classes = np.zeros((10, 12, 12), np.uint8)
    classes[1:5, 1:5, 1:5] = 2  # 64 voxels
    classes[2:4, 2:4, 2:4] = 3  # enhancing inside: same component
    classes[7:9, 8:10, 8:9] = 1  # 4 voxels
    classes[9, 11, 11] = 3  # 1 voxel, touches nothing
    cleaned = clean_components(classes, BRATS_2021, min_size=5)
    assert (cleaned[1:5, 1:5, 1:5] == classes[1:5, 1:5, 1:5]).all()
    assert cleaned[7:, 8:, 8:].sum() == 0
    assert (clean_components(classes, BRATS_2021) == classes).all()  # nothing asked, nothing done
    assert classes[9, 11, 11] == 3  # the input is not changed


def test_diagonal_neighbours_are_one_component():
    classes = np.zeros((4, 4, 4), np.uint8)
    classes[0, 0, 0] = classes[1, 1, 1] = classes[2, 2, 2] = 2  # corner-connected chain of 3
    assert (clean_components(classes, BRATS_2021, min_size=3) == classes).all()
    assert clean_components(classes, BRATS_2021, min_size=4).sum() == 0


def test_liver_keeps_its_largest_component_and_absorbs_small_tumours():
    classes = np.zeros((8, 10, 10), np.uint8)
    classes[1:7, 1:6, 1:6] = 1  # liver, 150 voxels
    classes[3:5, 2:4, 2:4] = 2  # tumour of 8 voxels inside
    classes[5, 4, 5] = 2  # 1-voxel tumour inside, two voxels from the other along x
    classes[1:3, 8:10, 8:10] = 1  # stray liver blob, 8 voxels
    cleaned = clean_components(classes, LIVER, min_size=3)
    assert cleaned[1:3, 8:10, 8:10].sum() == 0  # stray blob gone
    assert (cleaned[3:5, 2:4, 2:4] == 2).all()  # big tumour kept
    assert cleaned[2, 3, 4] == 1  # small tumour became liver
    kept = clean_components(classes, LIVER, keep_largest=False)
    assert (kept == classes).all()


# --- raw cases in, NIfTI out --------------------------------------------------------------------

# file axes: i → posterior (−y), j → superior (+z), k → left (−x); anisotropic voxels
PERMUTED_AFFINE = np.array(
    [
        [0.0, 0.0, -1.2, 30.0],
        [-0.9, 0.0, 0.0, 12.0],
        [0.0, 2.5, 0.0, -20.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
FILE_SHAPE = (20, 12, 16)
FOREGROUND = (slice(3, 11), slice(2, 9), slice(5, 14))  # in file (i, j, k) coordinates


def write_case(folder, rng, label=True):
    """One BraTS-2021-style case whose image is non-zero only in FOREGROUND (file grid)."""
    case = folder / "Case_001"
    case.mkdir(parents=True)
    for key in ("t1", "t1ce", "t2", "flair"):
        data = np.zeros(FILE_SHAPE, np.float32)
        data[FOREGROUND] = rng.uniform(100, 200, size=data[FOREGROUND].shape)
        nib.save(nib.Nifti1Image(data, PERMUTED_AFFINE), case / f"Case_001_{key}.nii.gz")
    if label:
        seg = np.zeros(FILE_SHAPE, np.uint8)
        seg[5:9, 4:7, 7:12] = 2
        seg[6:8, 5:6, 8:10] = 4
        nib.save(nib.Nifti1Image(seg, PERMUTED_AFFINE), case / "Case_001_seg.nii.gz")
    return case


def edema_run(**extra):
    model = create_model("twopath", in_channels=4, num_classes=4, class_frequencies=EDEMA_PRIOR)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        prepare=PrepareSettings().to_dict(),
        **extra,
    )
    return model, info


def test_predict_case_writes_the_inputs_geometry(tmp_path, rng):
    case_folder = write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    model, info = edema_run()
    result = predict_case(model, info, case, out_dir=tmp_path / "out", probabilities=True)
    seg_path, prob_path = result.written
    assert seg_path.name == "Case_001_seg.nii.gz"

    # nibabel: same shape and affine; edema (2) exactly on the foreground, 0 elsewhere
    seg = nib.load(seg_path)
    assert seg.shape == FILE_SHAPE
    np.testing.assert_allclose(seg.affine, PERMUTED_AFFINE, atol=1e-5)
    data = np.asarray(seg.dataobj)
    expected = np.zeros(FILE_SHAPE, np.uint8)
    expected[FOREGROUND] = 2
    assert (data == expected).all()
    assert (data == result.segmentation).all()

    # SimpleITK reads the same grid as it reads the input image
    out_itk = sitk.ReadImage(str(seg_path))
    in_itk = sitk.ReadImage(str(case_folder / "Case_001_flair.nii.gz"))
    assert out_itk.GetSize() == in_itk.GetSize() == FILE_SHAPE
    np.testing.assert_allclose(out_itk.GetOrigin(), in_itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out_itk.GetDirection(), in_itk.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(out_itk.GetSpacing(), in_itk.GetSpacing(), atol=1e-5)
    assert set(np.unique(sitk.GetArrayFromImage(out_itk)).tolist()) == {0, 2}

    # probabilities: (X, Y, Z, K) float32, background 1 outside the foreground
    probs = nib.load(prob_path)
    assert probs.shape == (*FILE_SHAPE, 4) and probs.get_data_dtype() == np.float32
    values = probs.get_fdata()
    np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=1e-5)
    assert (values[..., 0][expected == 0] == 1).all()
    assert (values[..., 2][expected == 2] > 0.9).all()


def test_predict_case_refuses_other_channels(tmp_path, rng):
    write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    model = create_model("twopath", in_channels=1, num_classes=3)
    info = RunInfo("liver", model.config, LIVER.to_json(), ["ct"])
    with pytest.raises(BraverError, match="channel"):
        predict_case(model, info, case)


def test_score_segmentation_in_the_file_grid(tmp_path, rng):
    write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    truth = np.asarray(nib.load(case.label).dataobj)
    pred = np.where(truth == 4, 2, truth).astype(np.uint8)  # enhancing missed, called edema
    scored = score_segmentation(case, pred)
    spacing = (0.9, 2.5, 1.2)  # along the file's i, j, k
    classes = BRATS_2021.to_classes(truth)
    expected = region_scores(BRATS_2021.to_classes(pred), classes, BRATS_2021, spacing)
    assert scored.row.pop("case") == "Case_001"
    assert scored.row == pytest.approx(expected)  # the file stores the spacing as float32
    assert scored.row["whole_tumor_dice"] == 1.0
    assert scored.row["enhancing_tumor_hd95_mm"] == pytest.approx(
        worst_hd95_mm(FILE_SHAPE, spacing)
    )
    # overlays get the canonical (Z, Y, X) grid: superior is file axis j, anterior is −i
    canonical, spacing_zyx = canonical_zyx(classes, PERMUTED_AFFINE)
    assert (scored.truth_zyx == canonical).all()
    assert canonical.shape == (12, 20, 16) and spacing_zyx == pytest.approx((2.5, 0.9, 1.2))
    assert scored.image_zyx.shape == canonical.shape

    with pytest.raises(BraverError, match="has shape"):
        score_segmentation(case, pred[:-1])
    with pytest.raises(BraverError, match="missing"):
        score_segmentation(case, tmp_path / "nowhere_seg.nii.gz")
    with pytest.raises(BraverError, match="unexpected label values"):
        score_segmentation(case, np.full(FILE_SHAPE, 3, np.uint8))


# --- cached validation cases --------------------------------------------------------------------


def test_evaluate_cached_cases_scores_whole_volumes(tmp_path):
    synth_brain(tmp_path / "data", cases=2, seed=3, shape=(28, 30, 16))
    prepare_dataset(tmp_path / "data", tmp_path / "cache", progress=False)
    cache = Cache.open(tmp_path / "cache")
    model, _ = edema_run()
    seen = []
    rows = evaluate_cached_cases(model, cache, cache.case_ids, "cpu", on_case=seen.append)
    assert [r["case"] for r in rows] == cache.case_ids
    assert list(rows[0]) == ["case", *metric_names(BRATS_2021)]
    for row, scored in zip(rows, seen, strict=True):
        case = cache.case(row["case"])
        probs = predict_volume(model, case.image)
        spacing = case.meta["spacing_zyx"]
        worst = worst_hd95_mm(case.meta["canonical_shape_zyx"], spacing)
        expected = region_scores(
            probs.argmax(0), np.asarray(case.label), BRATS_2021, spacing, worst_hd95=worst
        )
        assert row == {"case": case.case_id, **expected}
        assert row["whole_tumor_sensitivity"] == 1.0  # edema everywhere in the brain
        assert row["enhancing_tumor_hd95_mm"] == pytest.approx(worst)  # never predicted
        assert scored.image_zyx.shape == scored.truth_zyx.shape == case.label.shape
    # the raw class maps that post-processing values are chosen on
    maps = class_maps(model, cache, cache.case_ids[:1])
    case = cache.case(cache.case_ids[0])
    classes, truth, spacing = maps[0]
    np.testing.assert_array_equal(classes, predict_volume(model, case.image).argmax(0))
    np.testing.assert_array_equal(truth, case.label)
    assert spacing == tuple(case.meta["spacing_zyx"]) and classes.dtype == np.uint8


# --- wiring: per-batch boxes, the run's preparation, its channel order --------------------------


def test_every_slice_of_a_batch_is_computed_over_its_own_foreground(rng):
    """Slices whose foreground boxes differ, in one batch: every foreground pixel is run."""
    model, _ = edema_run()
    image = np.zeros((4, 3, 22, 19), np.float32)
    for z, (ys, xs) in enumerate(
        [(slice(1, 6), slice(1, 5)), (slice(12, 21), slice(10, 18)), (slice(6, 10), slice(13, 19))]
    ):
        image[:, z, ys, xs] = rng.uniform(
            0.5, 1.5, size=(4, ys.stop - ys.start, xs.stop - xs.start)
        )
    foreground = (image != 0).any(axis=0)
    batched = predict_volume(model, image, batch_size=3)
    assert (batched.argmax(0)[foreground] == 2).all()  # edema wherever the image is
    alone = predict_volume(model, image, batch_size=1)  # one slice a batch: its own box
    np.testing.assert_allclose(batched[:, foreground], alone[:, foreground], atol=1e-5)


def test_predict_case_prepares_the_case_with_the_runs_settings(tmp_path, rng):
    from braver.preprocess import preprocess_case

    write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    settings = PrepareSettings(n4=False, clip_percentiles=(10.0, 90.0), crop_margin=1)
    model, info = edema_run()
    info.prepare = settings.to_dict()
    result = predict_case(model, info, case)
    expected = preprocess_case(case, settings).image
    default = preprocess_case(case, PrepareSettings(n4=False)).image
    assert result.prepared.image.shape == expected.shape != default.shape  # the margin
    np.testing.assert_array_equal(result.prepared.image, expected)


def test_predict_case_feeds_the_channels_in_the_runs_order(tmp_path, rng):
    """A run trained on (flair, t1, t1c, t2) gets the case's channels in that order."""
    write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.2)
    info = RunInfo(
        kind="brain",
        model=model.config,
        label_scheme=BRATS_2021.to_json(),
        channels=["flair", "t1", "t1c", "t2"],
        prepare=PrepareSettings(n4=False).to_dict(),
    )
    from braver.postprocess import NONE

    result = predict_case(model, info, case, postprocess=NONE)
    image = result.prepared.image
    order = [list(case.channels).index(c) for c in info.channels]
    assert order != [0, 1, 2, 3]
    probs = predict_volume(model, image[order])
    assert (result.classes_zyx == probs.argmax(0)).all()
    assert not (result.classes_zyx == predict_volume(model, image).argmax(0)).all()


def test_predict_case_passes_its_options_on(tmp_path, rng):
    """Batch size, progress, flip TTA and post-processing reach the prediction; class maps
    are uint8; probabilities only when asked for."""
    write_case(tmp_path / "data", rng)
    (case,) = discover(tmp_path / "data").cases
    torch.manual_seed(3)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.2)
    _, info = edema_run()
    info.prepare = PrepareSettings(n4=False).to_dict()
    calls = []
    plain = predict_case(
        model, info, case, batch_size=2, progress=lambda d, t: calls.append((d, t))
    )
    assert plain.probabilities is None and plain.classes_zyx.dtype == np.uint8
    assert plain.case_id == "Case_001"
    slices = int((plain.prepared.image != 0).any(axis=(0, 2, 3)).sum())
    assert slices > 2 and calls == [(min(n, slices), slices) for n in range(2, slices + 2, 2)]
    flipped = predict_case(model, info, case, tta=True, probabilities=True)
    again = predict_case(model, info, case, probabilities=True)
    assert np.abs(flipped.probabilities - again.probabilities).max() > 1e-3
    # the edema network's one component is smaller than a million voxels: removed
    edema, _ = edema_run()
    assert (predict_case(edema, info, case).classes_zyx == 2).any()
    cleaned = predict_case(edema, info, case, postprocess={"min_component_voxels": 10**6})
    assert not (cleaned.classes_zyx > 0).any()


def test_check_compatible_and_channel_order_of_other_cases():
    from types import SimpleNamespace

    from braver.inference import channel_order, check_compatible

    _, info = edema_run()
    names = {"case_id": "c", "folder": "f", "channels": ["a", "b", "c", "d"]}
    unlabelled = SimpleNamespace(**names, scheme=LIVER, label=None)
    assert check_compatible(info, unlabelled).class_names == BRATS_2021.class_names
    labelled = SimpleNamespace(**names, scheme=LIVER, label="f/c_seg.nii.gz")
    with pytest.raises(BraverError, match="is labelled with"):
        check_compatible(info, labelled)
    assert channel_order(info, unlabelled) == [0, 1, 2, 3]  # other names: the case's order


def test_nothing_outside_the_foreground_box_is_run(rng):
    """The box is exactly the foreground's rows 3–18 and columns 2–15, on every side."""
    torch.manual_seed(0)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.1)
    image = random_image(rng)
    probs = predict_volume(model, image, batch_size=3)
    outside = np.ones((22, 19), bool)
    outside[3:19, 2:16] = False
    assert (probs[0][:, outside] == 1).all()
    # run there, the network would not give background 1 on any of the four sides
    full = predict_volume(model, image, batch_size=3, crop_to_foreground=False)
    for side in (full[0][:, 2], full[0][:, 19], full[0][:, :, 1], full[0][:, :, 16]):
        assert (side != 1).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_tensors_of_other_dtypes_are_cast_to_float32(dtype, rng):
    """A half or double tensor is predicted as its float32 values (the network is float32)."""
    torch.manual_seed(0)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.1)
    image = torch.from_numpy(random_image(rng)).to(dtype)
    probs = predict_volume(model, image, batch_size=3)
    expected = predict_volume(model, image.float().numpy(), batch_size=3)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def write_liver_case(root, slice_mm):
    """An MSD liver case, 10 × 10 voxels of 1 mm in plane, 4 slices of ``slice_mm`` (HU: body
    everywhere but a 1-voxel rim of air; the label is background)."""
    from tests.data.fixture_layouts import save

    task = root / "Task03_Liver"
    hu = np.full((10, 10, 4), -1000, np.int16)
    hu[1:9, 1:9, :] = 50
    affine = np.diag([1.0, 1.0, slice_mm, 1.0])
    save(task / "imagesTr" / "liver_7.nii.gz", hu, affine)
    save(task / "labelsTr" / "liver_7.nii.gz", np.zeros(hu.shape, np.uint8), affine)
    spec = {"name": "Liver", "modality": {"0": "CT"}, "training": []}
    spec["labels"] = {"0": "background", "1": "liver", "2": "cancer"}
    (task / "dataset.json").write_text(json.dumps(spec))
    return task


def test_predict_case_post_processes_liver_with_the_cases_spacing(tmp_path, monkeypatch):
    """Tumour one slice (5 mm) off the liver is outside a 2 mm margin, inside a 6 mm one; on a
    grid taken as 1 mm it would be kept by both."""
    import braver.inference as inference
    from braver.postprocess import PostprocessOptions

    def liver_then_tumour(model, image, **kwargs):
        probs = np.zeros((3, *image.shape[1:]), np.float32)
        probs[0] = 1
        probs[:, 1, 2:6, 2:6] = np.array([0, 1, 0])[:, None, None]  # liver, slice 1
        probs[:, 2, 3, 3] = [0, 0, 1]  # tumour on slice 2, over the liver
        return probs

    monkeypatch.setattr(inference, "predict_volume", liver_then_tumour)
    (case,) = discover(write_liver_case(tmp_path, slice_mm=5.0)).cases
    model = create_model("twopath", in_channels=1, num_classes=3)
    info = RunInfo("liver", model.config, LIVER.to_json(), list(case.channels))
    info.prepare = PrepareSettings().to_dict()

    def tumour(margin_mm):
        options = PostprocessOptions(inside_organ_dilation_mm=margin_mm)
        result = predict_case(model, info, case, postprocess=options)
        assert tuple(result.prepared.meta["spacing_zyx"]) == (5.0, 1.0, 1.0)
        return int((result.classes_zyx == 2).sum())

    assert tumour(2.0) == 0
    assert tumour(6.0) == 1


def test_an_unlabelled_case_of_another_scheme_gets_the_runs_label_values(tmp_path, rng):
    """An MSD-brain case (enhancing = 3) predicted by a BraTS 2021 run (enhancing = 4) is
    written with the run's values: the class map is the run's."""
    import dataclasses

    from braver.data.labels import MSD_BRAIN

    write_case(tmp_path / "data", rng, label=False)
    (case,) = discover(tmp_path / "data").cases
    case = dataclasses.replace(case, scheme=MSD_BRAIN)
    model = create_model(
        "twopath", in_channels=4, num_classes=4, class_frequencies=[0.001, 0.001, 0.001, 0.997]
    )
    _, info = edema_run()
    info.prepare = PrepareSettings(n4=False).to_dict()
    result = predict_case(model, info, case, postprocess={"min_component_voxels": 0})
    expected = np.zeros(FILE_SHAPE, np.uint8)
    expected[FOREGROUND] = 4
    assert (result.segmentation == expected).all()


def test_the_cpu_default_runs_the_output_layer_through_ffts_of_the_padded_slice(rng, monkeypatch):
    """On the CPU the output layer goes through FFTs sized to the padded slice, once a batch;
    with ``fft=False`` it does not."""
    import braver.inference as inference

    made = []

    class Spy(SpectralConvolutions):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = 0
            made.append(self)

        def _convolve(self, *args):
            self.calls += 1
            return super()._convolve(*args)

    monkeypatch.setattr(inference, "SpectralConvolutions", Spy)
    model = create_model("twopath", in_channels=4, num_classes=4, init_range=0.1)
    image = random_image(rng)  # (4, 3, 22, 19)
    predict_volume(model, image, batch_size=2)
    (spy,) = made
    side = max(model.input_sizes)
    assert spy.fft_shape == (22 + side - 1, 19 + side - 1) and spy.calls == 2  # two batches
    predict_volume(model, image, batch_size=2, fft=True)
    assert len(made) == 2 and made[1].calls == 2
    predict_volume(model, image, batch_size=2, fft=False)
    assert len(made) == 2

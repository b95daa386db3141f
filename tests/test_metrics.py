import math

import numpy as np
import pytest
import torch
from medpy.metric.binary import dc as medpy_dice
from medpy.metric.binary import hd95 as medpy_hd95
from scipy import ndimage

from braver.data.labels import BRATS_2013, BRATS_2021, LIVER
from braver.metrics import (
    PatchAccuracy,
    RegionDice,
    binary_scores,
    hd95_mm,
    metric_names,
    region_dice_metrics,
    region_scores,
    summarize,
    summary_rows,
    worst_hd95_mm,
)


def cube(shape, start, stop):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = True
    return mask


# --- hand-built cases with known answers -------------------------------------------------------


def test_overlapping_cubes_counts():
    pred = cube((10, 10, 10), (2, 2, 2), (6, 6, 6))  # 64 voxels
    truth = cube((10, 10, 10), (3, 3, 3), (7, 7, 7))  # 64 voxels, 27 shared
    s = binary_scores(pred, truth, (1, 1, 1), worst=99.0)
    assert s["dice"] == pytest.approx(54 / 128)
    assert s["sensitivity"] == pytest.approx(27 / 64)
    assert s["specificity"] == pytest.approx((1000 - 64 - 37) / (1000 - 64))


def test_hd95_respects_anisotropic_spacing():
    a = cube((8, 8, 8), (2, 3, 3), (3, 4, 4))  # one voxel
    b = cube((8, 8, 8), (5, 3, 3), (6, 4, 4))  # three slices further along z
    assert hd95_mm(a, b, (3.0, 1.0, 1.0), worst=1e3) == pytest.approx(9.0)
    c = cube((8, 8, 8), (2, 3, 6), (3, 4, 7))  # three columns along x
    assert hd95_mm(a, c, (3.0, 1.0, 0.5), worst=1e3) == pytest.approx(1.5)
    d = cube((8, 8, 8), (4, 5, 3), (5, 6, 4))  # diagonal in z-y
    assert hd95_mm(a, d, (2.0, 0.5, 1.0), worst=1e3) == pytest.approx(math.hypot(4.0, 1.0))


def test_identical_masks_are_perfect():
    mask = cube((6, 7, 8), (1, 1, 1), (5, 6, 7))
    s = binary_scores(mask, mask, (1.0, 2.0, 0.7), worst=50.0)
    assert s == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0, "hd95_mm": 0.0}


def test_empty_truth_and_prediction_scores_perfect():
    empty = np.zeros((4, 5, 6), dtype=bool)
    s = binary_scores(empty, empty, (1, 1, 1), worst=12.0)
    assert s == {"dice": 1.0, "sensitivity": 1.0, "specificity": 1.0, "hd95_mm": 0.0}


def test_missed_and_spurious_regions_get_the_worst_value():
    empty = np.zeros((10, 12, 14), dtype=bool)
    blob = cube(empty.shape, (2, 2, 2), (4, 4, 4))
    missed = binary_scores(empty, blob, (1, 1, 1), worst=77.0)
    assert missed["dice"] == 0.0 and missed["hd95_mm"] == 77.0 and missed["sensitivity"] == 0.0
    spurious = binary_scores(blob, empty, (1, 1, 1), worst=77.0)
    assert spurious["dice"] == 0.0 and spurious["hd95_mm"] == 77.0
    assert spurious["specificity"] == pytest.approx(1 - 8 / empty.size)
    assert not any(math.isnan(v) for v in [*missed.values(), *spurious.values()])


def test_worst_value_is_the_volume_diagonal():
    # BraTS scores failures with 373.13 mm: the diagonal of its 240×240×155 1 mm volume
    assert worst_hd95_mm((155, 240, 240), (1, 1, 1)) == pytest.approx(373.13, abs=0.01)
    assert worst_hd95_mm((10, 20, 20), (2.0, 0.5, 0.5)) == pytest.approx(math.sqrt(600))
    truth = np.zeros((10, 20, 20), dtype=np.uint8)
    truth[3:5, 3:5, 3:5] = 1
    scores = region_scores(np.zeros_like(truth), truth, BRATS_2021, (2.0, 0.5, 0.5))
    assert scores["whole_tumor_hd95_mm"] == pytest.approx(math.sqrt(600))
    assert scores["enhancing_tumor_hd95_mm"] == 0.0  # no enhancing in either
    assert scores["enhancing_tumor_dice"] == 1.0


def test_brats_regions_are_unions_of_classes():
    truth = np.zeros((6, 10, 10), dtype=np.uint8)
    truth[1:5, 2:8, 2:8] = 2  # edema
    truth[2:4, 4:6, 4:6] = 1  # necrosis
    pred = truth.copy()
    pred[pred == 1] = 3  # necrosis called enhancing: whole tumour still perfect
    s = region_scores(pred, truth, BRATS_2021, (1, 1, 1))
    assert list(s) == metric_names(BRATS_2021)
    assert s["whole_tumor_dice"] == 1.0
    assert s["tumor_core_dice"] == 1.0  # necrosis and enhancing are both core
    assert s["enhancing_tumor_dice"] == 0.0
    assert s["enhancing_tumor_hd95_mm"] == pytest.approx(worst_hd95_mm((6, 10, 10), (1, 1, 1)))


def test_brats_2013_core_includes_non_enhancing():
    truth = np.zeros((4, 8, 8), dtype=np.uint8)
    truth[1:3, 2:6, 2:6] = 3  # non-enhancing
    pred = np.zeros_like(truth)
    pred[1:3, 2:6, 2:4] = 3
    s = region_scores(pred, truth, BRATS_2013, (1, 1, 1))
    assert s["tumor_core_dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert s["whole_tumor_dice"] == pytest.approx(2 * 16 / (16 + 32))
    assert s["enhancing_tumor_dice"] == 1.0


def test_liver_region_contains_the_tumour():
    truth = np.zeros((4, 8, 8), dtype=np.uint8)
    truth[:, 1:7, 1:7] = 1
    truth[1:3, 3:5, 3:5] = 2
    pred = np.where(truth > 0, 1, 0).astype(np.uint8)  # liver right, tumour missed
    s = region_scores(pred, truth, LIVER, (2.5, 0.8, 0.8))
    assert s["liver_dice"] == 1.0 and s["liver_hd95_mm"] == 0.0
    assert s["tumor_dice"] == 0.0 and s["tumor_sensitivity"] == 0.0
    assert list(s) == metric_names(LIVER)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        region_scores(
            np.zeros((2, 3, 4), np.uint8), np.zeros((2, 3, 5), np.uint8), LIVER, (1, 1, 1)
        )


# --- against medpy ------------------------------------------------------------------------------


def blob(rng, shape, threshold):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0)
    return noise > threshold * noise.std()


@pytest.mark.parametrize("seed", range(6))
def test_matches_medpy_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 40, 36)
    spacing = tuple(rng.choice([0.5, 0.9, 1.0, 2.5, 5.0], size=3))
    a, b = blob(rng, shape, 1.2), blob(rng, shape, 1.0)  # blobs touch the volume's edges too
    s = binary_scores(a, b, spacing, worst=1e3)
    assert s["dice"] == pytest.approx(medpy_dice(a, b), abs=1e-12)
    assert s["hd95_mm"] == pytest.approx(medpy_hd95(a, b, voxelspacing=spacing), abs=1e-9)


def test_matches_medpy_on_small_far_apart_blobs():
    a = cube((30, 30, 30), (2, 2, 2), (5, 6, 4))
    b = cube((30, 30, 30), (20, 18, 25), (26, 22, 28))
    spacing = (3.0, 0.7, 1.3)
    assert hd95_mm(a, b, spacing, worst=1e3) == pytest.approx(medpy_hd95(a, b, spacing))


# --- summary ------------------------------------------------------------------------------------


def test_summary_mean_std_median():
    rows = [
        {"case": "a", "x_dice": 1.0},
        {"case": "b", "x_dice": 0.5},
        {"case": "c", "x_dice": 0.0},
    ]
    summary = summarize(rows)
    assert summary == {
        "x_dice": {"mean": 0.5, "std": pytest.approx(np.std([1, 0.5, 0])), "median": 0.5}
    }
    assert summary_rows(summary)[0] == {"case": "mean", "x_dice": 0.5}


# --- fastai metrics -----------------------------------------------------------------------------


def one_hot_logits(classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Logits whose argmax is ``classes``: (B, k, k) → (B, K, k, k), or (B,) → (B, K)."""
    logits = torch.nn.functional.one_hot(classes.long(), num_classes).float()
    return logits.movedim(-1, 1)


class FakeLearner:
    """What the metrics read from a fastai Learner; ``ranks`` copies imitate an all-gather."""

    def __init__(self, pred, y, ranks=1):
        self.pred, self.y, self.ranks = pred, y, ranks

    def to_detach(self, x):
        return torch.cat([x.detach().cpu()] * self.ranks)


def test_region_dice_accumulates_dense_tiles():
    target = torch.tensor([[[0, 1], [2, 3]], [[3, 3], [0, 0]]])  # BraTS 2021 classes
    pred = torch.tensor([[[0, 1], [1, 3]], [[3, 0], [0, 2]]])
    metrics = region_dice_metrics(BRATS_2021)
    assert [m.name for m in metrics] == [
        "whole_tumor_dice",
        "tumor_core_dice",
        "enhancing_tumor_dice",
        "patch_accuracy",
    ]
    for m in metrics:
        m.reset()
        # two half batches give the same counts as one batch
        m.accumulate(FakeLearner(one_hot_logits(pred[:1], 4), target[:1]))
        m.accumulate(FakeLearner(one_hot_logits(pred[1:], 4), target[1:]))
    whole, core, enhancing, accuracy = (m.value for m in metrics)
    # whole: pred {1,2,3} at 5 pixels, truth at 5, 4 shared
    assert whole == pytest.approx(2 * 4 / (5 + 5))
    assert (metrics[0].tp, metrics[0].fp, metrics[0].fn) == (4, 1, 1)
    # core (necrosis + enhancing): pred 4 pixels, truth 4, shared 3
    assert core == pytest.approx(2 * 3 / (4 + 4))
    # enhancing: pred 2, truth 3, shared 2
    assert enhancing == pytest.approx(2 * 2 / (2 + 3))
    assert accuracy == pytest.approx(5 / 8)


def test_region_dice_on_patch_centres_and_ranks():
    target = torch.tensor([0, 1, 2, 2, 0])
    pred = one_hot_logits(torch.tensor([0, 1, 1, 2, 2]), 3)
    dice = RegionDice(LIVER, "tumor")
    dice.accumulate(FakeLearner(pred, target, ranks=2))
    assert (dice.tp, dice.fp, dice.fn) == (2, 2, 2)  # counts of both ranks summed
    assert dice.value == pytest.approx(0.5)
    accuracy = PatchAccuracy()
    accuracy.accumulate(FakeLearner(pred, target, ranks=2))
    assert (accuracy.correct, accuracy.total) == (6, 10)


def test_region_dice_without_any_positive_is_one_and_checks_shapes():
    dice = RegionDice(LIVER, "tumor")
    dice.update(one_hot_logits(torch.zeros(3), 3), torch.zeros(3))
    assert dice.value == 1.0
    with pytest.raises(ValueError, match="do not match"):
        dice.update(torch.zeros(2, 3, 2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="no region"):
        RegionDice(LIVER, "whole_tumor")


def test_summary_median_and_mean_of_a_skewed_metric():
    """Values worked by hand: mean 0.4, median 0.2, population std √(0.56/3)."""
    rows = [{"case": "a", "x": 1.0}, {"case": "b", "x": 0.2}, {"case": "c", "x": 0.0}]
    summary = summarize(rows)["x"]
    assert summary["mean"] == pytest.approx(0.4)
    assert summary["median"] == pytest.approx(0.2)
    assert summary["std"] == pytest.approx((0.56 / 3) ** 0.5)
    assert [r["case"] for r in summary_rows({"x": summary})] == ["mean", "std", "median"]
    assert summary_rows({"x": summary})[2]["x"] == pytest.approx(0.2)

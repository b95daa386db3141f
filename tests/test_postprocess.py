"""Post-processing on hand-built class maps: exact voxels kept, removed and filled."""

from __future__ import annotations

import numpy as np
import pytest

from braver.data.labels import BRATS_2013, BRATS_2021, LIVER, MSD_BRAIN
from braver.errors import BraverError
from braver.postprocess import (
    DEFAULTS,
    MIN_COMPONENT_CANDIDATES,
    NONE,
    PostprocessOptions,
    choose_options,
    core_fill_class,
    describe,
    fill_holes_per_slice,
    largest_component,
    postprocess,
    recipe_options,
    region_dice,
    resolve_options,
    run_options,
    select_option,
    small_components,
    within_distance,
)
from braver.runs import RunInfo

NECROSIS, EDEMA, ENHANCING = 1, 2, 3  # BraTS 2021 classes
LIVER_CLASS, TUMOUR = 1, 2


def test_largest_component_and_small_components():
    mask = np.zeros((6, 8, 8), bool)
    mask[0:3, 0:3, 0:3] = True  # 27 voxels
    mask[4, 6, 6] = mask[5, 7, 7] = True  # 2 voxels joined by a corner
    mask[5, 0, 7] = True  # 1 voxel
    assert largest_component(mask).sum() == 27 and largest_component(mask)[1, 1, 1]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()
    removed = small_components(mask, 3)
    assert removed.sum() == 3 and removed[4, 6, 6] and removed[5, 7, 7] and removed[5, 0, 7]
    assert small_components(mask, 2).sum() == 1  # the corner pair is one component of 2
    assert not small_components(mask, 0).any()


def test_fill_holes_per_slice_fills_enclosed_pixels_only():
    mask = np.zeros((3, 7, 7), bool)
    mask[1, 1:6, 1:6] = True
    mask[1, 2:5, 2:5] = False  # a ring around a 3 x 3 hole
    mask[2, 1:6, 1:6] = True
    mask[2, 3:6, 3] = False  # a notch open to the outside of the square: not a hole
    filled = fill_holes_per_slice(mask)
    assert filled[1, 2:5, 2:5].all() and filled[1].sum() == 25
    assert (filled[2] == mask[2]).all()
    assert not filled[0].any()
    assert mask[1, 3, 3] == 0  # the input is not changed


def test_within_distance_respects_the_spacing():
    mask = np.zeros((5, 1, 11), bool)
    mask[2, 0, 5] = True
    near = within_distance(mask, 2.0, spacing_zyx=(2.0, 1.0, 1.0))
    # along x (1 mm voxels): 2 voxels either side; along z (2 mm): one slice either side
    assert np.flatnonzero(near[2, 0]).tolist() == [3, 4, 5, 6, 7]
    assert np.flatnonzero(near[:, 0, 5]).tolist() == [1, 2, 3]
    assert near.sum() == 7  # (1, 0, 4) is sqrt(2^2 + 1) > 2 mm away
    assert (within_distance(mask, 0, (1, 1, 1)) == mask).all()
    assert not within_distance(np.zeros((2, 2, 2), bool), 5.0).any()


def brain_classes():
    classes = np.zeros((4, 12, 12), np.uint8)
    classes[0:3, 1:8, 1:8] = EDEMA  # 147 voxels of tumour, one component
    classes[1, 2:7, 2:7] = ENHANCING  # a ring of enhancing rim ...
    classes[1, 3:6, 3:6] = EDEMA  # ... around a hole predicted as edema (9 pixels)
    classes[3, 10:12, 10:12] = EDEMA  # a separate blob of 4 voxels
    return classes


def test_brain_small_components_and_core_holes():
    classes = brain_classes()
    cleaned = postprocess(
        classes, BRATS_2021, NONE.replace(min_component_voxels=5, fill_holes=True)
    )
    assert not cleaned[3, 10:12, 10:12].any()  # the 4-voxel blob is gone
    assert (cleaned[1, 3:6, 3:6] == NECROSIS).all()  # the hole became necrosis
    changed = cleaned != classes
    assert changed.sum() == 4 + 9
    # each option alone
    only_small = postprocess(classes, BRATS_2021, NONE.replace(min_component_voxels=5))
    assert (only_small != classes).sum() == 4
    only_holes = postprocess(classes, BRATS_2021, NONE.replace(fill_holes=True))
    assert (only_holes != classes).sum() == 9
    assert (postprocess(classes, BRATS_2021, NONE) == classes).all()
    assert (postprocess(classes, BRATS_2021, NONE.replace(min_component_voxels=4)) == classes).all()
    largest = postprocess(classes, BRATS_2021, NONE.replace(largest_component=True))
    assert (largest != classes).sum() == 4


def test_core_fill_class_per_scheme():
    assert BRATS_2021.class_names[core_fill_class(BRATS_2021)] == "necrosis"
    assert BRATS_2013.class_names[core_fill_class(BRATS_2013)] == "necrosis"
    assert MSD_BRAIN.class_names[core_fill_class(MSD_BRAIN)] == "non_enhancing"


def liver_classes():
    classes = np.zeros((6, 16, 16), np.uint8)
    classes[0:6, 1:9, 1:9] = LIVER_CLASS  # the liver, 384 voxels (x = 1 … 8)
    classes[2:4, 3:6, 3:6] = TUMOUR  # a tumour inside it (18 voxels)
    classes[2, 2, 2] = TUMOUR  # a one-voxel tumour inside, apart from the other
    classes[1:3, 12:15, 12:15] = LIVER_CLASS  # a stray liver blob (18 voxels) ...
    classes[2, 13, 13] = TUMOUR  # ... with a tumour voxel inside
    classes[1, 4:7, 11] = TUMOUR  # 3 tumour voxels 3 mm from the liver along x
    classes[4, 4:7, 9] = TUMOUR  # 3 tumour voxels touching the liver's edge from outside
    return classes


def test_liver_largest_component_keeps_the_organ_and_what_touches_it():
    classes = liver_classes()
    cleaned = postprocess(classes, LIVER, NONE.replace(largest_component=True))
    assert not cleaned[1:3, 12:15, 12:15].any()  # stray blob and its tumour: background
    assert not cleaned[1, 4:7, 11].any()  # a tumour apart from the liver: background
    assert (cleaned[4, 4:7, 9] == TUMOUR).all()  # touching the liver: one component with it
    assert (cleaned != classes).sum() == 18 + 3


def test_tumour_only_inside_the_dilated_liver():
    classes = liver_classes()
    options = NONE.replace(inside_organ_dilation_mm=0.0)
    inside = postprocess(classes, LIVER, options)
    # tumour inside the liver's filled outline stays, even where no liver voxel touches it
    assert (inside[2:4, 3:6, 3:6] == TUMOUR).all() and inside[2, 2, 2] == TUMOUR
    assert inside[2, 13, 13] == TUMOUR  # inside the stray blob's outline (blob not removed)
    assert not inside[1, 4:7, 11].any() and not inside[4, 4:7, 9].any()  # outside: background
    assert (inside != classes).sum() == 6
    # 1 mm: the tumour touching the liver's edge stays; the one 3 mm away does not
    near = postprocess(classes, LIVER, NONE.replace(inside_organ_dilation_mm=1.0))
    assert (near[4, 4:7, 9] == TUMOUR).all() and not near[1, 4:7, 11].any()
    far = postprocess(classes, LIVER, NONE.replace(inside_organ_dilation_mm=3.0))
    assert (far == classes).all()
    # with 2 mm voxels along x they are 2 mm and 6 mm away
    thick = postprocess(
        classes, LIVER, NONE.replace(inside_organ_dilation_mm=3.0), spacing_zyx=(1, 1, 2)
    )
    assert (thick[4, 4:7, 9] == TUMOUR).all() and not thick[1, 4:7, 11].any()


def test_liver_small_tumours_become_liver_and_holes_are_filled():
    classes = np.zeros((3, 10, 10), np.uint8)
    classes[:, 1:9, 1:9] = LIVER_CLASS
    classes[1, 2:5, 2:5] = TUMOUR  # 9 voxels
    classes[1, 7, 7] = TUMOUR  # 1 voxel
    classes[0, 6:8, 2:4] = 0  # a hole in the liver (a vessel missed)
    cleaned = postprocess(
        classes,
        LIVER,
        NONE.replace(largest_component=False, min_component_voxels=2, fill_holes=True),
    )
    assert cleaned[1, 7, 7] == LIVER_CLASS and (cleaned[1, 2:5, 2:5] == TUMOUR).all()
    assert (cleaned[0, 6:8, 2:4] == LIVER_CLASS).all()
    assert (cleaned != classes).sum() == 1 + 4


def test_options_from_tables_and_their_errors():
    options = PostprocessOptions.from_dict({"min_component_voxels": 30, "fill_holes": True})
    assert options == PostprocessOptions(min_component_voxels=30, fill_holes=True)
    assert PostprocessOptions.from_dict(options.to_dict()) == options
    assert resolve_options(LIVER) == DEFAULTS["liver"]
    assert resolve_options(BRATS_2021, {"fill_holes": True}) == DEFAULTS["brain"].replace(
        fill_holes=True
    )
    assert PostprocessOptions.from_dict({"inside_organ_dilation_mm": "none"}) == NONE
    with pytest.raises(BraverError, match=r"unknown post-processing option\(s\) \['min_size'\]"):
        PostprocessOptions.from_dict({"min_size": 3}, where="recipe.toml")
    with pytest.raises(BraverError, match="min_component_voxels = -1 must be a whole number"):
        PostprocessOptions.from_dict({"min_component_voxels": -1})
    with pytest.raises(BraverError, match="fill_holes = 'yes' must be true or false"):
        PostprocessOptions.from_dict({"fill_holes": "yes"})
    with pytest.raises(BraverError, match="applies to organ"):
        resolve_options(BRATS_2021, {"inside_organ_dilation_mm": 3})


def run_info(extra: dict) -> RunInfo:
    return RunInfo(
        kind="brain",
        model={},
        label_scheme=BRATS_2021.to_json(),
        channels=["t1", "t1c", "t2", "flair"],
        extra=extra,
    )


def test_run_options_read_run_json_then_overrides():
    assert run_options(run_info({})) == DEFAULTS["brain"]
    recorded = run_info({"postprocess": {"min_component_voxels": 120}})
    assert run_options(recorded).min_component_voxels == 120
    assert run_options(recorded, {"fill_holes": True}) == DEFAULTS["brain"].replace(
        min_component_voxels=120, fill_holes=True
    )
    assert run_options(recorded, NONE) == NONE
    with pytest.raises(BraverError, match="run.json"):
        run_options(run_info({"postprocess": {"min_voxels": 1}}))


def test_select_option_picks_the_size_with_the_best_validation_dice():
    truth = np.zeros((4, 12, 12), np.uint8)
    truth[0:3, 1:6, 1:6] = EDEMA  # 75 voxels
    pred = truth.copy()
    pred[3, 9:12, 9:12] = EDEMA  # a false positive of 9 voxels
    pred[0, 8, 8] = EDEMA  # and one of 1 voxel
    cases = [(pred, truth, (1.0, 1.0, 1.0))]
    best, rows = select_option(cases, BRATS_2021, candidates=[0, 2, 10, 100])
    assert best == 10  # 2 leaves the 9-voxel blob; 100 removes the tumour itself
    assert [row["min_component_voxels"] for row in rows] == [0, 2, 10, 100]
    assert rows[0]["whole_tumor_dice"] == pytest.approx(150 / 160)
    assert rows[1]["whole_tumor_dice"] == pytest.approx(150 / 159)
    assert rows[2]["whole_tumor_dice"] == 1.0 and rows[2]["mean_dice"] == 1.0
    assert rows[3]["whole_tumor_dice"] == 0.0
    # a tie goes to the first (gentlest) candidate
    assert select_option(cases, BRATS_2021, candidates=[10, 20])[0] == 10
    with pytest.raises(BraverError, match="no validation cases"):
        select_option([], BRATS_2021)


def test_region_dice_counts_empty_as_perfect():
    empty = np.zeros((2, 2, 2), np.uint8)
    assert region_dice(empty, empty, LIVER) == {"liver_dice": 1.0, "tumor_dice": 1.0}


def test_describe():
    assert describe(NONE) == "none"
    options = PostprocessOptions(True, 5.0, 50, True)
    assert describe(options) == (
        "largest component, tumour within 5 mm of the liver, components of 50+ voxels, holes filled"
    )


def test_cli_flags_become_the_postprocess_argument():
    from braver.cli._common import postprocess_choice

    assert postprocess_choice(True, None) is None  # the run's options
    assert postprocess_choice(True, 7) == {"min_component_voxels": 7}  # changed
    assert postprocess_choice(False, None) == NONE  # replaced: nothing done
    assert postprocess_choice(False, 7) == NONE.replace(min_component_voxels=7)
    recorded = run_info({"postprocess": {"fill_holes": True}})
    assert run_options(recorded, postprocess_choice(True, 7)) == DEFAULTS["brain"].replace(
        fill_holes=True, min_component_voxels=7
    )


def test_choose_options_one_after_the_other():
    truth = np.zeros((3, 12, 12), np.uint8)
    truth[:, 1:9, 1:9] = LIVER_CLASS
    truth[1, 3:6, 3:6] = TUMOUR
    pred = truth.copy()
    pred[:, 10:12, 10:12] = LIVER_CLASS  # a stray liver blob, 12 voxels
    pred[1, 7, 7] = TUMOUR  # a one-voxel false tumour inside the liver
    cases = [(pred, truth, (1.0, 1.0, 1.0))]
    candidates = {"largest_component": [False, True], "min_component_voxels": [0, 2, 20]}
    options, tables = choose_options(cases, LIVER, candidates, base=NONE)
    assert options == NONE.replace(largest_component=True, min_component_voxels=2)
    assert list(tables) == ["largest_component", "min_component_voxels"]
    # the size is chosen with the largest component already on: Dice 1 from 2 voxels up,
    # and 20 removes the true tumour (9 voxels)
    sizes = tables["min_component_voxels"]
    assert [row["mean_dice"] for row in sizes][:2] == [pytest.approx((1 + 18 / 19) / 2), 1.0]
    assert sizes[2]["tumor_dice"] == 0.0


def test_recipe_options_choose_the_auto_keys_on_validation_cases():
    truth = np.zeros((4, 12, 12), np.uint8)
    truth[0:3, 1:6, 1:6] = EDEMA
    pred = truth.copy()
    pred[3, 9:12, 9:12] = EDEMA  # a 9-voxel false positive
    cases = [(pred, truth, (1.0, 1.0, 1.0))]
    options, tables = recipe_options(
        {"min_component_voxels": "auto", "fill_holes": True}, cases, BRATS_2021
    )
    assert options == DEFAULTS["brain"].replace(min_component_voxels=10, fill_holes=True)
    assert list(tables) == ["min_component_voxels"]
    assert [row["min_component_voxels"] for row in tables["min_component_voxels"]] == list(
        MIN_COMPONENT_CANDIDATES
    )
    fixed, none = recipe_options({"min_component_voxels": 30}, [], BRATS_2021)
    assert fixed.min_component_voxels == 30 and none == {}
    with pytest.raises(BraverError, match="cannot be chosen automatically"):
        recipe_options({"inside_organ_dilation_mm": "auto"}, cases, BRATS_2021)
    with pytest.raises(BraverError, match=r"unknown post-processing option\(s\) \['size'\]"):
        recipe_options({"size": "auto"}, cases, BRATS_2021, where="recipe.toml")

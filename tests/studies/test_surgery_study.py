"""The surgery study: variants, the prune recipe, the scores, the study as one call."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from braver.data.labels import BRATS_2021
from braver.errors import BraverError
from braver.metrics import region_scores, worst_hd95_mm
from braver.models import create_model, crop_inputs
from braver.recipe import PruneRecipe, PruneVariants, load_prune_recipe
from braver.studies.surgery import (
    ACCURACY,
    Operation,
    StudyCase,
    build_variants,
    evaluate_variants,
    recipe_operations,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tile(model: nn.Module, k: int = 3, seed: int = 1) -> tuple[torch.Tensor, ...]:
    side = max(model.input_sizes) + k - 1
    big = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(seed))
    return crop_inputs(model, big)


def test_identity_name_matching_both_networks_gives_one_variant_each():
    model = create_model("input_cascade")
    variants = build_variants(model, [Operation("identity", ("conv2",))])
    assert [v.name for v in variants] == [
        "intact",
        "identity first.local.conv2",
        "identity second.local.conv2",
    ]
    assert "'conv2' matches 2 layers" in variants[1].note
    assert variants[1].parameters_removed == 64 * 2 * 64 * 9 + 64 * 2
    # in a LocalCascade the second conv2 also takes the class map: skipped, and said so
    variants = build_variants(create_model("local_cascade"), [Operation("identity", ("conv2",))])
    assert [v.name for v in variants] == ["intact", "identity first.local.conv2"]
    assert variants[1].note == (
        "'conv2' matches 2 layers (first.local.conv2, second.local.conv2): one row each; "
        "second.local.conv2 skipped (changes the number of maps)"
    )


def test_bad_names_and_incompatible_layers_are_refused_before_any_work():
    model = create_model("twopath")
    with pytest.raises(BraverError, match="no layer named 'conv9'.*local.conv1, local.conv2"):
        build_variants(model, [Operation("identity", ("conv9",))])
    with pytest.raises(BraverError, match="cannot replace local.conv1.*can be: local.conv2"):
        build_variants(model, [Operation("identity", ("local.conv1",))])
    with pytest.raises(BraverError, match="cannot replace local.conv1"):  # both conv1 refuse
        build_variants(model, [Operation("identity", ("conv1",))])
    with pytest.raises(BraverError, match="ambiguous"):  # switch/copy keep the ambiguity error
        build_variants(create_model("input_cascade"), [Operation("switch", ("conv2", "output"))])
    with pytest.raises(BraverError, match="switch takes 2 name"):
        Operation("switch", ("conv2",))


def test_shipped_recipe_gives_the_seed_study():
    recipe = load_prune_recipe()
    assert recipe.variants.identity == "each" and recipe.variants.keep == ["local", "global"]
    names = [v.name for v in build_variants(*_ops(recipe, "twopath"))]
    assert names == [
        "intact",
        "identity local.conv2",
        "keep local (global removed)",
        "keep global (local removed)",
    ]
    names = [v.name for v in build_variants(*_ops(recipe, "input_cascade"))]
    assert names[1:3] == ["identity first.local.conv2", "identity second.local.conv2"]
    assert names[-2:] == [
        "keep second (local scale; first removed)",
        "keep first (global scale; second removed)",
    ]
    pairs = PruneRecipe(
        PruneVariants(
            identity=[], keep=[], keep_network=[], switch=[["first.output", "second.output"]]
        )
    )
    assert [v.name for v in build_variants(*_ops(pairs, "local_cascade"))] == [
        "intact",
        "switch first.output ↔ second.output",
    ]


def _ops(recipe, name):
    model = create_model(name)
    return model, recipe_operations(recipe, model)


def test_recipe_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[variants]\nidentity = "each"\nkepp = ["local"]\n')
    with pytest.raises(BraverError, match=r"p.toml: unknown key variants.kepp; known keys in vari"):
        load_prune_recipe(path)
    path.write_text("[evaluate]\ncases = 1\n")
    with pytest.raises(BraverError, match=r"unknown key evaluate; known keys in recipe: variants"):
        load_prune_recipe(path)
    path.write_text('[variants]\nkeep = ["output"]\n')
    with pytest.raises(BraverError, match="variants.keep = \\['output'\\] must be a list of local"):
        load_prune_recipe(path)
    path.write_text('[variants]\nswitch = [["a"]]\n[evaluation]\ncases = 2\n')
    with pytest.raises(BraverError, match="pairs of layer names"):
        load_prune_recipe(path)
    path.write_text("[evaluation]\ncases = -1\n")
    with pytest.raises(BraverError, match="evaluation.cases = -1 must be 0 or more"):
        load_prune_recipe(path)
    path.write_text('[evaluation]\ncases = "all"\n')
    with pytest.raises(BraverError, match="evaluation.cases = 'all' must be int"):
        load_prune_recipe(path)
    path.write_text('[variants]\nidentity = ["conv2"]\n[evaluation]\ncases = 2\n')
    recipe = load_prune_recipe(path)
    assert recipe.variants.identity == ["conv2"] and recipe.evaluation.cases == 2
    assert recipe.variants.keep == ["local", "global"] and recipe.source == str(path)
    with pytest.raises(BraverError, match="recipe not found"):
        load_prune_recipe(tmp_path / "missing.toml")


def phantom_case(case_id: str, seed: int) -> StudyCase:
    """A 12×40×40 volume: a 4×16×16 block of foreground holding a small tumour."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, 12, 40, 40), np.float32)
    image[:, 4:8, 12:28, 12:28] = rng.normal(size=(4, 4, 16, 16)) + 0.5
    label = np.zeros((12, 40, 40), np.uint8)
    label[5:7, 16:24, 16:24] = 2  # edema
    label[5:7, 18:22, 18:22] = 3  # enhancing
    label[6, 19:21, 19:21] = 1  # necrosis
    return StudyCase(case_id, image, label, (1.0, 1.0, 1.0), (12, 40, 40))


def test_run_study_scores_every_variant_on_the_same_cases():
    # untrained with a prior: every computed pixel is edema, whatever the path kept
    model = create_model("twopath", class_frequencies=[0.01, 0.01, 0.97, 0.01], dropout=0.0)
    variants = build_variants(model, [Operation("keep", ("local",))])
    cases = [phantom_case("a", 0), phantom_case("b", 1)]
    steps = []
    result = evaluate_variants(
        variants, iter(cases), BRATS_2021, step=lambda c, v: steps.append((c, v))
    )
    assert steps == [(c.case_id, v.name) for c in cases for v in variants]
    intact, kept = result.rows
    assert [r["variant"] for r in result.rows] == ["intact", "keep local (global removed)"]
    # the foreground is the 4×16×16 block, all predicted edema: accuracy = edema's share
    truth_edema = 2 * (64 - 16)
    assert intact[ACCURACY] == pytest.approx(truth_edema / (4 * 16 * 16))
    classes = np.zeros((12, 40, 40), np.uint8)
    classes[4:8, 12:28, 12:28] = 2
    expected = region_scores(
        classes,
        cases[0].label,
        BRATS_2021,
        (1.0, 1.0, 1.0),
        worst_hd95=worst_hd95_mm((12, 40, 40), (1, 1, 1)),
    )
    assert result.per_case["intact"][0]["whole_tumor_dice"] == pytest.approx(
        expected["whole_tumor_dice"]
    )
    assert intact["whole_tumor_dice"] == pytest.approx(2 * 128 / (4 * 16 * 16 + 128))
    assert intact["tumor_core_dice"] == 0.0
    assert intact["delta_whole_tumor_dice"] is None and kept["delta_whole_tumor_dice"] == 0.0
    assert kept["parameters_removed"] == 4 * 320 * 169 + 320 + 4 * 160 * 441
    assert intact["seconds_per_volume"] > 0 and kept["seconds_per_volume"] > 0
    assert list(intact) == [
        "variant",
        "parameters_removed",
        ACCURACY,
        "whole_tumor_dice",
        "tumor_core_dice",
        "enhancing_tumor_dice",
        "seconds_per_volume",
        f"delta_{ACCURACY}",
        "delta_whole_tumor_dice",
        "delta_tumor_core_dice",
        "delta_enhancing_tumor_dice",
        "note",
    ]


def _prune_cli_helpers():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "cli" / "test_prune_cli.py"
    spec = importlib.util.spec_from_file_location("braver_test_prune_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_surgery_study_is_the_whole_command_in_one_call(tmp_path):
    import csv
    import json

    from braver.studies.surgery import run_surgery_study

    helpers = _prune_cli_helpers()
    cache = helpers.cache.__wrapped__(_Factory(tmp_path))  # the module fixture, called directly
    run = helpers.make_run(tmp_path / "run", cache=cache)
    calls = []
    study = run_surgery_study(
        run,
        identity=["conv2"],
        cases=1,
        out=tmp_path / "out",
        progress=lambda text, done, total: calls.append((text, done, total)),
    )
    assert study.folder == tmp_path / "out"
    assert [r["variant"] for r in study.rows] == ["intact", "identity local.conv2"]
    assert calls == [
        ("tiny_000: intact", 0, 2),
        ("tiny_000: identity local.conv2", 1, 2),
        ("done", 2, 2),
    ]
    with open(study.folder / "prune.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["intact", "identity local.conv2"]
    report = json.loads((study.folder / "prune.json").read_text())
    assert report["cases"] == ["tiny_000"] and report["recipe"] is None
    assert (study.folder / "prune.png").stat().st_size > 0
    assert study.table().row_count == 2


class _Factory:
    def __init__(self, root):
        self.root = root

    def mktemp(self, name):
        folder = self.root / name
        folder.mkdir()
        return folder


def test_each_variant_is_scored_with_its_own_network():
    """Variants whose predictions differ get their own scores, not the intact network's."""
    from braver.inference import predict_volume

    torch.manual_seed(3)
    model = create_model("twopath", dropout=0.0, init_range=0.05)
    operations = [Operation("keep", ("local",)), Operation("keep", ("global",))]
    variants = build_variants(model, operations)
    cases = [phantom_case("a", 0)]
    result = evaluate_variants(variants, iter(cases), BRATS_2021)
    foreground = (cases[0].image != 0).any(axis=0)
    accuracies = []
    for variant, row in zip(variants, result.rows, strict=True):
        classes = predict_volume(variant.model, cases[0].image).argmax(0)
        hits = np.count_nonzero((classes == cases[0].label) & foreground)
        assert row["variant"] == variant.name
        assert row[ACCURACY] == pytest.approx(hits / np.count_nonzero(foreground))
        accuracies.append(row[ACCURACY])
    assert len(set(accuracies)) == 3  # the three networks predict differently
    assert result.rows[1][f"delta_{ACCURACY}"] == pytest.approx(accuracies[1] - accuracies[0])


def test_operations_from_the_command_line_and_a_recipe_keep_their_kinds_and_order():
    from braver.studies.surgery import operations_from

    operations = operations_from(
        identity=["conv2"], keep=["local"], switch=[("a", "b")], copy=[["c", "d"]]
    )
    assert operations == [
        Operation("identity", ("conv2",)),
        Operation("keep", ("local",)),
        Operation("switch", ("a", "b")),
        Operation("copy", ("c", "d")),
    ]
    assert operations_from() == []
    recipe = PruneRecipe(
        PruneVariants(
            identity=["conv2"],
            keep=["global"],
            keep_network=["first"],
            switch=[["first.output", "second.output"]],
            copy=[["first.local.conv2", "second.local.conv2"]],
        )
    )
    assert recipe_operations(recipe, create_model("input_cascade")) == [
        Operation("identity", ("conv2",)),
        Operation("keep", ("global",)),
        Operation("keep", ("first",)),
        Operation("switch", ("first.output", "second.output")),
        Operation("copy", ("first.local.conv2", "second.local.conv2")),
    ]
    # keep_network only for a cascade
    assert Operation("keep", ("first",)) not in recipe_operations(recipe, create_model("twopath"))


def test_a_name_matching_one_layer_gives_one_variant_without_a_note_and_records_say_what_it_is():
    from braver.studies.surgery import variant_records

    model = create_model("twopath")
    twice = [Operation("identity", ("conv2",)), Operation("identity", ("local.conv2",))]
    intact, changed = build_variants(model, twice)  # the same layer asked for twice: one row
    assert changed.name == "identity local.conv2" and changed.note == ""
    copy = Operation("copy", ("first.local.conv2", "second.local.conv2"))
    copied = build_variants(create_model("input_cascade"), [copy])[1]
    assert copied.name == "copy first.local.conv2 → second.local.conv2"
    records = variant_records([intact, changed])
    assert records == [
        {"variant": "intact", "operations": [], "parameters_removed": 0, "note": ""},
        {
            "variant": "identity local.conv2",
            "operations": changed.operations,
            "parameters_removed": changed.parameters_removed,
            "note": "",
        },
    ]
    assert changed.parameters_removed > 0 and changed.operations[0]["layer"] == "local.conv2"


def test_variants_are_warmed_up_once_then_predicted_whole_with_the_batch_size(monkeypatch):
    """One untimed single-slice pass per variant before the first case only; every pass gets
    the batch size; a missed region's HD95 is the diagonal of the uncropped volume."""
    import braver.inference as inference

    calls = []
    predict = inference.predict_volume

    def spy(model, image, **kwargs):
        calls.append((image.shape[1], kwargs.get("batch_size")))
        return predict(model, image, **kwargs)

    monkeypatch.setattr(inference, "predict_volume", spy)
    model = create_model("twopath", class_frequencies=[0.01, 0.01, 0.97, 0.01], dropout=0.0)
    variants = build_variants(model, [Operation("keep", ("local",))])
    cases = [phantom_case("a", 0), phantom_case("b", 1)]
    cases[1].full_shape_zyx = (12, 60, 60)  # the volume before its crop (spacing: the same)
    cases[1].spacing_zyx = (2.0, 1.0, 1.0)
    started = time.perf_counter()
    result = evaluate_variants(variants, cases, BRATS_2021, batch_size=5)
    elapsed = time.perf_counter() - started
    assert calls == [(1, 5), (1, 5)] + [(12, 5)] * 4
    assert all(0 < row["seconds_per_volume"] < elapsed for row in result.rows)
    assert [row["note"] for row in result.rows] == ["", ""] and result.notes == []
    # every computed pixel is edema: the scores of that map, with each case's spacing
    classes = np.zeros((12, 40, 40), np.uint8)
    classes[4:8, 12:28, 12:28] = 2
    for name in ("intact", "keep local (global removed)"):
        for case, record in zip(cases, result.per_case[name], strict=True):
            worst = worst_hd95_mm(case.full_shape_zyx, case.spacing_zyx)
            expected = region_scores(
                classes, case.label, BRATS_2021, case.spacing_zyx, worst_hd95=worst
            )
            assert record[ACCURACY] == pytest.approx(2 * (64 - 16) / (4 * 16 * 16))
            assert {k: record[k] for k in expected} == pytest.approx(expected)
    for name in ("intact", "keep local (global removed)"):
        first, second = result.per_case[name]
        assert first["tumor_core_dice"] == 0.0  # core missed: the worst HD95
        assert first["tumor_core_hd95_mm"] == pytest.approx(worst_hd95_mm((12, 40, 40), (1, 1, 1)))
        assert second["tumor_core_hd95_mm"] == pytest.approx(worst_hd95_mm((12, 60, 60), (2, 1, 1)))


def test_a_case_without_foreground_has_no_accuracy():
    model = create_model("twopath", dropout=0.0)
    empty = StudyCase(
        "empty",
        np.zeros((4, 3, 20, 20), np.float32),
        np.zeros((3, 20, 20), np.uint8),
        (1.0, 1.0, 1.0),
        (3, 20, 20),
    )
    result = evaluate_variants(build_variants(model, []), [empty], BRATS_2021)
    assert np.isnan(result.per_case["intact"][0][ACCURACY]) and np.isnan(result.rows[0][ACCURACY])

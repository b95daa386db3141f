"""The surgery study behind ``braver prune``: variants of a trained network, scored side by side.

A *variant* is the trained network after one operation of :mod:`braver.surgery`:

``identity NAME``   the layer (convolution + maxout) replaced by an identity, a centre crop by
                    kernel − 1 so the maps after it keep their size;
``switch A B``      the weights of two layers of the same shape exchanged;
``copy SRC DST``    the weights of SRC copied onto DST;
``keep PART``       one path (or, in a cascade, one network) kept and the rest removed.

Every variant and the intact network are evaluated on the same cases, one case at a time (each
case is read or preprocessed once, then every variant predicts it), so their rows compare like
with like: whole-volume dense prediction (``braver.inference.predict_volume``), Dice per region
(``braver.metrics.region_scores``), the accuracy over the image foreground, and the seconds the
network took per volume.

:func:`run_surgery_study` is the whole of ``braver prune`` as one call: it picks the cases (the
run's cached validation cases, or a labelled dataset folder), builds the variants (the options
given, or the prune recipe's defaults), scores them and writes ``prune.csv``, ``prune.json``
and ``prune.png``. The cases are read and scored by :mod:`braver.studies.scoring`.

Length: the study's plan, its run and its report; the operations are in braver.surgery and
the scoring in braver.studies.scoring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from braver.errors import BraverError
from braver.models.cascade import CascadeCNN
from braver.models.naming import expand_name
from braver.recipe import PruneRecipe, load_prune_recipe
from braver.studies.scoring import (
    ACCURACY,
    ACCURACY_MEANING,
    StudyCase,
    VariantScores,
    cached_cases,
    evaluate_variants,
    prepared_cases,
)
from braver.surgery import (
    NETWORKS,
    copy_layer,
    identity_candidates,
    keep_only,
    parameters_removed,
    replace_with_identity,
    switch_layers,
)

OPERATIONS = ("identity", "switch", "copy", "keep")

# ---------------------------------------------------------------------------------------------
# operations and variants


@dataclass(frozen=True)
class Operation:
    """One requested operation: ``identity`` (one name), ``switch``/``copy`` (two), ``keep`` (one)."""

    kind: str
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in OPERATIONS:
            raise BraverError(
                f"unknown surgery operation {self.kind!r}", hint=f"use one of {list(OPERATIONS)}"
            )
        arity = 2 if self.kind in ("switch", "copy") else 1
        if len(self.names) != arity:
            raise BraverError(
                f"{self.kind} takes {arity} name(s), got {list(self.names)}",
                hint=f"write --{self.kind} " + " ".join(["NAME"] * arity),
            )


@dataclass
class Variant:
    """A network to evaluate: the intact one or one operation applied to it."""

    name: str
    model: nn.Module
    parameters_removed: int = 0
    operations: list[dict] = field(default_factory=list)
    note: str = ""


def recipe_operations(recipe: PruneRecipe, model: nn.Module) -> list[Operation]:
    """The operations a recipe asks for on ``model`` (``identity = "each"`` expanded)."""
    v = recipe.variants
    identity = identity_candidates(model) if v.identity == "each" else v.identity
    operations = [Operation("identity", (name,)) for name in identity]
    operations += [Operation("keep", (name,)) for name in v.keep]
    if isinstance(model, CascadeCNN):
        operations += [Operation("keep", (name,)) for name in v.keep_network]
    operations += [Operation("switch", tuple(pair)) for pair in v.switch]
    operations += [Operation("copy", tuple(pair)) for pair in v.copy]
    return operations


def operations_from(
    identity: Sequence[str] = (),
    keep: Sequence[str] = (),
    switch: Sequence[Sequence[str]] = (),
    copy: Sequence[Sequence[str]] = (),
) -> list[Operation]:
    """Operations from lists of names (``--identity conv2 --switch A B`` …), in that order."""
    operations = [Operation("identity", (n,)) for n in identity]
    operations += [Operation("keep", (n,)) for n in keep]
    operations += [Operation("switch", tuple(p)) for p in switch]
    operations += [Operation("copy", tuple(p)) for p in copy]
    return operations


def build_variants(model: nn.Module, operations: Sequence[Operation]) -> list[Variant]:
    """The intact network first, then one variant per operation (or per layer an identity name
    matches: in a cascade ``conv2`` is ``first.local.conv2`` and ``second.local.conv2``).

    Every operation is checked before anything is evaluated; a bad name or an incompatible
    layer is a ``BraverError`` that says what to use instead.
    """
    variants = [Variant("intact", model)]
    seen: set[str] = {"intact"}
    for operation in operations:
        for variant in _variants_of(model, operation):
            if variant.name not in seen:  # the same layer asked for twice: one row
                seen.add(variant.name)
                variants.append(variant)
    return variants


def _variants_of(model: nn.Module, operation: Operation) -> list[Variant]:
    kind, names = operation.kind, operation.names
    if kind == "identity":
        return _identity_variants(model, names[0])
    if kind == "keep":
        changed = keep_only(model, names[0])
        return [_variant(model, changed, _keep_label(model, changed.surgery[-1]))]
    if kind == "switch":
        changed = switch_layers(model, *names)
        a, b = changed.surgery[-1]["layers"]
        return [_variant(model, changed, f"switch {a} ↔ {b}")]
    changed = copy_layer(model, *names)
    step = changed.surgery[-1]
    return [_variant(model, changed, f"copy {step['source']} → {step['target']}")]


def _variant(model: nn.Module, changed: nn.Module, name: str, note: str = "") -> Variant:
    return Variant(
        name, changed, parameters_removed(model, changed), list(changed.surgery), note=note
    )


def _identity_variants(model: nn.Module, name: str) -> list[Variant]:
    """One variant per layer ``name`` matches; with several matches (a cascade's ``conv2``),
    those that cannot become an identity are skipped and said so, unless none can."""
    matches = expand_name(model, name)
    if len(matches) <= 1:  # unknown names get resolve_layer's error, listing the layers
        changed = replace_with_identity(model, name)
        return [_variant(model, changed, f"identity {changed.surgery[-1]['layer']}")]
    candidates = set(identity_candidates(model))
    usable = [m for m in matches if m in candidates]
    skipped = [m for m in matches if m not in candidates]
    if not usable:
        replace_with_identity(model, matches[0])  # raises the refusal naming what can go
    note = f"{name!r} matches {len(matches)} layers ({', '.join(matches)}): one row each"
    if skipped:
        note += f"; {', '.join(skipped)} skipped (changes the number of maps)"
    variants = []
    for full in usable:
        changed = replace_with_identity(model, full)
        variants.append(_variant(model, changed, f"identity {full}", note))
    return variants


def _keep_label(model: nn.Module, step: dict) -> str:
    part = step["keep"]
    if part in NETWORKS:
        scale = "local scale" if part == "second" else "global scale"
        return f"keep {part} ({scale}; {step['removed'][0]} removed)"
    return f"keep {part} ({', '.join(step['removed'])} removed)"


def variant_records(variants) -> list[dict]:
    """What each variant is, for the JSON report."""
    return [
        {
            "variant": v.name,
            "operations": v.operations,
            "parameters_removed": v.parameters_removed,
            "note": v.note,
        }
        for v in variants
    ]


# ---------------------------------------------------------------------------------------------
# the study as one call

#: called as ``progress(description, done, total)`` before each prediction and once at the end
Progress = Callable[[str, int, int], None]


@dataclass
class SurgeryStudy:
    """What ``braver prune`` made: one row per variant (intact first), where it was written."""

    folder: Path
    title: str
    scores: VariantScores
    report: dict[str, Any]

    @property
    def rows(self) -> list[dict]:
        return self.scores.rows

    @property
    def notes(self) -> list[str]:
        return self.scores.notes

    def table(self):
        """The rich table: each score with its change against the intact network below it."""
        return variants_table(self.scores, self.title)


def run_surgery_study(
    run: str | Path | None = None,
    *,
    identity: Sequence[str] = (),
    keep: Sequence[str] = (),
    switch: Sequence[Sequence[str]] = (),
    copy: Sequence[Sequence[str]] = (),
    recipe: PruneRecipe | str | Path | None = None,
    data: str | Path | None = None,
    format: str | None = None,
    cases: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    out: str | Path | None = None,
    runs: str | Path = "runs",
    progress: Progress | None = None,
) -> SurgeryStudy:
    """Score variants of a trained brain run against the intact network; write the report.

    ``run`` defaults to the latest brain run under ``runs``. With no ``identity``/``keep``/
    ``switch``/``copy`` names, the variants of ``recipe`` (default ``recipes/prune.toml``).
    Cases: ``data`` (a labelled dataset, preprocessed in memory as the run's cache was) or the
    run's cached validation cases; ``cases`` keeps the first N. Every name is checked before
    any case is read. ``out`` defaults to ``RUN/prune-<time>``.
    """
    from braver.inference import resolve_device
    from braver.runs import load_model, new_run_dir, resolve_run

    run = resolve_run(run, runs, "brain", "braver prune")
    torch_device = resolve_device(str(device))
    model, info = load_model(run, device=str(torch_device))
    check_finite(model, run)
    settings = recipe if isinstance(recipe, PruneRecipe) else load_prune_recipe(recipe)
    operations = operations_from(identity, keep, switch, copy)
    from_recipe = not operations
    if from_recipe:
        operations = recipe_operations(settings, model)
    variants = build_variants(model, operations)  # every name checked before any work
    if len(variants) == 1:
        raise BraverError(
            "the recipe asks for no variant of this model",
            settings.source,
            "pass --identity/--keep/--switch/--copy, or list variants in the recipe",
        )
    limit = cases or settings.evaluation.cases
    source, scheme, study_cases, total = study_cases_of(run, info, data, format, limit)
    step = None
    if progress is not None:
        counter = iter(range(total * len(variants)))

        def step(case_id: str, variant: str) -> None:
            progress(f"{case_id}: {variant}", next(counter), total * len(variants))

    scores = evaluate_variants(
        variants,
        study_cases,
        scheme,
        device=torch_device,
        batch_size=batch_size or settings.evaluation.batch_size or None,
        step=step,
    )
    if progress is not None:
        progress("done", total * len(variants), total * len(variants))
    folder = Path(out) if out is not None else new_run_dir(run, "prune")
    evaluated = [r["case"] for r in next(iter(scores.per_case.values()))]
    title = (
        f"{run.name}: {len(variants) - 1} variant(s) against the intact network, "
        f"{len(evaluated)} {source['kind']} case(s)"
        + (f" (default variants: {Path(settings.source).name})" if from_recipe else "")
    )
    report = {
        "run": str(run),
        "model": info.model.get("name"),
        **source,
        "cases": evaluated,
        "device": str(torch_device),
        "accuracy": ACCURACY_MEANING,
        "variants": variant_records(variants),
        "rows": scores.rows,
        "per_case": scores.per_case,
        "recipe": settings.source if from_recipe else None,
    }
    write_surgery_report(folder, scores, report, title)
    return SurgeryStudy(folder, title, scores, report)


def check_finite(model: nn.Module, run: Path) -> None:
    """Refuse a run whose weights hold NaN or infinity (a diverged training)."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise BraverError(
            "holds weights that are not finite (NaN or infinity): the training diverged",
            Path(run) / "model.safetensors",
            "train again (e.g. with a lower learning rate) before taking the network apart",
        )


def study_cases_of(run: Path, info, data, format: str | None, limit: int):
    """(source description, label scheme, iterator of StudyCase, number of cases)."""
    if data is not None:
        from braver.data.formats import discover

        dataset = discover(Path(data), format)
        labelled = [c for c in dataset.cases if c.has_label]
        if not labelled:
            raise BraverError(
                "has no labelled case to score",
                data,
                "pass a dataset with segmentations (e.g. <case>_seg.nii.gz)",
            )
        labelled = labelled[:limit] if limit else labelled
        source = {"kind": "dataset", "data": str(data), "geometry": "preprocessed grid"}
        return source, info.scheme, prepared_cases(info, labelled), len(labelled)

    from braver.runs import validation_cache

    cache = validation_cache(run, info, "pass --data DATA to evaluate on a labelled dataset")
    ids = list(info.validation_cases)
    ids = ids[:limit] if limit else ids
    for case_id in ids:
        cache.case(case_id)  # a missing case is an error before any work
    source = {"kind": "validation", "cache": str(cache.root), "geometry": "cached grid"}
    return source, cache.scheme, cached_cases(cache, ids), len(ids)


def write_surgery_report(folder: Path, scores: VariantScores, report: dict, title: str) -> None:
    """prune.csv (one row per variant), prune.json (everything), prune.png (bar chart)."""
    from braver.atomic import write_json, write_text
    from braver.report import csv_text, plot_bars

    folder.mkdir(parents=True, exist_ok=True)
    write_text(folder / "prune.csv", csv_text(scores.rows))
    write_json(folder / "prune.json", report)
    plot_bars(
        scores.rows,
        [ACCURACY, *scores.dice_columns],
        folder / "prune.png",
        label_key="variant",
        title=title,
    )


def variants_table(scores: VariantScores, title: str):
    """A rich table of the rows: each score with its change against intact below it."""
    from rich import box
    from rich.table import Table

    from braver.report import format_value

    table = Table(
        title=title,
        title_justify="left",
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_lines=True,
    )
    table.add_column("variant", min_width=16, overflow="fold")
    table.add_column("params removed", justify="right", max_width=9)
    table.add_column("accuracy*", justify="right", max_width=9)
    for region in scores.regions:
        table.add_column(f"{region.replace('_', ' ')} Dice", justify="right", max_width=9)
    table.add_column("s / volume", justify="right", max_width=6)
    for row in scores.rows:
        cells = [row["variant"], f"{row['parameters_removed']:,}"]
        for key in [ACCURACY, *scores.dice_columns]:
            delta = row[f"delta_{key}"]
            text = format_value(row[key])
            if delta is not None:
                colour = "red" if delta < -5e-5 else "green" if delta > 5e-5 else "dim"
                text += f"\n[{colour}]{delta:+.4f}[/]"
            cells.append(text)
        cells.append(f"{row['seconds_per_volume']:.2f}")
        table.add_row(*cells)
    if scores.notes:
        table.caption = "\n".join(scores.notes)
        table.caption_justify = "left"
    return table


__all__ = [
    "ACCURACY",
    "ACCURACY_MEANING",
    "Operation",
    "StudyCase",
    "SurgeryStudy",
    "Variant",
    "VariantScores",
    "build_variants",
    "cached_cases",
    "evaluate_variants",
    "operations_from",
    "prepared_cases",
    "recipe_operations",
    "run_surgery_study",
    "variant_records",
    "variants_table",
]

"""`braver prune`: test-time surgery of a trained network, one table row per variant.

``braver prune [RUN] --identity conv2 --keep local --switch A B --copy SRC DST`` evaluates the
intact network and every variant on the same cases (the run's cached validation cases, or
``--data``); with no variant option the variants of ``recipes/prune.toml`` (each layer by
identity, each path alone). ``--list`` shows the layer names and what each operation accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand

from braver.cli._common import BatchSizeOption, DeviceOption, RunArgument, console, progress_bar
from braver.errors import BraverError

PAIR_OPTIONS = ("--switch", "--copy")


class PairOptionsCommand(TyperCommand):
    """Lets ``--switch A B`` / ``--copy SRC DST`` take two values, repeatably.

    Typer has no repeatable two-value option, so the two words after such an option are
    joined with a space before parsing (layer names have no spaces) and split again later.
    """

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, join_pairs(args))


def join_pairs(args: list[str]) -> list[str]:
    """``[--switch, a, b]`` → ``[--switch, "a b"]``; an incomplete pair is left for the check."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        name, eq, first = token.partition("=")
        if name in PAIR_OPTIONS:
            values = [first] if eq else []
            j = i + 1
            while len(values) < 2 and j < len(args) and not args[j].startswith("-"):
                values.append(args[j])
                j += 1
            out += [name, " ".join(values)]
            i = j
            continue
        out.append(token)
        i += 1
    return out


def _pairs(values: list[str] | None, option: str, metavar: str) -> list[tuple[str, str]]:
    pairs = []
    for value in values or []:
        words = value.split()
        if len(words) != 2:
            raise typer.BadParameter(
                f"{option} takes two layer names ({option} {metavar}), got {value!r}",
                param_hint=option,
            )
        pairs.append((words[0], words[1]))
    return pairs


def register(app: typer.Typer) -> None:
    @app.command(cls=PairOptionsCommand)
    def prune(
        run: RunArgument = None,
        data: Annotated[
            Path | None,
            typer.Option(
                "--data",
                help="Labelled dataset to evaluate on (default: the run's validation cases).",
                show_default=False,
            ),
        ] = None,
        identity: Annotated[
            list[str] | None,
            typer.Option(
                "--identity",
                metavar="NAME",
                help="Replace this layer by an identity (repeatable; one variant each).",
                show_default=False,
            ),
        ] = None,
        keep: Annotated[
            list[str] | None,
            typer.Option(
                "--keep",
                metavar="PART",
                help="Keep only this path (local, global) or cascade network (first, second).",
                show_default=False,
            ),
        ] = None,
        switch: Annotated[
            list[str] | None,
            typer.Option(
                "--switch",
                metavar="A B",
                help="Exchange the weights of two layers of the same shape (repeatable).",
                show_default=False,
            ),
        ] = None,
        copy: Annotated[
            list[str] | None,
            typer.Option(
                "--copy",
                metavar="SRC DST",
                help="Copy the weights of SRC onto DST (same shape; repeatable).",
                show_default=False,
            ),
        ] = None,
        list_layers: Annotated[
            bool, typer.Option("--list", help="Show the layer names and what each accepts.")
        ] = False,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out",
                "-o",
                help="Output folder (default: RUN/prune-<timestamp>).",
                show_default=False,
            ),
        ] = None,
        cases: Annotated[
            int | None,
            typer.Option(
                "--cases", min=1, help="Evaluate the first N cases only.", show_default=False
            ),
        ] = None,
        device: DeviceOption = "auto",
        batch_size: BatchSizeOption = None,
        recipe: Annotated[
            Path | None,
            typer.Option(
                "--recipe",
                help="Default variants when no variant option is given (default: prune.toml).",
                show_default=False,
            ),
        ] = None,
        format: Annotated[
            str | None,
            typer.Option("--format", help="Dataset layout of --data.", show_default=False),
        ] = None,
        runs: Annotated[
            Path,
            typer.Option("--runs", help="Where to look for the latest run when RUN is omitted."),
        ] = Path("runs"),
    ) -> None:
        """Take a trained network apart at test time: one table row per variant against intact."""
        switches = _pairs(switch, "--switch", "A B")
        copies = _pairs(copy, "--copy", "SRC DST")

        from braver.inference import resolve_device
        from braver.runs import load_model, resolve_run

        run = resolve_run(run, runs, "brain", "braver prune")
        torch_device = resolve_device(device)
        model, info = load_model(run, device=str(torch_device))
        if list_layers:
            _print_layers(model, run)
            return
        _check_finite(model, run)

        from braver.prune import (
            Operation,
            build_variants,
            load_prune_recipe,
            recipe_operations,
        )

        settings = load_prune_recipe(recipe)
        operations = [Operation("identity", (n,)) for n in identity or []]
        operations += [Operation("keep", (n,)) for n in keep or []]
        operations += [Operation("switch", p) for p in switches]
        operations += [Operation("copy", p) for p in copies]
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
        source, scheme, study_cases, total = _cases(
            run, info, data, format, cases or settings.cases
        )
        batch = batch_size or settings.batch_size or None

        from braver.prune import ACCURACY_MEANING, run_study, variant_records
        from braver.runs import new_run_dir

        with _variant_progress(total * len(variants)) as step:
            result = run_study(
                variants, study_cases, scheme, device=torch_device, batch_size=batch, step=step
            )
        if out is None:
            out = new_run_dir(run, "prune")
        out.mkdir(parents=True, exist_ok=True)
        evaluated = len(next(iter(result.per_case.values())))
        title = (
            f"{run.name}: {len(variants) - 1} variant(s) against the intact network, "
            f"{evaluated} {source['kind']} case(s)"
            + (f" (default variants: {Path(settings.source).name})" if from_recipe else "")
        )
        report = {
            "run": str(run),
            "model": info.model.get("name"),
            **{k: v for k, v in source.items() if k != "cases"},
            "cases": [r["case"] for r in next(iter(result.per_case.values()))],
            "device": str(torch_device),
            "accuracy": ACCURACY_MEANING,
            "variants": variant_records(variants),
            "rows": result.rows,
            "per_case": result.per_case,
            "recipe": settings.source if from_recipe else None,
        }
        console.print(_results_table(result, title))
        _write_outputs(out, result, report, title)
        console.print(f"* {ACCURACY_MEANING}", style="dim")
        console.print(f"wrote prune.csv, prune.json and prune.png to {out}")


def _check_finite(model, run: Path) -> None:
    import torch

    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise BraverError(
            "holds weights that are not finite (NaN or infinity): the training diverged",
            run / "model.safetensors",
            "train again (e.g. with a lower learning rate) before taking the network apart",
        )


def _cases(run: Path, info, data: Path | None, format: str | None, limit: int):
    """(source description, label scheme, iterator of StudyCase, number of cases)."""
    from braver.prune import cached_cases, prepared_cases

    if data is not None:
        from braver.data.formats import discover

        dataset = discover(data, format)
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
    cache_path = cache.root
    ids = list(info.validation_cases)
    ids = ids[:limit] if limit else ids
    for case_id in ids:
        cache.case(case_id)  # a missing case is an error before any work
    source = {"kind": "validation", "cache": str(cache_path), "geometry": "cached grid"}
    return source, cache.scheme, cached_cases(cache, ids), len(ids)


def _variant_progress(total: int):
    """A rich bar over (case, variant) predictions; yields the ``step`` callback."""
    from contextlib import contextmanager

    @contextmanager
    def bar_context():
        bar = progress_bar()
        with bar:
            task = bar.add_task("variants × cases", total=total)
            started = [False]

            def step(case_id: str, variant: str) -> None:
                if started[0]:
                    bar.advance(task)
                started[0] = True
                bar.update(task, description=f"{case_id}: {variant}")

            yield step
            bar.update(task, completed=total)

    return bar_context()


def _results_table(result, title: str):
    """The terminal table: each score with its change against intact below it."""
    from rich import box
    from rich.table import Table

    from braver.prune import ACCURACY
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
    scores = [ACCURACY, *result.dice_columns]
    for region in result.regions:
        table.add_column(f"{region.replace('_', ' ')} Dice", justify="right", max_width=9)
    table.add_column("s / volume", justify="right", max_width=6)
    for row in result.rows:
        cells = [row["variant"], f"{row['parameters_removed']:,}"]
        for key in scores:
            delta = row[f"delta_{key}"]
            text = format_value(row[key])
            if delta is not None:
                colour = "red" if delta < -5e-5 else "green" if delta > 5e-5 else "dim"
                text += f"\n[{colour}]{delta:+.4f}[/]"
            cells.append(text)
        cells.append(f"{row['seconds_per_volume']:.2f}")
        table.add_row(*cells)
    if result.notes:
        table.caption = "\n".join(result.notes)
        table.caption_justify = "left"
    return table


def _write_outputs(out: Path, result, report: dict, title: str) -> None:
    """prune.csv (one row per variant), prune.json (everything), prune.png (bar chart)."""
    from braver.atomic import write_json, write_text
    from braver.report import csv_text, plot_bars

    write_text(out / "prune.csv", csv_text(result.rows))
    write_json(out / "prune.json", report)
    plot_bars(
        result.rows,
        ["foreground_accuracy", *result.dice_columns],
        out / "prune.png",
        label_key="variant",
        title=title,
    )


def _print_layers(model, run: Path) -> None:
    from rich.table import Table

    from braver.models.naming import group_names
    from braver.prune import keep_choices, layer_table

    rows = layer_table(model)
    table = Table(
        title=f"{run.name}: {model.config['name']} weight layers",
        title_justify="left",
        header_style="bold",
    )
    table.add_column("layer", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("identity")
    table.add_column("same shape (switch, copy)")
    for row in rows:
        table.add_row(
            row["layer"],
            row["weights"],
            f"{row['params']:,}",
            row["identity"],
            row["switch_or_copy_with"],
        )
    console.print(table)
    candidates = [r["layer"] for r in rows if r["identity"] == "yes"]
    pairs = {
        tuple(sorted((r["layer"], other.strip())))
        for r in rows
        if r["switch_or_copy_with"] != "—"
        for other in r["switch_or_copy_with"].split(",")
    }
    console.print(f"groups: {', '.join(group_names(model))}")
    console.print(f"--identity NAME: {', '.join(candidates) or 'no layer of this model'}")
    console.print(f"--keep PART: {', '.join(keep_choices(model))}")
    console.print(
        "--switch A B / --copy SRC DST: "
        + ("; ".join(f"{a} {b}" for a, b in sorted(pairs)) or "no two layers of the same shape")
    )
    console.print(
        "Names may be shortened to a unique dotted suffix (conv2, local.conv2); in a cascade "
        "--identity conv2 gives one variant per matching layer."
    )

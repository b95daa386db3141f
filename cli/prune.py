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
        if list_layers:
            _print_layers(run, runs, device)
            return

        from braver.studies.surgery import ACCURACY_MEANING, run_surgery_study

        with _progress() as progress:
            study = run_surgery_study(
                run,
                identity=identity or [],
                keep=keep or [],
                switch=switches,
                copy=copies,
                recipe=recipe,
                data=data,
                format=format,
                cases=cases,
                device=device,
                batch_size=batch_size,
                out=out,
                runs=runs,
                progress=progress,
            )
        console.print(study.table())
        console.print(f"* {ACCURACY_MEANING}", style="dim")
        console.print(f"wrote prune.csv, prune.json and prune.png to {study.folder}")


def _progress():
    """A rich bar over (case, variant) predictions; yields the study's ``progress`` callback."""
    from contextlib import contextmanager

    @contextmanager
    def bar_context():
        bar = progress_bar()
        with bar:
            task = bar.add_task("variants × cases", total=None)

            def progress(description: str, done: int, total: int) -> None:
                bar.update(task, description=description, completed=done, total=total)

            yield progress

    return bar_context()


def _print_layers(run: Path | None, runs: Path, device: str) -> None:
    from rich.table import Table

    from braver.inference import resolve_device
    from braver.models.naming import group_names
    from braver.runs import load_model, resolve_run
    from braver.surgery import identity_candidates, keep_choices, layer_table, same_shape_pairs

    run = resolve_run(run, runs, "brain", "braver prune")
    model, _ = load_model(run, device=str(resolve_device(device)))
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
    for row in layer_table(model):
        table.add_row(
            row["layer"],
            row["weights"],
            f"{row['params']:,}",
            row["identity"],
            row["switch_or_copy_with"],
        )
    console.print(table)
    pairs = same_shape_pairs(model)
    console.print(f"groups: {', '.join(group_names(model))}")
    console.print(
        f"--identity NAME: {', '.join(identity_candidates(model)) or 'no layer of this model'}"
    )
    console.print(f"--keep PART: {', '.join(keep_choices(model))}")
    console.print(
        "--switch A B / --copy SRC DST: "
        + ("; ".join(f"{a} {b}" for a, b in pairs) or "no two layers of the same shape")
    )
    console.print(
        "Names may be shortened to a unique dotted suffix (conv2, local.conv2); in a cascade "
        "--identity conv2 gives one variant per matching layer."
    )

"""`braver models`: the registered networks, their layers, groups and parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import BraverGroup, console

app = typer.Typer(
    cls=BraverGroup,
    no_args_is_help=True,
    help="The networks of Havaei et al.: list them, or show one's layers, groups and parameters.",
)

# the paper counts weights with maxout K=1, no biases, 4 MRI channels and 5 BRATS-2013 classes
PAPER_COUNTING = {"in_channels": 4, "num_classes": 5, "maxout_k": 1, "bias": False}


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _maps(row) -> str:
    pieces = f" (×{row.pieces})" if row.pieces > 1 else ""
    return f"{row.in_maps} → {row.out_maps}{pieces}"


@app.command("list")
def list_command() -> None:
    """Every registered network: inputs, receptive field and parameters."""
    from rich.table import Table

    from braver.models import create_model, list_models, model_entry, parameter_count

    table = Table(title="braver models", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("aliases")
    table.add_column("inputs")
    table.add_column("receptive field", justify="right")
    table.add_column("parameters", justify="right")
    table.add_column("paper's count¹", justify="right")
    table.add_column("what it is")
    for name in list_models():
        entry = model_entry(name)
        model = create_model(name)
        paper = create_model(name, **PAPER_COUNTING)
        counted = getattr(paper, "second", paper)
        table.add_row(
            name,
            ", ".join(entry.aliases),
            " + ".join(f"{s}×{s}" for s in model.input_sizes),
            str(max(model.receptive_fields().values())),
            f"{parameter_count(model):,}",
            f"{parameter_count(counted):,}",
            _capitalised(entry.description.split(": ", 1)[-1]),
        )
    console.print(table)
    console.print(
        "parameters: defaults (4 channels, 4 classes, maxout K=2, biases). "
        "¹ Havaei et al.'s count: K=1, no biases, 4 channels, 5 classes; second CNN of a cascade.",
        style="dim",
    )
    console.print("Details: braver models summary NAME", style="dim")


@app.command("summary")
def summary_command(
    name: Annotated[
        str,
        typer.Argument(
            help="A model name (see 'braver models list') or a run folder.", show_default=False
        ),
    ],
    in_channels: Annotated[
        int | None,
        typer.Option(
            "--in-channels", min=1, help="Image channels [default: 4].", show_default=False
        ),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option("--num-classes", min=2, help="Classes [default: 4].", show_default=False),
    ] = None,
    maxout_k: Annotated[
        int | None,
        typer.Option("--maxout-k", min=1, help="Maxout pieces [default: 2].", show_default=False),
    ] = None,
) -> None:
    """Layers (dotted names), groups, parameters and receptive fields of one network."""
    from rich.table import Table

    from braver.models import create_model
    from braver.models.summary import group_rows, summary_rows, totals

    overrides = {
        k: v
        for k, v in {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "maxout_k": maxout_k,
        }.items()
        if v is not None
    }
    source = ""
    if Path(name).is_dir():
        from braver.runs import load_run_info

        config = dict(load_run_info(name).model)
        source = f" (run {name})"
        if overrides:
            config.pop("class_frequencies", None)
        model = create_model(**{**config, **overrides})
    else:
        model = create_model(name, **overrides)
    config = model.config
    total = totals(model)
    console.print(
        f"[bold]{config['name']}[/]{source}: {config['in_channels']} "
        f"channel{'s' if config['in_channels'] != 1 else ''}, "
        f"{config['num_classes']} classes, maxout K={config['maxout_k']}, "
        f"dropout {config['dropout']}; inputs "
        + " + ".join(f"{s}×{s}" for s in total["input_sizes"])
        + f"; receptive field {total['receptive_field']}×{total['receptive_field']}; "
        f"{total['params']:,} parameters"
    )

    layers = Table(title="layers (patch mode: one labelled pixel)", title_justify="left")
    for column, justify in (
        ("group", "left"),
        ("layer", "left"),
        ("kind", "left"),
        ("kernel", "right"),
        ("maps in → out", "right"),
        ("output", "right"),
        ("parameters", "right"),
        ("receptive field", "right"),
    ):
        layers.add_column(column, justify=justify)
    for row in summary_rows(model):
        weighted = row.params > 0
        layers.add_row(
            row.group,
            f"[bold]{row.layer}[/]" if weighted else row.layer,
            row.kind,
            f"{row.kernel}×{row.kernel}",
            _maps(row),
            "×".join(map(str, row.output_side)),
            f"{row.params:,}" if weighted else "–",
            str(row.receptive_field),
        )
    console.print(layers)

    groups = Table(title="groups (for --freeze and training stages)", title_justify="left")
    groups.add_column("group", style="bold")
    groups.add_column("parameters", justify="right")
    groups.add_column("layers")
    for group in group_rows(model):
        groups.add_row(group.group, f"{group.params:,}", ", ".join(group.layers))
    console.print(groups)
    if hasattr(model, "first"):
        first = model.input_sizes[1]
        console.print(
            f"local / global: the two paths inside each TwoPathCNN; first: the network on the "
            f"{first}×{first} input (the seed's 'global scale'), second: the network on the "
            "33×33 input (its 'local scale'). A layer can be named by a unique suffix, "
            "e.g. second.local.conv2.",
            style="dim",
        )
    else:
        console.print(
            "A layer can be named by a unique suffix, e.g. conv2 for local.conv2.", style="dim"
        )

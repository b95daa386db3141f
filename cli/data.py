"""`braver data`: make phantom datasets, look at a dataset, prepare the cache."""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from braver.cli._common import BraverGroup, console, err_console, is_interactive
from braver.errors import BraverError

app = typer.Typer(
    cls=BraverGroup,
    no_args_is_help=True,
    help="Datasets: synthesise phantoms, inspect a folder, prepare the preprocessed cache.",
)

# the layouts of braver.data.formats.FORMATS (spelled out so that --help imports nothing heavy)
FORMAT_NAMES = ("brats2021", "brats2023", "brats2013", "msd-brain", "msd-liver", "lits")
DatasetFormat = Enum(
    "DatasetFormat", {name.replace("-", "_"): name for name in FORMAT_NAMES}, type=str
)


class PhantomKind(str, Enum):
    brain = "brain"
    liver = "liver"


class PhantomDifficulty(str, Enum):  # braver.data.phantoms.DIFFICULTIES
    easy = "easy"
    realistic = "realistic"


FormatOption = Annotated[
    DatasetFormat | None,
    typer.Option(
        "--format",
        help="Dataset layout; detected from the file names when left out.",
        case_sensitive=False,
        show_default=False,
    ),
]


class CtNormalisation(str, Enum):  # braver.preprocess.settings.CT_NORMALISATIONS
    unit = "unit"
    zscore = "zscore"


def print_notes(notes: list[str], limit: int = 10) -> None:
    """What the dataset layout chose (e.g. raw over N4ITK files), one yellow line each."""
    for note in notes[:limit]:
        err_console.print(f"[yellow]note:[/] {note}")
    if len(notes) > limit:
        err_console.print(
            f"[yellow]note:[/] … {len(notes) - limit} more (listed in the cache's summary.json)"
        )


def _numbers(text: str, count: int, what: str, integer: bool = False) -> tuple:
    parts = [p for p in re.split(r"[x,\s]+", text.strip()) if p]
    try:
        values = tuple(int(p) if integer else float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != count:
        example = "128x128x64" if integer else "-200,300"
        raise typer.BadParameter(f"{what} takes {count} numbers, e.g. {example} (got {text!r})")
    return values


@app.command()
def synth(
    kind: Annotated[PhantomKind, typer.Argument(help="brain (BraTS 2021 layout) or liver (LiTS).")],
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of cases.")] = 10,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same data.")] = 0,
    shape: Annotated[
        str | None,
        typer.Option(
            "--shape",
            help="Voxels X x Y x Z (default 128x128x64 brain at 1 mm, 128x128x48 liver).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if it exists.")
    ] = False,
    with_skull: Annotated[
        bool,
        typer.Option("--with-skull", help="Brain: keep skull and scalp (BraTS strips them)."),
    ] = False,
    difficulty: Annotated[
        PhantomDifficulty,
        typer.Option(
            "--difficulty",
            help="easy: bright lesions apart from everything else (the demo's); realistic: "
            "unlabelled look-alikes, low contrast, small and multiple lesions, thick slices, "
            "scanner variation.",
            case_sensitive=False,
        ),
    ] = PhantomDifficulty.easy,
) -> None:
    """Write a synthetic dataset: brain MRI phantoms or liver CT phantoms."""
    from braver.data import phantoms

    size = _numbers(shape, 3, "--shape", integer=True) if shape else None
    if kind is PhantomKind.brain:
        path = phantoms.synth_brain(
            out,
            cases,
            seed,
            size or phantoms.BRAIN_SHAPE,
            overwrite=overwrite,
            progress=is_interactive(),
            skull_stripped=not with_skull,
            difficulty=difficulty.value,
        )
    else:
        path = phantoms.synth_liver(
            out,
            cases,
            seed,
            size or phantoms.LIVER_SHAPE,
            overwrite=overwrite,
            progress=is_interactive(),
            difficulty=difficulty.value,
        )
    console.print(
        f"wrote {cases} {difficulty.value} {kind.value} phantom case(s) to [bold]{path}[/]"
    )


@app.command()
def inspect(
    data: Annotated[Path, typer.Argument(help="Dataset folder (or one case folder).")],
    format: FormatOption = None,
    png: Annotated[
        Path | None,
        typer.Option("--png", help="Write a montage of slices with the label overlay here."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Look at the first N cases only.")
    ] = None,
) -> None:
    """Table per case (shape, spacing, orientation, dtype, intensities, labels) and class balance."""
    from rich.table import Table

    from braver.data.formats import discover
    from braver.preprocess import class_imbalance, describe_case, save_montage

    dataset = discover(data, format.value if format else None)
    print_notes(dataset.notes)
    cases = dataset.cases[:limit] if limit else dataset.cases
    table = Table(title=f"{dataset.root} — {dataset.format}, {len(dataset)} case(s)")
    table.add_column("case", no_wrap=True)
    for column in ("shape", "spacing mm", "orient", "dtype", "intensity range", "labels"):
        table.add_column(column, overflow="fold")
    descriptions, errors = [], []
    for case in cases:
        try:
            d = describe_case(case)
        except BraverError as error:
            errors.append(error)
            table.add_row(case.case_id, "", "", "", "", "", f"[red]{error}[/]")
            continue
        descriptions.append(d)
        ranges = "  ".join(
            f"{name} {lo:g}..{hi:g}"
            for name, (lo, hi) in zip(case.channels, d["ranges"], strict=True)
        )
        labels = (
            " ".join(f"{v}:{n}" for v, n in d["label_counts"].items())
            if d["label_counts"] is not None
            else "[dim]none[/]"
        )
        table.add_row(
            d["case_id"],
            "×".join(map(str, d["shape"])),
            "×".join(f"{s:g}" for s in d["spacing"]),
            d["axcodes"],
            d["dtype"],
            ranges,
            labels,
        )
    console.print(table)
    if any(d["label_counts"] for d in descriptions):
        balance = Table(title="class balance over labelled cases")
        for column in ("value", "class", "voxels", "of all", "of tumour", "background : class"):
            balance.add_column(column, justify="right")
        for row in class_imbalance(descriptions, dataset.scheme):
            balance.add_row(
                str(row["value"]),
                row["class"],
                f"{row['voxels']:,}",
                f"{row['fraction']:.3%}",
                "" if row["fraction_of_labelled"] is None else f"{row['fraction_of_labelled']:.1%}",
                "" if row["background_ratio"] is None else f"{row['background_ratio']:,.0f} : 1",
            )
        console.print(balance)
    if png is not None:
        readable = [c for c in cases if c.case_id in {d["case_id"] for d in descriptions}]
        if readable:
            save_montage(readable, png)
            console.print(f"montage written to [bold]{png}[/]")
    if errors:
        raise BraverError(
            f"{len(errors)} of {len(cases)} case(s) could not be read; the first: {errors[0]}"
        )


@app.command()
def prepare(
    data: Annotated[Path, typer.Argument(help="Dataset folder.")],
    out: Annotated[Path, typer.Option("--out", help="Cache folder to write (or complete).")],
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="Cases prepared at once (default: CPU cores, ≤ 8).",
            show_default=False,
        ),
    ] = None,
    n4: Annotated[
        bool | None,
        typer.Option(
            "--n4/--no-n4",
            help="N4 bias-field correction of T1 and T1c after the 1% clip, as the paper "
            "(default: on for MRI, never for CT).",
            show_default=False,
        ),
    ] = None,
    n4_channels: Annotated[
        str | None,
        typer.Option(
            "--n4-channels",
            help="Channels N4 corrects, e.g. t1,t1c,t2,flair (implies --n4; default t1,t1c).",
            show_default=False,
        ),
    ] = None,
    spacing: Annotated[
        float | None,
        typer.Option(
            "--spacing",
            min=0.01,
            help="Resample every slice to MM x MM voxels (slice spacing kept); predictions are "
            "resampled back. Default: the files' spacing.",
            metavar="MM",
            show_default=False,
        ),
    ] = None,
    ct_normalisation: Annotated[
        CtNormalisation,
        typer.Option(
            "--ct-normalisation",
            help="CT after the HU window: zscore = z-scored inside the body, as the MRI "
            "channels (transfers better from a brain run); unit = scaled to [0, 1].",
            case_sensitive=False,
        ),
    ] = CtNormalisation.zscore,
    format: FormatOption = None,
    clip: Annotated[
        str | None,
        typer.Option(
            "--clip", help="MRI clipping percentiles LOW,HIGH (default 1,99).", show_default=False
        ),
    ] = None,
    hu_window: Annotated[
        str | None,
        typer.Option(
            "--hu-window", help="CT window LOW,HIGH in HU (default -200,300).", show_default=False
        ),
    ] = None,
) -> None:
    """Orient, crop, resample, clip, N4-correct and normalise every case into a memory-mappable
    cache (resumable)."""
    from braver.data.formats import discover
    from braver.preprocess import PrepareSettings, default_workers, prepare_dataset

    settings = {}
    if clip:
        settings["clip_percentiles"] = _numbers(clip, 2, "--clip")
    if hu_window:
        settings["hu_window"] = _numbers(hu_window, 2, "--hu-window")
    if spacing is not None:
        settings["target_spacing_mm"] = spacing
    dataset = discover(data, format.value if format else None)
    if n4_channels is not None:  # checked against the dataset's channels by prepare_dataset
        if n4 is False:
            raise typer.BadParameter("--n4-channels names channels for N4; leave out --no-n4")
        settings["n4_channels"] = tuple(p for p in re.split(r"[,\s]+", n4_channels.strip()) if p)
        n4 = True
    settings = PrepareSettings(n4=n4, ct_normalisation=ct_normalisation.value, **settings)
    console.print(f"{dataset.root}: {dataset.format}, {len(dataset)} case(s) → {out}")
    print_notes(dataset.notes)
    report = prepare_dataset(
        dataset,
        out,
        settings,
        workers=workers or default_workers(),
        progress=True,
        console=err_console,
    )
    if report.skipped or report.failed:
        console.print(report.table())
    console.print(
        f"{len(report.prepared)} prepared, {len(report.skipped)} up to date, "
        f"{len(report.failed)} failed; cache: [bold]{report.cache}[/]"
    )
    n4_seconds = sum(o.n4_seconds for o in report.prepared)
    if n4_seconds:
        busy = sum(o.seconds for o in report.prepared)
        console.print(f"N4 took {n4_seconds:.0f} s of the {busy:.0f} s spent on cases")
    if report.failed:
        raise BraverError(
            f"{len(report.failed)} of {len(dataset)} case(s) failed (see the table above; the "
            f"first: {report.failed[0].reason.rstrip('.')})",
            None,
            "fix or remove those cases and run prepare again; finished cases are skipped",
        )

"""Tables and plots that every command writes: rich tables + CSV/JSON, overlays, curves, bars.

Plots use matplotlib's object-oriented API on an Agg canvas (no pyplot, no global backend
state), and every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from braver.atomic import atomic_path, write_json, write_text
from braver.data.labels import LabelScheme

# label colours by class index (0 = background is never drawn); RGB in 0..1
CLASS_COLOURS = (
    (0.0, 0.0, 0.0),
    (0.89, 0.10, 0.11),  # red
    (0.30, 0.69, 0.29),  # green
    (0.22, 0.49, 0.72),  # blue
    (1.00, 0.85, 0.10),  # yellow
    (0.60, 0.31, 0.64),  # purple
    (1.00, 0.50, 0.00),  # orange
)


# ---------------------------------------------------------------------------------------------
# tables


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Union of the rows' keys, in order of first appearance."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def format_value(value: Any) -> str:
    """How a cell reads in the terminal: 4 decimals for scores, 2 for larger numbers."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isnan(value):
            return "nan"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.2f}"
    return str(value)


def rich_table(
    rows: Sequence[dict], title: str | None = None, summary_rows: Sequence[dict] = ()
) -> Table:
    """A rich table of dict rows (numbers right-aligned); ``summary_rows`` after a rule."""
    all_rows = [*rows, *summary_rows]
    columns = columns_of(all_rows)
    table = Table(title=title, header_style="bold", title_justify="left")
    for name in columns:
        numeric = any(
            isinstance(r.get(name), (int, float, np.number)) and not isinstance(r.get(name), bool)
            for r in all_rows
        )
        table.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for i, row in enumerate(all_rows):
        if summary_rows and i == len(rows):
            table.add_section()
        style = "italic" if i >= len(rows) else None
        table.add_row(*(format_value(row.get(c)) for c in columns), style=style)
    return table


def csv_text(rows: Sequence[dict]) -> str:
    """Rows as CSV (header = union of keys; missing cells empty; floats at full precision)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns_of(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _plain(v) for k, v in row.items()})
    return buffer.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return value


def write_table(
    rows: Sequence[dict],
    folder: str | Path,
    stem: str,
    title: str | None = None,
    *,
    summary_rows: Sequence[dict] = (),
    json_data: Any = None,
    console: Console | None = None,
    column_groups: dict[str, Sequence[str]] | None = None,
) -> tuple[Path, Path]:
    """Print ``rows`` as a rich table and write ``folder/stem.csv`` and ``folder/stem.json``.

    ``summary_rows`` (e.g. mean/std/median) are printed after a rule and appended to the CSV.
    ``column_groups`` ({title: columns}) prints one narrower table per group instead, each
    led by the columns that belong to no group (e.g. ``case``); the files keep every column.
    The JSON holds the list of rows, or ``{"rows": …, "summary": …}`` with summary rows, or
    ``json_data`` when given. Both files are written atomically. Returns their paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if console is None:
        console = Console()
    if column_groups:
        grouped = {c for columns in column_groups.values() for c in columns}
        lead = [c for c in columns_of([*rows, *summary_rows]) if c not in grouped]
        for group, columns in column_groups.items():
            keep = [*lead, *columns]
            part = [{k: r[k] for k in keep if k in r} for r in rows]
            part_summary = [{k: r[k] for k in keep if k in r} for r in summary_rows]
            heading = f"{title} — {group}" if title else group
            console.print(rich_table(part, heading, part_summary))
    else:
        console.print(rich_table(rows, title, summary_rows))
    csv_path = write_text(folder / f"{stem}.csv", csv_text([*rows, *summary_rows]))
    if json_data is None:
        json_data = (
            {"rows": list(rows), "summary": list(summary_rows)} if summary_rows else list(rows)
        )
    json_path = write_json(folder / f"{stem}.json", json_data)
    return csv_path, json_path


# ---------------------------------------------------------------------------------------------
# plots


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, out_png: str | Path) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return out_png


def most_tumour_slice(*label_maps: np.ndarray | None, classes: Sequence[int] | None = None) -> int:
    """Axial index (axis 0) with the most tumour voxels in the first map that has any.

    Tumour is ``classes`` when given, else every non-background class; when no map holds
    any, the non-background classes decide, and failing those the middle slice.
    """
    maps = [np.asarray(m) for m in label_maps if m is not None]
    choices = ([list(classes)] if classes is not None else []) + [None]
    for chosen in choices:
        for labels in maps:
            hits = labels != 0 if chosen is None else np.isin(labels, chosen)
            counts = np.count_nonzero(hits.reshape(len(labels), -1), axis=1)
            if counts.any():
                return int(counts.argmax())
    return len(maps[0]) // 2


def _colour_overlay(classes: np.ndarray) -> np.ndarray:
    """RGBA image of a 2-D class map; background transparent."""
    palette = np.array([(*c, 1.0) for c in CLASS_COLOURS] * 4)
    rgba = palette[np.asarray(classes, dtype=np.int64) % len(palette)].copy()
    rgba[..., 3] = np.where(classes > 0, 0.55, 0.0)
    return rgba


def plot_overlay(
    image_zyx: np.ndarray,
    truth_zyx: np.ndarray | None,
    pred_zyx: np.ndarray,
    out_png: str | Path,
    *,
    scheme: LabelScheme | None = None,
    title: str | None = None,
    spacing_zyx: Sequence[float] | None = None,
    slice_index: int | None = None,
) -> Path:
    """PNG of one axial slice: image, truth over image, prediction over image.

    Class maps hold class indices (Z, Y, X). The slice is the one with the most tumour in
    the truth (in the prediction when there is no truth or it is empty; for a liver scheme,
    the tumour class rather than the liver). Rows are drawn
    with Y upwards (anterior up in canonical RAS), patient right on the right.
    """
    if slice_index is None:
        # CT: the liver fills many slices; show the one with most tumour
        tumour = (
            scheme.region_classes("tumor")
            if scheme is not None and "tumor" in scheme.regions
            else None
        )
        slice_index = most_tumour_slice(truth_zyx, pred_zyx, classes=tumour)
    image = np.asarray(image_zyx[slice_index], dtype=np.float32)
    finite = image[image != 0]
    low, high = np.percentile(finite, (1, 99)) if finite.size else (0.0, 1.0)
    aspect = spacing_zyx[1] / spacing_zyx[2] if spacing_zyx is not None else 1.0
    panels = [("image", None)]
    if truth_zyx is not None:
        panels.append(("truth", truth_zyx[slice_index]))
    panels.append(("prediction", pred_zyx[slice_index]))

    figure = _figure(3.2 * len(panels), 3.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    # outside the foreground the image is 0 (cache) or air: draw it black, not mid-grey
    from matplotlib import colormaps

    shown = np.ma.masked_equal(image, 0)
    grey = colormaps["gray"].with_extremes(bad="black")
    for ax, (name, classes) in zip(axes, panels, strict=True):
        ax.imshow(shown, cmap=grey, vmin=low, vmax=high, origin="lower", aspect=aspect)
        if classes is not None:
            ax.imshow(_colour_overlay(np.asarray(classes)), origin="lower", aspect=aspect)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if scheme is not None:
        from matplotlib.patches import Patch

        handles = [
            Patch(color=CLASS_COLOURS[i % len(CLASS_COLOURS)], label=name)
            for i, name in enumerate(scheme.class_names)
            if i > 0
        ]
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8)
    figure.suptitle(f"{title or ''}  (axial slice {slice_index})".strip(), fontsize=10)
    return _save(figure, out_png)


def _read_history(history_csv: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(history_csv, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _number(text: str | None) -> float:
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


#: history.csv columns that are neither losses nor metrics
HISTORY_BOOKKEEPING = frozenset(
    {"epoch", "stage", "time", "seconds", "lr", "learning_rate", "mom", "momentum", "wd"}
)


def plot_learning_curves(history_csv: str | Path, out_png: str | Path) -> Path:
    """Losses (left) and validation metrics (right) per epoch from a fastai ``history.csv``.

    Columns ending in ``loss`` are losses; every other numeric column is a metric, except the
    bookkeeping in ``HISTORY_BOOKKEEPING`` (epoch, stage, time, learning rate, momentum …).
    Epochs are counted through the whole file (a second fit that restarts at epoch 0 continues
    the axis); a ``stage`` column marks stage changes with a dashed line.
    """
    columns, records = _read_history(history_csv)
    skip = HISTORY_BOOKKEEPING
    numeric = [
        c
        for c in columns
        if c not in skip and any(not math.isnan(_number(r.get(c))) for r in records)
    ]
    losses = [c for c in numeric if c.endswith("loss")]
    metrics = [c for c in numeric if c not in losses]
    x = np.arange(1, len(records) + 1)
    from matplotlib.ticker import MaxNLocator

    figure = _figure(11 if metrics else 6, 4)
    axes = figure.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    panels = [(axes[0], losses, "loss")] + ([(axes[1], metrics, "metric")] if metrics else [])
    for ax, names, label in panels:
        for name in names:
            ax.plot(x, [_number(r.get(name)) for r in records], marker="o", ms=3, label=name)
        values = np.array([_number(r.get(n)) for r in records for n in names], dtype=float)
        values = values[np.isfinite(values)]
        if (
            label == "loss"
            and values.size
            and values.min() > 0
            and values.max() > 50 * values.min()
        ):
            ax.set_yscale("log")  # a spike would flatten the rest of the curve
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        if "stage" in columns:
            stages = [r.get("stage") for r in records]
            for i in range(1, len(stages)):
                if stages[i] != stages[i - 1]:
                    ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
    figure.suptitle(Path(history_csv).parent.name or "learning curves", fontsize=10)
    return _save(figure, out_png)


def plot_bars(
    table_rows: Sequence[dict],
    metric_keys: Sequence[str],
    out_png: str | Path,
    *,
    label_key: str | None = None,
    title: str | None = None,
) -> Path:
    """Grouped bar chart: one group per row (labelled by ``label_key``), one bar per metric.

    ``label_key`` defaults to the first key whose value is a string in the first row.
    """
    if not table_rows:
        raise ValueError("plot_bars needs at least one row")
    if label_key is None:
        label_key = next((k for k, v in table_rows[0].items() if isinstance(v, str)), None)
    labels = [str(r.get(label_key, i)) for i, r in enumerate(table_rows)]
    width = 0.8 / max(len(metric_keys), 1)
    x = np.arange(len(table_rows))

    figure = _figure(max(5.0, 0.9 * len(table_rows) * max(1, len(metric_keys)) ** 0.5 + 2), 4)
    ax = figure.subplots()
    for j, key in enumerate(metric_keys):
        values = [_number(r.get(key)) for r in table_rows]
        ax.bar(x + (j - (len(metric_keys) - 1) / 2) * width, values, width, label=key)
    rotate = len(table_rows) > 4 or max(len(label) for label in labels) > 16
    ax.set_xticks(x, labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(figure, out_png)


# ---------------------------------------------------------------------------------------------
# report.html

REPORT_FILE = "report.html"


def write_report_html(folder: str | Path, out: str | Path | None = None) -> Path:
    """``report.html``: the run's dashboard page as one self-contained file (works offline).

    Curves (with the stage boundaries, learning rate and momentum), trainable parameters per
    stage, the validation slices of ``previews/`` (the display channel, truth and the last
    prediction, embedded as PNG data) and the per-case whole-volume metrics of metrics.json.
    The page's script and style are inlined; nothing is fetched. Written atomically to
    ``out`` (default ``folder/report.html``).
    """
    import base64

    from braver.dashboard.folders import clean, run_details
    from braver.dashboard.pages import standalone_page

    folder = Path(folder)
    details = clean(run_details(folder))
    images: dict[str, str] = {}
    previews = details.get("previews")
    for case in (previews or {}).get("cases", []):
        case["channels"] = [case["display"]]  # one channel keeps the file small
        for z in case["slices"]:
            for name in (f"{case['display']}_z{z}", f"truth_z{z}", f"pred_z{z}"):
                png = folder / "previews" / case["folder"] / f"{name}.png"
                if png.exists():
                    data = base64.b64encode(png.read_bytes()).decode("ascii")
                    key = f"{folder.name}/previews/{case['folder']}/{name}.png"
                    images[key] = f"data:image/png;base64,{data}"
    document = standalone_page(
        f"braver run {folder.name}",
        "run",
        {"run": details, "images": images},
        run=folder.name,
    )
    return write_text(Path(out) if out is not None else folder / REPORT_FILE, document)

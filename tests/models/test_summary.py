"""Model summary rows: layers, maps, parameters, sizes and receptive fields."""

from __future__ import annotations

from braver.models import create_model
from braver.models.summary import group_rows, summary_rows, totals
from braver.surgery import replace_with_identity


def test_twopath_rows_follow_the_paper():
    rows = {r.layer: r for r in summary_rows(create_model("twopath", num_classes=5))}
    assert list(rows) == [
        "local.conv1",
        "local.pool1",
        "local.conv2",
        "local.pool2",
        "global.conv1",
        "output",
    ]
    conv1 = rows["local.conv1"]
    assert (conv1.group, conv1.kernel, conv1.in_maps, conv1.out_maps, conv1.pieces) == (
        "local",
        7,
        4,
        64,
        2,
    )
    assert conv1.params == 64 * 2 * 4 * 49 + 128
    assert conv1.output_side == (27, 27)
    assert [rows[n].output_side[0] for n in rows] == [27, 24, 22, 21, 21, 1]
    assert [rows[n].receptive_field for n in rows] == [7, 10, 12, 13, 13, 33]
    assert (rows["output"].in_maps, rows["output"].out_maps) == (224, 5)


def test_cascade_rows_and_groups():
    model = create_model("input_cascade", num_classes=5)
    rows = {r.layer: r for r in summary_rows(model)}
    assert rows["first.output"].output_side == (33, 33)
    assert rows["second.local.conv1"].in_maps == 9
    assert rows["second.output"].receptive_field == 65
    groups = {g.group: g for g in group_rows(model)}
    assert groups["local"].layers == (
        "first.local.conv1",
        "first.local.conv2",
        "second.local.conv1",
        "second.local.conv2",
    )
    assert groups["first"].params + groups["second"].params == totals(model)["params"]
    assert totals(model)["receptive_field"] == 65 and totals(model)["input_sizes"] == (33, 65)


def test_summary_shows_surgery():
    variant = replace_with_identity(create_model("twopath"), "conv2")
    row = next(r for r in summary_rows(variant) if r.layer == "local.conv2")
    assert row.kind.startswith("identity") and row.params == 0 and row.output_side == (22, 22)
    assert row.receptive_field == 10

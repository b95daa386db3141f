"""The HTML around the dashboard's pages: one shell per page, drawn by ``assets/dashboard.js``.

The dashboard links the script and style sheet (``/assets/…``); ``report.html`` inlines them
and embeds its data, so the one file opens offline.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any

ASSETS = ("dashboard.js", "dashboard.css")


def asset_text(name: str) -> str:
    """The text of a file under ``braver/dashboard/assets`` (shipped with the package)."""
    if name not in ASSETS:
        raise KeyError(name)
    return files("braver.dashboard").joinpath("assets", name).read_text(encoding="utf-8")


def page(title: str, kind: str, **data: str) -> str:
    """A dashboard page: ``kind`` is ``runs``, ``run``, ``compare`` or ``study``; ``data``
    becomes ``data-*`` attributes of the app element (e.g. ``run=NAME``)."""
    attributes = "".join(f' data-{key}="{html.escape(value)}"' for key, value in data.items())
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/dashboard.js" defer></script>
</head>
<body>
<div id="app" data-page="{kind}"{attributes}></div>
</body>
</html>
"""


def standalone_page(title: str, kind: str, payload: dict[str, Any], **data: str) -> str:
    """One self-contained HTML file: the style, the script and ``payload`` inlined."""
    attributes = "".join(f' data-{key}="{html.escape(value)}"' for key, value in data.items())
    # "</" inside a <script> block would end it early
    embedded = json.dumps(payload, allow_nan=False).replace("</", "<\\/")
    script = asset_text("dashboard.js").replace("</script", "<\\/script")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)}</title>
<style>
{asset_text("dashboard.css")}
</style>
</head>
<body>
<div id="app" data-page="{kind}"{attributes}></div>
<script type="application/json" id="braver-data">{embedded}</script>
<script>
{script}
</script>
</body>
</html>
"""

"""``braver dashboard``: a local web app over the run folders, live while runs train.

``folders`` reads run folders into JSON-able dicts (status, curves, previews, studies);
``app`` serves them with Starlette (GET only, files under the runs folder only); ``pages``
holds the HTML shells and the shipped script and style sheet, which ``report.html`` inlines.
"""

from braver.dashboard.folders import overview, run_details, run_status, run_summary

__all__ = ["overview", "run_details", "run_status", "run_summary"]

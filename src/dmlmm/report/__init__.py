"""A self-contained HTML report of a fitted longitudinal model, and the tables behind it.

Three modules, one job each:

- :mod:`dmlmm.report.collect`: :func:`collect_results` turns a fitted model and its data
  into the tables the report and the command line write (subject trajectories on a grid,
  cluster memberships, cluster curves; :class:`FitResults`);
- :mod:`dmlmm.report.figures`: the figures, drawn with matplotlib's Agg backend and
  embedded as base64 PNG;
- :mod:`dmlmm.report.page`: :func:`render_report` / :func:`write_report`, the HTML page
  (needing nothing else to display).

The names below are importable from ``dmlmm.report`` as before the split.
"""

from __future__ import annotations

from .collect import FitResults, add_cluster_columns, cluster_numbering, cluster_table, collect_results, time_grid
from .figures import pick_examples  # noqa: F401 (importable from here, as before the split)
from .page import render_report, write_report

__all__ = ["FitResults", "collect_results", "render_report", "write_report", "time_grid", "cluster_numbering",
           "cluster_table", "add_cluster_columns"]

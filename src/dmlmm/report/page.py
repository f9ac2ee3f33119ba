"""The HTML report of a fit: :func:`render_report` and :func:`write_report`.

One self-contained page (its figures embedded as base64 PNG, :mod:`dmlmm.report.figures`):
data overview, cluster curves over the raw data, example subjects with their predictive
bands, cluster sizes and membership certainty, the class summary (lcmm's summarytable and
postprob), covariate effects, outcomes by cluster (row percentages and a chi-square test,
Kaplan-Meier curves with the log-rank test, characteristics by cluster; see
:mod:`dmlmm.outcomes`), the comparison with a known label, the ELBO trace, the
model-selection table and the model summary.
"""

from __future__ import annotations

import html
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .collect import FitResults
from .figures import (
    fig_clusters,
    fig_effects,
    fig_elbo,
    fig_examples,
    fig_membership,
    fig_outcome,
    fig_overview,
    fig_survival,
)

__all__ = ["render_report", "write_report"]


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;color:#1f2933;background:#f5f7fa;margin:0}
main{max-width:1240px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:26px;margin:8px 0 2px}h2{font-size:19px;margin:34px 0 8px;padding-bottom:4px;border-bottom:2px solid #e4e7eb}
p.sub{color:#616e7c;margin:0 0 16px}p.note{color:#52606d;font-size:14px;max-width:1000px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{background:#f0f4f8;border-radius:8px;padding:8px 14px;min-width:110px}
.card .k{font-size:12px;color:#616e7c;text-transform:uppercase;letter-spacing:.04em}.card .v{font-size:18px;font-weight:600}
img{max-width:100%;display:block;margin:6px 0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{padding:4px 10px;border-bottom:1px solid #e4e7eb;text-align:right}th{background:#f0f4f8}
td:first-child,th:first-child{text-align:left}tr.sel td{background:#e3f8e8;font-weight:600}
pre{background:#f0f4f8;padding:12px;border-radius:6px;font-size:12px;overflow-x:auto}
nav a{margin-right:14px;color:#2f6fbf;text-decoration:none;font-size:14px}
h3{font-size:16px;margin:20px 0 4px}p.test{font-weight:600;margin:4px 0}
table.l2 td:nth-child(2),table.l2 th:nth-child(2){text-align:left}
code{background:#f0f4f8;padding:0 3px;border-radius:3px;font-size:13px}
"""


def _img(b64: str | None, alt: str) -> str:
    if b64 is None:
        return ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _table(df: pd.DataFrame, highlight: pd.Series | None = None, index: bool = True) -> str:
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for i, (idx, *row) in enumerate(df.itertuples(name=None)):  # each column's own type (iterrows made counts floats)
        cls = ' class="sel"' if highlight is not None and bool(highlight.iloc[i]) else ""
        cells = ([idx] if index else []) + list(row)
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in cells) + "</tr>")
    return "".join(out) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, tuple):
        return ", ".join(str(x) for x in v)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.1f}"
    return str(v)


def _percent(p: float) -> str:
    return f"{100 * p:.4g} %"


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{html.escape(title)}</h2>{body}</section>'


def _cluster_table(res: FitResults) -> str:
    cl = res.clusters
    g = cl.groupby("cluster")
    tab = pd.DataFrame({
        "subjects": g.size(),
        "share": g.size() / len(cl),
        "mean probability": g["probability"].mean(),
    })
    if "cluster_layer1" in cl:
        tab["first-layer cluster"] = g["cluster_layer1"].agg(lambda s: ", ".join(str(v) for v in sorted(s.unique())))
    obs = res.data.groupby("subject").size()
    tab["observations"] = g["subject"].agg(lambda s: int(obs.reindex(s).sum()))
    return _table(tab)


def _class_summary_section(res: FitResults) -> str:
    from ..summaries import display_class_summary, display_posterior

    text = ('<p class="note">As R\'s lcmm reports them (<code>summarytable</code>, <code>postprob</code>), '
            "numbered as in <code>clusters.csv</code>. A subject belongs to its most probable class. "
            "<b>-2 ELBO</b> is on the scale of BIC (the ELBO bounds the log evidence, whose priors already "
            "penalise the parameters); <b>ICL</b> = -2 ELBO + 2 &times; entropy also rewards clear-cut classes; "
            "for both, lower is better when comparing fits to the same data. <b>Relative entropy</b> = "
            "1 - entropy / (N log K): 1 when every subject is certain of its class, 0 when all are spread "
            "evenly.</p>")
    parts = [text, _table(display_class_summary(res.class_summary))]
    for level, table in res.posterior.items():
        what = "cluster" if level == "cluster" else "first-layer group"
        parts.append(f'<p class="note"><b>Posterior probabilities by assigned {what}</b> '
                     f"(<code>{level}</code> in <code>clusters.csv</code>): the mean probability of each "
                     f"{what} among the subjects assigned to the row's {what} (near 1 on the diagonal: well "
                     f"separated), and the share of them whose probability of their {what} exceeds 0.7, 0.8, 0.9."
                     "</p>" + _table(display_posterior(table)))
    return "".join(parts)


def _multi_table(df: pd.DataFrame) -> str:
    """A table whose index has two levels (variable, statistic): the variable named once."""
    flat = df.reset_index()
    first = flat.columns[0]
    flat[first] = flat[first].where(flat[first].ne(flat[first].shift()).fillna(True).to_numpy(dtype=bool), "")
    return _table(flat, index=False).replace("<table>", '<table class="l2">', 1)


def _outcome_sections(res: FitResults, outcomes) -> list[str]:
    sections = []
    if outcomes.tables:
        parts = ['<p class="note">Each subject\'s outcome (its last non-missing value) by its most probable '
                 "cluster: counts with row percentages (each cluster's subjects add up to 100 %), and "
                 "Pearson's chi-square test of independence between cluster and outcome.</p>"]
        for t in outcomes.tables:
            missing = f"; {t.n_missing} subject(s) without a value left out" if t.n_missing else ""
            parts.append(f"<h3>{html.escape(t.column)}</h3><p class=\"test\">{html.escape(t.test_text())}; "
                         f"{t.n_subjects} subjects{missing}</p>" + _img(fig_outcome(res, t), f"{t.column} by cluster")
                         + _table(t.formatted()))
        sections.append(_section("outcomes", "Outcomes by cluster", "".join(parts)))
    s = outcomes.survival
    if s is not None:
        missing = f"; {s.n_missing} subject(s) without follow-up left out" if s.n_missing else ""
        body = (f'<p class="note">Kaplan-Meier estimates of the probability of no event ({html.escape(s.event_label)}) '
                f"over <b>{html.escape(s.duration)}</b>, by cluster, with {100 * (1 - s.alpha):g} % pointwise "
                "confidence bands (from the lifelines package); ticks mark censored subjects. The log-rank test "
                f"asks whether survival differs between the clusters.</p><p class=\"test\">{html.escape(s.test_text())}; "
                f"{s.n_subjects} subjects{missing}</p>" + _img(fig_survival(res, s), "Kaplan-Meier curves by cluster")
                + _table(s.formatted()))
        sections.append(_section("survival", "Survival by cluster", body))
    b = outcomes.baseline
    if b is not None:
        when = "first visit with a value (at entry)" if b.at == "first" else "last visit with a value, not at entry"
        vary = (f" For columns that change within subjects ({html.escape(', '.join(b.varying))}) that is the value at "
                f"the subject's {when}." if b.varying else "")
        body = (f'<p class="note">Mean (SD) of numeric columns and counts (% of the cluster\'s subjects with a value) '
                f"of categorical ones, by cluster and overall; each subject counts once, with its {b.at} "
                f"non-missing value.{vary}</p>" + _multi_table(b.table))
        sections.append(_section("baseline", "Characteristics by cluster", body))
    return sections


def _label_section(res: FitResults, labels: pd.Series, name: str) -> str:
    from ..metrics import adjusted_rand_index

    cl = res.clusters.set_index("subject")["cluster"]
    common = cl.index.intersection(labels.index)
    lab, k = labels.loc[common], cl.loc[common]
    ct = pd.crosstab(lab.rename(name), k.rename("cluster"))
    ct.columns = [f"cluster {c}" for c in ct.columns]
    ari = adjusted_rand_index(lab, k)
    text = (f'<p class="note">The model never saw <b>{html.escape(name)}</b>. Adjusted Rand index between it and the '
            f"clusters: <b>{ari:.3f}</b> (1 = the same partition, 0 = no more agreement than chance); "
            f"{len(common)} subjects.</p>")
    return text + _table(ct)


def render_report(
    res: FitResults,
    *,
    title: str = "dmlmm report",
    source: str = "",
    selection: pd.DataFrame | None = None,
    known_labels: pd.Series | None = None,
    label_name: str = "known label",
    notes: str = "",
    outcomes=None,
) -> str:
    """The HTML report (a string; figures embedded as base64 PNG).

    Parameters
    ----------
    res : FitResults (see :func:`collect_results`).
    title, source : heading and a line naming the data.
    selection : the table of :func:`dmlmm.selection.select_model`, if used.
    known_labels : Series (index: subject) of an external grouping to compare the clusters with.
    label_name : what that grouping is.
    notes : an HTML paragraph placed under the heading.
    outcomes : :class:`dmlmm.outcomes.OutcomeReport`, optional: outcomes, survival and
        characteristics by cluster.
    """
    from .. import __version__

    d = res.data
    counts = d.groupby("subject").size()
    of = "" if res.sample_of is None else " (sample)"  # the data shown are a sample of the subjects fitted
    facts = {
        "response": res.names["response"],
        f"observations{of}": f"{len(d)}",
        f"per subject{of}": (f"{counts.min()}–{counts.max()} (median {counts.median():g})"
                             if counts.max() > counts.min() else f"{counts.min()}"),
        f"time span{of}": f"{d['time'].min():.3g} – {d['time'].max():.3g}",
        **res.facts,
    }
    cards = "".join(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div></div>'
                    for k, v in facts.items() if k not in ("cluster sizes", "model"))
    sections = [
        _section("data", "Data", "<p class=\"note\">Each subject's observations joined by a line (faint), the "
                 "number of observations per subject and when they were taken"
                 + ("" if res.sample_of is None else f" ({d['subject'].nunique():,} of the {res.sample_of:,} subjects "
                                                     "fitted)") + ".</p>" + _img(fig_overview(res), "data overview")),
    ]
    clusters_img = fig_clusters(res)
    if clusters_img is not None:
        what = "cluster" if res.clusters is not None else "population"
        sections.append(_section(
            "clusters", "Cluster curves" if res.clusters is not None else "Population curve",
            f'<p class="note">The {what} mean curve (line) with a band holding 95 % of the {what}\'s subject curves '
            "(light), the 95 % credible band of the mean curve itself from the posterior uncertainty of the "
            f"{what}'s parameters (dark), over the raw data of the subjects assigned to it (grey"
            + (")" if res.sample_of is None else ", those of the sample") + ").</p>" + _img(clusters_img, "cluster curves")
            + (_cluster_table(res) if res.clusters is not None else "")))
    sections.append(_section(
        "examples", "Example subjects",
        '<p class="note">Observed values (points), the subject\'s fitted curve given its observations (line; dashed '
        f"after the subject's last visit, where it is a forecast) and its {_percent(res.interval)} predictive band "
        "for the curve.</p>" + _img(fig_examples(res), "example subjects")))
    memb = fig_membership(res)
    if memb is not None:
        sections.append(_section("membership", "Cluster sizes and membership certainty",
                                 '<p class="note">Subjects per cluster (most probable cluster) and the posterior '
                                 "probability of that cluster: values near 1 mean clear-cut memberships.</p>"
                                 + _img(memb, "memberships")))
    if res.class_summary is not None:
        sections.append(_section("classes", "Class summary", _class_summary_section(res)))
    effects = fig_effects(res)
    if effects is not None:
        sections.append(_section("effects", "Covariate effects",
                                 '<p class="note">Posterior means and 95 % intervals: the fixed effects with the random '
                                 "effects integrated out, and the class-membership log-odds (each group against the "
                                 "later ones).</p>" + _img(effects, "covariate effects")))
    if outcomes and res.clusters is not None:
        sections.extend(_outcome_sections(res, outcomes))
    if known_labels is not None and res.clusters is not None:
        sections.append(_section("labels", f"Clusters and {label_name}", _label_section(res, known_labels, label_name)))
    elbo = fig_elbo(res)
    if elbo is not None:
        sections.append(_section("elbo", "Convergence", _img(elbo, "ELBO trace")))
    if selection is not None:
        tab = selection.copy()
        if "error" in tab and tab["error"].isna().all():
            tab = tab.drop(columns="error")
        sections.append(_section("selection", "Model selection",
                                 '<p class="note">Every candidate size that was fitted; the selected one is highlighted. '
                                 "Effective components: those left per layer after empty ones were pruned.</p>"
                                 + _table(tab.drop(columns="selected"), highlight=tab["selected"], index=False)))
    sections.append(_section("summary", "Model summary", f"<pre>{html.escape(res.summary)}</pre>"))
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in [
        ("data", "Data"), ("clusters", "Curves"), ("examples", "Examples"), ("membership", "Memberships"),
        ("classes", "Class summary"), ("effects", "Effects"), ("outcomes", "Outcomes"), ("survival", "Survival"),
        ("baseline", "Characteristics"), ("labels", "Known label"), ("elbo", "Convergence"), ("selection", "Selection"), ("summary", "Summary")]
        if f'id="{sid}"' in "".join(sections))
    when = datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = f"{html.escape(res.facts.get('model', ''))} · {html.escape(source)} · dmlmm {__version__} · {when}"
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{html.escape(title)}</h1><p class=\"sub\">{sub}</p><nav>{nav}</nav>"
        f"<div class=\"cards\">{cards}</div>{notes}{''.join(sections)}</main></body></html>"
    )


def write_report(path: str | Path, res: FitResults, **kwargs) -> Path:
    """Render the report (see :func:`render_report`) and write it to ``path``."""
    path = Path(path)
    path.write_text(render_report(res, **kwargs), encoding="utf-8")
    return path

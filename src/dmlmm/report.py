"""A self-contained HTML report of a fitted longitudinal model.

:func:`collect_results` turns a fitted model and its data into the tables the
report and the command line write (subject trajectories on a grid, cluster
memberships, cluster curves); :func:`render_report` draws the figures with
matplotlib's Agg backend and embeds them as base64 PNG, so the HTML file needs
nothing else to display: data overview, cluster curves over the raw data,
example subjects with their predictive bands, cluster sizes and membership
certainty, the class summary (lcmm's summarytable and postprob), outcomes by
cluster (row percentages and a chi-square test, Kaplan-Meier curves with the
log-rank test, characteristics by cluster; see :mod:`dmlmm.outcomes`), the
comparison with a known label, the ELBO trace, the model-selection table and
the model summary.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["FitResults", "collect_results", "render_report", "write_report", "time_grid", "cluster_numbering",
           "cluster_table", "add_cluster_columns"]

_COLORS = colormaps["tab10"].colors
_RAW = "#9aa5b1"


def time_grid(lower: float, upper: float, n: int = 100) -> np.ndarray:
    """``n`` equally spaced times from ``lower`` to ``upper``."""
    return np.linspace(float(lower), float(upper), int(n))


@dataclass
class FitResults:
    """Everything the outputs of a fit are made of (one model, any kind).

    Attributes
    ----------
    model : the fitted model.
    data : DataFrame with columns subject, time, response (the rows fitted, user names in ``names``).
    names : dict with the user's column names under "subject", "time", "response" (the response's
        as modelled, e.g. ``log(y)`` after a transform).
    trajectories : DataFrame subject, time, mean, lower, upper, beyond_last_visit (each subject's curve
        on a grid), then the cluster columns of ``clusters`` (cluster, probability, cluster_layer1).
    clusters : DataFrame subject, cluster, probability and, for models of more than one layer,
        cluster_layer1 (the most probable first-layer component); None for models without clusters.
        Clusters and first-layer components are numbered without gaps (see :func:`cluster_numbering`).
    cluster_curves : DataFrame cluster, time, mean, lower, upper, weight (clusters numbered as in
        ``clusters``); None if unavailable.
    elbo_history : ndarray or None.
    summary : str, the model's text summary.
    facts : dict of headline numbers (label -> formatted value).
    interval : float, the probability of the trajectories' bands.
    class_summary : DataFrame of ``model.class_summary()`` (None for models without clusters).
    posterior : dict level -> ``model.posterior_table(level)`` ("cluster", and "cluster_layer1"
        for deep models).
    """

    model: Any
    data: pd.DataFrame
    names: dict
    trajectories: pd.DataFrame
    clusters: pd.DataFrame | None
    cluster_curves: pd.DataFrame | None
    elbo_history: np.ndarray | None
    summary: str
    facts: dict = field(default_factory=dict)
    interval: float = 0.95
    class_summary: pd.DataFrame | None = None
    posterior: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------- results
def collect_results(model, frame: pd.DataFrame, *, grid: np.ndarray | None = None, interval: float = 0.95,
                    response_label: str | None = None) -> FitResults:
    """Trajectories, clusters and headline numbers of a fitted model on the data it was fitted to.

    Parameters
    ----------
    model : MixtureLMM, DeepMixtureLMM or LinearMixedModel (longitudinal form), fitted.
    frame : DataFrame, the long data (rows with missing values already dropped).
    grid : times for the trajectories (default: 100 points over the model's time range).
    interval : central probability of the bands.
    response_label : how figures name the response (default: its column name).
    """
    from .models.base import VariationalLongitudinalModel

    if isinstance(model, VariationalLongitudinalModel):
        res = _collect_variational(model, frame, grid, interval)
    else:
        res = _collect_lmm(model, frame, grid, interval)
    res.interval = interval
    if response_label:
        res.names["response"] = response_label
    return res


def _long(frame: pd.DataFrame, names: dict) -> pd.DataFrame:
    out = frame[[names["subject"], names["time"], names["response"]]].copy()
    out.columns = ["subject", "time", "response"]
    return out


def _gap_free(used: np.ndarray, total: int) -> np.ndarray:
    """Map of ``total`` model numbers: the ``used`` ones to 0, 1, ... in their order, the rest after them."""
    from .summaries import gap_free

    return gap_free(used, total)


def cluster_numbering(model) -> tuple[np.ndarray, np.ndarray]:
    """The output numbers of a fitted mixture's clusters and first-layer components.

    The model numbers its clusters by size (0 the largest); some may hold no subject as
    most probable cluster. The outputs number the clusters that hold subjects 0, 1, ... in
    the model's order, without gaps, and any other cluster after them (such a number appears
    only when a new subject's most probable cluster is one no fitted subject was in); the
    same for the first-layer components. Returns two arrays indexed by the model's numbers.
    """
    clusters = _gap_free(model.labels_.to_numpy(), model.responsibilities_.shape[1])
    groups = _gap_free(model.groups_.to_numpy(), model.group_proba_.shape[1])
    return clusters, groups


def _has_layers(model) -> bool:
    return len(tuple(np.atleast_1d(model.n_components_))) > 1


def cluster_table(model, proba: pd.DataFrame, group_proba: pd.DataFrame | None = None) -> pd.DataFrame:
    """subject, cluster, probability (and cluster_layer1 for deep models) from posterior probabilities.

    ``proba`` (subjects x clusters, the model's numbering) as from ``predict_proba``;
    ``group_proba`` from ``predict_group_proba`` (deep models only).
    """
    cmap, gmap = cluster_numbering(model)
    p = proba.to_numpy()
    table = pd.DataFrame({"subject": proba.index.to_numpy(), "cluster": cmap[p.argmax(axis=1)],
                          "probability": p.max(axis=1)})
    if _has_layers(model) and group_proba is not None:
        table["cluster_layer1"] = gmap[group_proba.to_numpy().argmax(axis=1)]
    return table


def add_cluster_columns(traj: pd.DataFrame, clusters: pd.DataFrame) -> pd.DataFrame:
    """``traj`` (a subject column first) with the cluster columns of ``clusters`` matched by subject."""
    out = traj.copy()
    by_subject = clusters.set_index("subject")
    for col in by_subject.columns:
        out[col] = out["subject"].map(by_subject[col]).to_numpy()
    return out


def _collect_variational(model, frame, grid, interval) -> FitResults:
    c = model.design_.columns
    names = {"subject": c.subject, "time": c.time, "response": c.response}
    if grid is None:
        grid = time_grid(model.design_.basis.lower_, model.design_.basis.upper_)
    clusters = cluster_table(model, model.responsibilities_, model.group_proba_)
    traj = add_cluster_columns(model.predict_trajectory(frame, times=grid, interval=interval), clusters)
    curves = model.cluster_means_.copy()
    curves["cluster"] = cluster_numbering(model)[0][curves["cluster"].to_numpy()]
    sizes = clusters["cluster"].value_counts()
    facts = {
        "model": type(model).__name__,
        "subjects": f"{len(model.subjects_)}",
        "clusters found": f"{len(sizes)}",
        "cluster sizes": ", ".join(f"{k}: {v}" for k, v in sizes.sort_index().items()),
        "ELBO": f"{model.elbo_:.2f}",
        "iterations": f"{model.n_iter_}" + ("" if model.converged_ else " (not converged)"),
        "fit time": f"{model.fit_seconds_:.1f} s",
    }
    summary = model.class_summary()
    rel = summary.loc["cluster", "relative_entropy"]
    if np.isfinite(rel):
        facts["relative entropy"] = f"{rel:.2f}"
    posterior = {level: model.posterior_table(level) for level in summary.index}
    return FitResults(model, _long(frame, names), names, traj, clusters, curves,
                      np.asarray(model.elbo_history_), model.summary(), facts, class_summary=summary,
                      posterior=posterior)


def _collect_lmm(model, frame, grid, interval) -> FitResults:
    b = model.builder_
    cols = b.columns_
    names = {"subject": cols.subject, "time": cols.time, "response": cols.response}
    if grid is None:
        grid = time_grid(b.basis_.lower_, b.basis_.upper_)
    covs = [c for c in b.encoding_.columns if c != cols.time]  # a formula may use time: the grid's, not the last row's
    last = frame.sort_values(cols.time).groupby(cols.subject, sort=True).tail(1).set_index(cols.subject)
    subjects = last.index
    rows = pd.DataFrame({cols.subject: np.repeat(subjects.to_numpy(), len(grid)), cols.time: np.tile(grid, len(subjects))})
    for cv in covs:
        rows[cv] = np.repeat(last[cv].to_numpy(), len(grid))
    pred = model.predict(rows, interval=interval)
    last_time = frame.groupby(cols.subject, sort=True)[cols.time].max()
    traj = pd.DataFrame({"subject": rows[cols.subject].to_numpy(), "time": rows[cols.time].to_numpy(),
                         "mean": pred["mean"].to_numpy(), "lower": pred["lower"].to_numpy(),
                         "upper": pred["upper"].to_numpy(),
                         "beyond_last_visit": rows[cols.time].to_numpy() > np.repeat(
                             pd.to_numeric(last_time.reindex(subjects)).to_numpy(float), len(grid))})
    curves = None
    if not covs:
        pop = model.predict(grid, level="population", interval=interval)
        curves = pd.DataFrame({"cluster": 0, "time": grid, "mean": pop["mean"].to_numpy(),
                               "lower": pop["lower"].to_numpy(), "upper": pop["upper"].to_numpy(), "weight": 1.0})
    facts = {
        "model": f"LinearMixedModel ({model.method_.upper()})",
        "subjects": f"{len(subjects)}",
        "log-likelihood": f"{model.loglik_:.2f}",
        "AIC": f"{model.aic_:.1f}",
        "iterations": f"{model.n_iter_}" + ("" if model.converged_ else " (not converged)"),
    }
    return FitResults(model, _long(frame, names), names, traj, None, curves, None, model.summary(), facts)


# ---------------------------------------------------------------------------- figures
def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")  # Figure without pyplot: Agg, no global state
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _subplots(nrow: int, ncol: int, figsize: tuple[float, float], **kwargs):
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrow, ncol, **kwargs)


def _style(ax, xlabel: str | None = None, ylabel: str | None = None, title: str | None = None) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.25, linewidth=0.6)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=11, loc="left")


def _spaghetti(ax, data: pd.DataFrame, color=_RAW, alpha=0.25, max_subjects: int = 400, seed: int = 0) -> None:
    """Each subject's observations as a faint line with points (a random subset when there are many)."""
    subjects = data["subject"].unique()
    if len(subjects) > max_subjects:
        subjects = np.random.default_rng(seed).choice(subjects, max_subjects, replace=False)
        data = data[data["subject"].isin(subjects)]
    d = data.sort_values(["subject", "time"])
    # one polyline with NaN breaks between subjects: fast even for thousands of rows
    breaks = d["subject"].ne(d["subject"].shift(-1)).to_numpy()
    t = np.insert(d["time"].to_numpy(float), np.flatnonzero(breaks) + 1, np.nan)
    y = np.insert(d["response"].to_numpy(float), np.flatnonzero(breaks) + 1, np.nan)
    ax.plot(t, y, color=color, alpha=alpha, linewidth=0.7)
    ax.scatter(d["time"], d["response"], s=5, color=color, alpha=min(1.0, alpha * 1.6), linewidths=0)


def _ylim(res: FitResults, *curves: np.ndarray) -> tuple[float, float]:
    """A y-range covering the data (and the given curves) with a margin, so that wide bands
    where there are few observations do not squash the rest of the panel."""
    y = res.data["response"].to_numpy(float)
    vals = np.concatenate([y] + [np.asarray(c, float).ravel() for c in curves])
    vals = vals[np.isfinite(vals)]
    lo, hi = float(vals.min()), float(vals.max())
    pad = 0.08 * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def fig_overview(res: FitResults) -> str:
    d = res.data
    counts = d.groupby("subject").size()
    fig, axes = _subplots(1, 3, (12, 3.4), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    _spaghetti(axes[0], d, color="#4c72b0", alpha=0.2)
    _style(axes[0], res.names["time"], res.names["response"], "All subjects")
    bins = np.arange(counts.min() - 0.5, counts.max() + 1.5) if counts.max() - counts.min() < 40 else 30
    axes[1].hist(counts, bins=bins, color="#4c72b0", edgecolor="white")
    if counts.max() - counts.min() < 12:
        axes[1].set_xticks(np.arange(counts.min(), counts.max() + 1))
    else:
        axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    _style(axes[1], "observations per subject", "subjects", "Follow-up length")
    axes[2].hist(d["time"], bins=30, color="#4c72b0", edgecolor="white")
    _style(axes[2], res.names["time"], "observations", "When observations were made")
    return _png(fig)


def _cluster_order(res: FitResults) -> list:
    if res.clusters is None:
        return [0]
    return list(res.clusters["cluster"].value_counts().sort_index().index)


def fig_clusters(res: FitResults, max_panels: int = 12) -> str | None:
    curves = res.cluster_curves
    if curves is None:
        return None
    shown = _cluster_order(res)[:max_panels]
    n = len(shown)
    ncol = min(n, 3)
    nrow = int(np.ceil(n / ncol))
    fig, axes = _subplots(nrow, ncol, (4.2 * ncol, 3.3 * nrow), squeeze=False, sharex=True, sharey=True)
    d = res.data
    lab = None if res.clusters is None else res.clusters.set_index("subject")["cluster"]
    for i, k in enumerate(shown):
        ax = axes.flat[i]
        col = _COLORS[i % len(_COLORS)]
        members = d if lab is None else d[d["subject"].map(lab) == k]
        _spaghetti(ax, members, alpha=0.3)
        c = curves[curves["cluster"] == k]
        ax.fill_between(c["time"], c["lower"], c["upper"], color=col, alpha=0.22, linewidth=0)
        if "mean_lower" in c:  # the uncertainty of the cluster's own curve, inside the spread of its subjects
            ax.fill_between(c["time"], c["mean_lower"], c["mean_upper"], color=col, alpha=0.45, linewidth=0)
        ax.plot(c["time"], c["mean"], color=col, linewidth=2.4)
        ax.set_ylim(*_ylim(res, curves["mean"].to_numpy()))
        size = members["subject"].nunique()
        title = "Population curve" if lab is None else f"Cluster {k}: {size} subject{'s' if size != 1 else ''}"
        _style(ax, res.names["time"] if i // ncol == nrow - 1 else None,
               res.names["response"] if i % ncol == 0 else None, title)
    for j in range(n, nrow * ncol):
        axes.flat[j].set_visible(False)
    return _png(fig)


def pick_examples(res: FitResults, n: int = 9) -> list:
    """Up to ``n`` subjects: round robin over clusters (largest first), well-observed subjects first."""
    counts = res.data.groupby("subject").size()
    if res.clusters is None:
        groups = [counts.sort_values(ascending=False, kind="stable").index.tolist()]
    else:
        lab = res.clusters.set_index("subject")["cluster"]
        groups = []
        for k in _cluster_order(res):
            members = counts[counts.index.isin(lab.index[lab == k])]
            # alternate between well and typically observed subjects for variety
            ranked = members.sort_values(ascending=False, kind="stable").index.tolist()
            mixed = [s for pair in zip(ranked[::2], ranked[len(ranked) // 2 :: 2]) for s in pair] or ranked
            groups.append(list(dict.fromkeys(mixed + ranked)))
    picked: list = []
    while len(picked) < n and any(groups):
        for g in groups:
            if g and len(picked) < n:
                picked.append(g.pop(0))
    return picked


def fig_examples(res: FitResults, n: int = 9) -> str:
    subjects = pick_examples(res, n)
    ncol = 3
    nrow = int(np.ceil(len(subjects) / ncol))
    fig, axes = _subplots(nrow, ncol, (12, 3.0 * nrow), squeeze=False, sharex=True)
    lab = None if res.clusters is None else res.clusters.set_index("subject")
    for i, s in enumerate(subjects):
        ax = axes.flat[i]
        if lab is not None:
            k = lab.loc[s, "cluster"]
            col = _COLORS[_cluster_order(res).index(k) % len(_COLORS)]
            title = f"{res.names['subject']} {s}  (cluster {k}, p = {lab.loc[s, 'probability']:.2f})"
        else:
            col, title = _COLORS[0], f"{res.names['subject']} {s}"
        tr = res.trajectories[res.trajectories["subject"] == s]
        ob = res.data[res.data["subject"] == s]
        ax.fill_between(tr["time"], tr["lower"], tr["upper"], color=col, alpha=0.2, linewidth=0)
        _plot_curve(ax, tr, col)
        ax.scatter(ob["time"], ob["response"], color="black", s=16, zorder=3)
        lo, hi = _ylim(res, tr["mean"].to_numpy())
        ax.set_ylim(max(lo, float(tr["lower"].min()) - 0.05 * (hi - lo)), min(hi, float(tr["upper"].max()) + 0.05 * (hi - lo)))
        _style(ax, res.names["time"] if i // ncol == nrow - 1 else None,
               res.names["response"] if i % ncol == 0 else None, title)
    for j in range(len(subjects), nrow * ncol):
        axes.flat[j].set_visible(False)
    return _png(fig)


def _plot_curve(ax, tr: pd.DataFrame, color) -> None:
    """A subject's fitted curve: solid up to its last visit, dashed beyond it (a forecast)."""
    t, m = tr["time"].to_numpy(float), tr["mean"].to_numpy(float)
    beyond = tr["beyond_last_visit"].to_numpy(bool) if "beyond_last_visit" in tr else np.zeros(len(t), bool)
    if not beyond.any():
        ax.plot(t, m, color=color, linewidth=2)
        return
    first = int(np.argmax(beyond))  # grid times are increasing: the forecast is the tail
    if first > 0:
        ax.plot(t[:first], m[:first], color=color, linewidth=2)
    start = max(first - 1, 0)  # join the dashed part to the solid one
    ax.plot(t[start:], m[start:], color=color, linewidth=2, linestyle=(0, (4, 2.5)))


def fig_membership(res: FitResults) -> str | None:
    if res.clusters is None:
        return None
    cl = res.clusters
    order = _cluster_order(res)
    sizes = cl["cluster"].value_counts().reindex(order)
    fig, axes = _subplots(1, 2, (12, 3.3))
    axes[0].bar([str(k) for k in order], sizes.to_numpy(), color=[_COLORS[i % 10] for i in range(len(order))])
    for x, v in enumerate(sizes.to_numpy()):
        axes[0].annotate(f"{v}", (x, v), ha="center", va="bottom", fontsize=9, xytext=(0, 2), textcoords="offset points")
    _style(axes[0], "cluster", "subjects", "Cluster sizes")
    axes[0].margins(y=0.15)
    bins = np.linspace(0, 1, 21)
    bottom = np.zeros(len(bins) - 1)
    for i, k in enumerate(order):
        h, _ = np.histogram(cl.loc[cl["cluster"] == k, "probability"], bins=bins)
        axes[1].bar(bins[:-1], h, width=bins[1] - bins[0], bottom=bottom, align="edge",
                    color=_COLORS[i % 10], edgecolor="white", linewidth=0.5, label=f"cluster {k}")
        bottom += h
    axes[1].set_xlim(0, 1)
    if len(order) <= 10:
        axes[1].legend(frameon=False, fontsize=8, loc="upper left")
    _style(axes[1], "probability of the assigned cluster", "subjects", "How certain the memberships are")
    return _png(fig)


def fig_elbo(res: FitResults) -> str | None:
    h = res.elbo_history
    if h is None or len(h) == 0:
        return None
    fig, ax = _subplots(1, 1, (12, 2.8))
    it = np.arange(1, len(h) + 1)
    ax.plot(it, h, color="#4c72b0", linewidth=1.5)
    finite = h[np.isfinite(h)]
    if len(finite) > 10:  # the first iterations dwarf the rest: show the climb to the plateau
        lo = np.quantile(finite, 0.05)
        hi = finite.max()
        pad = 0.05 * (hi - lo) if hi > lo else 1.0
        ax.set_ylim(lo - pad, hi + pad)
    _style(ax, "iteration", "ELBO", "Evidence lower bound during fitting")
    return _png(fig)


def _effect_tables(model) -> list[tuple[str, pd.DataFrame]]:
    """(title, table with estimate / lower / upper) of the covariate effects a model has."""
    out = []
    if hasattr(model, "fixed_effects_table") and len(getattr(model, "fixed_effects_", ())):
        tab = model.fixed_effects_table(0.95)
        out.append(("Fixed effects on the response (per unit)", tab[["estimate", "lower", "upper"]]))
    coef = getattr(model, "membership_coefficients_", None)
    if coef is not None and len(coef):
        tab = coef.reset_index()
        tab.index = [f"{r.covariate}: group {r.group} vs {r.versus}" for r in tab.itertuples()]
        tab = tab[tab["covariate"] != "(Intercept)"]
        if len(tab):
            out.append(("Class membership (log-odds per unit)", tab.rename(columns={"lower95": "lower", "upper95": "upper"})
                        [["estimate", "lower", "upper"]]))
    return out


def fig_effects(res: FitResults) -> str | None:
    """Forest plot of the covariate effects with their 95 % intervals (None without covariates)."""
    tables = _effect_tables(res.model)
    if not tables:
        return None
    rows = [len(t) for _, t in tables]
    fig, axes = _subplots(len(tables), 1, (9, 0.9 + 0.35 * sum(rows) + 0.6 * len(tables)), squeeze=False,
                          gridspec_kw={"height_ratios": [max(r, 1) for r in rows]})
    for ax, (title, tab) in zip(axes[:, 0], tables):
        y = np.arange(len(tab))[::-1]
        est, lo, hi = (tab[c].to_numpy(dtype=float) for c in ("estimate", "lower", "upper"))
        ax.errorbar(est, y, xerr=np.vstack([est - lo, hi - est]),
                    fmt="o", color="#4c72b0", ecolor="#4c72b0", capsize=3)
        ax.axvline(0.0, color="#888888", linewidth=0.8)
        ax.set_yticks(y, [str(i) for i in tab.index])
        _style(ax, None, None, title)
    return _png(fig)


def _cluster_colour(res: FitResults, k) -> tuple:
    order = _cluster_order(res)
    return _COLORS[(order.index(k) if k in order else int(k)) % len(_COLORS)]


def fig_outcome(res: FitResults, table) -> str:
    """Row percentages of a categorical outcome by cluster, as stacked horizontal bars."""
    pct = table.percent
    n = table.counts.sum(axis=1)
    fig, ax = _subplots(1, 1, (12, 0.55 * len(pct) + 1.3))
    cmap = colormaps["Set2"].colors
    left = np.zeros(len(pct))
    labels = [f"cluster {k} (n={int(n.loc[k])})" for k in pct.index]
    y = np.arange(len(pct))[::-1]
    for j, c in enumerate(pct.columns):
        v = pct[c].to_numpy(float)
        ax.barh(y, v, left=left, color=cmap[j % len(cmap)], edgecolor="white", label=str(c), height=0.7)
        for yi, li, vi in zip(y, left, v):
            if vi >= 6:
                ax.text(li + vi / 2, yi, f"{vi:.0f} %", ha="center", va="center", fontsize=9)
        left += v
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 100)
    ax.legend(frameon=False, fontsize=9, ncol=min(len(pct.columns), 6), loc="lower left", bbox_to_anchor=(0, 1.0))
    _style(ax, f"% of the cluster's subjects", None)
    ax.grid(False)
    return _png(fig)


def fig_survival(res: FitResults, surv) -> str:
    """Kaplan-Meier curves by cluster with their confidence bands, censoring marks and numbers at risk."""
    curves = surv.curves
    clusters = list(surv.summary.index)
    fig = Figure(figsize=(12, 4.6 + 0.22 * len(clusters)), layout="constrained")
    ax, tab = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4.2, 0.35 + 0.22 * len(clusters)]})
    for k in clusters:
        c = curves[curves["cluster"] == k]
        col = _cluster_colour(res, k)
        t = c["time"].to_numpy(float)
        s = surv.summary.loc[k]
        ax.step(t, c["survival"], where="post", color=col, linewidth=2,
                label=f"cluster {k} ({int(s['subjects'])} subjects, {int(s['events'])} events)")
        ax.fill_between(t, c["lower"], c["upper"], step="post", color=col, alpha=0.15, linewidth=0)
        cens = c[c["censored"] > 0]
        ax.plot(cens["time"], cens["survival"], "|", color=col, markersize=7, alpha=0.8)
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, fontsize=9, loc="lower left")
    _style(ax, None, "survival probability",
           f"Kaplan-Meier curves by cluster (event: {surv.event_label}); {surv.test_text()}")
    ticks = [t for t in ax.get_xticks() if curves["time"].min() <= t <= curves["time"].max()]
    for i, k in enumerate(clusters):
        c = curves[curves["cluster"] == k]
        times, risk = c["time"].to_numpy(float), c["at_risk"].to_numpy(int)
        for t in ticks:  # at risk at time t (follow-up >= t): as at the first tabulated time >= t
            later = np.flatnonzero(times >= t)
            n = int(risk[later[0]]) if len(later) else 0
            tab.text(t, -i, str(n), ha="center", va="center", fontsize=9, color=_cluster_colour(res, k))
    tab.set_ylim(-len(clusters) + 0.4, 0.6)
    tab.set_yticks(-np.arange(len(clusters)), [f"cluster {k}" for k in clusters], fontsize=9)
    tab.tick_params(axis="y", length=0)
    for side in ("top", "right", "left", "bottom"):
        tab.spines[side].set_visible(False)
    tab.set_title("number at risk", fontsize=9, loc="left")
    tab.set_xlabel(surv.duration)
    return _png(fig)


# ---------------------------------------------------------------------------- HTML
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
    for i, (idx, row) in enumerate(df.iterrows()):
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
    from .summaries import display_class_summary, display_posterior

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
    flat[first] = flat[first].where(flat[first].ne(flat[first].shift()), "")
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
        vary = (f" For columns that change within subjects ({html.escape(', '.join(b.varying))}) that is the "
                f"subject's {b.at} value, not necessarily the one at the first visit." if b.varying else "")
        body = (f'<p class="note">Mean (SD) of numeric columns and counts (% of the cluster\'s subjects with a value) '
                f"of categorical ones, by cluster and overall; each subject counts once, with its {b.at} "
                f"non-missing value.{vary}</p>" + _multi_table(b.table))
        sections.append(_section("baseline", "Characteristics by cluster", body))
    return sections


def _label_section(res: FitResults, labels: pd.Series, name: str) -> str:
    from .metrics import adjusted_rand_index

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
    from . import __version__

    d = res.data
    counts = d.groupby("subject").size()
    facts = {
        "response": res.names["response"],
        "observations": f"{len(d)}",
        "per subject": (f"{counts.min()}–{counts.max()} (median {counts.median():g})" if counts.max() > counts.min()
                        else f"{counts.min()}"),
        "time span": f"{d['time'].min():.3g} – {d['time'].max():.3g}",
        **res.facts,
    }
    cards = "".join(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div></div>'
                    for k, v in facts.items() if k not in ("cluster sizes", "model"))
    sections = [
        _section("data", "Data", "<p class=\"note\">Each subject's observations joined by a line (faint), the "
                 "number of observations per subject and when they were taken.</p>" + _img(fig_overview(res), "data overview")),
    ]
    clusters_img = fig_clusters(res)
    if clusters_img is not None:
        what = "cluster" if res.clusters is not None else "population"
        sections.append(_section(
            "clusters", "Cluster curves" if res.clusters is not None else "Population curve",
            f'<p class="note">The {what} mean curve (line) with a band holding 95 % of the {what}\'s subject curves '
            "(light), the 95 % credible band of the mean curve itself from the posterior uncertainty of the "
            f"{what}'s parameters (dark), over the raw data of the subjects assigned to it (grey).</p>" + _img(clusters_img, "cluster curves")
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

"""The report's figures, drawn with matplotlib and returned as base64 PNG.

Each ``fig_*`` function takes a :class:`~dmlmm.report.collect.FitResults` (and for the
outcome figures, a table of :mod:`dmlmm.outcomes`) and returns the PNG as a base64 string,
or None when the fit has nothing to draw. Figures are made without pyplot (a ``Figure`` on
matplotlib's Agg backend), so drawing touches no global state.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .collect import FitResults

__all__ = ["fig_overview", "fig_clusters", "fig_examples", "fig_membership", "fig_elbo", "fig_effects",
           "fig_outcome", "fig_survival", "pick_examples"]

_COLORS = colormaps["tab10"].colors
_RAW = "#9aa5b1"


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
    # (the last row's comparison is NA with pandas' "string" labels, a Dask fit's: a break there too)
    breaks = d["subject"].ne(d["subject"].shift(-1)).fillna(True).to_numpy(dtype=bool)
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
    shown = "All subjects" if res.sample_of is None else f"A sample of {len(counts):,} of {res.sample_of:,} subjects"
    _style(axes[0], res.names["time"], res.names["response"], shown)
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
        if lab is None:
            title = "Population curve"
        elif res.sample_of is None:
            title = f"Cluster {k}: {size} subject{'s' if size != 1 else ''}"
        else:  # the data are a sample: the cluster's size, and those drawn
            title = f"Cluster {k}: {int((lab == k).sum()):,} subjects ({size} drawn)"
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

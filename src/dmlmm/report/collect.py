"""The tables a fit's outputs are made of: :func:`collect_results` and the cluster numbering.

:func:`collect_results` turns a fitted model (a mixture, a deep mixture or a linear mixed
model) and its data into a :class:`FitResults`: subject trajectories on a grid, cluster
memberships and cluster curves, headline numbers, the class summary. The report
(:mod:`dmlmm.report.page`) and the command line write these tables; the clusters are
numbered without gaps (:func:`cluster_numbering`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["FitResults", "collect_results", "time_grid", "cluster_numbering", "cluster_table",
           "add_cluster_columns", "has_layers"]


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
    sample_of : int or None, the number of subjects fitted when ``data`` and ``trajectories`` hold a sample
        of them (a Dask fit's outputs, :mod:`dmlmm.cli_dask`; ``clusters`` and ``class_summary`` still cover
        every subject); None when they hold every subject.
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
    sample_of: int | None = None


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
    from ..models.base import VariationalLongitudinalModel

    if isinstance(model, VariationalLongitudinalModel):
        model._check_fitted()
        model._check_subject_tables("the report")  # a Dask fit before dmlmm.distributed.collect(model)
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
    from ..summaries import gap_free

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


def has_layers(model) -> bool:
    return len(tuple(np.atleast_1d(model.n_components_))) > 1


def cluster_table(model, proba: pd.DataFrame, group_proba: pd.DataFrame | None = None,
                  noise: pd.Series | None = None) -> pd.DataFrame:
    """subject, cluster, probability (and cluster_layer1 for deep models) from posterior probabilities.

    ``proba`` (subjects x clusters, the model's numbering) as from ``predict_proba``;
    ``group_proba`` from ``predict_group_proba`` (deep models only); ``noise`` from ``predict_noise``
    (models with subject-level residual scales: a column ``residual_variance``).
    """
    cmap, gmap = cluster_numbering(model)
    p = proba.to_numpy()
    table = pd.DataFrame({"subject": proba.index.to_numpy(), "cluster": cmap[p.argmax(axis=1)],
                          "probability": p.max(axis=1)})
    if has_layers(model) and group_proba is not None:
        table["cluster_layer1"] = gmap[group_proba.to_numpy().argmax(axis=1)]
    if noise is not None:
        table["residual_variance"] = noise.reindex(proba.index).to_numpy()
    return table


def subject_noise(model, frame) -> pd.Series | None:
    """``model.predict_noise(frame)`` for a model with subject-level residual scales, else None."""
    return model.predict_noise(frame) if getattr(model, "noise_df_", None) is not None else None


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
        grid = time_grid(*model.design_.basis.window)
    clusters = cluster_table(model, model.responsibilities_, model.group_proba_, subject_noise(model, frame))
    traj = add_cluster_columns(model.predict_trajectory(frame, times=grid, interval=interval), clusters)
    curves = model.cluster_means_.copy()
    curves["cluster"] = cluster_numbering(model)[0][curves["cluster"].to_numpy()]
    sizes = clusters["cluster"].value_counts()
    facts = {
        "model": type(model).__name__,
        "subjects": f"{len(model.subjects_)}",
        "clusters found": f"{len(sizes)}",
        "cluster sizes": ", ".join(f"{k}: {v}" for k, v in sizes.sort_index().items()),
        "ELBO (on the data's scale)": f"{model.elbo_data_scale_:.2f}",  # as the class summary and the selection
        "iterations": f"{model.n_iter_}" + ("" if model.converged_ else " (not converged)"),
        "fit time": f"{model.fit_seconds_:.1f} s",
    }
    if scale := model._scale_text():  # the response's scale (response_transform)
        facts["response modelled as"] = scale
    if getattr(model, "noise_df_", None) is not None:  # subject-level residual scales (noise_df)
        noise = model.subject_noise_
        facts["subjects' residual variances"] = (f"Student-t scales, nu = {model.noise_df_:.1f}; median "
                                                  f"{noise.median():.3g}, range {noise.min():.3g}-{noise.max():.3g}")
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
        grid = time_grid(*b.basis_.window)
    covs = [c for c in b.encoding_.columns if c != cols.time]  # a formula may use time: the grid's, not the last row's
    last = frame.sort_values(cols.time).groupby(cols.subject, sort=True, observed=True).tail(1).set_index(cols.subject)
    try:  # subjects in order, as the mixtures' outputs (tail keeps the rows' order: by last visit)
        last = last.sort_index()
    except TypeError:  # labels of mixed types: in order of appearance
        last = last.reindex(pd.unique(frame[cols.subject]))
    subjects = last.index
    rows = pd.DataFrame({cols.subject: np.repeat(subjects.to_numpy(), len(grid)), cols.time: np.tile(grid, len(subjects))})
    for cv in covs:
        rows[cv] = np.repeat(last[cv].to_numpy(), len(grid))
    pred = model.predict_trajectory(rows, interval=interval)
    last_time = frame.groupby(cols.subject, sort=True, observed=True)[cols.time].max()
    traj = pd.DataFrame({"subject": rows[cols.subject].to_numpy(), "time": rows[cols.time].to_numpy(),
                         "mean": pred["mean"].to_numpy(), "lower": pred["lower"].to_numpy(),
                         "upper": pred["upper"].to_numpy(),
                         "beyond_last_visit": rows[cols.time].to_numpy() > np.repeat(
                             pd.to_numeric(last_time.reindex(subjects)).to_numpy(float), len(grid)),
                         "cluster": 0, "probability": 1.0})  # one cluster: the columns dmlmm predict writes too
    curves = None
    if not covs:
        pop = model.predict_trajectory(grid, level="population", interval=interval)
        curves = pd.DataFrame({"cluster": 0, "time": grid, "mean": pop["mean"].to_numpy(),
                               "lower": pop["lower"].to_numpy(), "upper": pop["upper"].to_numpy(), "weight": 1.0})
    facts = {
        "model": f"LinearMixedModel ({model.method_.upper()})",
        "subjects": f"{len(subjects)}",
        "log-likelihood": f"{model.loglik_:.2f}",
        "AIC": f"{model.aic_:.1f}",
        "iterations": f"{model.n_iter_}" + ("" if model.converged_ else " (not converged)"),
    }
    if scale := model._scale_text():  # the response's scale (response_transform)
        facts["response modelled as"] = scale
    return FitResults(model, _long(frame, names), names, traj, None, curves, None, model.summary(), facts)

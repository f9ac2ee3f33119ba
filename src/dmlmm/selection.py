"""Choosing the model and its size: a grid over models, components and latent dimensions.

The DMLMM research code fits a small grid of latent dimensions (D_1, D_2, ...)
and keeps the fit with the highest ELBO; the number of components K needs no
grid, since an overfitted K is emptied by the sparse Dirichlet prior (the
*effective* K is what is left after pruning). :func:`select_model` does that
grid, optionally over K as well, and can add mixtures of LMMs with 1, 2, ...
components (``models=("deep", "mixture")``), the growth-mixture models an lcmm
user would fit for G = 1, 2, ..., so that the model is chosen too. Two criteria:

- ``"elbo"``: fit every candidate on all the data, keep the highest ELBO (on the data's own
  scale, ``elbo_data_scale_``, whatever scale each candidate's ``response_transform`` chose);
- ``"heldout"``: hold out a fraction of each subject's observations
  (:func:`dmlmm.simulate.split_heldout`), fit on the rest, score the held-out
  observations given the subject's training ones (``model.score(heldout,
  condition_on=train)``, the mean held-out log predictive density), keep the
  best and refit it on all the data.

Candidates can run in parallel processes (``n_jobs``); ``on_result`` hears of
each one as it finishes (the command line prints a line per candidate).

``data`` may be a ``dask.dataframe.DataFrame`` (each subject's rows in one partition): every candidate is
then fitted on the current Dask cluster, one after the other (the workers do the parallel work), each
learning the design from the partitions as a Dask fit does; only the best fit so far is kept, so that the
workers hold the per-subject results of two candidates at most. With ``"heldout"`` the split is made
partition by partition (the rows the in-memory split of the computed frame holds out) and each
candidate's held-out visits are scored on the workers, partition by partition.
"""

from __future__ import annotations

import inspect
import itertools
import multiprocessing
import time as _time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ._dask_frames import is_dask_collection
from .basis import SplineBasis
from .data import Longitudinal, without_missing
from .models.membership_design import without_unknown_baseline
from .exceptions import DataError
from .models.candidates import resolve_n_jobs, stopping_workers
from .models.mixture import DeepMixtureLMM, MixtureLMM
from .priors.dmfa import DeepMixturePrior
from .simulate import split_heldout

__all__ = ["select_model", "latent_grid", "describe_candidate", "TABLE_COLUMNS", "MODELS"]

TABLE_COLUMNS = ["model", "components", "latent_dims", "elbo", "heldout_score", "effective_components", "n_clusters",
                 "seconds", "selected", "error"]
# the models select_model chooses among: name in the table -> class
MODELS = {"deep": DeepMixtureLMM, "mixture": MixtureLMM}


def latent_grid(n_layers: int, n_basis: int, max_first: int = 4) -> list[tuple[int, ...]]:
    """The research code's grid of latent dimensions: D_1 in 1..max_first, deeper layers 1.

    Parameters
    ----------
    n_layers : int
        L, the number of layers.
    n_basis : int
        D_0; D_1 never exceeds it.
    max_first : int
        Largest D_1 tried.
    """
    top = max(1, min(int(max_first), int(n_basis)))
    return [(d,) + (1,) * (int(n_layers) - 1) for d in range(1, top + 1)]


@dataclass
class _Task:
    """One candidate's work, sent to a worker process."""

    index: int
    components: tuple[int, ...]
    latent_dims: tuple[int, ...] | None
    train: pd.DataFrame
    heldout: pd.DataFrame | None
    columns: dict
    params: dict = field(default_factory=dict)
    kind: str = "deep"


def _make_model(kind: str, components: tuple, latent_dims: tuple | None, params: dict):
    if kind == "mixture":
        accepted = inspect.signature(MixtureLMM.__init__).parameters
        return MixtureLMM(int(components[0]), **{k: v for k, v in params.items() if k in accepted})
    return DeepMixtureLMM(components, latent_dims, **params)


def _fit_candidate(task: _Task) -> tuple[int, dict, DeepMixtureLMM | MixtureLMM | None]:
    """Fit one candidate (in this or a worker process); its table row and the fitted model (None: failed)."""
    t0 = _time.perf_counter()
    model = _make_model(task.kind, task.components, task.latent_dims, task.params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence notes of a grid are noise; the table tells
        try:
            model.fit(task.train, **task.columns)
            score = np.nan if task.heldout is None else model.score(task.heldout, condition_on=task.train)
        except (np.linalg.LinAlgError, FloatingPointError) as e:  # a numerically degenerate candidate
            return task.index, {"error": f"fit failed: {e}", "seconds": _time.perf_counter() - t0}, None
    row = {
        "elbo": getattr(model, "elbo_data_scale_", model.elbo_),  # comparable across response scales
        "heldout_score": float(score),
        "effective_components": tuple(int(k) for k in model.n_components_),
        "n_clusters": int(_computed(model.labels_.nunique())),
        "seconds": _time.perf_counter() - t0,
    }
    return task.index, row, model


def _computed(value):
    """``value``, computed where it is a lazy Dask result (a Dask fit's per-subject tables are)."""
    return value.compute() if hasattr(value, "compute") else value


def _candidate_error(ks: tuple, ds: tuple | None, n_basis: int, kind: str = "deep") -> str | None:
    """Why (K, D) cannot be fitted with a basis of ``n_basis`` functions, or None."""
    if kind == "mixture":
        if len(ks) != 1 or int(ks[0]) != ks[0] or int(ks[0]) < 1:
            return "a mixture of LMMs takes one positive integer number of components"
        return None
    try:
        if any(int(k) != k for k in ks) or any(int(d) != d for d in ds):
            return "components and latent dimensions must be integers"
        DeepMixturePrior(n_basis, tuple(int(k) for k in ks), tuple(int(d) for d in ds))
    except (TypeError, ValueError) as e:
        return str(e)
    return None


def _candidates(v) -> list:
    """A list of candidate tuples; one flat tuple of integers, e.g. (10, 5), is one candidate."""
    v = list(v)
    if v and all(np.isscalar(x) for x in v):
        return [tuple(v)]
    return v


def _as_tuple(v) -> tuple:
    return (v,) if np.isscalar(v) else tuple(v)


def select_model(
    data: pd.DataFrame,
    components: Sequence[Sequence[int]] = ((10, 5), (5, 3)),
    latent_dims: Sequence[Sequence[int]] = ((4, 1), (2, 1)),
    criterion: str = "elbo",
    *,
    subject: str = "subject",
    time: str = "time",
    response: str = "y",
    covariates: Sequence[str] | None = None,
    basis: SplineBasis | None = None,
    heldout_fraction: float = 0.2,
    n_jobs: int = 1,
    random_state: int | None = 0,
    models: Sequence[str] = ("deep",),
    mixture_components: Sequence[int] = (1, 2, 3, 4, 5),
    on_result: Callable[[dict, int, int], Any] | None = None,
    dropna: bool = False,
    **model_kwargs: Any,
) -> tuple[DeepMixtureLMM | MixtureLMM, pd.DataFrame]:
    """Fit a :class:`~dmlmm.DeepMixtureLMM` for every (components, latent_dims) pair (and, with
    ``models=("deep", "mixture")``, a :class:`~dmlmm.MixtureLMM` for every number of components
    in ``mixture_components``) and keep the best.

    Parameters
    ----------
    data : DataFrame or dask.dataframe.DataFrame
        Long data, one row per observation. A Dask frame (each subject's rows in one partition): the
        candidates are fitted on the current cluster one after the other (``n_jobs=1``).
    components : list of tuples
        Candidate (K_1, ..., K_L) (one tuple of integers: a single candidate).
    latent_dims : list of tuples
        Candidate (D_1, ..., D_L) (one tuple of integers: a single candidate); pairs whose lengths differ from the components', or with a
        latent dimension above the layer below, are reported in the table as errors.
    criterion : {"elbo", "heldout"}
        Highest ELBO on all the data, or highest mean held-out log predictive density.
    subject, time, response, covariates : column names (see :meth:`DeepMixtureLMM.fit`).
    basis : SplineBasis, optional
        Shared by every candidate; fitted on the whole data's time range (default ``SplineBasis()``).
    heldout_fraction : float
        Fraction of each subject's observations held out (criterion ``"heldout"``).
    n_jobs : int
        Parallel worker processes (-1: one per CPU).
    random_state : int or None
        Seed of every fit and of the held-out split.
    models : sequence of {"deep", "mixture"}
        The models to choose among: the deep mixture (``components`` x ``latent_dims``) and the
        mixture of LMMs (``mixture_components``).
    mixture_components : sequence of int
        Numbers of components of the mixture-of-LMMs candidates (with ``"mixture"`` in ``models``).
    on_result : callable, optional
        Called in this process as each candidate finishes (in the order they finish), with its
        table row (a dict), the number of candidates finished and the number in all.
    dropna : bool
        Drop rows with missing values in the columns used (with a warning, once) before any candidate is
        fitted, instead of raising.
    **model_kwargs
        Other :class:`DeepMixtureLMM` parameters (``max_iter``, ``concentration``, ...); the
        mixture-of-LMMs candidates get those that :class:`MixtureLMM` takes.

    Returns
    -------
    best : DeepMixtureLMM or MixtureLMM
        The selected candidate, fitted on all the data.
    table : DataFrame
        One row per candidate: model ("deep" or "mixture"), components, latent_dims (None for a
        mixture of LMMs), elbo (``elbo_data_scale_``, a bound on log p(y) of the response as given,
        so candidates fitted on different scales compare; of the fit the criterion used:
        the training part for ``"heldout"``), heldout_score, effective_components (per layer,
        after pruning), n_clusters (distinct clusters among the subjects), seconds, selected,
        error (why a candidate was not fitted, else None).
    """
    if criterion not in ("elbo", "heldout"):
        raise ValueError(f"criterion must be 'elbo' or 'heldout', got {criterion!r}")
    if not 0.0 < float(heldout_fraction) < 1.0 and criterion == "heldout":
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}")
    for bad in ("n_components", "latent_dims", "random_state", "basis"):
        if bad in model_kwargs:
            raise TypeError(f"{bad} is set by select_model, not through model parameters")
    if isinstance(data, Longitudinal):
        data = data.to_frame()
    columns = {"subject": subject, "time": time, "response": response, "covariates": covariates}
    on_dask = is_dask_collection(data)
    if on_dask:
        if n_jobs != 1:
            raise ValueError(f"n_jobs={n_jobs!r}: on a Dask frame the candidates are fitted one after the other on "
                             "the cluster, whose workers do the parallel work; leave n_jobs at 1")
        columns["dropna"] = dropna  # each candidate's Dask fit drops (and counts) the rows as it reads them
        if dropna and criterion == "heldout":  # and the held-out rows scored are complete ones too
            covs = [covariates] if isinstance(covariates, str) else list(covariates or [])
            used = [c for c in (subject, time, response, *covs) if c in data.columns]
            data = data.dropna(subset=used)
    elif dropna:  # once, up front (the warning names the rows dropped), so that every candidate fits the same rows
        data = without_missing(data, subject, time, response, covariates, stacklevel=3)
        data = without_unknown_baseline(data, subject, model_kwargs.get("membership_covariates"), stacklevel=3)
    basis = SplineBasis() if basis is None else SplineBasis.from_dict(basis.to_dict())
    if not on_dask:
        checked = Longitudinal.from_frame(data, subject, time, response, covariates)  # clear errors up front
        if not basis.is_fitted:
            basis.fit(checked.time)
    elif criterion == "heldout" and not basis.is_fitted:
        # on all the data's times, as in memory (each candidate's Dask fit would learn it from its training half;
        # the knots read the distinct times only): one pass over the time column
        basis.fit(np.unique(np.asarray(data[time].dropna().unique().compute(), dtype=float)))
    params = dict(model_kwargs, basis=basis, random_state=random_state)

    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    if not models or any(m not in MODELS for m in models):
        raise ValueError(f"models must be a non-empty list of {sorted(MODELS)}, got {models!r}")
    grid = []
    if "deep" in models:
        grid += [("deep", _as_tuple(k), _as_tuple(d))
                 for k, d in itertools.product(_candidates(components), _candidates(latent_dims))]
    if "mixture" in models:
        grid += [("mixture", _as_tuple(k), None) for k in mixture_components]
    rows = [{"model": m, "components": k, "latent_dims": d, "elbo": np.nan, "heldout_score": np.nan,
             "effective_components": None, "n_clusters": np.nan, "seconds": np.nan, "selected": False,
             "error": _candidate_error(k, d, int(basis.n_basis), m)} for m, k, d in grid]
    if not rows:
        raise ValueError(f"the grid is empty: models={models!r} with components={components!r}, "
                         f"latent_dims={latent_dims!r} and mixture_components={mixture_components!r} give no candidate")
    if all(r["error"] for r in rows):
        raise ValueError("no valid candidate: " + "; ".join(f"{describe_candidate(r)}: {r['error']}" for r in rows))

    if criterion == "heldout":
        train, heldout = split_heldout(data, heldout_fraction, random_state, subject=subject)
        if len(heldout) == 0:  # on Dask, one pass over the partitions
            most = _most_visits(data, subject) if on_dask else int(checked.counts.max())
            why = ("every subject has one visit, so none can be held out: use criterion='elbo' (CLI: --criterion elbo)"
                   if most < 2 else
                   f"with at most {most} visits per subject, a fraction of {heldout_fraction:g} rounds to none: use a "
                   "larger heldout_fraction or criterion='elbo' (CLI: --criterion elbo)")
            raise DataError(f"criterion='heldout' holds out visits of each subject, keeping at least one for "
                            f"training; {why}")
    else:
        train, heldout = data, None
    tasks = [_Task(i, r["components"], r["latent_dims"], train, heldout, columns, params, r["model"])
             for i, r in enumerate(rows) if not r["error"]]
    key = "elbo" if criterion == "elbo" else "heldout_score"
    fitted: dict[int, DeepMixtureLMM | MixtureLMM] = {}
    for done, (i, row, model) in enumerate(_run(tasks, n_jobs), start=1):
        rows[i].update(row)
        if model is not None:
            fitted[i] = model
            if on_dask:  # the best so far only: the others' per-subject results leave the workers
                keep = max(fitted, key=lambda j: rows[j][key])
                fitted = {keep: fitted[keep]}
        if on_result is not None:
            on_result(dict(rows[i]), done, len(tasks))
    if not fitted:
        raise ValueError("every candidate failed: " + "; ".join(f"{describe_candidate(r)}: {r['error']}" for r in rows))

    best = max(fitted, key=lambda i: rows[i][key])
    rows[best]["selected"] = True
    if criterion == "heldout":
        final = _Task(best, rows[best]["components"], rows[best]["latent_dims"], data, None, columns, params,
                      rows[best]["model"])
        _, _, model = _fit_candidate(final)
    else:
        model = fitted[best]
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return model, table


def _most_visits(data, subject: str) -> int:
    """The most rows of one subject in a Dask frame (``subject`` a column or the index)."""
    labels = data[subject] if subject in data.columns else data.index.to_series()
    return int(labels.value_counts().max().compute())


def describe_candidate(row: dict) -> str:
    """A candidate of the selection table in words, e.g. "deep (10, 5) / (2, 1)" or "mixture K=3"."""
    if row.get("model") == "mixture":
        return f"mixture of LMMs, {int(row['components'][0])} component(s)"
    return f"deep mixture, components {tuple(row['components'])}, latent dims {tuple(row['latent_dims'])}"


def _run(tasks: list[_Task], n_jobs: int):
    """Fit the tasks here (n_jobs=1) or in worker processes; yields (index, row, model) as each finishes."""
    n_jobs = resolve_n_jobs(int(n_jobs))  # -1: the CPUs this process may use, as a fit's n_jobs
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be a positive integer or -1, got {n_jobs}")
    workers = min(n_jobs, len(tasks))
    if workers <= 1:
        for t in tasks:
            yield _fit_candidate(t)
        return
    # spawn, not fork: forking a process whose BLAS already runs threads can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool, \
            stopping_workers(pool):
        futures = [pool.submit(_fit_candidate, t) for t in tasks]
        for f in as_completed(futures):
            yield f.result()

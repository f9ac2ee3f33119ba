"""Metrics of the simulation study (``model.md`` section 7): pure, vectorised functions.

- :func:`log_rmse`: per subject, log root mean squared error of the predictive
  mean against the true curve on its dense grid.
- :func:`coverage`, :func:`coverage_by_subject`: share of true-curve points
  inside the predictive band.
- :func:`adjusted_rand_index`: agreement of two partitions, corrected for chance.
- :func:`summarise`, :func:`summarise_log_score`: summaries over subjects.

Frames are long: one row per (subject, time). Truth and prediction are matched
on exact (subject, time) values, so predict on the truth's own time values.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "log_rmse",
    "coverage",
    "coverage_by_subject",
    "adjusted_rand_index",
    "contingency_table",
    "summarise",
    "summarise_log_score",
]

_KEYS = ["subject", "time"]


# --------------------------------------------------------------------------- joining


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} is missing column(s) {missing} (has {list(frame.columns)})")


def _align(truth: pd.DataFrame, predicted: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Join the predicted ``columns`` onto every truth point, matching on (subject, time).

    Parameters
    ----------
    truth : DataFrame, shape (m, >=3)
        Columns ``subject, time, value``.
    predicted : DataFrame, shape (p, >=2 + len(columns))
        Columns ``subject, time`` and ``columns``; may hold extra points, which are ignored.
    columns : sequence of str

    Returns
    -------
    DataFrame, shape (m, 3 + len(columns))
        Columns ``subject, time, value, *columns`` in the order of ``truth``.

    Raises
    ------
    ValueError
        If a column is missing, ``predicted`` repeats a (subject, time) key, or a
        truth point has no prediction (or a missing one).
    """
    _require_columns(truth, _KEYS + ["value"], "truth")
    _require_columns(predicted, _KEYS + list(columns), "predicted")
    pred = predicted[_KEYS + list(columns)]
    dup = pred.duplicated(_KEYS)
    if dup.any():
        first = pred.loc[dup, _KEYS].iloc[0].tolist()
        raise ValueError(f"predicted has {int(dup.sum())} repeated (subject, time) rows, e.g. {first}")
    joined = truth[_KEYS + ["value"]].merge(pred, on=_KEYS, how="left", validate="many_to_one")
    missing = joined[list(columns)].isna().any(axis=1).to_numpy()
    if missing.any():
        example = joined.loc[missing, _KEYS].iloc[0].tolist()
        raise ValueError(
            f"predicted lacks {int(missing.sum())} of the {len(joined)} truth points "
            f"(first: subject, time = {example}); predict on the truth's own (subject, time) values"
        )
    return joined


# --------------------------------------------------------------------------- curve metrics


def log_rmse(truth: pd.DataFrame, predicted: pd.DataFrame) -> pd.Series:
    """Per subject, log of the root mean squared error of the predicted mean on the truth grid.

    ``log sqrt(mean_j (value_ij - mean_ij)^2)`` over the truth points j of subject i.

    Parameters
    ----------
    truth : DataFrame, shape (m, 3)
        Columns ``subject, time, value``: the true curve on its dense grid.
    predicted : DataFrame, shape (p, >=3)
        Columns ``subject, time, mean``: the predictive mean, at least at every truth point.

    Returns
    -------
    Series, shape (N,)
        Indexed by subject (sorted), named ``log_rmse``. ``-inf`` for an exact prediction.

    Raises
    ------
    ValueError
        If a truth point has no prediction (see :func:`_align`).
    """
    joined = _align(truth, predicted, ["mean"])
    sq = (joined["value"] - joined["mean"]) ** 2
    mse = sq.groupby(joined["subject"]).mean()
    with np.errstate(divide="ignore"):
        out = 0.5 * np.log(mse)
    out.index.name = "subject"
    return out.rename("log_rmse")


def _inside(truth: pd.DataFrame, predicted: pd.DataFrame) -> pd.DataFrame:
    """Truth points with an ``inside`` flag for ``lower <= value <= upper``."""
    joined = _align(truth, predicted, ["lower", "upper"])
    if (joined["lower"] > joined["upper"]).any():
        raise ValueError("predicted has rows with lower > upper")
    joined["inside"] = (joined["value"] >= joined["lower"]) & (joined["value"] <= joined["upper"])
    return joined


def coverage(truth: pd.DataFrame, predicted: pd.DataFrame) -> float:
    """Fraction of all truth points inside the predictive band ``[lower, upper]`` (bounds included).

    Parameters
    ----------
    truth : DataFrame, shape (m, 3)
        Columns ``subject, time, value``.
    predicted : DataFrame, shape (p, >=4)
        Columns ``subject, time, lower, upper``, at least at every truth point.

    Returns
    -------
    float
        In [0, 1]; NaN when ``truth`` is empty.
    """
    inside = _inside(truth, predicted)["inside"].to_numpy()
    return float(inside.mean()) if inside.size else float("nan")


def coverage_by_subject(truth: pd.DataFrame, predicted: pd.DataFrame) -> pd.Series:
    """Per subject, the fraction of its truth points inside ``[lower, upper]``.

    Parameters
    ----------
    truth : DataFrame, shape (m, 3)
        Columns ``subject, time, value``.
    predicted : DataFrame, shape (p, >=4)
        Columns ``subject, time, lower, upper``.

    Returns
    -------
    Series, shape (N,)
        Indexed by subject (sorted), named ``coverage``.
    """
    joined = _inside(truth, predicted)
    out = joined["inside"].astype(float).groupby(joined["subject"]).mean()
    out.index.name = "subject"
    return out.rename("coverage")


# --------------------------------------------------------------------------- clustering


def _as_label_arrays(labels_true, labels_pred) -> tuple[np.ndarray, np.ndarray]:
    """Two equally long 1-d label arrays; two Series are aligned on their index."""
    if isinstance(labels_true, pd.Series) and isinstance(labels_pred, pd.Series):
        if labels_true.index.has_duplicates or labels_pred.index.has_duplicates:
            raise ValueError("label Series must have unique indexes to be aligned")
        if not labels_true.index.sort_values().equals(labels_pred.index.sort_values()):
            only_true = labels_true.index.difference(labels_pred.index)
            only_pred = labels_pred.index.difference(labels_true.index)
            raise ValueError(
                f"label Series index different subjects: {len(only_true)} only in labels_true, "
                f"{len(only_pred)} only in labels_pred"
            )
        labels_pred = labels_pred.reindex(labels_true.index)
    a = np.asarray(labels_true)
    b = np.asarray(labels_pred)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"labels have different lengths: {a.shape[0]} and {b.shape[0]}")
    if pd.isna(a).any() or pd.isna(b).any():
        raise ValueError("labels contain missing values")
    return a, b


def contingency_table(labels_true, labels_pred) -> np.ndarray:
    """Counts ``n_rs`` of items with true label r and predicted label s.

    Parameters
    ----------
    labels_true, labels_pred : array-like or Series, shape (n,)
        Any hashable labels; two Series are aligned on their index.

    Returns
    -------
    ndarray of int, shape (R, S)
        Rows: distinct true labels (sorted); columns: distinct predicted labels (sorted).
    """
    a, b = _as_label_arrays(labels_true, labels_pred)
    ra, ua = pd.factorize(a, sort=True)
    rb, ub = pd.factorize(b, sort=True)
    table = np.zeros((len(ua), len(ub)), dtype=np.int64)
    np.add.at(table, (ra, rb), 1)
    return table


def _pairs(counts: np.ndarray) -> float:
    """Sum of ``C(c, 2)`` over counts (any shape), as float."""
    c = np.asarray(counts, dtype=float)
    return float(np.sum(c * (c - 1.0) / 2.0))


def adjusted_rand_index(labels_true, labels_pred) -> float:
    """Adjusted Rand index (Hubert and Arabie, 1985) of two partitions.

    With contingency counts ``n_rs``, row sums ``a_r``, column sums ``b_s`` and
    ``n`` items::

        index    = sum_rs C(n_rs, 2)
        expected = sum_r C(a_r, 2) * sum_s C(b_s, 2) / C(n, 2)
        maximum  = (sum_r C(a_r, 2) + sum_s C(b_s, 2)) / 2
        ARI      = (index - expected) / (maximum - expected)

    It is 1 for identical partitions (up to relabelling), has expectation 0 under
    random labelling with fixed cluster sizes, and is symmetric. When the
    denominator is 0 (both partitions a single cluster, or both all singletons,
    or fewer than two items) the partitions agree and 1.0 is returned.

    Parameters
    ----------
    labels_true, labels_pred : array-like or Series, shape (n,)
        Any hashable labels; two Series are aligned on their index (which must
        hold the same subjects).

    Returns
    -------
    float
        At most 1; can be negative.
    """
    table = contingency_table(labels_true, labels_pred)
    n = float(table.sum())
    index = _pairs(table)
    sum_a = _pairs(table.sum(axis=1))
    sum_b = _pairs(table.sum(axis=0))
    total = n * (n - 1.0) / 2.0
    expected = sum_a * sum_b / total if total > 0 else 0.0
    maximum = 0.5 * (sum_a + sum_b)
    denominator = maximum - expected
    if denominator == 0.0:
        return 1.0
    return float((index - expected) / denominator)


# --------------------------------------------------------------------------- summaries


def _values(values: pd.Series | np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0:
        raise ValueError(f"cannot summarise an empty set of {what}")
    if np.isnan(v).any():
        raise ValueError(f"{what} contain {int(np.isnan(v).sum())} NaN value(s)")
    return v


def summarise(values: pd.Series | np.ndarray) -> dict[str, float]:
    """Mean, median and sample standard deviation (ddof = 1) over subjects.

    Parameters
    ----------
    values : Series or ndarray, shape (N,)
        One value per subject (e.g. :func:`log_rmse`); NaN is an error.

    Returns
    -------
    dict
        ``{"mean", "median", "sd"}`` as floats; ``sd`` is NaN when N = 1.
    """
    v = _values(values, "values")
    sd = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
    return {"mean": float(np.mean(v)), "median": float(np.median(v)), "sd": sd}


def summarise_log_score(scores: pd.Series | np.ndarray) -> dict[str, float]:
    """Mean and median of per-subject log predictive scores (higher is better).

    Parameters
    ----------
    scores : Series or ndarray, shape (N,)
        Per-subject log predictive densities; NaN is an error.

    Returns
    -------
    dict
        ``{"mean", "median"}`` as floats.
    """
    v = _values(scores, "log scores")
    return {"mean": float(np.mean(v)), "median": float(np.median(v))}

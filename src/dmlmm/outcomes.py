"""Outcomes and characteristics by cluster: what the clusters mean for a clinical question.

- :func:`outcome_table`: a categorical outcome by cluster, counts with row percentages and
  Pearson's chi-square test of independence (``scipy.stats.chi2_contingency``; with Yates'
  continuity correction for a 2 x 2 table, as R's ``chisq.test``).
- :func:`survival_by_cluster`: Kaplan-Meier curves by cluster with their pointwise
  confidence intervals and the log-rank test, from the ``lifelines`` package (the optional
  extra ``survival``: ``pip install "dmlmm[survival]"``), imported only when needed.
- :func:`baseline_table`: each column's mean (SD), or counts (%) for categorical columns,
  by cluster and overall.
- :func:`outcome_report`: all of them at once, as ``dmlmm fit --outcome / --event-time /
  --event / --baseline`` writes them.

The data are long (one row per observation, as fitted); a per-subject value is **each
subject's last non-missing value** (rows ordered by the model's time column). An outcome, a
follow-up time and an event indicator must hold one value per subject: a column that varies
within a subject is refused with a :class:`~dmlmm.DataError` naming it. Subjects without a
value are left out of that table and counted.

The clusters are a fitted model's (numbered as in ``clusters.csv``; ``level="cluster_layer1"``
for a deep model's first-layer groups) or a Series mapping subjects to clusters.

The frame may also be a ``dask.dataframe.DataFrame`` (a fit on a Dask cluster): one pass over its
partitions keeps, with :func:`subject_value_rows`, the few rows of each subject that these tables
read, and brings only those here (O(subjects x columns asked for), not O(rows)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ._dask_frames import is_dask_collection
from .columns import as_numeric, one_decimal
from .exceptions import DataError

__all__ = ["OutcomeTable", "SurvivalByCluster", "BaselineTable", "OutcomeReport", "subject_values",
           "event_indicator", "outcome_table", "survival_by_cluster", "baseline_table", "outcome_report",
           "check_outcome_columns", "require_lifelines", "format_p", "subject_value_rows", "subject_value_partitions"]

_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def _py(v):
    """A numpy scalar as the Python value it holds (for messages)."""
    return v.item() if isinstance(v, np.generic) else v


def format_p(p: float) -> str:
    """A p-value as printed: ``p < 0.001``, ``p = 0.012``; empty when undefined."""
    if p is None or not np.isfinite(p):
        return "p not defined"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def require_lifelines():
    """The lifelines package, or an ImportError saying how to install it."""
    try:
        import lifelines  # noqa: F401
    except ImportError:
        raise ImportError("Kaplan-Meier curves and the log-rank test need the optional package 'lifelines': "
                          "pip install 'dmlmm[survival]' (or: pip install lifelines)") from None
    return lifelines


# ---------------------------------------------------------------------------- per-subject values
def _check_column(frame: pd.DataFrame, column: str) -> None:
    if column not in frame.columns:
        raise DataError(f"column {column!r} not found in the data; the columns are: {list(frame.columns)}")


def subject_values(frame: pd.DataFrame, subject: str, column: str, *, order_by: str | None = None,
                   constant: bool = False, role: str = "a per-subject value", at: str = "last") -> pd.Series:
    """Each subject's last (or first) non-missing value of ``column``.

    Parameters
    ----------
    frame : DataFrame, long data (one row per observation).
    subject, column : column names.
    order_by : column giving the order of a subject's rows (the time); default the order in ``frame``.
    constant : refuse (DataError naming the column) a column that varies within a subject.
    role : what the column is, for that message (e.g. "an outcome").
    at : "last" or "first" non-missing value.

    Returns
    -------
    Series indexed by subject (subjects with no non-missing value are absent).
    """
    if at not in ("last", "first"):
        raise ValueError(f"at must be 'last' or 'first', got {at!r}")
    for c in (subject, column) + ((order_by,) if order_by else ()):
        _check_column(frame, c)
    cols = list(dict.fromkeys([subject, column] + ([order_by] if order_by else [])))
    d = frame[cols]
    d = d[d[column].notna()]
    if order_by:  # the time itself too: its first value is the earliest, whatever the rows' order
        d = d.sort_values(order_by, kind="stable", na_position="first")
    g = d.groupby(subject, sort=True, observed=True)[column]  # a categorical's unused levels are no subjects
    if constant:
        n = g.nunique()
        bad = n.index[n > 1]
        if len(bad):
            s = bad[0]
            vals = pd.unique(d.loc[d[subject] == s, column])
            shown = ", ".join(repr(_py(v)) for v in vals[:3])
            raise DataError(
                f"column {column!r} must hold one value per subject ({role}), but it varies within "
                f"{len(bad)} of {len(n)} subject(s) (e.g. subject {_py(s)!r}: {shown}"
                f"{', ...' if len(vals) > 3 else ''}); give each subject a single value in every row"
            )
    return g.last() if at == "last" else g.first()


def event_indicator(values: pd.Series, column: str = "event", event_value=None) -> pd.Series:
    """True where ``values`` mark an event, False where they mark censoring.

    Without ``event_value`` the values must be 0/1, true/false or yes/no (any case); with it,
    the values equal to ``event_value`` (compared as numbers when both are numbers, else as
    text) are events and all others are censored.
    """
    s = values
    if event_value is not None:
        num = pd.to_numeric(s, errors="coerce")
        try:
            target = float(event_value)
        except (TypeError, ValueError):
            target = None
        if target is not None and num.notna().all():
            hit = num == target
        else:
            text, wanted = s.astype(str).str.strip(), str(event_value).strip()
            hit = text == wanted
            near = pd.unique(s[(text.str.casefold() == wanted.casefold()) & ~hit])
            if len(near):
                warnings.warn(
                    f"column {column!r} holds {', '.join(repr(_py(v)) for v in near)}, which differ from the event "
                    f"value {event_value!r} only in case: they are counted as censored; recode the column if they "
                    "are events", UserWarning, stacklevel=3)
        if not hit.any():
            raise DataError(f"no subject has the event value {event_value!r} in column {column!r} "
                            f"(its values are: {', '.join(map(str, pd.unique(s)[:6]))})")
        return hit.astype(bool)
    if pd.api.types.is_bool_dtype(s):
        return s.astype(bool)
    text = s.astype(str).str.strip().str.lower()
    ok = text.isin(_TRUE | _FALSE)
    if not ok.all():
        vals = ", ".join(map(str, pd.unique(s)[:6]))
        raise DataError(f"column {column!r} must mark events as 1/0 (or true/false, yes/no); it holds {vals}: "
                        "say which value is the event with event_value=...")
    return text.isin(_TRUE)


def _durations(values: pd.Series, column: str) -> pd.Series:
    t = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_bool_dtype(values) else values * np.nan
    bad = t.isna()
    if bad.any():
        raise DataError(f"column {column!r} (follow-up time) must be numeric, but subject {_py(values.index[bad][0])!r} "
                        f"holds {_py(values[bad].iloc[0])!r} ({int(bad.sum())} subject(s) in all)")
    t = t.astype(float)
    if not np.isfinite(t).all() or (t < 0).any():
        bad = t[~np.isfinite(t) | (t < 0)]
        raise DataError(f"column {column!r} (follow-up time) must be finite and >= 0, but subject "
                        f"{_py(bad.index[0])!r} has {_py(bad.iloc[0])!r}")
    return t


def subject_value_rows(frame: pd.DataFrame, subject: str, columns: Sequence[str],
                       order_by: str | None = None) -> pd.DataFrame:
    """The rows of ``frame`` that the tables of this module read of ``columns``, and no others.

    A row is kept where, for some column, it holds the subject's first non-missing value, its last one, or
    its first value that differs from the first (rows in ``order_by`` order, missing first, as
    :func:`subject_values` orders them), and where it is the subject's last row (its latest time). The kept
    rows are the frame's own, sorted by ``order_by`` (stably), so that :func:`subject_values` (first or last
    value), the check of values varying within a subject and the subjects present are the same on them as on
    ``frame``. It also holds on parts of a frame (one Dask partition at a time, a subject's rows split or
    not): the rows kept of each part, put together, include those kept of the whole.

    Parameters
    ----------
    frame : (n, p) DataFrame, long data; the subject may be its index.
    subject : the subject column.
    columns : the per-subject columns (outcomes, follow-up, event, characteristics).
    order_by : the time column ordering a subject's rows (None: the frame's order).

    Returns
    -------
    (m, q) DataFrame with columns subject, ``order_by`` and ``columns``; m is at most n and about
    (2 to 3 x len(columns) + 1) x subjects.
    """
    if subject not in frame.columns and frame.index.name == subject:
        frame = frame.reset_index()
    wanted = [c for c in dict.fromkeys(columns) if c != subject]  # the time too (an age at entry)
    kept = list(dict.fromkeys([subject] + ([order_by] if order_by else []) + wanted))
    for c in kept:
        _check_column(frame, c)
    d = frame[kept]
    if order_by:
        d = d.sort_values(order_by, kind="stable", na_position="first")
    who = d[subject].to_numpy()
    keep = ~pd.Series(who).duplicated(keep="last").to_numpy()  # each subject's last row: its latest time
    for c in wanted:
        v = d[c]
        present = v.notna().to_numpy()
        by = pd.Series(present).groupby(who, sort=False)
        rank = by.cumsum().to_numpy()  # this row's place among the subject's values (1: the first)
        keep |= present & ((rank == 1) | (rank == by.transform("sum").to_numpy()))
        first = v.where(present & (rank == 1)).groupby(who, sort=False).transform("first")
        other = present & v.ne(first).fillna(False).to_numpy(dtype=bool)
        keep |= other & (pd.Series(other).groupby(who, sort=False).cumsum().to_numpy() == 1)
    return d[keep]


def _gathered(frame, model, subject: str | None, order_by: str | None, columns: Sequence[str]):
    """``frame`` as it is, or for a Dask frame its :func:`subject_value_rows` brought here (with the subject and
    order columns the tables will use: the model's by default)."""
    if not is_dask_collection(frame):
        return frame
    if not isinstance(model, pd.Series) and hasattr(model, "design_"):
        cols = model.design_.columns
        subject = subject or cols.subject
        if order_by is None and cols.time in frame.columns:
            order_by = cols.time
    if subject is None:
        raise ValueError("give subject= (the subject column) when the clusters are a Series")
    return subject_value_partitions(frame, subject, columns, order_by).compute()


def subject_value_partitions(frame, subject: str, columns: Sequence[str], order_by: str | None = None):
    """:func:`subject_value_rows` of every partition of the Dask frame ``frame``, lazily (a Dask frame)."""
    meta = subject_value_rows(frame._meta, subject, columns, order_by)
    return frame.map_partitions(subject_value_rows, subject, list(columns), order_by, meta=meta)


# ---------------------------------------------------------------------------- clusters
def _clusters(model, frame: pd.DataFrame, level: str, subject: str | None,
              order_by: str | None) -> tuple[pd.Series, str, str | None]:
    """Cluster per subject, the subject column and the column ordering a subject's rows of ``frame``:
    ``order_by`` (checked), else the model's time column where ``frame`` has it, else None (the frame's order;
    a frame with one row per subject needs none)."""
    if order_by is not None:
        _check_column(frame, order_by)
    if isinstance(model, pd.Series):
        if subject is None:
            raise ValueError("give subject= (the subject column) when the clusters are a Series")
        return model.rename("cluster"), subject, order_by
    from .summaries import cluster_labels

    if not hasattr(model, "responsibilities_"):
        raise ValueError("outcomes by cluster need a fitted MixtureLMM or DeepMixtureLMM (or a Series of clusters)")
    cols = model.design_.columns
    labels = cluster_labels(model, level).rename("cluster")
    if order_by is None and cols.time in frame.columns:
        order_by = cols.time
    return labels, subject or cols.subject, order_by


def sd_decimals(sd: float) -> int:
    """Decimals that give ``sd`` three significant figures (10.6: 1, 0.456: 3, 310: 0); 1 for a zero or missing
    SD. A characteristics row prints every cluster's mean (SD) with the decimals of all subjects' SD, as a paper's
    Table 1 does (three significant figures per cell gave '50 (10.9)' beside '50.1 (10.1)')."""
    if not np.isfinite(sd) or sd <= 0:
        return 1
    return max(0, 2 - int(np.floor(np.log10(sd))))


def _mean_sd_cell(mean: float, sd: float, n: int, places: int) -> str:
    """A characteristics cell of ``n`` subjects: 'mean (SD)', the mean alone for one subject, '' for none."""
    if n > 1:
        return f"{mean:.{places}f} ({sd:.{places}f})"
    return f"{mean:.{places}f}" if n else ""


def _check_not_subject(column: str, subject: str) -> None:
    """A DataError for the subject column asked for as a characteristic (it was skipped without a word)."""
    if column == subject:
        raise DataError(f"column {column!r} is the subject column: a characteristics table describes the subjects' "
                        "other columns (age, sex, ...); leave it out")


def _check_subjects(labels: pd.Series, frame: pd.DataFrame, subject: str) -> None:
    """A DataError when no subject of ``frame`` is one of the clusters' (``labels``, indexed by subject): every
    table would be empty or all missing. The usual cause is a subject column read with another type (``'3'`` is
    not ``3``)."""
    _check_column(frame, subject)
    present = pd.Index(pd.unique(frame[subject].dropna().to_numpy(dtype=object)))
    if len(present) and not present.isin(labels.index).any():
        def shown(idx: pd.Index) -> str:
            return ", ".join(repr(_py(v)) for v in idx[:3]) + (", ..." if len(idx) > 3 else "")

        raise DataError(
            f"none of the {len(present)} subject(s) in column {subject!r} ({shown(present)}) is a subject of the "
            f"clusters ({shown(labels.index)}): the labels must match in value and type ('3' is not 3); convert the "
            f"column, e.g. frame[{subject!r}].astype(int) or .astype(str)")
    outside = present[~present.isin(labels.index)]
    if len(outside):
        warnings.warn(
            f"{len(outside)} of the {len(present)} subject(s) in the data are not among the clusters' subjects (e.g. "
            f"{', '.join(repr(_py(v)) for v in outside[:3])}): they have no cluster and are left out of the table "
            "(fit the model on them, or predict their clusters with predict_proba, to include them)",
            UserWarning, stacklevel=3)


def _order(values) -> list:
    """The distinct values in display order: a pandas Categorical's own order of categories (those present), else
    sorted (as text where the values do not compare)."""
    series = pd.Series(values)
    if isinstance(series.dtype, pd.CategoricalDtype):
        present = set(series.dropna())
        return [c for c in series.cat.categories if c in present]
    vals = list(pd.unique(series.dropna()))
    try:
        return sorted(vals)
    except TypeError:
        return sorted(vals, key=str)


# ---------------------------------------------------------------------------- categorical outcome
@dataclass
class OutcomeTable:
    """A categorical outcome by cluster (see :func:`outcome_table`).

    Attributes
    ----------
    column : the outcome column.
    counts : DataFrame, subjects per cluster (rows) and outcome value (columns).
    percent : DataFrame, row percentages (each cluster's subjects by outcome value).
    statistic, dof, p_value : Pearson's chi-square test of independence (NaN if the table has
        fewer than two rows or columns).
    min_expected : smallest expected count under independence (below 5 the chi-square
        approximation is rough).
    n_subjects : subjects in the table; n_missing : clustered subjects without a value.
    """

    column: str
    counts: pd.DataFrame
    percent: pd.DataFrame
    statistic: float
    dof: int
    p_value: float
    min_expected: float
    n_subjects: int
    n_missing: int

    def formatted(self) -> pd.DataFrame:
        """The table as printed: "n (x %)" per cluster and value, with the totals."""
        out = pd.DataFrame(index=[str(k) for k in self.counts.index] + ["all"])
        total = self.counts.sum(axis=0)
        for c in self.counts.columns:
            col = [f"{n} ({one_decimal(p)} %)" for n, p in zip(self.counts[c], self.percent[c])]
            col.append(f"{total[c]} ({one_decimal(100 * total[c] / max(total.sum(), 1))} %)")
            out[str(c)] = col
        out["subjects"] = list(self.counts.sum(axis=1)) + [int(total.sum())]
        out.index.name = "cluster"
        return out

    def test_text(self) -> str:
        if not np.isfinite(self.statistic):
            return "chi-square test not defined (fewer than two clusters or values)"
        text = f"chi-square {self.statistic:.2f}, {self.dof} df, {format_p(self.p_value)}"
        if self.min_expected < 5:
            text += f" (smallest expected count {self.min_expected:.1f}: the approximation is rough)"
        return text

    def to_frame(self) -> pd.DataFrame:
        """Long form: outcome, value, cluster, subjects, percent (of the cluster's subjects); "all" rows last."""
        rows = []
        total = self.counts.sum(axis=0)
        for k in list(self.counts.index) + ["all"]:
            for c in self.counts.columns:
                n = int(total[c]) if k == "all" else int(self.counts.loc[k, c])
                p = 100 * n / max(total.sum(), 1) if k == "all" else float(self.percent.loc[k, c])
                rows.append({"outcome": self.column, "value": c, "cluster": k, "subjects": n, "percent": p})
        return pd.DataFrame(rows)


def outcome_table(model, frame: pd.DataFrame, column: str, *, subject: str | None = None,
                  order_by: str | None = None, level: str = "cluster") -> OutcomeTable:
    """Counts of a categorical per-subject outcome by cluster, row percentages and a chi-square test.

    Parameters
    ----------
    model : fitted MixtureLMM / DeepMixtureLMM, or a Series (index: subject) of clusters.
    frame : DataFrame (or Dask DataFrame), the long data holding ``column`` (and the subject and time columns).
    column : the outcome; one value per subject (the last non-missing one is used).
    subject, order_by : subject and time columns (default: the model's).
    level : "cluster" or, for a deep model, "cluster_layer1".
    """
    from scipy.stats import chi2_contingency

    frame = _gathered(frame, model, subject, order_by, [column])
    labels, subject, order_by = _clusters(model, frame, level, subject, order_by)
    _check_subjects(labels, frame, subject)
    values = subject_values(frame, subject, column, order_by=order_by, constant=True, role="an outcome")
    common = labels.index.intersection(values.index)
    lab, val = labels.loc[common], values.loc[common]
    counts = pd.crosstab(lab, val).reindex(index=_order(labels), columns=_order(val), fill_value=0)
    counts.index.name, counts.columns.name = "cluster", column
    percent = 100 * counts.div(counts.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    used = counts.loc[counts.sum(axis=1) > 0, counts.sum(axis=0) > 0]
    stat, dof, p, min_exp = np.nan, 0, np.nan, np.nan
    if used.shape[0] >= 2 and used.shape[1] >= 2:
        res = chi2_contingency(used.to_numpy())
        stat, p, dof, min_exp = float(res.statistic), float(res.pvalue), int(res.dof), float(res.expected_freq.min())
    return OutcomeTable(column, counts, percent, stat, dof, p, min_exp, int(len(common)),
                        int(len(labels) - len(common)))


# ---------------------------------------------------------------------------- survival
@dataclass
class SurvivalByCluster:
    """Kaplan-Meier curves by cluster and the log-rank test (see :func:`survival_by_cluster`).

    Attributes
    ----------
    duration, event : the follow-up time and event columns; event_label : what counts as an event.
    curves : DataFrame, one row per cluster and time at which something happened (from time 0):
        cluster, time, survival, lower, upper (pointwise confidence interval, lifelines'
        exponential Greenwood), at_risk, events, censored.
    summary : DataFrame by cluster: subjects, events, censored, median survival time and its
        confidence interval (inf: not reached).
    statistic, dof, p_value : the log-rank test of equal survival in all clusters (NaN with
        one cluster).
    n_subjects, n_missing : subjects in the curves, clustered subjects without time or event.
    alpha : 1 - the confidence level of the intervals.
    """

    duration: str
    event: str
    event_label: str
    curves: pd.DataFrame
    summary: pd.DataFrame
    statistic: float
    dof: int
    p_value: float
    n_subjects: int
    n_missing: int
    alpha: float = 0.05

    def test_text(self) -> str:
        if not np.isfinite(self.statistic):
            return "log-rank test not defined (one cluster)"
        return f"log-rank chi-square {self.statistic:.2f}, {self.dof} df, {format_p(self.p_value)}"

    def formatted(self) -> pd.DataFrame:
        """The summary as printed: subjects, events, median (CI)."""
        def fmt(v):
            return "not reached" if not np.isfinite(v) else f"{v:.3g}"

        s = self.summary
        level = f"{100 * (1 - self.alpha):g} %"
        out = pd.DataFrame({
            "subjects": s["subjects"], "events": s["events"],
            f"median ({level} CI)": [f"{fmt(m)} ({fmt(lo)} to {fmt(hi)})"
                                     for m, lo, hi in zip(s["median"], s["median_lower"], s["median_upper"])],
        }, index=s.index)
        return out

    def to_frame(self) -> pd.DataFrame:
        """The curves with the follow-up time column under its own name."""
        return self.curves.rename(columns={"time": self.duration})


def survival_by_cluster(model, frame: pd.DataFrame, duration: str, event: str, *, event_value=None,
                        subject: str | None = None, order_by: str | None = None, level: str = "cluster",
                        alpha: float = 0.05) -> SurvivalByCluster:
    """Kaplan-Meier curves by cluster with the log-rank test (lifelines).

    Parameters
    ----------
    model : fitted MixtureLMM / DeepMixtureLMM, or a Series (index: subject) of clusters.
    frame : DataFrame (or Dask DataFrame), the long data holding the ``duration`` and ``event`` columns.
    duration : follow-up time (time to the event or to censoring), >= 0; one value per subject.
    event : event indicator, one value per subject: 1/0, true/false, yes/no, or any values with
        ``event_value`` saying which one is the event (the others are censored).
    subject, order_by : subject and time columns (default: the model's).
    level : "cluster" or, for a deep model, "cluster_layer1".
    alpha : the curves' confidence intervals are 1 - alpha.
    """
    require_lifelines()
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import multivariate_logrank_test
    from lifelines.utils import median_survival_times

    frame = _gathered(frame, model, subject, order_by, [duration, event])
    labels, subject, order_by = _clusters(model, frame, level, subject, order_by)
    _check_subjects(labels, frame, subject)
    t = _durations(subject_values(frame, subject, duration, order_by=order_by, constant=True,
                                  role="a follow-up time"), duration)
    raw = subject_values(frame, subject, event, order_by=order_by, constant=True, role="an event indicator")
    e = event_indicator(raw, event, event_value)
    common = labels.index.intersection(t.index).intersection(e.index)
    lab, t, e = labels.loc[common], t.loc[common], e.loc[common]
    if not len(common):
        raise DataError(f"no subject of the clusters has both a follow-up time ({duration!r}) and an event indicator "
                        f"({event!r}): there is nothing to draw survival curves from")
    curves, summary = [], []
    for k in _order(lab):
        m = (lab == k).to_numpy()
        kmf = KaplanMeierFitter(alpha=alpha).fit(t[m].to_numpy(float), e[m].to_numpy(bool), label="km")
        sf = kmf.survival_function_["km"]
        ci = kmf.confidence_interval_
        et = kmf.event_table
        curves.append(pd.DataFrame({
            "cluster": k, "time": sf.index.to_numpy(float), "survival": sf.to_numpy(),
            "lower": ci.iloc[:, 0].to_numpy(), "upper": ci.iloc[:, 1].to_numpy(),
            "at_risk": et["at_risk"].reindex(sf.index).to_numpy(int),
            "events": et["observed"].reindex(sf.index).to_numpy(int),
            "censored": et["censored"].reindex(sf.index).to_numpy(int)}))
        med_ci = median_survival_times(ci)
        summary.append({"cluster": k, "subjects": int(m.sum()), "events": int(e[m].sum()),
                        "censored": int((~e[m]).sum()), "median": float(kmf.median_survival_time_),
                        "median_lower": float(med_ci.iloc[0, 0]), "median_upper": float(med_ci.iloc[0, 1])})
    stat, dof, p = np.nan, 0, np.nan
    if lab.nunique() >= 2:
        res = multivariate_logrank_test(t.to_numpy(float), lab.to_numpy(), e.to_numpy(bool))
        stat, dof, p = float(res.test_statistic), int(res.degrees_of_freedom), float(res.p_value)
    label = f"{event} = {event_value}" if event_value is not None else event
    return SurvivalByCluster(duration, event, label, pd.concat(curves, ignore_index=True),
                             pd.DataFrame(summary).set_index("cluster"), stat, dof, p, int(len(common)),
                             int(len(labels) - len(common)), alpha)


# ---------------------------------------------------------------------------- baseline table
@dataclass
class BaselineTable:
    """Characteristics by cluster (see :func:`baseline_table`).

    Attributes
    ----------
    table : DataFrame as printed, rows (variable, statistic), columns the clusters and "all":
        "mean (SD)" for numeric columns, "n (%)" per value for categorical ones (numeric
        columns with at most two distinct values count as categorical), "missing" counts.
    tidy : DataFrame variable, level, cluster, subjects, mean, sd, count, percent (the numbers).
    at : "last" or "first": which non-missing value of each subject was used.
    varying : the columns that vary within some subject (for which ``at`` matters).
    """

    table: pd.DataFrame
    tidy: pd.DataFrame
    at: str
    varying: list = field(default_factory=list)


def _is_numeric(values: pd.Series) -> bool:
    """Whether a characteristic is summarised by its mean (SD): numbers with more than two distinct values, not a
    pandas Categorical (declared categorical, whatever its categories) nor booleans."""
    if pd.api.types.is_bool_dtype(values) or isinstance(values.dtype, pd.CategoricalDtype):
        return False
    try:
        x = as_numeric(values, "values")
    except DataError:
        return False
    return len(np.unique(x[np.isfinite(x)])) > 2


def _declared_categorical(model) -> set[str]:
    """Columns the model's covariates treat as categorical: non-numeric ones, and numeric codes the formula
    wraps in ``C(...)`` (a diet numbered 1-4 is four groups, not a mean of 2.2)."""
    design = getattr(model, "design_", None)
    enc = getattr(design, "encoding", None)
    if enc is None:
        return set()
    cats = {c for c, is_cat in getattr(enc, "categorical", {}).items() if is_cat}
    return cats | {c for c in enc.columns if any(n.startswith(f"C({c})") for n in enc.names)}


def baseline_table(model, frame: pd.DataFrame, columns: Sequence[str], *, subject: str | None = None,
                   order_by: str | None = None, level: str = "cluster", at: str = "first") -> BaselineTable:
    """Mean (SD) or counts (%) of each column by cluster and overall (a clinical paper's Table 1).

    Parameters
    ----------
    model : fitted MixtureLMM / DeepMixtureLMM, or a Series (index: subject) of clusters.
    frame : DataFrame (or Dask DataFrame), the long data holding ``columns``.
    columns : the characteristics; each subject contributes one value per column.
    subject, order_by : subject and time columns (default: the model's).
    level : "cluster" or, for a deep model, "cluster_layer1".
    at : "first" (default: the value at entry, as a Table 1 of baseline characteristics reports) or
        "last" non-missing value of each subject, for columns that vary within subjects (listed in
        the result's ``varying``).
    """
    if isinstance(columns, str):  # one column, not its letters
        columns = [columns]
    frame = _gathered(frame, model, subject, order_by, columns)
    labels, subject, order_by = _clusters(model, frame, level, subject, order_by)
    _check_subjects(labels, frame, subject)
    declared = _declared_categorical(model)
    clusters = _order(labels)
    groups = [(k, labels.index[labels == k]) for k in clusters] + [("all", labels.index)]
    heads = {k: f"cluster {k} (n={len(idx)})" if k != "all" else f"all (n={len(idx)})" for k, idx in groups}
    rows, tidy, varying = {}, [], []
    for col in dict.fromkeys(columns):
        _check_column(frame, col)
        _check_not_subject(col, subject)
        present = frame[[subject, col]].dropna()
        if (present.groupby(subject, observed=True)[col].nunique() > 1).any():
            varying.append(col)
        v = subject_values(frame, subject, col, order_by=order_by, at=at).reindex(labels.index)
        if col not in declared and _is_numeric(v.dropna()):
            x = pd.Series(as_numeric(v, f"column {col!r}"), index=v.index)
            stats = {}
            for k, idx in groups:
                xs = x.loc[idx].dropna()
                mean, sd = (float(xs.mean()), float(xs.std(ddof=1))) if len(xs) else (np.nan, np.nan)
                stats[k] = (mean, sd, len(xs))
                tidy.append({"variable": col, "level": "", "cluster": k, "subjects": int(len(xs)), "mean": mean,
                             "sd": sd, "count": np.nan, "percent": np.nan})
            places = sd_decimals(stats["all"][1])  # one number of decimals per row, from all subjects' SD
            rows[(col, "mean (SD)")] = {heads[k]: _mean_sd_cell(*st, places) for k, st in stats.items()}
        else:
            for value in _order(v.dropna()):
                cells = {}
                for k, idx in groups:
                    vs = v.loc[idx].dropna()
                    n = int((vs == value).sum())
                    pct = 100 * n / len(vs) if len(vs) else np.nan
                    cells[heads[k]] = f"{n} ({one_decimal(pct)} %)" if len(vs) else "0"
                    tidy.append({"variable": col, "level": str(value), "cluster": k, "subjects": int(len(vs)),
                                 "mean": np.nan, "sd": np.nan, "count": n, "percent": pct})
                rows[(col, f"{value}, n (%)")] = cells
        miss = {heads[k]: int(v.loc[idx].isna().sum()) for k, idx in groups}
        if any(miss.values()):
            rows[(col, "missing")] = {h: str(n) for h, n in miss.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(heads.values()))
    table.index = pd.MultiIndex.from_tuples(table.index, names=["variable", "statistic"]) if len(table) else table.index
    tidy = pd.DataFrame(tidy, columns=["variable", "level", "cluster", "subjects", "mean", "sd", "count", "percent"])
    tidy["count"] = tidy["count"].astype("Int64")  # whole numbers, missing on the mean (SD) rows (not 12.0)
    return BaselineTable(table, tidy, at, varying)


# ---------------------------------------------------------------------------- all at once
@dataclass
class OutcomeReport:
    """The outcome tables, survival curves and baseline table of a fit (see :func:`outcome_report`)."""

    tables: list = field(default_factory=list)
    survival: SurvivalByCluster | None = None
    baseline: BaselineTable | None = None

    def __bool__(self) -> bool:
        return bool(self.tables) or self.survival is not None or self.baseline is not None

    def files(self) -> dict[str, pd.DataFrame]:
        """The CSV files of ``dmlmm fit``: outcomes.csv, survival.csv, baseline.csv, outcome_tests.csv."""
        out = {}
        if self.tables:
            out["outcomes.csv"] = pd.concat([t.to_frame() for t in self.tables], ignore_index=True)
        if self.survival is not None:
            out["survival.csv"] = self.survival.to_frame()
        if self.baseline is not None:
            out["baseline.csv"] = self.baseline.tidy
        tests = [{"test": "chi-square", "variables": t.column, "statistic": t.statistic, "dof": t.dof,
                  "p_value": t.p_value, "subjects": t.n_subjects} for t in self.tables]
        if self.survival is not None:
            s = self.survival
            tests.append({"test": "log-rank", "variables": f"{s.duration}, {s.event_label}", "statistic": s.statistic,
                          "dof": s.dof, "p_value": s.p_value, "subjects": s.n_subjects})
        if tests:
            out["outcome_tests.csv"] = pd.DataFrame(tests)
        return out

    def text(self) -> str:
        """The tables as the command line prints them."""
        parts = []
        for t in self.tables:
            missing = f"; {t.n_missing} subject(s) without a value left out" if t.n_missing else ""
            parts.append(f"{t.column} by cluster (each subject's last non-missing value; {t.n_subjects} subjects"
                         f"{missing}):\n{t.formatted().to_string()}\n{t.test_text()}")
        if self.survival is not None:
            s = self.survival
            missing = f"; {s.n_missing} subject(s) without follow-up left out" if s.n_missing else ""
            parts.append(f"survival by cluster ({s.duration}, event: {s.event_label}; {s.n_subjects} subjects"
                         f"{missing}): {s.test_text()}\n{s.formatted().to_string()}")
        if self.baseline is not None:
            b = self.baseline
            vary = f"; {', '.join(b.varying)} vary within subjects" if b.varying else ""
            parts.append(f"characteristics by cluster (each subject's {b.at} non-missing value{vary}):\n"
                         + b.table.to_string())
        return "\n".join(line.rstrip() for line in "\n\n".join(parts).splitlines())


def check_outcome_columns(frame: pd.DataFrame, subject: str, *, order_by: str | None = None,
                          outcomes: Sequence[str] = (), duration: str | None = None, event: str | None = None,
                          event_value=None, baseline: Sequence[str] = ()) -> None:
    """Raise the errors :func:`outcome_report` would raise, before any fitting (DataError / ImportError)."""
    if (duration is None) != (event is None):
        raise DataError("survival by cluster needs both a follow-up time and an event column "
                        "(CLI: --event-time and --event)")
    frame = _gathered(frame, None, subject, order_by, list(outcomes) + [c for c in (duration, event) if c]
                      + list(baseline))
    for c in list(outcomes) + [c for c in (duration, event) if c] + list(baseline):
        _check_column(frame, c)
    for c in baseline:
        _check_not_subject(c, subject)
    for c in outcomes:
        subject_values(frame, subject, c, order_by=order_by, constant=True, role="an outcome")
    if duration is not None:
        require_lifelines()
        _durations(subject_values(frame, subject, duration, order_by=order_by, constant=True,
                                  role="a follow-up time"), duration)
        raw = subject_values(frame, subject, event, order_by=order_by, constant=True, role="an event indicator")
        event_indicator(raw, event, event_value)


def outcome_report(model, frame: pd.DataFrame, *, outcomes: Sequence[str] = (), duration: str | None = None,
                   event: str | None = None, event_value=None, baseline: Sequence[str] = (),
                   subject: str | None = None, order_by: str | None = None, level: str = "cluster",
                   at: str = "first") -> OutcomeReport:
    """:func:`outcome_table` for each of ``outcomes``, :func:`survival_by_cluster` (with ``duration``
    and ``event``) and :func:`baseline_table` of ``baseline`` (if any, each subject's ``at`` value), in one
    :class:`OutcomeReport`."""
    kw = dict(subject=subject, order_by=order_by, level=level)
    if (duration is None) != (event is None):
        raise DataError("survival by cluster needs both a follow-up time and an event column")
    frame = _gathered(frame, model, subject, order_by, list(outcomes) + [c for c in (duration, event) if c]
                      + list(baseline))  # a Dask frame brought here once, for all the tables
    tables = [outcome_table(model, frame, c, **kw) for c in dict.fromkeys(outcomes)]
    surv = (survival_by_cluster(model, frame, duration, event, event_value=event_value, **kw)
            if duration is not None else None)
    base = baseline_table(model, frame, list(baseline), at=at, **kw) if baseline else None
    return OutcomeReport(tables, surv, base)

"""The longitudinal table: validation, ordering by subject and time, selection of subjects and rows.

A :class:`Longitudinal` holds a long table (one row per observation) checked and
sorted by subject, then time, with its covariates coded (:mod:`dmlmm.covariates`).
Its per-subject sufficient statistics come from :mod:`dmlmm.sufficient`.

Duplicate (subject, time) rows are allowed: replicate measurements at the
same time are common and are modelled as independent errors around the same
curve value.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .columns import ColumnNames, as_numeric, check_bool_number_labels, warn_mixed_labels
from .covariates import CovariateEncoding, is_categorical, missing_rows, parse_covariates
from .exceptions import DataError
from .sufficient import SufficientStats, sufficient_stats

__all__ = ["DroppedRows", "RowsDroppedWarning", "Longitudinal", "REPEATED_ROWS", "check_longitudinal_call",
           "without_missing"]

#: The start of the warning for rows that repeat an earlier row's subject, time and response (a regular
#: expression for ``warnings.filterwarnings``: a held-out score's concatenated frames say it once, not twice).
REPEATED_ROWS = r".*repeat an earlier row's subject, time and response"


#: Row labels named per column, and subjects named, in the message of rows dropped for missing values.
ROWS_NAMED, SUBJECTS_NAMED = 5, 10


def _fmt_rows(index: pd.Index, mask: np.ndarray) -> str:
    return _fmt_labels(list(index[mask][:ROWS_NAMED]), int(mask.sum()))


def _fmt_labels(rows: list, count: int) -> str:
    """``rows`` (the first row labels of ``count``) as the messages show them: ``[..] and k more``."""
    more = count - len(rows)
    return f"{rows}" + (f" and {more} more" if more > 0 else "")


@dataclass(frozen=True)
class DroppedRows:
    """Rows dropped for missing or infinite values (``dropna``), as the warning names them.

    Attributes
    ----------
    n_read : rows read;  n_dropped : rows dropped.
    by_column : column -> (rows with a bad value in it, the first :data:`ROWS_NAMED` row labels; none where
        the rows have no labels of their own, e.g. a Dask partition indexed by subject).
    gone : the first :data:`SUBJECTS_NAMED` subjects left with no row;  n_gone : how many in all.
    checked : every column checked, in the order the message names them.
    """

    n_read: int
    n_dropped: int
    by_column: dict[str, tuple[int, list]]
    gone: list
    n_gone: int
    checked: tuple[str, ...] = ()

    @staticmethod
    def from_masks(index: pd.Index, bad_by_col: dict[str, np.ndarray], bad_any: np.ndarray,
                   gone: pd.Index | None = None) -> "DroppedRows":
        """The record of a frame with row labels ``index`` (n,) whose rows ``bad_by_col`` (column -> (n,) bool,
        every column checked) and ``bad_any`` (n,) have missing or infinite values; ``gone``: the subjects left
        with no row (None: not asked, e.g. for the error without ``dropna``)."""
        gone = pd.Index([]) if gone is None else gone
        by_column = {c: (int(m.sum()), list(index[m][:ROWS_NAMED])) for c, m in bad_by_col.items() if m.any()}
        return DroppedRows(len(index), int(bad_any.sum()), by_column, list(gone[:SUBJECTS_NAMED]), len(gone),
                           tuple(bad_by_col))

    def detail(self) -> str:
        """Each column's bad rows: ``column 'c': n (rows [..] and k more)``, joined by ``; ``."""
        return "; ".join(f"column '{c}': {n}" + (f" (rows {_fmt_labels(rows, n)})" if rows else "")
                         for c, (n, rows) in self.by_column.items())

    def message(self) -> str:
        detail = self.detail()
        lost = (f"; {self.n_gone} subject(s) had no other rows and are left out: {self.gone}"
                + (" ..." if self.n_gone > len(self.gone) else "") if self.n_gone else "")
        return f"dropped {self.n_dropped} of {self.n_read} row(s) with missing or infinite values ({detail}){lost}"

    @staticmethod
    def combine(parts: "Sequence[DroppedRows]", n_read: int) -> "DroppedRows":
        """The record of the whole frame from its parts' (each subject's rows in one part), in their order;
        ``n_read``: rows read in all (the parts without dropped rows included)."""
        by_column: dict[str, tuple[int, list]] = {}
        for p in parts:
            for c, (n, rows) in p.by_column.items():
                m, seen = by_column.get(c, (0, []))
                by_column[c] = (m + n, (seen + rows)[:ROWS_NAMED])
        checked = parts[0].checked if parts else ()  # every part checks the same columns
        order = sorted(by_column, key=lambda c: checked.index(c) if c in checked else len(checked))
        by_column = {c: by_column[c] for c in order}
        gone = [g for p in parts for g in p.gone][:SUBJECTS_NAMED]
        return DroppedRows(n_read, sum(p.n_dropped for p in parts), by_column, gone, sum(p.n_gone for p in parts),
                           checked)


class RowsDroppedWarning(UserWarning):
    """The warning of :meth:`Longitudinal.from_frame` with ``dropna``; ``dropped``: its :class:`DroppedRows`
    (the Dask fit gathers the partitions' and warns once, :mod:`dmlmm.distributed`), None for a copy made
    from the message's text."""

    def __init__(self, dropped: DroppedRows | str) -> None:  # a str: the message alone (a warning re-raised by text)
        super().__init__(dropped if isinstance(dropped, str) else dropped.message())
        self.dropped = None if isinstance(dropped, str) else dropped

    def __reduce__(self):  # pickled with its record (warnings recorded in worker processes travel back)
        return type(self), (str(self) if self.dropped is None else self.dropped,)


@dataclass(frozen=True, eq=False)
class Longitudinal:
    """Longitudinal data: repeated measurements of many subjects at their own times.

    Rows are sorted by subject, then time. Build it with :meth:`from_frame` or
    :meth:`from_arrays`.

    Attributes
    ----------
    subjects : pandas.Index, shape (N,)
        The user's subject labels, in the sorted order used everywhere.
    codes : ndarray of int, shape (n,)
        Subject position (into ``subjects``) of each row; non-decreasing.
    time : ndarray, shape (n,)
    response : ndarray, shape (n,), or None for a frame without responses (prediction).
    covariates : ndarray, shape (n, P)
        Coded covariates (:class:`~dmlmm.covariates.CovariateEncoding`).
    encoding : CovariateEncoding
    design : ndarray, shape (n, D), or None
        A user-given random-effects design (array form); None when a basis is used.
    columns : ColumnNames
    row_index : pandas.Index, shape (n,)
        The original frame's index label of each (sorted) row.
    """

    subjects: pd.Index
    codes: np.ndarray
    time: np.ndarray
    response: np.ndarray | None
    covariates: np.ndarray
    encoding: CovariateEncoding
    design: np.ndarray | None
    columns: ColumnNames
    row_index: pd.Index

    # ---------------------------------------------------------------- basic facts
    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_obs(self) -> int:
        return len(self.codes)

    @property
    def counts(self) -> np.ndarray:
        """Observations per subject, shape (N,)."""
        return np.bincount(self.codes, minlength=self.n_subjects)

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets of the subjects' segments, shape (N + 1,)."""
        return np.r_[0, np.cumsum(self.counts)]

    @property
    def covariate_names(self) -> tuple[str, ...]:
        return self.encoding.names

    def __repr__(self) -> str:
        c = self.counts
        span = (float(self.time.min()), float(self.time.max())) if self.n_obs else (np.nan, np.nan)
        return (
            f"Longitudinal({self.n_subjects} subjects, {self.n_obs} observations, "
            f"{c.min() if len(c) else 0}-{c.max() if len(c) else 0} per subject, "
            f"time {span[0]:g}..{span[1]:g}, covariates {list(self.covariate_names)})"
        )

    # ---------------------------------------------------------------- constructors
    @classmethod
    def from_frame(
        cls,
        df: pd.DataFrame,
        subject: str = "subject",
        time: str = "time",
        response: str | None = "y",
        covariates: Sequence[str] | str | None = None,
        *,
        dropna: bool = False,
        encoding: CovariateEncoding | None = None,
        require_response: bool = True,
        action: str = "fit",
    ) -> "Longitudinal":
        """Validate and order a long-format frame (one row per observation).

        Parameters
        ----------
        df : pandas.DataFrame
        subject, time, response : str
            Column names. ``response`` may be absent when ``require_response`` is False
            (frames of new times to predict at); then missing responses are allowed too
            (rows that only say when, and with which covariates, to predict).
        covariates : list of str or str, optional
            Fixed-effect covariates: a list of columns (non-numeric ones are dummy coded), or the
            right-hand side of a formula such as ``"diet * age"`` (:mod:`dmlmm.covariates`).
        dropna : bool
            Drop rows with missing / infinite values (with a warning that counts them)
            instead of raising.
        encoding : CovariateEncoding, optional
            Re-use a fitted model's covariate encoding (for prediction frames).
        action : str
            What the frame is for, in the messages: ``"fit"`` (they suggest ``dropna=True``), or e.g.
            ``"predict or score"`` for a fitted model's methods, which have no ``dropna``.
        """
        if not isinstance(df, pd.DataFrame):
            kind = f"{type(df).__module__.split('.')[0]}.{type(df).__name__}"
            hint = (": this method works on pandas frames; compute() it, or a subset of its subjects, first"
                    if kind.startswith("dask.") else "")
            raise DataError(f"expected a pandas DataFrame, got {kind}{hint}")
        if encoding is not None:
            formula, cov_cols = encoding.formula, list(encoding.columns)
        else:
            formula, cov_cols = parse_covariates(covariates, list(df.columns))
        if len(df) == 0:
            raise DataError(f"the data frame is empty (0 rows): there is nothing to {action}")
        has_response = response is not None and response in df.columns
        own = [c for c in cov_cols if not (formula is not None and c == time)]  # a formula may use the time column
        needed = [subject, time] + ([response] if require_response else []) + own
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DataError(
                f"column(s) {missing} not found in the data; the columns are: {list(df.columns)}"
            )
        dup = [c for c in set(needed) if needed.count(c) > 1]
        if dup:
            raise DataError(f"column(s) {dup} used for more than one role (subject/time/response/covariate)")

        num_cols = [time] + ([response] if has_response else [])
        numeric: dict[str, np.ndarray] = {}
        for c in num_cols:
            numeric[c] = as_numeric(df[c], f"column '{c}'")

        categorical = encoding.categorical if encoding is not None else {c: is_categorical(df[c]) for c in own}
        bad_by_col = {c: ~np.isfinite(v) for c, v in numeric.items()}
        if has_response and not require_response:  # a missing response marks a row to predict at, not a bad row
            bad_by_col[response] = np.isinf(numeric[response])
        bad_by_col[subject] = df[subject].isna().to_numpy()
        bad_by_col.update(missing_rows(df, categorical))
        bad_any = np.zeros(len(df), dtype=bool)
        for m in bad_by_col.values():
            bad_any |= m
        if bad_any.any():
            keep = ~bad_any
            if not dropna:
                fix = ("Pass dropna=True (CLI: --dropna) to drop them, or impute them first" if action == "fit"
                       else "Drop or impute those rows first (dmlmm predict: --dropna drops them)")
                detail = DroppedRows.from_masks(df.index, bad_by_col, bad_any).detail()
                raise DataError(f"{int(bad_any.sum())} row(s) have missing or infinite values: {detail}. {fix}")
            gone = pd.Index(df[subject][~keep].dropna().unique()).difference(df[subject][keep].unique())
            warnings.warn(RowsDroppedWarning(DroppedRows.from_masks(df.index, bad_by_col, bad_any, gone)), stacklevel=2)
            df = df.loc[keep]
            numeric = {c: v[keep] for c, v in numeric.items()}
            if len(df) == 0:
                raise DataError("no rows are left after dropping rows with missing values")
        if encoding is None:
            encoding = CovariateEncoding.learn(df, formula if formula is not None else cov_cols, time=time,
                                               categorical=categorical)
        cov = encoding.encode(df)
        bad_cov = ~np.isfinite(cov)
        if bad_cov.any():
            cols = [n for n, b in zip(encoding.names, bad_cov.any(axis=0)) if b]
            rows = bad_cov.any(axis=1)
            raise DataError(
                f"the covariates {encoding.formula!r} give missing or infinite values in column(s) {cols} "
                f"(rows {_fmt_rows(df.index, rows)}): check the formula's transforms against the data"
            )

        if has_response:  # also where predictions condition on the observed rows (a missing response: none)
            same = df[[subject, time, response]].duplicated() & np.isfinite(numeric[response])
            if same.any():  # replicates are allowed; a row entered twice is more likely
                warnings.warn(
                    f"{int(same.sum())} row(s) repeat an earlier row's subject, time and response exactly (rows "
                    f"{_fmt_rows(df.index, same.to_numpy())}): each counts as one more measurement; drop them if "
                    "they were entered twice (pandas: df.drop_duplicates())",
                    UserWarning,
                    stacklevel=2,
                )
        check_bool_number_labels(df[subject], subject)
        try:
            codes, labels = pd.factorize(df[subject], sort=True)
        except TypeError:  # unorderable mixed labels: keep order of appearance
            codes, labels = pd.factorize(df[subject], sort=False)
        warn_mixed_labels(pd.Index(labels), subject, stacklevel=4)
        t = numeric[time]
        order = np.lexsort((t, codes))
        return cls(
            subjects=pd.Index(labels, name=subject),
            codes=codes[order].astype(np.intp),
            time=t[order],
            response=numeric[response][order] if has_response else None,
            covariates=cov[order],
            encoding=encoding,
            design=None,
            columns=ColumnNames(subject, time, response if response is not None else "y"),
            row_index=df.index[order],
        )

    @classmethod
    def from_arrays(
        cls,
        y: Sequence,
        x: Sequence,
        *,
        times: Sequence | None = None,
        subjects: Sequence | None = None,
        covariates: Sequence | None = None,
    ) -> "Longitudinal":
        """Data in the research code's form: per-subject responses and design matrices.

        Parameters
        ----------
        y : sequence of N arrays, shape (n_i,)
        x : sequence of N arrays, shape (n_i, D)
            Per-subject random-effects designs (e.g. B-spline values at the subject's times).
        times : sequence of N arrays (n_i,), optional
            Observation times; default ``0..n_i-1`` within each subject.
        subjects : sequence of N labels, optional (default ``0..N-1``).
        covariates : sequence of N arrays (n_i, P), optional
            Fixed-effect covariates.

        Arrays may be numpy arrays, lists or CPU torch tensors.
        """
        y_list = [np.asarray(v, dtype=float).reshape(-1) for v in y]
        x_list = [np.asarray(v, dtype=float) for v in x]
        n_sub = len(y_list)
        if n_sub == 0:
            raise DataError("no subjects given (y is empty)")
        if len(x_list) != n_sub:
            raise DataError(f"y has {n_sub} subjects but x has {len(x_list)} design matrices")
        x_list = [v[:, None] if v.ndim == 1 else v for v in x_list]
        dims = {v.shape[1] for v in x_list}
        if len(dims) != 1:
            raise DataError(f"the design matrices have different numbers of columns: {sorted(dims)}")
        for i, (yi, xi) in enumerate(zip(y_list, x_list)):
            if xi.shape[0] != yi.shape[0]:
                raise DataError(f"subject {i}: y has {yi.shape[0]} values but x has {xi.shape[0]} rows")
            if yi.shape[0] == 0:
                raise DataError(f"subject {i} has no observations")
        counts = np.array([len(v) for v in y_list])
        yy = np.concatenate(y_list)
        xx = np.concatenate(x_list, axis=0)
        codes = np.repeat(np.arange(n_sub), counts)
        for name, arr in (("y", yy), ("x", xx)):
            bad = ~np.isfinite(arr)
            if bad.any():
                rows = np.flatnonzero(bad.reshape(len(arr), -1).any(axis=1))
                subj = sorted(set(codes[rows].tolist()))[:5]
                raise DataError(f"{name} has {int(bad.sum())} missing or infinite value(s), in subject(s) {subj}")
        if times is None:
            t = (np.arange(len(yy)) - np.repeat(np.r_[0, np.cumsum(counts)[:-1]], counts)).astype(float)
        else:
            t_list = [np.asarray(v, dtype=float).reshape(-1) for v in times]
            if [len(v) for v in t_list] != counts.tolist():
                raise DataError("times must have one value per observation of each subject")
            t = np.concatenate(t_list)
        if covariates is None:
            cov = np.zeros((len(yy), 0))
            enc = CovariateEncoding()
        else:
            cov = np.concatenate([np.asarray(v, dtype=float).reshape(len(yi), -1) for v, yi in zip(covariates, y_list)])
            enc = CovariateEncoding.numeric([f"x{j}" for j in range(cov.shape[1])])
        labels = pd.Index(list(range(n_sub)) if subjects is None else list(subjects), name="subject")
        if labels.has_duplicates:
            raise DataError("subject labels must be unique")
        return cls(labels, codes.astype(np.intp), t, yy, cov, enc, xx, ColumnNames(), pd.RangeIndex(len(yy)))

    # ---------------------------------------------------------------- derived
    def stats(self, X: np.ndarray, F: np.ndarray | None = None, y: np.ndarray | None = None) -> SufficientStats:
        """Sufficient statistics for designs ``X`` (n, D), ``F`` (n, P) and response ``y``."""
        y = self.response if y is None else y
        if y is None:
            raise DataError("this data has no response column")
        return sufficient_stats(y, X, F, self.codes, self.n_subjects)

    def select(self, subjects: Sequence) -> "Longitudinal":
        """The rows of the given subjects (by label), in this object's order."""
        pos = self.subjects.get_indexer(pd.Index(subjects))
        if (pos < 0).any():
            unknown = list(pd.Index(subjects)[pos < 0][:5])
            raise DataError(f"unknown subject(s) {unknown}")
        pos = np.sort(pos)
        return self._take_subjects(pos)

    def _take_subjects(self, pos: np.ndarray) -> "Longitudinal":
        keep = np.isin(self.codes, pos)
        remap = np.full(self.n_subjects, -1)
        remap[pos] = np.arange(len(pos))
        return Longitudinal(
            subjects=self.subjects[pos],
            codes=remap[self.codes[keep]],
            time=self.time[keep],
            response=None if self.response is None else self.response[keep],
            covariates=self.covariates[keep],
            encoding=self.encoding,
            design=None if self.design is None else self.design[keep],
            columns=self.columns,
            row_index=self.row_index[keep],
        )

    def take_rows(self, mask: np.ndarray) -> "Longitudinal":
        """Keep rows where ``mask`` is True (subjects left without rows are dropped)."""
        mask = np.asarray(mask, dtype=bool)
        codes = self.codes[mask]
        present, new_codes = np.unique(codes, return_inverse=True)
        return Longitudinal(
            subjects=self.subjects[present],
            codes=new_codes.astype(np.intp),
            time=self.time[mask],
            response=None if self.response is None else self.response[mask],
            covariates=self.covariates[mask],
            encoding=self.encoding,
            design=None if self.design is None else self.design[mask],
            columns=self.columns,
            row_index=self.row_index[mask],
        )

    def without_response(self) -> "Longitudinal":
        """The same rows with no response: times and covariates to predict at, nothing to condition on."""
        return replace(self, response=None)

    def to_frame(self) -> pd.DataFrame:
        """Long frame with the user's column names (covariates as encoded columns)."""
        out = {
            self.columns.subject: self.subjects[self.codes],
            self.columns.time: self.time,
        }
        if self.response is not None:
            out[self.columns.response] = self.response
        for j, name in enumerate(self.covariate_names):
            out[name] = self.covariates[:, j]
        return pd.DataFrame(out)


def without_missing(df: pd.DataFrame, subject: str, time: str, response: str | None, covariates=None,
                    stacklevel: int = 2) -> pd.DataFrame:
    """The rows of ``df`` that a fit with ``dropna=True`` keeps, in their order, with its warning naming the
    others (``stacklevel`` as seen from the caller); ``df`` itself when none is dropped. For functions that fit
    several times (``select_model``, ``check_bands``): the rows are dropped and said once."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Longitudinal.from_frame(df, subject, time, response, covariates, dropna=True)
    dropped = [w for w in caught if str(w.message).startswith("dropped ")]
    for w in dropped:
        warnings.warn(str(w.message), w.category, stacklevel=stacklevel + 1)
    if not dropped:
        return df
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        at = Longitudinal.from_frame(df.reset_index(drop=True), subject, time, response, covariates,
                                     dropna=True).row_index
    return df.iloc[np.sort(np.asarray(at))]


def check_longitudinal_call(long: Longitudinal, subject: str, time: str, response: str, covariates=None) -> None:
    """A ValueError where a fit is given a :class:`Longitudinal` with column names that are neither the defaults
    nor its own, or with ``covariates``: a Longitudinal carries its columns and covariates, and the arguments
    would otherwise be ignored without a word."""
    if covariates is not None:
        raise ValueError("covariates= is for data frames: a Longitudinal carries its covariates (build it with "
                         "Longitudinal.from_frame(..., covariates=...))")
    default, own = ColumnNames(), long.columns
    given = {"subject": subject, "time": time, "response": response}
    odd = [f"{role}={name!r}" for role, name in given.items()
           if name != getattr(default, role) and name != getattr(own, role)]
    if odd:
        raise ValueError(
            f"{', '.join(odd)} given with a Longitudinal, whose columns are subject={own.subject!r}, "
            f"time={own.time!r}, response={own.response!r}: a Longitudinal carries its own column names; leave "
            f"these arguments out, or build it with Longitudinal.from_frame(..., {', '.join(odd)})")

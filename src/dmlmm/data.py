"""The longitudinal data layer: validation, ordering and per-subject sufficient statistics.

Every model in dmlmm works from per-subject sufficient statistics
(``X_i'X_i``, ``X_i'y_i``, ``y_i'y_i``, ``n_i`` and the fixed-effect cross
terms), so the cost of a fitting step does not depend on how many times a
subject was measured. They are computed here with vectorised segment sums
over rows sorted by subject, never with a Python loop over subjects.

Duplicate (subject, time) rows are allowed: replicate measurements at the
same time are common and are modelled as independent errors around the same
curve value.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from .exceptions import DataError

__all__ = ["Longitudinal", "SufficientStats", "as_numeric", "segment_sums", "sufficient_stats"]

_CHUNK_ELEMENTS = 1 << 22  # doubles per chunk of row outer products (32 MB), whatever the design's width


# --------------------------------------------------------------------------- validation


def as_numeric(values, name: str) -> np.ndarray:
    """Float array of ``values`` (NaN kept), or a DataError naming ``name`` and the first non-numeric row.

    Parameters
    ----------
    values : Series or array-like, shape (n,)
        A Series keeps its index, so the message names the user's row label.
    name : str
        How the message refers to the values, e.g. ``"column 'y'"``.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(float)
    conv = pd.to_numeric(s, errors="coerce")
    bad = conv.isna().to_numpy() & s.notna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{name} must be numeric, but row {s.index[first]!r} holds {s.iloc[first]!r} "
            f"({int(bad.sum())} non-numeric value(s) in all); convert or drop those rows"
        )
    return conv.to_numpy(dtype=float, na_value=np.nan)


# --------------------------------------------------------------------------- statistics


def segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum consecutive row segments of ``values``.

    Parameters
    ----------
    values : ndarray, shape (n, ...)
        Rows sorted by segment.
    offsets : ndarray of int, shape (N + 1,)
        Segment ``s`` is rows ``offsets[s]:offsets[s + 1]``; every segment is non-empty.

    Returns
    -------
    ndarray, shape (N, ...)
    """
    values = np.asarray(values, dtype=float)
    n_seg = len(offsets) - 1
    if n_seg == 0:
        return np.zeros((0,) + values.shape[1:])
    return np.add.reduceat(values, offsets[:-1], axis=0)


def _segment_outer_sums(a: np.ndarray, b: np.ndarray, codes: np.ndarray, n_seg: int) -> np.ndarray:
    """Per-segment sums of row outer products ``a_r b_r'``, in row chunks to bound memory.

    Each chunk holds about ``_CHUNK_ELEMENTS`` doubles of outer products (rows scaled by
    ``p * q``): 32 MB at 10 or at 40 basis functions (a fixed 32,768 rows made 420 MB at 40).

    Parameters
    ----------
    a : (n, p), b : (n, q), codes : (n,) sorted segment index per row.

    Returns
    -------
    ndarray, shape (n_seg, p, q)
    """
    n, p = a.shape
    q = b.shape[1]
    out = np.zeros((n_seg, p, q))
    rows = max(1, _CHUNK_ELEMENTS // max(p * q, 1))
    for start in range(0, n, rows):  # loop over memory chunks of rows, not subjects
        stop = min(start + rows, n)
        c = codes[start:stop]
        prod = a[start:stop, :, None] * b[start:stop, None, :]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        out[c[starts]] += np.add.reduceat(prod, starts, axis=0)
    return out


@dataclass(frozen=True)
class SufficientStats:
    """Per-subject sufficient statistics of ``y_i = F_i w + X_i b_i + e_i``.

    Attributes
    ----------
    n_obs : (N,) number of observations per subject.
    yty : (N,) ``y_i'y_i``.
    Xty : (N, D) ``X_i'y_i``.
    XtX : (N, D, D) ``X_i'X_i``.
    Fty : (N, P) ``F_i'y_i``.
    FtF : (N, P, P) ``F_i'F_i``.
    XtF : (N, D, P) ``X_i'F_i``.
    membership : (N, Q) or None
        Baseline covariates of class membership (first column the intercept), if the
        model has a membership model.
    """

    n_obs: np.ndarray
    yty: np.ndarray
    Xty: np.ndarray
    XtX: np.ndarray
    Fty: np.ndarray
    FtF: np.ndarray
    XtF: np.ndarray
    membership: np.ndarray | None = None

    @property
    def n_subjects(self) -> int:
        return int(self.n_obs.shape[0])

    @property
    def dim_random(self) -> int:
        return int(self.XtX.shape[-1])

    @property
    def dim_fixed(self) -> int:
        return int(self.FtF.shape[-1])

    def subset(self, index: np.ndarray) -> "SufficientStats":
        """Statistics of the subjects at positions ``index``."""
        return SufficientStats(*(None if (v := getattr(self, f)) is None else v[index] for f in self.__dataclass_fields__))

    def total(self) -> "SufficientStats":
        """The statistics summed over the subjects (one row; the membership covariates dropped)."""
        return SufficientStats(*(getattr(self, f).sum(0, keepdims=True) for f in self.__dataclass_fields__
                                 if f != "membership"))

    def with_membership(self, Z: np.ndarray | None) -> "SufficientStats":
        """The same statistics with the membership covariates ``Z`` (N, Q) attached."""
        return replace(self, membership=None if Z is None else np.asarray(Z, dtype=float))


def sufficient_stats(
    y: np.ndarray,
    X: np.ndarray,
    F: np.ndarray | None,
    codes: np.ndarray,
    n_subjects: int,
) -> SufficientStats:
    """Per-subject sufficient statistics by vectorised segment sums.

    Parameters
    ----------
    y : (n,) responses, rows sorted by subject.
    X : (n, D) random-effects design.
    F : (n, P) fixed-effects design, or None for no fixed effects (P = 0).
    codes : (n,) sorted subject index of each row, values in ``0..n_subjects-1``,
        every subject present at least once.
    n_subjects : int

    Returns
    -------
    SufficientStats
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    F = np.zeros((len(y), 0)) if F is None else np.asarray(F, dtype=float)
    y2 = y[:, None]
    n_obs = np.bincount(codes, minlength=n_subjects)
    return SufficientStats(
        n_obs=n_obs,
        yty=np.bincount(codes, weights=y * y, minlength=n_subjects),
        Xty=_segment_outer_sums(X, y2, codes, n_subjects)[..., 0],
        XtX=_segment_outer_sums(X, X, codes, n_subjects),
        Fty=_segment_outer_sums(F, y2, codes, n_subjects)[..., 0],
        FtF=_segment_outer_sums(F, F, codes, n_subjects),
        XtF=_segment_outer_sums(X, F, codes, n_subjects),
    )


# --------------------------------------------------------------------------- the data object


@dataclass(frozen=True)
class ColumnNames:
    """The user's names for the subject, time and response columns."""

    subject: str = "subject"
    time: str = "time"
    response: str = "y"


@dataclass(frozen=True)
class CovariateEncoding:
    """How covariate columns become numeric fixed-effect columns.

    ``levels[c]`` is None for a numeric column, else the list of its categories
    (the first is the reference level and gets no column).
    """

    columns: tuple[str, ...] = ()
    levels: dict = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        out: list[str] = []
        for c in self.columns:
            lv = self.levels.get(c)
            if lv is None:
                out.append(c)
            else:
                out.extend(f"{c}[T.{v}]" for v in lv[1:])
        return tuple(out)

    @classmethod
    def learn(cls, df: pd.DataFrame, columns: Sequence[str]) -> "CovariateEncoding":
        levels: dict = {}
        for c in columns:
            s = df[c]
            numeric_text = (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)) and \
                s.notna().any() and pd.to_numeric(s.dropna(), errors="coerce").notna().all()  # "1.5" as the response
            if not numeric_text and (pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s)):
                cats = pd.unique(s.dropna())
                try:
                    cats = sorted(cats)
                except TypeError:
                    cats = list(cats)
                if len(cats) < 2:
                    raise DataError(
                        f"covariate column '{c}' is non-numeric with a single level ({cats!r}); "
                        "it carries no information: remove it from the covariates"
                    )
                levels[c] = [v.item() if isinstance(v, np.generic) else v for v in cats]
            else:
                levels[c] = None
        return cls(tuple(columns), levels)

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        """Numeric (n, P) matrix for ``df``; unknown category levels are an error."""
        cols = []
        for c in self.columns:
            lv = self.levels.get(c)
            s = df[c]
            if lv is None:
                cols.append(as_numeric(s, f"covariate column '{c}'")[:, None])
            else:
                unknown = set(pd.unique(s.dropna())) - set(lv)
                if unknown:
                    raise DataError(
                        f"covariate '{c}' has level(s) {sorted(map(str, unknown))} not seen when the "
                        f"model was fitted (known levels: {lv})"
                    )
                cols.append(np.stack([(s == v).to_numpy(dtype=float) for v in lv[1:]], axis=1))
        if not cols:
            return np.zeros((len(df), 0))
        return np.concatenate(cols, axis=1)

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "levels": {k: v for k, v in self.levels.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "CovariateEncoding":
        return cls(tuple(d["columns"]), dict(d["levels"]))


def _fmt_rows(index: pd.Index, mask: np.ndarray, limit: int = 5) -> str:
    rows = list(index[mask][:limit])
    more = int(mask.sum()) - len(rows)
    return f"{rows}" + (f" and {more} more" if more > 0 else "")


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
        Encoded covariates (numeric columns as they are, categorical ones as dummies).
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
    ) -> "Longitudinal":
        """Validate and order a long-format frame (one row per observation).

        Parameters
        ----------
        df : pandas.DataFrame
        subject, time, response : str
            Column names. ``response`` may be absent when ``require_response`` is False
            (frames of new times to predict at); then missing responses are allowed too
            (rows that only say when, and with which covariates, to predict).
        covariates : list of str, optional
            Fixed-effect covariate columns; non-numeric ones are dummy coded.
        dropna : bool
            Drop rows with missing / infinite values (with a warning that counts them)
            instead of raising.
        encoding : CovariateEncoding, optional
            Re-use a fitted model's covariate encoding (for prediction frames).
        """
        if not isinstance(df, pd.DataFrame):
            raise DataError(f"expected a pandas DataFrame, got {type(df).__name__}")
        if isinstance(covariates, str):
            covariates = [covariates]
        covariates = list(encoding.columns if encoding is not None else (covariates or []))
        if len(df) == 0:
            raise DataError("the data frame is empty (0 rows): there is nothing to fit")
        has_response = response is not None and response in df.columns
        needed = [subject, time] + ([response] if require_response else []) + covariates
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

        if encoding is None:
            encoding = CovariateEncoding.learn(df, covariates)
        cov_numeric_bad = {}
        for c in covariates:
            if encoding.levels.get(c) is None:
                cov_numeric_bad[c] = ~np.isfinite(as_numeric(df[c], f"covariate column '{c}'"))
            else:
                cov_numeric_bad[c] = df[c].isna().to_numpy()

        bad_by_col = {c: ~np.isfinite(v) for c, v in numeric.items()}
        if has_response and not require_response:  # a missing response marks a row to predict at, not a bad row
            bad_by_col[response] = np.isinf(numeric[response])
        bad_by_col[subject] = df[subject].isna().to_numpy()
        bad_by_col.update(cov_numeric_bad)
        bad_any = np.zeros(len(df), dtype=bool)
        for m in bad_by_col.values():
            bad_any |= m
        if bad_any.any():
            detail = "; ".join(
                f"column '{c}': {int(m.sum())} (rows {_fmt_rows(df.index, m)})"
                for c, m in bad_by_col.items()
                if m.any()
            )
            if not dropna:
                raise DataError(
                    f"{int(bad_any.sum())} row(s) have missing or infinite values: {detail}. "
                    "Pass dropna=True (CLI: --dropna) to drop them, or impute them first"
                )
            warnings.warn(
                f"dropped {int(bad_any.sum())} of {len(df)} row(s) with missing or infinite values ({detail})",
                UserWarning,
                stacklevel=2,
            )
            keep = ~bad_any
            df = df.loc[keep]
            numeric = {c: v[keep] for c, v in numeric.items()}
            if len(df) == 0:
                raise DataError("no rows are left after dropping rows with missing values")

        try:
            codes, labels = pd.factorize(df[subject], sort=True)
        except TypeError:  # unorderable mixed labels: keep order of appearance
            codes, labels = pd.factorize(df[subject], sort=False)
        t = numeric[time]
        order = np.lexsort((t, codes))
        cov = encoding.encode(df).astype(float)
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
            enc = CovariateEncoding(tuple(f"x{j}" for j in range(cov.shape[1])), {f"x{j}": None for j in range(cov.shape[1])})
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

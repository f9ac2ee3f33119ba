"""Baseline covariates of class membership: one row per subject, coded and standardised.

A fitted :class:`MembershipDesign` remembers the coding (categorical levels) and the
standardisation, so that new subjects' covariates give the same columns, and maps the
coefficients back to the user's scale for the summary.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..covariates import CovariateEncoding
from ..exceptions import DataError

__all__ = ["MembershipDesign", "without_unknown_baseline", "baseline_rows", "complete_rows", "unknown_baseline",
           "unknown_baseline_message", "no_subject_left", "check_roles", "check_present"]


@dataclass
class MembershipDesign:
    """Coding of the membership covariates.

    Attributes
    ----------
    encoding : CovariateEncoding of the columns.
    mean, scale : (Q - 1,) standardisation of the coded columns.
    """

    encoding: CovariateEncoding
    mean: np.ndarray
    scale: np.ndarray

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the Q columns of Z: the intercept, then the coded covariates."""
        return ("(Intercept)",) + self.encoding.names

    @classmethod
    def learn(
        cls, frame: pd.DataFrame, subject: str, columns: Sequence[str], subjects: pd.Index
    ) -> tuple["MembershipDesign", np.ndarray]:
        """The design and Z (N, Q) of the fitted subjects (in the order of ``subjects``)."""
        return cls.learn_rows(_per_subject(frame, subject, list(columns), subjects), columns)

    @classmethod
    def learn_rows(cls, rows: pd.DataFrame, columns: Sequence[str]) -> tuple["MembershipDesign", np.ndarray]:
        """The design and Z (N, Q) from the subjects' baseline values ``rows`` (one complete row per subject,
        :func:`baseline_rows` of every subject put together; a Dask fit gathers them from its partitions)."""
        enc = CovariateEncoding.learn(rows, list(columns))
        coded = enc.encode(rows)
        mean, scale = coded.mean(axis=0), coded.std(axis=0)
        flat = [n for n, s in zip(enc.names, scale) if s <= 1e-12]
        if flat:
            raise DataError(
                f"membership covariate(s) {flat} take the same value for every subject; they cannot "
                "explain who falls in which class: remove them from membership_covariates"
            )
        design = cls(enc, mean, scale)
        return design, design._standardise(coded)

    def matrix(self, frame: pd.DataFrame, subject: str, subjects: pd.Index) -> np.ndarray:
        """Z (N, Q) of ``subjects`` from ``frame`` (same coding as at fit)."""
        rows = _per_subject(frame, subject, list(self.encoding.columns), subjects)
        return self._standardise(self.encoding.encode(rows))

    def _standardise(self, coded: np.ndarray) -> np.ndarray:
        return np.hstack([np.ones((coded.shape[0], 1)), (coded - self.mean) / self.scale])

    def to_user_scale(self) -> np.ndarray:
        """T (Q, Q) with gamma_user = T gamma_std (intercept at covariates 0, slopes per unit)."""
        Q = len(self.mean) + 1
        T = np.eye(Q)
        T[0, 1:] = -self.mean / self.scale
        T[1:, 1:] = np.diag(1.0 / self.scale)
        return T

    def to_dict(self) -> dict:
        return {"encoding": self.encoding.to_dict(), "mean": self.mean.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "MembershipDesign":
        return cls(CovariateEncoding.from_dict(d["encoding"]), np.asarray(d["mean"], float), np.asarray(d["scale"], float))


def without_unknown_baseline(frame: pd.DataFrame, subject: str, columns: Sequence[str] | None,
                             stacklevel: int = 2) -> pd.DataFrame:
    """The rows of ``frame`` less those of subjects whose membership covariates are missing at every visit,
    with a warning naming them (``stacklevel`` as seen from the caller); ``frame`` itself when none is dropped.

    For ``dropna=True``: a value missing at some visits is the subject's value at the others (one per subject),
    so only subjects without any value are left out. Columns not in ``frame`` are left to the fit's error.
    """
    cols = [c for c in (columns or ()) if c in frame.columns]
    if not cols or subject not in frame.columns:
        return frame
    known = frame[cols].notna().groupby(frame[subject], sort=False, observed=True).any()  # (subjects, columns)
    unknown, absent = unknown_baseline(known)
    if not unknown.any():
        return frame
    gone = known.index[unknown]
    drop = frame[subject].isin(gone).to_numpy()
    if drop.all():
        raise no_subject_left(absent)
    warnings.warn(unknown_baseline_message(gone, int(drop.sum()), absent), UserWarning, stacklevel=stacklevel + 1)
    return frame.loc[~drop]


def unknown_baseline(known: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """From ``known`` (subjects x covariates: whether the subject has a value), the subjects without a value of
    some covariate (a boolean mask) and the covariates they lack."""
    unknown = ~known.all(axis=1).to_numpy()
    return unknown, [c for c in known.columns if not known.loc[unknown, c].all()]


def no_subject_left(absent: Sequence[str]) -> DataError:
    """The error when every subject's membership covariates ``absent`` are missing at every visit."""
    return DataError(f"every subject's membership covariate(s) {list(absent)} are missing at every visit: no subject "
                     "is left to fit; give the subjects' baseline values or leave membership_covariates out")


def unknown_baseline_message(gone: pd.Index, n_rows: int, absent: Sequence[str]) -> str:
    """The warning that the subjects ``gone`` (and their ``n_rows`` rows) were dropped, their membership covariates
    ``absent`` missing at every visit (``dropna=True``)."""
    return (f"dropped {len(gone)} subject(s) ({n_rows} row(s)) whose membership covariate(s) {list(absent)} are "
            f"missing at every visit: {[_label(s) for s in gone[:10]]}{' ...' if len(gone) > 10 else ''}")


def check_present(columns: Sequence[str], present: Sequence[str], shown: Sequence[str]) -> None:
    """A DataError naming the membership covariates among ``columns`` that are not in ``present`` (the data's
    columns, and a Dask frame's index name); ``shown``: the columns the message lists."""
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"membership covariate column(s) {missing} not found in the data (columns: {list(shown)})")


def check_roles(columns: Sequence[str], roles: dict[str, str]) -> None:
    """A ValueError when a membership covariate is the subject, time or response column (``roles``: column -> role)."""
    clash = [f"{c!r} (the {roles[c]} column)" for c in columns if c in roles]
    if clash:
        raise ValueError(f"membership_covariates cannot include {', '.join(clash)}: membership depends on "
                         "baseline characteristics, one value per subject (e.g. age at entry, sex)")


def _per_subject(frame: pd.DataFrame, subject: str, columns: list[str], subjects: pd.Index) -> pd.DataFrame:
    """One row per subject of ``columns`` (baseline values), checked constant within subject and complete."""
    return complete_rows(baseline_rows(frame, subject, columns), subjects)


def baseline_rows(frame: pd.DataFrame, subject: str, columns: list[str]) -> pd.DataFrame:
    """The baseline values of ``columns`` of every subject in ``frame`` (index: subject, in order of appearance):
    each column's non-missing value (NaN where a subject has none), checked constant within subject."""
    if not isinstance(frame, pd.DataFrame):
        raise DataError(
            "membership covariates are read from a DataFrame with one column per covariate; "
            f"got {type(frame).__name__}"
        )
    check_present(columns, list(frame.columns), list(frame.columns))
    sub = frame[[subject] + columns]
    # a value missing at some visits is the subject's value at the others (one per subject); two values vary
    varying = sub.groupby(subject, sort=False, observed=True)[columns].nunique(dropna=True) > 1  # (subjects, columns)
    if varying.to_numpy().any():
        col = varying.columns[varying.any(axis=0).to_numpy()][0]
        who = varying.index[varying[col].to_numpy()]
        raise DataError(
            f"membership covariate '{col}' changes within subject {_label(who[0])!r} ({len(who)} subject(s) in all): "
            "class membership is modelled from baseline values, one per subject; use the baseline value "
            "(e.g. the first visit's) in every row"
        )
    return sub.groupby(subject, sort=False, observed=True)[columns].first()  # each column's non-missing value


def complete_rows(rows: pd.DataFrame, subjects: pd.Index) -> pd.DataFrame:
    """``rows`` (:func:`baseline_rows`) of ``subjects``, in their order and indexed 0 .. N - 1; an error naming the
    subjects with a missing value."""
    columns = list(rows.columns)
    rows = rows.reindex(subjects)
    na = rows.isna().any(axis=1).to_numpy()
    if na.any():
        cols = [c for c in columns if rows[c].isna().any()]
        raise DataError(
            f"membership covariate(s) {cols} are missing for subject(s) {[_label(s) for s in subjects[na][:5]]}"
            f"{' and more' if na.sum() > 5 else ''}: give each subject its baseline values, or drop those subjects"
        )
    return rows.reset_index(drop=True)


def _label(v):
    """A subject label as the user wrote it (numpy scalars as plain Python values)."""
    return v.item() if isinstance(v, np.generic) else v

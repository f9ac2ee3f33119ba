"""The user-facing linear mixed model: ``LinearMixedModel``.

``fit`` is four steps, each in its own module:

1. build designs (:mod:`~dmlmm.lmm.formula`, :mod:`~dmlmm.lmm.design`) and check them;
2. standardise the response (:mod:`~dmlmm.lmm.scaling`) and compute per-subject
   sufficient statistics (:func:`dmlmm.sufficient.sufficient_stats`);
3. run the estimator for ``method`` (:mod:`~dmlmm.lmm.estimators`, numerics in
   :mod:`~dmlmm.lmm.profiled`);
4. set the fitted attributes (user's scale, pandas objects with term names).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from .._dask_frames import is_dask_collection
from .._estimator import HyperParameters
from ..models.params import check_flag, check_interval, check_model_params
from ..basis import SplineBasis
from ..exceptions import ConvergenceWarning, DataError, IdentifiabilityWarning, NotFittedError
from .._linalg import limit_blas_threads
from .design import (
    Design,
    LongitudinalDesignBuilder,
    MatrixDesignBuilder,
    check_design,
)
from .estimators import ESTIMATORS, Estimate
from .formula import FormulaDesignBuilder
from .predictive import PredictiveLMM, fitted_rows
from .scaling import ResponseScaling
from ..standardise import check_noise_left, warn_binary_response, warn_far_values
from ..response_transform import check_transform, forward, label_of, log_jacobian, scale_text, transform_candidates

#: An ML or REML fit's residual variance at or below this share of the response's variance has collapsed
#: (:meth:`LinearMixedModel._warn_collapsed_noise`); the mixtures' engine calls such data noise-free at the
#: same share (``dmlmm.inference.engine.NOISE_FREE_SHARE``).
COLLAPSED_NOISE_SHARE = 1e-8

__all__ = ["LinearMixedModel"]


def _describe_basis(builder) -> str | None:
    b = getattr(builder, "basis_", None) if isinstance(builder, LongitudinalDesignBuilder) else None
    if b is None:
        return None
    return f"{b!r}, range [{b.lower_:g}, {b.upper_:g}]"


@dataclass
class _ScaleFit:
    """One scale's fit: the transform, the design of z = transform(y), its standardisation and estimate,
    the summed log-Jacobian log|dz/dy| and the warnings the fit raised (re-raised if it is kept)."""

    transform: str | None
    design: Design
    scaling: ResponseScaling
    estimate: Estimate
    log_jacobian: float
    warnings: list


class LinearMixedModel(PredictiveLMM, HyperParameters):
    """Linear mixed model ``y_i = F_i w + Z_i b_i + e_i``, ``b_i ~ N(0, Sigma)``, ``e_i ~ N(0, sigma^2 I)``.

    ``Sigma`` (q x q) is unstructured. Three ways to give the model:

    - an lme4-style formula: ``LinearMixedModel("Reaction ~ Days + (Days | Subject)").fit(df)``;
    - design matrices: ``LinearMixedModel().fit(X=F, Z=Z, y=y, groups=g)`` (``X``, ``Z`` used as
      given, no intercept added). Without ``groups``, ``Z`` is the complete random design of
      ``y = X w + Z u`` with one long ``u ~ N(0, tau^2 I)``;
    - longitudinal data with a spline basis of time:
      ``LinearMixedModel(basis=SplineBasis(10)).fit(df, subject="id", time="t", response="y",
      covariates=["age"])``: random design = basis at each subject's times, fixed design =
      the same basis (population mean curve) + covariates.

    Parameters
    ----------
    formula : str, optional
        lme4 formula with one grouping factor, e.g. ``"y ~ x + (x | g)"``.
    method : {"vb", "reml", "ml"}
        ``"vb"`` (default): variational Bayes with a joint Gaussian posterior of fixed and
        random effects, Huang-Wand (half-t) prior on Sigma, half-Cauchy on sigma, wide normal
        on w (:mod:`dmlmm.lmm.variational`); ``fixed_effects_`` etc. are posterior means and
        ``posterior_`` holds SDs and 95% credible intervals. ``"reml"`` / ``"ml"``: restricted
        or full maximum likelihood (exact profiled likelihood, as lme4).
    basis : SplineBasis, optional
        Basis of the longitudinal form; copied, then fitted on the data's time range unless it is
        already fitted. Default: 10 cubic B-splines with uniform knots (knots at the visits, ``"quantile"``,
        where uniform ones leave a function whose support holds visits of fewer subjects than there are
        functions, as where visits crowd early in a long range), or the largest smaller basis
        that the data's distinct times identify with one time to spare, so that the residual variance
        is identified (at most T - 1 functions for T distinct times), with more observations than
        random effects (N q < n for N subjects, n observations, q functions), as lme4 requires, and
        fewer functions than subjects (:func:`dmlmm.lmm.design.default_basis`).
    max_iter : int
        Iteration cap of each optimiser run.
    tol : float
        ML/REML: tolerance on the projected gradient of ``-loglik / n`` (standardised scale).
        VB: tolerance on the relative change of the ELBO (at most 1e-8 is used), relative to |ELBO| but never
        to less than 0.1 nats per observation.
    n_init : int
        ML/REML: optimiser runs, the first from lme4's default start, the others from the
        incumbent solution (the variational fit is one run: its ELBO has one optimum here). With
        at most 5,000 subjects and a covariance of several parameters, ML (REML) also runs from
        the REML (ML) optimum and keeps the higher likelihood: the profiled likelihood can have
        several optima (:func:`dmlmm.lmm.estimators.fit_from_both_starts`).
    blas_threads : int or None
        OpenBLAS threads while fitting (restored afterwards). The work is many tiny matrix
        operations, where BLAS threading only adds overhead (up to 100x in scipy's L-BFGS-B
        on a busy machine); None leaves the setting alone.
    response_transform : {None, "auto", "log", "log1p"}
        The scale of the fit (:mod:`dmlmm.response_transform`). None (default, as lme4): the
        response as given. ``"log"`` (y > 0) / ``"log1p"`` (y > -1, for zeros): the same model of
        z = log(y) (log(1 + y)); predictions, draws and scores are on y's scale (bands and draws
        through exp / expm1, densities with the Jacobian), coefficients and variances on z's.
        ``"auto"``: a response that is never negative is fitted as given and on its log scale,
        and the scale with the higher log-likelihood of y as given is kept (the ML
        log-likelihood plus the Jacobian; for ``method="vb"`` the ELBO plus the Jacobian, as the
        mixtures; for ``method="reml"`` the scale is chosen by ML fits, since REML
        likelihoods of different responses do not compare, and REML is then fitted on it).

    Attributes
    ----------
    fixed_effects_ : pandas.Series (p,)
    fixed_effects_se_ : pandas.Series (p,)
    fixed_effects_cov_ : pandas.DataFrame (p, p)
    cov_re_ : pandas.DataFrame (q, q)
        Random-effects covariance Sigma (index/columns: random term names).
    sigma2_ : float
        Residual variance.
    random_effects_ : pandas.DataFrame (N, q)
        BLUPs (conditional modes) of the random effects, one row per subject (index: subject
        labels). In the ungrouped design-matrix form one row labelled ``"u"`` holds the whole ``u``.
        Longitudinal form: as in the mixtures, each subject's spline coefficients (mean curve
        included: curve = B(t) b_i + covariate effects), and ``fixed_effects_`` holds the
        covariates' effects only; the mean curve's coefficients are ``means_[0]``.
    weights_, means_, covariances_ : (1,), (1, q), (1, q, q)
        The random-effects prior as a one-cluster mixture: ``means_`` is zero in the formula and
        design-matrix forms (lme4's centred random effects) and the mean curve's coefficients in
        the longitudinal form; ``covariances_`` is ``cov_re_``.
    loglik_ : float
        ML log-likelihood (``method="ml"``), REML log-likelihood (``method="reml"``), or for
        ``method="vb"`` the ML log-likelihood at the posterior means.
    elbo_, elbo_history_ : float, ndarray
        (``method="vb"``) evidence lower bound on the user's scale and its history (non-decreasing)
        over the sweeps on all subjects. Those start at the maximum of the collapsed bound (the ELBO
        with the random effects and the scales' auxiliaries optimised out, a function of ``Sigma``
        and ``sigma^2``; :mod:`dmlmm.lmm.collapsed`), found by trust-region Newton steps on nested
        random subsets and then on all subjects: (subjects, steps) in ``estimate_.extra["newton"]``.
        For a scaled-identity ``Sigma``, with 4,000 subjects or more, they start from fits on nested
        random subsets (:func:`dmlmm.lmm.variational.warm_start`): (subjects, sweeps) in
        ``estimate_.extra["warm_start"]``. ``n_iter_`` counts the sweeps on all subjects.
    posterior_ : pandas.DataFrame
        (``method="vb"``) posterior mean, sd and 95% credible interval of each fixed effect, each
        random-effect variance and the residual variance.
    aic_, bic_ : float
        ``-2 loglik_ + 2 k`` and ``-2 loglik_ + k log n`` with k = p + #covariance parameters + 1.
        For REML they use the REML log-likelihood as lme4 does (comparable only between models
        with the same fixed effects).
    deviance_ : float
        ``-2 loglik_`` (the REML criterion for REML).
    n_iter_ : int
    converged_ : bool
    n_obs_, n_groups_ : int
    theta_ : ndarray
        lme4's relative covariance parameters (lower triangle of Lambda, column-major).
    singular_ : bool
        Boundary fit: Sigma is (numerically) singular.
    response_transform_ : None, "log" or "log1p"
        The scale fitted. ``loglik_``, ``elbo_``, ``aic_``, ``bic_`` and ``deviance_`` are those of
        the model of z = transform(y).
    loglik_data_scale_ : float or None
        ``method="ml"`` / ``"vb"``: ``loglik_`` as a log-likelihood of the response as given (plus the
        summed log-Jacobian, log|dz/dy| = -z); comparable between scales. None for REML.
    criterion_by_transform_ : dict
        The criterion each scale tried got (keys "none", "log", "log1p"): the ML log-likelihood
        (``"ml"``, ``"reml"``) or the ELBO (``"vb"``) of the response as given.
    """

    def __init__(
        self,
        formula: str | None = None,
        *,
        method: str = "vb",
        basis: SplineBasis | None = None,
        max_iter: int = 2000,
        tol: float = 1e-6,
        n_init: int = 3,
        blas_threads: int | None = 1,
        response_transform: str | None = None,
    ) -> None:
        self.formula = formula
        self.method = method
        self.basis = basis
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.blas_threads = blas_threads
        self.response_transform = response_transform

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        data: pd.DataFrame | None = None,
        *,
        X=None,
        Z=None,
        y=None,
        groups=None,
        subject: str = "subject",
        time: str = "time",
        response: str = "y",
        covariates: Sequence[str] | str | None = None,
        dropna: bool = False,
    ) -> "LinearMixedModel":
        """Fit the model.

        Parameters
        ----------
        data : pandas.DataFrame or Longitudinal, optional
            Long frame (formula form, or longitudinal form when there is no formula).
        X, Z, y, groups : array-like, optional
            Design-matrix form: fixed design (n, p), random design (n, q), response (n,),
            group label per row (n,) (omit for one long ``u ~ N(0, tau^2 I)``).
        subject, time, response : str
            Column names of the longitudinal form.
        covariates : list of str or str, optional
            Its covariates: column names or a formulaic right-hand side (as the mixtures').
        dropna : bool
            Drop rows with missing / infinite values (with a warning saying how many) instead
            of raising a DataError.

        Returns
        -------
        self
        """
        if is_dask_collection(data):
            raise DataError("LinearMixedModel fits in memory: compute() the Dask frame first, or fit the Gaussian "
                            "LMM on the cluster as MixtureLMM(1) (the variational LMM, with the same smoothness "
                            "prior; on the command line: dmlmm fit --model lmm --dask, without --method)")
        check_model_params(self)
        check_flag(dropna, "dropna")
        method = str(self.method).lower()
        transform = check_transform(self.response_transform)
        with limit_blas_threads(self.blas_threads):
            builder, design = self._build_design(data, X, Z, y, groups, subject, time, response, covariates, dropna)
            check_design(design)
            name = builder.parsed_.response if isinstance(builder, FormulaDesignBuilder) else (
                builder.columns_.response if isinstance(builder, LongitudinalDesignBuilder) else "y")
            if transform is not None and isinstance(builder, FormulaDesignBuilder):
                _check_response_not_transformed(name, self.response_transform)
            self._check_noise_left(design, design.y, name)  # the data's scale (a transformed one in _fit_scale)
            warn_binary_response(design.y, name, stacklevel=3)
            warn_far_values(design.y, name, design.subjects, design.codes, design.time,
                            design.subjects.name or "subject", stacklevel=3)
            scales = transform_candidates(transform, design.y)
            # REML likelihoods of different responses do not compare: the scale is chosen by ML fits
            choose = "ml" if method == "reml" and len(scales) > 1 else method
            fits = [self._fit_scale(design, name, tr, choose, quiet=len(scales) > 1) for tr in scales]
            criteria = [self._criterion(f, choose) for f in fits]
            kept = fits[int(np.argmax(criteria))]  # the first (the response as given) on a tie
            if choose != method:
                kept = self._fit_scale(design, name, kept.transform, method, quiet=True)
        for w in kept.warnings:  # only the kept scale's fit speaks
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        self._set_attributes(builder, kept.design, kept.scaling, kept.estimate, method)
        self.response_transform_ = kept.transform
        self.loglik_data_scale_ = None if method == "reml" else float(kept.estimate.loglik + kept.log_jacobian)
        self.criterion_by_transform_ = {label_of(f.transform): float(c) for f, c in zip(fits, criteria)}
        return self

    def _fit_scale(self, design: Design, name: str, transform: str | None, method: str, quiet: bool) -> _ScaleFit:
        """The fit of z = transform(y) by ``method``; with ``quiet`` its warnings are kept, not raised."""
        with warnings.catch_warnings(record=quiet) as caught:
            if quiet:
                warnings.simplefilter("always")
            z = forward(design.y, transform, name)
            d = design if transform is None else replace(design, y=z)
            scaling = ResponseScaling.learn(d.y, d.F, name)
            ys = scaling.transform(d.y)
            if transform is not None:  # the data's own scale was checked in fit
                self._check_noise_left(d, ys, name)
            self._check_not_exact(ys, d)
            stats = d.stats(ys)
            est = ESTIMATORS[method](d, scaling, stats, max_iter=self.max_iter, tol=self.tol,
                                     n_restarts=self.n_init - 1)
        return _ScaleFit(transform, d, scaling, est, float(log_jacobian(z, transform).sum()), list(caught or []))

    @staticmethod
    def _criterion(fit: _ScaleFit, method: str) -> float:
        """The fit's log-likelihood (ML) or ELBO (VB) as one of the response as given."""
        value = fit.estimate.extra["elbo"] if method == "vb" else fit.estimate.loglik
        return float(value) + fit.log_jacobian

    def _build_design(self, data, X, Z, y, groups, subject, time, response, covariates, dropna
                      ) -> tuple[object, Design]:
        matrix_args = any(a is not None for a in (X, Z, y, groups))
        if self.formula is not None:
            if matrix_args:
                raise ValueError("this model has a formula: fit(data_frame), not X / Z / y / groups")
            if self.basis is not None:
                raise ValueError("basis is for the longitudinal form (no formula); put the terms in the formula")
            if data is None:
                raise DataError("a formula model needs a data frame: fit(df)")
            builder = FormulaDesignBuilder(self.formula)
            return builder, builder.fit(data, dropna=dropna)
        if matrix_args:
            if data is not None:
                raise ValueError("give either a data frame or design matrices (X, Z, y, groups), not both")
            builder = MatrixDesignBuilder()
            return builder, builder.fit(X, Z, y, groups)
        if data is None:
            raise DataError("nothing to fit: pass a data frame, or X=, Z=, y= (and groups=)")
        builder = LongitudinalDesignBuilder(self.basis)
        return builder, builder.fit(data, subject=subject, time=time, response=response,
                                    covariates=covariates, dropna=dropna)

    @staticmethod
    def _check_noise_left(design: Design, y: np.ndarray, name: str) -> None:
        """No residual left within any group (a baseline variable, or time itself, as the response)."""
        if not design.grouped:
            return
        check_noise_left(y, design.codes, design.time, name,
                         "subject" if design.time is not None else f"group of '{design.group_name}'")

    @staticmethod
    def _check_not_exact(ys: np.ndarray, design: Design) -> None:
        if design.n_fixed == 0:
            return
        coef, *_ = np.linalg.lstsq(design.F, ys, rcond=None)
        rss = float(np.sum((ys - design.F @ coef) ** 2))
        if rss <= 1e-20 * design.n_obs:
            raise DataError(
                "the response is an exact linear function of the fixed effects (zero residuals): "
                "there is no variation left for random effects and errors"
            )

    def _set_attributes(self, builder, design: Design, scaling: ResponseScaling, est: Estimate,
                        method: str) -> None:
        fn, rn = design.fixed_names, design.random_names
        self.builder_ = builder
        self.design_info_ = {
            "fixed_names": list(fn), "random_names": list(rn), "group_name": design.group_name,
            "grouped": design.grouped, "structure": design.structure.kind, "random_blocks": design.random_blocks,
            "basis": _describe_basis(builder),
        }
        self.scaling_ = scaling
        self.n_obs_ = design.n_obs
        self.n_groups_ = design.n_groups if design.grouped else 1
        self.method_ = method
        last_times = None if design.time is None else np.maximum.reduceat(
            design.time, np.r_[0, np.flatnonzero(np.diff(design.codes)) + 1])
        self._set_estimate(est, design.subjects, last_times)
        self._fitted_rows = fitted_rows(design.Z, design.y, design.codes, len(design.subjects))
        if method == "vb":
            self._set_posterior(est, fn, rn)
        if not self._warn_collapsed_noise(design.y):
            self._warn_not_converged(est)

    def _set_estimate(self, est: Estimate, subjects: pd.Index, last_times: np.ndarray | None) -> None:
        """The fitted attributes that follow from an estimate (also what :func:`dmlmm.load` restores);
        needs ``design_info_``, ``n_obs_`` and ``method_``."""
        fn, rn = self.design_info_["fixed_names"], self.design_info_["random_names"]
        self.estimate_ = est
        # the longitudinal form is the family's y = F w + B(t) b_i + e with b_i ~ N(mu, Sigma): its
        # fixed effects are the covariates' and each subject's coefficients include the mean curve
        # mu (the fit's first q fixed effects), as in the mixtures; the other forms keep lme4's meaning
        q0 = len(rn) if isinstance(self.builder_, LongitudinalDesignBuilder) else 0
        self._mean_coefficients = np.asarray(est.beta[:q0], dtype=float)
        keep = slice(q0, None)
        self.fixed_effects_ = pd.Series(est.beta[keep], index=fn[keep], name="estimate", dtype=float)
        self.fixed_effects_cov_ = pd.DataFrame(est.cov_beta[keep, keep], index=fn[keep], columns=fn[keep])
        self.fixed_effects_se_ = pd.Series(np.sqrt(np.clip(np.diag(est.cov_beta)[keep], 0, None)), index=fn[keep],
                                           name="std_error", dtype=float)
        self.cov_re_ = pd.DataFrame(est.cov_re, index=rn, columns=rn)
        self.sigma2_ = float(est.sigma2)
        coef = est.b + self._mean_coefficients if q0 else est.b
        self.random_effects_ = pd.DataFrame(coef, index=subjects, columns=rn)
        self.loglik_ = float(est.loglik)
        self.deviance_ = -2.0 * self.loglik_
        self.n_params_ = int(est.n_params)
        self.aic_ = self.deviance_ + 2.0 * est.n_params
        self.bic_ = self.deviance_ + est.n_params * np.log(self.n_obs_)
        self.n_iter_ = int(est.n_iter)
        self.converged_ = bool(est.converged)
        self.theta_ = np.asarray(est.theta)
        # judged in the coordinates fitted (a random slope's time centred where it lies far from zero:
        # estimators.random_centring), where a nearly collinear intercept and slope are not a boundary
        cov = est.extra.get("cov_re_fitted", est.cov_re)
        sd = np.sqrt(np.clip(np.diag(cov), 0, None))
        self.singular_ = bool(np.any(sd <= 1e-4 * np.sqrt(self.sigma2_))) or bool(
            np.linalg.eigvalsh(cov / np.outer(np.where(sd > 0, sd, 1), np.where(sd > 0, sd, 1)))[0] < 1e-8
        )
        self._subjects = subjects
        self._last_times = last_times

    def _warn_collapsed_noise(self, y: np.ndarray) -> bool:
        """Warn (and return True) when an ML or REML fit's residual variance went to (next to) zero: the
        random effects then fit every observation and the likelihood grows without bound, so the optimiser's
        own message (a projected gradient of 1e285) would not say what happened. ``y`` on the fitted scale."""
        spread = float(np.var(y))
        if self.method_ == "vb" or not spread > 0 or self.sigma2_ > COLLAPSED_NOISE_SHARE * spread:
            return False
        warnings.warn(
            f"the residual variance went to {self.sigma2_:.3g}, next to nothing against the response's variance "
            f"({spread:.4g}): the random effects fit every observation, so the {self.method_.upper()} likelihood "
            f"has no maximum and these estimates (loglik_ {self.loglik_:.6g} included) mean nothing; use fewer "
            "random-effect terms (e.g. drop a random slope) or groups with more observations each",
            IdentifiabilityWarning, stacklevel=4)
        return True

    def _warn_not_converged(self, est: Estimate) -> None:
        if not self.converged_:
            warnings.warn(f"the {self.method_.upper()} optimisation did not converge ({est.message})",
                          ConvergenceWarning, stacklevel=4)

    def _set_posterior(self, est: Estimate, fn, rn) -> None:
        ci = est.extra["intervals"]
        z = ci["w_z"]
        beta, sd = np.asarray(est.beta), np.asarray(ci["w_sd"])
        rows = [(name, b, s_, b - z * s_, b + z * s_) for name, b, s_ in zip(fn, beta, sd)]
        diag = np.diag(est.cov_re)
        rows += [(f"var({r})", v, s_, lo, hi) for r, v, s_, lo, hi in
                 zip(rn, diag, ci["re_var_sd"], ci["re_var_lower"], ci["re_var_upper"])]
        rows.append(("sigma2", est.sigma2, ci["sigma2_sd"], ci["sigma2_lower"], ci["sigma2_upper"]))
        self.posterior_ = pd.DataFrame(rows, columns=["parameter", "mean", "sd", "lower", "upper"]).set_index("parameter")
        self.elbo_ = float(est.extra["elbo"])
        self.elbo_history_ = np.asarray(est.extra["elbo_history"])

    # ------------------------------------------------------------------ fitted-state helpers
    def _check_fitted(self) -> None:
        if not hasattr(self, "fixed_effects_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(...) first")

    @property
    def random_effects_cov_(self) -> np.ndarray:
        """Conditional covariance of each subject's random effects given y (beta fixed), (N, q, q)."""
        self._check_fitted()
        return self.estimate_.cov_b

    def save(self, path) -> None:
        """Write the fitted model to one file (:mod:`dmlmm.io`); read it back with :func:`dmlmm.load`.

        Formula models keep their formula and formulaic's fitted state (levels, contrasts,
        stateful transforms), so a loaded model rebuilds the same columns for new rows.
        """
        from ..io import save_model

        save_model(self, path)

    # ------------------------------------------------------------------ reporting
    def _scale_text(self) -> str:
        """The scale modelled, with the criterion of each scale "auto" weighed; empty for a response fitted
        as given alone (:func:`dmlmm.response_transform.scale_text`)."""
        criterion = "ELBO" if self.method_ == "vb" else "ML log-likelihood"
        return scale_text(self._response_name() or "y", getattr(self, "response_transform_", None),
                          getattr(self, "criterion_by_transform_", {}) or {}, criterion)

    def summary(self, interval: float = 0.95) -> str:
        """lme4-style text summary (fixed effects with SE, t and CI; variance components; fit criteria)."""
        self._check_fitted()
        from .summary import format_summary

        return format_summary(self, interval=check_interval(interval))


def _check_response_not_transformed(response: str, transform: str) -> None:
    """A DataError where the formula's response is a function of a column (``log(y)``) and a
    ``response_transform`` is asked for too: the fit would transform the transformed response again
    (``log(log(y))``, with predictions on the scale of ``log(y)``)."""
    call = re.match(r"\s*([A-Za-z_][\w.]*)\s*\((.*)\)\s*$", response)
    if call is None:
        return
    inner = call.group(2).strip()
    raise DataError(
        f"the formula's response {response!r} is already a function of the data, and response_transform="
        f"{transform!r} would {'try' if transform == 'auto' else 'take'} {'log' if transform == 'auto' else transform}"
        f"({response}) too: write "
        f"the response as the column ('{inner} ~ ...') with response_transform={transform!r}, whose curves, bands "
        f"and scores are then on the scale of {inner}, or leave response_transform=None to model {response} as "
        "given")

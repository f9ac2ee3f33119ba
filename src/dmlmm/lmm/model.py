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

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .._estimator import HyperParameters
from ..basis import SplineBasis
from ..exceptions import ConvergenceWarning, DataError, NotFittedError
from ._threads import limit_blas_threads
from .design import (
    Design,
    LongitudinalDesignBuilder,
    MatrixDesignBuilder,
    NewRows,
    check_design,
)
from .estimators import ESTIMATORS, Estimate
from .formula import FormulaDesignBuilder
from .scaling import ResponseScaling

__all__ = ["LinearMixedModel"]


def _describe_basis(builder) -> str | None:
    b = getattr(builder, "basis_", None) if isinstance(builder, LongitudinalDesignBuilder) else None
    if b is None:
        return None
    return f"{b!r}, range [{b.lower_:g}, {b.upper_:g}]"


class LinearMixedModel(HyperParameters):
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
        Basis of the longitudinal form (default ``SplineBasis()``); copied, then fitted on the
        data's time range unless it is already fitted.
    max_iter : int
        Iteration cap of each optimiser run.
    tol : float
        ML/REML: tolerance on the projected gradient of ``-loglik / n`` (standardised scale).
        VB: tolerance on the relative change of the ELBO (at most 1e-8 is used).
    n_restarts : int
        Extra optimiser runs from the incumbent solution.
    blas_threads : int or None
        OpenBLAS threads while fitting (restored afterwards). The work is many tiny matrix
        operations, where BLAS threading only adds overhead (up to 100x in scipy's L-BFGS-B
        on a busy machine); None leaves the setting alone.

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
    loglik_ : float
        ML log-likelihood (``method="ml"``), REML log-likelihood (``method="reml"``), or for
        ``method="vb"`` the ML log-likelihood at the posterior means.
    elbo_, elbo_history_ : float, ndarray
        (``method="vb"``) evidence lower bound on the user's scale and its history (non-decreasing).
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
    """

    def __init__(
        self,
        formula: str | None = None,
        *,
        method: str = "vb",
        basis: SplineBasis | None = None,
        max_iter: int = 2000,
        tol: float = 1e-6,
        n_restarts: int = 2,
        blas_threads: int | None = 1,
    ) -> None:
        self.formula = formula
        self.method = method
        self.basis = basis
        self.max_iter = max_iter
        self.tol = tol
        self.n_restarts = n_restarts
        self.blas_threads = blas_threads

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
        subject, time, response, covariates : str / list of str
            Column names of the longitudinal form.
        dropna : bool
            Drop rows with missing / infinite values (with a warning saying how many) instead
            of raising a DataError.

        Returns
        -------
        self
        """
        method = str(self.method).lower()
        if method not in ESTIMATORS:
            raise ValueError(f"method must be one of {sorted(ESTIMATORS)}, got {self.method!r}")
        with limit_blas_threads(self.blas_threads):
            builder, design = self._build_design(data, X, Z, y, groups, subject, time, response, covariates, dropna)
            check_design(design)
            scaling = ResponseScaling.learn(design.y, design.F)
            ys = scaling.transform(design.y)
            self._check_not_exact(ys, design)
            stats = design.stats(ys)
            est = ESTIMATORS[method](design, scaling, stats, max_iter=self.max_iter, tol=self.tol,
                                     n_restarts=self.n_restarts)
        self._set_attributes(builder, design, scaling, est, method)
        return self

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
        self.estimate_ = est
        self.fixed_effects_ = pd.Series(est.beta, index=fn, name="estimate", dtype=float)
        self.fixed_effects_cov_ = pd.DataFrame(est.cov_beta, index=fn, columns=fn)
        self.fixed_effects_se_ = pd.Series(np.sqrt(np.clip(np.diag(est.cov_beta), 0, None)), index=fn,
                                           name="std_error", dtype=float)
        self.cov_re_ = pd.DataFrame(est.cov_re, index=rn, columns=rn)
        self.sigma2_ = float(est.sigma2)
        self.random_effects_ = pd.DataFrame(est.b, index=design.subjects, columns=rn)
        self.loglik_ = float(est.loglik)
        self.deviance_ = -2.0 * self.loglik_
        n = design.n_obs
        self.n_obs_ = n
        self.n_groups_ = design.n_groups if design.grouped else 1
        self.n_params_ = int(est.n_params)
        self.aic_ = self.deviance_ + 2.0 * est.n_params
        self.bic_ = self.deviance_ + est.n_params * np.log(n)
        self.n_iter_ = int(est.n_iter)
        self.converged_ = bool(est.converged)
        self.theta_ = np.asarray(est.theta)
        self.method_ = method
        sd = np.sqrt(np.clip(np.diag(est.cov_re), 0, None))
        self.singular_ = bool(np.any(sd <= 1e-4 * np.sqrt(self.sigma2_))) or bool(
            np.linalg.eigvalsh(est.cov_re / np.outer(np.where(sd > 0, sd, 1), np.where(sd > 0, sd, 1)))[0] < 1e-8
        )
        self._subjects = design.subjects
        if method == "vb":
            self._set_posterior(est, fn, rn)
        if not self.converged_:
            warnings.warn(f"the {method.upper()} optimisation did not converge ({est.message})",
                          ConvergenceWarning, stacklevel=3)

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

    # ------------------------------------------------------------------ predict
    def predict(
        self,
        data=None,
        subject=None,
        *,
        level: str = "subject",
        kind: str = "curve",
        interval: float = 0.95,
        X=None,
        Z=None,
        groups=None,
    ) -> pd.DataFrame:
        """Predictions with pointwise intervals.

        Parameters
        ----------
        data : pandas.DataFrame or array of times
            Formula form: a frame with the formula's right-hand-side columns (and the grouping
            column for subject-level predictions). Longitudinal form: a frame with the subject and
            time columns (+ covariates), or an array of times together with ``subject=``.
        subject : label, optional
            Subject for all rows (when ``data`` has no subject column / is an array of times).
        level : {"subject", "population"}
            ``"subject"``: ``F w + Z b_i`` with the subject's BLUP; its variance is the conditional
            (prediction-error) variance of ``Z b_i`` plus the uncertainty of ``w``. Subjects not seen
            in fit fall back to the population level (UserWarning naming them).
            ``"population"``: ``F w``, with ``b`` integrated out (variance ``diag(Z Sigma Z')`` plus the
            uncertainty of ``w``).
        kind : {"curve", "observation"}
            Interval for the curve (mean response) or for a new observation (adds ``sigma^2``).
        interval : float
            Coverage of the pointwise normal interval.
        X, Z, groups : array-like
            Design-matrix form: new fixed / random design rows and group labels.

        Returns
        -------
        pandas.DataFrame
            Identifying columns (subject / time when applicable), then ``mean``, ``lower``, ``upper``.
        """
        self._check_fitted()
        if level not in ("subject", "population"):
            raise ValueError(f"level must be 'subject' or 'population', got {level!r}")
        if kind not in ("curve", "observation"):
            raise ValueError(f"kind must be 'curve' or 'observation', got {kind!r}")
        if not 0.0 < float(interval) < 1.0:
            raise ValueError(f"interval must be in (0, 1), got {interval!r}")
        rows = self._new_rows(data, subject, X, Z, groups)
        mean, var = self._predict_moments(rows, level)
        if kind == "observation":
            var = var + self.sigma2_
        half = sps.norm.ppf(0.5 + 0.5 * float(interval)) * np.sqrt(np.clip(var, 0.0, None))
        out = rows.frame.copy()
        out["mean"] = mean
        out["lower"] = mean - half
        out["upper"] = mean + half
        return out

    def _new_rows(self, data, subject, X, Z, groups) -> NewRows:
        b = self.builder_
        if isinstance(b, MatrixDesignBuilder):
            if data is not None:
                raise ValueError("this model was fitted on design matrices: predict(X=..., Z=..., groups=...)")
            return b.transform(X, Z, groups)
        if any(a is not None for a in (X, Z, groups)):
            raise ValueError("X / Z / groups are for models fitted on design matrices")
        if data is None:
            raise DataError("nothing to predict at: pass a data frame (or, for the longitudinal form, times)")
        return b.transform(data, subject=subject)

    def _predict_moments(self, rows: NewRows, level: str) -> tuple[np.ndarray, np.ndarray]:
        est = self.estimate_
        F, Z = rows.F, rows.Z
        mean = F @ est.beta if F.shape[1] else np.zeros(len(Z))
        var = np.einsum("mi,ij,mj->m", Z, est.cov_re, Z) + np.einsum("mi,ij,mj->m", F, est.cov_beta, F)
        if level == "population" or rows.subjects is None:
            return mean, var
        pos = self._subjects.get_indexer(pd.Index(rows.subjects, dtype=object)) if len(rows.subjects) else np.zeros(0, int)
        if (pos < 0).any():
            unknown = list(dict.fromkeys(pd.Index(rows.subjects)[pos < 0].tolist()))
            shown = unknown[:10]
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            warnings.warn(
                f"subject(s) {shown}{more} were not in the data the model was fitted on: "
                "their predictions are at the population level",
                UserWarning,
                stacklevel=3,
            )
        known = pos >= 0
        if known.any():
            idx = pos[known]
            Zk, Fk = Z[known], F[known]
            mean[known] = mean[known] + np.einsum("mq,mq->m", Zk, est.b[idx])
            k = Fk - np.einsum("mqp,mq->mp", est.beta_sensitivity[idx], Zk)
            var[known] = (np.einsum("mi,mij,mj->m", Zk, est.cov_b[idx], Zk)
                          + np.einsum("mi,ij,mj->m", k, est.cov_beta, k))
        return mean, var

    # ------------------------------------------------------------------ reporting
    def summary(self, interval: float = 0.95) -> str:
        """lme4-style text summary (fixed effects with SE, t and CI; variance components; fit criteria)."""
        self._check_fitted()
        from .summary import format_summary

        return format_summary(self, interval=interval)


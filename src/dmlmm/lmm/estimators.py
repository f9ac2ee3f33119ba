"""Estimators of the linear mixed model, keyed by ``method``.

An estimator takes the model's :class:`~dmlmm.lmm.design.Design`, the
:class:`~dmlmm.lmm.scaling.ResponseScaling` and the sufficient statistics of the
standardised response, and returns an :class:`Estimate` on the user's scale.
``LinearMixedModel.fit`` is: build designs -> statistics -> ``ESTIMATORS[method]``
-> set attributes, so a new method (e.g. variational Bayes) is one more entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from ..exceptions import NumericalError
from ..sufficient import SufficientStats
from .design import Design
from .optimise import fit_profiled
from .scaling import ResponseScaling, fixed_standardisation, random_centring

__all__ = ["Estimate", "ESTIMATORS", "estimate_profiled", "CROSS_START_MAX_SUBJECTS"]

#: Largest number of subjects (groups) for which an ML / REML fit also starts from the other criterion's
#: optimum (:func:`fit_from_both_starts`); above it the one run from lme4's start is kept.
CROSS_START_MAX_SUBJECTS = 5000


@dataclass
class Estimate:
    """Fitted LMM quantities on the user's scale.

    Attributes
    ----------
    beta : (p,) fixed effects.
    cov_beta : (p, p) their covariance.
    sigma2 : float
        Residual variance.
    cov_re : (q, q)
        Random-effects covariance Sigma.
    b : (N, q)
        Random effects per group (BLUP / posterior mean).
    cov_b : (N, q, q)
        Covariance of ``b_i`` given y with beta held fixed.
    beta_sensitivity : (N, q, p)
        ``H_i``: ``b_i`` moves by ``-H_i d`` when beta moves by ``d``; the prediction
        error of ``f'beta + z'b_i`` is ``z'cov_b z + k'cov_beta k`` with ``k = f - H_i'z``.
    loglik : float
        Log-likelihood the method maximised (ML, or REML), or the method's own criterion.
    n_params : int
        Free parameters counted for AIC/BIC.
    n_iter : int
    converged : bool
    message : str
    theta : (n_theta,)
        Relative covariance parameters (lme4's theta) for the user's scale.
    extra : dict
    """

    beta: np.ndarray
    cov_beta: np.ndarray
    sigma2: float
    cov_re: np.ndarray
    b: np.ndarray
    cov_b: np.ndarray
    beta_sensitivity: np.ndarray
    loglik: float
    n_params: int
    n_iter: int
    converged: bool
    message: str
    theta: np.ndarray
    extra: dict = field(default_factory=dict)


def estimate_profiled(design: Design, scaling: ResponseScaling, stats: SufficientStats, *, reml: bool,
                      max_iter: int = 2000, tol: float = 1e-6, n_restarts: int = 2) -> Estimate:
    """ML (``reml=False``) or REML estimate by maximising the exact profiled likelihood.

    Parameters
    ----------
    design : Design
    scaling : ResponseScaling
        The standardisation used to compute ``stats``.
    stats : SufficientStats
        Statistics of the standardised response.
    reml : bool
    max_iter, tol, n_restarts
        Passed to :func:`~dmlmm.lmm.profiled.fit_profiled` (``tol`` is its ``gtol``).
    """
    T = fixed_standardisation(design.F, scaling.direction)  # better conditioned: a calendar year's column
    A = random_centring(design.Z, design.structure.block_sizes(), _free_blocks(design.structure))
    if A is not None or _far_from_zero(design.F, T):
        # a random slope on a time far from zero, or a covariate whose mean dwarfs its spread: statistics of the
        # centred columns themselves (F'F of the raw columns, mapped by T afterwards, loses (mean / SD)^2 to
        # cancellation), the estimates mapped back below
        Z = design.Z if A is None else design.Z @ A
        fitted_stats = replace(design, F=design.F @ T, Z=Z).stats(scaling.transform(design.y))
    else:
        fitted_stats = stats.with_fixed_columns(T)
    try:
        fit = fit_from_both_starts(fitted_stats, design, reml, max_iter=max_iter, gtol=tol, n_restarts=n_restarts)
    except np.linalg.LinAlgError as exc:
        q, n_groups = design.structure.dim, len(design.subjects)
        unit, fewer = (("subject", "a smaller basis: basis=SplineBasis(4), --n-basis 4 on the command line")
                       if design.time is not None else ("group", "fewer random-effect terms"))
        raise NumericalError(
            f"the {'REML' if reml else 'ML'} fit broke down: at the estimate it reached, a matrix of the profiled "
            f"likelihood that must be positive definite was not numerically so ({exc}; lme4 says 'Downdated VtV is "
            f"not positive definite'). The covariance of {q} random effects per {unit}, from {n_groups} {unit}s, "
            f"leaves the fixed effects all but unidentified: use fewer random effects ({fewer}), method='vb' (its "
            f"priors keep the fit proper), or more {unit}s"
        ) from exc
    st = fit.state
    s2 = scaling.scale**2
    p = design.n_fixed
    # back to F's own columns, beta = T beta_s; REML's log|F'V^-1 F| is log|F_s'V^-1 F_s| - 2 log|det T|
    logdet_T = float(np.linalg.slogdet(T)[1]) if p else 0.0
    # back to Z's own columns: b = A b', Sigma = A Sigma' A' (A = I: the columns as given)
    centred = A is not None
    A = A if centred else np.eye(design.structure.dim)
    lam = _lower_factor(A @ st.lam) if centred else st.lam
    return Estimate(
        beta=scaling.beta_to_user(T @ st.beta),
        cov_beta=s2 * (T @ st.cov_beta @ T.T),
        sigma2=s2 * st.sigma2,
        cov_re=s2 * (A @ st.cov_re @ A.T),
        b=scaling.scale * (st.b @ A.T),
        cov_b=s2 * (A @ st.cov_b_conditional @ A.T),
        beta_sensitivity=A @ st.beta_sensitivity @ np.linalg.inv(T),
        loglik=scaling.loglik_to_user(st.loglik + (logdet_T if reml else 0.0), st.n, p, reml),
        n_params=p + design.structure.n_theta + 1,
        n_iter=fit.n_iter,
        converged=fit.converged,
        message=fit.message,
        theta=design.structure.theta_from_lam(lam) if centred else fit.theta,
        extra={"n_eval": fit.n_eval, "grad_norm": fit.grad_norm, "history": fit.history,
               "lam": lam, "reml": reml, "cov_re_fitted": s2 * st.cov_re},
    )


#: A fixed-effect column whose mean lies more than this many of its SDs from zero gets its statistics computed
#: from the standardised column (:func:`_far_from_zero`).
FIXED_CANCELLATION_RATIO = 1e3


def _far_from_zero(F: np.ndarray, T: np.ndarray) -> bool:
    """Whether a column that ``T`` (:func:`~dmlmm.lmm.scaling.fixed_standardisation`) centres lies more than
    :data:`FIXED_CANCELLATION_RATIO` SDs from zero (a covariate of 1e9 + days: the ML fit of sleepstudy stopped
    0.9 above the true maximum at 1e7, and broke down at 1e9)."""
    if F.shape[1] == 0:
        return False
    centred = np.abs(T - np.diag(np.diag(T))).sum(axis=0) > 0  # columns that T shifts
    if not centred.any():
        return False
    m, sd = np.abs(F[:, centred].mean(axis=0)), F[:, centred].std(axis=0)
    return bool(np.any(m > FIXED_CANCELLATION_RATIO * np.maximum(sd, 1e-300)))


def _free_blocks(structure) -> list[bool]:
    """Whether each diagonal block of ``Lambda`` is unstructured (every lower-triangular entry its own
    parameter), so that any linear map of its effects keeps the model (:func:`random_centring`)."""
    out, start = [], 0
    for size in structure.block_sizes():
        inside = (structure.rows >= start) & (structure.rows < start + size)
        out.append(int(inside.sum()) == size * (size + 1) // 2 and len(np.unique(structure.which[inside])) == inside.sum())
        start += size
    return out


def _lower_factor(M: np.ndarray) -> np.ndarray:
    """A lower-triangular ``L`` with ``L L' = M M'`` and a non-negative diagonal (from the QR of ``M'``;
    singular ``M`` too), for lme4's ``theta`` of a covariance fitted in other coordinates."""
    if np.allclose(M, np.tril(M)) and np.all(np.diag(M) >= 0):
        return M
    R = np.linalg.qr(M.T, mode="r")
    sign = np.where(np.diag(R) < 0, -1.0, 1.0)
    return (R.T * sign).copy()


def fit_from_both_starts(stats: SufficientStats, design: Design, reml: bool, **opts):
    """The ML (REML) fit from lme4's start and, for a covariance of several parameters and at most
    :data:`CROSS_START_MAX_SUBJECTS` subjects, from the REML (ML) optimum too: the higher likelihood is
    kept (the first on a tie). The profiled likelihood of an unstructured covariance can have several
    optima: on nlme's Soybean (48 plots, 8 spline functions) ML from lme4's start converged at a
    log-likelihood 41 below the one it reaches from the REML optimum (standardised scale 132.6 against
    174.0), and REML on Remifentanil ended 15 higher from the ML estimate; the two criteria's optima are
    close where the data identify the covariance, so each is a good start for the other.

    Returns the :class:`~dmlmm.lmm.optimise.ProfiledFit` kept; its ``n_iter`` and ``history`` count all runs.
    """
    structure = design.structure
    fit = fit_profiled(stats, structure, reml, **opts)
    if structure.n_theta < 2 or stats.n_subjects > CROSS_START_MAX_SUBJECTS:
        return fit
    # the extra runs are the Newton phases only, without the slow L-BFGS-B / Nelder-Mead fallback of an
    # unconverged fit: a start, not a second full fit (with the fallback, BodyWeight's ML went 0.1 s -> 14 s)
    short = dict(opts, fallback=False)
    try:
        other = fit_profiled(stats, structure, not reml, **short)
        alt = fit_profiled(stats, structure, reml, theta0=other.theta, **short)
    except np.linalg.LinAlgError:  # the other start broke down: the first fit stands
        return fit
    runs = [(f"from the {'ML' if reml else 'REML'} optimum: {name}", value) for name, value in alt.history]
    tol = 1e-9 * max(1.0, abs(fit.state.loglik))
    if alt.state.loglik > fit.state.loglik + tol or (alt.converged and not fit.converged
                                                     and alt.state.loglik >= fit.state.loglik - tol):
        kept, dropped = alt, fit
    else:
        kept, dropped = fit, alt
    kept.n_iter += dropped.n_iter + other.n_iter
    kept.n_eval += dropped.n_eval + other.n_eval
    kept.history = (list(fit.history) + [(f"{'ML' if reml else 'REML'} (the other start's criterion): {n}", v)
                                         for n, v in other.history] + runs)
    return kept


def _ml(design: Design, scaling: ResponseScaling, stats: SufficientStats, **opts) -> Estimate:
    return estimate_profiled(design, scaling, stats, reml=False, **opts)


def _reml(design: Design, scaling: ResponseScaling, stats: SufficientStats, **opts) -> Estimate:
    return estimate_profiled(design, scaling, stats, reml=True, **opts)


def _vb(design: Design, scaling: ResponseScaling, stats: SufficientStats, *, max_iter: int = 2000,
        tol: float = 1e-6, **_) -> Estimate:
    """Variational Bayes (:mod:`dmlmm.lmm.variational`): posterior means, SDs and credible intervals."""
    from .variational import credible_intervals, fit_vb

    T = fixed_standardisation(design.F, scaling.direction)  # the fixed effects' prior sees unit-scale columns
    fit = fit_vb(stats.with_fixed_columns(T), design.structure, max_iter=max(int(max_iter), 1),
                 tol=min(float(tol), 1e-8))
    fit.effects = e = fixed_effects_back(fit.effects, T)
    s, s2 = scaling.scale, scaling.scale**2
    p, q, n = design.n_fixed, design.structure.dim, design.n_obs
    cov_re = s2 * fit.cov_re
    sigma2 = s2 * float(fit.params.noise.mean[()])
    lam = np.linalg.cholesky(cov_re / sigma2 + 1e-300 * np.eye(q))
    theta = np.zeros(design.structure.n_theta)
    theta[design.structure.which] = lam[design.structure.rows, design.structure.cols]
    jac = n * np.log(s)  # log-Jacobian of the standardisation
    return Estimate(
        beta=scaling.beta_to_user(e.w_mean),
        cov_beta=s2 * e.w_cov,
        sigma2=sigma2,
        cov_re=cov_re,
        b=s * e.b_mean,
        cov_b=s2 * e.cond_cov,
        beta_sensitivity=e.sensitivity,
        loglik=scaling.loglik_to_user(fit.loglik, n, p, False),
        n_params=p + q * (q + 1) // 2 + 1,
        n_iter=fit.n_iter,
        converged=fit.converged,
        message="ELBO converged" if fit.converged else "iteration cap reached before the ELBO converged",
        theta=theta,
        extra={"elbo": fit.elbo - jac, "elbo_history": np.asarray(fit.elbo_history) - jac,
               "intervals": credible_intervals(fit, s), "warm_start": list(fit.warm_stages),
               "newton": list(fit.newton_stages)},
    )


def fixed_effects_back(e, T: np.ndarray):
    """q(w, b) of ``w = T w_s`` from that of ``w_s`` (:class:`~dmlmm.inference.joint.JointEffects`)."""
    T_inv = np.linalg.inv(T)
    return replace(e, w_mean=T @ e.w_mean, w_cov=T @ e.w_cov @ T.T, b_w_cov=e.b_w_cov @ T.T,
                   sensitivity=e.sensitivity @ T_inv, w_prec=T_inv.T @ e.w_prec @ T_inv, w_shift=T_inv.T @ e.w_shift)


#: method name -> estimator(design, scaling, stats, **options) -> Estimate
ESTIMATORS: dict[str, Callable[..., Estimate]] = {"ml": _ml, "reml": _reml, "vb": _vb}

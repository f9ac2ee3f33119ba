"""Variational Bayes for the linear mixed model (``LinearMixedModel(method="vb")``), on the shared engine.

Model (standardised response)::

    y_i = F_i w + Z_i b_i + e_i,   e_i ~ N(0, sigma^2 I),   b_i ~ N(0, Sigma)
    w ~ N(0, fixed_var I)
    Sigma | a ~ IW(nu + q - 1, 2 nu diag(1/a)),  a_j ~ IG(1/2, 1/cov_scale^2)    (Huang-Wand)
    sigma | c ~ half-Cauchy: sigma^2 | c ~ IG(1/2, 1/c),  c ~ IG(1/2, 1/noise_scale^2)

This is the model of every other dmlmm model with a one-component, mean-zero
Gaussian prior on the random effects (block-diagonal or scaled-identity ``Sigma`` for
lme4's structures: :mod:`dmlmm.priors.structured`), and it is fitted by the same
engine, :func:`dmlmm.inference.engine.run_vi`, with one option: the fixed and random
effects are kept *jointly* Gaussian (``VIConfig(joint_fixed=True)``,
:mod:`dmlmm.inference.joint`), which gives credible intervals of w that account for
the random effects. Every update is closed form; the ELBO never decreases.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import stats as st

from ..expfam import InvGamma
from ..sufficient import SufficientStats
from ..inference.engine import VariationalParams, VIConfig, init_noise_and_fixed, run_vi, update_globals
from ..inference.joint import JointEffects, joint_effects
from ..models.starting import ridge_estimates
from ..prediction import log_marginal
from ..priors.base import PointMixture, RandomEffectsPrior
from ..priors.structured import gaussian_prior, variance_marginals
from .collapsed import CollapsedHyper, collapsed_newton

__all__ = ["VBFit", "fit_vb", "prior_for", "credible_intervals", "warm_start"]


@dataclass
class VBFit:
    """Result of :func:`fit_vb` (standardised scale)."""

    effects: JointEffects
    params: VariationalParams  # noise, noise_aux, q(w); prior = the parameters of q(Sigma)
    prior: RandomEffectsPrior
    elbo: float
    elbo_history: list[float]
    n_iter: int
    converged: bool
    loglik: float  # ML log-likelihood at the posterior means
    warm_stages: list[tuple[int, int]] = field(default_factory=list)  # (subjects, sweeps) of each subset run
    newton_stages: list[tuple[int, int]] = field(default_factory=list)  # (subjects, Newton steps) of the start

    @property
    def cov_re(self) -> np.ndarray:
        """E[Sigma] (q, q)."""
        return self.prior.point_mixture(self.params.prior).covs[0]


def prior_for(structure, cov_scale: float = 2.5) -> RandomEffectsPrior:
    """The one-path Gaussian prior matching an lme4-style :class:`~dmlmm.lmm.structure.CovarianceStructure`."""
    if structure.kind == "scaled_identity":
        return gaussian_prior([structure.dim], cov_scale, scaled_identity=True)
    return gaussian_prior(structure.block_sizes(), cov_scale)


def fit_vb(
    stats: SufficientStats,
    structure=None,
    *,
    max_iter: int = 500,
    tol: float = 1e-9,
    fixed_var: float = 1e4,
    cov_scale: float = 2.5,
    noise_scale: float = 1.0,
    accelerate: bool = True,
    start: str = "collapsed",
) -> VBFit:
    """The LMM's variational posterior by the shared engine, from per-subject sufficient statistics.

    The coordinate ascent starts at the maximum of the collapsed bound (:func:`collapsed_start`,
    for unstructured and block-diagonal ``Sigma``), where it converges in a few sweeps; for a scaled
    identity (or where the collapsed bound cannot be evaluated) it starts from fits on nested subsets
    of 4,000 subjects or more (:func:`warm_start`). ``max_iter`` bounds each coordinate-ascent run,
    and the result's ``n_iter`` counts the sweeps on all subjects.

    Parameters
    ----------
    stats : SufficientStats (standardised response).
    structure : CovarianceStructure, optional
        Unstructured (default), block-diagonal or scaled-identity Sigma.
    max_iter, tol : the engine's iteration cap and relative ELBO tolerance.
    accelerate : SQUAREM extrapolation of the globals (with the engine's ELBO safeguard).
    start : "collapsed" (default), "subsets" (:func:`warm_start` only) or "cold" (coordinate ascent
        from the ridge estimates' moments alone).
    """
    if start not in ("collapsed", "subsets", "cold"):
        raise ValueError(f"start must be 'collapsed', 'subsets' or 'cold', not {start!r}")
    q = stats.dim_random
    if structure is None:
        from .structure import CovarianceStructure

        structure = CovarianceStructure.unstructured(q)
    prior = prior_for(structure, cov_scale)
    config = VIConfig(max_iter=max_iter, tol=tol, fixed_var=fixed_var, noise_scale=noise_scale, min_iter=2,
                      joint_fixed=True, accelerate=accelerate, prune_threshold=0.0)
    b_hat = ridge_estimates(stats)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    rng = np.random.default_rng(0)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
    with warnings.catch_warnings():  # the estimator reports non-convergence itself
        warnings.simplefilter("ignore")
        stages, newton = [], []
        if start == "collapsed" and structure.kind != "scaled_identity":
            try:
                params, newton = collapsed_start(stats, prior, structure, params, config, b_hat)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                newton = []
        if not newton and start != "cold":
            params, stages = warm_start(stats, prior, params, config, rng)
        res = run_vi(stats, prior, params, config, rng)
    e = res.local.effects
    fit = VBFit(e, res.params, res.prior, res.elbo, res.elbo_history, res.n_iter, res.converged, 0.0, stages,
                newton)
    sigma2 = float(res.params.noise.mean[()])
    mix = PointMixture(np.ones(1), np.zeros((1, q)), fit.cov_re[None])
    fit.loglik = float(log_marginal(stats, mix, e.w_mean, sigma2).sum())
    return fit


#: Subjects in the first subset of :func:`warm_start`; each next subset is ``WARM_RATIO`` times larger.
WARM_FIRST = 1000
WARM_RATIO = 5


def warm_start(
    stats: SufficientStats, prior: RandomEffectsPrior, params: VariationalParams, config: VIConfig,
    rng: np.random.Generator,
) -> tuple[VariationalParams, list[tuple[int, int]]]:
    """Starting globals for the fit on all N subjects from fits on nested random subsets.

    Coordinate ascent needs hundreds of sweeps where ``Sigma`` is nearly singular, whatever the
    number of subjects (the fraction of missing information along those directions stays near 1),
    so most of them can be run on a subset. The subsets hold ``WARM_FIRST``, then ``WARM_RATIO``
    times more subjects, as long as at most N / 4 (none below 4,000 subjects), drawn once in a fixed
    random order (seed 1) and nested. Each is fitted by the engine to its convergence tolerance from
    the previous one's globals, which are then updated once from its local posteriors, scaled to
    the next subset's size (as a minibatch step of :mod:`dmlmm.inference.stochastic` is). The fit
    on all subjects that follows is the usual coordinate ascent, from this start: its ELBO is the
    full data's and never decreases.

    Returns the starting globals and (subjects, sweeps) of each subset run.
    """
    N = stats.n_subjects
    sizes = []
    m = WARM_FIRST
    while m <= N // 4:
        sizes.append(m)
        m *= WARM_RATIO
    if not sizes:
        return params, []
    order = np.random.default_rng(1).permutation(N)  # nested subsets: prefixes of one random order
    stages = []
    for m, nxt in zip(sizes, sizes[1:] + [N]):
        sub = stats.subset(np.sort(order[:m]))
        res = run_vi(sub, prior, params, config, rng)
        stages.append((m, int(res.n_iter)))
        _, cache = res.prior.path_prior(res.params.prior)
        params = update_globals(res.params, res.prior, sub, res.local, cache, None, config, scale=nxt / m)
    return params, stages


#: Smallest subset in the collapsed Newton's warm start, and the ratio between successive subsets.
NEWTON_SUBSET_MIN = 1000
NEWTON_RATIO = 3
#: Starts of the first Newton run (the ridge estimates' covariance and random ones); the best is kept.
NEWTON_STARTS = 4


def collapsed_start(
    stats: SufficientStats, prior: RandomEffectsPrior, structure, params: VariationalParams, config: VIConfig,
    b_hat: np.ndarray,
) -> tuple[VariationalParams, list[tuple[int, int]]]:
    """Starting globals at the maximum of the collapsed bound (:mod:`dmlmm.lmm.collapsed`).

    ``F(S, s)`` is the ELBO with q(w, b) and the scales' auxiliaries at their best, so its
    maximiser is the coordinate ascent's fixed point up to the ``O(1 / fixed_var)`` terms it leaves
    out; the engine's coordinate ascent from there converges in a few sweeps. Newton runs on nested
    random subsets a factor :data:`NEWTON_RATIO` apart (at least :data:`NEWTON_SUBSET_MIN` subjects
    each), then on all subjects, each run from the previous one's maximum. ``F`` can have more than
    one local maximum (seen where the data determine ``Sigma`` poorly: fewer observations than
    random effects), so the first run starts from the ridge estimates' covariance and from
    :data:`NEWTON_STARTS` - 1 random ones (Wishart directions, the ridge start's trace times
    ``10^u``, ``u ~ U(0, 3)``, seed 2), and the highest maximum is kept. For unstructured and
    block-diagonal ``Sigma``.

    Returns the starting globals and (subjects, Newton steps) of each run (the first run's steps
    summed over its starts).
    """
    N, q = stats.n_subjects, stats.dim_random
    hyp = CollapsedHyper.for_blocks(structure.block_sizes(), prior.cov_df, prior.cov_scale, config.noise_scale)
    rows, cols = structure.rows, structure.cols
    mask = np.zeros((q, q), dtype=bool)
    mask[rows, cols] = mask[cols, rows] = True
    s0 = float(params.noise.mean[()])
    cov = np.cov(b_hat.T).reshape(q, q) if N > 1 else np.eye(q)
    ridge = np.where(mask, cov + (0.1 * np.trace(cov) / q + 1e-3) * np.eye(q), 0.0) / s0
    rng = np.random.default_rng(2)
    starts = [ridge]
    for _ in range(NEWTON_STARTS - 1):
        A = rng.normal(size=(q, q))
        W = np.where(mask, A @ A.T + 1e-3 * q * np.eye(q), 0.0)
        starts.append(W * (np.trace(ridge) / np.trace(W)) * 10.0 ** rng.uniform(0.0, 3.0))
    stages = []
    for sub in stats.nested_subsets(NEWTON_RATIO, NEWTON_SUBSET_MIN, seed=1) + [stats]:
        maxima, total = [], 0
        for gamma in starts:
            try:
                point, steps, _ = collapsed_newton(sub, gamma, hyp, rows, cols, max_iter=200 if not stages else 50)
            except np.linalg.LinAlgError:  # a random start where the bound cannot be evaluated
                continue
            maxima.append(point)
            total += steps
        if not maxima:
            raise np.linalg.LinAlgError("the collapsed bound cannot be evaluated at any start")
        point = min(maxima, key=lambda p: p.value)
        starts = [point.gamma]
        stages.append((sub.n_subjects, total))
    alpha = float(params.noise.shape)
    noise = InvGamma(np.asarray(alpha), np.asarray(alpha * point.s))
    aux = InvGamma(np.asarray(1.0), np.asarray(1.0 / point.s + 1.0 / config.noise_scale**2))
    return replace(params, noise=noise, noise_aux=aux, prior=prior.at_covariance(params.prior, point.cov, N)), stages


def credible_intervals(fit: VBFit, scale: float, level: float = 0.95) -> dict[str, Any]:
    """Posterior SDs and equal-tailed intervals (user scale) of w, diag(Sigma) and sigma^2.

    Returns arrays keyed ``w_sd, w_z, re_var_sd, re_var_lower, re_var_upper, sigma2_sd,
    sigma2_lower, sigma2_upper`` (w on the scale of ``scale * w_std``).
    """
    a = (1 - level) / 2
    z = st.norm.ppf(1 - a)
    w_sd = np.sqrt(np.diag(fit.effects.w_cov)) * scale
    shape, rate = variance_marginals(fit.prior, fit.params.prior)
    var_dist = st.invgamma(a=shape, scale=rate * scale**2)
    noise = st.invgamma(a=float(fit.params.noise.shape), scale=float(fit.params.noise.rate) * scale**2)
    return {
        "w_sd": w_sd,
        "w_z": z,
        "re_var_sd": var_dist.std(),
        "re_var_lower": var_dist.ppf(a),
        "re_var_upper": var_dist.ppf(1 - a),
        "sigma2_sd": noise.std(),
        "sigma2_lower": noise.ppf(a),
        "sigma2_upper": noise.ppf(1 - a),
    }

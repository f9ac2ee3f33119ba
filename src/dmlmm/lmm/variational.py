"""Variational Bayes for the linear mixed model (``LinearMixedModel(method="vb")``).

Model (standardised response)::

    y_i = F_i w + Z_i b_i + e_i,   e_i ~ N(0, sigma^2 I),   b_i ~ N(0, Sigma)
    w ~ N(0, fixed_var I)
    Sigma | a ~ IW(nu + q - 1, 2 nu diag(1/a)),  a_j ~ IG(1/2, 1/cov_scale^2)    (Huang-Wand)
    sigma | c ~ half-Cauchy: sigma^2 | c ~ IG(1/2, 1/c),  c ~ IG(1/2, 1/noise_scale^2)

Variational family: q(w, b_1..b_N) q(Sigma) q(a) q(sigma^2) q(c). The fixed and
random effects are kept *jointly* Gaussian (not mean-field between w and b):
with only one path the exact joint is cheap (its precision is an arrowhead,
reduced onto w by a Schur complement batched over subjects), and it gives
credible intervals of w that account for the random effects, which a
factorised q(w) q(b) understates badly. The Sigma, a, sigma^2 and c factors are
the shared ones of :mod:`dmlmm.priors.gaussian` and :mod:`dmlmm.inference.engine`.
Every update is closed form; the ELBO, recorded after each q(w, b) step, never
decreases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as st

from .._linalg import cholesky_soa, inv_from_chol_soa, spd_inv_logdet, sym
from ..sufficient import SufficientStats
from ..inference.engine import VariationalParams, VIConfig, elbo_globals, init_noise_and_fixed
from ..expfam import LOG_2PI, InvGamma, ig_expected_logpdf
from ..models.base import ridge_estimates
from ..prediction import log_marginal
from ..priors.base import PathMoments, PointMixture
from ..priors.gaussian import GaussianMixturePrior

__all__ = ["JointEffects", "VBFit", "fit_vb", "UnstructuredBlocks", "ScaledIdentity", "covariance_factor"]


@dataclass(frozen=True)
class JointEffects:
    """q(w, b): means and the blocks of the joint covariance that are used.

    Attributes
    ----------
    w_mean : (P,), w_cov : (P, P)
    b_mean : (N, q), b_cov : (N, q, q) marginal covariances of each b_i
    b_w_cov : (N, q, P) Cov(b_i, w)
    sensitivity : (N, q, P) H_i: E[b_i | w] moves by -H_i d when w moves by d
    cond_cov : (N, q, q) Cov(b_i | w)
    logdet_cov : float, log-determinant of the joint covariance
    """

    w_mean: np.ndarray
    w_cov: np.ndarray
    b_mean: np.ndarray
    b_cov: np.ndarray
    b_w_cov: np.ndarray
    sensitivity: np.ndarray
    cond_cov: np.ndarray
    logdet_cov: float


@dataclass
class VBFit:
    """Result of :func:`fit_vb` (standardised scale)."""

    effects: JointEffects
    params: VariationalParams  # noise, noise_aux; prior = the parameters of q(Sigma)
    cov: "UnstructuredBlocks | ScaledIdentity"
    elbo: float
    elbo_history: list[float]
    n_iter: int
    converged: bool
    loglik: float  # ML log-likelihood at the posterior means


def _stack_inv_logdet(Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of an SPD stack (N, q, q) from one Cholesky factor, batch axis last.

    :func:`dmlmm._linalg.cholesky_soa` / :func:`~dmlmm._linalg.inv_from_chol_soa` loop over the q
    rows with each step vectorised over the N matrices: 2.5-3x faster than a batched LAPACK
    factorisation plus inverse at 10,000 x 10 x 10. Falls back to the jittered
    :func:`~dmlmm._linalg.spd_inv_logdet` if a pivot is not positive.
    """
    try:
        chol = cholesky_soa(np.ascontiguousarray(np.moveaxis(Q, 0, -1)))
    except np.linalg.LinAlgError:
        return spd_inv_logdet(Q, "random-effects posterior precision")
    return inv_from_chol_soa(chol), 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)


def joint_effects(stats: SufficientStats, re_prec: np.ndarray, noise_prec: float, fixed_var: float) -> JointEffects:
    """Optimal joint Gaussian q(w, b) given E[Sigma^{-1}] (q, q) and E[1/sigma^2]."""
    s = noise_prec
    P = stats.dim_fixed
    Q = re_prec[None] + s * stats.XtX  # (N, q, q)
    Qinv, logdet_Q = _stack_inv_logdet(Q)
    G = s * stats.XtF  # (N, q, P)
    H = Qinv @ G  # (N, q, P)
    A = np.eye(P) / fixed_var + s * stats.FtF.sum(0) - np.einsum("nqp,nqr->pr", G, H)
    bx = s * stats.Xty  # (N, q)
    h = s * stats.Fty.sum(0) - np.einsum("nqp,nq->p", H, bx)
    w_cov, logdet_A = spd_inv_logdet(sym(A), "fixed-effects posterior precision") if P else (np.zeros((0, 0)), 0.0)
    w_mean = w_cov @ h if P else np.zeros(0)
    b_mean = (Qinv @ bx[..., None])[..., 0] - H @ w_mean
    b_w_cov = -H @ w_cov  # (N, q, P)
    b_cov = Qinv + H @ w_cov @ np.swapaxes(H, 1, 2)
    logdet = -(float(np.sum(logdet_Q)) + float(logdet_A))
    return JointEffects(w_mean, w_cov, b_mean, b_cov, b_w_cov, H, Qinv, logdet)


def expected_rss(stats: SufficientStats, e: JointEffects) -> np.ndarray:
    """E_q ||y_i - F_i w - Z_i b_i||^2 per subject (N,)."""
    wm, bm = e.w_mean, e.b_mean
    second_b = e.b_cov + bm[:, :, None] * bm[:, None, :]
    cross = np.einsum("nqp,nqp->n", stats.XtF, e.b_w_cov) + np.einsum("nqp,nq,p->n", stats.XtF, bm, wm)
    return (
        stats.yty
        - 2 * stats.Fty @ wm
        - 2 * np.einsum("nq,nq->n", stats.Xty, bm)
        + np.einsum("p,npr,r->n", wm, stats.FtF, wm)
        + np.einsum("npr,rp->n", stats.FtF, e.w_cov)
        + np.einsum("nqr,nrq->n", stats.XtX, second_b)
        + 2 * cross
    )


class UnstructuredBlocks:
    """q(Sigma) for a block-diagonal Sigma whose blocks are unstructured (Huang-Wand prior each).

    One block of size q is the plain unstructured case.
    """

    def __init__(self, sizes: list[int], cov_scale: float) -> None:
        self.sizes = list(sizes)
        self.slices = [slice(o, o + k) for o, k in zip(np.r_[0, np.cumsum(sizes)[:-1]], sizes)]
        self.priors = [GaussianMixturePrior(k, 1, zero_mean=True, cov_scale=cov_scale) for k in sizes]

    def init(self, b_hat: np.ndarray) -> list:
        return [p.init_params(b_hat[:, sl], np.random.default_rng(0)) for p, sl in zip(self.priors, self.slices)]

    def expectations(self, params: list) -> tuple[np.ndarray, float]:
        """E[Sigma^{-1}] (q, q) and the b-independent part of E[log N(b; 0, Sigma)]."""
        q = sum(self.sizes)
        prec, const = np.zeros((q, q)), 0.0
        for p, par, sl in zip(self.priors, params, self.slices):
            pp, _ = p.path_prior(par)
            prec[sl, sl] = pp.precision[0]
            const += float(pp.const[0])
        return prec, const

    def update(self, params: list, second: np.ndarray, n: int) -> list:
        return [
            p.update(par, PathMoments(np.array([float(n)]), np.zeros((1, k)), second[None, sl, sl]))
            for p, par, sl, k in zip(self.priors, params, self.slices, self.sizes)
        ]

    def elbo(self, params: list) -> float:
        return float(sum(p.elbo(par) for p, par in zip(self.priors, params)))

    def mean(self, params: list) -> np.ndarray:
        q = sum(self.sizes)
        out = np.zeros((q, q))
        for p, par, sl in zip(self.priors, params, self.slices):
            out[sl, sl] = p.point_mixture(par).covs[0]
        return out

    def variance_marginals(self, params: list) -> tuple[np.ndarray, np.ndarray]:
        """Inverse-gamma (shape, rate) of each diagonal element of Sigma under q."""
        shape, rate = [], []
        for par, k in zip(params, self.sizes):  # IW diagonal: IG((df - k + 1) / 2, scale_jj / 2)
            shape += [(float(par.cov.df[0]) - k + 1) / 2] * k
            rate += list(np.diagonal(par.cov.scale[0]) / 2)
        return np.array(shape), np.array(rate)


class ScaledIdentity:
    """q(tau^2) for Sigma = tau^2 I, with tau ~ half-Cauchy(0, cov_scale) (inverse-gamma auxiliary)."""

    def __init__(self, q: int, cov_scale: float) -> None:
        self.q = q
        self.cov_scale = cov_scale

    def init(self, b_hat: np.ndarray) -> tuple[InvGamma, InvGamma]:
        t2 = max(float(np.mean(b_hat**2)), 1e-4)
        shape = 0.5 + 0.5 * b_hat.size
        tau = InvGamma(np.asarray(shape), np.asarray(shape * t2))
        return tau, InvGamma(np.asarray(1.0), np.asarray(1.0 / t2 + 1.0 / self.cov_scale**2))

    def expectations(self, params) -> tuple[np.ndarray, float]:
        tau, _ = params
        return float(tau.mean_inv) * np.eye(self.q), -0.5 * self.q * (LOG_2PI + float(tau.mean_log))

    def update(self, params, second: np.ndarray, n: int):
        _, aux = params
        tau = InvGamma(np.asarray(0.5 + 0.5 * n * self.q), np.asarray(float(aux.mean_inv) + 0.5 * np.trace(second)))
        return tau, InvGamma(np.asarray(1.0), np.asarray(float(tau.mean_inv) + 1.0 / self.cov_scale**2))

    def elbo(self, params) -> float:
        tau, aux = params
        inv_a2 = 1.0 / self.cov_scale**2
        return float(
            ig_expected_logpdf(0.5, aux.mean_inv, -aux.mean_log, tau) + tau.entropy()
            + ig_expected_logpdf(0.5, inv_a2, np.log(inv_a2), aux) + aux.entropy()
        )

    def mean(self, params) -> np.ndarray:
        return float(params[0].mean[()]) * np.eye(self.q)

    def variance_marginals(self, params) -> tuple[np.ndarray, np.ndarray]:
        tau = params[0]
        return np.full(self.q, float(tau.shape)), np.full(self.q, float(tau.rate))


def covariance_factor(structure, cov_scale: float):
    """The q(Sigma) factor matching an lme4-style covariance structure."""
    if structure.kind == "scaled_identity":
        return ScaledIdentity(structure.dim, cov_scale)
    sizes, start, reach = [], 0, -1
    for c in range(structure.dim):  # blocks end where no entry of Lambda links past the column
        reach = max(reach, int(structure.rows[structure.cols == c].max(initial=c)))
        if reach == c:
            sizes.append(c + 1 - start)
            start = c + 1
    return UnstructuredBlocks(sizes, cov_scale)


def _elbo(stats, e: JointEffects, params: VariationalParams, cov, config: VIConfig) -> float:
    lam, const = cov.expectations(params.prior)
    s, lv = float(params.noise.mean_inv), float(params.noise.mean_log)
    n = stats.n_obs
    loglik = float(np.sum(-0.5 * n * (LOG_2PI + lv) - 0.5 * s * expected_rss(stats, e)))
    second_b = e.b_cov + e.b_mean[:, :, None] * e.b_mean[:, None, :]
    log_prior_b = stats.n_subjects * const - 0.5 * float(np.einsum("qr,nrq->", lam, second_b))
    P = stats.dim_fixed
    log_prior_w = (
        -0.5 * P * (LOG_2PI + np.log(config.fixed_var))
        - 0.5 * (e.w_mean @ e.w_mean + np.trace(e.w_cov)) / config.fixed_var
    )
    d = P + stats.n_subjects * stats.dim_random
    entropy = 0.5 * d * (1.0 + LOG_2PI) + 0.5 * e.logdet_cov
    noise_only = VariationalParams(params.noise, params.noise_aux, None, None)
    return loglik + log_prior_b + float(log_prior_w) + entropy + elbo_globals(noise_only, _NoPrior(), config) + cov.elbo(params.prior)


class _NoPrior:
    """Stands in for a random-effects prior with no factors of its own (for :func:`elbo_globals`)."""

    def elbo(self, params) -> float:
        return 0.0


def fit_vb(
    stats: SufficientStats,
    structure=None,
    *,
    max_iter: int = 500,
    tol: float = 1e-9,
    fixed_var: float = 1e4,
    cov_scale: float = 2.5,
    noise_scale: float = 1.0,
) -> VBFit:
    """Coordinate ascent for the LMM's variational posterior, from per-subject sufficient statistics.

    Parameters
    ----------
    stats : SufficientStats (standardised response).
    structure : CovarianceStructure, optional
        Unstructured (default), block-diagonal or scaled-identity Sigma.
    """
    q = stats.dim_random
    if structure is None:
        from .structure import CovarianceStructure

        structure = CovarianceStructure.unstructured(q)
    cov = covariance_factor(structure, cov_scale)
    config = VIConfig(fixed_var=fixed_var, noise_scale=noise_scale)
    b_hat = ridge_estimates(stats)
    noise, aux, _ = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, None, cov.init(b_hat))
    history: list[float] = []
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        lam, _ = cov.expectations(params.prior)
        e = joint_effects(stats, lam, float(params.noise.mean_inv), fixed_var)
        history.append(_elbo(stats, e, params, cov, config))
        if it > 2 and abs(history[-1] - history[-2]) <= tol * abs(history[-1]):
            converged = True
            break
        second_b = (e.b_cov + e.b_mean[:, :, None] * e.b_mean[:, None, :]).sum(0)
        new_cov = cov.update(params.prior, second_b, stats.n_subjects)
        rss = float(expected_rss(stats, e).sum())
        noise = InvGamma(np.asarray(0.5 + 0.5 * stats.n_obs.sum()), np.asarray(float(params.noise_aux.mean_inv) + 0.5 * rss))
        aux = InvGamma(np.asarray(1.0), np.asarray(float(noise.mean_inv) + 1.0 / noise_scale**2))
        params = VariationalParams(noise, aux, None, new_cov)
    lam, _ = cov.expectations(params.prior)
    e = joint_effects(stats, lam, float(params.noise.mean_inv), fixed_var)
    sigma_mean = float(params.noise.mean[()])
    cov_mean = cov.mean(params.prior)
    ll = float(log_marginal(stats, PointMixture(np.ones(1), np.zeros((1, q)), cov_mean[None]), e.w_mean, sigma_mean).sum())
    return VBFit(e, params, cov, history[-1], history, it, converged, ll)


def credible_intervals(fit: VBFit, scale: float, level: float = 0.95) -> dict[str, np.ndarray]:
    """Posterior SDs and equal-tailed intervals (user scale) of w, diag(Sigma) and sigma^2.

    Returns arrays keyed ``w_sd, w_lower, w_upper, re_var_sd, re_var_lower, re_var_upper,
    sigma2_sd, sigma2_lower, sigma2_upper`` (w on the scale of ``scale * w_std``).
    """
    a = (1 - level) / 2
    z = st.norm.ppf(1 - a)
    e = fit.effects
    w_sd = np.sqrt(np.diag(e.w_cov)) * scale
    shape, rate = fit.cov.variance_marginals(fit.params.prior)
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

"""Conditioning on a subject's data when its residual scale is unknown (``noise_df``).

With subject-level residual scales (:mod:`dmlmm.inference.subject_scales`) subject i's residual
variance is ``sigma2_c v_i`` with ``v_i ~ IG(nu/2, nu/2)``. Given the fitted globals, predictions
integrate ``v_i`` out exactly, up to quadrature: per (subject, path) pair,

    p(y_i | c) = int p(y_i | c, v) IG(v; nu/2, nu/2) dv,

and given ``v`` everything is the Gaussian conditioning of :func:`dmlmm.prediction.condition`.
One eigendecomposition per pair makes ``p(y_i | c, v)`` and ``q(b_i | c, v)`` cheap at any ``v``:
with ``S_c = L L'`` and ``L' X_i'X_i L = U diag(lam) U'``, ``p = U'L^{-1}m_c``,
``q = U'L'X_i'(y_i - F_i w)`` and ``s = sigma2_c v``,

    -2 log p(y_i | c, v) = n_i log(2 pi s) + sum_j log(1 + lam_j / s) + |y_i - F_i w|^2 / s
                           + |p|^2 - sum_j (p_j + q_j / s)^2 / (1 + lam_j / s),
    b_i | y_i, c, v ~ N(L U diag(1 / (1 + lam / s)) (p + q / s), L U diag(1 / (1 + lam / s)) U'L').

The integral over ``u = log v`` is adaptive Gauss-Hermite: a coarse grid, refined around the mass
it finds, locates each pair's posterior of ``u`` (its mean and SD), then :data:`N_NODES`
Gauss-Hermite nodes around it. The
posterior is a mixture over (pair, node) components, each Gaussian in b with its own residual
variance ``sigma2_c v_k`` for new observations (``ConditionalMixture.noise_var``).
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammaln, logsumexp, roots_hermite

from ._linalg import cholesky
from .expfam import LOG_2PI
from .prediction import ConditionalMixture, path_sigma2
from .priors.base import PointMixture
from .sufficient import SufficientStats

__all__ = ["N_NODES", "condition_with_scales"]

#: Gauss-Hermite nodes per (subject, path) pair: log p(y_i) within about 1e-8 of adaptive quadrature (16 nodes: 5e-7).
N_NODES = 24
_GRID = np.linspace(-14.0, 14.0, 281)  # log v, for locating each pair's posterior
_NEGLIGIBLE = 1e-12
_CHUNK = 4_000_000  # pairs x grid points x D doubles per chunk when locating the posteriors
_ZOOM_POINTS = 41
_MAX_ZOOMS = 12


def _log_prior(u: np.ndarray, df: float) -> np.ndarray:
    """log density of u = log v with v ~ IG(df/2, df/2) (Jacobian included)."""
    a = 0.5 * df
    return a * np.log(a) - gammaln(a) - a * u - a * np.exp(-u)


def _log_lik(u: np.ndarray, s2: np.ndarray, n: np.ndarray, lam: np.ndarray, p: np.ndarray, q: np.ndarray,
             yty: np.ndarray) -> np.ndarray:
    """log p(y_i | c, v = e^u) per pair (A,) and node (A, K) (u (A, K))."""
    s = s2[:, None] * np.exp(u)  # (A, K)
    ratio = lam[:, None, :] / s[:, :, None]  # (A, K, D)
    pq = p[:, None, :] + q[:, None, :] / s[:, :, None]
    quad = yty[:, None] / s + np.sum(p * p, axis=1)[:, None] - np.sum(pq * pq / (1.0 + ratio), axis=2)
    return -0.5 * (n[:, None] * (LOG_2PI + np.log(s)) + np.sum(np.log1p(ratio), axis=2) + quad)


def _locate(s2, n, lam, p, q, yty, df: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD (A,) of each pair's posterior of u = log v: on the coarse grid first, then on grids of
    :data:`_ZOOM_POINTS` points over the mean +- 8 SD found so far, until every SD spans several steps of
    its grid (a posterior narrower than the coarse grid's step: a subject with many visits, a large nu)."""
    A = len(n)
    grid = np.broadcast_to(_GRID, (A, len(_GRID)))
    mu, sd = _grid_moments(grid, s2, n, lam, p, q, yty, df)
    for _ in range(_MAX_ZOOMS):
        grid = mu[:, None] + sd[:, None] * np.linspace(-8.0, 8.0, _ZOOM_POINTS)[None, :]
        step = grid[:, 1] - grid[:, 0]
        mu_new, sd_new = _grid_moments(grid, s2, n, lam, p, q, yty, df)
        done = sd_new >= 2.0 * step
        mu, sd = mu_new, np.maximum(sd_new, 0.5 * step)
        if done.all():
            break
    return mu, sd


def _grid_moments(grid, s2, n, lam, p, q, yty, df: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and SD of u per pair from its log density on its own grid (A, G), in chunks of pairs."""
    A, G = grid.shape
    mu, sd = np.empty(A), np.empty(A)
    step = max(1, _CHUNK // (G * max(lam.shape[1], 1)))
    for a in range(0, A, step):
        sl = slice(a, a + step)
        u = grid[sl]
        log_post = _log_lik(u, s2[sl], n[sl], lam[sl], p[sl], q[sl], yty[sl]) + _log_prior(u, df)
        pw = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        pw /= pw.sum(axis=1, keepdims=True)
        mu[sl] = np.sum(pw * u, axis=1)
        sd[sl] = np.sqrt(np.maximum(np.sum(pw * (u - mu[sl][:, None]) ** 2, axis=1), 0.0))
    return mu, np.maximum(sd, 0.5 * (grid[:, 1] - grid[:, 0]))


def condition_with_scales(
    stats: SufficientStats, mix: PointMixture, w: np.ndarray, sigma2, df: float, keep_components: bool = True,
    log_weights: np.ndarray | None = None, n_nodes: int = N_NODES,
) -> ConditionalMixture:
    """:func:`dmlmm.prediction.condition` with each subject's residual scale integrated out.

    Parameters as :func:`~dmlmm.prediction.condition` (``sigma2``: each path's residual variance at
    scale 1), plus ``df``, the scales' degrees of freedom nu, and ``n_nodes``, the Gauss-Hermite
    nodes per (subject, path) pair.

    Returns
    -------
    ConditionalMixture whose components are (subject, path, node) triples, with ``noise_var`` (A,).
    """
    N, M, D = stats.n_subjects, len(mix.weights), stats.dim_random
    ii, cc = np.divmod(np.arange(N * M), M)
    s2 = path_sigma2(sigma2, M)[cc]
    L = cholesky(mix.covs, "component covariance")  # (M, D, D)
    xty = stats.Xty - stats.XtF @ w
    yty = stats.yty - 2 * stats.Fty @ w + np.einsum("p,npq,q->n", w, stats.FtF, w)
    A = np.swapaxes(L, 1, 2)[cc] @ stats.XtX[ii] @ L[cc]  # L'X'XL per pair
    lam, U = np.linalg.eigh(A)
    lam = np.maximum(lam, 0.0)
    Ut = np.swapaxes(U, 1, 2)
    p = np.einsum("ade,ae->ad", Ut, np.linalg.solve(L, mix.means[..., None])[..., 0][cc])
    q = np.einsum("ade,ae->ad", Ut, np.einsum("aed,ae->ad", L[cc], xty[ii]))  # U'L'X'(y - Fw)
    n = stats.n_obs[ii].astype(float)
    yv = yty[ii]
    # the posterior of u = log v per pair: located on a coarse grid, then Gauss-Hermite around it
    mu, sd = _locate(s2, n, lam, p, q, yv, df)
    x, h = roots_hermite(n_nodes)
    u = mu[:, None] + np.sqrt(2.0) * sd[:, None] * x[None, :]  # (A, K)
    log_node = (np.log(h) + x**2)[None, :] + np.log(np.sqrt(2.0) * sd)[:, None] \
        + _log_lik(u, s2, n, lam, p, q, yv) + _log_prior(u, df)
    log_pair = logsumexp(log_node, axis=1)  # log p(y_i | c)
    with np.errstate(divide="ignore"):
        logw = np.log(mix.weights)
    joint = ((logw[cc] if log_weights is None else log_weights.reshape(-1)) + log_pair).reshape(N, M)
    lm = logsumexp(joint, axis=1)
    post = np.exp(joint - lm[:, None])
    if not keep_components:
        return ConditionalMixture(lm, post, ii[:0], cc[:0], np.zeros(0), np.zeros((0, D)), np.zeros((0, D, D)),
                                  np.zeros(0))
    weight = post.reshape(-1)[:, None] * np.exp(log_node - log_pair[:, None])  # (A, K)
    a_idx, k_idx = np.nonzero(weight > _NEGLIGIBLE)
    wk = weight[a_idx, k_idx]
    sub = ii[a_idx]
    wk = wk / np.bincount(sub, weights=wk, minlength=N)[sub]
    s = s2[a_idx] * np.exp(u[a_idx, k_idx])
    shrink = 1.0 / (1.0 + lam[a_idx] / s[:, None])  # (B, D)
    LU = L[cc[a_idx]] @ U[a_idx]  # (B, D, D)
    mean = np.einsum("bde,be->bd", LU, shrink * (p[a_idx] + q[a_idx] / s[:, None]))
    cov = (LU * shrink[:, None, :]) @ np.swapaxes(LU, 1, 2)
    return ConditionalMixture(lm, post, sub, cc[a_idx], wk, mean, cov, s)

"""The local (per-subject) step of variational inference, batched over subjects x paths.

Given the expected log prior of b under each path (a quadratic form, see
:mod:`dmlmm.priors.base`) and the current noise / fixed-effect factors, the
optimal ``q(b_i | c)`` is Gaussian with

    precision Q_ic = Lambda_c + E[1/sigma^2] X_i'X_i,
    mean      Q_ic^{-1} (eta_c + E[1/sigma^2] X_i'(y_i - F_i E[w])),

and the optimal ``q(c_i)`` is the softmax over paths of the local evidence
lower bounds, which are closed form (log of a Gaussian integral). Everything is
computed from the per-subject sufficient statistics; cost O(N M D^3) whatever
the n_i, processed in chunks of subjects to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._linalg import cholesky, logsumexp, solve_lower, solve_upper_t
from ..data import SufficientStats
from ..priors.base import PathMoments, PathPrior
from .expfam import LOG_2PI

__all__ = ["NoiseMoments", "LocalResult", "local_step", "residual_stats"]

_MAX_CHUNK_ELEMENTS = 4_000_000  # subjects x paths x D x D doubles per chunk (32 MB)
_ACTIVE = 1e-12  # responsibilities below this contribute nothing measurable to the moments


@dataclass(frozen=True)
class NoiseMoments:
    """Expectations of the noise and fixed-effect factors used by the local step.

    Attributes
    ----------
    prec : E[1 / sigma^2].
    log_var : E[log sigma^2].
    w_mean : (P,) E[w].
    w_cov : (P, P) Cov[w].
    """

    prec: float
    log_var: float
    w_mean: np.ndarray
    w_cov: np.ndarray


@dataclass(frozen=True)
class LocalResult:
    """Output of the local step.

    Attributes
    ----------
    resp : (N, M) q(c_i = c).
    log_evidence : (N,) each subject's local ELBO contribution (log-sum-exp over paths).
    mean_b : (N, D) E_q[b_i].
    quad : (N,) E_q[b_i' X_i'X_i b_i].
    moments : PathMoments, sums over the subjects.
    path_means : (N, M, D) or None, E[b_i | c] (kept only on request).
    """

    resp: np.ndarray
    log_evidence: np.ndarray
    mean_b: np.ndarray
    quad: np.ndarray
    moments: PathMoments
    path_means: np.ndarray | None = None


def residual_stats(stats: SufficientStats, noise: NoiseMoments) -> tuple[np.ndarray, np.ndarray]:
    """X_i'(y_i - F_i E[w]) (N, D) and E||y_i - F_i w||^2 (N,)."""
    wm = noise.w_mean
    xr = stats.Xty - stats.XtF @ wm
    err = (
        stats.yty
        - 2.0 * stats.Fty @ wm
        + np.einsum("p,npq,q->n", wm, stats.FtF, wm)
        + np.einsum("npq,qp->n", stats.FtF, noise.w_cov)
    )
    return xr, err


def local_step(
    stats: SufficientStats,
    prior: PathPrior,
    noise: NoiseMoments,
    hard_assignment: bool = False,
    keep_path_means: bool = False,
) -> LocalResult:
    """Optimal q(c_i) and q(b_i | c_i) for every subject, batched over subjects and paths.

    Parameters
    ----------
    stats : SufficientStats of N subjects.
    prior : PathPrior with M paths.
    noise : NoiseMoments.
    hard_assignment : bool
        Put all of q(c_i) on the single best path (the research code's local step).
    keep_path_means : bool
        Also return E[b_i | c] for all paths (N, M, D).
    """
    N, D, M = stats.n_subjects, stats.dim_random, prior.n_paths
    xr, err = residual_stats(stats, noise)
    s = noise.prec
    const_i = -0.5 * stats.n_obs * (LOG_2PI + noise.log_var) - 0.5 * s * err + 0.5 * D * LOG_2PI
    path_const = prior.log_weight + prior.const

    resp = np.empty((N, M))
    log_ev = np.empty(N)
    mean_b = np.empty((N, D))
    quad = np.empty(N)
    path_means = np.empty((N, M, D)) if keep_path_means else None
    w_sum = np.zeros(M)
    first = np.zeros((M, D))
    second = np.zeros((M, D, D))

    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(1, M * D * D))
    for start in range(0, N, chunk):  # memory chunks of subjects; each chunk fully batched
        sl = slice(start, min(start + chunk, N))
        xtx = stats.XtX[sl]
        Q = prior.precision[None] + s * xtx[:, None]
        g = prior.shift[None] + s * xr[sl][:, None, :]
        chol = cholesky(Q, "local posterior precision")
        half = solve_lower(chol, g)  # L^{-1} g, so g'Q^{-1}g = |half|^2
        logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
        m = solve_upper_t(chol, half)
        elbo_c = path_const[None] + const_i[sl, None] - 0.5 * logdet + 0.5 * np.einsum("nmd,nmd->nm", half, half)
        if hard_assignment:
            best = elbo_c.argmax(axis=1)
            r = np.zeros_like(elbo_c)
            r[np.arange(len(best)), best] = 1.0
            lev = elbo_c[np.arange(len(best)), best]
        else:
            lev = logsumexp(elbo_c, axis=1)
            r = np.exp(elbo_c - lev[:, None])
        # covariances only where the responsibility is not negligible
        ii, cc = np.nonzero(r > _ACTIVE)
        r_act = r[ii, cc]
        li = np.linalg.inv(chol[ii, cc])
        cov = np.swapaxes(li, -1, -2) @ li
        m_act = m[ii, cc]
        sec = cov + m_act[:, :, None] * m_act[:, None, :]
        wsec = r_act[:, None, None] * sec
        resp[sl] = r
        log_ev[sl] = lev
        mean_b[sl] = np.einsum("nm,nmd->nd", r, m)
        quad[sl] = np.bincount(ii, weights=np.einsum("ade,aed->a", wsec, xtx[ii]), minlength=len(r))
        if path_means is not None:
            path_means[sl] = m
        w_sum += r.sum(axis=0)
        first += np.einsum("nm,nmd->md", r, m)
        order = np.argsort(cc, kind="stable")
        starts = np.flatnonzero(np.r_[True, np.diff(cc[order]) != 0]) if len(order) else np.zeros(0, int)
        if len(order):
            second[cc[order][starts]] += np.add.reduceat(wsec[order], starts, axis=0)
    return LocalResult(resp, log_ev, mean_b, quad, PathMoments(w_sum, first, second), path_means)

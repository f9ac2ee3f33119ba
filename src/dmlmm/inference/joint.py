"""The local step with the fixed effects kept jointly Gaussian with the random effects.

With one path (the linear mixed model's Gaussian prior) the optimal joint
``q(w, b_1, ..., b_N)`` given the other factors is Gaussian and cheap: its
precision is an arrowhead (a w block, one block per subject, and the cross terms
``E[1/sigma^2] F_i'X_i``), reduced onto w by a Schur complement batched over
subjects::

    Q_i = Lambda + s X_i'X_i,                 H_i = s Q_i^{-1} X_i'F_i            (D, P)
    prec(w) = I / fixed_var + s sum_i F_i'F_i - s sum_i F_i'X_i H_i
    shift(w) = s sum_i F_i'y_i - sum_i H_i'(eta + s X_i'y_i)
    E[b_i] = Q_i^{-1}(eta + s X_i'y_i) - H_i E[w],  Cov(b_i | w) = Q_i^{-1},  Cov(b_i, w) = -H_i Cov(w)

(``Lambda``, ``eta``: the path's prior precision and shift, ``s = E[1/sigma^2]``). A
factorised ``q(w) q(b)`` would understate the fixed effects' uncertainty badly
when the random design shares columns with the fixed design (random slopes).

The joint entropy splits as ``H[q(w)] + sum_i H[q(b_i | w)]``, so each subject's
``log_evidence`` holds its expected log likelihood and log prior under the joint
plus ``H[q(b_i | w)]``; the engine adds ``q(w)``'s own terms through
:func:`~dmlmm.inference.engine.elbo_globals`. The per-path sums of
:class:`~dmlmm.inference.local.LocalResult` carry the cross-covariance of ``w`` and
``b_i``, so the shared noise update (:func:`~dmlmm.inference.noise.path_rss`) gets the
exact expected residual sum of squares.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._linalg import row_chunks, spd_inv_logdet, stack_inv_logdet, sym
from ..sufficient import SufficientStats
from ..expfam import LOG_2PI, Gaussian
from ..priors.base import PathMoments, PathPrior
from .local import LocalResult, NoiseMoments

__all__ = ["JointEffects", "JointLocalResult", "joint_effects", "joint_local_step"]


@dataclass(frozen=True)
class JointEffects:
    """q(w, b): means and the blocks of the joint covariance that are used.

    Attributes
    ----------
    w_mean : (P,), w_cov : (P, P)
    b_mean : (N, D), b_cov : (N, D, D) marginal covariances of each b_i
    b_w_cov : (N, D, P) Cov(b_i, w)
    sensitivity : (N, D, P) H_i: E[b_i | w] moves by -H_i d when w moves by d
    cond_cov : (N, D, D) Cov(b_i | w) = Q_i^{-1}
    cond_logdet : (N,) log det Cov(b_i | w)
    w_prec : (P, P), w_shift : (P,) the natural parameters of q(w)
    """

    w_mean: np.ndarray
    w_cov: np.ndarray
    b_mean: np.ndarray
    b_cov: np.ndarray
    b_w_cov: np.ndarray
    sensitivity: np.ndarray
    cond_cov: np.ndarray
    cond_logdet: np.ndarray
    w_prec: np.ndarray
    w_shift: np.ndarray

    @property
    def logdet_cov(self) -> float:
        """log det of the joint covariance of (w, b_1, ..., b_N)."""
        logdet_w = spd_inv_logdet(sym(self.w_prec), "fixed-effects posterior precision")[1] if len(self.w_mean) else 0.0
        return float(np.sum(self.cond_logdet)) - float(logdet_w)


@dataclass(frozen=True)
class JointLocalResult(LocalResult):
    """:class:`~dmlmm.inference.local.LocalResult` of the joint step, with ``q(w)`` and the joint's blocks."""

    fixed: Gaussian | None = None
    effects: JointEffects | None = None


#: Doubles per (chunk, D, max(D, P)) temporary of the joint step (about 4 MB): chunks of subjects
#: small enough to stay in cache and to be recycled by the allocator rather than mapped afresh.
_CHUNK_ELEMENTS = 500_000


def _chunks(stats: SufficientStats) -> list[tuple[int, int]]:
    """Chunks of subjects whose (chunk, D, max(D, P)) temporaries hold about ``_CHUNK_ELEMENTS`` doubles."""
    width = stats.dim_random * max(stats.dim_random, stats.dim_fixed, 1)
    return row_chunks(stats.n_subjects, _CHUNK_ELEMENTS // width)


def joint_effects(stats: SufficientStats, re_prec: np.ndarray, re_shift: np.ndarray, noise_prec: float,
                  fixed_var: float) -> JointEffects:
    """Optimal joint Gaussian q(w, b) given the prior's E[precision] (D, D) and shift (D,) of b and E[1/sigma^2].

    Two passes over chunks of subjects (each fully batched): the first gives each subject's
    ``Q_i^{-1}``, ``H_i`` and ``E[b_i | w = 0]`` and sums the Schur complement onto w; the second
    the moments given ``q(w)``.
    """
    s = float(noise_prec)
    N, D, P = stats.n_subjects, stats.dim_random, stats.dim_fixed
    Qinv = np.empty((N, D, D))
    cond_logdet = np.empty(N)
    H = np.empty((N, D, P))
    b_cond = np.empty((N, D))
    w_prec = np.eye(P) / fixed_var + s * stats.FtF.sum(0)
    w_shift = s * stats.Fty.sum(0)
    chunks = _chunks(stats)
    for a, b in chunks:
        Qi, logdet_Q = stack_inv_logdet(re_prec[None] + s * stats.XtX[a:b], "random-effects posterior precision")
        Hc = Qi @ (s * stats.XtF[a:b])  # (n, D, P)
        bx = re_shift[None] + s * stats.Xty[a:b]  # (n, D)
        b_cond[a:b] = (Qi @ bx[..., None])[..., 0]  # E[b_i | w = 0]
        rows = (b - a) * D  # explicit sizes: reshape(-1, 0) is ambiguous without fixed effects
        w_prec -= s * stats.XtF[a:b].reshape(rows, P).T @ Hc.reshape(rows, P)
        w_shift -= Hc.reshape(rows, P).T @ bx.reshape(-1)
        Qinv[a:b], cond_logdet[a:b], H[a:b] = Qi, -logdet_Q, Hc
    w_prec = sym(w_prec)
    if P:
        w_cov, _ = spd_inv_logdet(w_prec, "fixed-effects posterior precision")
        w_mean = w_cov @ w_shift
    else:
        w_cov, w_mean = np.zeros((0, 0)), np.zeros(0)
    b_mean = b_cond - (H.reshape(N * D, P) @ w_mean).reshape(N, D)
    b_w_cov = -(H.reshape(N * D, P) @ w_cov).reshape(N, D, P)
    b_cov = np.empty((N, D, D))
    for a, b in chunks:
        b_cov[a:b] = Qinv[a:b] - b_w_cov[a:b] @ np.swapaxes(H[a:b], 1, 2)  # Q^{-1} + H Cov(w) H'
    return JointEffects(w_mean, w_cov, b_mean, b_cov, b_w_cov, H, Qinv, cond_logdet, w_prec, w_shift)


def expected_rss(stats: SufficientStats, e: JointEffects) -> np.ndarray:
    """E_q ||y_i - F_i w - X_i b_i||^2 per subject (N,) under the joint q(w, b)."""
    out = np.empty(stats.n_subjects)
    for a, b in _chunks(stats):
        second = e.b_cov[a:b] + e.b_mean[a:b, :, None] * e.b_mean[a:b, None, :]
        out[a:b] = _expected_rss(stats, e, a, b, second)
    return out


def _expected_rss(stats: SufficientStats, e: JointEffects, a: int, b: int, second: np.ndarray) -> np.ndarray:
    """:func:`expected_rss` of subjects a..b, given their E[b_i b_i'] ``second`` (n, D, D)."""
    wm, bm = e.w_mean, e.b_mean[a:b]
    XtF, FtF = stats.XtF[a:b], stats.FtF[a:b]
    cross = np.einsum("nqp,nqp->n", XtF, e.b_w_cov[a:b]) + np.einsum("nqp,nq,p->n", XtF, bm, wm)
    return (
        stats.yty[a:b]
        - 2 * stats.Fty[a:b] @ wm
        - 2 * np.einsum("nq,nq->n", stats.Xty[a:b], bm)
        + np.einsum("p,npr,r->n", wm, FtF, wm)
        + np.einsum("npr,rp->n", FtF, e.w_cov)
        + np.einsum("nqr,nrq->n", stats.XtX[a:b], second)
        + 2 * cross
    )


def joint_local_step(stats: SufficientStats, prior: PathPrior, noise: NoiseMoments, fixed_var: float) -> JointLocalResult:
    """The optimal q(w, b_1, ..., b_N) for a one-path prior, as the engine's local step.

    Parameters
    ----------
    stats : SufficientStats of N subjects (in memory).
    prior : PathPrior with one path.
    noise : NoiseMoments with one shared noise factor (its ``w_mean`` / ``w_cov`` are not used:
        ``q(w)`` is part of this step's output).
    fixed_var : prior variance of each fixed effect.
    """
    if prior.n_paths != 1 or np.ndim(noise.prec) > 0:
        raise ValueError("the joint fixed/random-effects step needs a one-path prior and one shared noise factor")
    N, D, P = stats.n_subjects, stats.dim_random, stats.dim_fixed
    lam, eta = prior.precision[0], prior.shift[0]
    s, lv = float(noise.prec), float(noise.log_var)
    e = joint_effects(stats, lam, eta, s, fixed_var)
    log_ev = np.empty(N)
    second_sum = np.zeros((D, D))
    quad = 0.0
    for a, b in _chunks(stats):  # per subject, and the sums over subjects, chunk by chunk
        bm = e.b_mean[a:b]
        second = e.b_cov[a:b] + bm[:, :, None] * bm[:, None, :]  # (n, D, D)
        lik = -0.5 * stats.n_obs[a:b] * (LOG_2PI + lv) - 0.5 * s * _expected_rss(stats, e, a, b, second)
        log_prior = prior.log_weight[0] + prior.const[0] + bm @ eta - 0.5 * np.einsum("qr,nrq->n", lam, second)
        entropy = 0.5 * (D * (1.0 + LOG_2PI) + e.cond_logdet[a:b])
        log_ev[a:b] = lik + log_prior + entropy
        second_sum += second.sum(0)
        quad += np.einsum("nqr,nrq->", stats.XtX[a:b], second) + 2.0 * np.einsum("nqp,nqp->", stats.XtF[a:b], e.b_w_cov[a:b])
    moments = PathMoments(np.array([float(N)]), e.b_mean.sum(0)[None], second_sum[None])
    xty_b = np.einsum("nq,nq->", stats.Xty, e.b_mean)
    xtf_b = (e.b_mean.reshape(1, -1) @ stats.XtF.reshape(N * D, P)) if P else np.zeros((1, 0))
    fixed = Gaussian(e.w_prec, e.w_shift) if P else None
    return JointLocalResult(
        np.ones((N, 1)), log_ev, e.b_mean, None, moments,
        np.array([quad]), np.array([xty_b]), xtf_b, fixed=fixed, effects=e,
    )

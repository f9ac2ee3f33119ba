"""The residual variance: one shared sigma^2, or one sigma^2_k per first-layer component.

With ``noise="cluster"`` every first-layer component k has its own residual
variance with the shared one's prior, ``sigma_k ~ half-Cauchy(0, noise_scale)``
through ``sigma^2_k | a_k ~ IG(1/2, 1/a_k)``, ``a_k ~ IG(1/2, 1/noise_scale^2)``.
A path uses the variance of its first-layer component. The factors are the same
:class:`~dmlmm.expfam.InvGamma` containers as the shared noise, with
parameters of shape (K_1,) instead of scalars, so the variational parameters keep
one container (:class:`~dmlmm.inference.engine.VariationalParams`).

The conjugate update of sigma^2_k needs the responsibility-weighted residual sums
of squares of the paths through k: :func:`path_rss` builds them from the per-path
sums of the local step (:class:`~dmlmm.inference.local.LocalResult`).
"""

from __future__ import annotations

import numpy as np

from ..sufficient import SufficientStats
from ..expfam import InvGamma, ig_expected_logpdf
from .local import LocalResult

__all__ = [
    "NOISE_KINDS", "is_per_cluster", "path_groups", "per_cluster", "take_groups", "path_rss",
    "noise_target", "noise_elbo", "empty_noise_cost",
]

NOISE_KINDS = ("shared", "cluster")


def is_per_cluster(noise: InvGamma) -> bool:
    """Whether ``noise`` holds one factor per first-layer component (else one shared factor)."""
    return np.ndim(noise.shape) > 0


def path_groups(noise: InvGamma, path_components: np.ndarray) -> np.ndarray:
    """Index of each path's noise factor (M,): its first-layer component, or 0 for shared noise."""
    if is_per_cluster(noise):
        return np.asarray(path_components[:, 0], dtype=int)
    return np.zeros(len(path_components), dtype=int)


def per_cluster(noise: InvGamma, aux: InvGamma, n_groups: int) -> tuple[InvGamma, InvGamma]:
    """Shared starting factors copied to ``n_groups`` first-layer components."""
    def rep(q: InvGamma) -> InvGamma:
        return InvGamma(np.full(n_groups, float(q.shape)), np.full(n_groups, float(q.rate)))

    return rep(noise), rep(aux)


def take_groups(noise: InvGamma, aux: InvGamma, keep: np.ndarray) -> tuple[InvGamma, InvGamma]:
    """Only the factors of the first-layer components kept (shared noise is returned as is)."""
    if not is_per_cluster(noise):
        return noise, aux
    k = np.asarray(keep, dtype=bool)
    return InvGamma(noise.shape[k], noise.rate[k]), InvGamma(aux.shape[k], aux.rate[k])


def path_rss(stats: SufficientStats, local: LocalResult, w_mean: np.ndarray, w_cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per path c: sum_i r_ic E||y_i - F_i w - X_i b_i||^2 under q(b_i | c) q(w), and sum_i r_ic n_i.

    Both (M,). Summed over paths they are the shared noise's residual sum of squares and n.
    """
    r = local.resp
    FtF_w = np.einsum("npq,q->np", stats.FtF, w_mean)
    err = stats.yty - 2.0 * stats.Fty @ w_mean + FtF_w @ w_mean + np.einsum("npq,qp->n", stats.FtF, w_cov)
    rss = r.T @ err - 2.0 * (local.path_xty_b - local.path_xtf_b @ w_mean) + local.path_quad
    # an expected sum of squares, >= 0; expanded as above it can cancel to a small negative number when
    # the residuals are tiny next to y (one response 10^9 times the others': a negative noise variance
    # and NaNs followed)
    return np.maximum(rss, 0.0), r.T @ stats.n_obs


def noise_target(
    noise: InvGamma, aux: InvGamma, groups: np.ndarray, rss: np.ndarray, n_obs: np.ndarray, scale: float
) -> InvGamma:
    """The optimal q(sigma^2) (per group) given the auxiliaries and the per-path sums, as if scaled to N."""
    G = int(np.size(noise.shape))
    rss_g = np.bincount(groups, weights=rss, minlength=G)
    n_g = np.bincount(groups, weights=n_obs, minlength=G)
    shape = (0.5 + 0.5 * scale * n_g).reshape(np.shape(noise.shape))
    rate = (aux.mean_inv + 0.5 * scale * rss_g.reshape(np.shape(noise.shape)))
    return InvGamma(np.asarray(shape), np.asarray(rate))


def noise_elbo(noise: InvGamma, aux: InvGamma, noise_scale: float) -> float:
    """E_q[log p(sigma^2, a)] - E_q[log q(sigma^2, a)], summed over the noise factors."""
    inv_a2 = 1.0 / noise_scale**2
    total = ig_expected_logpdf(0.5, aux.mean_inv, -aux.mean_log, noise) + noise.entropy()
    total = total + ig_expected_logpdf(0.5, inv_a2, np.log(inv_a2), aux) + aux.entropy()
    return float(np.sum(total))


def empty_noise_cost(noise_scale: float) -> float:
    """-ELBO of one data-free noise factor pair at its mean-field optimum (for delete moves).

    Without data, q(sigma^2) = IG(1/2, E[1/a]) and q(a) = IG(1, E[1/sigma^2] + 1/A^2) meet at
    E[1/a] = A^2 / 2.
    """
    a2 = noise_scale**2
    noise = InvGamma(np.asarray(0.5), np.asarray(a2 / 2.0))  # rate E[1/a] = A^2 / 2
    aux = InvGamma(np.asarray(1.0), np.asarray(float(noise.mean_inv) + 1.0 / a2))
    return -noise_elbo(noise, aux, noise_scale)

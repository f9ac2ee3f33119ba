"""Huang and Wand's (2013) prior of a covariance matrix, as conjugate variational factors.

    Sigma_k | a_k ~ IW(nu + P - 1, 2 nu diag(1 / a_k)),   a_kp ~ IG(1/2, rate0_kp)

(half-t(nu) marginals on the standard deviations, uniform marginals on correlations for nu = 2),
with q(Sigma_k) inverse-Wishart and q(a_k) inverse-gamma. The mixture of LMMs' covariances
(:mod:`dmlmm.priors.gaussian`) and the deep mixture's polynomial block (:mod:`dmlmm.priors.dmfa`,
``polynomial_covariance="full"``) both use it: these pure functions are their shared updates and
ELBO terms. Shapes: K stacked matrices of size P.
"""

from __future__ import annotations

import numpy as np

from .._linalg import sym
from ..expfam import InvGamma, InvWishart, ig_expected_logpdf

__all__ = ["hw_cov_target", "hw_aux_target", "hw_elbo_terms"]


def hw_cov_target(aux: InvGamma, nu: float, counts: np.ndarray, scatter: np.ndarray) -> InvWishart:
    """q(Sigma_k) given q(a_k) (K, P) and the expected scatter (K, P, P) of ``counts`` (K,) observations of it."""
    P = scatter.shape[-1]
    scale0 = 2.0 * nu * np.eye(P) * aux.mean_inv[:, None, :]
    return InvWishart(nu + P - 1.0 + counts, sym(scale0 + scatter))


def hw_aux_target(e_prec: np.ndarray, nu: float, rate0) -> InvGamma:
    """q(a_k) (K, P) given E[Sigma_k^{-1}] (K, P, P); ``rate0``: the rate of a_kp's prior (scalar or (K, P))."""
    diag = np.diagonal(e_prec, axis1=-2, axis2=-1)
    return InvGamma(np.full(diag.shape, 0.5 * (nu + diag.shape[-1])), nu * diag + rate0)


def hw_elbo_terms(q: InvWishart, aux: InvGamma, nu: float, rate0, log_rate0) -> tuple[float, float, float]:
    """E[log p(Sigma | a)], H[q(Sigma)] and E[log p(a)] + H[q(a)], each summed over the K matrices.

    ``rate0``, ``log_rate0``: E[rate] and E[log rate] of a's prior (scalars or (K, P)). Three terms, so that a
    caller adding them to a running total in turn keeps its order of summation."""
    P = q.scale.shape[-1]
    e_prec, e_logdet_prec, _ = q.expectations()
    e_scale0 = 2.0 * nu * np.eye(P) * aux.mean_inv[:, None, :]
    e_logdet_scale0 = P * np.log(2.0 * nu) - aux.mean_log.sum(-1)
    return (float(np.sum(q.expected_logpdf(nu + P - 1.0, e_logdet_scale0, e_scale0, e_prec, e_logdet_prec))),
            float(np.sum(q.entropy())),
            float(np.sum(ig_expected_logpdf(0.5, rate0, log_rate0, aux) + aux.entropy())))

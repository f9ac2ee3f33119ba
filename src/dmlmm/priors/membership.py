"""Class membership that depends on baseline covariates (lcmm's ``classmb``).

Subject i, with baseline covariates z_i (Q,) (an intercept and the standardised
covariates), falls in first-layer component k by a sequence of logistic "sticks"
(the continuation-ratio or stick-breaking logit):

    p(c_i1 = k | Gamma) = sigma(eta_ik) prod_{j<k} sigma(-eta_ij),   eta_ij = gamma_j' z_i,
    (the last component takes what is left: no stick of its own),
    gamma_j ~ N(0, scale^2 I),   j = 1 .. K - 1.

So gamma_j holds the log-odds of component j against the later ones, among the subjects not
in an earlier one. Deeper layers keep their Dirichlet weights.

The variational factor q(gamma_j) is Gaussian, one per stick. The expected log-sigmoid has no
closed form; Jaakkola and Jordan's bound (2000) gives one that is exact at its expansion point:

    log sigma(x) >= log sigma(xi) + (x - xi) / 2 - lambda(xi) (x^2 - xi^2),
    lambda(xi) = tanh(xi / 2) / (4 xi),

and the same with -x for log sigma(-x). At xi_ij^2 = E[eta_ij^2] the bound on a term is
log sigma(xi) - xi / 2 +- E[eta_ij] / 2, which is what the local step adds to each path's log
weight. With it the ELBO is a true lower bound; q(gamma_j) given xi is Gaussian in closed form
and xi^2 = E[eta^2] maximises the bound for fixed q, so coordinate ascent stays monotone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_expit

from ..expfam import LOG_2PI, Gaussian, blend, gaussian_entropy

__all__ = [
    "membership_init", "membership_log_weights", "membership_sums", "membership_from_sums", "membership_elbo",
    "membership_prune", "stick_log_probs", "jj_lambda", "membership_laplace_cov", "first_layer_resp",
    "separated_sticks", "MembershipPathWeights",
]


def first_layer_resp(resp: np.ndarray, first: np.ndarray) -> np.ndarray:
    """q(c_i1 = k) (N, K_1) from the path responsibilities ``resp`` (N, M) and each path's first-layer
    component ``first`` (M,)."""
    return resp @ np.eye(int(first.max()) + 1)[first]


def _stop_and_pass(resp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per stick j (N, K - 1): the weight of stopping there (r_j) and of passing it (sum_{k>j} r_k)."""
    K = resp.shape[1]
    return resp[:, : K - 1], np.cumsum(resp[:, ::-1], axis=1)[:, ::-1][:, 1:]


def jj_lambda(xi: np.ndarray) -> np.ndarray:
    """lambda(xi) = tanh(xi / 2) / (4 xi), with its limit 1/8 at 0."""
    xi = np.abs(xi)
    small = xi < 1e-6
    safe = np.where(small, 1.0, xi)
    return np.where(small, 0.125 - xi**2 / 96.0, np.tanh(safe / 2.0) / (4.0 * safe))


def _stick_sum(stop: np.ndarray, passing: np.ndarray) -> np.ndarray:
    """Per component k (N, K): sum_{j<k} passing_j + stop_k (no stop term for the last)."""
    N, S = stop.shape
    before = np.hstack([np.zeros((N, 1)), np.cumsum(passing, axis=1)])  # (N, S + 1)
    return before + np.hstack([stop, np.zeros((N, 1))])


def stick_log_probs(eta: np.ndarray) -> np.ndarray:
    """log p(c = k) (N, K) from the sticks' log-odds ``eta`` (N, K - 1)."""
    return _stick_sum(log_expit(eta), log_expit(-eta))


def _eta_moments(q: Gaussian, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[eta_ij] and E[eta_ij^2], each (N, K - 1)."""
    mean, cov, _ = q.moments()  # (S, Q), (S, Q, Q)
    m = Z @ mean.T
    var = np.einsum("nq,sqr,nr->ns", Z, cov, Z)
    return m, m**2 + var


def membership_log_weights(q: Gaussian, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bound on E[log p(c_i1 = k)] (N, K) at the tight expansion points, and those points xi (N, K - 1).

    Parameters
    ----------
    q : Gaussian, one per stick: precision (K - 1, Q, Q), shift (K - 1, Q).
    Z : (N, Q) baseline covariates (first column the intercept).
    """
    m, m2 = _eta_moments(q, Z)
    xi = np.sqrt(m2)
    base = log_expit(xi) - 0.5 * xi  # the lambda terms cancel at xi^2 = E[eta^2]
    return _stick_sum(base + 0.5 * m, base - 0.5 * m), xi


def membership_sums(Z: np.ndarray, resp: np.ndarray, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The data's part of every stick's natural parameters, sums over the subjects of ``Z``:
    ``sum_i 2 reach_ij lambda(xi_ij) z_i z_i'`` (K - 1, Q, Q) and ``sum_i (stop_ij - pass_ij) z_i / 2`` (K - 1, Q).

    Sums over disjoint sets of subjects add up (a Dask fit's partitions, :mod:`dmlmm.distributed`).

    Parameters
    ----------
    Z : (N, Q); resp : (N, K) q(c_i1 = k); xi : (N, K - 1) expansion points.
    """
    stop, passing = _stop_and_pass(resp)
    reach = stop + passing
    return (np.einsum("ns,nq,nr->sqr", 2.0 * reach * jj_lambda(xi), Z, Z),
            np.einsum("ns,nq->sq", 0.5 * (stop - passing), Z))


def membership_from_sums(
    q: Gaussian, sums: tuple[np.ndarray, np.ndarray], scale: float, weight: float = 1.0, rho: float = 1.0,
) -> Gaussian:
    """Optimal q(gamma_j) of every stick from :func:`membership_sums` over the subjects (``weight`` = N / |batch|
    for minibatches; a natural-gradient step ``rho`` < 1 from the current ``q``); ``scale`` is the prior SD of
    every coefficient."""
    prec_data, shift_data = sums
    Q = prec_data.shape[-1]
    return blend(q, Gaussian(np.eye(Q) / scale**2 + weight * prec_data, weight * shift_data), rho)


@dataclass(frozen=True)
class MembershipPathWeights:
    """What the local step needs of the membership model, wherever the subjects' covariates are: q(gamma), each
    path's first-layer component and the first layer's E[log pi_k], which the membership bound replaces in the
    paths' log weights (:meth:`of`). Small (no per-subject array): a Dask fit sends it to its workers.

    Attributes
    ----------
    q : Gaussian, one per stick; first : (M,) each path's first-layer component; mean_log : (K,) E[log pi_k].
    """

    q: Gaussian
    first: np.ndarray
    mean_log: np.ndarray

    def of(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per (subject, path) additions to the log weights (N, M), and the expansion points (N, K - 1), of the
        subjects with covariates ``Z`` (N, Q); a ValueError when the statistics carry none (``Z`` None)."""
        if Z is None:
            raise ValueError("the model has a membership model but the statistics carry no membership covariates")
        lw, psi = membership_log_weights(self.q, Z)
        return lw[:, self.first] - self.mean_log[self.first], psi


def membership_elbo(q: Gaussian, scale: float) -> float:
    """E_q[log N(gamma; 0, scale^2 I)] + H[q(gamma)], summed over the sticks."""
    mean, cov, logdet = q.moments()
    Q = mean.shape[-1]
    quad = (mean**2).sum(axis=-1) + np.trace(cov, axis1=-2, axis2=-1)
    return float(np.sum(-0.5 * Q * (LOG_2PI + 2 * np.log(scale)) - 0.5 * quad / scale**2 + gaussian_entropy(logdet, Q)))


def membership_init(K: int, Q: int, scale: float) -> Gaussian:
    """The prior over the K - 1 sticks' coefficients (every subject with the same probabilities)."""
    return Gaussian(np.broadcast_to(np.eye(Q) / scale**2, (K - 1, Q, Q)).copy(), np.zeros((K - 1, Q)))


def membership_prune(q: Gaussian, keep: np.ndarray) -> Gaussian:
    """q after the components outside ``keep`` (K,) bool were dropped.

    The kept components keep their sticks, except the new last one, which takes what is left.
    """
    kept = np.flatnonzero(keep)
    sticks = kept[:-1]  # all below the old last component, which has no stick
    return Gaussian(q.precision[sticks], q.shift[sticks])


def membership_laplace_cov(q: Gaussian, Z: np.ndarray, resp: np.ndarray, scale: float) -> np.ndarray:
    """Covariance of each stick's coefficients (K - 1, Q, Q) from the curvature at the posterior mean.

    The inverse of the prior precision plus sum_i reach_ij sigma(eta_ij)(1 - sigma(eta_ij)) z_i z_i',
    the Hessian of the expected log-likelihood given the responsibilities (a Laplace approximation).
    q's own covariances come from the Jaakkola-Jordan curvature 2 lambda(xi) >= sigma(1 - sigma),
    which makes them too narrow for reporting.
    """
    mean = q.moments()[0]
    eta = Z @ mean.T  # (N, S)
    stop, passing = _stop_and_pass(resp)
    reach = stop + passing
    p = np.exp(log_expit(eta))
    w = reach * p * (1.0 - p)
    H = np.eye(Z.shape[1]) / scale**2 + np.einsum("ns,nq,nr->sqr", w, Z, Z)
    return np.linalg.inv(H)


#: A subject's log-odds beyond which the unpenalised fit counts as separated (a probability of 3e-7 or
#: 1 - 3e-7 for a subject that the likelihood fits exactly: it would take it to 0 or 1 without a prior).
SEPARATION_LOGIT = 15.0


def separated_sticks(Z: np.ndarray, resp: np.ndarray, max_iter: int = 100) -> dict[int, list[int]]:
    """The sticks whose covariates separate the groups (almost) perfectly, each with the columns of ``Z`` along
    which the fit runs away: the likelihood alone has no finite maximum, so those coefficients' size and
    interval come from the prior.

    Per stick j, the logistic regression of stopping there (``r_ij``) against passing it (``sum_{k>j} r_ik``),
    weighted by the subjects' reach, fitted without a prior by Newton's method with step halving; separated
    when some subject's log-odds pass :data:`SEPARATION_LOGIT` (without separation the likelihood cannot
    fit one subject's class exactly, and only an extreme covariate value with a very strong effect comes
    near). The columns named are those that carry the last steps of the fit (its
    direction of escape), scaled by their largest value. ``Z`` (N, Q): the intercept and the standardised
    covariates; ``resp`` (N, K): first-layer responsibilities.
    """
    stop, passing = _stop_and_pass(resp)
    out = {}
    for j in range(stop.shape[1]):
        w = stop[:, j] + passing[:, j]
        if w.sum() <= 1e-8 or Z.shape[1] < 2:
            continue
        y = np.clip(stop[:, j] / np.maximum(w, 1e-300), 0.0, 1.0)
        cols = _escape_columns(Z, y, w, max_iter)
        if cols:
            out[j] = cols
    return out


def _escape_columns(Z: np.ndarray, y: np.ndarray, w: np.ndarray, max_iter: int) -> list[int]:
    """The columns of ``Z`` (N, Q) but the first along which the weighted maximum-likelihood logistic fit of
    ``y`` (N,) escapes to infinity (none when no subject's log-odds pass :data:`SEPARATION_LOGIT`)."""

    def loglik(g):
        eta = Z @ g
        return float(w @ (y * log_expit(eta) + (1.0 - y) * log_expit(-eta)))

    g = np.zeros(Z.shape[1])
    ll, escape_from = loglik(g), None
    for _ in range(max_iter):
        p = np.exp(log_expit(Z @ g))
        grad = Z.T @ (w * (y - p))
        H = (Z * (w * p * (1.0 - p))[:, None]).T @ Z + 1e-9 * np.eye(Z.shape[1])
        step = np.linalg.lstsq(H, grad, rcond=None)[0]
        t = 1.0
        while t > 1e-6 and loglik(g + t * step) < ll - 1e-12:
            t /= 2.0
        before, g = g, g + t * step
        new = loglik(g)
        if escape_from is None and np.max(np.abs(Z @ g)[w > 1e-6], initial=0.0) > 0.5 * SEPARATION_LOGIT:
            escape_from = before
        if abs(new - ll) < 1e-10 * (1.0 + abs(ll)):
            break
        ll = new
    if escape_from is None or np.max(np.abs(Z @ g)[w > 1e-6], initial=0.0) <= SEPARATION_LOGIT:
        return []
    reach = np.abs(g - escape_from)[1:] * np.max(np.abs(Z[:, 1:]), axis=0)
    if reach.max() <= 1e-6 * (1.0 + np.abs(g - escape_from)[0]):  # the intercept alone escapes: every subject that
        return []  # reaches the stick stops there (a split the covariates play no part in)
    return [int(q) + 1 for q in np.flatnonzero(reach >= 0.25 * reach.max())]

"""The translation move: each first-layer component mean and its subjects' random effects moved together.

Mean-field coordinate ascent updates q(mu_k) given the subjects' q(b_i) and q(b_i) given q(mu_k).
Where the subjects scatter little around their component in some direction (a small variance of
Sigma_k there, e.g. the rough coordinates of a P-spline covariance when the subjects' curves differ
by a line), each b_i is pinned to mu_k in that direction and mu_k to the mean of the b_i: each
iteration moves both by a small fraction of the way the data pull them, the classic slow mode of a
centred hierarchical model. Measured: ``MixtureLMM(1, covariance="pspline")`` on 200 subjects with
25 visits and 30 functions, whose curves differ by a level and a trend, had not converged after 1000
iterations (ELBO 7724, rising by 1.5 nats per iteration); the full covariance converged in 133 to 12235,
so ``covariance="auto"`` chose it.

The move (parameter expansion in the sense of Qi and Jaakkola 2007, here a translation): after the
global updates, shift E[mu_k] by delta_k and every q(b_i | c_i = c) of the paths c through
component k by the same delta_k. Nothing in b_i - mu_k changes, so the prior terms of b (and of
the deeper latents) and all entropies stay; what changes is quadratic in delta:

    E[log p(y | b, w, sigma^2)]:  sum_c sum_i r_ic E[1/sigma_c^2] (delta' X_i'(y_i - F_i E[w] - X_i E[b_i|c])
                                                                    - delta' X_i'X_i delta / 2)
    E[log p(mu_k)]:               -(E[mu_k] + delta)' diag(p_k) (E[mu_k] + delta) / 2

with ``p_k`` the expected prior precision of mu_k. Its maximiser is

    delta_k = (sum_{c in k} s_c G_c + diag(p_k))^{-1} (sum_{c in k} s_c g_c - p_k * E[mu_k]),
    G_c = sum_i r_ic X_i'X_i,   g_c = sum_i r_ic X_i'(y_i - F_i E[w] - X_i E[b_i|c]),

at the updated E[1/sigma_c^2] = s_c and E[w]. g_c needs no per-subject quantity: the local step's
q(b_i | c) is optimal at its path prior (precision Lambda_c, shift h_c) and noise s'_c, fixed
effects w', so s'_c (X_i'(y_i - F_i w') - X_i'X_i E[b_i|c]) = Lambda_c E[b_i|c] - h_c, and

    g_c = (Lambda_c S1_c - R_c h_c) / s'_c + (sum_i r_ic X_i'F_i) (w' - E[w]).

The ELBO at the moved globals with the moved q(b) is the ELBO before the move plus
delta' (A delta) / 2 >= 0, and the next local step can only raise it: the ELBO stays monotone.
Not with subject-level residual scales (their update, after the globals', reads the unmoved
q(b)), nor in minibatch steps; and, like SQUAREM, in the final runs only (``VIConfig.translate_means``,
off in :func:`~dmlmm.inference.moves.explore_config`): in the exploring runs it moved fits to other
optima without raising their held-out scores.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from ..priors.base import PathPrior, RandomEffectsPrior

__all__ = ["translate_means"]


def translate_means(
    new: Any, prior: RandomEffectsPrior, local: Any, path_prior: PathPrior, noise_old: Any, noise_new: Any,
) -> Any:
    """``new`` (VariationalParams after the global updates) with the first-layer means moved (module docstring).

    Parameters
    ----------
    new : VariationalParams after the global updates.
    prior : the RandomEffectsPrior (its paths and first-layer means).
    local : the local step's result before them: ``moments``, ``path_gram`` (M, D, D), ``path_xtf`` (M, D, P).
    path_prior : the path prior of that local step (precision (M, D, D), shift (M, D)).
    noise_old, noise_new : NoiseMoments before and after the global updates (``prec`` scalar or (M,), ``w_mean`` (P,)).
    """
    first = prior.first_means(new.prior)
    if first is None or local.path_gram is None:
        return new
    mean, prior_prec = first
    comp = prior.path_components()[:, 0]
    M, (K, D) = len(comp), mean.shape
    s_old = np.broadcast_to(np.asarray(noise_old.prec, dtype=float), (M,))
    s_new = np.broadcast_to(np.asarray(noise_new.prec, dtype=float), (M,))
    mom = local.moments
    g = (np.einsum("mde,me->md", path_prior.precision, mom.first) - mom.weight[:, None] * path_prior.shift) / s_old[:, None]
    if local.path_xtf.shape[-1]:
        g = g + local.path_xtf @ (noise_old.w_mean - noise_new.w_mean)
    onehot = np.equal.outer(comp, np.arange(K)).astype(float)  # (M, K)
    curv = np.einsum("mk,m,mde->kde", onehot, s_new, local.path_gram) + prior_prec[:, :, None] * np.eye(D)
    grad = onehot.T @ (s_new[:, None] * g) - prior_prec * mean
    try:
        delta = np.linalg.solve(curv, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:  # a component without subjects or prior precision: leave the means
        return new
    if not np.all(np.isfinite(delta)):
        return new
    return replace(new, prior=prior.translate_first_means(new.prior, delta))

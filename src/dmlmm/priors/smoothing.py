"""Smoothness of the spline curves: learned variance scales of a P-spline prior.

The random effects live in the Demmler-Reinsch coordinates of the spline basis
(:meth:`dmlmm.basis.SplineBasis.smoothing_basis`): coordinate d is an
L2-orthonormal function of roughness ``lam_d`` (0 for the polynomials that a
penalty of order r leaves free, then increasing). A Bayesian P-spline (Eilers and
Marx 1996; Lang and Brezger 2004) on a curve's coefficients ``c``,
``p(c | v) ∝ v^(-rank/2) exp(-c' P c / (2 v))``, is diagonal there:
``c_d ~ N(0, v / lam_d)`` for every rough coordinate. The priors use it twice:

- on each component's mean curve, ``mu_kd ~ N(0, v_k / lam_d)``;
- on each component's covariance, through the scales of its idiosyncratic (or
  Huang-Wand) variances: ``h_kd ~ IG(1/2, lam_d / w_k)``, so that the standard
  deviation of coordinate d is half-t / half-Cauchy with scale ``sqrt(w_k / lam_d)``:
  subject deviations are smooth unless the data say otherwise.

Each smoothing variance ``v`` gets a half-Cauchy prior on ``sqrt(v)`` written with an
inverse-gamma auxiliary, ``v | g ~ IG(1/2, 1/g)``, ``g ~ IG(1/2, 1/A^2)`` (Gelman
2006), so every conditional stays conjugate and the ELBO exact. A term that
contributes ``v^(-n/2) exp(-s / v)`` to the density of ``v`` (n rough coordinates,
s their summed statistic) gives ``q(v) = IG(1/2 + n/2, E[1/g] + s)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..expfam import InvGamma, blend, ig_expected_logpdf

__all__ = ["ScaleFactor", "init_scale", "update_scale", "scale_elbo", "rough_mask"]


@dataclass(frozen=True)
class ScaleFactor:
    """q(v) and q(g) of variances v with half-Cauchy priors on sqrt(v) (any shape, stacked).

    Attributes
    ----------
    var : InvGamma, q(v).
    aux : InvGamma, q(g), the auxiliary of the half-Cauchy.
    """

    var: InvGamma
    aux: InvGamma


def rough_mask(roughness: np.ndarray | None, dim: int) -> np.ndarray:
    """Boolean (dim,): the coordinates that a smoothness prior penalises (roughness > 0)."""
    if roughness is None:
        return np.zeros(dim, dtype=bool)
    return np.asarray(roughness, dtype=float) > 0


def update_scale(old: ScaleFactor, n_terms, stat: np.ndarray, scale: float, rho: float = 1.0) -> ScaleFactor:
    """Coordinate-ascent (rho = 1) or natural-gradient step of q(v), then q(g).

    Parameters
    ----------
    n_terms : number of coordinates informing each v (scalar or broadcastable).
    stat : summed statistic s of those coordinates (shape of v).
    scale : A, the half-Cauchy scale of sqrt(v).
    """
    stat = np.asarray(stat, dtype=float)
    var = blend(old.var, InvGamma(0.5 + 0.5 * n_terms + 0.0 * stat, old.aux.mean_inv + stat), rho)
    aux = blend(old.aux, InvGamma(np.ones_like(stat), var.mean_inv + 1.0 / scale**2), rho)
    return ScaleFactor(var, aux)


def init_scale(n_terms, stat: np.ndarray, scale: float, cap: bool = True) -> ScaleFactor:
    """A starting point: q(g) at its prior-dominated value, then one update of q(v).

    With ``cap`` (for smoothing *variances*) the statistic is capped so that E[v] starts at most
    near ``scale^2``: a smooth start. Rough starting curves would otherwise set a weak penalty
    that keeps them rough (a self-consistent bad fixed point, seen on sparse visits); from a
    smooth start the data relax the penalty as far as they need."""
    stat = np.asarray(stat, dtype=float)
    if cap:
        stat = np.minimum(stat, 0.5 * np.asarray(n_terms, dtype=float) * scale**2)
    start = ScaleFactor(InvGamma(np.ones_like(stat), np.ones_like(stat)),
                        InvGamma(np.ones_like(stat), np.full(stat.shape, 1.0 + 1.0 / scale**2)))
    return update_scale(start, n_terms, stat, scale)


def scale_elbo(f: ScaleFactor, scale: float) -> float:
    """E_q[log p(v | g) + log p(g)] + H[q(v)] + H[q(g)], summed."""
    a2 = scale**2
    total = ig_expected_logpdf(0.5, f.aux.mean_inv, -f.aux.mean_log, f.var) + f.var.entropy()
    total = total + ig_expected_logpdf(0.5, 1.0 / a2, -np.log(a2), f.aux) + f.aux.entropy()
    return float(np.sum(total))

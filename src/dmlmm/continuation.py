"""Curves beyond the basis range: what the smoothness prior says there.

Inside ``[lower_, upper_]`` a subject's curve is ``X(t) b``. Beyond it the basis is
continued linearly from the boundary (:meth:`dmlmm.basis.SplineBasis.transform`), which
carries the curve's level and slope at the boundary forward, and so their uncertainty.
A P-spline prior of order r (``smoothing=r``) says more: it is the prior of an
(r-1)-fold integrated Wiener process (Wahba 1978), ``f^(r)(u) du = sqrt(kappa) dW(u)``
with u the time rescaled to [0, 1] over the basis range, so past the boundary the curve
keeps its polynomial continuation *plus* an independent integrated Wiener increment

    f(T + h) = sum_{j<r} f^(j)(T) h^j / j! + sqrt(kappa) int_0^h (h - s)^(r-1) / (r-1)! dW(s),

whose variance ``kappa h^(2r-1) / ((2r-1) (r-1)!^2)`` (``kappa h^3 / 3`` for r = 2)
grows with the distance ``h``. ``kappa`` is the smoothing intensity of the curve's
path, learned from the data (:meth:`dmlmm.priors.base.RandomEffectsPrior.continuation_intensity`).

The increment enters the predictions as extra random-effect coordinates with
independent N(0, kappa) coefficients: a low-rank factor of the process's covariance
``int_0^min(h1,h2) (h1 - s)^(r-1) (h2 - s)^(r-1) ds / (r-1)!^2`` at the distinct
distances of the times that one prediction uses (its data and its query times), from an
eigendecomposition that keeps every direction above ``1e-8`` of the largest, so the
covariance is exact at those times to that tolerance (beyond 200 distinct distances on a side,
a Nystrom map through 200 of them, exact there and within about 1e-7 of the largest variance
in between). The coordinates vanish inside the
basis range, so conditioning on data there leaves them at their prior; and every
prediction (bands, draws, log scores) goes through the same Gaussian-mixture code.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import factorial

import numpy as np

from .priors.base import PointMixture

__all__ = ["Continuation", "distances", "increment_cov", "increment_variance", "augment_mixture"]

_TOL = 1e-8
_MAX_NODES = 200  # distinct distances per side factored exactly; more go through a Nystrom map


def distances(time: np.ndarray, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each time below ``lower`` and above ``upper`` in units of the range (each (n,), >= 0)."""
    t = np.asarray(time, dtype=float).reshape(-1)
    width = upper - lower
    return np.maximum(lower - t, 0.0) / width, np.maximum(t - upper, 0.0) / width


def increment_cov(h1: np.ndarray, h2: np.ndarray, order: int) -> np.ndarray:
    """Covariance of the unit-intensity order-r increments at distances h1, h2 (broadcast).

    ``int_0^m (h1 - s)^(r-1) (h2 - s)^(r-1) ds / (r-1)!^2`` with m = min(h1, h2), by r-point
    Gauss-Legendre quadrature, exact for this polynomial of degree 2r - 2.
    """
    h1, h2 = np.broadcast_arrays(np.asarray(h1, dtype=float), np.asarray(h2, dtype=float))
    m = np.minimum(h1, h2)
    nodes, weights = np.polynomial.legendre.leggauss(order)
    s = 0.5 * m[..., None] * (nodes + 1.0)
    f = ((h1[..., None] - s) * (h2[..., None] - s)) ** (order - 1)
    return 0.5 * m * (f @ weights) / factorial(order - 1) ** 2


def increment_variance(h: np.ndarray, order: int) -> np.ndarray:
    """Variance of the order-r increment at distance h for unit intensity: h^(2r-1) / ((2r-1) (r-1)!^2)."""
    h = np.asarray(h, dtype=float)
    return h ** (2 * order - 1) / ((2 * order - 1) * factorial(order - 1) ** 2)


@dataclass(frozen=True)
class _Side:
    """The factor on one side of the range: distinct distances ``pts``, factored at ``nodes``.

    ``rows`` is ``V sqrt(w)`` (exact, rows of ``pts``) when the nodes are all of ``pts``, else the
    Nystrom map ``V / sqrt(w)`` applied to ``increment_cov(h, nodes)``.
    """

    pts: np.ndarray
    nodes: np.ndarray
    rows: np.ndarray

    @classmethod
    def at(cls, h: np.ndarray, order: int) -> "_Side":
        pts = np.unique(h[h > 0])
        if pts.size == 0:
            return cls(pts, pts, np.zeros((0, 0)))
        # at most _MAX_NODES distances get the exact factor; others the Nystrom rows through them
        nodes = pts if pts.size <= _MAX_NODES else pts[np.unique(np.linspace(0, pts.size - 1, _MAX_NODES).round().astype(int))]
        evals, evecs = np.linalg.eigh(increment_cov(nodes[:, None], nodes[None, :], order))
        keep = evals > _TOL * evals[-1]
        exact = nodes.size == pts.size
        rows = evecs[:, keep] * (np.sqrt(evals[keep]) if exact else 1.0 / np.sqrt(evals[keep]))
        return cls(pts, nodes, rows)

    def columns(self, h: np.ndarray, order: int) -> np.ndarray:
        out = np.zeros((len(h), self.rows.shape[1]))
        beyond = h > 0
        if not beyond.any():
            return out
        idx = np.searchsorted(self.pts, h[beyond])
        if np.any(idx >= len(self.pts)) or not np.allclose(self.pts[np.minimum(idx, len(self.pts) - 1)], h[beyond],
                                                           rtol=1e-12, atol=0):
            raise ValueError("Continuation.columns: every time must be among the anchors")
        if self.nodes.size == self.pts.size:
            out[beyond] = self.rows[idx]
        else:
            out[beyond] = increment_cov(h[beyond][:, None], self.nodes[None, :], order) @ self.rows
        return out


@dataclass(frozen=True)
class Continuation:
    """The increment's coordinates for one prediction: the factor at its times (``anchors``), built once.

    Build with :meth:`at`; :meth:`columns` gives the coordinates at any of the anchors.
    """

    lower: float
    upper: float
    order: int
    below: _Side
    above: _Side

    @classmethod
    def at(cls, anchors: np.ndarray, lower: float, upper: float, order: int) -> "Continuation":
        h_below, h_above = distances(anchors, lower, upper)
        return cls(lower, upper, int(order), _Side.at(h_below, order), _Side.at(h_above, order))

    @property
    def n_columns(self) -> int:
        return self.below.rows.shape[1] + self.above.rows.shape[1]

    def columns(self, time: np.ndarray) -> np.ndarray:
        """(len(time), n_below + n_above); ``time`` must be among the anchors."""
        h_below, h_above = distances(time, self.lower, self.upper)
        return np.concatenate([self.below.columns(h_below, self.order), self.above.columns(h_above, self.order)], axis=1)


def augment_mixture(mix: PointMixture, intensity: np.ndarray, n_extra: int) -> PointMixture:
    """The mixture with ``n_extra`` more coordinates per path: mean 0, covariance intensity_c I, independent of b.

    Parameters
    ----------
    mix : PointMixture with M paths and D coordinates.
    intensity : (M,) the paths' intensities (kappa times the basis's penalty unit).
    """
    M, D = mix.means.shape
    kappa = np.broadcast_to(np.asarray(intensity, dtype=float), (M,))
    means = np.concatenate([mix.means, np.zeros((M, n_extra))], axis=1)
    covs = np.zeros((M, D + n_extra, D + n_extra))
    covs[:, :D, :D] = mix.covs
    idx = np.arange(D, D + n_extra)
    covs[:, idx, idx] = kappa[:, None]
    return PointMixture(mix.weights, means, covs)

"""Variational factors of the conjugate model: inverse-gamma, Dirichlet, Gaussian, inverse-Wishart.

Each factor is a small frozen dataclass holding parameters in which the
natural-gradient step of stochastic variational inference is a convex
combination (Hoffman et al. 2013): shape/rate, concentration, precision and
precision-times-mean, degrees of freedom and scale matrix. ``blend(old, new, rho)``
does that step for any of them. Expectations and entropies are pure functions
of the parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from scipy.special import digamma, gammaln, multigammaln

from ._linalg import spd_inv_logdet

LOG_2PI = float(np.log(2.0 * np.pi))

__all__ = ["InvGamma", "Dirichlet", "Gaussian", "InvWishart", "blend", "ig_expected_logpdf", "memo", "LOG_2PI"]


def memo(obj, name, compute):
    """``compute()``, stored on the frozen factor ``obj`` under ``name`` and returned as is from then on.

    A factor's parameters are never changed in place (every update builds a new factor), so its
    derived quantities are computed once: a coordinate-ascent iteration reads the same moments in
    the local step, the global updates and the ELBO. The arrays are made read-only, so that a
    caller who would change them in place fails loudly instead of corrupting the next reader.
    ``obj`` may be any frozen dataclass of factors (a prior's layer), ``name`` any hashable key: what
    the value depends on besides ``obj`` belongs in it.
    """
    cache = obj.__dict__.setdefault("_cache", {})  # not a dataclass field: fields(), blend and io never see it
    if name not in cache:
        value = compute()
        for a in value if isinstance(value, tuple) else (value,):
            if isinstance(a, np.ndarray):
                a.setflags(write=False)
        cache[name] = value
    return cache[name]


def blend(old, new, rho: float):
    """Natural-gradient step ``(1 - rho) old + rho new`` for any factor (or dataclass tree of factors)."""
    if rho == 1.0:
        return new
    vals = {}
    for f in fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a is None:
            vals[f.name] = None
        elif hasattr(a, "__dataclass_fields__"):
            vals[f.name] = blend(a, b, rho)
        else:
            vals[f.name] = (1.0 - rho) * a + rho * b
    return type(old)(**vals)


@dataclass(frozen=True)
class InvGamma:
    """Independent inverse-gamma factors IG(shape, rate), density ∝ x^(-shape-1) exp(-rate/x)."""

    shape: np.ndarray
    rate: np.ndarray

    @property
    def mean_inv(self) -> np.ndarray:
        """E[1/x]."""
        return self.shape / self.rate

    @property
    def mean_log(self) -> np.ndarray:
        """E[log x]."""
        return memo(self, "mean_log", lambda: np.log(self.rate) - digamma(self.shape))

    @property
    def mean(self) -> np.ndarray:
        """E[x] where defined (shape > 1), else the mode-free plug-in rate / shape."""
        s = np.asarray(self.shape, dtype=float)
        return np.where(s > 1.0, self.rate / np.maximum(s - 1.0, 1e-300), self.rate / s)

    def entropy(self) -> np.ndarray:
        a, b = self.shape, self.rate
        return a + np.log(b) + gammaln(a) - (1.0 + a) * digamma(a)


def ig_expected_logpdf(shape0, rate0_mean, rate0_mean_log, q: InvGamma) -> np.ndarray:
    """E_q[log IG(x; shape0, rate0)] with x ~ q and a possibly random rate0 (independent of x).

    Parameters
    ----------
    shape0 : prior shape (fixed).
    rate0_mean, rate0_mean_log : E[rate0] and E[log rate0].
    q : the factor of x.
    """
    return shape0 * rate0_mean_log - gammaln(shape0) - (shape0 + 1.0) * q.mean_log - rate0_mean * q.mean_inv


@dataclass(frozen=True)
class Dirichlet:
    """Dirichlet factors over the last axis, concentration ``alpha`` (..., K)."""

    alpha: np.ndarray

    @property
    def mean(self) -> np.ndarray:
        return self.alpha / self.alpha.sum(axis=-1, keepdims=True)

    @property
    def mean_log(self) -> np.ndarray:
        """E[log pi_k]."""
        return digamma(self.alpha) - digamma(self.alpha.sum(axis=-1, keepdims=True))

    def kl_from_symmetric(self, rho: float) -> np.ndarray:
        """KL(q || Dirichlet(rho, ..., rho))."""
        a = self.alpha
        k = a.shape[-1]
        a0 = a.sum(axis=-1)
        return (
            gammaln(a0) - gammaln(a).sum(axis=-1) - gammaln(k * rho) + k * gammaln(rho)
            + ((a - rho) * (digamma(a) - digamma(a0)[..., None])).sum(axis=-1)
        )


@dataclass(frozen=True)
class Gaussian:
    """Gaussian factors in natural form: precision (..., d, d) and shift = precision @ mean (..., d)."""

    precision: np.ndarray
    shift: np.ndarray

    def moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean (..., d), covariance (..., d, d) and log-determinant of the covariance (...), read-only."""
        return memo(self, "moments", self._moments)

    def _moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cov, logdet_prec = spd_inv_logdet(self.precision, "variational precision")
        mean = (cov @ self.shift[..., None])[..., 0]
        return mean, cov, -logdet_prec


def gaussian_entropy(logdet_cov: np.ndarray, d: int) -> np.ndarray:
    return 0.5 * (d * (1.0 + LOG_2PI) + logdet_cov)


@dataclass(frozen=True)
class InvWishart:
    """Inverse-Wishart factors IW(df, scale): df (...), scale (..., d, d)."""

    df: np.ndarray
    scale: np.ndarray

    def expectations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """E[Sigma^{-1}] (..., d, d), E[log|Sigma^{-1}|] (...), log|scale| (...), read-only."""
        return memo(self, "expectations", self._expectations)

    def _expectations(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.scale.shape[-1]
        inv, logdet = spd_inv_logdet(self.scale, "inverse-Wishart scale")
        df = np.asarray(self.df, dtype=float)
        j = np.arange(1, d + 1)
        e_logdet_prec = digamma((df[..., None] - j + 1.0) / 2.0).sum(axis=-1) + d * np.log(2.0) - logdet
        return df[..., None, None] * inv, e_logdet_prec, logdet

    @property
    def mean(self) -> np.ndarray:
        d = self.scale.shape[-1]
        df = np.asarray(self.df, dtype=float)[..., None, None]
        return np.where(df > d + 1, self.scale / np.maximum(df - d - 1, 1e-300), self.scale / df)

    def expected_logpdf(self, df0, e_logdet_scale0, e_scale0, e_prec, e_logdet_prec) -> np.ndarray:
        """E[log IW(Sigma; df0, scale0)] for Sigma ~ q with expectations given (scale0 may be random)."""
        d = self.scale.shape[-1]
        return (
            0.5 * df0 * e_logdet_scale0 - 0.5 * df0 * d * np.log(2.0) - multigammaln(0.5 * df0, d)
            + 0.5 * (df0 + d + 1.0) * e_logdet_prec - 0.5 * np.einsum("...ij,...ji->...", e_scale0, e_prec)
        )

    def entropy(self) -> np.ndarray:
        d = self.scale.shape[-1]
        e_prec, e_logdet_prec, logdet_scale = self.expectations()
        df = np.asarray(self.df, dtype=float)
        gl = np.vectorize(lambda a: multigammaln(a, d))(0.5 * df)
        return -(
            0.5 * df * logdet_scale - 0.5 * df * d * np.log(2.0) - gl
            + 0.5 * (df + d + 1.0) * e_logdet_prec - 0.5 * df * d
        )

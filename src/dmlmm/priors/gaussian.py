"""Gaussian and mixture-of-Gaussians priors on the random effects, with full covariances.

Model (K components; K = 1 is the linear mixed model's prior)::

    b_i | c_i = k ~ N(mu_k, Sigma_k),          c_i ~ Categorical(pi),  pi ~ Dirichlet(rho)
    mu_k ~ N(0, mean_var I)                    (or mu_k = 0 with ``zero_mean=True``)
    Sigma_k | a_k ~ IW(nu + D - 1, 2 nu diag(1 / a_k)),  a_kd ~ IG(1/2, 1 / scale^2)

The last line is Huang and Wand's (2013) prior: half-t(nu, scale) marginals on
the standard deviations and, for nu = 2, uniform marginals on correlations.
Variational factors: q(pi) Dirichlet, q(mu_k) Gaussian, q(Sigma_k) inverse-Wishart,
q(a_kd) inverse-gamma; all updates closed form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._linalg import sym
from ..inference.expfam import (
    LOG_2PI,
    Dirichlet,
    Gaussian,
    InvGamma,
    InvWishart,
    blend,
    gaussian_entropy,
    ig_expected_logpdf,
)
from .base import PathMoments, PathPrior, PointMixture, RandomEffectsPrior

__all__ = ["GaussianMixturePrior", "GaussianMixtureParams"]


@dataclass(frozen=True)
class GaussianMixtureParams:
    """Variational parameters of the (mixture of) Gaussian prior(s), stacked over K components."""

    weights: Dirichlet  # alpha (K,)
    mean: Gaussian | None  # precision (K, D, D), shift (K, D); None when zero_mean
    cov: InvWishart  # df (K,), scale (K, D, D)
    cov_aux: InvGamma  # (K, D)


def canonical_order(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) sorted lexicographically (rounded to 10 digits): an order-free arrangement."""
    return x[np.lexsort(np.round(x, 10).T[::-1])]


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns labels (N,). Vectorised over points.

    Points are processed in a canonical (lexicographic) order, so the result does not
    depend on the order of the subjects.
    """
    order = np.lexsort(np.round(x, 10).T[::-1])
    labels = np.empty(len(x), dtype=int)
    labels[order] = _kmeans_sorted(x[order], k, rng, n_iter)
    return labels


def _kmeans_sorted(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int) -> np.ndarray:
    n = x.shape[0]
    k = min(k, n)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = ((x - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):  # seeding: one pass per centre, not per point
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centers[j] = x[rng.choice(n, p=p)]
        d2 = np.minimum(d2, ((x - centers[j]) ** 2).sum(axis=1))
    labels = np.zeros(n, dtype=int)
    for _ in range(n_iter):
        dist = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        counts = np.bincount(new, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, new, x)
        empty = counts == 0
        centers = np.where(empty[:, None], centers, sums / np.maximum(counts, 1)[:, None])
        if empty.any():  # re-seed empty clusters at the farthest points
            far = np.argsort(dist.min(axis=1))[::-1][: empty.sum()]
            centers[empty] = x[far]
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
    return labels


class GaussianMixturePrior(RandomEffectsPrior):
    """Mixture of K full-covariance Gaussians (K = 1: the LMM's Gaussian prior).

    Parameters
    ----------
    dim : int
        Random-effects dimension D.
    n_components : int
    zero_mean : bool
        Fix mu = 0 (random effects centred; the population mean lives in the fixed effects).
    concentration : float
        Symmetric Dirichlet parameter rho of the weights.
    mean_var : float
        Prior variance of the component means (standardised scale).
    cov_df : float
        Huang-Wand nu (2: uniform correlations).
    cov_scale : float
        Huang-Wand half-t scale of the random-effect standard deviations (standardised scale).
    """

    def __init__(
        self,
        dim: int,
        n_components: int = 1,
        zero_mean: bool = False,
        concentration: float = 0.5,
        mean_var: float = 100.0,
        cov_df: float = 2.0,
        cov_scale: float = 2.5,
    ) -> None:
        self.dim = int(dim)
        self.n_components = int(n_components)
        self.zero_mean = zero_mean
        self.concentration = float(concentration)
        self.mean_var = float(mean_var)
        self.cov_df = float(cov_df)
        self.cov_scale = float(cov_scale)

    @property
    def n_paths(self) -> int:
        return self.n_components

    def path_components(self) -> np.ndarray:
        return np.arange(self.n_components)[:, None]

    @property
    def _df0(self) -> float:
        return self.cov_df + self.dim - 1.0

    # ------------------------------------------------------------------ init
    def init_params(self, b_hat: np.ndarray, rng: np.random.Generator) -> GaussianMixtureParams:
        b_hat = canonical_order(b_hat)  # the initialisation must not depend on the order of subjects
        K, D = self.n_components, self.dim
        labels = kmeans(b_hat, K, rng) if K > 1 else np.zeros(len(b_hat), dtype=int)
        onehot = np.eye(K)[labels]
        counts = onehot.sum(axis=0)
        means = (onehot.T @ b_hat) / np.maximum(counts, 1)[:, None]
        if self.zero_mean:
            means = np.zeros_like(means)
        resid = b_hat[:, None, :] - means[None]  # (N, K, D)
        covs = np.einsum("nk,nkd,nke->kde", onehot, resid, resid) / np.maximum(counts, 1)[:, None, None]
        overall = np.cov(b_hat.T).reshape(D, D) if len(b_hat) > 1 else np.eye(D)
        ridge = 0.1 * np.trace(overall) / D + 1e-3
        covs = covs + ridge * np.eye(D)
        df = self._df0 + counts
        iw = InvWishart(df, covs * df[:, None, None])
        e_prec, _, _ = iw.expectations()
        aux = self._aux_update(e_prec)
        mean = None
        if not self.zero_mean:
            prec = np.eye(D) / self.mean_var + counts[:, None, None] * e_prec
            mean = Gaussian(prec, (prec @ means[..., None])[..., 0])
        return GaussianMixtureParams(Dirichlet(self.concentration + counts), mean, iw, aux)

    def _aux_update(self, e_prec: np.ndarray) -> InvGamma:
        diag = np.diagonal(e_prec, axis1=-2, axis2=-1)
        shape = np.full(diag.shape, 0.5 * (self.cov_df + self.dim))
        return InvGamma(shape, self.cov_df * diag + 1.0 / self.cov_scale**2)

    # ------------------------------------------------------------------ moments of mu
    def _mean_moments(self, params: GaussianMixtureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        K, D = self.n_components, self.dim
        if params.mean is None:
            return np.zeros((K, D)), np.zeros((K, D, D)), np.zeros(K)
        return params.mean.moments()

    # ------------------------------------------------------------------ engine interface
    def path_prior(self, params: GaussianMixtureParams) -> tuple[PathPrior, None]:
        e_prec, e_logdet_prec, _ = params.cov.expectations()
        m, v, _ = self._mean_moments(params)
        second = v + m[:, :, None] * m[:, None, :]
        const = (
            -0.5 * self.dim * LOG_2PI + 0.5 * e_logdet_prec - 0.5 * np.einsum("kij,kji->k", e_prec, second)
        )
        shift = (e_prec @ m[..., None])[..., 0]
        return PathPrior(params.weights.mean_log, e_prec, shift, const), None

    def update(
        self, params: GaussianMixtureParams, moments: PathMoments, cache: None = None, rho: float = 1.0
    ) -> GaussianMixtureParams:
        D = self.dim
        R, S1, S2 = moments.weight, moments.first, moments.second
        weights = blend(params.weights, Dirichlet(self.concentration + R), rho)
        # q(mu_k) given q(Sigma_k)
        e_prec, _, _ = params.cov.expectations()
        mean = params.mean
        if mean is not None:
            prec = np.eye(D) / self.mean_var + R[:, None, None] * e_prec
            mean = blend(mean, Gaussian(sym(prec), (e_prec @ S1[..., None])[..., 0]), rho)
        m, v, _ = self._mean_moments(replace(params, mean=mean))
        # q(Sigma_k) given q(mu_k), q(a_k)
        mm = m[:, :, None] * m[:, None, :]
        scatter = S2 - S1[:, :, None] * m[:, None, :] - m[:, :, None] * S1[:, None, :] + R[:, None, None] * (mm + v)
        scale0 = 2.0 * self.cov_df * np.eye(D) * params.cov_aux.mean_inv[:, None, :]
        cov = blend(params.cov, InvWishart(self._df0 + R, sym(scale0 + scatter)), rho)
        # q(a_k) given q(Sigma_k)
        e_prec, _, _ = cov.expectations()
        cov_aux = blend(params.cov_aux, self._aux_update(e_prec), rho)
        return GaussianMixtureParams(weights, mean, cov, cov_aux)

    def elbo(self, params: GaussianMixtureParams) -> float:
        D, nu = self.dim, self.cov_df
        total = -float(params.weights.kl_from_symmetric(self.concentration)) if self.n_components > 1 else 0.0
        if params.mean is not None:
            m, v, logdet_v = params.mean.moments()
            total += float(
                np.sum(
                    -0.5 * D * (LOG_2PI + np.log(self.mean_var))
                    - 0.5 * ((m**2).sum(-1) + np.trace(v, axis1=-2, axis2=-1)) / self.mean_var
                    + gaussian_entropy(logdet_v, D)
                )
            )
        e_prec, e_logdet_prec, _ = params.cov.expectations()
        aux = params.cov_aux
        e_scale0 = 2.0 * nu * np.eye(D) * aux.mean_inv[:, None, :]
        e_logdet_scale0 = D * np.log(2.0 * nu) - aux.mean_log.sum(-1)
        total += float(np.sum(params.cov.expected_logpdf(self._df0, e_logdet_scale0, e_scale0, e_prec, e_logdet_prec)))
        total += float(np.sum(params.cov.entropy()))
        inv_a2 = 1.0 / self.cov_scale**2
        total += float(np.sum(ig_expected_logpdf(0.5, inv_a2, np.log(inv_a2), aux) + aux.entropy()))
        return total

    def empty_component_cost(self, layer: int = 0) -> float:
        """Mean-field gap of one data-free component (see DeepMixturePrior.empty_component_cost)."""
        one = GaussianMixturePrior(self.dim, 1, self.zero_mean, self.concentration, self.mean_var, self.cov_df, self.cov_scale)
        params = one.init_params(np.zeros((2, self.dim)), np.random.default_rng(0))
        zero = PathMoments(np.zeros(1), np.zeros((1, self.dim)), np.zeros((1, self.dim, self.dim)))
        prev = -np.inf
        for _ in range(500):  # coordinate ascent of a tiny, data-free problem
            params = one.update(params, zero)
            cur = one.elbo(params)
            if abs(cur - prev) < 1e-10 * max(1.0, abs(cur)):
                break
            prev = cur
        return -cur

    def point_mixture(self, params: GaussianMixtureParams) -> PointMixture:
        m, _, _ = self._mean_moments(params)
        return PointMixture(params.weights.mean, m, params.cov.mean)

    def layer_weights(self, params: GaussianMixtureParams) -> list[np.ndarray]:
        return [params.weights.mean]

    def layer_counts(self, params: GaussianMixtureParams) -> list[np.ndarray]:
        return [params.weights.alpha - self.concentration]

    def prune(self, params: GaussianMixtureParams, keep: list[np.ndarray]):
        k = np.asarray(keep[0], dtype=bool)
        new = GaussianMixturePrior(
            self.dim, int(k.sum()), self.zero_mean, self.concentration, self.mean_var, self.cov_df, self.cov_scale
        )
        return new, _take_components(params, k)


def _take_components(params, keep: np.ndarray):
    """The same parameter container with only the components (leading axis) where ``keep``."""
    from dataclasses import fields, is_dataclass

    vals = {}
    for f in fields(params):
        v = getattr(params, f.name)
        if v is None:
            vals[f.name] = None
        elif is_dataclass(v):
            vals[f.name] = _take_components(v, keep)
        else:
            vals[f.name] = np.asarray(v)[keep]
    return type(params)(**vals)

"""Structured Gaussian priors of the linear mixed model's random effects (one path, mean zero).

The formula models of :class:`~dmlmm.LinearMixedModel` allow lme4's covariance
structures for ``b_i ~ N(0, Sigma)``:

- block-diagonal ``Sigma`` (several random terms, e.g. ``(1|g) + (0+x|g)``): each block
  is an unstructured covariance with Huang and Wand's prior, i.e. a one-component
  :class:`~dmlmm.priors.gaussian.GaussianMixturePrior` with ``zero_mean=True``
  (one block is that prior itself: :func:`gaussian_prior` returns it directly);
- scaled identity ``Sigma = tau^2 I`` with ``tau ~ half-Cauchy(0, cov_scale)`` through
  ``tau^2 | a ~ IG(1/2, 1/a)``, ``a ~ IG(1/2, 1/cov_scale^2)``.

Both are :class:`~dmlmm.priors.base.RandomEffectsPrior` objects with one path, so the
shared engine (:func:`~dmlmm.inference.engine.run_vi`) fits them like any other prior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..expfam import LOG_2PI, Dirichlet, InvGamma, blend, ig_expected_logpdf
from .base import PathMoments, PathPrior, PointMixture, RandomEffectsPrior
from .gaussian import GaussianMixtureParams, GaussianMixturePrior

__all__ = [
    "BlockGaussianPrior", "BlockParams", "ScaledIdentityPrior", "ScaledIdentityParams", "gaussian_prior",
    "variance_marginals",
]


def gaussian_prior(block_sizes: list[int], cov_scale: float = 2.5, scaled_identity: bool = False) -> RandomEffectsPrior:
    """The one-path, mean-zero Gaussian prior for an lme4 covariance structure."""
    dim = int(sum(block_sizes))
    if scaled_identity:
        return ScaledIdentityPrior(dim, cov_scale)
    if len(block_sizes) == 1:
        return GaussianMixturePrior(dim, 1, zero_mean=True, cov_scale=cov_scale)
    return BlockGaussianPrior(block_sizes, cov_scale)


def variance_marginals(prior: RandomEffectsPrior, params) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-gamma (shape, rate) of each diagonal element of Sigma under q, (D,) each, for a prior
    made by :func:`gaussian_prior`."""
    if isinstance(prior, GaussianMixturePrior):
        return _iw_diagonal(params, prior.dim)
    return prior.variance_marginals(params)


def _iw_diagonal(params: GaussianMixtureParams, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The diagonal of a one-component inverse-Wishart: IG((df - k + 1) / 2, scale_jj / 2)."""
    shape = np.full(k, (float(params.cov.df[0]) - k + 1) / 2)
    return shape, np.diagonal(params.cov.scale[0]) / 2


class _OnePath(RandomEffectsPrior):
    """What every one-path prior answers the same way (no weights to learn, nothing to prune)."""

    @property
    def n_paths(self) -> int:
        return 1

    def path_components(self) -> np.ndarray:
        return np.zeros((1, 1), dtype=int)

    def first_layer_dirichlet(self, params) -> tuple[Dirichlet, float]:
        return Dirichlet(np.ones(1)), 1.0

    def layer_counts(self, params) -> list[np.ndarray]:
        return [np.ones(1)]  # one component, never pruned

    def empty_component_cost(self, layer: int = 0) -> float:
        return 0.0

    def prune(self, params, keep: list[np.ndarray]):
        return self, params


@dataclass(frozen=True)
class BlockParams:
    """Variational parameters of a block-diagonal Gaussian prior: one container per block."""

    blocks: tuple[GaussianMixtureParams, ...]


class BlockGaussianPrior(_OnePath):
    """``b ~ N(0, Sigma)`` with ``Sigma`` block-diagonal, each block unstructured (Huang-Wand prior).

    Parameters
    ----------
    block_sizes : sizes of the diagonal blocks (they sum to D).
    cov_scale : half-t scale of the random-effect standard deviations (standardised scale).
    """

    def __init__(self, block_sizes: list[int], cov_scale: float = 2.5) -> None:
        self.block_sizes = [int(k) for k in block_sizes]
        self.cov_scale = float(cov_scale)
        self.dim = int(sum(self.block_sizes))
        starts = np.r_[0, np.cumsum(self.block_sizes)[:-1]]
        self._slices = [slice(int(o), int(o) + k) for o, k in zip(starts, self.block_sizes)]
        self._blocks = [GaussianMixturePrior(k, 1, zero_mean=True, cov_scale=cov_scale) for k in self.block_sizes]
        self.cov_df = self._blocks[0].cov_df  # Huang-Wand nu of every block

    def init_params(self, b_hat: np.ndarray, rng: np.random.Generator) -> BlockParams:
        return BlockParams(tuple(p.init_params(b_hat[:, sl], rng) for p, sl in zip(self._blocks, self._slices)))

    def path_prior(self, params: BlockParams) -> tuple[PathPrior, None]:
        D = self.dim
        prec, const = np.zeros((1, D, D)), 0.0
        for p, par, sl in zip(self._blocks, params.blocks, self._slices):
            pp, _ = p.path_prior(par)
            prec[0, sl, sl] = pp.precision[0]
            const += float(pp.const[0])
        return PathPrior(np.zeros(1), prec, np.zeros((1, D)), np.array([const])), None

    def update(self, params: BlockParams, moments: PathMoments, cache=None, rho: float = 1.0) -> BlockParams:
        return BlockParams(tuple(
            p.update(par, PathMoments(moments.weight, moments.first[:, sl], moments.second[:, sl, sl]), None, rho)
            for p, par, sl in zip(self._blocks, params.blocks, self._slices)
        ))

    def elbo(self, params: BlockParams) -> float:
        return float(sum(p.elbo(par) for p, par in zip(self._blocks, params.blocks)))

    def at_covariance(self, params: BlockParams, cov: np.ndarray, count: float) -> BlockParams:
        """Each block's :meth:`GaussianMixturePrior.at_covariance` from its block of ``cov`` (D, D)."""
        return BlockParams(tuple(p.at_covariance(par, cov[sl, sl], count)
                                 for p, par, sl in zip(self._blocks, params.blocks, self._slices)))

    def point_mixture(self, params: BlockParams, integrate_globals: bool = False) -> PointMixture:
        cov = np.zeros((1, self.dim, self.dim))
        for p, par, sl in zip(self._blocks, params.blocks, self._slices):
            cov[0, sl, sl] = p.point_mixture(par).covs[0]
        return PointMixture(np.ones(1), np.zeros((1, self.dim)), cov)

    def variance_marginals(self, params: BlockParams) -> tuple[np.ndarray, np.ndarray]:
        """Inverse-gamma (shape, rate) of each diagonal element of Sigma under q, (D,) each."""
        parts = [_iw_diagonal(par, k) for par, k in zip(params.blocks, self.block_sizes)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclass(frozen=True)
class ScaledIdentityParams:
    """q(tau^2) and q(a) of the scaled-identity prior (scalar inverse-gammas)."""

    var: InvGamma
    aux: InvGamma


class ScaledIdentityPrior(_OnePath):
    """``b ~ N(0, tau^2 I)``, ``tau ~ half-Cauchy(0, cov_scale)``."""

    def __init__(self, dim: int, cov_scale: float = 2.5) -> None:
        self.dim = int(dim)
        self.cov_scale = float(cov_scale)

    def init_params(self, b_hat: np.ndarray, rng: np.random.Generator) -> ScaledIdentityParams:
        t2 = max(float(np.mean(b_hat**2)), 1e-4)
        shape = 0.5 + 0.5 * b_hat.size
        tau = InvGamma(np.asarray(shape), np.asarray(shape * t2))
        return ScaledIdentityParams(tau, InvGamma(np.asarray(1.0), np.asarray(1.0 / t2 + 1.0 / self.cov_scale**2)))

    def path_prior(self, params: ScaledIdentityParams) -> tuple[PathPrior, None]:
        D = self.dim
        prec = float(params.var.mean_inv) * np.eye(D)[None]
        const = -0.5 * D * (LOG_2PI + float(params.var.mean_log))
        return PathPrior(np.zeros(1), prec, np.zeros((1, D)), np.array([const])), None

    def update(self, params: ScaledIdentityParams, moments: PathMoments, cache=None,
               rho: float = 1.0) -> ScaledIdentityParams:
        n = float(moments.weight[0])
        var = blend(params.var, InvGamma(np.asarray(0.5 + 0.5 * n * self.dim),
                                         np.asarray(float(params.aux.mean_inv) + 0.5 * np.trace(moments.second[0]))), rho)
        aux = blend(params.aux, InvGamma(np.asarray(1.0), np.asarray(float(var.mean_inv) + 1.0 / self.cov_scale**2)), rho)
        return ScaledIdentityParams(var, aux)

    def elbo(self, params: ScaledIdentityParams) -> float:
        tau, aux = params.var, params.aux
        inv_a2 = 1.0 / self.cov_scale**2
        return float(
            ig_expected_logpdf(0.5, aux.mean_inv, -aux.mean_log, tau) + tau.entropy()
            + ig_expected_logpdf(0.5, inv_a2, np.log(inv_a2), aux) + aux.entropy()
        )

    def point_mixture(self, params: ScaledIdentityParams, integrate_globals: bool = False) -> PointMixture:
        return PointMixture(np.ones(1), np.zeros((1, self.dim)), float(params.var.mean[()]) * np.eye(self.dim)[None])

    def variance_marginals(self, params: ScaledIdentityParams) -> tuple[np.ndarray, np.ndarray]:
        return np.full(self.dim, float(params.var.shape)), np.full(self.dim, float(params.var.rate))

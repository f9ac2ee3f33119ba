"""The pluggable part of every model: the prior on the random effects b_i.

All three priors (Gaussian, mixture of Gaussians, deep mixture of factor
analysers) are Gaussian mixtures over *paths* once their deeper latent
variables are integrated out. The inference engine only sees, for each path
``c``, the expected log prior of ``b`` as a quadratic form,

    E_q[log p(b, c)] = log_weight_c + const_c + shift_c' b - 1/2 b' precision_c b,

(deeper latents integrated out exactly under their optimal conditional
``q(z | b, c)``), and hands back the responsibility-weighted moments of ``b``
per path. A prior turns those into updates of its own global factors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PathPrior", "PathMoments", "RandomEffectsPrior", "PointMixture", "SharedPrecision"]


@dataclass(frozen=True)
class SharedPrecision:
    """Paths whose prior precisions share a diagonal part: ``precision_c = diag(base[group[c]]) - U_c U_c'``.

    The deep mixture's paths through one first-layer component share its idiosyncratic
    precisions; the deeper layers only subtract a rank-D_1 term. The local step then factors one
    D x D matrix per (subject, group) instead of one per (subject, path)
    (:mod:`dmlmm.inference.local_shared`).

    Attributes
    ----------
    group : (M,) int, the group of each path.
    base : (G, D) the groups' diagonal precisions (positive).
    factor : (M, D, R) U_c.
    """

    group: np.ndarray
    base: np.ndarray
    factor: np.ndarray


@dataclass(frozen=True)
class PathPrior:
    """Expected log prior of b under each of M paths (see module docstring).

    Attributes
    ----------
    log_weight : (M,) E[log prior weight of the path].
    precision : (M, D, D)
    shift : (M, D)
    const : (M,) includes the entropy of the deeper latents' optimal q.
    shared : SharedPrecision or None, the same precisions in a form that paths share (optional:
        ``precision`` is always given in full).
    """

    log_weight: np.ndarray
    precision: np.ndarray
    shift: np.ndarray
    const: np.ndarray
    shared: SharedPrecision | None = None

    @property
    def n_paths(self) -> int:
        return int(self.log_weight.shape[0])


@dataclass(frozen=True)
class PathMoments:
    """Responsibility-weighted sums over subjects of the local posterior moments of b.

    Attributes
    ----------
    weight : (M,) sum_i r_ic.
    first : (M, D) sum_i r_ic E[b_i | c].
    second : (M, D, D) sum_i r_ic E[b_i b_i' | c].
    """

    weight: np.ndarray
    first: np.ndarray
    second: np.ndarray

    def scaled(self, factor: float) -> "PathMoments":
        return PathMoments(self.weight * factor, self.first * factor, self.second * factor)


@dataclass(frozen=True)
class PointMixture:
    """The prior of b as a Gaussian mixture at the variational means of the globals.

    Attributes
    ----------
    weights : (M,), means : (M, D), covs : (M, D, D)
    """

    weights: np.ndarray
    means: np.ndarray
    covs: np.ndarray


class RandomEffectsPrior(ABC):
    """Interface of a random-effects prior. Holds hyperparameters and structure only;
    its variational parameters live in a dataclass that the engine carries."""

    dim: int

    @property
    @abstractmethod
    def n_paths(self) -> int: ...

    @abstractmethod
    def path_components(self) -> np.ndarray:
        """Component index per layer of each path, shape (M, L)."""

    @abstractmethod
    def init_params(self, b_hat: np.ndarray, rng: np.random.Generator) -> Any:
        """Initial variational parameters from rough per-subject estimates ``b_hat`` (N, D)."""

    @abstractmethod
    def path_prior(self, params: Any) -> tuple[PathPrior, Any]:
        """Expected log prior per path, plus a cache the update needs (the deeper latents' conditionals)."""

    @abstractmethod
    def update(self, params: Any, moments: PathMoments, cache: Any, rho: float = 1.0) -> Any:
        """Coordinate-ascent (rho = 1) or natural-gradient step of the prior's global factors."""

    @abstractmethod
    def elbo(self, params: Any) -> float:
        """E_q[log p(globals)] - E_q[log q(globals)] of the prior's own factors."""

    @abstractmethod
    def point_mixture(self, params: Any) -> PointMixture:
        """The prior of b at the variational means of the globals."""

    def continuation_intensity(self, params: Any) -> np.ndarray:
        """Each path's smoothing intensity (M,): the variance per unit of the penalty of the
        integrated Wiener process that its curves follow beyond the basis range
        (:mod:`dmlmm.continuation`). Zero where the prior has no smoothness prior."""
        return np.zeros(self.n_paths)

    def first_means(self, params: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """The first layer's component means as the translation move moves them
        (:mod:`dmlmm.inference.translate`): E[mu_k] (K_1, D) and the diagonal of their expected prior
        precision (K_1, D), the curvature of E[log p(mu_k)] in the mean. None: no free means to move."""
        return None

    def translate_first_means(self, params: Any, delta: np.ndarray) -> Any:
        """``params`` with E[mu_k] moved by ``delta`` (K_1, D), every other moment of q kept."""
        raise NotImplementedError(f"{type(self).__name__} has no means to translate")

    @abstractmethod
    def first_layer_dirichlet(self, params: Any) -> tuple[Any, float]:
        """q(pi) of the first layer's weights (a Dirichlet) and its prior concentration rho.

        A membership model (:mod:`dmlmm.priors.membership`) takes the place of these weights:
        the engine then removes E[log pi_k] from the path weights and the KL from the ELBO,
        and the factor only keeps count of the subjects (alpha - rho).
        """

    @abstractmethod
    def layer_counts(self, params: Any) -> list[np.ndarray]:
        """Expected number of subjects in each layer's components (Dirichlet alpha - rho)."""

    @abstractmethod
    def empty_component_cost(self, layer: int) -> float:
        """-ELBO of one data-free component of ``layer`` at its optimum (the mean-field gap)."""

    @abstractmethod
    def prune(self, params: Any, keep: list[np.ndarray]) -> tuple["RandomEffectsPrior", Any]:
        """A prior without the components where ``keep[l]`` is False, and its parameters."""

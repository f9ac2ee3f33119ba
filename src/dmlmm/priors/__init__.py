"""Random-effects priors: the pluggable part of the model family."""

from .base import PathMoments, PathPrior, PointMixture, RandomEffectsPrior
from .gaussian import GaussianMixturePrior

__all__ = ["PathMoments", "PathPrior", "PointMixture", "RandomEffectsPrior", "GaussianMixturePrior"]

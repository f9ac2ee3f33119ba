"""dmlmm: deep mixtures of linear mixed models for longitudinal data."""

from .basis import SplineBasis
from .data import Longitudinal
from .lmm import LinearMixedModel
from .models import DeepMixtureLMM, MixtureLMM
from .io import load
from .exceptions import (
    ConvergenceWarning,
    DataError,
    EmptyComponentWarning,
    ExtrapolationWarning,
    IdentifiabilityWarning,
    NotFittedError,
)

__version__ = "0.1.0"

__all__ = [
    "SplineBasis",
    "Longitudinal",
    "LinearMixedModel",
    "MixtureLMM",
    "DeepMixtureLMM",
    "load",
    "ConvergenceWarning",
    "DataError",
    "EmptyComponentWarning",
    "ExtrapolationWarning",
    "IdentifiabilityWarning",
    "NotFittedError",
]

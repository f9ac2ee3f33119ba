"""dmlmm: deep mixtures of linear mixed models for longitudinal data."""

from .basis import SplineBasis
from .data import Longitudinal
from .lmm import LinearMixedModel
from .models import DeepMixtureLMM, MixtureLMM
from .io import load
from . import compat, metrics, simulate  # noqa: E402  (dmlmm.simulate.dgp1 etc. without extra imports)
from .selection import select_model
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
    "select_model",
    "simulate",
    "metrics",
    "compat",
    "ConvergenceWarning",
    "DataError",
    "EmptyComponentWarning",
    "ExtrapolationWarning",
    "IdentifiabilityWarning",
    "NotFittedError",
]

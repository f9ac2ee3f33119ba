"""User-facing longitudinal models fitted by variational inference."""

from .base import VariationalLongitudinalModel
from .mixture import DeepMixtureLMM, MixtureLMM

__all__ = ["VariationalLongitudinalModel", "MixtureLMM", "DeepMixtureLMM"]

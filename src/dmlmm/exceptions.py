"""Exceptions and warnings raised by dmlmm."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be modelled as given (the message says why and what to do)."""


class NotFittedError(ValueError, AttributeError):
    """A model was asked for something that needs ``fit`` first."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped at its iteration cap before the convergence criterion held."""


class IdentifiabilityWarning(UserWarning):
    """The data can barely (or not) identify a requested part of the model."""


class ExtrapolationWarning(UserWarning):
    """Predictions were requested outside the range the model was fitted on."""


class EmptyComponentWarning(UserWarning):
    """Mixture components ended up (nearly) empty and were pruned from the report."""

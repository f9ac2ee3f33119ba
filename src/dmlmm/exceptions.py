"""Exceptions and warnings raised by dmlmm."""

from __future__ import annotations


class DataError(ValueError):
    """Input data that cannot be modelled as given (the message says why and what to do)."""


class NumericalError(FloatingPointError):
    """A fit's arithmetic broke down: its ELBO or component sizes stopped being finite numbers."""


class NotFittedError(ValueError, AttributeError):
    """A model was asked for something that needs ``fit`` first."""


class ConvergenceWarning(UserWarning):
    """The optimiser stopped at its iteration cap before the convergence criterion held."""


class IdentifiabilityWarning(UserWarning):
    """The data can barely (or not) identify a requested part of the model.

    Raised for more components than subjects, knot intervals without observations (without a
    smoothness prior), and covariates that time (and the covariates before them) explain with
    R^2 >= 0.999: time itself, 2t + 1, t^2, ... are confounded with the mean curves; and for a
    :class:`~dmlmm.LinearMixedModel` fitted by ML or REML whose residual variance went to (next to)
    zero, the random effects fitting every observation, where the likelihood has no maximum.
    """


class ExtrapolationWarning(UserWarning):
    """Predictions were requested outside the range the model was fitted on."""


class EmptyComponentWarning(UserWarning):
    """Mixture components ended up (nearly) empty and were pruned from the report."""


class DataWarning(UserWarning):
    """Input data that can be fitted but look like an error: a response value far from all the others
    (a data-entry slip, a missing-value code such as -999, a unit error)."""


class CalibrationWarning(UserWarning):
    """Forecast bands held fewer held-out visits than they claim (:func:`dmlmm.calibration.check_bands`)."""

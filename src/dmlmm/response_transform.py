"""The scale a model works on: the response as given, or its logarithm (``response_transform``).

A right-skewed, non-negative response (hours of exercise, concentrations, weights, counts) fitted
on its own scale gets symmetric Gaussian bands that its high values escape and curves that dip
below zero. Fitted on the log scale, ``z = log(y)`` (``log1p(y) = log(1 + y)`` where y can be 0),
the model is the same Gaussian mixed model of z, and everything it says maps back exactly:

- quantiles (bands) and draws: ``y = exp(z)`` (``expm1(z)``), a monotone map;
- densities: ``log p(y) = log p(z) + log |dz/dy|``, and ``log |dz/dy| = -log y = -z`` for ``log``,
  ``-log(1 + y) = -z`` for ``log1p``: minus the transformed value in both cases;
- the ``mean`` column of curves is the back-transformed mean of z: for one Gaussian component the
  median on the user's scale (the mean there, ``exp(m + v/2)``, is pulled up by the spread and is
  not what a curve through the data shows).

Coefficients (``random_effects_``, ``fixed_effects_``, ``offset_``) and variances (``sigma2_``)
stay on the model's scale: they describe z.
"""

from __future__ import annotations

import warnings

import numpy as np

from .exceptions import DataError

__all__ = ["TRANSFORMS", "check_transform", "transform_candidates", "forward", "inverse", "log_jacobian",
           "data_scale_bound", "model_scale_elbo", "label", "label_of", "scale_text"]

#: The response transforms a model accepts (None: the response as given; "auto": see transform_candidates).
TRANSFORMS = (None, "auto", "log", "log1p")

#: Each transform's domain: the response must be above this value.
_FLOOR = {"log": 0.0, "log1p": -1.0}


def check_transform(value) -> str | None:
    """``value`` as one of :data:`TRANSFORMS` ("none" is None); a ValueError naming it otherwise."""
    if value is None or (isinstance(value, str) and value == "none"):
        return None
    if isinstance(value, str) and (value in _FLOOR or value == "auto"):
        return value
    raise ValueError(f"response_transform must be 'auto', None, 'log' or 'log1p', got {value!r}")


def transform_candidates(transform: str | None, y: np.ndarray) -> list[str | None]:
    """The scales a fit tries: the one asked for, or for ``"auto"`` the response as given and, when
    it is never negative, its log (``log1p`` where it has zeros)."""
    if transform != "auto":
        return [transform]
    y = np.asarray(y, dtype=float)
    y = y[np.isfinite(y)]
    return candidates_given_min(transform, float(y.min()) if len(y) else np.nan)


def candidates_given_min(transform: str | None, y_min: float) -> list[str | None]:
    """:func:`transform_candidates` from the smallest finite response value alone (NaN: none), as the
    Dask fit knows it from the partitions' summaries."""
    if transform != "auto":
        return [transform]
    if not np.isfinite(y_min) or y_min < 0:
        return [None]
    return [None, "log" if y_min > 0 else "log1p"]


def forward(y: np.ndarray, transform: str | None, column: str = "y", fitted: bool = False) -> np.ndarray:
    """z = transform(y), shape as ``y``; missing values stay missing.

    Values outside the transform's domain are a DataError naming the column, their count and the
    first value, and what to do: ``fitted`` (the responses given to a fitted model, to predict or
    score) says that the model was fitted on that scale, where a choice of transform is no longer open.
    """
    if transform is None:
        return y
    y = np.asarray(y, dtype=float)
    floor = _FLOOR[transform]
    bad = ~np.isnan(y) & ~(y > floor)
    if bad.any():
        first = y[np.flatnonzero(bad)[0]]
        if fitted:
            raise DataError(
                f"this model was fitted on {transform}(y): the responses given "
                f"must be above {floor:g}, but column '{column}' has {int(bad.sum())} value(s) <= {floor:g} (the first "
                f"is {first:g}); drop those rows"
                + (", or fit again with response_transform='log1p', which takes zeros" if transform == "log" else "")
            )
        fix = ("use response_transform='log1p' for zeros, or drop those rows" if transform == "log"
               else "drop those rows")
        raise DataError(
            f"response_transform={transform!r} needs response values above {floor:g}, but column "
            f"'{column}' has {int(bad.sum())} value(s) <= {floor:g} (the first is {first:g}); {fix}"
        )
    with np.errstate(invalid="ignore"):
        return np.log(y) if transform == "log" else np.log1p(y)


def inverse(z: np.ndarray, transform: str | None) -> np.ndarray:
    """y from z = transform(y), any shape (monotone: quantiles of z map to quantiles of y)."""
    if transform is None:
        return z
    with np.errstate(over="ignore"):
        y = np.exp(z) if transform == "log" else np.expm1(z)
    if np.isposinf(y).any() and np.isposinf(y[np.isfinite(z)]).any():
        warnings.warn(f"values on the data's scale passed the largest floating-point number (about 1.8e308: {transform} "
                      "scale values above 709.8) and are given as inf: bands or draws far beyond the data, where the "
                      "log scale's spread grows without bound", RuntimeWarning, stacklevel=2)
    return y


def log_jacobian(z: np.ndarray, transform: str | None) -> np.ndarray:
    """log |dz/dy| at each transformed value z: ``-z`` for both transforms, 0 without one."""
    z = np.asarray(z, dtype=float)
    return np.zeros_like(z) if transform is None else -z


def data_scale_bound(elbo: float, n_obs: float, y_scale: float, log_jacobian: float) -> float:
    """An ELBO of the standardised model scale as a bound on log p(y) of the response as given:
    plus the log-Jacobians of the standardisation (``-n log y_scale``) and of the transform."""
    return float(elbo - n_obs * np.log(y_scale) + log_jacobian)


def model_scale_elbo(bound: float, n_obs: float, y_scale: float, log_jacobian: float) -> float:
    """The inverse of :func:`data_scale_bound`: the ELBO of the standardised model scale that reaches
    ``bound`` on the data's scale (what a fit on this scale must beat to beat another scale's bound)."""
    return float(bound + n_obs * np.log(y_scale) - log_jacobian)


def label(response: str, transform: str | None) -> str:
    """How outputs name the modelled response: ``y``, ``log(y)`` or ``log1p(y)``."""
    return response if transform is None else f"{transform}({response})"


def label_of(transform: str | None) -> str:
    """A transform's name as a key: ``"none"``, ``"log"`` or ``"log1p"``."""
    return "none" if transform is None else transform


def scale_text(response: str, transform: str | None, tried: dict[str, float], criterion: str = "ELBO") -> str:
    """``log1p(y) (ELBO on the data's scale: none ..., log1p ...)``: the scale a response was modelled
    on, with the ``criterion`` of each scale "auto" weighed (``tried``: label -> value); empty for a
    response fitted as given alone."""
    if transform is None and len(tried) <= 1:
        return ""
    values = ", ".join(f"{k} {v:.2f}" for k, v in tried.items())
    return label(response, transform) + (f" ({criterion} on the data's scale: {values})" if len(tried) > 1 else "")

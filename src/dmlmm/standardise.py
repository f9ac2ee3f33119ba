"""The response's standard deviation for the internal standardisation, with the checks every model shares.

Every model fits ``(y - shift) / scale``; :func:`response_scale` is where ``scale`` comes
from, and where a response that cannot be standardised is refused with one message,
whichever model is fitted: constant, or so large that its spread overflows.
"""

from __future__ import annotations

import numpy as np

from .exceptions import DataError

__all__ = ["response_scale"]


def response_scale(y: np.ndarray, name: str = "y") -> float:
    """Standard deviation of the response ``y`` (n,) named ``name``.

    Raises
    ------
    DataError
        When the values are too large to standardise (their spread overflows float64) or constant.
    """
    y = np.asarray(y, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = float(np.std(y)) if y.size else 0.0
    biggest = float(np.max(np.abs(y))) if y.size else 0.0
    if not np.isfinite(scale):
        raise DataError(
            f"the response '{name}' has values too large to standardise (largest |value| {biggest:.3g}): "
            "rescale it, e.g. divide by a power of ten"
        )
    if y.size < 2 or scale <= 1e-12 * max(1.0, biggest):
        first = f"{y[0]:g}" if y.size else "-"
        raise DataError(f"the response '{name}' is constant (every value is {first}): there is no variation to model")
    return scale

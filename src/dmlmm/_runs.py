"""Runs of equal values in a sorted index array: where each starts and how long it is.

The local step groups its (subject, path) pairs by subject and by path many times per
iteration; ``np.r_`` built these boundaries at about 20 microseconds a call, which added up
over the thousands of calls of a fit. Plain ``np.concatenate`` gives the same arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["run_starts", "run_lengths"]

_TRUE = np.ones(1, dtype=bool)


def run_starts(ids: np.ndarray) -> np.ndarray:
    """Positions where a new run of equal values begins in ``ids`` (n,) (empty for n = 0): int (runs,)."""
    if len(ids) == 0:
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate((_TRUE, ids[1:] != ids[:-1])))


def run_lengths(starts: np.ndarray, n: int) -> np.ndarray:
    """Lengths of the runs beginning at ``starts`` (runs,) in an array of length ``n``: int (runs,)."""
    return np.diff(np.append(starts, n))

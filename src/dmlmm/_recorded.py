"""Run a computation with its warnings held back, to raise them later only if its result is kept.

A fit runs several candidates (prior variants, noise models, restarts, response scales) and keeps the
one with the highest ELBO; a warning that a losing candidate raised (say, that it used its iteration
budget) would describe a fit the user does not get.
"""

from __future__ import annotations

import warnings
from typing import Callable, TypeVar

__all__ = ["recorded", "reraise"]

T = TypeVar("T")


def recorded(run: Callable[[], T]) -> tuple[T, list[warnings.WarningMessage]]:
    """``run()``, and the warnings it raised (all of them, none shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run()
    return out, list(caught)


def reraise(caught: list[warnings.WarningMessage]) -> None:
    """Raise warnings held back by :func:`recorded`, as from where they were first raised (the
    user's filters apply)."""
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

"""dmlmm: deep mixtures of linear mixed models for longitudinal data.

The public names are imported on first use (PEP 562), so that ``import dmlmm``
and the ``dmlmm`` command (``dmlmm --help``) start without loading numpy,
scipy and pandas; ``dmlmm.DeepMixtureLMM`` and ``from dmlmm import load`` work
as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (a submodule for compat, metrics, simulate)
_EXPORTS = {
    "SplineBasis": ".basis",
    "Longitudinal": ".data",
    "LinearMixedModel": ".lmm",
    "MixtureLMM": ".models",
    "DeepMixtureLMM": ".models",
    "load": ".io",
    "select_model": ".selection",
    "check_bands": ".calibration",
    "times_from_dates": ".dates",
    "simulate": None,
    "metrics": None,
    "compat": None,
    "CalibrationWarning": ".exceptions",
    "ConvergenceWarning": ".exceptions",
    "DataError": ".exceptions",
    "DataWarning": ".exceptions",
    "EmptyComponentWarning": ".exceptions",
    "ExtrapolationWarning": ".exceptions",
    "IdentifiabilityWarning": ".exceptions",
    "NotFittedError": ".exceptions",
    "NumericalError": ".exceptions",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'dmlmm' has no attribute {name!r}")
    module = _EXPORTS[name]
    if module is None:  # a submodule (dmlmm.simulate, ...)
        value = importlib.import_module(f".{name}", __name__)
    else:
        value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from . import compat, metrics, simulate
    from .basis import SplineBasis
    from .data import Longitudinal
    from .calibration import check_bands
    from .exceptions import (
        CalibrationWarning,
        ConvergenceWarning,
        DataError,
        DataWarning,
        EmptyComponentWarning,
        ExtrapolationWarning,
        IdentifiabilityWarning,
        NotFittedError,
        NumericalError,
    )
    from .io import load
    from .lmm import LinearMixedModel
    from .models import DeepMixtureLMM, MixtureLMM
    from .selection import select_model

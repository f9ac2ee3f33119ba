"""Declarative validation of the models' hyperparameters: one table of rules, one error style.

Each rule names the parameter, what it must be, and the value given, so a bad setting never
escapes as a raw error from deep inside the fit (``ZeroDivisionError``, a numpy broadcast error).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import numpy as np

__all__ = ["check_model_params", "check_random_state", "check_flag", "check_interval", "positive_int"]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def _positive_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v) and v > 0


def check_flag(v: Any, name: str) -> None:
    """A ValueError naming ``name`` unless ``v`` is True or False (a string such as "no" is truthy)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")


def check_interval(v: Any, name: str = "interval") -> float:
    """``v`` as a float when it is a number strictly between 0 and 1 (a band's central probability), else a
    ValueError naming ``name`` (a string such as "0.9" compared with 0 failed with a TypeError)."""
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0.0 < float(v) < 1.0):
        raise ValueError(f"{name} must be a number in (0, 1), e.g. 0.95, got {v!r}")
    return float(v)


def _positive_or_per_layer(v: Any) -> bool:
    if isinstance(v, (tuple, list)):
        return len(v) > 0 and all(_positive_number(x) for x in v)
    return _positive_number(v)


def _int_tuple(v: Any) -> bool:
    if _is_int(v):
        return v >= 1
    return isinstance(v, (tuple, list)) and len(v) > 0 and all(positive_int(x) for x in v)


def _smoothing(v: Any) -> bool:
    return v is None or (_is_int(v) and 1 <= v <= 3)


def _batch_size(v: Any) -> bool:
    return v in ("auto", "full", None) or positive_int(v)


# parameter -> (rule, what it must be)
#: The rule of an on/off hyperparameter: a bool (a string such as "no" is truthy, and meant the opposite).
_FLAG: tuple[Callable[[Any], bool], str] = (lambda v: isinstance(v, (bool, np.bool_)), "True or False")

_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_iter": (positive_int, "a positive integer"),
    "tol": (_positive_number, "a positive number"),
    "n_init": (positive_int, "a positive integer"),
    "n_jobs": (lambda v: v is None or v == -1 and _is_int(v) or positive_int(v), "None, -1 or a positive integer"),
    "method": (lambda v: isinstance(v, str) and v.lower() in ("vb", "ml", "reml"), "one of 'vb', 'ml' or 'reml'"),
    "smoothing": (_smoothing, "None or the order of the roughness penalty (1, 2 or 3)"),
    "batch_size": (_batch_size, "a positive integer, 'auto' or 'full'"),
    "subsample": (lambda v: v == "auto" or (positive_int(v) and v >= 2), "'auto' or an integer of at least 2"),
    "noise_scale": (_positive_number, "a positive number (the half-Cauchy scale of the residual SD)"),
    "cov_scale": (_positive_number, "a positive number (the half-t scale of the random-effect SDs)"),
    "concentration": (_positive_or_per_layer, "a positive number, or one per layer"),
    "mean_scale": (lambda v: (isinstance(v, str) and v == "auto") or _positive_or_per_layer(v),
                   "'auto', a positive number, or one per layer"),
    "loading_scale": (_positive_or_per_layer, "a positive number, or one per layer"),
    "delta_scale": (_positive_or_per_layer, "a positive number, or one per layer"),
    "latent_dims": (_int_tuple, "a tuple of positive integers, one per layer"),
    "noise": (lambda v: v in ("shared", "cluster", "auto"), "one of 'shared', 'cluster' or 'auto'"),
    "noise_df": (lambda v: v is None or (isinstance(v, str) and v == "auto") or _positive_number(v),
                 "None, 'auto' or a positive number (the degrees of freedom of the subjects' residual scales)"),
    "covariance": (lambda v: isinstance(v, str) and v in ("auto", "pspline", "full"), "'auto', 'pspline' or 'full'"),
    "polynomial_covariance": (lambda v: isinstance(v, str) and v in ("diagonal", "full", "auto"),
                              "'diagonal', 'full' or 'auto'"),
    "loading_order": (lambda v: (isinstance(v, str) and v == "auto") or (_positive_number(v) and v >= 1),
                      "'auto' or a number of at least 1"),
    "response_transform": (lambda v: v is None or (isinstance(v, str) and v in ("auto", "none", "log", "log1p")),
                           "'auto', None, 'log' or 'log1p'"),
    "hard_assignment": _FLAG,
    "delete_moves": _FLAG,
    "prune": _FLAG,
    "progress": _FLAG,
    "membership_covariates": (
        lambda v: v is None or isinstance(v, str) or (isinstance(v, (list, tuple)) and len(v) > 0
                                                      and all(isinstance(c, str) for c in v) and len(set(v)) == len(v)),
        "None or a list of distinct column names",
    ),
}

_COMPONENTS = {
    "MixtureLMM": (positive_int, "a positive integer (for several layers use DeepMixtureLMM)"),
    "DeepMixtureLMM": (_int_tuple, "a tuple of positive integers, one per layer (e.g. (10, 5))"),
}


def check_random_state(v: Any) -> None:
    """random_state must be None, a non-negative integer, a SeedSequence or a numpy Generator."""
    ok = v is None or (_is_int(v) and v >= 0) or isinstance(v, (np.random.Generator, np.random.SeedSequence))
    if not ok:
        raise ValueError(
            f"random_state must be None, a non-negative integer, a numpy SeedSequence or Generator, got {v!r}"
        )


#: Hyperparameters that take one value per layer of a deep mixture (one number for a one-layer model).
PER_LAYER = ("concentration", "mean_scale", "loading_scale", "delta_scale")


def check_model_params(model: Any) -> None:
    """Raise a ValueError naming the first hyperparameter of ``model`` that breaks its rule."""
    from ..basis import SplineBasis

    comp = _COMPONENTS.get(type(model).__name__)
    if comp is not None and hasattr(model, "n_components") and not comp[0](model.n_components):
        raise ValueError(f"n_components must be {comp[1]}, got {model.n_components!r}")
    for name, (rule, what) in _RULES.items():
        if hasattr(model, name) and not rule(getattr(model, name)):
            raise ValueError(f"{name} must be {what}, got {getattr(model, name)!r}")
    basis = getattr(model, "basis", None)
    if basis is not None and not isinstance(basis, SplineBasis):
        raise ValueError(f"basis must be None or a dmlmm.SplineBasis, e.g. SplineBasis(10), got {basis!r}")
    if basis is not None:
        basis._check_settings()
    threads = getattr(model, "blas_threads", None)
    if threads is not None and not positive_int(threads):
        raise ValueError(f"blas_threads must be None or a positive integer, got {threads!r}")
    _check_per_layer(model)
    check_random_state(getattr(model, "random_state", None))


def _check_per_layer(model: Any) -> None:
    """A per-layer tuple has one value per layer: a deep mixture's layers (``n_components``), one for a mixture.
    (A short tuple raised an IndexError deep in the prior, a long one's extra values were ignored, and a
    mixture's tuple failed in float().)"""
    k = getattr(model, "n_components", None)
    deep = isinstance(k, (tuple, list))
    layers = len(k) if deep else 1
    for name in PER_LAYER:
        v = getattr(model, name, None)
        if isinstance(v, (tuple, list)) and (len(v) != layers or not deep):
            what = f"{layers} layers (n_components={k!r})" if layers > 1 else "1 layer: give one number"
            raise ValueError(f"{name} must have one value per layer, {what}; got {v!r}")

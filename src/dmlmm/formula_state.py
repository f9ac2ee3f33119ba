"""A fitted formulaic ``ModelSpec``'s state as plain JSON, and back (no pickles).

A formula must rebuild, for new rows, exactly the columns it was fitted with: the same
categorical levels, the same centring and scaling of ``center(x)`` / ``scale(x)``, the same
knots of ``bs(x)``, the same ``poly(x)`` recurrence. formulaic keeps all of that in a fitted
``ModelSpec``'s ``encoder_state`` and ``transform_state``. :func:`state_to_json` writes them as
JSON (the contrasts are left out: the formula names them and formulaic rebuilds them from it),
:func:`state_from_json` reads them back; the covariate coding (:mod:`dmlmm.covariates`) and the
linear mixed model's formulas (:func:`spec_to_json`, with the formula itself) both use them. A
state that is not plain data (an object array, an unknown type) is refused with a DataError
naming the term, so a model cannot be saved silently wrong.
"""

from __future__ import annotations

import json

import numpy as np

from .exceptions import DataError

__all__ = ["state_to_json", "state_from_json", "spec_to_json", "spec_from_json"]


def spec_to_json(spec) -> dict:
    """JSON-able description of a fitted formulaic ``ModelSpec``: its formula and :func:`state_to_json`."""
    return {"formula": str(spec.formula), "ensure_full_rank": bool(spec.ensure_full_rank), **state_to_json(spec)}


def spec_from_json(d: dict):
    """The ``ModelSpec`` described by :func:`spec_to_json`'s output."""
    from formulaic import ModelSpec

    encoder, transforms = state_from_json(d)
    return ModelSpec(formula=d["formula"], materializer="pandas", ensure_full_rank=bool(d["ensure_full_rank"]),
                     output="pandas", encoder_state=encoder, transform_state=transforms)


def _to_json(v, where: str):
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {k: _to_json(x, where) for k, x in v.items()}
        return {"__items__": [[_to_json(k, where), _to_json(x, where)] for k, x in v.items()]}
    if isinstance(v, tuple):
        return {"__tuple__": [_to_json(x, where) for x in v]}
    if isinstance(v, list):
        return [_to_json(x, where) for x in v]
    if isinstance(v, np.ndarray):
        if v.dtype.kind not in "biuf":
            raise DataError(f"the formula's {where} keeps a state that cannot be saved ({v.dtype} array)")
        return {"__array__": v.tolist(), "dtype": v.dtype.str}
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise DataError(f"the formula's {where} keeps a state that cannot be saved ({type(v).__name__})")


def _from_json(v):
    if isinstance(v, dict):
        if "__items__" in v:
            return {_from_json(k): _from_json(x) for k, x in v["__items__"]}
        if "__tuple__" in v:
            return tuple(_from_json(x) for x in v["__tuple__"])
        if "__array__" in v:
            return np.asarray(v["__array__"], dtype=np.dtype(v["dtype"]))
        return {k: _from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_json(x) for x in v]
    return v


def state_to_json(spec) -> dict:
    """formulaic's fitted ``encoder_state`` (without the contrasts, which the formula rebuilds) and
    ``transform_state`` of ``spec`` as plain JSON: ``{"encoder": {term: {"kind", "state"}}, "transforms": ...}``."""
    encoder = {}
    for expr, (kind, state) in spec.encoder_state.items():
        kept = {k: x for k, x in state.items() if k != "contrasts"}  # the contrasts are rebuilt from the formula
        encoder[expr] = {"kind": kind.value, "state": _to_json(kept, f"term '{expr}'")}
    transforms = {expr: _to_json(state, f"transform '{expr}'") for expr, state in spec.transform_state.items()}
    out = {"encoder": encoder, "transforms": transforms}
    json.dumps(out, allow_nan=True)  # plain JSON, or a TypeError here rather than at save
    return out


def state_from_json(d: dict) -> tuple[dict, dict]:
    """The ``encoder_state`` and ``transform_state`` saved by :func:`state_to_json`."""
    from formulaic.parser.types import Factor

    encoder = {expr: (Factor.Kind(e["kind"]), _from_json(e["state"])) for expr, e in d.get("encoder", {}).items()}
    transforms = {expr: _from_json(s) for expr, s in d.get("transforms", {}).items()}
    return encoder, transforms

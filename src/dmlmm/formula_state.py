"""A fitted formulaic ``ModelSpec`` as plain JSON, and back (no pickles).

A formula model must rebuild, for new rows, exactly the columns it was fitted
with: the same categorical levels and contrasts, the same centring and scaling of
``center(x)`` / ``scale(x)``, the same knots of ``bs(x)``, the same ``poly(x)``
recurrence. formulaic keeps all of that in a fitted ``ModelSpec``'s
``encoder_state`` and ``transform_state``; :func:`spec_to_json` writes them, with the
formula, as JSON, and :func:`spec_from_json` rebuilds a ``ModelSpec`` that produces
the same model matrix.

The encoding is lossless for what formulaic stores there: JSON scalars, numpy
scalars and arrays, lists, tuples, dicts (with any hashable JSON-able keys),
formulaic's ``Kind`` enum, ``ContrastsState`` and the contrasts classes of
``formulaic.transforms.contrasts`` (their constructor arguments), and the
``UNSET`` sentinel. Anything else raises a TypeError naming its type, so a model
whose formula uses a state this codec does not know cannot be saved silently wrong.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["spec_to_json", "spec_from_json"]


def spec_to_json(spec) -> dict:
    """JSON-able description of a fitted formulaic ``ModelSpec``."""
    return {
        "formula": str(spec.formula),
        "ensure_full_rank": bool(spec.ensure_full_rank),
        "transform_state": _enc(dict(spec.transform_state)),
        "encoder_state": _enc(dict(spec.encoder_state)),
    }


def spec_from_json(d: dict):
    """The ``ModelSpec`` described by :func:`spec_to_json`'s output."""
    from formulaic import ModelSpec

    return ModelSpec(
        formula=d["formula"], materializer="pandas", ensure_full_rank=bool(d["ensure_full_rank"]), output="pandas",
        transform_state=_dec(d["transform_state"]), encoder_state=_dec(d["encoder_state"]),
    )


def _enc(v: Any) -> Any:
    from formulaic.parser.types.factor import Factor
    from formulaic.transforms.contrasts import Contrasts, ContrastsState
    from formulaic.utils.sentinels import UNSET

    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    if isinstance(v, np.generic):
        return {"__scalar__": v.item(), "dtype": str(v.dtype)}
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return {"__objects__": [_enc(x) for x in v.tolist()]}
        return {"__ndarray__": v.tolist(), "dtype": str(v.dtype), "shape": list(v.shape)}
    if v is UNSET:
        return {"__unset__": True}
    if isinstance(v, Factor.Kind):
        return {"__kind__": v.value}
    if isinstance(v, ContrastsState):
        return {"__contrasts_state__": {"contrasts": _enc(v.contrasts), "levels": _enc(list(v.levels))}}
    if isinstance(v, Contrasts):
        if not dataclasses.is_dataclass(v):
            raise TypeError(f"cannot save formulaic contrasts of type {type(v).__name__}")
        args = {f.name: _enc(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        return {"__contrasts__": type(v).__name__, "args": args}
    if isinstance(v, tuple):
        return {"__tuple__": [_enc(x) for x in v]}
    if isinstance(v, list):
        return [_enc(x) for x in v]
    if isinstance(v, dict):
        return {"__dict__": [[_enc(k), _enc(x)] for k, x in v.items()]}
    raise TypeError(f"cannot save formulaic state of type {type(v).__name__} ({v!r})")


def _dec(v: Any) -> Any:
    if isinstance(v, list):
        return [_dec(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "__scalar__" in v:
        return np.dtype(v["dtype"]).type(v["__scalar__"])
    if "__ndarray__" in v:
        return np.asarray(v["__ndarray__"], dtype=v["dtype"]).reshape(v["shape"])
    if "__objects__" in v:
        return np.asarray([_dec(x) for x in v["__objects__"]], dtype=object)
    if "__unset__" in v:
        from formulaic.utils.sentinels import UNSET

        return UNSET
    if "__kind__" in v:
        from formulaic.parser.types.factor import Factor

        return Factor.Kind(v["__kind__"])
    if "__contrasts_state__" in v:
        from formulaic.transforms.contrasts import ContrastsState

        s = v["__contrasts_state__"]
        return ContrastsState(contrasts=_dec(s["contrasts"]), levels=_dec(s["levels"]))
    if "__contrasts__" in v:
        import formulaic.transforms.contrasts as contrasts

        cls = getattr(contrasts, v["__contrasts__"], None)
        if not (isinstance(cls, type) and issubclass(cls, contrasts.Contrasts)):
            raise ValueError(f"unknown formulaic contrasts {v['__contrasts__']!r}")
        return cls(**{k: _dec(x) for k, x in v["args"].items()})
    if "__tuple__" in v:
        return tuple(_dec(x) for x in v["__tuple__"])
    if "__dict__" in v:
        return {_hashable(_dec(k)): _dec(x) for k, x in v["__dict__"]}
    raise ValueError(f"unknown entry in a saved formula state: {sorted(v)}")


def _hashable(k: Any) -> Any:
    return tuple(k) if isinstance(k, list) else k

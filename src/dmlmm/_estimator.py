"""Hyperparameters in scikit-learn's conventions: ``get_params``, ``set_params``, ``repr``.

Every model (and the spline basis it holds) keeps its hyperparameters as attributes named
after its ``__init__`` arguments and nothing else there, so these three are written once
here from the signature. That is all ``sklearn.base.clone``, grid searches and pipelines
need; scikit-learn itself is not required.
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["HyperParameters"]


class HyperParameters:
    """Mixin: ``get_params`` / ``set_params`` / ``__repr__`` from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(
            p.name for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyperparameters as given to ``__init__``.

        Parameters
        ----------
        deep : bool
            Also list the hyperparameters of nested objects that have ``get_params``
            (e.g. ``basis__n_basis``), as scikit-learn does.
        """
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> "HyperParameters":
        """Set hyperparameters (``basis__n_basis=30`` reaches into the basis); returns self.

        An unknown name raises a ValueError naming it and the valid ones. Values are checked
        when the model is fitted, as for the constructor.
        """
        valid = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__} has no parameter {name!r}; valid parameters: {', '.join(valid)}"
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            inner = getattr(self, name)
            if not hasattr(inner, "set_params"):
                raise ValueError(
                    f"{type(self).__name__}.{name} is {inner!r}, which has no parameters to set "
                    f"({', '.join(sub_params)}); set {name} itself"
                )
            inner.set_params(**sub_params)
        return self

    def _init_params(self) -> dict[str, Any]:
        """The hyperparameters in signature order (for repr and model files)."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self" and hasattr(self, k)}

    def __repr__(self) -> str:
        """Only the hyperparameters that differ from their defaults, as scikit-learn prints."""
        sig = inspect.signature(type(self).__init__)
        shown = []
        for k, v in self._init_params().items():
            default = sig.parameters[k].default
            if default is not inspect.Parameter.empty and _same(v, default):
                continue
            shown.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


def _same(value: Any, default: Any) -> bool:
    try:
        return bool(value == default) and type(value) is type(default)
    except (TypeError, ValueError):  # arrays compare elementwise
        return False

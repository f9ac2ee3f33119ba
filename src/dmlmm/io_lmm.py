"""The saved form of a fitted :class:`~dmlmm.LinearMixedModel` (one of the model files of :mod:`dmlmm.io`).

Same archive and checks as the mixtures' files; the metadata hold, instead of a
prior and variational parameters:

- ``design``: the fitted design builder's state: ``{"kind": "formula", "formula": ...,
  "fixed_spec": ..., "random_specs": [...]}`` (formulaic's fitted specs as JSON,
  :mod:`dmlmm.formula_state`: categorical levels, contrasts, stateful transforms), or
  ``{"kind": "longitudinal", "basis": ..., "columns": ..., "encoding": ...}``, or
  ``{"kind": "matrix", ...}``, plus the column names;
- ``estimate``: the scalars of :class:`~dmlmm.lmm.estimators.Estimate` (its arrays,
  ``estimate.beta`` etc., are in ``arrays.npz``);
- ``fitted``: ``method_``, ``n_obs_``, ``design_info_``, the subjects, and for the
  variational fit ``elbo_``, ``elbo_history_`` and the ``posterior_`` table.

A loaded model predicts, samples and scores bit-identically: every number it uses is
stored as it was computed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["lmm_to_dict", "lmm_from_dict", "check_lmm"]

_ESTIMATE_ARRAYS = ("beta", "cov_beta", "cov_re", "b", "cov_b", "beta_sensitivity", "theta")
_ESTIMATE_SCALARS = {"sigma2": float, "loglik": float, "n_params": int, "n_iter": int, "converged": bool,
                     "message": str}


def lmm_to_dict(model) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``design``, ``estimate`` and ``fitted`` entries of a LinearMixedModel's metadata, and its arrays."""
    from .io import _encode_frame, _encode_index, _jsonable

    model._check_fitted()
    est = model.estimate_
    arrays = {f"estimate.{k}": np.asarray(getattr(est, k), dtype=float) for k in _ESTIMATE_ARRAYS}
    estimate = {k: cast(getattr(est, k)) for k, cast in _ESTIMATE_SCALARS.items()}
    info = dict(model.design_info_)
    info["random_blocks"] = [[g, list(names)] for g, names in info["random_blocks"]]
    fitted: dict[str, Any] = {"method_": model.method_, "n_obs_": int(model.n_obs_), "n_groups_": int(model.n_groups_),
                              "design_info_": _jsonable(info), "subjects": _encode_index(model._subjects)}
    if model._last_times is not None:
        arrays["fitted.last_times"] = np.asarray(model._last_times, dtype=float)
    if getattr(model, "_fitted_rows", None) is not None:
        arrays["fitted.rows"] = np.asarray(model._fitted_rows, dtype=float)
    fitted["response_transform_"] = model.response_transform_
    fitted["singular_"] = bool(model.singular_)  # judged in the coordinates fitted, which the file does not hold
    fitted["loglik_data_scale_"] = model.loglik_data_scale_
    fitted["criterion_by_transform_"] = {k: float(v) for k, v in model.criterion_by_transform_.items()}
    if model.method_ == "vb":
        fitted["elbo_"] = float(model.elbo_)
        arrays["fitted.elbo_history_"] = np.asarray(model.elbo_history_, dtype=float)
        fitted["posterior_"] = _encode_frame(model.posterior_, "fitted.posterior_", arrays)
    return {"design": _jsonable(model.builder_.to_dict()), "estimate": estimate, "fitted": fitted}, arrays


def lmm_from_dict(cls, hyper: dict, meta: dict, arrays: dict[str, np.ndarray]):
    """A fitted LinearMixedModel from :func:`lmm_to_dict`'s output (``hyper``: its decoded hyperparameters)."""
    from .io import _decode_frame, _decode_index, _get
    from .lmm.design import builder_from_dict
    from .lmm.estimators import Estimate
    from .response_transform import check_transform

    model = cls(**hyper)
    model.builder_ = builder_from_dict(meta["design"])
    e = meta["estimate"]
    est = Estimate(**{k: _get(arrays, f"estimate.{k}") for k in _ESTIMATE_ARRAYS},
                   **{k: cast(e[k]) for k, cast in _ESTIMATE_SCALARS.items()}, extra={})
    f = meta["fitted"]
    info = dict(f["design_info_"])
    info["random_blocks"] = [(g, list(names)) for g, names in info["random_blocks"]]
    model.design_info_ = info
    model.method_, model.n_obs_, model.n_groups_ = str(f["method_"]), int(f["n_obs_"]), int(f["n_groups_"])
    model.scaling_ = None  # the standardisation of the fit is not needed after it
    last = _get(arrays, "fitted.last_times") if "fitted.last_times" in arrays else None
    model._set_estimate(est, _decode_index(f["subjects"]), last)
    if "singular_" in f:  # files written before it was kept: judged again from cov_re_
        model.singular_ = bool(f["singular_"])
    # files written before the fitted rows were kept: a fitted subject's own posterior whatever rows are given
    model._fitted_rows = _get(arrays, "fitted.rows") if "fitted.rows" in arrays else None
    # files written before response_transform existed: the response as given
    model.response_transform_ = check_transform(f.get("response_transform_"))
    model.loglik_data_scale_ = f.get("loglik_data_scale_", None if model.method_ == "reml" else float(est.loglik))
    model.criterion_by_transform_ = dict(f.get("criterion_by_transform_", {}))
    if model.method_ == "vb":
        model.elbo_ = float(f["elbo_"])
        model.elbo_history_ = _get(arrays, "fitted.elbo_history_")
        model.posterior_ = _decode_frame(f["posterior_"], arrays)
    return model


def check_lmm(model) -> str | None:
    """What is inconsistent in a loaded LinearMixedModel (None: nothing)."""
    est = model.estimate_
    p, q, n = len(model.design_info_["fixed_names"]), len(model.design_info_["random_names"]), len(model._subjects)
    shapes = {"beta": (p,), "cov_beta": (p, p), "cov_re": (q, q), "b": (n, q), "cov_b": (n, q, q),
              "beta_sensitivity": (n, q, p)}
    for k, shape in shapes.items():
        a = getattr(est, k)
        if a.shape != shape:
            return f"estimate.{k} has shape {a.shape}, expected {shape}"
        if not np.isfinite(a).all():
            return f"estimate.{k} has non-finite values"
    if not (np.isfinite(est.sigma2) and est.sigma2 > 0):
        return f"the residual variance is {est.sigma2!r}, not a positive number"
    for k in ("cov_re", "cov_beta"):
        a = getattr(est, k)
        scale = max(float(np.abs(a).max(initial=0.0)), 1e-300)
        if a.size and (np.abs(a - a.T).max() > 1e-8 * scale or np.linalg.eigvalsh(a)[0] < -1e-8 * scale):
            return f"estimate.{k} is not a covariance matrix (asymmetric or negative eigenvalue)"
    return None

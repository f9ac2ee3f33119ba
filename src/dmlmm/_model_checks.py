"""Consistency checks of a model read from a file (see :func:`dmlmm.io.load`).

A model file is protected against random damage by the archive's CRC-32, but
not against hand edits or a writer's bug: metadata that disagree with the
arrays, wrong shapes, NaN, negative variances. :func:`check_model` looks for
those before the model is handed out, so that they are reported as a corrupt
file instead of failing later, somewhere inside a prediction.

The checks are generic where the model code is still evolving: every array of
the variational parameters must be finite; the factors of the exponential
families (:mod:`dmlmm.expfam`) must have positive shapes, rates and
concentrations and positive definite precisions and scales; the fitted tables
must agree with each other; and the model must predict a population curve and
a subject's cluster probabilities with finite, well-ordered values.
"""

from __future__ import annotations

import warnings
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["check_model"]


class _Bad(Exception):
    """One inconsistency (its message says which)."""


def check_model(model) -> str | None:
    """The first inconsistency found in a loaded model (a short phrase), or None."""
    if type(model).__name__ == "LinearMixedModel":
        from .io_lmm import check_lmm

        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return check_lmm(model)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            _check_design(model.design_)
            _check_tree(model.params_, "params")
            _check_fitted(model)
            _check_predictions(model)
    except _Bad as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------- helpers
def _finite(name: str, value: Any) -> np.ndarray:
    a = np.asarray(value)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        raise _Bad(f"{name} holds non-finite values (NaN or infinity)")
    if a.dtype.kind not in "biufc":
        raise _Bad(f"{name} is not numeric")
    return a


def _positive(name: str, value: Any) -> np.ndarray:
    a = _finite(name, value)
    if a.size and not (a > 0).all():
        raise _Bad(f"{name} must be positive, but holds {float(a[~(a > 0)].ravel()[0]):g}")
    return a


def _positive_definite(name: str, value: Any) -> np.ndarray:
    a = _finite(name, value).astype(float)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise _Bad(f"{name} must be square matrices, but has shape {a.shape}")
    if a.size and not np.allclose(a, np.swapaxes(a, -1, -2), rtol=1e-8, atol=1e-10 * max(1.0, np.abs(a).max())):
        raise _Bad(f"{name} is not symmetric")
    try:
        np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise _Bad(f"{name} is not positive definite") from None
    return a


def _shape(name: str, value: Any, shape: tuple) -> np.ndarray:
    a = np.asarray(value)
    if a.shape != tuple(shape):
        raise _Bad(f"{name}: shape {a.shape}, but the model needs {tuple(shape)}")
    return a


# ---------------------------------------------------------------------------- design
def _check_design(design) -> None:
    b = design.basis
    k, nb = int(b.degree), int(b.n_basis)
    if k < 0 or nb < k + 1:
        raise _Bad(f"the spline basis has n_basis={nb} and degree={k}")
    knots = _finite("the spline knots", b.knots_)
    if knots.shape != (nb + k + 1,):
        raise _Bad(f"the spline basis has {len(knots)} knots, but n_basis={nb} and degree={k} need {nb + k + 1}")
    if np.any(np.diff(knots) < 0):
        raise _Bad("the spline knots are not in increasing order")
    lo, hi = float(_finite("the basis range", b.lower_)), float(_finite("the basis range", b.upper_))
    if not lo < hi:
        raise _Bad(f"the basis range [{lo}, {hi}] is empty")
    _positive("the response scale", design.y_scale)
    _finite("the response shift", design.y_shift)
    P = len(design.encoding.names)
    _shape("the covariate means", _finite("the covariate means", design.covariate_mean), (P,))
    _shape("the covariate scales", _positive("the covariate scales", design.covariate_sd), (P,))
    rotation = getattr(design, "rotation", None)
    if rotation is not None:
        _shape("the basis rotation", _finite("the basis rotation", rotation), (nb, nb))
    roughness = getattr(design, "roughness", None)
    if roughness is not None:
        _shape("the basis roughness", _finite("the basis roughness", roughness), (nb,))


# ---------------------------------------------------------------------------- parameters
def _check_tree(node: Any, name: str) -> None:
    """Every leaf finite; the exponential-family factors within their parameter spaces."""
    from .expfam import Dirichlet, Gaussian, InvGamma, InvWishart

    if node is None:
        return
    if isinstance(node, tuple):
        for i, v in enumerate(node):
            _check_tree(v, f"{name}.{i}")
        return
    if not (is_dataclass(node) and not isinstance(node, type)):
        _finite(name, node)
        return
    if isinstance(node, InvGamma):
        shape = _positive(f"{name}.shape", node.shape)
        rate = _positive(f"{name}.rate", node.rate)
        try:
            np.broadcast_shapes(shape.shape, rate.shape)
        except ValueError:
            raise _Bad(f"{name}: shape and rate arrays disagree ({shape.shape} vs {rate.shape})") from None
    elif isinstance(node, Dirichlet):
        _positive(f"{name}.alpha", node.alpha)
    elif isinstance(node, Gaussian):
        prec = _positive_definite(f"{name}.precision", node.precision)
        _shape(f"{name}.shift", _finite(f"{name}.shift", node.shift), prec.shape[:-1])
    elif isinstance(node, InvWishart):
        scale = _positive_definite(f"{name}.scale", node.scale)
        df = _positive(f"{name}.df", node.df)
        if df.shape != scale.shape[:-2] or (df <= scale.shape[-1] - 1).any():
            raise _Bad(f"{name}.df must be one number above dimension - 1 per matrix")
    else:
        for f in fields(node):
            _check_tree(getattr(node, f.name), f"{name}.{f.name}")


# ---------------------------------------------------------------------------- fitted tables
def _probabilities(name: str, frame: pd.DataFrame, n_rows: int, n_cols: int) -> np.ndarray:
    p = _finite(name, _shape(name, frame.to_numpy(), (n_rows, n_cols))).astype(float)
    if ((p < -1e-9) | (p > 1 + 1e-9)).any():
        raise _Bad(f"{name} holds values outside [0, 1]")
    if n_rows and not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise _Bad(f"the {name} of a subject do not sum to 1")
    return p


def _permutation(name: str, a: Any, n: int) -> None:
    a = np.asarray(a)
    if a.shape != (n,) or a.dtype.kind not in "iu" or not np.array_equal(np.sort(a), np.arange(n)):
        raise _Bad(f"{name} is not an ordering of {n} items")


def _check_fitted(model) -> None:
    N = len(model.subjects_)
    if N == 0 or model.subjects_.has_duplicates:
        raise _Bad("the subject labels are empty or repeated")
    kept = model.components_kept_
    if tuple(model.n_components_) != tuple(len(k) for k in kept):
        raise _Bad(f"n_components_ {tuple(model.n_components_)} disagrees with the components kept "
                   f"{tuple(len(k) for k in kept)}")
    K = len(model.clusters_)
    K1 = len(kept[0]) if kept else 0
    if K < 1 or K1 < 1:
        raise _Bad("the model has no clusters")
    _probabilities("responsibilities", model.responsibilities_, N, K)
    _probabilities("first-layer probabilities", model.group_proba_, N, K1)
    _permutation("the cluster order", model._path_order, K)
    _permutation("the first-layer order", model._group_order, K1)
    _permutation("the first-layer numbering", model._group_of_path, K1)
    D = int(model.design_.basis.n_basis)
    _finite("the random effects", _shape("the random effects", model.random_effects_.to_numpy(), (N, D)))
    _shape("the fixed effects", _finite("the fixed effects", model.fixed_effects_.to_numpy()),
           (len(model.design_.encoding.names),))
    _positive("the residual variance sigma2_", model.sigma2_)
    _shape("the residual variances by cluster", _positive("sigma2_by_cluster_", model.sigma2_by_cluster_.to_numpy()), (K1,))
    q = model.params_.noise
    if np.ndim(q.shape) and np.shape(q.shape) != (K1,):
        raise _Bad(f"the per-cluster noise factors have shape {np.shape(q.shape)}, but the model has {K1} first-layer components")
    for attr in ("elbo_", "offset_", "fit_seconds_"):
        _finite(attr, getattr(model, attr))
    if int(model.n_iter_) < 0:
        raise _Bad(f"n_iter_ is negative ({model.n_iter_})")
    curves = model.cluster_means_
    _finite("the cluster curves", curves.select_dtypes("number").to_numpy())
    if set(pd.unique(curves["cluster"])) - set(range(K)):
        raise _Bad("the cluster curves name clusters the model does not have")


# ---------------------------------------------------------------------------- predictions
def _probe_frame(model) -> pd.DataFrame:
    """Two observations of one made-up subject, with every covariate at a valid value."""
    d = model.design_
    c = d.columns
    lo, hi = float(d.basis.lower_), float(d.basis.upper_)
    frame = pd.DataFrame({c.subject: ["probe", "probe"], c.time: [lo, hi], c.response: [d.to_user_scale(0.0)] * 2})
    _fill_valid(frame, d.encoding, d.covariate_mean)
    m = getattr(d, "membership", None)
    if m is not None:
        _fill_valid(frame, m.encoding, m.mean)
    return frame


def _fill_valid(frame: pd.DataFrame, encoding, means: np.ndarray) -> None:
    """Every column ``encoding`` reads in ``frame`` at a valid value: its first level, or its mean."""
    by_name = dict(zip(encoding.names, means))
    typical = encoding.typical()
    for col in encoding.columns:
        if col not in frame.columns:
            frame[col] = typical[col] if col in typical else float(by_name.get(col, 0.0))


def _check_predictions(model) -> None:
    """The model must produce a finite, ordered population band and valid probabilities for a subject."""
    try:
        lo, hi = float(model.design_.basis.lower_), float(model.design_.basis.upper_)
        pop = model.predict_trajectory(None, times=np.linspace(lo, hi, 5))
        proba = model.predict_proba(_probe_frame(model))
    except Exception as e:  # shapes that disagree surface here as broadcasting or linear-algebra errors
        raise _Bad(f"the model cannot predict ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    band = pop[["lower", "mean", "upper"]].to_numpy(dtype=float)
    if not np.isfinite(band).all() or (np.diff(band, axis=1) < -1e-9 * np.abs(band).max()).any():
        raise _Bad("the model predicts non-finite or disordered bands")
    p = proba.to_numpy(dtype=float)
    if not np.isfinite(p).all() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6):
        raise _Bad("the model predicts cluster probabilities that do not sum to 1")

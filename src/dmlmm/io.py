"""Saved models: one versioned, pickle-free file per fitted model.

``model.save(path)`` writes a fitted :class:`~dmlmm.MixtureLMM`,
:class:`~dmlmm.DeepMixtureLMM` or :class:`~dmlmm.LinearMixedModel`; ``dmlmm.load(path)``
reads it back (the linear mixed model's entries: :mod:`dmlmm.io_lmm`). The loaded
model predicts bit-identically (same arrays, same arithmetic).

File format ``"dmlmm-model"``, format versions 1 and 2
-------------------------------------------------------
The file (conventionally ``*.dmlmm``) is a ZIP archive with two members:

``metadata.json``
    UTF-8 JSON object with the keys

    - ``format``: the string ``"dmlmm-model"`` (identifies the file type);
    - ``format_version``: 2 when the covariates are a formula, else 1 (readers refuse
      newer versions; version 1 files, older readers included, read a list of columns);
    - ``library_version``: the dmlmm version that wrote the file;
    - ``model_class``: ``"MixtureLMM"``, ``"DeepMixtureLMM"`` (the entries below) or
      ``"LinearMixedModel"`` (``design``, ``estimate``, ``fitted``: :mod:`dmlmm.io_lmm`);
    - ``hyperparameters``: the ``__init__`` arguments; the basis as
      ``{"SplineBasis": SplineBasis.to_dict()}`` (or null), tuples as lists;
    - ``design``: ``LongitudinalDesign.to_dict()`` (basis knots, column names,
      covariate coding, response and covariate standardisation). The coding
      (``design.encoding``, :meth:`dmlmm.covariates.CovariateEncoding.to_dict`) holds
      ``columns`` and ``levels`` (null for a numeric column) and, since version 2,
      ``formula`` (null for a list of columns), ``time``, ``names``, ``means`` and
      ``state`` (formulaic's learned state as plain JSON); a coding with only
      ``columns`` and ``levels`` (files written before formulas) is rebuilt from the levels;
    - ``prior``: ``{"class": ..., "args": {...}}``, the random-effects prior's
      class name and constructor arguments (dim, n_components, latent_dims,
      hyperparameters) after pruning;
    - ``params``: the tree of the variational parameters ``params_``. A
      dataclass node is ``{"type": "<module>.<class>", "fields": {name: node}}``,
      a tuple ``{"tuple": [node, ...]}``, a missing factor ``null`` and a leaf
      ``{"array": key}`` naming its array in ``arrays.npz``. Keys are the
      dotted field paths, e.g. ``params.prior.layers.0.loadings.precision``.
      Only the library's own parameter classes are accepted on reading;
    - ``fitted``: scalar fitted attributes (``elbo_``, ``n_iter_``, ...) as
      JSON numbers and the encodings of the fitted tables (subjects,
      responsibilities, cluster tables, ...): an index is
      ``{"range": [start, stop, step], "name": ...}`` or
      ``{"values": [...], "dtype": "...", "name": ...}`` (labels as a JSON
      list with their pandas dtype); a table's columns are arrays ``<key>.<i>``;
    - ``response_transform`` (optional): ``"log"`` or ``"log1p"`` when the
      response was transformed before fitting (``dmlmm fit --transform``);
      absent or ``"none"`` otherwise. ``dmlmm predict`` applies it to new data.

``arrays.npz``
    A NumPy ``.npz`` archive of plain numeric arrays (no object arrays), read
    with ``allow_pickle=False``.

Nothing is pickled: a model file cannot run code when loaded. Python floats
are written by ``json`` with ``repr``, which round-trips float64 exactly.

Reading checks the file before handing the model out: any failure to read the
archive (a bad CRC, a damaged deflate stream, truncation), malformed JSON,
metadata that disagree with the arrays (shapes, counts), non-finite values,
non-positive variances or concentrations, probabilities that do not sum to one
and a model that cannot predict are all reported as :class:`ModelFileError`
("'<path>' is corrupt: ...").
"""

from __future__ import annotations

import importlib
import io as _io
import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["save_model", "load", "load_model", "ModelFileError", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "dmlmm-model"
FORMAT_VERSION = 2  # 2: the covariate coding may be a formula (its files say 2; files of listed columns still say 1)
_META = "metadata.json"
_ARRAYS = "arrays.npz"
_MAX_META_BYTES = 256 * 1024 * 1024


class ModelFileError(ValueError):
    """A model file that cannot be read: corrupt, truncated, or not written by dmlmm."""


# ---------------------------------------------------------------------------- registries
def _model_classes() -> dict[str, type]:
    from .lmm.model import LinearMixedModel
    from .models.mixture import DeepMixtureLMM, MixtureLMM

    return {c.__name__: c for c in (MixtureLMM, DeepMixtureLMM, LinearMixedModel)}


def _prior_classes() -> dict[str, type]:
    from .priors.dmfa import DeepMixturePrior
    from .priors.gaussian import GaussianMixturePrior

    return {c.__name__: c for c in (GaussianMixturePrior, DeepMixturePrior)}


class _ParamRegistry(dict):
    """Parameter classes by dotted name: the known ones, and any other dataclass of the
    library's own inference and prior modules (new parameter classes need no registration;
    nothing outside those modules is ever imported)."""

    _MODULES = ("dmlmm.inference.", "dmlmm.priors.")

    def get(self, name, default=None):
        if name in self:
            return self[name]
        if not isinstance(name, str) or not name.startswith(self._MODULES):
            return default
        module, _, qualname = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), qualname, None)
        except ImportError:
            return default
        if isinstance(cls, type) and is_dataclass(cls) and f"{cls.__module__}.{cls.__qualname__}" == name:
            return cls
        return default


def _param_classes() -> dict[str, type]:
    """The only dataclasses a model file may name (no arbitrary imports on load)."""
    from .inference.engine import VariationalParams
    from .expfam import Dirichlet, Gaussian, InvGamma, InvWishart
    from .priors.dmfa import DMFAParams, LayerParams
    from .priors.gaussian import GaussianMixtureParams
    from .inference.subject_scales import SubjectScales

    classes = (VariationalParams, InvGamma, Dirichlet, Gaussian, InvWishart, GaussianMixtureParams, DMFAParams, LayerParams,
               SubjectScales)
    return _ParamRegistry({f"{c.__module__}.{c.__qualname__}": c for c in classes})


# ---------------------------------------------------------------------------- JSON helpers
def _jsonable(v: Any) -> Any:
    """Plain JSON values from numpy / pandas scalars, numeric arrays and tuples (TypeError for anything else)."""
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
        return _jsonable(v.tolist())  # nested lists; floats round-trip exactly through repr
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    raise TypeError(f"a value of type {type(v).__name__} ({v!r}) cannot be written to a model file")


def _tuples(v: Any) -> Any:
    """JSON lists back to tuples (hyperparameters and prior arguments are tuples, never lists)."""
    if isinstance(v, list):
        return tuple(_tuples(x) for x in v)
    return v


# ---------------------------------------------------------------------------- parameter trees
def flatten_tree(obj: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Describe a dataclass tree as JSON, moving its arrays into ``arrays`` under dotted key paths.

    Parameters
    ----------
    obj : dataclass, tuple, None or array-like leaf
    prefix : str
        Key path of ``obj`` (e.g. ``"params"``).
    arrays : dict
        Filled with ``{key path: ndarray}``.

    Returns
    -------
    The JSON node (see the module docstring).
    """
    if obj is None:
        return None
    if is_dataclass(obj) and not isinstance(obj, type):
        cls = type(obj)
        return {
            "type": f"{cls.__module__}.{cls.__qualname__}",
            "fields": {f.name: flatten_tree(getattr(obj, f.name), f"{prefix}.{f.name}", arrays) for f in fields(obj)},
        }
    if isinstance(obj, (tuple, list)):
        return {"tuple": [flatten_tree(v, f"{prefix}.{i}", arrays) for i, v in enumerate(obj)]}
    arr = np.asarray(obj)
    if arr.dtype == object:
        raise TypeError(f"parameter {prefix} holds Python objects, which a model file cannot store")
    arrays[prefix] = arr
    return {"array": prefix}


def unflatten_tree(node: Any, arrays: dict[str, np.ndarray], classes: dict[str, type]) -> Any:
    """Rebuild the tree described by ``node`` (inverse of :func:`flatten_tree`)."""
    if node is None:
        return None
    if not isinstance(node, dict):
        raise ModelFileError(f"malformed parameter node {node!r}")
    if "array" in node:
        key = node["array"]
        if key not in arrays:
            raise ModelFileError(f"array {key!r} is missing from the model file")
        return arrays[key]
    if "tuple" in node:
        return tuple(unflatten_tree(v, arrays, classes) for v in node["tuple"])
    cls = classes.get(node.get("type"))
    if cls is None:
        raise ModelFileError(f"unknown parameter type {node.get('type')!r} in the model file")
    given = node.get("fields", {})
    if not isinstance(given, dict):
        raise ModelFileError(f"malformed fields of parameter type {cls.__name__}")
    names = [f.name for f in fields(cls)]
    # fields added to a class later (with a default) may be absent from older files
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    if set(given) - set(names) or set(required) - set(given):
        raise ModelFileError(f"parameter type {cls.__name__} expects fields {names}, the file has {sorted(given)}")
    return cls(**{n: unflatten_tree(given[n], arrays, classes) for n in names if n in given})


# ---------------------------------------------------------------------------- pandas helpers
def _encode_index(idx: pd.Index) -> dict:
    if isinstance(idx, pd.RangeIndex):
        return {"range": [idx.start, idx.stop, idx.step], "name": _jsonable(idx.name)}
    return {"values": _jsonable(idx.tolist()), "dtype": str(idx.dtype), "name": _jsonable(idx.name)}


def _decode_index(d: dict) -> pd.Index:
    name = _tuples(d.get("name"))
    if "range" in d:
        return pd.RangeIndex(*d["range"], name=name)
    return pd.Index(d["values"], dtype=d["dtype"], name=name)


def _encode_frame(df: pd.DataFrame, key: str, arrays: dict[str, np.ndarray]) -> dict:
    for i in range(df.shape[1]):
        arrays[f"{key}.{i}"] = df.iloc[:, i].to_numpy()
    return {"index": _encode_index(df.index), "columns": _encode_index(df.columns), "key": key}


def _decode_frame(d: dict, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    cols = _decode_index(d["columns"])
    data = {i: _get(arrays, f"{d['key']}.{i}") for i in range(len(cols))}
    df = pd.DataFrame(data, index=_decode_index(d["index"]))
    df.columns = cols
    return df


def _encode_series(s: pd.Series, key: str, arrays: dict[str, np.ndarray]) -> dict:
    arrays[key] = s.to_numpy()
    return {"index": _encode_index(s.index), "name": _jsonable(s.name), "key": key}


def _decode_series(d: dict, arrays: dict[str, np.ndarray]) -> pd.Series:
    return pd.Series(_get(arrays, d["key"]), index=_decode_index(d["index"]), name=d["name"])


def _get(arrays: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in arrays:
        raise ModelFileError(f"array {key!r} is missing from the model file")
    return arrays[key]


# ---------------------------------------------------------------------------- model <-> dict
_SCALARS = {"elbo_": float, "n_iter_": int, "converged_": bool, "fit_seconds_": float, "n_moves_": int,
            "sigma2_": float, "offset_": float}
_FRAMES = ("responsibilities_", "group_proba_", "random_effects_", "clusters_", "cluster_means_")
_ARRAY_ATTRS = ("elbo_history_", "_path_order", "_group_order", "_group_of_path")


def _hyperparameters(model) -> dict:
    from .basis import SplineBasis

    out = {}
    for k, v in model._init_params().items():
        if isinstance(v, SplineBasis):
            out[k] = {"SplineBasis": v.to_dict()}
        elif k == "random_state" and not (v is None or isinstance(v, (int, np.integer))):
            out[k] = None  # a Generator's state is not a hyperparameter worth keeping, but the change is said
            warnings.warn(f"random_state is a {type(v).__name__}, which a model file does not keep: the loaded model "
                          "has random_state=None, so a refit of it draws other starts (its fitted results are kept "
                          "as they are); give an int seed to keep it", UserWarning, stacklevel=5)
        else:
            out[k] = _jsonable(v)
    return out


def _prior_spec(prior) -> dict:
    import inspect

    sig = inspect.signature(type(prior).__init__)
    args = {k: _jsonable(getattr(prior, k)) for k in sig.parameters if k != "self"}
    return {"class": type(prior).__name__, "args": args}


def model_to_dict(model) -> tuple[dict, dict[str, np.ndarray]]:
    """Metadata (JSON-able) and arrays of a fitted model."""
    from . import __version__

    if type(model).__name__ not in _model_classes() or not isinstance(model, tuple(_model_classes().values())):
        raise TypeError(f"saving a {type(model).__name__} is not supported "
                        "(only MixtureLMM, DeepMixtureLMM and LinearMixedModel)")
    model._check_fitted()
    if type(model).__name__ == "LinearMixedModel":
        from .io_lmm import lmm_to_dict

        part, arrays = lmm_to_dict(model)
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "library_version": __version__,
                "model_class": "LinearMixedModel", "hyperparameters": _hyperparameters(model), **part}, arrays
    arrays: dict[str, np.ndarray] = {}
    fitted: dict[str, Any] = {k: cast(getattr(model, k)) for k, cast in _SCALARS.items()}
    fitted["n_components_"] = [int(k) for k in model.n_components_]
    fitted["subjects_"] = _encode_index(model.subjects_)
    for i, kept in enumerate(model.components_kept_):
        arrays[f"fitted.components_kept_.{i}"] = np.asarray(kept)
    fitted["components_kept_"] = len(model.components_kept_)
    for name in _ARRAY_ATTRS:
        arrays[f"fitted.{name}"] = np.asarray(getattr(model, name))
    for name in ("_membership_cov", "_fixed_cov"):  # present only for models that have them
        if getattr(model, name, None) is not None:
            arrays[f"fitted.{name}"] = np.asarray(getattr(model, name))
    for name in _FRAMES:
        fitted[name] = _encode_frame(getattr(model, name), f"fitted.{name}", arrays)
    fitted["fixed_effects_"] = _encode_series(model.fixed_effects_, "fitted.fixed_effects_", arrays)
    fitted["sigma2_by_cluster_"] = _encode_series(model.sigma2_by_cluster_, "fitted.sigma2_by_cluster_", arrays)
    fitted["elbo_data_scale_"] = float(model.elbo_data_scale_)
    fitted["elbo_by_transform_"] = {str(k): float(v) for k, v in getattr(model, "elbo_by_transform_", {}).items()}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION if model.design_.encoding.formula is not None else 1,
        "library_version": __version__,
        "model_class": type(model).__name__,
        "hyperparameters": _hyperparameters(model),
        "design": _jsonable(model.design_.to_dict()),
        "prior": _prior_spec(model.prior_),
        "params": flatten_tree(model.params_, "params", arrays),
        "fitted": fitted,
    }
    return meta, arrays


def model_from_dict(meta: dict, arrays: dict[str, np.ndarray]):
    """Rebuild a fitted model from :func:`model_to_dict`'s output."""
    from .basis import SplineBasis
    from .models.design import LongitudinalDesign

    cls = _model_classes().get(meta.get("model_class"))
    if cls is None:
        raise ModelFileError(f"unknown model class {meta.get('model_class')!r} in the model file")
    hyper = {}
    for k, v in meta["hyperparameters"].items():
        hyper[k] = SplineBasis.from_dict(v["SplineBasis"]) if isinstance(v, dict) and "SplineBasis" in v else _tuples(v)
    if meta["model_class"] == "LinearMixedModel":
        from .io_lmm import lmm_from_dict

        return lmm_from_dict(cls, hyper, meta, arrays)
    hyper.setdefault("response_transform", None)  # files written before it existed: the response as given
    if meta["model_class"] == "DeepMixtureLMM":  # and before 2026-12-07 with independent level and trend variances
        hyper.setdefault("polynomial_covariance", "diagonal")
    model = cls(**hyper)
    prior_cls = _prior_classes().get(meta["prior"]["class"])
    if prior_cls is None:
        raise ModelFileError(f"unknown prior class {meta['prior']['class']!r} in the model file")
    model.design_ = LongitudinalDesign.from_dict(meta["design"])
    prior_args = {k: _tuples(v) for k, v in meta["prior"]["args"].items()}
    if meta["prior"]["class"] == "DeepMixturePrior":
        prior_args.setdefault("loading_order", 1.0)  # files written before it existed were fitted with 1
        prior_args.setdefault("polynomial_covariance", "diagonal")  # and before 2026-12-07 with this
        prior_args.setdefault("confounded_shape", None)  # and with idiosyncratic_shape at few visit times too
    model.prior_ = prior_cls(**prior_args)
    model.params_ = unflatten_tree(meta["params"], arrays, _param_classes())
    f = meta["fitted"]
    for k, cast in _SCALARS.items():
        setattr(model, k, cast(f[k]))
    model.n_components_ = tuple(int(k) for k in f["n_components_"])
    model.subjects_ = _decode_index(f["subjects_"])
    model.components_kept_ = [_get(arrays, f"fitted.components_kept_.{i}") for i in range(int(f["components_kept_"]))]
    for name in _ARRAY_ATTRS:
        setattr(model, name, _get(arrays, f"fitted.{name}"))
    model._membership_cov = None
    if model.params_.membership is not None:
        model._membership_cov = _get(arrays, "fitted._membership_cov")
    model._fixed_cov = None
    if model.params_.fixed is not None and "fitted._fixed_cov" in arrays:
        model._fixed_cov = _get(arrays, "fitted._fixed_cov")
    for name in _FRAMES:
        setattr(model, name, _decode_frame(f[name], arrays))
    model.fixed_effects_ = _decode_series(f["fixed_effects_"], arrays)
    model.noise_ = "cluster" if np.ndim(model.params_.noise.shape) else "shared"
    if "sigma2_by_cluster_" in f:
        model.sigma2_by_cluster_ = _decode_series(f["sigma2_by_cluster_"], arrays)
    else:  # files written before per-cluster noise: one shared variance
        k1 = len(model.components_kept_[0])
        model.sigma2_by_cluster_ = pd.Series(np.full(k1, model.sigma2_), index=pd.RangeIndex(k1, name="group"), name="sigma2")
    proba = model.responsibilities_.to_numpy()
    resp = np.empty_like(proba)
    resp[:, model._path_order] = proba  # the clusters (numbered by size) back in the prior's path order
    model._set_subject_noise(resp)
    model.labels_ = model._labels_from(model.responsibilities_)
    model.groups_ = model._labels_from(model.group_proba_)
    model.response_transform_ = model.design_.transform
    # files written before it existed hold no bound on the data's scale (their n_obs is not kept)
    model.elbo_data_scale_ = float(f.get("elbo_data_scale_", np.nan))
    model.elbo_by_transform_ = {str(k): float(v) for k, v in f.get("elbo_by_transform_", {}).items()}
    return model


# ---------------------------------------------------------------------------- files
def save_model(model, path: str | os.PathLike, *, response_transform: str | None = None,
               time_dates: dict | None = None) -> Path:
    """Write a fitted model to ``path`` (format in the module docstring); returns the path.

    The file is written to a temporary name next to ``path`` and renamed, so an
    interrupted save never leaves a half-written model behind.

    Parameters
    ----------
    response_transform : {"log", "log1p"}, optional
        The transform the response was fitted on (recorded for ``dmlmm predict``).
    time_dates : dict, optional
        How the model's time was made from a date column (:meth:`dmlmm.dates.DateTime.to_meta`,
        recorded for ``dmlmm predict``).
    """
    meta, arrays = model_to_dict(model)
    if response_transform not in (None, "none"):
        meta["response_transform"] = str(response_transform)
    if time_dates is not None:
        meta["time_dates"] = time_dates
    try:
        text = json.dumps(meta, indent=1, allow_nan=True)
    except TypeError as e:  # pragma: no cover - _jsonable already checked
        raise TypeError(f"the model cannot be saved: {e}") from None
    buf = _io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save the model to {str(path)!r}: it is a folder; give a file name in it, "
                                f"e.g. {str(path / 'model.dmlmm')!r}")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save the model to {str(path)!r}: the folder {str(folder)!r} does not exist "
                                "(create it first)")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(_META, text)
            zf.writestr(_ARRAYS, buf.getvalue())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a model file, after checking that it is a dmlmm model of a readable version."""
    with _open(path) as zf:
        return _check_meta(zf, path)


def _open(path: str | os.PathLike) -> zipfile.ZipFile:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file '{path}' not found")
    if path.is_dir():
        raise ModelFileError(f"'{path}' is a folder, not a dmlmm model file")
    try:
        return zipfile.ZipFile(path, "r")
    except Exception as e:  # BadZipFile, OSError, EOFError, ValueError, struct.error, ...
        with open(path, "rb") as fh:
            zip_like = fh.read(4) == b"PK\x03\x04"
        if zip_like:
            raise ModelFileError(f"'{path}' is corrupt: its archive cannot be read ({_reason(e)})") from None
        raise ModelFileError(f"'{path}' is not a dmlmm model file (not a model archive: {_reason(e)})") from None


def _reason(e: BaseException) -> str:
    """One line for an exception; foreign types (zlib.error, ...) named, since their messages do not say."""
    text = " ".join(str(e).split()) or "no detail"
    kind = type(e)
    return text if kind.__module__ in ("builtins", "zipfile") else f"{kind.__module__}.{kind.__qualname__}: {text}"


def _check_meta(zf: zipfile.ZipFile, path) -> dict:
    try:
        info = zf.getinfo(_META)
    except KeyError:
        raise ModelFileError(f"'{path}' is not a dmlmm model file (no {_META} inside)") from None
    if info.file_size > _MAX_META_BYTES:
        raise ModelFileError(f"'{path}' is not a dmlmm model file ({_META} is implausibly large)")
    try:
        meta = json.loads(zf.read(_META).decode("utf-8"))
    except Exception as e:  # a bad CRC, zlib.error, truncation, invalid UTF-8 or JSON
        raise ModelFileError(f"'{path}' is corrupt: its {_META} cannot be read ({_reason(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"'{path}' is not a dmlmm model file (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"'{path}' is corrupt: bad format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"'{path}' was written by a newer dmlmm (format version {version}); upgrade dmlmm "
            f"(this dmlmm reads format version {FORMAT_VERSION})"
        )
    transform = meta.get("response_transform", "none")
    if transform not in RESPONSE_TRANSFORMS:
        raise ModelFileError(f"'{path}' is corrupt: unknown response_transform {transform!r}")
    return meta


RESPONSE_TRANSFORMS = ("none", "log", "log1p")


def _read_arrays(zf: zipfile.ZipFile, path) -> dict[str, np.ndarray]:
    try:
        raw = zf.read(_ARRAYS)
    except KeyError:
        raise ModelFileError(f"'{path}' is corrupt: no {_ARRAYS} inside") from None
    except Exception as e:
        raise ModelFileError(f"'{path}' is corrupt: its arrays cannot be read ({_reason(e)})") from None
    try:
        with np.load(_io.BytesIO(raw), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as e:
        raise ModelFileError(f"'{path}' is corrupt: its arrays cannot be read ({_reason(e)})") from None


def load(path: str | os.PathLike):
    """Load a model saved with ``model.save(path)``.

    The file is checked before the model is returned (see the module docstring), so a
    damaged or hand-edited file is refused here rather than failing later in prediction.

    Raises
    ------
    FileNotFoundError
        No such file.
    ModelFileError (a ValueError)
        The file is not a dmlmm model, is corrupt, or was written by a newer dmlmm.
    """
    from ._model_checks import check_model

    with _open(path) as zf:
        meta = _check_meta(zf, path)
        arrays = _read_arrays(zf, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_from_dict(meta, arrays)
    except ModelFileError as e:
        raise ModelFileError(f"'{path}' is corrupt: {e}") from None
    except Exception as e:  # KeyError, TypeError, ValueError, IndexError, AttributeError, ...
        raise ModelFileError(f"'{path}' is corrupt or incomplete ({type(e).__name__}: {' '.join(str(e).split())})") from None
    problem = check_model(model)
    if problem:
        raise ModelFileError(f"'{path}' is corrupt: {problem}")
    return model


load_model = load

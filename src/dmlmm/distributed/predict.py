"""Predictions for a Dask frame of subjects: one pandas prediction per partition, lazily.

``model.predict_proba(ddf)`` (and ``predict``, ``predict_group_proba``,
``predict_group``) with a dask DataFrame returns a dask collection indexed by
subject, ``model.predict_trajectory(ddf)`` a dask collection of its long
table and ``model.score_samples(ddf, condition_on=...)`` a dask Series of log scores:
each partition is predicted on its worker by the fitted model, which
travels without its per-subject tables. Nothing is computed until asked
(``.compute()``, ``.to_parquet()``, ...), except one read of the subject column that
checks, as ``fit`` does, that each subject's rows lie in one partition.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ..exceptions import ExtrapolationWarning
from .outputs import SUBJECT_TABLES
from .scales import ShardedScales, light as light_scales

__all__ = ["predict_partitions", "trajectory_partitions", "score_partitions", "light_model"]

_METHODS = {"predict_proba": "cluster", "predict_group_proba": "group"}


def light_model(model: Any) -> Any:
    """A shallow copy of ``model`` without its per-subject tables (what travels to the workers), nor its
    subjects' residual scales (a prediction reads their nu only)."""
    light = copy.copy(model)
    for name in SUBJECT_TABLES + ("subjects_",):
        if hasattr(light, name):
            setattr(light, name, None)
    scales = getattr(getattr(light, "params_", None), "scales", None)
    if isinstance(scales, ShardedScales):
        light.params_ = replace(light.params_, scales=light_scales(scales))
    return light


def _predict(frame: pd.DataFrame, model: Any, method: str, subject: str, kwargs: dict | None = None) -> pd.DataFrame:
    if subject not in frame.columns and frame.index.name == subject:
        frame = frame.reset_index()
    with warnings.catch_warnings():  # the caller was warned of times outside the basis range, once
        warnings.filterwarnings("ignore", message=r".*time\(s\) lie outside the basis range",
                                category=ExtrapolationWarning)
        return getattr(model, method)(frame, **(kwargs or {}))


def _score(frame: pd.DataFrame, model: Any, subject: str, meta: pd.Series,
           condition_on: pd.DataFrame | None = None) -> pd.Series:
    if len(frame) == 0:  # e.g. a partition of held-out visits whose subjects have one visit each: nothing to score
        return meta
    frame = frame.reset_index() if subject not in frame.columns and frame.index.name == subject else frame
    if condition_on is not None and subject not in condition_on.columns and condition_on.index.name == subject:
        condition_on = condition_on.reset_index()
    with warnings.catch_warnings():  # as _predict: said once, by the caller
        warnings.filterwarnings("ignore", message=r".*time\(s\) lie outside the basis range",
                                category=ExtrapolationWarning)
        return model.score_samples(frame, condition_on=condition_on)


def _partition_subjects(part: pd.DataFrame, subject: str) -> pd.Index:
    """The distinct subject labels of one partition (a column, or the index)."""
    labels = part[subject] if subject in part.columns else part.index.to_series()
    return pd.Index(pd.unique(labels.dropna()))


def _subjects_by_partition(subject: str, *frames: Any) -> list[list[pd.Index]]:
    """Each frame's distinct subject labels, partition by partition, in one pass over them all."""
    import dask

    return [list(p) for p in dask.compute(*[[dask.delayed(_partition_subjects)(p, subject) for p in f.to_delayed()]
                                            for f in frames])]


def check_partitions(ddf: Any, subject: str) -> None:
    """DataError (as the fit's) when a subject's rows lie in more than one partition of ``ddf``: its
    predictions would come from part of its visits each, one row per partition. Reads the subject column
    (or index) once, before the lazy predictions."""
    from .frame import check_one_partition_per_subject

    check_one_partition_per_subject(_subjects_by_partition(subject, ddf)[0], subject)


def trajectory_partitions(model: Any, ddf: Any, **kwargs: Any) -> Any:
    """``model.predict_trajectory(partition, **kwargs)`` on every partition of ``ddf``: a lazy dask
    DataFrame in the long format of :meth:`predict_trajectory` (subject, time, mean, lower, upper,
    beyond_last_visit), each subject's rows from its own partition. Every partition predicts at the
    same times (``kwargs["times"]``, or the default grid over the basis range)."""
    model._check_fitted()
    subject = model.design_.columns.subject
    check_partitions(ddf, subject)
    labels = ddf._meta[subject] if subject in ddf.columns else ddf._meta.index.to_series()
    meta = pd.DataFrame({
        "subject": pd.Series(dtype=labels.dtype), "time": pd.Series(dtype=float), "mean": pd.Series(dtype=float),
        "lower": pd.Series(dtype=float), "upper": pd.Series(dtype=float), "beyond_last_visit": pd.Series(dtype=bool),
    })
    return ddf.map_partitions(_predict, light_model(model), "predict_trajectory", subject, kwargs, meta=meta,
                              enforce_metadata=False)


def predict_partitions(model: Any, ddf: Any, method: str) -> Any:
    """``getattr(model, method)`` on every partition of ``ddf``: a lazy dask DataFrame (subjects x classes).

    ``method`` : "predict_proba" (clusters) or "predict_group_proba" (first-layer groups).
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {sorted(_METHODS)}, got {method!r}")
    model._check_fitted()
    subject = model.design_.columns.subject
    check_partitions(ddf, subject)
    n = len(model._path_order) if method == "predict_proba" else len(model.components_kept_[0])
    if subject in ddf.columns:
        index = pd.Index(ddf._meta[subject], name=subject)[:0]
    else:
        index = ddf._meta.index[:0]
    meta = pd.DataFrame(np.zeros((0, n)), index=index, columns=pd.RangeIndex(n, name=_METHODS[method]))
    return ddf.map_partitions(_predict, light_model(model), method, subject, meta=meta, enforce_metadata=False)


def score_partitions(model: Any, ddf: Any, condition_on: Any = None) -> Any:
    """``model.score_samples(partition, condition_on=its partition of condition_on)`` on every partition of
    ``ddf``: a lazy dask Series of log scores indexed by subject.

    With ``condition_on`` (a Dask frame of other observations of the same subjects, e.g. the training part of
    :func:`dmlmm.simulate.split_heldout` of a Dask frame) partition ``i`` of ``ddf`` is scored given partition
    ``i`` of ``condition_on``: both need the same number of partitions, and a subject's rows in each lie in
    one partition, the same number in both (checked by one read of their subject columns). As in memory,
    a subject without rows in ``condition_on`` is scored by its prior predictive density.
    """
    from ..exceptions import DataError
    from .._dask_frames import is_dask_collection

    model._check_fitted()
    if condition_on is not None and not (is_dask_collection(ddf) and is_dask_collection(condition_on)):
        raise DataError("score_samples on a Dask frame conditions on a Dask frame of the same subjects, partitioned "
                        "alike (or both frames in pandas: call .compute() on both)")
    subject = model.design_.columns.subject
    labels = ddf._meta[subject] if subject in ddf.columns else ddf._meta.index.to_series()
    meta = pd.Series(dtype=float, name="log_score", index=pd.Index(labels, name=subject)[:0])
    light = light_model(model)
    if condition_on is None:
        check_partitions(ddf, subject)
        return ddf.map_partitions(_score, light, subject, meta, meta=meta, enforce_metadata=False)
    if ddf.npartitions != condition_on.npartitions:
        raise DataError(f"condition_on has {condition_on.npartitions} partition(s) and the frame scored "
                        f"{ddf.npartitions}: partition i of one must hold the subjects of partition i of the other "
                        "(split one frame, e.g. with dmlmm.simulate.split_heldout)")
    from .frame import check_one_partition_per_subject

    scored, given = _subjects_by_partition(subject, ddf, condition_on)
    check_one_partition_per_subject(scored, subject)
    everywhere = check_one_partition_per_subject(given, subject)
    for i, (mine, theirs) in enumerate(zip(scored, given)):
        elsewhere = mine[mine.isin(everywhere) & ~mine.isin(theirs)]
        if len(elsewhere):
            raise DataError(f"subject {elsewhere[0]!r} is in partition {i} of the frame scored but in another "
                            "partition of condition_on: partition i of one must hold the subjects of partition i "
                            "of the other (split one frame, e.g. with dmlmm.simulate.split_heldout)")
    return ddf.map_partitions(_score, light, subject, meta, condition_on, meta=meta, enforce_metadata=False,
                              align_dataframes=False)

"""The per-subject results of a Dask fit, left on the cluster as dask collections.

After ``model.fit(ddf)`` the tables with one row per subject,
``responsibilities_``, ``labels_``, ``group_proba_``, ``groups_``,
``random_effects_`` and (with ``noise_df``) ``subject_noise_``, are dask DataFrames / Series (index: subject) whose
partitions are the final local step's outputs, already computed and held by
the workers: nothing of size N is gathered unless asked for. Use them as any
dask collection (``model.labels_.value_counts().compute()``,
``model.responsibilities_.to_parquet(...)``), or bring them all into pandas with
:func:`collect` (O(N M) memory on the driver), after which the summaries that
read them (``class_summary``, ``posterior_table``, reports, ``save``) work as
after an in-memory fit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from . import is_dask_collection
from .scales import ShardedScales, gathered
from .shard import Shard, ShardLocal

__all__ = ["SUBJECT_TABLES", "proba_frame", "group_frame", "effects_frame", "subject_tables", "collect"]

#: The fitted attributes with one row per subject.
SUBJECT_TABLES = ("responsibilities_", "labels_", "group_proba_", "groups_", "random_effects_", "subject_noise_")


def proba_frame(shard: Shard, local: ShardLocal, order: np.ndarray) -> pd.DataFrame:
    """The shard's cluster probabilities (n, M), clusters numbered by size (``order``: path of each)."""
    return pd.DataFrame(local.resp[:, order], index=shard.subjects, columns=pd.RangeIndex(len(order), name="cluster"))


def group_frame(shard: Shard, local: ShardLocal, onehot: np.ndarray) -> pd.DataFrame:
    """The shard's first-layer group probabilities (n, K1); ``onehot`` (M, K1) maps paths to groups."""
    return pd.DataFrame(local.resp @ onehot, index=shard.subjects, columns=pd.RangeIndex(onehot.shape[1], name="group"))


def effects_frame(shard: Shard, local: ShardLocal, to_user: np.ndarray, names: list[str]) -> pd.DataFrame:
    """E[b_i] as spline coefficients on the user's scale (n, D); ``to_user`` (D, D) maps the model's coordinates."""
    return pd.DataFrame(local.mean_b @ to_user, index=shard.subjects, columns=names)


def labels_of(proba: pd.DataFrame) -> pd.Series:
    """Most probable column of each row (as the in-memory ``labels_``)."""
    return pd.Series(proba.to_numpy().argmax(axis=1), index=proba.index, name=proba.columns.name)


def subject_tables(model: Any, client: Any, shards: list, parts: list, subjects: pd.Index) -> dict[str, Any]:
    """The per-subject fitted attributes as dask collections over the final step's ``parts``.

    ``model`` must hold its fitted globals already (``_path_order``, ``_group_of_path``, ``design_``).
    """
    import dask.dataframe as dd

    order = np.asarray(model._path_order)
    first = model.prior_.path_components()[:, 0]
    k1 = len(model.components_kept_[0])
    onehot = np.eye(k1)[model._group_of_path[first]]
    design = model.design_
    D = design.basis.n_basis
    to_user = design.spline_coefficients(np.eye(D)) * design.y_scale  # rows: b = e_j
    names = list(design.basis.column_names)
    empty = subjects[:0]

    def frame(fn, meta, **kw):
        return dd.from_delayed(client.map(fn, shards, parts, pure=False, **kw), meta=meta, verify_meta=False)

    proba_meta = pd.DataFrame(np.zeros((0, len(order))), index=empty, columns=pd.RangeIndex(len(order), name="cluster"))
    group_meta = pd.DataFrame(np.zeros((0, k1)), index=empty, columns=pd.RangeIndex(k1, name="group"))
    effects_meta = pd.DataFrame(np.zeros((0, D)), index=empty, columns=names)
    resp = frame(proba_frame, proba_meta, order=order)
    groups = frame(group_frame, group_meta, onehot=onehot)
    return {
        "responsibilities_": resp,
        "labels_": resp.map_partitions(labels_of, meta=pd.Series(np.zeros(0, dtype=int), index=empty, name="cluster")),
        "group_proba_": groups,
        "groups_": groups.map_partitions(labels_of, meta=pd.Series(np.zeros(0, dtype=int), index=empty, name="group")),
        "random_effects_": frame(effects_frame, effects_meta, to_user=to_user, names=names),
    }


def collect(model: Any) -> Any:
    """Bring a Dask fit's per-subject tables (:data:`SUBJECT_TABLES`) and its subjects' residual scales
    (``params_.scales``, with ``noise_df``) into pandas / numpy; returns ``model``.

    Costs O(N M) memory here. A model fitted in memory is returned unchanged.
    """
    lazy = [name for name in SUBJECT_TABLES if is_dask_collection(getattr(model, name, None))]
    if lazy:
        import dask

        for name, value in zip(lazy, dask.compute(*(getattr(model, n) for n in lazy))):
            setattr(model, name, value)
    scales = getattr(getattr(model, "params_", None), "scales", None)
    if isinstance(scales, ShardedScales) and scales.parts:
        model.params_ = replace(model.params_, scales=gathered(scales))
    return model

"""Fitting on a Dask cluster: per-subject statistics and local steps where the data live.

``model.fit(ddf)`` with a ``dask.dataframe.DataFrame`` (one row per observation,
every subject's rows in one partition) runs the same variational algorithm as
the in-memory fit (starts, delete moves, pruning, the same stopping rule) with
the per-subject work on the workers of the current ``distributed.Client``:

- :mod:`.frame` reads the frame: one pass builds each partition's
  :class:`~dmlmm.data.Longitudinal` and its summary (response moments, time
  range, distinct times, covariate moments, subject labels), from which the
  design (basis knots, standardisation) is learned exactly as in memory;
- :mod:`.shard` holds the worker-side functions: each partition's sufficient
  statistics (a *shard*, kept on its worker), its local step and the sums over
  its subjects that the global updates need;
- :mod:`.stats` is the driver's handle on the shards,
  :class:`~dmlmm.distributed.stats.DaskStats`, a
  :class:`~dmlmm.inference.backend.StatsBackend`: each iteration broadcasts the
  globals, runs the local step on every shard and gathers only path-level sums;
- :mod:`.fit` drives the fit and leaves the per-subject outputs on the cluster
  as dask collections (:mod:`.outputs`; :func:`collect` brings them into pandas);
- :mod:`.predict`: ``predict_proba`` / ``predict`` (and the group versions) of a
  dask frame, one partition at a time, lazily;
- :mod:`.dates`: :func:`times_from_dates`, a column of visit dates turned into times on the
  partitions (``dmlmm.times_from_dates`` for a dask frame).

Dask is an optional dependency (``pip install dmlmm[dask]``): nothing in the
in-memory path imports it; :func:`is_dask_collection` tells a Dask frame apart
without importing dask.
"""

from __future__ import annotations

from .._dask_frames import is_dask_collection

__all__ = ["is_dask_collection", "fit_dask", "collect", "times_from_dates"]


def __getattr__(name: str):
    if name == "fit_dask":
        from .fit import fit_dask

        return fit_dask
    if name == "collect":
        from .outputs import collect

        return collect
    if name == "times_from_dates":
        from .dates import times_from_dates

        return times_from_dates
    raise AttributeError(f"module 'dmlmm.distributed' has no attribute {name!r}")

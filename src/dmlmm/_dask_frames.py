"""Telling a Dask collection apart without importing Dask (a helper for every room: the in-memory path
refuses or routes Dask frames, and only :mod:`dmlmm.distributed` imports Dask itself)."""

from __future__ import annotations

__all__ = ["is_dask_collection"]


def is_dask_collection(obj: object) -> bool:
    """Whether ``obj`` is a Dask collection (DataFrame, Series, ...), without importing dask."""
    module = type(obj).__module__ or ""
    return module == "dask" or module.startswith(("dask.", "dask_expr"))

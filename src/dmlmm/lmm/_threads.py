"""Limit OpenBLAS threads while fitting (best effort, no dependency).

The likelihood works on stacks of small (q x q) matrices and scipy's L-BFGS-B
calls BLAS on tiny (2m x 2m) matrices; with a multi-threaded OpenBLAS every such
call pays a thread wake-up, which on a busy machine costs milliseconds per
optimiser iteration (measured: L-BFGS-B overhead 100x larger with 2 threads than
with 1). :func:`limit_blas_threads` sets the thread count of every loaded
OpenBLAS (numpy's and scipy's copies) for the duration of a ``with`` block and
restores it afterwards. Where the libraries cannot be found (non-Linux, MKL,
Accelerate...) it does nothing.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["limit_blas_threads"]

_SUFFIXES = ("", "64_", "_64")
_PREFIXES = ("openblas", "scipy_openblas")
_lock = threading.Lock()
_cache: dict[str, tuple[object, object] | None] = {}


def _openblas_handles() -> list[tuple[object, object]]:
    """(get_num_threads, set_num_threads) of each loaded OpenBLAS, found through /proc/self/maps."""
    found: list[tuple[object, object]] = []
    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line})
    except OSError:
        paths = []
    for path in paths:
        if path not in _cache:
            _cache[path] = _load(path)
        if _cache[path] is not None:
            found.append(_cache[path])
    return found


def _load(path: str) -> tuple[object, object] | None:
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


@contextmanager
def limit_blas_threads(n: int | None = 1) -> Iterator[None]:
    """Within the block, loaded OpenBLAS libraries use at most ``n`` threads (None: leave as is)."""
    if n is None:
        yield
        return
    try:
        handles = _openblas_handles()
        with _lock:
            previous = [int(get()) for get, _ in handles]
            for (_, put), old in zip(handles, previous):
                if old > n:
                    put(int(n))
    except Exception:  # pragma: no cover - best effort only
        handles, previous = [], []
    try:
        yield
    finally:
        try:
            with _lock:
                for (_, put), old in zip(handles, previous):
                    put(old)
        except Exception:  # pragma: no cover
            pass

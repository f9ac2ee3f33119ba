"""Limit BLAS threads while fitting (through threadpoolctl).

The likelihood works on stacks of small (q x q) matrices and scipy's L-BFGS-B
calls BLAS on tiny (2m x 2m) matrices; with a multi-threaded BLAS every such
call pays a thread wake-up, which on a busy machine costs milliseconds per
optimiser iteration (measured: L-BFGS-B overhead 100x larger with 2 threads than
with 1). :func:`limit_blas_threads` limits every loaded BLAS (OpenBLAS, MKL,
BLIS: numpy's and scipy's copies) for the duration of a ``with`` block and
restores the previous limits afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_limits

__all__ = ["limit_blas_threads"]


@contextmanager
def limit_blas_threads(n: int | None = 1) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS threads (None: leave the limits alone)."""
    if n is None:
        yield
        return
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield

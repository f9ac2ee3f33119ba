"""Small, batched, numerically careful linear-algebra helpers.

All functions work on stacks of matrices: the leading axes are batch axes
(subjects, mixture paths, ...), the last two are the matrix axes.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import numpy as np

__all__ = ["cholesky", "spd_inv_logdet", "sym", "solve_lower", "solve_upper_t", "tri_inv_soa", "blas_single_thread", "limit_blas_threads", "stack_inv_logdet", "row_chunks", "gram_factor",
           "diag_lowrank_factor", "max_obs_rank", "OBS_MAX_RATIO", "OBS_MIN_DIM", "OBS_RANK_FRACTION"]


def sym(a: np.ndarray) -> np.ndarray:
    """Symmetric part of a stack of square matrices, shape (..., d, d)."""
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def cholesky(a: np.ndarray, what: str = "matrix") -> np.ndarray:
    """Lower Cholesky factor of a stack of SPD matrices.

    Retries with a tiny diagonal jitter (relative to the diagonal's scale) if a
    factorisation fails from round-off, and raises a clear error if the matrix
    is genuinely not positive definite.

    Parameters
    ----------
    a : ndarray, shape (..., d, d)
    what : str
        Name used in the error message.
    """
    try:
        return np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        pass
    scale = np.abs(np.diagonal(a, axis1=-2, axis2=-1)).max(axis=-1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    eye = np.eye(a.shape[-1])
    for rel in (1e-12, 1e-10, 1e-8, 1e-6):
        try:
            return np.linalg.cholesky(a + (rel * scale)[..., None] * eye)
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError(
        f"{what} is not positive definite even after adding a relative jitter of 1e-6; "
        "the model is numerically degenerate (check for collinear covariates or a basis "
        "larger than the data can identify)."
    )


def spd_inv_logdet(a: np.ndarray, what: str = "matrix") -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of a stack of SPD matrices via Cholesky.

    Parameters
    ----------
    a : ndarray, shape (..., d, d)

    Returns
    -------
    inv : ndarray, shape (..., d, d)
        Exactly symmetric inverse ``L^{-T} L^{-1}``.
    logdet : ndarray, shape (...)
    """
    chol = cholesky(a, what)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    chol_inv = np.linalg.inv(chol)  # inverse of a triangular factor is triangular
    inv = np.swapaxes(chol_inv, -1, -2) @ chol_inv
    return inv, logdet


def solve_lower(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Forward substitution ``L x = b`` for a stack of lower-triangular ``L`` (..., d, d), ``b`` (..., d).

    Loops over the d matrix rows (not over the stack), each step vectorised over
    the whole stack; much faster than a general batched solve for small d.
    """
    d = chol.shape[-1]
    x = np.empty(np.broadcast_shapes(chol.shape[:-1], b.shape))
    for j in range(d):
        acc = b[..., j] - np.einsum("...k,...k->...", chol[..., j, :j], x[..., :j])
        x[..., j] = acc / chol[..., j, j]
    return x


def solve_upper_t(chol: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Back substitution ``L' x = b`` for a stack of lower-triangular ``L`` (..., d, d), ``b`` (..., d)."""
    d = chol.shape[-1]
    x = np.empty(np.broadcast_shapes(chol.shape[:-1], b.shape))
    for j in range(d - 1, -1, -1):
        acc = b[..., j] - np.einsum("...k,...k->...", chol[..., j + 1 :, j], x[..., j + 1 :])
        x[..., j] = acc / chol[..., j, j]
    return x


# --------------------------------------------------------------------------- structure-of-arrays kernels
# Stacks of many tiny matrices are faster with the batch axis LAST: each step of
# the classic algorithms becomes one vectorised operation over the whole batch
# (loops run over the matrix dimension d, never over the batch).


def cholesky_soa(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of SPD matrices stored as (d, d, n); returns (d, d, n).

    Raises ``LinAlgError`` if a pivot is not positive.
    """
    d = a.shape[0]
    L = np.zeros_like(a)
    for j in range(d):
        piv = a[j, j] - np.einsum("kn,kn->n", L[j, :j], L[j, :j])
        if not np.all(piv > 0):
            raise np.linalg.LinAlgError("matrix is not positive definite")
        L[j, j] = np.sqrt(piv)
        if j + 1 < d:
            L[j + 1 :, j] = (a[j + 1 :, j] - np.einsum("ikn,kn->in", L[j + 1 :, :j], L[j, :j])) / L[j, j]
    return L


def solve_lower_soa(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L x = b`` for L (d, d, n) lower triangular and b (d, n)."""
    d = L.shape[0]
    x = np.empty_like(b)
    for j in range(d):
        x[j] = (b[j] - np.einsum("kn,kn->n", L[j, :j], x[:j])) / L[j, j]
    return x


def solve_upper_t_soa(L: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``L' x = b`` for L (d, d, n) lower triangular and b (d, n)."""
    d = L.shape[0]
    x = np.empty_like(b)
    for j in range(d - 1, -1, -1):
        x[j] = (b[j] - np.einsum("kn,kn->n", L[j + 1 :, j], x[j + 1 :])) / L[j, j]
    return x


def inv_from_chol_soa(L: np.ndarray) -> np.ndarray:
    """``(L L')^{-1}`` for L (d, d, n) lower triangular; returned batch-first, shape (n, d, d).

    The triangular inverse M = L^{-1} is built row by row over the batch, then
    ``M'M`` with one batched matrix product.
    """
    Mb = np.moveaxis(tri_inv_soa(L), -1, 0)
    return np.swapaxes(Mb, 1, 2) @ Mb


def tri_inv_soa(L: np.ndarray) -> np.ndarray:
    """``L^{-1}`` for L (d, d, n) lower triangular; returned in the same layout (d, d, n), lower triangular."""
    d = L.shape[0]
    M = np.zeros_like(L)
    for j in range(d):  # row j of M = L^{-1}: zero beyond column j
        inv_diag = 1.0 / L[j, j]
        M[j, :j] = -np.einsum("kn,kcn->cn", L[j, :j], M[:j, :j]) * inv_diag
        M[j, j] = inv_diag
    return M


_BLAS_CONTROLLER = None


def blas_single_thread() -> ContextManager:
    """A context in which BLAS runs on one thread (:func:`limit_blas_threads` with ``n = 1``).

    The local step multiplies medium-sized matrices (D x pairs*D) from several of its own
    threads at once; a multi-threaded BLAS then oversubscribes the cores, and on a loaded
    machine one such product was measured at ~1 s instead of ~1.5 ms (2 cores, load 8).
    """
    return limit_blas_threads(1)


def limit_blas_threads(n: int | None = 1) -> ContextManager:
    """A context in which every loaded BLAS (numpy's and scipy's copies) runs on at most ``n``
    threads, restored afterwards (threadpoolctl); None leaves the limits alone.

    The profiled likelihood works on stacks of small matrices and scipy's L-BFGS-B calls BLAS on
    tiny ones; with a multi-threaded BLAS every call pays a thread wake-up (measured: L-BFGS-B
    overhead 100x larger with 2 threads than with 1 on a busy machine).
    """
    global _BLAS_CONTROLLER
    if n is None:
        return contextlib.nullcontext()
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController()
    return _BLAS_CONTROLLER.limit(limits=int(n), user_api="blas")


def stack_inv_logdet(Q: np.ndarray, what: str = "matrix") -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of an SPD stack (N, q, q) from one Cholesky factor, batch axis last.

    :func:`cholesky_soa` / :func:`inv_from_chol_soa` loop over the q rows with each step vectorised
    over the N matrices: 2.5-3x faster than a batched LAPACK factorisation plus inverse at
    10,000 x 10 x 10. Falls back to the jittered :func:`spd_inv_logdet` if a pivot is not positive.
    """
    try:
        chol = cholesky_soa(np.ascontiguousarray(np.moveaxis(Q, 0, -1)))
    except np.linalg.LinAlgError:
        return spd_inv_logdet(Q, what)
    return inv_from_chol_soa(chol), 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)


def row_chunks(n: int, rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of at most ``rows`` of ``n`` rows (subjects), for
    batched work whose temporaries should stay small (in cache, recycled by the allocator)."""
    rows = max(1, int(rows))
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


# --------------------------------------------------------------------------- observation space
# A subject's posterior precision diag(e) + s X_i'X_i has rank-n_i data part: when n_i is well
# below D, its inverse and log-determinant come from an r x r matrix (r = rank X_i'X_i), the
# Woodbury identity and the determinant lemma, in O(D^2 r) instead of O(D^3).


#: The observation-space route is taken for subjects whose X_i'X_i has rank at most ``max_obs_rank(D)``.
#: Time against the Cholesky route, stacks of 1,200-3,000 (2026-12-03): D = 10 rank 3 0.57, rank 5 1.26;
#: D = 15 rank 7 0.72; D = 20 rank 5 0.38, rank 10 0.84; D = 30 rank 15 0.67; D = 40 rank 10 0.27,
#: rank 20 0.54. The break-even rank grows faster than D (the dense cost is D^3, this one r D^2).
OBS_RANK_FRACTION = 0.4


#: Below this basis size the route is never taken: the whole step is cheap and the extra numpy calls
#: cost more than they save (the PBC demo, 6 functions and subjects with 1-2 visits, was slower with it).
OBS_MIN_DIM = 12


def max_obs_rank(D: int) -> float:
    """The largest rank of X_i'X_i for which the observation-space route is taken at basis size D:
    none below :data:`OBS_MIN_DIM`, then 0.43 D at D = 12, growing to 0.75 D from D = 34 on (see
    :data:`OBS_RANK_FRACTION`)."""
    if D < OBS_MIN_DIM:
        return -1.0
    return min(OBS_RANK_FRACTION + 0.015 * max(D - 10, 0), 0.75) * D


#: The route also needs the data-to-prior precision ratio s tr(R E^{-1} R') below this (Woodbury
#: subtracts from E^{-1} a matrix of that size: beyond it, the rounding error of the difference
#: would exceed ~1e-8).
OBS_MAX_RATIO = 1e8


def gram_factor(
    xtx: np.ndarray, max_rank: int | None = None, candidates: np.ndarray | None = None, rtol: float = 1e-12
) -> tuple[np.ndarray, np.ndarray]:
    """Factors ``R_i`` with ``R_i'R_i = X_i'X_i`` from the Gram matrices alone, and their ranks.

    Parameters
    ----------
    xtx : (N, D, D) symmetric positive semi-definite.
    max_rank : keep at most this many rows (default D); a matrix of higher rank gets no factor.
    candidates : (N,) bool, optional: the matrices worth factoring (e.g. those of at most
        ``max_rank`` observations, whose rank cannot be higher); the others get no factor.
    rtol : eigenvalues below ``rtol`` times the largest of their matrix count as zero.

    Returns
    -------
    factor : (N, r, D), r the largest rank kept; row j of ``factor[i]`` is ``sqrt(lam_j) v_j'`` for the
        eigenvalues in decreasing order, zero rows beyond the matrix's rank, so ``factor[i, :k]``
        is exact for any ``k`` at least its rank.
    rank : (N,) int; ``D + 1`` for the matrices without a factor (zero rows).
    """
    N, D = xtx.shape[0], xtx.shape[-1]
    max_rank = D if max_rank is None else int(min(max_rank, D))
    todo = np.ones(N, dtype=bool) if candidates is None else np.asarray(candidates, dtype=bool)
    rank = np.full(N, D + 1)
    idx = np.flatnonzero(todo)
    lam, vec = np.linalg.eigh(xtx[idx])  # ascending
    lam, vec = lam[:, ::-1], vec[:, :, ::-1]
    keep = lam > rtol * np.maximum(lam[:, :1], np.finfo(float).tiny)
    got = keep.sum(axis=1)
    ok = got <= max_rank
    rank[idx[ok]] = got[ok]
    r = int(got[ok].max(initial=0))
    factor = np.zeros((N, r, D))
    root = np.sqrt(np.where(keep, lam, 0.0))[ok, :r]
    factor[idx[ok]] = np.swapaxes(vec[ok][:, :, :r] * root[:, None, :], 1, 2)
    return factor, rank


def diag_lowrank_factor(
    e: np.ndarray, s: np.ndarray, factor: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``A = diag(e) + s R'R`` in factored form through an r x r matrix per stack entry: ``W`` with
    ``A^{-1} = E^{-1} - W'W``, and ``log|A|``, without forming a D x D matrix.

    ``W = L^{-1} R E^{-1}`` with ``L L' = K = I/s + R E^{-1} R'`` (Woodbury);
    ``log|A| = sum log e + r log s + log|K|`` (determinant lemma; zero rows of R add
    ``log s + log(1/s) = 0``).

    Parameters
    ----------
    e : (n, D) positive diagonals.
    s : (n,) positive scales.
    factor : (n, r, D) the rows R (zero rows allowed).

    Returns
    -------
    W : (n, r, D), logdet : (n,)
    """
    r = factor.shape[1]
    re = factor / e[:, None, :]  # R E^{-1}
    K = re @ np.swapaxes(factor, 1, 2)
    idx = np.arange(r)
    K[:, idx, idx] += (1.0 / s)[:, None]
    chol = cholesky_soa(np.ascontiguousarray(np.moveaxis(K, 0, -1)))  # K >= I/s: positive definite
    W = np.moveaxis(tri_inv_soa(chol), -1, 0) @ re
    logdet = np.log(e).sum(axis=1) + r * np.log(s) + 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)
    return W, logdet

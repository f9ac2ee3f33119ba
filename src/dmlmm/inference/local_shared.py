"""The local step's linear algebra for paths that share a diagonal precision (Woodbury).

For the deep mixture the prior precision of path c is ``diag(e_k) - U_c U_c'`` with ``e_k`` the
idiosyncratic precisions of its first-layer component k and ``U_c`` of rank D_1
(:class:`~dmlmm.priors.base.SharedPrecision`); the noise precision s_k depends on k only. So a
subject's posterior precision under path c is

    Q_ic = A_ik - U_c U_c',    A_ik = diag(e_k) + s_k X_i'X_i,

and with ``A_ik^{-1}`` (one D x D factorisation per (subject, component), shared by the K_2 ...
paths through k) everything else follows from D_1 x D_1 matrices per (subject, path):

- ``C_ic = I - U_c' A_ik^{-1} U_c`` (positive definite because Q_ic is),
  ``log|Q_ic| = log|A_ik| + log|C_ic|`` (determinant lemma);
- ``Q_ic^{-1} = A_ik^{-1} + V_ic V_ic'`` with ``V_ic = A_ik^{-1} U_c L_C^{-T}`` (Woodbury,
  ``C = L_C L_C'``), so ``g'Q^{-1}g = g'A^{-1}g + |L_C^{-1} U_c'A^{-1}g|^2``;
- per path, ``sum_i r_ic Q_ic^{-1}`` = a sparse-by-dense product of the responsibilities with
  the stacked ``A_ik^{-1}`` plus one Gram matrix of the stacked ``sqrt(r_ic) V_ic``.

Cost per (subject, path) pair: O(D^2 D_1) instead of the dense step's O(D^3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import sparse

from .._linalg import OBS_MAX_RATIO, OBS_MIN_DIM, diag_lowrank_inv_logdet, stack_inv_logdet
from ..priors.base import SharedPrecision

__all__ = ["PairSolution", "base_inverse", "gram_per_path", "solve_shared"]


@dataclass(frozen=True)
class PairSolution:
    """Per (subject, path) pair: what the local step needs from the posterior precision Q and shift g.

    Attributes
    ----------
    logdet : (A,) log|Q_a|.
    quad : (A,) g_a' Q_a^{-1} g_a.
    mean : (D, A) Q_a^{-1} g_a.
    cov_sums : callable (idx, r) -> (M, D, D): per path, sum over the pairs ``idx`` of r Q_a^{-1}.
    """

    logdet: np.ndarray
    quad: np.ndarray
    mean: np.ndarray
    cov_sums: Callable[[np.ndarray, np.ndarray], np.ndarray]


def solve_shared(
    shared: SharedPrecision, s_group: np.ndarray, xtx: np.ndarray, subject: np.ndarray, path: np.ndarray,
    g: np.ndarray, n_paths: int, factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairSolution | None:
    """The pairs' posterior quantities through the shared factorisation; None when a capacitance
    matrix is not numerically positive definite (the caller then takes the dense route).

    Parameters
    ----------
    shared : SharedPrecision with M paths in G groups.
    s_group : (G,) noise precision of each group.
    xtx : (N, D, D) X_i'X_i of the subjects.
    subject, path : (A,) the pairs' subject (row of ``xtx``) and path.
    g : (A, D) the pairs' shifts, ``eta_c + s X_i'r_i``.
    n_paths : M.
    factor : ``(R, rank)`` of all subjects (:attr:`SufficientStats.gram_factor`), optional: subjects of
        low rank then take the observation-space route (:func:`base_inverse`).
    """
    G, D = shared.base.shape
    grp = shared.group[path]
    combo, pair_combo = np.unique(subject * G + grp, return_inverse=True)
    c_subject, c_group = combo // G, combo % G
    A_inv, A_logdet = base_inverse(shared.base[c_group], s_group[c_group], xtx, c_subject, factor)  # (U, D, D), (U,)
    U = shared.factor[path]  # (A, D, R)
    Ap = A_inv[pair_combo]
    AU = Ap @ U  # A^{-1} U_c
    C = np.eye(U.shape[2]) - np.swapaxes(U, 1, 2) @ AU
    try:
        LC = np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        return None
    LC_inv = np.linalg.inv(LC)
    a = (Ap @ g[..., None])[..., 0]  # A^{-1} g
    y = (LC_inv @ np.einsum("adr,ad->ar", AU, g)[..., None])[..., 0]  # L_C^{-1} U'A^{-1} g
    V = AU @ np.swapaxes(LC_inv, 1, 2)  # (A, D, R): Q^{-1} = A^{-1} + V V'
    mean = a + (V @ y[..., None])[..., 0]
    quad = np.einsum("ad,ad->a", g, a) + np.einsum("ar,ar->a", y, y)
    logdet = A_logdet[pair_combo] + 2.0 * np.log(np.diagonal(LC, axis1=1, axis2=2)).sum(axis=1)

    def cov_sums(idx: np.ndarray, r: np.ndarray) -> np.ndarray:
        weights = sparse.csr_matrix((r, (path[idx], pair_combo[idx])), shape=(n_paths, len(combo)))
        out = np.asarray(weights @ A_inv.reshape(len(combo), D * D)).reshape(n_paths, D, D)
        return out + gram_per_path(np.swapaxes(V[idx] * np.sqrt(r)[:, None, None], 1, 2), path[idx], n_paths)

    return PairSolution(logdet, quad, mean.T, cov_sums)


#: In the shared step only ``A_ik``'s factorisation moves to observation space, and the per-pair work
#: stays: there the route pays below a lower rank (whole local steps, 600 subjects, K = (10, 5) shared
#: paths: D = 40 rank 10 0.78, rank 22 1.00; D = 20 rank 8 0.89; 2 paths in 2 groups, D = 40 rank 10
#: 0.50, rank 22 1.04).
SHARED_OBS_FRACTION = 0.3


def base_inverse(
    base: np.ndarray, s: np.ndarray, xtx: np.ndarray, subject: np.ndarray,
    factor: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of ``A_u = diag(base_u) + s_u X'X`` of subject ``subject[u]``, per u.

    With ``factor`` (``R, rank`` of all subjects), the entries whose subject has rank at most
    ``SHARED_OBS_FRACTION * D`` are computed in observation space
    (:func:`~dmlmm._linalg.diag_lowrank_inv_logdet`), the others by a Cholesky factor of ``A``.

    Parameters
    ----------
    base : (U, D) positive diagonals; s : (U,) noise precisions; xtx : (N, D, D); subject : (U,).

    Returns
    -------
    inv : (U, D, D), logdet : (U,)
    """
    U, D = base.shape
    low = np.zeros(U, dtype=bool)
    if factor is not None:
        R, rank = factor
        low = rank[subject] <= (SHARED_OBS_FRACTION * D if D >= OBS_MIN_DIM else -1)
        if low.any():
            idx = np.flatnonzero(low)
            r = int(rank[subject[idx]].max(initial=0))
            Rl = R[subject[idx], :r]
            ratio = s[idx] * np.einsum("urd,urd,ud->u", Rl, Rl, 1.0 / base[idx])
            ok = ratio < OBS_MAX_RATIO
            low[idx[~ok]] = False
            idx, Rl = idx[ok], Rl[ok]
    inv = np.empty((U, D, D))
    logdet = np.empty(U)
    if low.any():
        inv[idx], logdet[idx] = diag_lowrank_inv_logdet(base[idx], s[idx], Rl)
    rest = np.flatnonzero(~low)
    if len(rest):
        A = s[rest][:, None, None] * xtx[subject[rest]]
        diag = np.arange(D)
        A[:, diag, diag] += base[rest]
        inv[rest], logdet[rest] = stack_inv_logdet(A, "local posterior precision")
    return inv, logdet


def gram_per_path(rows: np.ndarray, path: np.ndarray, n_paths: int) -> np.ndarray:
    """Per path, the sum over its pairs a of ``rows_a' rows_a``: one matrix product per path.

    Parameters
    ----------
    rows : (A, k, D) k rows of each pair.
    path : (A,) path of each pair.

    Returns
    -------
    (M, D, D)
    """
    D = rows.shape[-1]
    out = np.zeros((n_paths, D, D))
    order = np.argsort(path, kind="stable")
    p = path[order]
    starts = np.flatnonzero(np.r_[True, p[1:] != p[:-1]]) if len(p) else np.zeros(0, dtype=int)
    for a, b in zip(starts, np.r_[starts[1:], len(p)]):  # a loop over paths, each one matrix product
        W = rows[order[a:b]].reshape(-1, D)
        out[p[a]] = W.T @ W
    return out

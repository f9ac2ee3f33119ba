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

A subject with few distinct visits has ``X_i'X_i = R_i'R_i`` of rank r < D. Its ``A_ik^{-1}`` is then
kept factored, ``E_k^{-1} - W_ik'W_ik`` with W of shape r x D (Woodbury through an r x r matrix,
:func:`~dmlmm._linalg.diag_lowrank_factor`), and never formed: ``A^{-1}U_c`` and ``A^{-1}g`` cost
O(r D D_1) per pair, and the covariance sums are ``(sum r) E_k^{-1}`` minus Gram matrices of the
stacked ``W`` plus those of the stacked ``V`` (:func:`_solve_factored`). The other subjects' ``A_ik``
are factored by Cholesky (:func:`_solve_cholesky`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import sparse

from .._linalg import OBS_MAX_RATIO, OBS_MIN_DIM, cholesky_soa, diag_lowrank_factor, stack_inv_logdet, tri_inv_soa
from ..priors.base import SharedPrecision
from .._runs import run_starts

__all__ = ["PairSolution", "gram_per_path", "merge_solutions", "observation_pairs", "solve_shared"]


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
    factor : ``(R, rank)`` of all subjects (:attr:`SufficientStats.gram_factor`), optional: the pairs
        of subjects of low rank (:func:`observation_pairs`) then take the observation-space route,
        in which no D x D matrix is formed (:func:`_solve_factored`).
    """
    low = observation_pairs(shared, s_group, xtx, subject, path, factor)
    if not low.any():
        return _solve_cholesky(shared, s_group, xtx, subject, path, g, n_paths)
    if low.all():
        return _solve_factored(shared, s_group, factor, subject, path, g, n_paths)
    lo, hi = np.flatnonzero(low), np.flatnonzero(~low)
    sol_lo = _solve_factored(shared, s_group, factor, subject[lo], path[lo], g[lo], n_paths)
    sol_hi = _solve_cholesky(shared, s_group, xtx, subject[hi], path[hi], g[hi], n_paths)
    if sol_lo is None or sol_hi is None:
        return None
    return merge_solutions([(lo, sol_lo), (hi, sol_hi)], len(path))


#: The observation-space route of the shared step is taken for subjects whose X_i'X_i has rank at
#: most this fraction of D (and at most :func:`~dmlmm._linalg.max_obs_rank`, which bounds the factors
#: at hand). Time of the factored route against the Cholesky route, covariance sums included (600
#: subjects in 4 of 50 paths each, 10 groups, R = 4; 2026-12-04): D = 12 rank 6 0.73, rank 9 1.13;
#: D = 20 rank 10 0.65, rank 15 1.05; D = 30 rank 15 0.51, rank 22 0.87; D = 40 rank 12 0.24,
#: rank 20 0.41, rank 30 0.84.
SHARED_OBS_FRACTION = 0.6


def observation_pairs(
    shared: SharedPrecision, s_group: np.ndarray, xtx: np.ndarray, subject: np.ndarray, path: np.ndarray,
    factor: tuple[np.ndarray, np.ndarray] | None,
) -> np.ndarray:
    """(A,) bool: the pairs that take the observation-space route: their subject's rank is at most
    ``SHARED_OBS_FRACTION * D`` (D at least :data:`~dmlmm._linalg.OBS_MIN_DIM`) and the data are not
    far more precise than the prior (``s tr(X'X E^{-1}) < OBS_MAX_RATIO``: Woodbury's difference
    would lose digits)."""
    G, D = shared.base.shape
    if factor is None or D < OBS_MIN_DIM:
        return np.zeros(len(path), dtype=bool)
    low = factor[1][subject] <= SHARED_OBS_FRACTION * D
    if low.any():
        idx = np.flatnonzero(low)
        grp = shared.group[path[idx]]
        data_diag = np.diagonal(xtx, axis1=1, axis2=2)[subject[idx]]  # tr(R E^{-1} R') = tr(X'X E^{-1})
        ratio = s_group[grp] * np.einsum("ud,ud->u", data_diag, 1.0 / shared.base[grp])
        low[idx[ratio >= OBS_MAX_RATIO]] = False
    return low


#: The factored route's covariance sums form one W'W per (subject, group) combination, weighted per
#: path by a sparse product, when the pairs outnumber the combinations at least this much; else one
#: Gram matrix of the stacked pairs' W per path (a single matrix product each). D = 40, rank 10, 665
#: combinations: 2,511 pairs 4.0 against 8.4 ms, one pair per combination 3.5 against 1.4 ms.
PAIRS_PER_COMBO_GRAM = 2.0


def _combos(shared: SharedPrecision, subject: np.ndarray, path: np.ndarray) -> tuple[np.ndarray, ...]:
    """The distinct (subject, group) combinations of the pairs: their subject and group (U,) and each
    pair's combination (A,)."""
    G = shared.base.shape[0]
    combo, pair_combo = np.unique(subject * G + shared.group[path], return_inverse=True)
    return combo // G, combo % G, pair_combo


def _solve_cholesky(
    shared: SharedPrecision, s_group: np.ndarray, xtx: np.ndarray, subject: np.ndarray, path: np.ndarray,
    g: np.ndarray, n_paths: int,
) -> PairSolution | None:
    """The pairs' quantities from ``A_ik^{-1}`` formed by one Cholesky factor per (subject, group)."""
    D = shared.base.shape[1]
    c_subject, c_group, pair_combo = _combos(shared, subject, path)
    A = s_group[c_group][:, None, None] * xtx[c_subject]
    diag = np.arange(D)
    A[:, diag, diag] += shared.base[c_group]
    A_inv, A_logdet = stack_inv_logdet(A, "local posterior precision")  # (U, D, D), (U,)
    Ut = np.swapaxes(shared.factor, 1, 2)[path]  # (A, R, D): U_c' per pair
    Ap = A_inv[pair_combo]
    AUt = Ut @ Ap  # (A^{-1} U_c)' (A^{-1} is symmetric)
    a = (Ap @ g[..., None])[..., 0]  # A^{-1} g
    low_rank = _low_rank_update(Ut, AUt, g, a, A_logdet[pair_combo])
    if low_rank is None:
        return None
    Vt, mean, quad, logdet = low_rank

    def cov_sums(idx: np.ndarray, r: np.ndarray) -> np.ndarray:
        out = _sum_per_path(r, path[idx], pair_combo[idx], A_inv, n_paths)
        return out + gram_per_path(Vt[idx] * np.sqrt(r)[:, None, None], path[idx], n_paths)

    return PairSolution(logdet, quad, mean.T, cov_sums)


def _solve_factored(
    shared: SharedPrecision, s_group: np.ndarray, factor: tuple[np.ndarray, np.ndarray], subject: np.ndarray,
    path: np.ndarray, g: np.ndarray, n_paths: int,
) -> PairSolution | None:
    """The pairs' quantities with ``A_ik^{-1} = E_k^{-1} - W_ik'W_ik`` kept factored (W of shape r x D,
    :func:`~dmlmm._linalg.diag_lowrank_factor`): ``A^{-1}U_c`` and ``A^{-1}g`` in O(r D D_1) per pair,
    and the per-path covariance sums as ``(sum r) E^{-1}`` minus one Gram matrix of the stacked
    ``sqrt(r) W`` plus that of the stacked ``sqrt(r) V'``: no D x D matrix per combination or pair."""
    R, rank = factor
    D = shared.base.shape[1]
    c_subject, c_group, pair_combo = _combos(shared, subject, path)
    r = int(rank[c_subject].max(initial=0))
    W, A_logdet = diag_lowrank_factor(shared.base[c_group], s_group[c_group], R[c_subject, :r])  # (U, r, D)
    e_inv = 1.0 / shared.base  # (G, D)
    Ei = e_inv[shared.group[path]]  # (A, D)
    n_low = shared.factor.shape[2]
    rows = np.empty((len(path), n_low + 1, D))  # per pair the rows U_c' (R x D), then g'
    rows[:, :n_low] = np.swapaxes(shared.factor, 1, 2)[path]
    rows[:, n_low] = g
    ww = _apply_gram(W, pair_combo, rows)  # the same rows times W'W
    AUt = Ei[:, None, :] * rows[:, :n_low] - ww[:, :n_low]  # (A, R, D): (A^{-1} U_c)'
    a = Ei * g - ww[:, n_low]  # A^{-1} g
    low_rank = _low_rank_update(rows[:, :n_low], AUt, g, a, A_logdet[pair_combo])
    if low_rank is None:
        return None
    Vt, mean, quad, logdet = low_rank
    diag = np.arange(D)

    def cov_sums(idx: np.ndarray, w: np.ndarray) -> np.ndarray:
        root = np.sqrt(w)[:, None, None]
        out = np.zeros((n_paths, D, D))
        out[:, diag, diag] = np.bincount(path[idx], weights=w, minlength=n_paths)[:, None] * e_inv[shared.group]
        used, where = np.unique(pair_combo[idx], return_inverse=True)
        if len(idx) >= PAIRS_PER_COMBO_GRAM * len(used):  # one W'W per combination, weighted per path
            Wu = W if len(used) == len(W) else W[used]  # (used is sorted: all combinations, in order)
            out -= _sum_per_path(w, path[idx], where, np.swapaxes(Wu, 1, 2) @ Wu, n_paths)
        else:  # one Gram matrix of the stacked sqrt(w) W per path
            out -= gram_per_path(W[pair_combo[idx]] * root, path[idx], n_paths)
        return out + gram_per_path(Vt[idx] * root, path[idx], n_paths)

    return PairSolution(logdet, quad, mean.T, cov_sums)


def _apply_gram(W: np.ndarray, combo: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``rows_a W_u'W_u`` (A, k, D) for the pairs a of combination u = ``combo[a]``; ``W`` (n, r, D) (the
    combinations' factors), ``rows`` (A, k, D).

    The rows of a combination's pairs (a subject's paths through one group) are stacked (padded to
    the most pairs a combination has) and multiplied by its W' and W, two matrix products per
    combination, instead of gathering an r x D copy of W per pair (at D = 40 and 2,500 pairs, 19 MB
    read four times). Pairs sorted by combination, each with the same number of pairs, need no
    copies; with uneven combinations (padding would more than double the work) the pairs' copies
    of W are gathered."""
    n, r, D = W.shape
    A, k, _ = rows.shape
    counts = np.bincount(combo, minlength=n)
    m = int(counts.max(initial=0))
    if A == 0 or m * n > 2 * A:
        Wp = W[combo]  # (A, r, D)
        return (rows @ np.swapaxes(Wp, 1, 2)) @ Wp
    if A == m * n and np.all(combo[1:] >= combo[:-1]):  # full and in order: a reshape
        block = rows.reshape(n, m * k, D)
        return ((block @ np.swapaxes(W, 1, 2)) @ W).reshape(A, k, D)
    order = np.argsort(combo, kind="stable")
    slot = np.empty(A, dtype=np.intp)
    slot[order] = np.arange(A) - np.repeat(np.cumsum(counts) - counts, counts)
    block = np.zeros((n, m, k, D))
    block[combo, slot] = rows
    out = ((block.reshape(n, m * k, D) @ np.swapaxes(W, 1, 2)) @ W).reshape(n, m, k, D)
    return out[combo, slot]


def _sum_per_path(w: np.ndarray, path: np.ndarray, combo: np.ndarray, mats: np.ndarray, n_paths: int) -> np.ndarray:
    """Per path, ``sum_a w_a mats[combo_a]`` over the pairs a of that path: one sparse product of the
    (paths x combinations) weights with the stacked matrices ``mats`` (U, D, D); returns (M, D, D)."""
    U, D = mats.shape[0], mats.shape[-1]
    weights = sparse.csr_matrix((w, (path, combo)), shape=(n_paths, U))
    return np.asarray(weights @ mats.reshape(U, D * D)).reshape(n_paths, D, D)


def _low_rank_update(
    Ut: np.ndarray, AUt: np.ndarray, g: np.ndarray, a: np.ndarray, A_logdet: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """From ``A^{-1}`` applied to ``U_c`` and ``g``, the pairs' ``Q^{-1} = A^{-1} + V V'``, mean, quadratic
    form and log-determinant (Woodbury and the determinant lemma through ``C = I - U'A^{-1}U``);
    None when a ``C`` is not numerically positive definite. ``U_c`` and ``A^{-1}U_c`` are held as rows
    (R x D per pair), so the covariance sums' Gram matrices take ``V'`` without a transposed copy.

    Parameters
    ----------
    Ut, AUt : (A, R, D) ``U_c'`` and ``(A^{-1}U_c)'``; g, a : (A, D) the shifts and ``A^{-1} g``;
    A_logdet : (A,).

    Returns
    -------
    Vt : (A, R, D) ``V'``, mean : (A, D), quad : (A,), logdet : (A,)
    """
    C = np.eye(Ut.shape[1]) - Ut @ np.swapaxes(AUt, 1, 2)
    try:  # R x R factors, batch axis last (cholesky_soa): faster than LAPACK's per-matrix calls
        LC = cholesky_soa(np.ascontiguousarray(C.transpose(1, 2, 0)))
    except np.linalg.LinAlgError:
        return None
    LC_inv = np.moveaxis(tri_inv_soa(LC), -1, 0)  # (A, R, R)
    y = np.einsum("ars,as->ar", LC_inv, np.einsum("ard,ad->ar", AUt, g))  # L_C^{-1} U'A^{-1} g
    Vt = LC_inv @ AUt  # (A, R, D)
    mean = a + np.einsum("ard,ar->ad", Vt, y)
    quad = np.einsum("ad,ad->a", g, a) + np.einsum("ar,ar->a", y, y)
    logdet = A_logdet + 2.0 * np.log(np.diagonal(LC, axis1=0, axis2=1)).sum(axis=1)
    return Vt, mean, quad, logdet


def merge_solutions(parts: list[tuple[np.ndarray, PairSolution]], n_pairs: int) -> PairSolution:
    """One PairSolution over ``n_pairs`` pairs from solutions of disjoint subsets (positions, solution)."""
    D = parts[0][1].mean.shape[0]
    logdet, quad, mean = np.empty(n_pairs), np.empty(n_pairs), np.empty((D, n_pairs))
    owner, local_pos = np.empty(n_pairs, dtype=int), np.empty(n_pairs, dtype=int)
    for k, (idx, sol) in enumerate(parts):
        logdet[idx], quad[idx], mean[:, idx] = sol.logdet, sol.quad, sol.mean
        owner[idx], local_pos[idx] = k, np.arange(len(idx))

    def cov_sums(sel: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = [sol.cov_sums(local_pos[sel[owner[sel] == k]], w[owner[sel] == k]) for k, (_, sol) in enumerate(parts)]
        return np.sum(out, axis=0)

    return PairSolution(logdet, quad, mean, cov_sums)


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
    starts = run_starts(p)
    for a, b in zip(starts, np.append(starts[1:], len(p))):  # a loop over paths, each one matrix product
        W = rows[order[a:b]].reshape(-1, D)
        out[p[a]] = W.T @ W
    return out

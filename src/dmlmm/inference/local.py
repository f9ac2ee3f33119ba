"""The local (per-subject) step of variational inference, batched over subjects x paths.

Given the expected log prior of b under each path (a quadratic form, see
:mod:`dmlmm.priors.base`) and the current noise / fixed-effect factors, the
optimal ``q(b_i | c)`` is Gaussian with

    precision Q_ic = Lambda_c + E[1/sigma^2_c] X_i'X_i,
    mean      Q_ic^{-1} (eta_c + E[1/sigma^2_c] X_i'(y_i - F_i E[w])),

where sigma^2_c is the residual variance of path c: one shared value, or one per
first-layer component (``noise="cluster"``), in which case the noise moments are
given per path.

and the optimal ``q(c_i)`` is the softmax over paths of the local evidence
lower bounds, which are closed form (log of a Gaussian integral). Everything is
computed from the per-subject sufficient statistics; cost O(N M D^3) whatever
the n_i, processed in chunks of subjects to bound memory. Where paths share the
diagonal part of their prior precision (the deep mixture's paths through one
first-layer component) one D x D factorisation per (subject, component) serves
them all, and each path adds O(D^2 D_1) (:mod:`dmlmm.inference.local_shared`).

With 12 functions or more, subjects with fewer distinct visits than 0.43 D (up to 0.75 D
from D = 34 on; sparse visits, a generous basis; :func:`~dmlmm._linalg.max_obs_rank`)
take the observation-space route: with ``X_i'X_i = R_i'R_i`` of rank r (factors computed once from
the Gram matrices, :attr:`SufficientStats.gram_factor`), Woodbury's identity and the
determinant lemma need an r x r factorisation and O(r D^2) work per pair instead of O(D^3),
for the shared step's ``A_ik`` as for a path's own precision (:func:`_solve_observation`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._linalg import (
    OBS_MAX_RATIO, blas_single_thread, cholesky, cholesky_soa, max_obs_rank, solve_lower_soa, solve_upper_t_soa,
    spd_inv_logdet, tri_inv_soa,
)
from .local_shared import PairSolution, gram_per_path, merge_solutions, solve_shared
from .._runs import run_lengths, run_starts
from ..sufficient import SufficientStats
from ..priors.base import PathMoments, PathPrior
from ..expfam import LOG_2PI

__all__ = ["NoiseMoments", "LocalResult", "local_step", "observation_factor", "residual_stats"]

_MAX_CHUNK_ELEMENTS = 4_000_000  # subjects x paths x D x D doubles per chunk (32 MB)
_THREADS = max(1, min(4, os.cpu_count() or 1))
_MIN_PAIRS_FOR_THREADS = 4000  # below this, thread start-up costs more than it saves ...
_MIN_PAIRS_FOR_THREADS_WIDE = 1000  # ... but from _WIDE_BASIS functions on, where each pair's work is larger
_WIDE_BASIS = 30


@dataclass(frozen=True)
class NoiseMoments:
    """Expectations of the noise and fixed-effect factors used by the local step.

    Attributes
    ----------
    prec : E[1 / sigma^2], a scalar (shared noise) or (M,) per path.
    log_var : E[log sigma^2], likewise.
    w_mean : (P,) E[w].
    w_cov : (P, P) Cov[w].
    """

    prec: float | np.ndarray
    log_var: float | np.ndarray
    w_mean: np.ndarray
    w_cov: np.ndarray


@dataclass(frozen=True)
class LocalResult:
    """Output of the local step.

    Attributes
    ----------
    resp : (N, M) q(c_i = c).
    log_evidence : (N,) each subject's local ELBO contribution (log-sum-exp over paths).
    mean_b : (N, D) E_q[b_i].
    quad : None (kept for the field order; the per-subject E_q[b_i' X_i'X_i b_i] is not computed:
        no update needs it, and its per-path sums are ``path_quad``).
    moments : PathMoments, sums over the subjects.
    path_quad : (M,) sum_i r_ic E[b_i' X_i'X_i b_i | c].
    path_xty_b : (M,) sum_i r_ic X_i'y_i . E[b_i | c].
    path_xtf_b : (M, P) sum_i r_ic F_i'X_i E[b_i | c].
    (the per-path pieces of the residual sums of squares, for per-cluster noise)
    scale_moments : GroupMoments or None, each subject's posterior moments per noise group for the update
        of its residual scale, with subject-level residual scales only (:mod:`dmlmm.inference.subject_scales`).
    path_gram : (M, D, D) sum_i r_ic X_i'X_i;  path_xtf : (M, D, P) sum_i r_ic X_i'F_i.
    (what the translation move of the component means needs, :mod:`dmlmm.inference.translate`; None
    where a step does not give them)
    """

    resp: np.ndarray
    log_evidence: np.ndarray
    mean_b: np.ndarray
    quad: np.ndarray | None
    moments: PathMoments
    path_quad: np.ndarray | None = None
    path_xty_b: np.ndarray | None = None
    path_xtf_b: np.ndarray | None = None
    scale_moments: Any = None
    path_gram: np.ndarray | None = None
    path_xtf: np.ndarray | None = None


def residual_stats(stats: SufficientStats, noise: NoiseMoments) -> tuple[np.ndarray, np.ndarray]:
    """X_i'(y_i - F_i E[w]) (N, D) and E||y_i - F_i w||^2 (N,)."""
    wm = noise.w_mean
    xr = stats.Xty - stats.XtF @ wm
    err = (
        stats.yty
        - 2.0 * stats.Fty @ wm
        + np.einsum("p,npq,q->n", wm, stats.FtF, wm)
        + np.einsum("npq,qp->n", stats.FtF, noise.w_cov)
    )
    return xr, err


def local_step(
    stats: SufficientStats,
    prior: PathPrior,
    noise: NoiseMoments,
    hard_assignment: bool = False,
    active: np.ndarray | None = None,
    moment_threshold: float = 1e-12,
    log_weight: np.ndarray | None = None,
    move_sums: bool = False,
) -> LocalResult:
    """Optimal q(c_i) and q(b_i | c_i) for every subject, batched over (subject, path) pairs.

    Parameters
    ----------
    stats : SufficientStats of N subjects.
    prior : PathPrior with M paths.
    noise : NoiseMoments.
    hard_assignment : bool
        Put all of q(c_i) on the single best path (the research code's local step).
    active : (N, M) bool, optional
        Restrict q(c_i) to these paths (each subject needs at least one). The optimum
        over this restricted family is still a coordinate-ascent step, so the ELBO
        keeps increasing; a later full step (``active=None``) re-opens all paths.
    log_weight : (N, M), optional
        Per-subject additions to the paths' log weights (the membership model's bound,
        :mod:`dmlmm.priors.membership`).
    move_sums : bool
        Also sum ``path_gram`` and ``path_xtf`` (the translation move's, :mod:`dmlmm.inference.translate`;
        with 40 functions they add a sixth to a step's cost, so only the runs that move ask for them).
    """
    N, D, M = stats.n_subjects, stats.dim_random, prior.n_paths
    P = stats.dim_fixed
    xr, err = residual_stats(stats, noise)
    s_path = np.broadcast_to(np.asarray(noise.prec, dtype=float), (M,))
    lv_path = np.broadcast_to(np.asarray(noise.log_var, dtype=float), (M,))
    const_i = -0.5 * stats.n_obs * LOG_2PI + 0.5 * D * LOG_2PI
    path_const = prior.log_weight + prior.const

    resp = np.zeros((N, M))
    log_ev = np.empty(N)
    mean_b = np.zeros((N, D))
    if active is None:
        active = np.ones((N, M), dtype=bool)
    s_group = _shared_route(prior, s_path)  # paths sharing a factorisation (local_shared), or None
    factor = observation_factor(stats)  # before the threads: computed once per statistics object
    shift_soa = np.ascontiguousarray(prior.shift.T)  # (D, M)
    prec_soa = xtx_soa = obs = None
    if s_group is None:  # structure-of-arrays layout for the dense route: matrices (D, D, pairs)
        prec_soa = np.ascontiguousarray(np.moveaxis(prior.precision, 0, -1))  # (D, D, M)
        xtx_soa = np.ascontiguousarray(np.moveaxis(stats.XtX, 0, -1))  # (D, D, N)
    if factor is not None and s_group is None:  # the dense step's observation-space route needs the covariances
        try:
            obs = (factor, *spd_inv_logdet(prior.precision, "path prior precision"))
        except np.linalg.LinAlgError:
            obs = None
    xr_soa = np.ascontiguousarray(xr.T)  # (D, N)
    def run_chunk(start: int, stop: int) -> tuple[np.ndarray, ...]:
        """Subjects start..stop: writes their rows of the per-subject outputs, returns path sums."""
        w_sum = np.zeros(M)
        first = np.zeros((M, D))
        second = np.zeros((M, D, D))
        xtf_b = np.zeros((M, P))
        ii, cc = np.nonzero(active[start:stop])  # pairs, sorted by subject
        gi = ii + start
        s = s_path[cc]  # the path's E[1/sigma^2], per pair
        g = shift_soa[:, cc] + s * xr_soa[:, gi]  # (D, pairs)
        sol = None
        if s_group is not None:
            sol = solve_shared(prior.shared, s_group, stats.XtX, gi, cc, np.ascontiguousarray(g.T), M, factor)
        if sol is None:  # no shared route, or a capacitance matrix was not positive definite
            sol = _solve_unshared(prior.precision, stats.XtX, gi, cc, s, g, M, prec_soa, xtx_soa, obs)
        m = sol.mean
        lik = const_i[gi] - 0.5 * stats.n_obs[gi] * lv_path[cc] - 0.5 * s * err[gi]
        elbo_p = path_const[cc] + lik - 0.5 * sol.logdet + 0.5 * sol.quad
        if log_weight is not None:
            elbo_p = elbo_p + log_weight[gi, cc]
        seg = run_starts(ii)
        seg_len = run_lengths(seg, len(ii))
        if hard_assignment:
            best = np.lexsort((-elbo_p, ii))[seg]  # ii is sorted, so segments keep their starts
            r = np.zeros(len(ii))
            r[best] = 1.0
            lev = elbo_p[best]
        else:
            mx = np.maximum.reduceat(elbo_p, seg)
            ex = np.exp(elbo_p - np.repeat(mx, seg_len))
            tot = np.add.reduceat(ex, seg)
            lev = mx + np.log(tot)
            r = ex / np.repeat(tot, seg_len)
            # drop negligible pairs from *all* moments alike (and renormalise), so that the
            # weights, first and second moments stay consistent (a PSD scatter for the updates)
            r = np.where(r > moment_threshold, r, 0.0)
            r /= np.repeat(np.add.reduceat(r, seg), seg_len)
        resp[gi, cc] = r
        log_ev[start:stop] = lev
        rm = r[:, None] * m.T
        mean_b[start:stop] = np.add.reduceat(rm, seg, axis=0)
        w_sum += np.bincount(cc, weights=r, minlength=M)
        _add_rows(first, cc, rm)
        # second moments only where the responsibility is not negligible, summed per path
        act = np.flatnonzero(r > moment_threshold)
        m_act = m[:, act]
        m_rows = m_act.T  # (pairs, D)
        q_mean = _quad_forms(stats.XtX[start:stop], ii[act], m_rows)  # m' X'X m per pair
        r_cov = sol.cov_sums(act, r[act])
        second += r_cov + gram_per_path((m_act * np.sqrt(r[act])).T[:, None, :], cc[act], M)  # sum r m m'
        # sum_i r_ic tr(X_i'X_i Cov_ic) = (D sum_i r_ic - tr(Lambda_c sum_i r_ic Cov_ic)) / s_c, since
        # s_c X_i'X_i Cov_ic = I - Lambda_c Cov_ic; no cancellation: tr(Lambda Cov) <= D
        w_act = np.bincount(cc[act], weights=r[act], minlength=M)
        tr_prior = np.einsum("cij,cji->c", prior.precision, r_cov)
        p_quad = np.bincount(cc[act], weights=r[act] * q_mean, minlength=M) + (D * w_act - tr_prior) / s_path
        p_xty = np.bincount(cc, weights=np.einsum("ad,ad->a", rm, stats.Xty[gi]), minlength=M)
        if P:
            _add_rows(xtf_b, cc, np.einsum("ad,adp->ap", rm, stats.XtF[gi]))
        gram = xtf = None
        if move_sums:  # sum_i r_ic X_i'X_i and X_i'F_i: one product over the chunk's rows of resp
            gram = np.tensordot(resp[start:stop], stats.XtX[start:stop], axes=(0, 0))
            xtf = np.tensordot(resp[start:stop], stats.XtF[start:stop], axes=(0, 0))
        return w_sum, first, second, p_quad, p_xty, xtf_b, gram, xtf

    # memory-bounded chunks of subjects, each fully batched; chunks run on several threads
    # (numpy releases the GIL inside its loops), each writing its own rows
    n_pairs = int(active.sum())
    threads = _threads_for(n_pairs, D)
    per_chunk = max(1, min(_MAX_CHUNK_ELEMENTS // (D * D), -(-n_pairs // threads)))
    bounds = _chunk_bounds(active.sum(axis=1), per_chunk)
    with blas_single_thread():  # our own threads (or none): BLAS threads would only oversubscribe
        if len(bounds) > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=_THREADS) as pool:
                parts = list(pool.map(lambda se: run_chunk(*se), bounds))
        else:
            parts = [run_chunk(a, b) for a, b in bounds]
    w_sum, first, second, p_quad, p_xty, p_xtf = (np.sum([p[j] for p in parts], axis=0) for j in range(6))
    gram, xtf = (np.sum([p[j] for p in parts], axis=0) if move_sums else None for j in (6, 7))
    return LocalResult(resp, log_ev, mean_b, None, PathMoments(w_sum, first, second), p_quad, p_xty, p_xtf,
                       path_gram=gram, path_xtf=xtf)


def _threads_for(n_pairs: int, dim: int) -> int:
    """Threads for a local step of ``n_pairs`` (subject, path) pairs in ``dim`` dimensions.

    From 4,000 pairs; with 30 functions or more from 1,000, where a pair's factorisation is large enough for
    numpy's released GIL to pay. On the 2-core machine basis40 (600 subjects, 40 functions, mostly 1,200-pair
    steps) took 0.90 of the time in one set of alternating runs and 0.99 in another (this machine's noise is
    about 10 %); at 20 functions two threads from 1,000 pairs did not pay (docs/performance.md, "Threads")."""
    least = _MIN_PAIRS_FOR_THREADS_WIDE if dim >= _WIDE_BASIS else _MIN_PAIRS_FOR_THREADS
    return _THREADS if n_pairs >= least else 1


def observation_factor(stats: SufficientStats) -> tuple[np.ndarray, np.ndarray] | None:
    """The subjects' Gram factors for the local step's observation-space route, when it pays: at
    least a tenth of the subjects have at most ``max_obs_rank(D)`` observations (their rank is
    no larger; computed once per statistics object and kept), or the factors are at hand already."""
    if "gram_factor" in stats.__dict__:
        return stats.gram_factor
    if np.mean(stats.n_obs <= max_obs_rank(stats.dim_random)) >= 0.1:
        return stats.gram_factor
    return None


def _shared_route(prior: PathPrior, s_path: np.ndarray) -> np.ndarray | None:
    """Per group of :class:`SharedPrecision`, the noise precision of its paths, when the shared
    factorisation (:mod:`dmlmm.inference.local_shared`) pays; None to factor every pair alone.

    It pays when ``D * M / G >= 40``: one local step on 600 subjects (20 visits each), shared time
    over dense time, was 0.27-0.93 with D = 40 (1-5 paths per group), 0.48-0.73 with D = 20 and
    2-5 paths per group, 0.89 with D = 10 and 5, but 1.19 with D = 10 and 3 (``D * M / G`` = 30).
    It needs the noise to be the same within each group."""
    sp = prior.shared
    if sp is None or prior.shift.shape[1] * prior.n_paths < 40 * sp.base.shape[0]:
        return None
    s_group = np.zeros(sp.base.shape[0])
    s_group[sp.group] = s_path
    return s_group if np.array_equal(s_group[sp.group], s_path) else None


def _solve_unshared(
    precision: np.ndarray, xtx: np.ndarray, subject: np.ndarray, path: np.ndarray, s: np.ndarray, g: np.ndarray,
    n_paths: int, prec_soa: np.ndarray | None = None, xtx_soa: np.ndarray | None = None, obs: tuple | None = None,
) -> PairSolution:
    """Every pair's posterior quantities with its own factorisation: in observation space
    (:func:`_solve_observation`) for subjects of low rank when ``obs`` = ``((R, rank), Sigma, log|Lambda|)``
    is given, by a Cholesky factor of the D x D precision for the others.

    ``precision`` (M, D, D) and ``xtx`` (N, D, D) (also in the (D, D, ·) layout when at hand), ``subject``,
    ``path``, ``s`` (A,) per pair, ``g`` (D, A).
    """
    D = precision.shape[-1]

    def dense(idx: np.ndarray | None) -> PairSolution:  # None: every pair (no copies)
        c, i, sa, ga = (path, subject, s, g) if idx is None else (path[idx], subject[idx], s[idx], g[:, idx])
        if prec_soa is not None:
            Q = prec_soa[:, :, c] + sa * xtx_soa[:, :, i]
        else:
            Q = np.ascontiguousarray(np.moveaxis(precision[c] + sa[:, None, None] * xtx[i], 0, -1))
        return _solve_dense(Q, ga, c, n_paths)

    if obs is None:
        return dense(None)
    (R, rank), cov, prec_logdet = obs
    low = rank[subject] <= max_obs_rank(D)
    if not low.any():
        return dense(None)
    idx = np.flatnonzero(low)
    sol, ok = _solve_observation(cov, prec_logdet, R, rank, subject[idx], path[idx], s[idx], g[:, idx], n_paths)
    if sol is None:  # data far more precise than the prior: Woodbury's difference would lose digits
        idx = idx[ok]
        if len(idx) == 0:
            return dense(None)
        sol, _ = _solve_observation(cov, prec_logdet, R, rank, subject[idx], path[idx], s[idx], g[:, idx], n_paths,
                                    check=False)
    rest = np.setdiff1d(np.arange(len(path)), idx, assume_unique=True)
    if len(rest) == 0:
        return sol
    return merge_solutions([(idx, sol), (rest, dense(rest))], len(path))


def _solve_observation(
    cov: np.ndarray, prec_logdet: np.ndarray, R: np.ndarray, rank: np.ndarray, subject: np.ndarray, path: np.ndarray,
    s: np.ndarray, g: np.ndarray, n_paths: int, check: bool = True,
) -> tuple[PairSolution | None, np.ndarray]:
    """The pairs' posterior quantities in observation space: ``Q = Lambda_c + s R_i'R_i`` with R_i of rank r.

    With ``Sigma_c = Lambda_c^{-1}``, ``K = I/s + R Sigma R' = L L'`` and ``W = L^{-1} R Sigma``:
    ``Q^{-1} = Sigma - W'W`` (Woodbury) and ``log|Q| = log|Lambda| + r log s + log|K|`` (determinant
    lemma; a zero row of R adds ``log s + log(1/s) = 0``). O(r D^2) per pair instead of O(D^3), and the
    per-path covariance sums need no D x D matrix per pair: ``sum_a r_a Q_a^{-1} = (sum_a r_a) Sigma_c -
    Gram(sqrt(r_a) W_a)``.

    Parameters
    ----------
    cov : (M, D, D) Sigma_c; prec_logdet : (M,) log|Lambda_c|; R : (N, r_max, D), rank : (N,) (Gram factors);
    subject, path, s : (A,); g : (D, A).

    Returns
    -------
    solution : PairSolution, or None when ``check`` finds pairs whose data are far more precise than
        their prior (``s tr(R Sigma R') >= OBS_MAX_RATIO``), which the caller solves the other way.
    ok : (A,) bool, False for those pairs (all True when not ``check``).
    """
    r = int(rank[subject].max(initial=0))
    Rp = R[subject, :r]  # (A, r, D)
    S = cov[path]  # (A, D, D)
    RS = Rp @ S
    K = RS @ np.swapaxes(Rp, 1, 2)
    ok = np.ones(len(path), dtype=bool)
    if check:
        ok = s * np.trace(K, axis1=1, axis2=2) < OBS_MAX_RATIO
        if not ok.all():
            return None, ok
    idx = np.arange(r)
    K[:, idx, idx] += (1.0 / s)[:, None]
    chol = cholesky_soa(np.ascontiguousarray(np.moveaxis(K, 0, -1)))  # K >= I/s: positive definite
    W = np.moveaxis(tri_inv_soa(chol), -1, 0) @ RS  # (A, r, D)
    gt = g.T
    Sg = np.einsum("ade,ae->ad", S, gt)
    Wg = np.einsum("ard,ad->ar", W, gt)
    mean = Sg - np.einsum("ard,ar->ad", W, Wg)
    quad = np.einsum("ad,ad->a", gt, Sg) - np.einsum("ar,ar->a", Wg, Wg)
    logdet = prec_logdet[path] + r * np.log(s) + 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)

    def cov_sums(sel: np.ndarray, w: np.ndarray) -> np.ndarray:
        weight = np.bincount(path[sel], weights=w, minlength=n_paths)
        return weight[:, None, None] * cov - gram_per_path(W[sel] * np.sqrt(w)[:, None, None], path[sel], n_paths)

    return PairSolution(logdet, quad, mean.T, cov_sums), ok


def _solve_dense(Q: np.ndarray, g: np.ndarray, path: np.ndarray, n_paths: int) -> PairSolution:
    """The pairs' posterior quantities from one Cholesky factor each: Q (D, D, A), g (D, A)."""
    try:
        chol = cholesky_soa(Q)
    except np.linalg.LinAlgError:
        chol = np.ascontiguousarray(np.moveaxis(cholesky(np.moveaxis(Q, -1, 0), "local posterior precision"), 0, -1))
    half = solve_lower_soa(chol, g)  # L^{-1} g, so g'Q^{-1}g = |half|^2
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)
    mean = solve_upper_t_soa(chol, half)  # (D, pairs)

    def cov_sums(idx: np.ndarray, r: np.ndarray) -> np.ndarray:
        return _dense_cov_sums(chol[:, :, idx], r, path[idx], n_paths)

    return PairSolution(logdet, np.einsum("dn,dn->n", half, half), mean, cov_sums)


def _dense_cov_sums(chol: np.ndarray, r: np.ndarray, path: np.ndarray, n_paths: int) -> np.ndarray:
    """Per path, sum_a r_a Cov_a over (subject, path) pairs a, (M, D, D).

    Cov_a = (L_a L_a')^{-1} = M_a'M_a with M_a = L_a^{-1}: the weighted sum over a path's
    pairs is one Gram matrix W'W of the stacked sqrt(r_a) M_a (a single matrix product
    per path), so no per-pair covariance matrix is ever formed.

    Parameters
    ----------
    chol : (D, D, A) lower Cholesky factors of the pairs' posterior precisions.
    r : (A,) responsibilities (non-negative).
    path : (A,) path of each pair.
    """
    W = tri_inv_soa(chol) * np.sqrt(r)  # (D, D, A): W[i, j, a] = sqrt(r_a) (L_a^{-1})_ij
    return gram_per_path(W.transpose(2, 0, 1), path, n_paths)


def _quad_forms(xtx: np.ndarray, row: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """``vec_a' xtx[row_a] vec_a`` for pairs sorted by ``row``: (S, D, D), (A,), (A, D) -> (A,).

    With few pairs per row, each row's vectors are stacked (padded to the most a row has) and
    multiplied by its matrix in place, instead of gathering one D x D copy per pair (at D = 40 the
    gather of 2,500 matrices took longer than the products)."""
    A = len(row)
    if A == 0:
        return np.zeros(0)
    starts = run_starts(row)
    counts = run_lengths(starts, A)
    rows = row[starts]
    if counts.max() * len(rows) > 2 * A:  # uneven: padding would waste more than the gather
        return np.einsum("ad,ade,ae->a", vec, xtx[row], vec)
    owner = np.repeat(np.arange(len(rows)), counts)  # each pair's position among the rows
    pos = np.arange(A) - np.repeat(starts, counts)
    padded = np.zeros((len(rows), int(counts.max()), vec.shape[1]))
    padded[owner, pos] = vec
    prod = padded @ xtx[rows] if len(rows) < len(xtx) else padded @ xtx
    return np.einsum("skd,skd->sk", prod, padded)[owner, pos]


def _chunk_bounds(pairs_per_subject: np.ndarray, per_chunk: int) -> list[tuple[int, int]]:
    """Consecutive subject ranges holding about ``per_chunk`` (subject, path) pairs each."""
    cum = np.cumsum(pairs_per_subject)
    cuts = np.searchsorted(cum, np.arange(per_chunk, cum[-1], per_chunk), side="left") + 1
    edges = np.unique(np.concatenate(([0], cuts, [len(cum)])))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def _add_rows(out: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """``out[index] += values`` with repeated indices summed (sort + reduceat, faster than ufunc.at)."""
    if len(index) == 0:
        return
    order = np.argsort(index, kind="stable")
    idx = index[order]
    starts = run_starts(idx)
    out[idx[starts]] += np.add.reduceat(values[order], starts, axis=0)

"""Subject-level residual scales: some subjects are noisier than others.

With ``noise_df`` set, subject i's residuals have variance ``sigma^2 v_i`` with its own scale

    e_ij ~ N(0, sigma^2 v_i),   v_i ~ IG(nu/2, nu/2),

so that, with ``v_i`` integrated out, a subject's residual vector is multivariate Student-t with
``nu`` degrees of freedom: a scale mixture that keeps every update conjugate. ``nu`` is fixed
or learned (``noise_df="auto"``) by maximising the ELBO; a large ``nu`` is the Gaussian model.

Variational factor ``q(v_i) = IG(alpha_i, beta_i)`` (an :class:`~dmlmm.expfam.InvGamma` over the
N subjects), with ``E[1/v_i] = alpha_i / beta_i`` and ``E[log v_i] = log beta_i - digamma(alpha_i)``:

- given q(v), the local step and the noise / fixed-effect updates are the Gaussian ones on the
  statistics of each subject weighted by ``E[1/v_i]`` (:func:`weighted_stats`), and each subject's
  expected log-likelihood gains ``-n_i / 2 E[log v_i]``;
- ``q(v_i) = IG(nu/2 + n_i/2, nu/2 + R_i)`` (:func:`update_scales`) with
  ``R_i = E[1/sigma^2] E||y_i - X_i b_i - F_i w||^2 / 2`` from the unweighted expected residual sum of
  squares (:func:`group_moments`, :func:`half_rss`); with one residual variance per cluster
  (``noise="cluster"``), ``R_i = sum_g E[1/sigma_g^2] E[1{c_i in g} ||y_i - X_i b_i - F_i w||^2] / 2`` over the
  first-layer components g;
- ``nu`` (``noise_df="auto"``) is optimised jointly with q(v): at the optimal q(v) for a given nu the
  scales' part of the ELBO is a closed-form function of nu (:func:`profile_elbo`), maximised over
  [:data:`DF_MIN`, :data:`DF_MAX`] (:func:`optimal_df`), and q(v) is then the optimum for that nu;
- the ELBO gains ``sum_i (E[log IG(v_i; nu/2, nu/2)] + H[q(v_i)])`` (:func:`scales_elbo`);
- a fit starts from each subject's ridge fit (:func:`initial_scales`) and holds ``nu`` while exploring
  its starting sizes (:func:`dmlmm.inference.moves.explore_config`); the final run learns it.

Each update is exact coordinate ascent, so the ELBO stays monotone (tests/test_subject_scales.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import digamma, gammaln

from ..expfam import InvGamma, ig_expected_logpdf
from ..sufficient import SufficientStats
from .._linalg import OBS_MAX_RATIO
from .local import observation_factor

__all__ = ["SubjectScales", "GroupMoments", "DF_MIN", "DF_MAX", "DF_START", "optimal_scales", "initial_scales",
           "weighted_stats", "group_moments", "half_rss", "update_scales", "profile_elbo", "optimal_df", "scales_elbo",
           "log_likelihood_shift", "with_scales"]

#: Bounds of a learned ``nu`` (below 1 a subject's residuals would have no mean; above 1000 they are Gaussian
#: to within the rounding of the fit).
DF_MIN, DF_MAX = 1.0, 1000.0
#: ``nu`` of a learned fit's configuration (``VIConfig.subject_df``) before its start is made: the start itself
#: takes the best ``nu`` for the ridge fits' residuals (:func:`initial_scales`), so this value marks "learned"
#: and is used only by a start made without residuals.
DF_START = 10.0
_CHUNK = 2_000_000  # pairs x D x D doubles per chunk in group_moments (16 MB)


@dataclass(frozen=True)
class SubjectScales:
    """q(v_i) of every subject and the degrees of freedom ``nu`` of their prior.

    Attributes
    ----------
    q : InvGamma with (N,) shape and rate.
    df : float, nu (a plain float: SQUAREM extrapolates q, never nu).
    """

    q: InvGamma
    df: float

    @property
    def weight(self) -> np.ndarray:
        """(N,) E[1/v_i], the weight of subject i's data."""
        return np.asarray(self.q.mean_inv, dtype=float)


def optimal_scales(df: float, n_obs: np.ndarray, half_rss: np.ndarray) -> SubjectScales:
    """The optimal q(v) at degrees of freedom ``df`` given each subject's ``R_i`` (``half_rss``, (N,)):
    ``q(v_i) = IG(nu/2 + n_i/2, nu/2 + R_i)``."""
    n = np.asarray(n_obs, dtype=float)
    return SubjectScales(InvGamma(0.5 * df + 0.5 * n, 0.5 * df + np.asarray(half_rss, dtype=float)), float(df))


def initial_scales(n_obs: np.ndarray, df: float, half_rss: np.ndarray | None = None,
                   learn_df: bool = False) -> SubjectScales:
    """The starting q(v): without ``half_rss`` every subject at E[1/v_i] = 1 (the Gaussian model's start),
    shape ``nu/2 + n_i/2``; with ``half_rss`` (N,), each subject's ``R_i`` from rough per-subject fits
    (:func:`dmlmm.models.starting.init_factory`), the optimal q(v) for them (and, with ``learn_df``, the
    optimal nu: :func:`optimal_df`)."""
    n = np.asarray(n_obs, dtype=float)
    if half_rss is None:
        shape = 0.5 * df + 0.5 * n
        return SubjectScales(InvGamma(shape, shape.copy()), float(df))
    return optimal_scales(optimal_df(n, half_rss) if learn_df else df, n, half_rss)


def weighted_stats(stats: SufficientStats, weight: np.ndarray) -> SufficientStats:
    """The statistics with subject i's data weighted by ``weight[i]`` (its Gram factor too, when the local
    step uses one: computed once on ``stats`` and kept there).

    Counts and membership covariates are not weighted."""
    w = np.asarray(weight, dtype=float)
    out = SufficientStats(
        stats.n_obs, stats.yty * w, stats.Xty * w[:, None], stats.XtX * w[:, None, None], stats.Fty * w[:, None],
        stats.FtF * w[:, None, None], stats.XtF * w[:, None, None], stats.membership,
    )
    if observation_factor(stats) is not None:  # computed once on the data's own statistics, then scaled
        R, rank = stats.gram_factor
        out.__dict__["gram_factor"] = (R * np.sqrt(w)[:, None, None], rank)
    return out


@dataclass(frozen=True)
class GroupMoments:
    """Each subject's posterior moments per noise group g, the pieces of its expected residual sum of squares.

    A noise group is the set of paths that share a residual variance: one group with a shared variance,
    the first-layer components with one per cluster (:func:`dmlmm.inference.noise.path_groups`).

    Attributes
    ----------
    resp : (N, G) q(c_i in g).
    mean : (N, G, D) sum_{c in g} r_ic E[b_i | c].
    quad : (N, G) sum_{c in g} r_ic E[b_i'X_i'X_i b_i | c], on the data's own statistics.
    """

    resp: np.ndarray
    mean: np.ndarray
    quad: np.ndarray


def group_moments(weighted: SufficientStats, precision: np.ndarray, shift: np.ndarray, s_path: np.ndarray,
                  resp: np.ndarray, w_mean: np.ndarray, mean_b: np.ndarray, weight: np.ndarray,
                  groups: np.ndarray | None = None, threshold: float = 1e-12) -> GroupMoments:
    """Per subject and noise group, the local step's ``r_ic``, ``r_ic E[b_i | c]`` and ``r_ic E[b_i'X_i'X_i b_i | c]``
    summed over the group's paths (:class:`GroupMoments`).

    ``q(b_i | c)`` has precision ``Q = precision_c + s_c X_i'X_i`` and mean ``Q^{-1}(shift_c + s_c
    X_i'(y_i - F_i E[w]))``, all from the weighted statistics: the very posterior of the local step
    (:mod:`dmlmm.inference.local`), recomputed for the pairs above ``threshold``, and
    ``E[b'X'Xb | c] = m'X'Xm + tr(X'X Q^{-1})`` (divided by the subject's weight for the data's own
    statistics). Subjects with fewer visits than the local step's observation-space limit go through
    their Gram factor ``R_i`` (``R_i'R_i = X_i'X_i``, r rows): with ``S = precision_c^{-1}``,
    ``G = R S R'`` and ``K = I / s + G``, Woodbury gives ``m = S g - S R' K^{-1} R S g`` and
    ``tr(X'X Q^{-1}) = tr(G) - tr(G K^{-1} G)``, O(r D^2) per pair; the others by a dense inverse, O(D^3).
    With one group its mean is the local step's ``mean_b`` and its probability 1.

    Parameters
    ----------
    weighted : SufficientStats (N subjects), as given to the local step.
    precision : (M, D, D), shift : (M, D) the paths' expected prior (PathPrior).
    s_path : (M,) E[1/sigma^2] per path.
    resp : (N, M) the local step's responsibilities;  mean_b : (N, D) its E[b_i].
    w_mean : (P,) E[w] used by the local step.
    weight : (N,) the subjects' weights E[1/v_i] in ``weighted``.
    groups : (M,) each path's noise group (None: one group).
    """
    N, D = weighted.n_subjects, weighted.dim_random
    groups = np.zeros(resp.shape[1], dtype=int) if groups is None else np.asarray(groups, dtype=int)
    G = int(groups.max(initial=0)) + 1
    xr = weighted.Xty - weighted.XtF @ w_mean
    ii, cc = np.nonzero(resp > threshold)
    val = np.empty(len(ii))
    means = np.empty((len(ii), D)) if G > 1 else None
    dense = np.ones(len(ii), dtype=bool)
    factor = observation_factor(weighted)
    if factor is not None:
        R, rank = factor
        try:
            prior_cov = np.linalg.inv(precision)
        except np.linalg.LinAlgError:
            prior_cov = None
        if prior_cov is not None and R.shape[1] > 0:
            low = np.flatnonzero(rank[ii] <= R.shape[1])
            got, m, ok = _quad_observation(R, rank[ii[low]], prior_cov, shift, s_path, xr, ii[low], cc[low],
                                           means is not None)
            val[low[ok]] = got[ok]
            if means is not None:
                means[low[ok]] = m[ok]
            dense[low[ok]] = False
    idx = np.flatnonzero(dense)
    step = max(1, _CHUNK // (D * D))
    for a in range(0, len(idx), step):
        sel = idx[a:a + step]
        i, c = ii[sel], cc[sel]
        s = s_path[c]
        A = weighted.XtX[i]
        cov = np.linalg.inv(precision[c] + s[:, None, None] * A)  # q(b_i | c)'s covariance
        m = np.einsum("ade,ae->ad", cov, shift[c] + s[:, None] * xr[i])
        val[sel] = np.einsum("ad,ade,ae->a", m, A, m) + np.einsum("ade,ade->a", cov, A)  # m'Am + tr(A cov)
        if means is not None:
            means[sel] = m
    cell = ii * G + groups[cc]  # (subject, group)
    r = resp[ii, cc]
    quad = np.bincount(cell, weights=r * val, minlength=N * G).reshape(N, G) / np.asarray(weight, dtype=float)[:, None]
    if G == 1:
        return GroupMoments(np.ones((N, 1)), np.asarray(mean_b)[:, None, :], quad)
    mean = np.zeros((N * G, D))
    np.add.at(mean, cell, r[:, None] * means)
    return GroupMoments(np.bincount(cell, weights=r, minlength=N * G).reshape(N, G), mean.reshape(N, G, D), quad)


def _quad_observation(R: np.ndarray, rank: np.ndarray, prior_cov: np.ndarray, shift: np.ndarray, s_path: np.ndarray,
                      xr: np.ndarray, ii: np.ndarray, cc: np.ndarray,
                      with_means: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``E[b'X'Xb | c]`` (A,) and, ``with_means``, ``E[b | c]`` (A, D) of the pairs through the subjects' Gram
    factors (see :func:`group_moments`; ``rank`` (A,): each pair's subject's rows of ``R``), and which pairs it
    holds for: not those whose data are far more precise than their prior (``s tr(G)`` at least
    ``OBS_MAX_RATIO``, where Woodbury's difference would lose digits), which go the dense way.

    Path by path, and within a path by the subjects' ranks rounded up to a power of two (a factor's rows
    beyond its rank are zero, so the first rows suffice): ``R_i S_c`` and ``S_c g`` for those subjects are
    one matrix product each, and ``K^{-1}`` is applied to ``R S g`` and ``G`` together in one batched solve.
    (Pair by pair, with ``S_c`` gathered for every pair, all ranks padded to the largest and two solves,
    this took 3.7 of pbcseq's 11.9 s with ``noise_df="auto"``.)"""
    A, D = len(ii), R.shape[-1]
    val, ok = np.zeros(A), np.ones(A, dtype=bool)
    means = np.zeros((A, D)) if with_means else None
    rows = np.minimum(2 ** np.ceil(np.log2(np.maximum(rank, 1))).astype(int), R.shape[1])
    for c in np.unique(cc):
        S, s = prior_cov[c], float(s_path[c])
        for r in np.unique(rows[cc == c]):
            on = np.flatnonzero((cc == c) & (rows == r))
            step = max(1, _CHUNK // (2 * r * D + D))
            for a in range(0, len(on), step):
                sel = on[a:a + step]
                i = ii[sel]
                Rp = R[i, :r]  # (a, r, D)
                RS = (Rp.reshape(-1, D) @ S).reshape(Rp.shape)  # R_i S_c
                G = RS @ np.swapaxes(Rp, 1, 2)  # (a, r, r)
                trace = np.trace(G, axis1=1, axis2=2)
                ok[sel] = s * trace < OBS_MAX_RATIO
                K = G + np.eye(r) / s  # >= I / s: positive definite
                Sg = (shift[c] + s * xr[i]) @ S.T  # S_c g
                rhs = np.concatenate([np.einsum("ard,ad->ar", Rp, Sg)[..., None], G], axis=2)
                sol = np.linalg.solve(K, rhs)  # K^{-1} [R S g, G] in one batched solve
                m = Sg - np.einsum("ard,ar->ad", RS, sol[..., 0])  # S g - S R' K^{-1} R S g
                if means is not None:
                    means[sel] = m
                Rm = np.einsum("ard,ad->ar", Rp, m)
                val[sel] = np.einsum("ar,ar->a", Rm, Rm) + trace - np.einsum("ajk,akj->a", G, sol[..., 1:])
    return val, means, ok


def half_rss(stats: SufficientStats, moments: GroupMoments, noise_prec, w_mean: np.ndarray,
             w_cov: np.ndarray) -> np.ndarray:
    """Each subject's ``R_i = sum_g E[1/sigma_g^2] E[1{c_i in g} ||y_i - X_i b_i - F_i w||^2] / 2`` (N,) under
    q(c, b) q(w), on the data's own statistics; ``noise_prec``: E[1/sigma_g^2] of each noise group (a scalar
    for one shared variance). b and w are independent under q; each group's sum is floored at 0 (rounding)."""
    err = (stats.yty - 2.0 * stats.Fty @ w_mean + np.einsum("p,npq,q->n", w_mean, stats.FtF, w_mean)
           + np.einsum("npq,qp->n", stats.FtF, w_cov))
    cross = np.einsum("ngd,nd->ng", moments.mean, stats.Xty - stats.XtF @ w_mean)
    rss = np.maximum(moments.resp * err[:, None] - 2.0 * cross + moments.quad, 0.0)  # (N, G)
    return rss @ (0.5 * np.atleast_1d(np.asarray(noise_prec, dtype=float)))


def update_scales(scales: SubjectScales, n_obs: np.ndarray, half: np.ndarray, learn_df: bool) -> SubjectScales:
    """The optimal q(v) given each subject's ``R_i`` (``half``, (N,): :func:`half_rss`); with ``learn_df``
    jointly with nu (:func:`optimal_df`): the best (q(v), nu) pair, not one then the other."""
    n = np.asarray(n_obs, dtype=float)
    return optimal_scales(optimal_df(n, half) if learn_df else scales.df, n, half)


def profile_elbo(df: np.ndarray, n_obs: np.ndarray, half_rss: np.ndarray) -> np.ndarray:
    """The scales' part of the ELBO at the optimal q(v) for each ``df`` (any shape): with ``R_i =
    E[1/sigma^2] E||r_i||^2 / 2`` that optimum is exact, and the part is ``sum_i log int IG(v; nu/2, nu/2)
    v^(-n_i/2) exp(-R_i / v) dv``, in closed form."""
    a = 0.5 * np.asarray(df, dtype=float)[..., None]
    return np.sum(a * np.log(a) - gammaln(a) + gammaln(a + 0.5 * n_obs) - (a + 0.5 * n_obs) * np.log(a + half_rss),
                  axis=-1)


def _profile_slope(a: float, n_obs: np.ndarray, half_rss: np.ndarray) -> float:
    """d profile_elbo / d(nu/2) at ``a`` = nu/2."""
    return float(np.sum(np.log(a) + 1.0 - digamma(a) + digamma(a + 0.5 * n_obs) - np.log(a + half_rss)
                        - (a + 0.5 * n_obs) / (a + half_rss)))


def optimal_df(n_obs: np.ndarray, half_rss: np.ndarray) -> float:
    """The nu in [DF_MIN, DF_MAX] maximising :func:`profile_elbo`: the best of a log-spaced grid, then the
    root of the slope between its neighbours (when the slope changes sign there).

    Alternating the optimal nu given q(v) with the optimal q(v) given nu crept: a near-Gaussian fit
    (Blackmore) used all 1000 iterations while nu drifted towards DF_MAX; the joint step does not."""
    grid = np.exp(np.linspace(np.log(DF_MIN), np.log(DF_MAX), 61))
    grid[0], grid[-1] = DF_MIN, DF_MAX
    values = profile_elbo(grid, n_obs, half_rss)
    k = int(np.argmax(values))
    lo, hi = 0.5 * grid[max(k - 1, 0)], 0.5 * grid[min(k + 1, len(grid) - 1)]
    f_lo, f_hi = _profile_slope(lo, n_obs, half_rss), _profile_slope(hi, n_obs, half_rss)
    if not (f_lo > 0.0 > f_hi):  # the maximum at a bound of [DF_MIN, DF_MAX]
        return float(grid[k])
    best = 2.0 * brentq(_profile_slope, lo, hi, args=(n_obs, half_rss), xtol=1e-10 * hi, rtol=1e-12)
    best = float(np.clip(best, DF_MIN, DF_MAX))
    return best if profile_elbo(np.array(best), n_obs, half_rss) >= values[k] else float(grid[k])


def scales_elbo(scales: SubjectScales) -> float:
    """``sum_i E_q[log IG(v_i; nu/2, nu/2)] + H[q(v_i)]``."""
    a = 0.5 * scales.df
    return float(np.sum(ig_expected_logpdf(a, a, np.log(a), scales.q) + scales.q.entropy()))


def log_likelihood_shift(scales: SubjectScales, n_obs: np.ndarray) -> np.ndarray:
    """(N,) what each subject's expected log-likelihood gains from its scale: ``-n_i / 2 E[log v_i]``."""
    return -0.5 * np.asarray(n_obs, dtype=float) * np.asarray(scales.q.mean_log, dtype=float)


def with_scales(log_evidence: np.ndarray, resp: np.ndarray, mean_b: np.ndarray, weighted: SufficientStats,
                precision: np.ndarray, shift: np.ndarray, noise_prec, w_mean: np.ndarray, scales: SubjectScales,
                groups: np.ndarray | None = None, threshold: float = 1e-12) -> tuple[np.ndarray, GroupMoments]:
    """What the local step on the ``weighted`` statistics (:func:`weighted_stats`) leaves to the scales: each
    subject's log evidence (N,) with its ``-n_i/2 E[log v_i]`` (:func:`log_likelihood_shift`), and its
    moments per noise group (:func:`group_moments`) for the next update of q(v).

    ``precision`` (M, D, D) and ``shift`` (M, D): the paths' expected prior; ``noise_prec``: E[1/sigma^2]
    (a scalar, or one per path); ``resp`` (N, M), ``mean_b`` (N, D) and ``log_evidence`` (N,) from the local
    step; ``groups`` (M,): each path's noise group (None: one shared variance)."""
    s_path = np.broadcast_to(np.asarray(noise_prec, dtype=float), (len(precision),))
    moments = group_moments(weighted, precision, shift, s_path, resp, w_mean, mean_b, scales.weight, groups, threshold)
    return log_evidence + log_likelihood_shift(scales, weighted.n_obs), moments

"""Per-subject sufficient statistics, by vectorised segment sums over rows sorted by subject.

Every model in dmlmm works from per-subject sufficient statistics
(``X_i'X_i``, ``X_i'y_i``, ``y_i'y_i``, ``n_i`` and the fixed-effect cross
terms), so the cost of a fitting step does not depend on how many times a
subject was measured. They are computed here with segment sums, never with a
Python loop over subjects.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from ._linalg import gram_factor, max_obs_rank
from ._runs import run_starts

__all__ = ["SufficientStats", "segment_sums", "sufficient_stats"]

_CHUNK_ELEMENTS = 1 << 22  # doubles per chunk of row outer products (32 MB), whatever the design's width


def segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum consecutive row segments of ``values``.

    Parameters
    ----------
    values : ndarray, shape (n, ...)
        Rows sorted by segment.
    offsets : ndarray of int, shape (N + 1,)
        Segment ``s`` is rows ``offsets[s]:offsets[s + 1]``; every segment is non-empty.

    Returns
    -------
    ndarray, shape (N, ...)
    """
    values = np.asarray(values, dtype=float)
    n_seg = len(offsets) - 1
    if n_seg == 0:
        return np.zeros((0,) + values.shape[1:])
    return np.add.reduceat(values, offsets[:-1], axis=0)


def _segment_outer_sums(a: np.ndarray, b: np.ndarray, codes: np.ndarray, n_seg: int) -> np.ndarray:
    """Per-segment sums of row outer products ``a_r b_r'``, in row chunks to bound memory.

    Each chunk holds about ``_CHUNK_ELEMENTS`` doubles of outer products (rows scaled by
    ``p * q``): 32 MB at 10 or at 40 basis functions (a fixed 32,768 rows made 420 MB at 40).

    Parameters
    ----------
    a : (n, p), b : (n, q), codes : (n,) sorted segment index per row.

    Returns
    -------
    ndarray, shape (n_seg, p, q)
    """
    n, p = a.shape
    q = b.shape[1]
    out = np.zeros((n_seg, p, q))
    rows = max(1, _CHUNK_ELEMENTS // max(p * q, 1))
    for start in range(0, n, rows):  # loop over memory chunks of rows, not subjects
        stop = min(start + rows, n)
        c = codes[start:stop]
        prod = a[start:stop, :, None] * b[start:stop, None, :]
        starts = run_starts(c)
        out[c[starts]] += np.add.reduceat(prod, starts, axis=0)
    return out


@dataclass(frozen=True)
class SufficientStats:
    """Per-subject sufficient statistics of ``y_i = F_i w + X_i b_i + e_i``.

    Attributes
    ----------
    n_obs : (N,) number of observations per subject.
    yty : (N,) ``y_i'y_i``.
    Xty : (N, D) ``X_i'y_i``.
    XtX : (N, D, D) ``X_i'X_i``.
    Fty : (N, P) ``F_i'y_i``.
    FtF : (N, P, P) ``F_i'F_i``.
    XtF : (N, D, P) ``X_i'F_i``.
    membership : (N, Q) or None
        Baseline covariates of class membership (first column the intercept), if the
        model has a membership model.
    """

    n_obs: np.ndarray
    yty: np.ndarray
    Xty: np.ndarray
    XtX: np.ndarray
    Fty: np.ndarray
    FtF: np.ndarray
    XtF: np.ndarray
    membership: np.ndarray | None = None

    @property
    def n_subjects(self) -> int:
        return int(self.n_obs.shape[0])

    @property
    def dim_random(self) -> int:
        return int(self.XtX.shape[-1])

    @property
    def dim_fixed(self) -> int:
        return int(self.FtF.shape[-1])

    def subset(self, index: np.ndarray) -> "SufficientStats":
        """Statistics of the subjects at positions ``index`` (with their Gram factors, if computed)."""
        out = SufficientStats(*(None if (v := getattr(self, f)) is None else v[index] for f in self.__dataclass_fields__))
        if "gram_factor" in self.__dict__:
            factor, rank = self.gram_factor
            rank = rank[index]
            out.__dict__["gram_factor"] = (factor[index][:, : int(rank[rank <= self.dim_random].max(initial=0))], rank)
        return out

    @cached_property
    def gram_factor(self) -> tuple[np.ndarray, np.ndarray]:
        """``(R, rank)``: per subject ``R_i`` (N, r, D) with ``R_i'R_i = X_i'X_i`` and its rank (N,),
        for the subjects of rank at most :func:`~dmlmm._linalg.max_obs_rank` (the others: rank D + 1
        and zero rows; :func:`~dmlmm._linalg.gram_factor`). Computed once, on first use, for the local
        step's observation-space route, and passed on to subsets."""
        limit = int(max(max_obs_rank(self.dim_random), 0))
        return gram_factor(self.XtX, limit, self.n_obs <= limit)

    def nested_subsets(self, ratio: int, smallest: int, seed: int) -> list["SufficientStats"]:
        """Nested random subsets of N // ratio, N // ratio^2, ... subjects (at least ``smallest`` each),
        smallest first: sorted prefixes of one random order of the subjects (``default_rng(seed)``)."""
        N = self.n_subjects
        sizes = []
        m = N // ratio
        while m >= smallest:
            sizes.append(m)
            m //= ratio
        order = np.random.default_rng(seed).permutation(N)
        return [self.subset(np.sort(order[:m])) for m in reversed(sizes)]

    def with_fixed_columns(self, T: np.ndarray) -> "SufficientStats":
        """The statistics of the fixed design ``F T`` (``T`` (P, P)) in place of ``F``."""
        T = np.asarray(T, dtype=float)
        return replace(self, Fty=self.Fty @ T, FtF=T.T @ self.FtF @ T, XtF=self.XtF @ T)  # T' F_i'F_i T, batched

    def total(self) -> "SufficientStats":
        """The statistics summed over the subjects (one row; the membership covariates dropped)."""
        return SufficientStats(*(getattr(self, f).sum(0, keepdims=True) for f in self.__dataclass_fields__
                                 if f != "membership"))

    def with_membership(self, Z: np.ndarray | None) -> "SufficientStats":
        """The same statistics with the membership covariates ``Z`` (N, Q) attached."""
        return replace(self, membership=None if Z is None else np.asarray(Z, dtype=float))


def sufficient_stats(
    y: np.ndarray,
    X: np.ndarray,
    F: np.ndarray | None,
    codes: np.ndarray,
    n_subjects: int,
) -> SufficientStats:
    """Per-subject sufficient statistics by vectorised segment sums.

    Parameters
    ----------
    y : (n,) responses.
    X : (n, D) random-effects design.
    F : (n, P) fixed-effects design, or None for no fixed effects (P = 0).
    codes : (n,) subject index of each row, values in ``0..n_subjects-1``. Rows sorted by subject
        are summed as they are; rows in any other order (held-out rows before the rows they are
        conditioned on, say) are sorted first (stably), since the segment sums need each
        subject's rows together. A subject without rows gets zeros.
    n_subjects : int

    Returns
    -------
    SufficientStats
    """
    y = np.asarray(y, dtype=float)
    X = np.asarray(X, dtype=float)
    F = np.zeros((len(y), 0)) if F is None else np.asarray(F, dtype=float)
    codes = np.asarray(codes)
    if len(codes) > 1 and np.any(codes[1:] < codes[:-1]):
        order = np.argsort(codes, kind="stable")
        y, X, F, codes = y[order], X[order], F[order], codes[order]
    y2 = y[:, None]
    n_obs = np.bincount(codes, minlength=n_subjects)
    return SufficientStats(
        n_obs=n_obs,
        yty=np.bincount(codes, weights=y * y, minlength=n_subjects),
        Xty=_segment_outer_sums(X, y2, codes, n_subjects)[..., 0],
        XtX=_segment_outer_sums(X, X, codes, n_subjects),
        Fty=_segment_outer_sums(F, y2, codes, n_subjects)[..., 0],
        FtF=_segment_outer_sums(F, F, codes, n_subjects),
        XtF=_segment_outer_sums(X, F, codes, n_subjects),
    )

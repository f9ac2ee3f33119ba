"""Internal standardisation of the response, and the checks that go with it.

Estimation runs on ``y_s = (y - c) / s`` with ``s`` the response's standard
deviation, so that the optimiser sees the same problem whether ``y`` is in
units of 1e9 or 1e-9. The shift ``c`` (the mean of y) is applied only when the
constant vector lies in the column space of the fixed design ``F``
(``F a = 1`` for some ``a``): then ``y - c = F (beta - c a) + ...`` and the shift
is absorbed exactly by ``beta``, and centring removes the cancellation that a
large mean would cause in ``y'y``-type statistics. Without an intercept in F
no shift is applied (it would change the model).

Mapping back: ``beta = s beta_s + c a``, variances times ``s^2``, random effects
times ``s``, and the log-likelihood shifts by ``-n log s`` (ML) or
``-(n - p) log s`` (REML), the log-Jacobian of ``y -> y_s`` (of the error
contrasts for REML).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..standardise import response_scale

__all__ = ["ResponseScaling", "fixed_standardisation", "random_centring", "RANDOM_CENTRE_RATIO"]


@dataclass(frozen=True)
class ResponseScaling:
    """``y_s = (y - shift) / scale``; ``direction`` solves ``F direction = 1`` (zeros if none does).

    Attributes
    ----------
    shift : float
    scale : float
    direction : (p,)
    """

    shift: float
    scale: float
    direction: np.ndarray

    @classmethod
    def learn(cls, y: np.ndarray, F: np.ndarray, name: str = "y") -> "ResponseScaling":
        """Scale and (where F spans the constant) shift for response ``y`` (n,) and fixed design ``F`` (n, p).

        Raises
        ------
        DataError
            If ``y`` is constant or too large to standardise (:func:`dmlmm.standardise.response_scale`).
        """
        y = np.asarray(y, dtype=float)
        n, p = F.shape
        sd = response_scale(y, name)
        a = np.zeros(p)
        shift = 0.0
        const = [j for j in range(p) if n and F[0, j] != 0.0 and np.all(F[:, j] == F[0, j])]
        if const:  # an intercept column: the constant's direction exactly (least squares found none beside a
            # covariate of 1e7 + days, whose column is nearly constant too, and then nothing was centred)
            a[const[0]] = 1.0 / F[0, const[0]]
            shift = float(np.mean(y))
        elif p:
            a, *_ = np.linalg.lstsq(F, np.ones(n), rcond=None)
            if np.linalg.norm(F @ a - 1.0) <= 1e-8 * np.sqrt(n):
                shift = float(np.mean(y))
            else:
                a = np.zeros(p)
        return cls(shift=shift, scale=sd, direction=a)

    def transform(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, dtype=float) - self.shift) / self.scale

    def beta_to_user(self, beta_s: np.ndarray) -> np.ndarray:
        return self.scale * np.asarray(beta_s) + self.shift * self.direction

    def loglik_to_user(self, loglik_s: float, n: int, p: int, reml: bool) -> float:
        return float(loglik_s - (n - p if reml else n) * np.log(self.scale))


def fixed_standardisation(F: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """``T`` (p, p) such that the columns of ``F T`` outside the constant's span are centred and of unit SD.

    Variational Bayes puts one prior ``N(0, fixed_var)`` on every fixed effect, which is vague only for
    columns of about unit scale: a calendar year (2001-2010) or an age in thousands of years drew its
    effect towards zero with a narrow interval (0.07 [0.02, 0.13] where ML and REML gave 0.29). So VB fits
    ``F_s = F T`` and maps back, ``beta = T beta_s`` (an exact reparametrisation; only the prior differs).
    ``direction`` solves ``F direction = 1`` (:class:`ResponseScaling`): where it is nonzero the constant is
    spanned, and each column outside it (``direction_j = 0``: a covariate) is centred and divided by its
    SD, ``f_j - m_j = F (e_j - m_j direction)``; the columns in it (the intercept, the spline of time)
    are left as they are. Without the constant in F nothing can be centred, and each column is divided by
    its root mean square. Columns that are zero throughout are left alone.
    """
    F = np.asarray(F, dtype=float)
    p = F.shape[1]
    a = np.asarray(direction, dtype=float)
    if p == 0 or F.shape[0] == 0:
        return np.eye(p)
    spans = bool(np.any(a != 0.0))
    own = np.abs(a) <= 1e-8 if spans else np.ones(p, dtype=bool)
    mean = np.where(own, F.mean(axis=0), 0.0) if spans else np.zeros(p)
    spread = np.sqrt(np.mean((F - mean) ** 2, axis=0))
    scale = np.where(own & (spread > 0), spread, 1.0)
    return (np.eye(p) - np.outer(a, mean)) / scale


#: A random-effect column is centred inside an ML / REML fit when its mean is more than this many of its SDs
#: from zero (:func:`random_centring`).
RANDOM_CENTRE_RATIO = 10.0


def random_centring(Z: np.ndarray, blocks: list[int], free: list[bool]) -> np.ndarray | None:
    """``A`` (q, q) such that ``Z A`` has, in each free block holding a column of ones, the block's other
    columns centred where their mean lies more than :data:`RANDOM_CENTRE_RATIO` SDs from zero; None when
    no column is.

    ``Z b = (Z A)(A^{-1} b)``: the same model with ``Sigma = A Sigma' A'``, where ``Sigma'`` is the
    covariance of the centred columns' effects. An unstructured block stays unstructured under ``A``, so
    only ``free`` blocks (``blocks``: their sizes, in order) are touched. A random slope on a time far from
    zero (Excel's serial dates, about 45,000; days since 1970) makes the slope's and the intercept's effects
    almost collinear: on lme4's sleepstudy with the days shifted by 70,000 the profiled ML / REML fits
    stopped 4.4 / 4.8 below the maximum, reported as converged and singular, with the slope's standard
    error 13 % too small. lme4 and statsmodels fail there too.
    """
    Z = np.asarray(Z, dtype=float)
    A = np.eye(Z.shape[1])
    start = 0
    for size, ok in zip(blocks, free):
        cols = np.arange(start, start + size)
        start += size
        if not ok or size < 2:
            continue
        ones = [c for c in cols if np.all(Z[:, c] == 1.0)]
        if not ones:
            continue
        one = ones[0]
        for c in cols:
            if c == one:
                continue
            m, sd = float(Z[:, c].mean()), float(Z[:, c].std())
            if abs(m) > RANDOM_CENTRE_RATIO * sd:
                A[one, c] = -m  # column c of Z A: z_c - m
    return None if np.array_equal(A, np.eye(Z.shape[1])) else A

"""B-spline bases for the random-effects design X_i (a fitted basis remembers its knots)."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.interpolate import BSpline

from .exceptions import DataError, ExtrapolationWarning, NotFittedError

__all__ = ["SplineBasis", "bspline_design"]

_LAYOUTS = ("uniform", "reference", "clamped")


def bspline_design(x: np.ndarray, knots: np.ndarray, degree: int, extrapolate: bool = True) -> np.ndarray:
    """Values of all B-splines of a knot vector at ``x`` (Cox-de Boor), also outside the base interval.

    scipy's ``BSpline.design_matrix`` only evaluates on ``[t[k], t[-k-1]]``. The
    B-spline ``B_j`` depends only on knots ``t[j]..t[j+k+1]``, so padding the knot
    vector with ``degree`` knots on each side (at the end intervals' spacing)
    leaves the original functions unchanged and makes every point of
    ``[t[0], t[-1]]`` evaluable; points beyond that are polynomial continuation
    (``extrapolate=True``) or an error.

    Parameters
    ----------
    x : (n,) evaluation points.
    knots : (m,) non-decreasing knot vector.
    degree : int

    Returns
    -------
    ndarray, shape (n, m - degree - 1)
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    t = np.asarray(knots, dtype=float)
    k = int(degree)
    n_basis = len(t) - k - 1
    if n_basis < 1:
        raise ValueError(f"{len(t)} knots are too few for degree {k}")
    h_lo = t[1] - t[0] if t[1] > t[0] else 1.0
    h_hi = t[-1] - t[-2] if t[-1] > t[-2] else 1.0
    if t[-1] == t[0]:
        raise ValueError("knot vector has zero width")
    pad_lo = t[0] - h_lo * np.arange(k, 0, -1)
    pad_hi = t[-1] + h_hi * np.arange(1, k + 1)
    tp = np.r_[pad_lo, t, pad_hi]
    if x.size == 0:
        return np.zeros((0, n_basis))
    if not extrapolate and ((x < t[0]).any() or (x > t[-1]).any()):
        raise ValueError("points outside the knot range")
    dm = BSpline.design_matrix(x, tp, k, extrapolate=True).toarray()
    return dm[:, k : k + n_basis]


class SplineBasis:
    """B-spline basis of time, the default random-effects design of the longitudinal models.

    Parameters
    ----------
    n_basis : int
        Number of basis functions (columns of X_i).
    degree : int
        Polynomial degree (3 = cubic).
    lower, upper : float, optional
        Range the basis covers; default: the data's time range at ``fit``.
    knots : {"uniform", "reference", "clamped"} or array
        ``"uniform"`` (default): equally spaced knots, extended ``degree`` knots beyond
        each end at the same spacing, so the functions sum to one on all of
        ``[lower, upper]``. ``"reference"``: the DMLMM research code's layout,
        ``n_basis`` equally spaced knots on ``[lower, upper]`` plus two more beyond each
        end (only for ``degree=3``; the functions do not sum to one near the ends).
        ``"clamped"``: boundary knots repeated ``degree + 1`` times. An array gives the
        full knot vector explicitly (``n_basis + degree + 1`` knots).
    extrapolate : bool
        Allow evaluation outside ``[lower, upper]`` (polynomial continuation, with an
        :class:`ExtrapolationWarning`) instead of raising.

    Attributes
    ----------
    knots_ : ndarray, shape (n_basis + degree + 1,)
    lower_, upper_ : float
    """

    def __init__(
        self,
        n_basis: int = 10,
        degree: int = 3,
        lower: float | None = None,
        upper: float | None = None,
        knots: str | np.ndarray = "uniform",
        extrapolate: bool = False,
    ) -> None:
        self.n_basis = n_basis
        self.degree = degree
        self.lower = lower
        self.upper = upper
        self.knots = knots
        self.extrapolate = extrapolate

    # ------------------------------------------------------------------ fitting
    def fit(self, times: np.ndarray | None = None) -> "SplineBasis":
        """Fix the range (from ``times`` where ``lower``/``upper`` are not given) and the knots."""
        k, nb = int(self.degree), int(self.n_basis)
        if k < 0:
            raise ValueError(f"degree must be >= 0, got {self.degree}")
        if nb < k + 1:
            raise ValueError(f"n_basis={nb} is too small for degree {k}: need at least {k + 1}")
        if isinstance(self.knots, str) and self.knots not in _LAYOUTS:
            raise ValueError(f"knots must be one of {_LAYOUTS} or an array, got {self.knots!r}")
        if not isinstance(self.knots, str):
            t = np.asarray(self.knots, dtype=float)
            if len(t) != nb + k + 1 or np.any(np.diff(t) < 0):
                raise ValueError(f"an explicit knot vector must be non-decreasing with n_basis + degree + 1 = {nb + k + 1} knots")
            self.knots_ = t
            self.lower_ = float(self.lower if self.lower is not None else t[k])
            self.upper_ = float(self.upper if self.upper is not None else t[nb])
            return self
        lo, hi = self.lower, self.upper
        if lo is None or hi is None:
            if times is None or np.size(times) == 0:
                raise ValueError("SplineBasis needs lower and upper, or times to take the range from")
            tt = np.asarray(times, dtype=float)
            lo = float(np.min(tt)) if lo is None else lo
            hi = float(np.max(tt)) if hi is None else hi
        lo, hi = float(lo), float(hi)
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError(f"basis range must be finite, got [{lo}, {hi}]")
        if hi <= lo:
            raise DataError(
                f"all observation times are equal ({lo:g}): a spline basis of time needs a time range; "
                "give lower/upper or use a design without time"
            )
        if self.knots == "uniform":
            h = (hi - lo) / (nb - k) if nb > k else (hi - lo)
            t = lo + h * np.arange(-k, nb + 1)
        elif self.knots == "reference":
            if k != 3:
                raise ValueError('knots="reference" is the research code\'s cubic layout: use degree=3')
            inner = np.linspace(lo, hi, nb)
            h = inner[1] - inner[0]
            t = np.r_[lo - 2 * h, lo - h, inner, hi + h, hi + 2 * h]
        else:  # clamped
            inner = np.linspace(lo, hi, nb - k + 1)
            t = np.r_[np.full(k, lo), inner, np.full(k, hi)]
        self.knots_ = t
        self.lower_, self.upper_ = lo, hi
        return self

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "knots_")

    # ------------------------------------------------------------------ evaluation
    def transform(self, times: np.ndarray, extrapolate: bool | None = None) -> np.ndarray:
        """Basis values at ``times``.

        Parameters
        ----------
        times : (n,)
        extrapolate : bool, optional
            Override the constructor's setting for this call.

        Returns
        -------
        ndarray, shape (n, n_basis)
        """
        if not self.is_fitted:
            raise NotFittedError("SplineBasis is not fitted: call fit(times) first")
        x = np.asarray(times, dtype=float).reshape(-1)
        if not np.isfinite(x).all():
            raise DataError("times must be finite to evaluate the spline basis")
        extrapolate = self.extrapolate if extrapolate is None else extrapolate
        eps = 1e-9 * (self.upper_ - self.lower_)
        outside = (x < self.lower_ - eps) | (x > self.upper_ + eps)
        if outside.any():
            vals = np.unique(x[outside])
            msg = (
                f"{int(outside.sum())} time(s) lie outside the basis range [{self.lower_:g}, {self.upper_:g}] "
                f"(e.g. {vals[:5].tolist()})"
            )
            if not extrapolate:
                raise DataError(msg + "; pass extrapolate=True to extrapolate the splines, or refit with a wider range")
            warnings.warn(msg + ": the spline basis is extrapolated there", ExtrapolationWarning, stacklevel=2)
        if isinstance(self.knots, str) and self.knots == "clamped":
            # repeated end knots: evaluate directly (scipy handles the closed right end)
            return BSpline.design_matrix(np.clip(x, self.lower_, self.upper_) if not outside.any() else x,
                                         self.knots_, self.degree, extrapolate=True).toarray()
        return bspline_design(x, self.knots_, self.degree, extrapolate=True)

    def fit_transform(self, times: np.ndarray) -> np.ndarray:
        return self.fit(times).transform(times)

    @property
    def column_names(self) -> list[str]:
        return [f"B{j + 1}" for j in range(int(self.n_basis))]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """JSON-able description of the fitted basis."""
        d = {
            "n_basis": int(self.n_basis),
            "degree": int(self.degree),
            "lower": self.lower,
            "upper": self.upper,
            "knots": self.knots if isinstance(self.knots, str) else np.asarray(self.knots).tolist(),
            "extrapolate": bool(self.extrapolate),
        }
        if self.is_fitted:
            d.update(knots_=self.knots_.tolist(), lower_=self.lower_, upper_=self.upper_)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SplineBasis":
        b = cls(d["n_basis"], d["degree"], d["lower"], d["upper"], d["knots"], d["extrapolate"])
        if "knots_" in d:
            b.knots_ = np.asarray(d["knots_"], dtype=float)
            b.lower_, b.upper_ = float(d["lower_"]), float(d["upper_"])
        return b

    def __repr__(self) -> str:
        return (
            f"SplineBasis(n_basis={self.n_basis}, degree={self.degree}, lower={self.lower}, "
            f"upper={self.upper}, knots={self.knots!r})"
        )

"""B-spline bases for the random-effects design X_i (a fitted basis remembers its knots)."""

from __future__ import annotations

import copy
import numbers

import warnings

import numpy as np
from scipy.interpolate import BSpline
from scipy.linalg import eigh

from ._estimator import HyperParameters
from ._linalg import sym

from .exceptions import DataError, ExtrapolationWarning, NotFittedError

__all__ = ["SplineBasis", "bspline_design"]

_LAYOUTS = ("quantile", "uniform", "reference", "clamped")
DEFAULT_N_BASIS = 20


def bspline_design(
    x: np.ndarray, knots: np.ndarray, degree: int, extrapolate: bool = True, deriv: int = 0
) -> np.ndarray:
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
    deriv : int
        Order of the derivative to evaluate (0: the values); above ``degree`` it is zero (the
        derivative between the knots: a degree-0 basis continues flat beyond its range).

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
    clamped = t[k] == t[0] and t[-k - 1] == t[-1]
    if deriv == 0 and clamped and x.min() >= t[0] and x.max() <= t[-1]:
        return BSpline.design_matrix(x, t, k).toarray()  # closes the right end, unlike the padded vector
    if deriv == 0:
        dm = BSpline.design_matrix(x, tp, k, extrapolate=True).toarray()
        return dm[:, k : k + n_basis]
    if deriv > k:  # piecewise polynomials of degree k: derivatives of a higher order vanish (between knots)
        return np.zeros((x.size, n_basis))
    if clamped:  # clamped ends: the knot vector already covers its range, padding would repeat knots
        return BSpline(t, np.eye(n_basis), k, extrapolate=True).derivative(deriv)(x)
    coef = np.zeros((len(tp) - k - 1, n_basis))
    coef[k : k + n_basis] = np.eye(n_basis)
    return BSpline(tp, coef, k, extrapolate=True).derivative(deriv)(x)


class SplineBasis(HyperParameters):
    """B-spline basis of time, the default random-effects design of the longitudinal models.

    Parameters
    ----------
    n_basis : int
        Number of basis functions (columns of X_i). The default (20) is generous on purpose:
        the models' smoothness prior (``smoothing``) sets the effective flexibility.
    degree : int
        Polynomial degree (3 = cubic).
    lower, upper : float, optional
        The study window: the range over which curves are expected (default: the data's time range
        at ``fit``). The knots of the ``"quantile"`` and ``"uniform"`` layouts are laid over the part
        of it that the data cover: where the window extends more than half a knot interval beyond the
        observed times, a knot there would rest on the prior alone (and a fitted covariance would
        say nothing there), so the curves instead continue beyond the observed times as the models'
        smoothness prior says (:mod:`dmlmm.continuation`), without a warning inside the window.
    knots : {"quantile", "uniform", "reference", "clamped"} or array
        ``"quantile"`` (default): interior knots halfway between the uniform layout and the
        quantiles of the distinct observation times (more knots where visits are dense,
        never an interval narrower than half the uniform one), extended ``degree`` knots
        beyond each end at the end intervals' spacing. ``"uniform"``: equally spaced knots,
        extended likewise, so the functions sum to one on all of ``[lower, upper]``.
        ``"reference"``: the DMLMM research code's layout, ``n_basis`` equally spaced knots
        on ``[lower, upper]`` plus two more beyond each end (only for ``degree=3``; the
        functions do not sum to one near the ends). ``"clamped"``: boundary knots repeated
        ``degree + 1`` times. An array gives the full knot vector explicitly
        (``n_basis + degree + 1`` knots).
    extrapolate : bool
        Evaluate outside the study window by continuing each function *linearly* from the
        boundary of the basis range (value and slope; an :class:`ExtrapolationWarning` says so),
        instead of raising. Between the basis range and the window the same continuation applies,
        without a warning. The mixtures add the smoothness prior's increment there
        (:mod:`dmlmm.continuation`): forecasts follow the end trend and their bands widen with
        the distance.

    Attributes
    ----------
    knots_ : ndarray, shape (n_basis + degree + 1,)
    lower_, upper_ : float, the range the knots cover (the basis range).
    window_ : tuple (lower, upper), the study window (contains the basis range).
    """

    def __init__(
        self,
        n_basis: int = DEFAULT_N_BASIS,
        degree: int = 3,
        lower: float | None = None,
        upper: float | None = None,
        knots: str | np.ndarray = "quantile",
        extrapolate: bool = True,
    ) -> None:
        self.n_basis = n_basis
        self.degree = degree
        self.lower = lower
        self.upper = upper
        self.knots = knots
        self.extrapolate = extrapolate

    # ------------------------------------------------------------------ fitting
    def _check_settings(self) -> None:
        """A ValueError naming the first setting of the wrong kind (a float n_basis was truncated, a string
        extrapolate counted as true, NaN or text reached numpy's own errors)."""
        if not _whole(self.n_basis) or self.n_basis < 1:
            raise ValueError(f"n_basis must be a positive integer, got {self.n_basis!r}")
        if not _whole(self.degree) or self.degree < 0:
            raise ValueError(f"degree must be an integer >= 0 (3: cubic), got {self.degree!r}")
        for name in ("lower", "upper"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, numbers.Real) and not isinstance(v, bool) and np.isfinite(v)):
                raise ValueError(f"{name} must be None or a finite number (the study window's {name} end), got {v!r}")
        if not isinstance(self.extrapolate, (bool, np.bool_)):
            raise ValueError(f"extrapolate must be True or False, got {self.extrapolate!r}")
        if isinstance(self.knots, str):
            return
        try:
            t = np.asarray(self.knots, dtype=float)
        except (TypeError, ValueError):
            t = None
        if t is None or t.ndim != 1 or not np.isfinite(t).all():
            raise ValueError(f"knots must be one of {_LAYOUTS} or a one-dimensional array of finite knots, "
                             f"got {self.knots!r}")

    def fit(self, times: np.ndarray | None = None) -> "SplineBasis":
        """Fix the range (from ``times`` where ``lower``/``upper`` are not given) and the knots."""
        self._check_settings()
        k, nb = int(self.degree), int(self.n_basis)
        if nb < k + 1:
            raise ValueError(f"n_basis={nb} is too small for degree {k}: need at least {k + 1}")
        if isinstance(self.knots, str) and self.knots not in _LAYOUTS:
            raise ValueError(f"knots must be one of {_LAYOUTS} or an array, got {self.knots!r}")
        if self.lower is not None and self.upper is not None and float(self.upper) <= float(self.lower):
            raise ValueError(f"SplineBasis needs lower < upper, got lower={self.lower}, upper={self.upper}")
        if not isinstance(self.knots, str):
            t = np.asarray(self.knots, dtype=float)
            if len(t) != nb + k + 1 or np.any(np.diff(t) < 0):
                raise ValueError(f"an explicit knot vector must be non-decreasing with n_basis + degree + 1 = {nb + k + 1} "
                                 f"knots; got {len(t)} knots{' out of order' if np.any(np.diff(t) < 0) else ''}: {t.tolist()}")
            self.knots_ = t
            self.lower_ = float(self.lower if self.lower is not None else t[k])
            self.upper_ = float(self.upper if self.upper is not None else t[nb])
            self.window_ = (self.lower_, self.upper_)
            return self
        lo, hi = self.lower, self.upper
        tt = None if times is None else np.asarray(times, dtype=float).reshape(-1)
        if lo is None or hi is None:
            if tt is None or tt.size == 0:
                raise ValueError("SplineBasis needs lower and upper, or times to take the range from")
            lo = float(np.min(tt)) if lo is None else lo
            hi = float(np.max(tt)) if hi is None else hi
        lo, hi = float(lo), float(hi)
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ValueError(f"basis range must be finite, got [{lo}, {hi}]")
        if hi <= lo:
            raise DataError(
                f"all observation times are equal ({lo:g}): the data say nothing about change over time, and a spline "
                "basis of time needs a time range. Model the subjects' levels without time (a random intercept: "
                "LinearMixedModel('y ~ 1 + (1 | subject)')), or, to forecast over a study window, give it: "
                "SplineBasis(lower=..., upper=...)"
            )
        self.window_ = (lo, hi)
        if self.knots in ("uniform", "quantile") and tt is not None and tt.size:
            lo, hi = _covered_range(tt, lo, hi, max(nb - k, 1))
        if self.knots in ("uniform", "quantile"):
            n_int = max(nb - k, 1)
            inner = np.linspace(lo, hi, n_int + 1)
            if self.knots == "quantile" and tt is not None and n_int > 1:
                inner = 0.5 * (inner + _quantile_breaks(tt, lo, hi, n_int))
            t = np.r_[inner[0] - (inner[1] - inner[0]) * np.arange(k, 0, -1), inner,
                      inner[-1] + (inner[-1] - inner[-2]) * np.arange(1, k + 1)]
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

    @property
    def window(self) -> tuple[float, float]:
        """The fitted study window (``window_``; the basis range for bases saved without one)."""
        return getattr(self, "window_", (self.lower_, self.upper_))

    # ------------------------------------------------------------------ evaluation
    def _raw(self, x: np.ndarray, deriv: int = 0) -> np.ndarray:
        """Basis values (or derivatives) at ``x`` inside the knot vector's span, no range checks."""
        return bspline_design(x, self.knots_, self.degree, extrapolate=True, deriv=deriv)

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
        if not isinstance(extrapolate, (bool, np.bool_)):
            raise ValueError(f"extrapolate must be True, False or None, got {extrapolate!r}")
        lo, hi = self.lower_, self.upper_
        eps = 1e-9 * (hi - lo)
        below, above = x < lo - eps, x > hi + eps
        wlo, whi = self.window
        unexpected = (x < wlo - eps) | (x > whi + eps)
        if unexpected.any():
            vals = np.unique(x[unexpected])
            msg = (  # distinct times (the rows of many subjects at one time count once)
                f"{len(vals)} time(s) lie outside the basis range [{wlo:g}, {whi:g}] "
                f"(e.g. {vals[:5].tolist()})"
            )
            if not extrapolate:
                raise DataError(msg + "; pass extrapolate=True to extrapolate the splines, or refit with a wider range")
            warnings.warn(msg + ": the spline basis is extrapolated there (linearly from the boundary; "
                          "the mixtures' bands widen with the smoothness prior's increment)",
                          ExtrapolationWarning, stacklevel=2)
        outside = below | above
        out = self._raw(np.clip(x, lo, hi))
        if outside.any():
            ends = np.array([lo, hi])
            val, slope = self._raw(ends), self._raw(ends, deriv=1)
            for mask, j, b in ((below, 0, lo), (above, 1, hi)):  # the two ends
                if mask.any():
                    out[mask] = val[j] + (x[mask, None] - b) * slope[j]
        return out

    def fit_transform(self, times: np.ndarray) -> np.ndarray:
        return self.fit(times).transform(times)

    @property
    def column_names(self) -> list[str]:
        return [f"B{j + 1}" for j in range(int(self.n_basis))]

    # ------------------------------------------------------------------ smoothness
    def smoothing_basis(self, order: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Demmler-Reinsch reparametrisation of the basis for a roughness penalty of ``order``.

        With time rescaled to u in [0, 1] over ``[lower_, upper_]``, Gram matrix
        ``G = int B B' du`` and penalty ``P = int B^(r) B^(r)' du`` (r = ``order``), returns
        ``V`` with ``V'GV = I`` and ``V'PV = diag(lam * c)``: the functions ``X V`` are
        L2-orthonormal, the first ``order`` span the polynomials of degree < r (roughness
        0: constant, then linear), the others have increasing roughness ``lam`` scaled so
        that the first rough one has ``lam = 1``. A coefficient vector ``c`` of ``X`` is
        ``V c~`` for the new coordinates ``c~``, and ``c' P c`` is ``sum lam c~^2`` up to
        the constant ``c``: a P-spline prior is diagonal in these coordinates.

        Returns
        -------
        V : (n_basis, n_basis), lam : (n_basis,)
        """
        r = int(order)
        D = int(self.n_basis)
        x, B, G, P = self._gram_penalty(r)
        lo, hi = self.lower_, self.upper_
        evals, V = eigh(P, G)
        # the null space (polynomials of degree < r) as orthonormal Legendre polynomials, so that
        # its coordinates read as level and trend; the rough eigenvectors are G-orthogonal to it
        u = (x - lo) / (hi - lo)
        legendre = np.stack([np.polynomial.legendre.Legendre.basis(j)(2 * u - 1) * np.sqrt(2 * j + 1) for j in range(r)], 1)
        null = np.linalg.lstsq(B, legendre, rcond=None)[0]  # exact where polynomials are in the spline space
        if np.abs(B @ null - legendre).max() < 1e-8:  # not so for the "reference" layout near its ends
            V = np.concatenate([null, V[:, r:]], axis=1)
        lam = np.r_[np.zeros(r), evals[r:] / evals[r]]
        flip = V[np.abs(V).argmax(axis=0), np.arange(D)] < 0  # a fixed sign per rough column
        V[:, r:] *= np.where(flip[r:], -1.0, 1.0)
        return V, lam

    def _gram_penalty(self, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Quadrature nodes x, basis values B at x, Gram matrix G and penalty P of ``order`` (see above)."""
        if not self.is_fitted:
            raise NotFittedError("SplineBasis is not fitted: call fit(times) first")
        r, D = int(order), int(self.n_basis)
        if r < 1:
            raise ValueError(f"smoothing order must be a positive integer, got {order}")
        if r > int(self.degree) or r >= D:
            raise ValueError(f"smoothing order {r} needs degree >= {r} and n_basis > {r}")
        lo, hi = self.lower_, self.upper_
        breaks = np.unique(np.clip(np.r_[lo, self.knots_, hi], lo, hi))
        nodes, wts = np.polynomial.legendre.leggauss(int(self.degree) + 2)
        a, b = breaks[:-1, None], breaks[1:, None]
        x = (0.5 * (b - a) * nodes + 0.5 * (a + b)).reshape(-1)
        w = (0.5 * (b - a) * wts).reshape(-1) / (hi - lo)  # weights of du
        B = self._raw(x)
        G = sym(B.T @ (w[:, None] * B))
        Br = self._raw(x, deriv=r) * (hi - lo) ** r
        P = sym(Br.T @ (w[:, None] * Br))
        return x, B, G, P

    def penalty_unit(self, order: int = 2) -> float:
        """The roughness ``int f^(r)(u)^2 du`` of the first rough Demmler-Reinsch function (r = ``order``).

        :meth:`smoothing_basis` reports roughness relative to it, so a prior ``c_d ~ N(0, v / lam_d)``
        on those coordinates is the P-spline prior ``exp(-c'Pc / (2 v unit))``: an order-2 curve
        is then an integrated Wiener process of intensity ``v * unit`` per unit of u.
        """
        r = int(order)
        _, _, G, P = self._gram_penalty(r)
        return float(eigh(P, G, eigvals_only=True)[r])

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
            d.update(knots_=self.knots_.tolist(), lower_=self.lower_, upper_=self.upper_, window_=list(self.window))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SplineBasis":
        b = cls(d["n_basis"], d["degree"], d["lower"], d["upper"], d["knots"], d["extrapolate"])
        if "knots_" in d:
            b.knots_ = np.asarray(d["knots_"], dtype=float)
            b.lower_, b.upper_ = float(d["lower_"]), float(d["upper_"])
            b.window_ = tuple(float(v) for v in d.get("window_", (b.lower_, b.upper_)))
        return b

    def __repr__(self) -> str:
        fitted = f", fitted to [{self.window[0]:g}, {self.window[1]:g}]" if self.is_fitted else ""
        return (
            f"SplineBasis(n_basis={self.n_basis}, degree={self.degree}, lower={self.lower}, "
            f"upper={self.upper}, knots={self.knots!r}{fitted})"
        )

    def __sklearn_clone__(self) -> "SplineBasis":
        """scikit-learn's ``clone``: a fitted basis is a model's fixed design (used as it is, knots and
        window included), so its copy stays fitted; an unfitted one is rebuilt from its settings. (A plain
        rebuild dropped the knots: ``clone(model).fit(df)`` then laid new ones over the data's range, without
        a word.)"""
        if self.is_fitted:
            return copy.deepcopy(self)
        return type(self)(**self.get_params(deep=False))


def _covered_range(times: np.ndarray, lo: float, hi: float, n_int: int) -> tuple[float, float]:
    """The part of the window [lo, hi] that the times cover: each end moved in to the nearest observed
    time where more than half a uniform knot interval ((hi - lo) / n_int) of the window has none."""
    inside = times[(times >= lo) & (times <= hi)]
    if inside.size < 2 or inside.min() == inside.max():
        return lo, hi
    gap = 0.5 * (hi - lo) / n_int
    a, b = float(inside.min()), float(inside.max())
    return (a if a - lo > gap else lo), (b if hi - b > gap else hi)


def _quantile_breaks(times: np.ndarray, lo: float, hi: float, n_int: int) -> np.ndarray:
    """``n_int + 1`` breakpoints from lo to hi at quantiles of the distinct times inside [lo, hi]."""
    u = np.unique(times[(times >= lo) & (times <= hi)])
    if len(u) < 2:
        return np.linspace(lo, hi, n_int + 1)
    q = np.quantile(u, np.linspace(0.0, 1.0, n_int + 1))
    q[0], q[-1] = lo, hi
    return np.maximum.accumulate(q)


def _whole(v) -> bool:
    """An integer, or a float that is one (10.0), but not a bool, a string or NaN."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return False
    return bool(np.isfinite(v)) and float(v).is_integer()

"""SQUAREM extrapolation of the global variational parameters (Varadhan and Roland 2008), and
Anderson-accelerated coordinate ascent of small global-only problems (:func:`ascend`).

Coordinate ascent is a fixed-point map ``theta -> F(theta)`` on the global factors
(local step, then every global update). In the long tail of a factor-analyser fit
the map crawls along one direction; SQUAREM takes two plain steps
``theta1 = F(theta0)``, ``theta2 = F(theta1)``, and jumps to

    theta' = theta0 - 2 a r + a^2 v,   r = theta1 - theta0,  v = theta2 - 2 theta1 + theta0,
    a = -|r| / |v|   (scheme S3, clamped to [-max_step, -1]; a = -1 gives theta2).

The parameters are extrapolated in unconstrained coordinates, so that every
``theta'`` is a valid set of factors: logs of inverse-gamma shapes and rates, of
Dirichlet concentrations and of inverse-Wishart degrees of freedom beyond d - 1,
the log-Cholesky factor of every precision or scale matrix, and the Gaussian
shifts as they are. The engine evaluates the ELBO at ``theta'`` and keeps it only
if the ELBO does not drop below the last recorded value (otherwise it falls back
to the plain ``theta2``), so the recorded ELBO stays monotone.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from functools import cache
from typing import Any

import numpy as np

from .expfam import Dirichlet, Gaussian, InvGamma, InvWishart

__all__ = ["to_unconstrained", "from_unconstrained", "squarem_point", "squarem_norms", "squarem_leaves", "Squarem"]


def _log_chol(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of SPD ``a`` (..., d, d) with log diagonals."""
    L = np.linalg.cholesky(a)
    d = a.shape[-1]
    idx = np.arange(d)
    L[..., idx, idx] = np.log(L[..., idx, idx])
    return L


def _from_log_chol(L: np.ndarray) -> np.ndarray:
    """SPD matrices from log-Cholesky factors (..., d, d) (the upper triangle is ignored)."""
    L = np.tril(L)
    d = L.shape[-1]
    idx = np.arange(d)
    L[..., idx, idx] = np.exp(L[..., idx, idx])
    return L @ np.swapaxes(L, -1, -2)


def to_unconstrained(params: Any) -> list[np.ndarray]:
    """The leaves of a parameter tree (dataclasses, tuples, factors) in unconstrained coordinates.

    Parameters
    ----------
    params : any tree of dataclasses and tuples whose leaves are InvGamma, Dirichlet,
        Gaussian or InvWishart factors (or None).

    Returns
    -------
    list of float arrays, in a fixed traversal order (see :func:`from_unconstrained`).
    """
    out: list[np.ndarray] = []
    _flatten(params, out)
    return out


def _flatten(obj: Any, out: list[np.ndarray]) -> None:
    if obj is None or type(obj) is float:  # a Python float is a constant (SubjectScales.df); numpy scalars are not
        return
    kind = type(obj)
    if kind is InvGamma:
        out += [np.log(np.asarray(obj.shape, dtype=float)), np.log(np.asarray(obj.rate, dtype=float))]
    elif kind is Dirichlet:
        out.append(np.log(obj.alpha))
    elif kind is Gaussian:
        out += [_log_chol(obj.precision), np.asarray(obj.shift, dtype=float)]
    elif kind is InvWishart:
        d = obj.scale.shape[-1]
        out += [np.log(np.asarray(obj.df, dtype=float) - (d - 1)), _log_chol(obj.scale)]
    elif isinstance(obj, (tuple, list)):
        for x in obj:
            _flatten(x, out)
    elif is_dataclass(obj):
        for name in _field_names(kind):
            _flatten(getattr(obj, name), out)
    else:
        raise TypeError(f"cannot extrapolate a parameter of type {type(obj).__name__}")


@cache
def _field_names(kind: type) -> tuple[str, ...]:
    """The fields of a dataclass type in declaration order (looked up once per type: a fit flattens its
    parameter tree, some forty nodes, at every extrapolation)."""
    return tuple(f.name for f in fields(kind))


def from_unconstrained(template: Any, leaves: list[np.ndarray]) -> Any:
    """Rebuild a tree shaped like ``template`` from :func:`to_unconstrained` leaves."""
    it = iter(leaves)
    out = _rebuild(template, it)
    return out


def _rebuild(obj: Any, it) -> Any:
    if obj is None or type(obj) is float:
        return obj
    kind = type(obj)
    if kind is InvGamma:
        shape, rate = np.exp(next(it)), np.exp(next(it))
        return InvGamma(shape.reshape(np.shape(obj.shape)), rate.reshape(np.shape(obj.rate)))
    if kind is Dirichlet:
        return Dirichlet(np.exp(next(it)))
    if kind is Gaussian:
        prec = _from_log_chol(next(it))
        return Gaussian(prec, next(it))
    if kind is InvWishart:
        d = obj.scale.shape[-1]
        df = np.exp(next(it)) + (d - 1)
        return InvWishart(df.reshape(np.shape(obj.df)), _from_log_chol(next(it)))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_rebuild(x, it) for x in obj)
    if is_dataclass(obj):
        return kind(**{name: _rebuild(getattr(obj, name), it) for name in _field_names(kind)})
    raise TypeError(f"cannot extrapolate a parameter of type {type(obj).__name__}")


def squarem_point(
    u0: list[np.ndarray], u1: list[np.ndarray], u2: list[np.ndarray], max_step: float,
    extra: tuple[float, float] = (0.0, 0.0),
) -> tuple[list[np.ndarray], float] | None:
    """The S3 extrapolation from three successive iterates (unconstrained leaves).

    ``extra``: the parts of ``|r|^2`` and ``|v|^2`` (:func:`squarem_norms`) of leaves kept elsewhere (subject
    scales on Dask workers), which are then extrapolated there with the returned step.

    Returns the extrapolated leaves and the step ``a`` (<= -1), or None when the two
    steps are identical (nothing to extrapolate) or not finite.
    """
    rr, vv = squarem_norms(u0, u1, u2)
    rr, vv = rr + float(extra[0]), vv + float(extra[1])
    if not (np.isfinite(rr) and np.isfinite(vv)) or vv <= 0.0 or rr <= 0.0:
        return None
    a = -np.sqrt(rr / vv)
    a = float(min(-1.0, max(a, -max_step)))
    return squarem_leaves(u0, u1, u2, a), a


def squarem_norms(u0: list[np.ndarray], u1: list[np.ndarray], u2: list[np.ndarray]) -> tuple[float, float]:
    """``|r|^2`` and ``|v|^2`` of some leaves (see :func:`squarem_point`): their part of the step length."""
    rr = sum(float(np.vdot(b - a, b - a)) for a, b in zip(u0, u1))
    vv = sum(float(np.vdot(c - 2.0 * b + a, c - 2.0 * b + a)) for a, b, c in zip(u0, u1, u2))
    return rr, vv


def squarem_leaves(u0: list[np.ndarray], u1: list[np.ndarray], u2: list[np.ndarray], step: float) -> list[np.ndarray]:
    """The extrapolated leaves ``theta0 - 2 a r + a^2 v`` for a step ``a`` (see :func:`squarem_point`)."""
    return [x0 - 2.0 * step * (x1 - x0) + step * step * (x2 - 2.0 * x1 + x0) for x0, x1, x2 in zip(u0, u1, u2)]


@dataclass
class Squarem:
    """State of the extrapolation in a coordinate-ascent run.

    Attributes
    ----------
    max_step : current bound on |a|; multiplied by ``grow`` when a step at the bound is
        accepted, reset to ``initial_step`` when an extrapolation is rejected.
    """

    initial_step: float = 4.0
    grow: float = 4.0
    limit: float = 256.0
    max_step: float = 4.0
    accepted: int = 0
    rejected: int = 0

    def accept(self, step: float) -> None:
        self.accepted += 1
        if -step >= self.max_step:
            self.max_step = min(self.max_step * self.grow, self.limit)

    def reject(self) -> None:
        self.rejected += 1
        self.max_step = self.initial_step


def ascend(update, objective, start: Any, tol: float = 1e-10, max_iter: int = 2000, memory: int = 6) -> tuple[Any, float]:
    """Coordinate ascent ``x <- update(x)`` accelerated by Anderson mixing, never lowering ``objective``.

    For small global-only problems (no local step), e.g. the data-free component behind the delete
    moves' comparison, whose plain sweeps crawl for thousands of iterations (the hierarchical
    half-Cauchy scales and the smoothing scales move each other a little at a time).

    Each iteration maps the current point ``x`` (objective ``f``) to ``g = update(x)`` and mixes the
    last ``memory`` + 1 points and their images (type-II Anderson acceleration, in the unconstrained
    coordinates of :func:`to_unconstrained`): the combination of the images whose residuals
    ``g - x`` have the least squared norm. One more sweep from that mixed point gives the candidate,
    kept when its objective is at least ``f``; otherwise the plain ``g`` is taken and the history
    restarts from it. So the objective never drops, and where mixing never helps this is plain
    coordinate ascent at one extra sweep per step.

    Parameters
    ----------
    update : callable, one full coordinate-ascent sweep (never lowers ``objective``).
    objective : callable, the ELBO of a parameter tree.
    start : the starting parameters (a tree :func:`to_unconstrained` understands).
    tol : stop when a step changes the objective by less than ``tol * max(1, |objective|)``.
    max_iter : most sweeps.
    memory : past steps mixed.

    Returns
    -------
    The final parameters and their objective.
    """
    x = update(start)
    f = objective(x)
    template = x
    u, shapes = _flat(x)
    g = update(x)
    points, images = [u], [_flat(g)[0]]
    sweeps = 2
    while sweeps < max_iter:
        cand, fc = None, -np.inf
        if len(points) >= 2:
            mixed = _anderson_mix(np.array(points), np.array(images))
            if mixed is not None:
                try:  # a mixed point far out (a scale's log beyond exp's range) is refused, not warned about
                    with np.errstate(all="ignore"):
                        cand = update(_unflat(template, mixed, shapes))
                        u_cand = _flat(cand)[0]
                        fc = objective(cand) if np.all(np.isfinite(u_cand)) else -np.inf
                except (FloatingPointError, np.linalg.LinAlgError, ValueError, OverflowError):
                    cand, fc = None, -np.inf
                sweeps += 1
        if cand is not None and np.isfinite(fc) and fc >= f:
            x, f_new, u = cand, fc, u_cand
        else:  # the plain sweep (its vector is the last image); the mixing restarts from it
            x, f_new, u = g, objective(g), images[-1]
            points, images = points[-1:], images[-1:]
        done = abs(f_new - f) < tol * max(1.0, abs(f_new))
        f = f_new
        if done:
            break
        g = update(x)
        sweeps += 1
        points.append(u)
        images.append(_flat(g)[0])
        if len(points) > memory + 1:
            points.pop(0)
            images.pop(0)
    return x, f


def _flat(params: Any) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """The unconstrained leaves of ``params`` as one vector, and the leaves' shapes."""
    leaves = to_unconstrained(params)
    return np.concatenate([np.ravel(a) for a in leaves]), [np.shape(a) for a in leaves]


def _unflat(template: Any, vector: np.ndarray, shapes: list[tuple[int, ...]]) -> Any:
    """The tree shaped like ``template`` from a vector of :func:`_flat`."""
    leaves, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=int))
        leaves.append(vector[at:at + n].reshape(shape))
        at += n
    return from_unconstrained(template, leaves)


def _anderson_mix(points: np.ndarray, images: np.ndarray) -> np.ndarray | None:
    """Type-II Anderson mixing of iterates ``points`` (k, n) and their images ``images`` (k, n): the last
    image minus the differences of the images weighted by the least-squares fit of the differences of the
    residuals to the last residual; None when that fit is not finite."""
    resid = images - points
    d_resid, d_images = np.diff(resid, axis=0), np.diff(images, axis=0)
    gamma = np.linalg.lstsq(d_resid.T, resid[-1], rcond=None)[0]
    mixed = images[-1] - gamma @ d_images
    return mixed if np.all(np.isfinite(mixed)) else None

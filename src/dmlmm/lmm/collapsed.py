"""The variational LMM's ELBO as a function of ``Sigma`` and ``sigma^2`` alone, maximised by Newton.

Coordinate ascent on the LMM's variational posterior (:mod:`dmlmm.lmm.variational`) needs hundreds
of sweeps: along the nearly singular directions of ``Sigma`` each sweep moves ``q(Sigma)`` only a
little. This module optimises out everything that has a closed form and leaves a function of
(S, s) that a Newton iteration maximises in a few steps; the engine's coordinate ascent then
starts from the result and has almost nothing left to do.

The collapsed bound. In the model of :mod:`dmlmm.lmm.variational` (Huang and Wand's prior
``Sigma_b | a ~ IW(df0_b, 2 nu diag(1/a))``, ``df0_b = nu + q_b - 1``, ``a_j ~ IG(1/2, 1/A^2)`` on each
diagonal block b of ``Sigma``; ``sigma^2 | c ~ IG(1/2, 1/c)``, ``c ~ IG(1/2, 1/s_n^2)``;
``w ~ N(0, fixed_var I)``), take ``q(Sigma_b) = IW(nu_N, Psi_b)`` with ``nu_N = df0_b + N`` and
``q(sigma^2) = IG(alpha_N, beta)`` with ``alpha_N = 1/2 + n/2`` (their conjugate shapes), and write

    S = E_q[Sigma^-1]^-1 = Psi / nu_N,        s = E_q[1/sigma^2]^-1 = beta / alpha_N.

- ``E_q[log p(y | w, b, sigma^2)] + E_q[log p(b | Sigma)]`` differ from
  ``log p(y | w, b, s) + log N(b | 0, S)`` by ``n/2 (psi(alpha_N) - log alpha_N)`` and
  ``N/2 (E log|Sigma^-1| - log|S^-1|)``, constants (``log|Psi|`` cancels), so the best q(w, b) is
  the exact posterior of (w, b) given (S, s), and its terms add up to ``log m(y; S, s)``, the
  marginal likelihood with ``b_i ~ N(0, S)``, ``e ~ N(0, s I)`` and w integrated over its prior.
  With ``fixed_var`` large this is REML's likelihood (``(n - p) log s``, ``log|F'WF|``) up to
  ``O(1 / fixed_var)`` terms and a constant.
- ``E_q[log p(Sigma | a)] + H[q(Sigma)]`` depend on ``Psi`` through
  ``-(df0 + q_b + 1)/2 log|Psi_b| + (q_b + 1)/2 log|Psi_b| - 1/2 tr(E[S_a] E[Sigma^-1])``; maximised
  over ``q(a_j)`` (an inverse gamma integral) this is ``-df0_b/2 log|S_b| -
  (nu + q_b)/2 sum_j log(nu (S^-1)_jj + 1/A^2)``.
- ``q(sigma^2)``'s terms give ``-1/2 log s - E[1/c] / s``; maximised over ``q(c)``:
  ``-log(1/s + 1/s_n^2)``.

Up to a constant the ELBO maximised over everything else is therefore

    F(S, s) = log m(y; S, s) - sum_b df0_b/2 log|S_b| - sum_j (nu + q_b)/2 log(nu (S^-1)_jj + 1/A^2)
              - 1/2 log s - log(1/s + 1/s_n^2).

The penalty is a barrier: as an eigenvalue of S goes to zero, ``F -> -inf`` at least like
``1/2 log`` of it, so the optimum is interior. With ``S = s Gamma`` (``Gamma = Lambda Lambda'``,
lme4's relative covariance) ``log m`` is the profiled likelihood's machinery at a fixed ``s``
(:func:`dmlmm.lmm.profiled._evaluate`); ``s`` is profiled out by a one-dimensional root
(``dF/d log s`` is strictly decreasing), and the free entries of ``Gamma`` are found by trust-region
Newton steps in log coordinates around the current point, ``Gamma(X) = R expm(X) R'``
(:func:`collapsed_newton`), whose curvature is :func:`~dmlmm.lmm.profiled._gamma_hessian` plus the
penalty's exact Hessian (:func:`_penalty_hessian`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from ..sufficient import SufficientStats
from .profiled import _evaluate, _gamma_hessian, gamma_entries

__all__ = ["CollapsedHyper", "CollapsedPoint", "collapsed_value", "collapsed_newton"]


@dataclass(frozen=True)
class CollapsedHyper:
    """Hyperparameters of the priors as the collapsed bound uses them, one entry per coordinate of b.

    Attributes
    ----------
    nu : float
        Huang-Wand nu.
    df0 : (q,) ``nu + q_b - 1`` of each coordinate's block.
    shape : (q,) ``(nu + q_b) / 2``, the shape of ``q(a_j)``.
    rate0 : (q,) ``1 / A^2``.
    noise_rate0 : float
        ``1 / s_n^2``.
    """

    nu: float
    df0: np.ndarray
    shape: np.ndarray
    rate0: np.ndarray
    noise_rate0: float

    @classmethod
    def for_blocks(cls, block_sizes: list[int], cov_df: float, cov_scale: float, noise_scale: float
                   ) -> "CollapsedHyper":
        sizes = np.repeat(np.asarray(block_sizes, dtype=float), block_sizes)
        q = sizes.size
        return cls(float(cov_df), cov_df + sizes - 1.0, 0.5 * (cov_df + sizes), np.full(q, cov_scale**-2.0),
                   float(noise_scale) ** -2.0)


@dataclass(frozen=True)
class CollapsedPoint:
    """``-F`` (nats) at one ``Gamma`` and ``s`` (the profiled one unless ``s`` was given)."""

    value: float
    gamma: np.ndarray   # (q, q)
    lam: np.ndarray     # (q, q) Cholesky factor of gamma
    s: float            # the residual variance
    dof: int

    @property
    def cov(self) -> np.ndarray:
        """``S = s Gamma`` (q, q), i.e. ``E_q[Sigma^-1]^-1``."""
        return self.s * self.gamma


def _profile_s(pwrss: float, dof: int, g: np.ndarray, hyp: CollapsedHyper) -> float:
    """The ``s`` maximising ``F(s Gamma, s)`` for given ``pwrss`` and ``g = diag(Gamma^-1)``."""
    const = -0.5 * dof - 0.5 * float(hyp.df0.sum()) - 0.5

    def slope(t: float) -> float:  # dF / d log s, strictly decreasing
        s = np.exp(t)
        x = hyp.nu * g / s
        return const + 0.5 * pwrss / s + float(np.sum(hyp.shape * x / (x + hyp.rate0))) + 1.0 / (1.0 + s * hyp.noise_rate0)

    t0 = np.log(max(pwrss, 1e-300) / max(dof, 1))
    lo, hi = t0 - 1.0, t0 + 1.0
    while slope(lo) < 0:
        lo -= 2.0 * (t0 - lo)
    while slope(hi) > 0:
        hi += 2.0 * (hi - t0)
    return float(np.exp(optimize.brentq(slope, lo, hi, xtol=1e-14, rtol=1e-15)))


def _penalty_parts(gamma: np.ndarray, s: float, hyp: CollapsedHyper) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Gamma^-1`` (symmetrised), ``x_j = nu (Gamma^-1)_jj / s`` and ``c_j = shape_j (nu / s) / (x_j + 1/A^2)``,
    the pieces the penalty's value, gradient and Hessian share."""
    gi = np.linalg.inv(gamma)
    gi = 0.5 * (gi + gi.T)
    x = hyp.nu * np.diagonal(gi) / s
    return gi, x, hyp.shape * (hyp.nu / s) / (x + hyp.rate0)


def _penalty(gamma: np.ndarray, lam: np.ndarray, s: float, hyp: CollapsedHyper, grad: bool = False):
    """The penalty part of ``F`` at ``S = s Gamma`` (its ``s``-only terms included), and optionally its
    gradient in ``Gamma`` as a symmetric matrix (``dP = tr(G dGamma)``) at fixed ``s``.
    ``lam``: the Cholesky factor of ``Gamma`` (its diagonal gives the blocks' log-determinants)."""
    gi, x, c = _penalty_parts(gamma, s, hyp)
    value = (-float(np.sum(hyp.df0 * (np.log(s) + 2.0 * np.log(np.abs(np.diagonal(lam)))))) * 0.5
             - float(np.sum(hyp.shape * np.log(x + hyp.rate0)))
             - 0.5 * np.log(s) - np.log(1.0 / s + hyp.noise_rate0))
    if not grad:
        return value, None
    G = -0.5 * hyp.df0[:, None] * gi + gi @ (c[:, None] * gi)
    return value, 0.5 * (G + G.T)


def _penalty_hessian(gamma: np.ndarray, s: float, hyp: CollapsedHyper, rows: np.ndarray, units: np.ndarray
                     ) -> np.ndarray:
    """Hessian of ``-penalty`` in ``Gamma``'s free entries (rows ``rows``, unit matrices ``units`` (m, q, q))
    at fixed ``s``.

    With ``P_e = Gamma^-1 E_e Gamma^-1``: ``d^2 log|Gamma_b| = -tr(P_e E_f)``; ``g_j = (Gamma^-1)_jj`` has
    ``dg_j = -P_e[j, j]`` and ``d^2 g_j = (P_e E_f Gamma^-1 + P_f E_e Gamma^-1)_jj``; the penalty's terms
    ``-shape_j log(nu g_j / s + 1/A^2)`` have first and second derivatives ``-c_j`` and ``c_j^2 / shape_j``
    in ``g_j`` (``c_j`` as in :func:`_penalty`). Traces of products with the unit matrices are one matrix
    product each.
    """
    m, q = units.shape[0], gamma.shape[0]
    gi, _, c = _penalty_parts(gamma, s, hyp)
    P = gi[None] @ units @ gi[None]                                      # (m, q, q)
    flat = units.reshape(m, q * q)                                       # E_f symmetric: tr(A E_f) = <A, E_f>
    logdet = -(P.reshape(m, -1) @ flat.T)                                # d^2 log|Gamma|
    T = (gi @ (c[:, None] * gi))[None] @ units @ gi[None]                # Gamma^-1 C P_e, (m, q, q) -> tr(. E_f)
    T = T.reshape(m, -1) @ flat.T
    d = np.diagonal(P, axis1=1, axis2=2)                                 # (m, q): -dg_j
    H = -0.5 * hyp.df0[rows][:, None] * logdet - (T + T.T) + (d * (c**2 / hyp.shape)) @ d.T  # d^2 penalty
    return -0.5 * (H + H.T)


def collapsed_value(stats: SufficientStats, gamma: np.ndarray, hyp: CollapsedHyper, s: float | None = None
                    ) -> CollapsedPoint:
    """``-F(s Gamma, s)`` (nats, up to a constant) at ``Gamma`` (q, q), with ``s`` profiled out unless given;
    raises LinAlgError off the positive-definite cone."""
    lam = np.linalg.cholesky(gamma)
    state, _, _ = _evaluate(stats, lam, True, grad=False, hess=False, keep=False)
    return _point(state, gamma, lam, hyp, s)


def _point(state, gamma: np.ndarray, lam: np.ndarray, hyp: CollapsedHyper, s: float | None = None) -> CollapsedPoint:
    p = state.beta.size
    dof = state.n - p
    logdet_F = float(np.linalg.slogdet(state.FtWF)[1]) if p else 0.0
    if s is None:
        s = _profile_s(state.pwrss, dof, np.diagonal(np.linalg.inv(gamma)), hyp)
    loglik = -0.5 * (dof * np.log(s) + state.logdet_M + logdet_F + state.pwrss / s)
    pen, _ = _penalty(gamma, lam, s, hyp)
    return CollapsedPoint(-(loglik + pen), gamma, lam, s, dof)


def _unit(rows: np.ndarray, cols: np.ndarray, q: int) -> np.ndarray:
    """The symmetric unit matrices of the free entries, (m, q, q): ``e_r e_c' + e_c e_r'`` (``e_r e_r'`` on the diagonal)."""
    m = rows.size
    E = np.zeros((m, q, q))
    E[np.arange(m), rows, cols] = 1.0
    E[np.arange(m), cols, rows] = 1.0
    return E


def _gamma_system(stats: SufficientStats, point: CollapsedPoint, hyp: CollapsedHyper, rows: np.ndarray,
                  cols: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradient and curvature model of ``-F`` in ``Gamma``'s free entries at ``point``, and its matrix gradient.

    The likelihood's exact gradient (at the profiled ``s``) and its Gram-matrix curvature
    (:func:`~dmlmm.lmm.profiled._gamma_hessian`); the penalty's exact gradient and Hessian
    (:func:`_penalty_hessian`).

    Returns
    -------
    grad : (m,)
    hess : (m, m)
    Gf : (q, q) symmetric, ``d(-F) = tr(Gf dGamma)``.
    """
    m = rows.size
    _, _, extra = _evaluate(stats, point.lam, True, grad=True, hess="gamma", keep=False, at_sigma2=point.s)
    _, Gp = _penalty(point.gamma, point.lam, point.s, hyp, grad=True)
    Gf = -(extra["G"] + Gp)
    H = _gamma_hessian(extra, rows, cols) + _penalty_hessian(point.gamma, point.s, hyp, rows, units)
    return gamma_entries(Gf, rows, cols), 0.5 * (H + H.T), Gf


def _log_coordinates(point: CollapsedPoint, grad: np.ndarray, H: np.ndarray, Gf: np.ndarray, rows: np.ndarray,
                     cols: np.ndarray, units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient and curvature in the coordinates ``X`` of ``Gamma(X) = R expm(X) R'`` at ``X = 0``.

    ``R`` is ``Gamma``'s Cholesky factor and ``X`` symmetric with the free entries' pattern. To
    second order ``Gamma(X) = Gamma + R X R' + R X^2 R' / 2``, so the gradient is ``J' grad`` and the
    curvature ``J' H J + S`` with ``J`` the Jacobian of ``R X R'`` and ``S[e, f] = tr(B E_e E_f)``
    (symmetrised), ``B = R' Gf R``.
    """
    R = point.lam
    RER = R[None] @ units @ R.T[None]                                    # (m, q, q): d Gamma / d x_e
    J = RER[:, rows, cols].T                                             # (m_gamma, m_x)
    B = R.T @ Gf @ R
    m = units.shape[0]
    S = (B[None] @ units).reshape(m, -1) @ units.reshape(m, -1).T      # tr(B E_e E_f), E_f symmetric
    return J.T @ grad, J.T @ H @ J + 0.5 * (S + S.T)


def _moved(point: CollapsedPoint, step: np.ndarray, rows: np.ndarray, cols: np.ndarray, q: int) -> np.ndarray:
    """``R expm(X) R'`` for the symmetric ``X`` with free entries ``step``."""
    X = np.zeros((q, q))
    X[rows, cols] = step
    X[cols, rows] = step
    d, U = np.linalg.eigh(X)
    E = (U * np.exp(np.minimum(d, 700.0))) @ U.T
    G = point.lam @ E @ point.lam.T
    return 0.5 * (G + G.T)


def _trust_step(g: np.ndarray, H: np.ndarray, radius: float) -> tuple[np.ndarray, bool]:
    """The minimiser of ``g'p + p'Hp / 2`` over ``|p| <= radius`` (eigen-decomposition of the small ``H``),
    and whether it is the plain Newton step (``H`` positive definite and the step inside)."""
    w, V = np.linalg.eigh(H)
    a = V.T @ g
    if w[0] > 0:
        p = -a / w
        if np.linalg.norm(p) <= radius:
            return V @ p, True
    lo = max(0.0, -float(w[0])) + 1e-12 * max(float(np.abs(w).max()), 1e-300)

    def excess(mu: float) -> float:
        return float(np.linalg.norm(a / (w + mu))) - radius

    if excess(lo) <= 0:  # the hard case: move along the lowest eigenvector to the boundary
        p = -a / (w + lo)
        rest = radius**2 - float(p @ p)
        p[0] += np.sqrt(max(rest, 0.0))
        return V @ p, False
    hi = lo + float(np.linalg.norm(a)) / radius + 1.0
    while excess(hi) > 0:
        hi *= 2.0
    mu = optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-10)
    return V @ (-a / (w + mu)), False


def collapsed_newton(stats: SufficientStats, gamma0: np.ndarray, hyp: CollapsedHyper, rows: np.ndarray,
                     cols: np.ndarray, max_iter: int = 50, tol: float = 1e-7) -> tuple[CollapsedPoint, int, bool]:
    """Trust-region Newton maximising ``F`` over the free entries (``rows``, ``cols``) of ``Gamma``.

    Each step is taken in the log coordinates around the current point, ``Gamma(X) = R expm(X) R'``
    (:func:`_log_coordinates`): every point is positive definite, a step moves the eigenvalues
    multiplicatively, and the penalty's barrier ``-c log lambda`` along a small eigenvalue is linear
    in ``X``; the trust region bounds ``|X|_F``, the distance between ``Gamma`` and its successor in
    the affine-invariant metric. Where the curvature model is not positive definite or the Newton step
    leaves the region, the step is the model's minimiser on the region's boundary. A step is kept
    when ``-F`` falls by at least a tenth of what the model promised; the radius shrinks to a quarter
    of a rejected or poorly predicted step and doubles after a well predicted one on the boundary.
    (A damped Newton step with a line search overshot by tens of nats in the nearly flat directions,
    and needed several evaluations per step to come back.) Stops when the Newton step promises less
    than ``tol`` nats, when no step of length above 1e-10 decreases ``-F``, or after ``max_iter`` steps.

    Returns
    -------
    the last point, the number of steps taken, and whether the Newton-decrement test stopped it.
    """
    q = gamma0.shape[0]
    units = _unit(rows, cols, q)
    point = collapsed_value(stats, gamma0, hyp)
    radius = 1.0
    fresh = True
    it = 0
    while it < max_iter:
        if fresh:
            grad, H, Gf = _gamma_system(stats, point, hyp, rows, cols, units)
            g, Hx = _log_coordinates(point, grad, H, Gf, rows, cols, units)
            if not (np.all(np.isfinite(Hx)) and np.all(np.isfinite(g))):
                return point, it, False
        step, newton = _trust_step(g, Hx, radius)
        pred = -float(g @ step + 0.5 * step @ Hx @ step)
        if newton and pred < 0.5 * tol:
            return point, it, True
        norm = float(np.linalg.norm(step))
        if norm < 1e-10:
            return point, it, False
        try:
            with np.errstate(all="ignore"):
                cand = collapsed_value(stats, _moved(point, step, rows, cols, q), hyp)
            actual = point.value - cand.value if np.isfinite(cand.value) else -np.inf
        except np.linalg.LinAlgError:
            actual = -np.inf
        ratio = actual / pred if pred > 0 else -np.inf
        if ratio < 0.25:
            radius = 0.25 * norm
        elif ratio > 0.75 and norm >= 0.99 * radius:
            radius = 2.0 * radius
        fresh = ratio > 0.1
        if fresh:
            point = cand
            it += 1
    return point, it, False

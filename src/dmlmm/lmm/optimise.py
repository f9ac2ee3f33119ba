"""Maximising the profiled ML / REML likelihood (:mod:`dmlmm.lmm.profiled`) over the covariance parameters.

:func:`fit_profiled` runs, in order: Newton's method on ``Gamma = Lambda Lambda'`` with a
log-barrier that keeps it positive semidefinite (exact second derivatives from per-subject
Gram matrices, warm-started on nested subsets of subjects when there are many), a short
Newton polish on lme4's ``theta``, and, only when that does not meet the gradient tolerance,
the L-BFGS-B / Nelder-Mead path on ``theta``. A boundary (singular) fit is returned as such,
never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from ..sufficient import SufficientStats
from .profiled import (
    ProfiledState,
    _evaluate,
    _gamma_hessian,
    gamma_entries,
    _newton_model,
    evaluate,
    profiled_loglik,
    profiled_loglik_grad,
    scale_random_design,
)
from .structure import CovarianceStructure

__all__ = ["ProfiledFit", "fit_profiled", "reflect_boundary_columns"]

_MU_FACTOR = 0.01
# barrier start from a nearby solution (see _gamma_newton), for the subsets and the full data alike
# (mu0 = 1e-8 for the full data took 4x more iterations at 100,000 subjects)
_WARM = {"mu0": 1e-6, "floor": 1e-4}
_SUBSET_MIN = 1000  # smallest subset of subjects in the warm start of fit_profiled
_WALL = 1e10  # objective where the profiled likelihood is undefined (singular fixed-effect information)


@dataclass
class ProfiledFit:
    """Result of :func:`fit_profiled`.

    Attributes
    ----------
    theta : (n_theta,) estimate (for the statistics as given, not rescaled).
    state : ProfiledState at ``theta``.
    n_iter : int
        Optimiser iterations over all runs.
    n_eval : int
        Likelihood evaluations.
    converged : bool
    grad_norm : float
        Largest projected-gradient component at ``theta`` (on the internal scale).
    message : str
    history : list of (str, float)
        (optimiser run, log-likelihood reached) for each run.
    """

    theta: np.ndarray
    state: ProfiledState
    n_iter: int
    n_eval: int
    converged: bool
    grad_norm: float
    message: str
    history: list = field(default_factory=list)


def _projected_grad(theta: np.ndarray, g: np.ndarray, lower_bounded: np.ndarray) -> np.ndarray:
    """Gradient of the objective (to minimise) with components pushing into a bound removed."""
    pg = g.copy()
    at_bound = lower_bounded & (theta <= 1e-12) & (g > 0)
    pg[at_bound] = 0.0
    return pg


def reflect_boundary_columns(theta: np.ndarray, grad: np.ndarray, structure: CovarianceStructure,
                             tol: float = 1e-12) -> np.ndarray | None:
    """Escape a spurious stationary point on the bound ``Lambda_jj = 0``.

    The likelihood depends on ``Lambda Lambda'`` only, so it is unchanged when a column of
    ``Lambda`` changes sign; the bound ``Lambda_jj >= 0`` just picks one of the equivalent
    factors. At a point with ``Lambda_jj = 0`` where the objective's gradient pushes
    ``Lambda_jj`` below zero, negating the rest of column j gives the same likelihood with
    that gradient component reversed: a feasible descent direction. L-BFGS-B stops at such
    points; restarting from the reflected point continues the descent.

    Parameters
    ----------
    theta : (n_theta,) point (on the bounds as L-BFGS-B returned it).
    grad : (n_theta,) gradient of the objective being *minimised* at ``theta``.
    structure : CovarianceStructure
    tol : float
        A diagonal entry counts as on the bound when ``<= tol``; its gradient must exceed ``tol``.

    Returns
    -------
    ndarray (n_theta,) or None
        The reflected parameters, or None when no column qualifies.
    """
    if structure.kind == "scaled_identity":
        return None
    lam = structure.lam(theta)
    on_diag = structure.rows == structure.cols
    out = None
    for e in np.flatnonzero(on_diag):  # loop over the q diagonal entries, not over subjects
        j = int(structure.cols[e])
        k = int(structure.which[e])
        below = (structure.cols == j) & (structure.rows > j)
        if theta[k] <= tol and grad[k] > tol and np.any(lam[structure.rows[below], j] != 0.0):
            out = theta.copy() if out is None else out
            out[structure.which[below]] *= -1.0
    return out


def _drop_barrier_eigenvalues(st: SufficientStats, lam: np.ndarray, reml: bool, rel: float = 1e-8) -> np.ndarray:
    """Set the eigenvalues of ``Gamma = lam lam'`` below ``rel`` times the largest to zero (a tiny jitter
    keeps the Cholesky factor defined) when that does not lower the likelihood: the barrier of
    :func:`_gamma_newton` leaves such eigenvalues (about ``mu`` over the gradient) where the fit is on
    the boundary, and through the factor they would keep the gradient in ``theta`` above tolerance.
    """
    gam = lam @ lam.T
    w, V = np.linalg.eigh(gam)
    top = max(float(w.max()), 1e-300)
    small = w < rel * top
    if not small.any():
        return lam
    w = np.where(small, 0.0, w)
    try:
        cand = np.linalg.cholesky((V * w) @ V.T + 1e-14 * top * np.eye(lam.shape[0]))
        if evaluate(st, cand, reml, keep=False)[0].loglik >= evaluate(st, lam, reml, keep=False)[0].loglik:
            return cand
    except np.linalg.LinAlgError:
        pass
    return lam


def _usable(stats: SufficientStats, lam: np.ndarray, reml: bool) -> bool:
    """The likelihood can be evaluated at ``lam`` (finite; the fixed effects identified there)."""
    try:
        with np.errstate(all="ignore"):
            return bool(np.isfinite(evaluate(stats, lam, reml, keep=False)[0].loglik)) and bool(np.all(np.isfinite(lam)))
    except np.linalg.LinAlgError:
        return False


def _canonical_signs(theta: np.ndarray, structure: CovarianceStructure) -> np.ndarray:
    """The same ``Lambda Lambda'`` with every diagonal entry of ``Lambda`` made >= 0 (column sign flips)."""
    lam = structure.lam(theta)
    signs = np.where(np.diagonal(lam) < 0, -1.0, 1.0)
    return structure.theta_from_lam(lam * signs[None, :])


def _newton(fun_hess, fval, th0: np.ndarray, max_iter: int, gtol: float, max_step: float = 1.0,
            n_obs: int = 1) -> tuple[np.ndarray, float, int, bool]:
    """Damped Newton on the objective ``f(theta) = -loglik / n`` without bounds.

    The likelihood depends on ``Lambda Lambda'`` only, so the sign of a column of Lambda is free:
    without the bounds ``Lambda_jj >= 0`` a boundary fit (a zero column) is an interior point and
    the iteration needs no active set. The curvature is :func:`_newton_model`, made positive
    definite by taking its eigenvalues' absolute values, at least ``1e-10`` times the largest (so
    a direction of negative curvature is followed downhill), the step is shortened to length
    ``max_step`` at most (theta is on the unit scale of the rescaled design) and backtracked
    until it decreases ``f`` (Armijo). Stops when the gradient's largest component is
    below ``gtol * 1e-3`` or below ``gtol`` with a Newton decrement that promises less than 1e-8 of
    log-likelihood (``n_obs`` observations), when the decrement is at round-off level, or when a
    step cannot decrease ``f``.

    Returns
    -------
    theta, f, iterations, converged
    """
    th = np.asarray(th0, dtype=float).copy()
    f, g, H = fun_hess(th)
    if not np.isfinite(f) or f >= _WALL:
        return th, f, 0, False
    it = 0
    for it in range(1, max_iter + 1):
        gmax = float(np.max(np.abs(g))) if g.size else 0.0
        if gmax < gtol * 1e-3:
            return th, f, it - 1, True
        if not (np.all(np.isfinite(H)) and np.all(np.isfinite(g))):
            return th, f, it - 1, False
        w, V = np.linalg.eigh(H)
        w = np.abs(w)                      # negative curvature: step downhill along it, not uphill
        w = np.maximum(w, 1e-10 * max(float(w.max()), 1e-300))
        step = -V @ ((V.T @ g) / w)
        norm = float(np.linalg.norm(step))
        if norm > max_step:                # far from the optimum the quadratic model is poor
            step *= max_step / norm
        slope = float(g @ step)
        if -slope < 1e-15 * max(1.0, abs(f)):  # decrement at round-off: nothing left to gain
            return th, f, it - 1, gmax < gtol
        if gmax < gtol and -slope * n_obs < 1e-8:  # log-likelihood within ~1e-8 of the local optimum
            return th, f, it - 1, True
        t = 1.0
        for _ in range(40):
            f_new = fval(th + t * step)
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            return th, f, it - 1, gmax < gtol
        th = th + t * step
        f, g, H = fun_hess(th)
    gmax = float(np.max(np.abs(g))) if g.size else 0.0
    return th, f, it, gmax < gtol


def _gamma_newton(st: SufficientStats, structure: CovarianceStructure, reml: bool, lam0: np.ndarray,
                  max_iter: int, mu0: float = 1e-3, mu_min: float = 1e-12, floor: float = 1e-3
                  ) -> tuple[np.ndarray, int, int]:
    """Barrier Newton iteration on the relative covariance ``Gamma = Lambda Lambda'`` itself.

    On ``Gamma``'s free lower-triangle entries the profiled likelihood is well conditioned even at
    a boundary fit, where its Cholesky factor Lambda is not (there the likelihood is nearly flat
    along curved valleys of Lambda, which costs a Newton or quasi-Newton iteration on Lambda
    hundreds of steps). The constraint ``Gamma >= 0`` is handled by a log-barrier: minimise
    ``-l/n - mu log|Gamma|`` by Newton steps (curvature :func:`_gamma_hessian` plus the barrier's,
    eigenvalues replaced by their absolute values), each step halved until ``Gamma`` stays positive
    definite and the objective decreases (Armijo); ``mu`` is divided by 10 whenever the Newton
    decrement is below ``mu / 10``, from ``mu0`` down to ``mu_min``. Once full steps are being
    accepted and the decrement is below 1e-5, a full step is taken unchecked and verified at the
    next evaluation (and backtracked from there if it did not decrease the objective) (the barrier then costs at most
    about ``q mu_min`` of ``-l/n``). The start's eigenvalues are raised to ``floor`` times the
    largest (at least ``floor``) to begin inside the cone. A step counts as a decrease only when
    it lowers the objective by more than round-off (8 eps of its size); when no step does, the
    iteration ends (near a singular ``Gamma`` it could otherwise take steps of 1e-10 until
    ``max_iter``: 2,000 iterations and 16 s on 60 subjects).

    Returns
    -------
    lam : (q, q) Cholesky factor of the last ``Gamma``
    iterations, evaluations : int
    """
    rows, cols = structure.rows, structure.cols
    nobs = max(int(st.n_obs.sum()), 1)
    q = structure.dim
    off = rows != cols
    halves = [(rows, cols, np.ones(rows.size)), (cols, rows, off.astype(float))]

    def chol(gam: np.ndarray) -> np.ndarray | None:
        try:
            return np.linalg.cholesky(gam)
        except np.linalg.LinAlgError:
            return None

    def value(lam: np.ndarray, mu: float) -> float:
        try:
            return -evaluate(st, lam, reml, keep=False)[0].loglik / nobs - 2.0 * mu * float(np.log(np.diag(lam)).sum())
        except np.linalg.LinAlgError:
            return np.inf

    lam = np.asarray(lam0, dtype=float)
    gam = lam @ lam.T
    w0, V0 = np.linalg.eigh(gam)  # start strictly inside the cone
    gam = (V0 * np.maximum(w0, floor * max(float(w0.max()), 1.0))) @ V0.T
    lam = np.linalg.cholesky(gam)
    n_eval = n_iter = 0
    mu = mu0
    prev = None
    full_steps = 0
    t_last = [1.0]

    def _backtrack(gam0, D, f0, dec, mu_, t):
        nonlocal n_eval
        floor = 8 * np.finfo(float).eps * max(1.0, abs(f0))  # a decrease below this is round-off
        for _ in range(40):
            lam_t = chol(gam0 + t * D)
            if lam_t is not None:
                f_t = value(lam_t, mu_)
                n_eval += 1
                if f_t <= f0 - 1e-4 * t * dec and f0 - f_t > floor:
                    t_last[0] = t
                    return lam_t
            t *= 0.5
        return None

    while n_iter < max_iter:
        try:
            state, _, extra = _evaluate(st, lam, reml, grad=True, hess="gamma", keep=False)
        except np.linalg.LinAlgError:
            break
        n_eval += 1
        n_iter += 1
        if prev is not None:  # an unchecked full step: keep it only if it decreased the objective
            p_lam, p_gam, p_f, p_D, p_dec, p_mu = prev
            prev = None
            f_here = -state.loglik / nobs - 2.0 * p_mu * float(np.log(np.diag(lam)).sum())
            if not f_here <= p_f - 1e-4 * p_dec:
                full_steps = 0
                lam_t = _backtrack(p_gam, p_D, p_f, p_dec, p_mu, 0.5)
                if lam_t is None:
                    return p_lam, n_iter, n_eval
                lam, gam = lam_t, lam_t @ lam_t.T
                continue
        gi = np.linalg.inv(gam)
        G = extra["G"]
        grad_l = -gamma_entries(G, rows, cols) / nobs
        H_l = _gamma_hessian(extra, rows, cols) / nobs
        H_b = np.zeros_like(H_l)
        for a, b_, wa in halves:
            for x, y, wx in halves:
                H_b += np.outer(wa, wx) * gi[y[None, :], a[:, None]] * gi[b_[:, None], x[None, :]]
        grad_b = -gamma_entries(gi, rows, cols)
        if not (np.all(np.isfinite(H_l)) and np.all(np.isfinite(grad_l)) and np.all(np.isfinite(H_b))):
            break
        while True:  # centred enough for this mu: lower it (the likelihood parts are reused)
            grad = grad_l + mu * grad_b
            w, V = np.linalg.eigh(0.5 * (H_l + H_l.T) + mu * 0.5 * (H_b + H_b.T))
            w = np.abs(w)
            w = np.maximum(w, 1e-12 * max(float(w.max()), 1e-300))
            step = -V @ ((V.T @ grad) / w)
            dec = -float(grad @ step)
            if dec >= 0.1 * mu or mu <= mu_min:
                break
            mu *= _MU_FACTOR
        if mu <= mu_min and dec < 0.1 * mu:
            break
        f = -state.loglik / nobs - 2.0 * mu * float(np.log(np.diag(lam)).sum())
        D = np.zeros((q, q))
        D[rows, cols] = step
        D = D + np.tril(D, -1).T
        if dec < 1e-5 and full_steps > 0:  # Newton's region of fast convergence: take the full step,
            lam_t = chol(gam + D)               # checked at the next evaluation (saves one per iteration)
            if lam_t is not None:
                prev = (lam, gam, f, D, dec, mu)
                lam, gam = lam_t, lam_t @ lam_t.T
                continue
        lam_t = _backtrack(gam, D, f, dec, mu, 1.0)
        if lam_t is None:
            break
        full_steps = full_steps + 1 if t_last[0] == 1.0 else 0
        lam, gam = lam_t, lam_t @ lam_t.T
    return lam, n_iter, n_eval


def fit_profiled(
    stats: SufficientStats,
    structure: CovarianceStructure,
    reml: bool,
    *,
    theta0: np.ndarray | None = None,
    max_iter: int = 2000,
    gtol: float = 1e-6,
    n_restarts: int = 2,
    rescale: bool = True,
    newton: bool = True,
    fallback: bool = True,
) -> ProfiledFit:
    """Maximise the profiled ML / REML likelihood over ``theta``: Newton phases, L-BFGS-B as fallback.

    The random design is rescaled to unit root-mean-square columns first (an
    equivalent parametrisation). Then, for an unstructured or block-diagonal ``Sigma``:

    1. barrier Newton on ``Gamma = Lambda Lambda'`` (:func:`_gamma_newton`, exact Hessian from
       per-subject Gram matrices, :func:`_gamma_hessian`). With 5,000 subjects or more it runs
       first on nested random subsets (a hundredth, a tenth of the subjects, at least 1,000
       each), each warm-starting the next, so that the full data see few steps;
    2. the barrier's residual eigenvalues are set to zero (:func:`_drop_barrier_eigenvalues`);
    3. damped Newton on ``theta`` itself (:func:`_newton`, at most 30 steps; for a scaled identity
       the only phase) confirms or polishes: the estimate is its result, column signs made
       canonical (``Lambda_jj >= 0``), when the projected gradient is below ``gtol``.

    Why not quasi-Newton on ``theta`` alone: at a boundary fit (a singular ``Sigma``, as with 10
    spline functions and fewer real directions of subject variation) the likelihood is nearly
    flat along curved valleys of the Cholesky factor, and L-BFGS-B took 675 iterations at
    10,000 subjects. Otherwise (or when the Newton result cannot be evaluated on the statistics
    as given; then the whole fit is redone without the Newton phases) L-BFGS-B runs from the
    best point so far, with diagonal entries bounded below by zero, is restarted from its own
    solution (fresh curvature memory) while that still improves the fit -- from a
    column-reflected solution where it stopped at a spurious point on the bound
    (see :func:`reflect_boundary_columns`) -- and falls back to bounded Nelder-Mead
    (then one more L-BFGS-B polish) if it does not reach a small projected gradient.
    ``n_iter`` counts the iterations on the full data (Newton steps and optimiser iterations);
    the subsets' steps are in ``history``.

    Parameters
    ----------
    stats : SufficientStats
        Best on a standardised response (unit scale); see :mod:`dmlmm.lmm.model`.
    structure : CovarianceStructure
    reml : bool
    theta0 : (n_theta,), optional
        Start, for the statistics as given; default ``Lambda = I`` on the rescaled design.
    max_iter : int
        Iteration cap of each optimiser run.
    gtol : float
        Convergence: largest projected-gradient component of ``-loglik / n`` below ``gtol``.
    n_restarts : int
        Extra L-BFGS-B runs from the incumbent solution.
    rescale : bool
        Rescale the random design to unit-RMS columns internally.
    newton : bool
        Run the Newton phase first (when it ends where the likelihood cannot be evaluated on the
        statistics as given, the fit is redone without it).
    fallback : bool
        Run L-BFGS-B and Nelder-Mead where the Newton phases do not converge (False: their result
        stands, converged or not; for quick runs that only provide a start).

    Returns
    -------
    ProfiledFit
    """
    n = max(int(stats.n_obs.sum()), 1)
    q = structure.dim
    if rescale:
        diag = np.einsum("nii->i", stats.XtX) / n
        d = np.sqrt(np.where(diag > 0, diag, 1.0))
        if structure.kind == "scaled_identity":
            d = np.full(q, float(np.sqrt(diag.mean())) if diag.mean() > 0 else 1.0)
    else:
        d = np.ones(q)
    sstats = scale_random_design(stats, d)
    if theta0 is None:
        th0 = structure.theta0()
    else:
        th0 = structure.theta_from_lam(d[:, None] * structure.lam(theta0))
    bounds = structure.bounds()
    lower_bounded = structure.on_diagonal
    n_eval = 0

    def fun(th: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal n_eval
        n_eval += 1
        try:
            # where the residual variance collapses to zero (more random effects than observations)
            # the gradient overflows: it stays infinite, so that the fit is reported unconverged,
            # without numpy's raw warning
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                ll, g = profiled_loglik_grad(sstats, th, structure, reml)
        except np.linalg.LinAlgError:  # the fixed effects are not identified at this theta: a wall
            return _WALL, np.zeros_like(th)
        return -ll / n, -g / n

    def make_fun_hess(st: SufficientStats):
        nobs = max(int(st.n_obs.sum()), 1)

        def fun_hess(th: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
            nonlocal n_eval
            n_eval += 1
            lam = structure.lam(th)
            try:
                state, g, extra = _evaluate(st, lam, reml, grad=True, hess="theta", keep=False)
            except np.linalg.LinAlgError:
                return _WALL, np.zeros_like(th), np.eye(th.size)
            return (-state.loglik / nobs, -structure.grad_theta(g) / nobs,
                    _newton_model(extra, lam, structure) / nobs)

        def fv(th: np.ndarray) -> float:
            nonlocal n_eval
            n_eval += 1
            try:
                return -profiled_loglik(st, th, structure, reml) / nobs
            except np.linalg.LinAlgError:
                return _WALL

        return fun_hess, fv, nobs

    fval = make_fun_hess(sstats)[1]  # -loglik / n on the rescaled design (the same n_obs)

    def pgnorm(th: np.ndarray) -> float:
        if th.size == 0:
            return 0.0
        return float(np.max(np.abs(_projected_grad(th, fun(th)[1], lower_bounded))))

    opts = {"maxiter": max_iter, "ftol": 1e-15, "gtol": gtol * 1e-3, "maxcor": 100}
    history: list = []
    n_iter = 0
    best_th = np.asarray(th0, dtype=float)
    best_f = fval(best_th)
    if structure.n_theta == 0:
        best_th = np.zeros(0)
    else:
        # the Newton phases (see the docstring); L-BFGS-B below only if they do not converge
        def newton_phase() -> tuple[np.ndarray, float, bool]:
            nonlocal n_iter, n_eval
            th_start = best_th
            N = stats.n_subjects
            use_gamma = structure.kind != "scaled_identity"
            if theta0 is None and N >= 5 * _SUBSET_MIN:
                for sub in sstats.nested_subsets(10, _SUBSET_MIN, seed=0):
                    m = sub.n_subjects
                    if use_gamma:
                        warm = len(history) > 0
                        lam_s, it_s, _ = _gamma_newton(sub, structure, reml, structure.lam(th_start), max_iter,
                                                       **(_WARM if warm else {}))
                        th_start = structure.theta_from_lam(lam_s)
                        history.append((f"Gamma-Newton on {m} subjects ({it_s} iterations)",
                                        float(evaluate(sub, lam_s, reml, keep=False)[0].loglik)))
            if use_gamma:
                warm = len(history) > 0
                lam_g, it_g, ev_g = _gamma_newton(sstats, structure, reml, structure.lam(th_start), max_iter,
                                                  **(_WARM if warm else {}))
                n_iter += it_g
                n_eval += ev_g
                lam_g = _drop_barrier_eigenvalues(sstats, lam_g, reml)
                th_start = structure.theta_from_lam(lam_g)
                history.append((f"Gamma-Newton ({it_g} iterations)", float(evaluate(sstats, lam_g, reml, keep=False)[0].loglik)))
            fun_hess, fv_full, _ = make_fun_hess(sstats)
            th_n, f_n, it_n, ok_n = _newton(fun_hess, fv_full, th_start, min(max_iter, 30) if use_gamma else max_iter,
                                            gtol, n_obs=n)
            n_iter += it_n
            history.append((f"Newton ({it_n} iterations)", -f_n * n))
            return th_n, f_n, ok_n

        try:
            if not newton:
                raise ValueError("Newton phase not requested")
            with np.errstate(all="ignore"):
                th_n, f_n, ok_n = newton_phase()
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):  # degenerate data: L-BFGS-B below
            th_n, f_n, ok_n = best_th, np.inf, False
        if np.isfinite(f_n) and f_n <= best_f and _usable(stats, structure.lam(th_n) / d[:, None], reml):
            best_th, best_f = _canonical_signs(th_n, structure), f_n
        newton_done = (ok_n and pgnorm(best_th) < gtol) or (not fallback and np.isfinite(f_n))
        start = best_th
        for run in range(0 if newton_done else 1 + n_restarts):
            res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
            n_iter += int(res.nit)
            improved = best_f - float(res.fun)
            history.append(("L-BFGS-B", -float(res.fun) * n))
            if float(res.fun) <= best_f:
                best_th, best_f = res.x, float(res.fun)
            reflected = reflect_boundary_columns(best_th, fun(best_th)[1], structure)
            if reflected is not None:
                start = reflected
                history.append(("reflect", -best_f * n))
                continue
            start = best_th
            if run > 0 and improved < 1e-12 and pgnorm(best_th) < gtol:
                break
        if not newton_done and pgnorm(best_th) >= gtol:
            res = optimize.minimize(fval, best_th, method="Nelder-Mead", bounds=bounds,
                                    options={"maxiter": 200 * (structure.n_theta + 1), "xatol": 1e-10,
                                             "fatol": 1e-14, "adaptive": structure.n_theta > 4})
            n_iter += int(res.nit)
            history.append(("Nelder-Mead", -float(res.fun) * n))
            if float(res.fun) <= best_f:
                best_th, best_f = res.x, float(res.fun)
            res = optimize.minimize(fun, best_th, jac=True, method="L-BFGS-B", bounds=bounds, options=opts)
            n_iter += int(res.nit)
            history.append(("L-BFGS-B", -float(res.fun) * n))
            if float(res.fun) <= best_f:
                best_th, best_f = res.x, float(res.fun)
    gn = pgnorm(best_th)
    converged = gn < gtol
    lam = structure.lam(best_th) / d[:, None]
    theta = structure.theta_from_lam(lam)
    try:
        state, _ = evaluate(stats, lam, reml)
    except np.linalg.LinAlgError:
        if not newton:
            raise
        return fit_profiled(stats, structure, reml, theta0=theta0, max_iter=max_iter, gtol=gtol,
                            n_restarts=n_restarts, rescale=rescale, newton=False, fallback=True)
    msg = "converged" if converged else f"projected gradient {gn:.2e} above tolerance {gtol:.1e}"
    return ProfiledFit(theta=theta, state=state, n_iter=n_iter, n_eval=n_eval, converged=converged,
                       grad_norm=gn, message=msg, history=history)

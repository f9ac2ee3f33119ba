"""Exact profiled ML / REML likelihood of the linear mixed model, from per-subject sufficient statistics.

Model, for subjects i = 1..N with n_i observations each::

    y_i = F_i beta + Z_i b_i + e_i,   b_i ~ N(0, sigma^2 Lambda Lambda'),   e_i ~ N(0, sigma^2 I)

``Lambda`` (q x q, lower triangular) is lme4's relative covariance factor,
parametrised by ``theta`` through a :class:`~dmlmm.lmm.structure.CovarianceStructure`.
For a given ``theta`` the fixed effects ``beta`` and ``sigma^2`` have closed
forms and are profiled out; what remains is a function of ``theta`` alone.

Everything is computed from the sufficient statistics ``Z_i'Z_i``, ``Z_i'y_i``,
``y_i'y_i``, ``n_i``, ``F_i'F_i``, ``F_i'y_i``, ``Z_i'F_i`` (named ``XtX``, ``Xty``,
``yty``, ``n_obs``, ``FtF``, ``Fty``, ``XtF`` in :class:`~dmlmm.sufficient.SufficientStats`,
where the random design is called X) with the Woodbury identity and the matrix
determinant lemma. With ``M_i = Lambda' Z_i'Z_i Lambda + I`` (q x q, eigenvalues >= 1,
so its Cholesky factor always exists)::

    sigma^2 V_i^{-1} = I - Z_i Lambda M_i^{-1} Lambda' Z_i'          (Woodbury)
    log |V_i / sigma^2| = log |M_i|                                  (determinant lemma)

so a bilinear form ``a' sigma^2 V_i^{-1} c`` costs O(q^3) per subject whatever n_i
is. All subjects are handled at once as (N, q, q) stacks: there is no Python
loop over subjects. With ``W = sigma^2 V^{-1}``, ``r = y - F beta_hat`` and the
penalised residual sum of squares ``pwrss = r'W r``::

    ML:    -2 l = n log(2 pi sigma2) + sum_i log|M_i| + n,              sigma2 = pwrss / n
    REML:  -2 l = (n-p) log(2 pi sigma2) + sum_i log|M_i| + log|F'WF| + (n-p),
                                                                      sigma2 = pwrss / (n - p)

exactly lme4's deviance and REML criterion.

The gradient w.r.t. ``Lambda`` follows from the envelope theorem (``beta`` and
``sigma^2`` are at their optimum for the given ``theta``): with ``u_i`` the spherical
conditional modes ``M_i^{-1} Lambda' Z_i' r_i`` (so ``b_i = Lambda u_i``)::

    ML:    dl/dLambda = sum_i [ (Z_i'W r_i) u_i' / sigma2 - Z_i'Z_i Lambda M_i^{-1} ]
    REML:  dl/dLambda = ML term + sum_i (Z_i'W F_i) (F'WF)^{-1} (M_i^{-1} Lambda' Z_i'F_i)'

which is ``2 sigma^2 G Lambda`` with ``G = dl/dSigma = 1/2 sum_i [Z_i'V_i^{-1} r_i r_i'V_i^{-1}Z_i -
Z_i'V_i^{-1}Z_i]`` (``Z_i'P Z_i`` blocks for REML). The cost of one evaluation is
O(N q^3 + N q^2 p + N q p^2 + p^3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from .._linalg import cholesky_soa, inv_from_chol_soa
from ..sufficient import SufficientStats
from ..expfam import LOG_2PI
from .structure import CovarianceStructure

__all__ = [
    "ProfiledState",
    "ProfiledFit",
    "evaluate",
    "profiled_loglik",
    "profiled_loglik_grad",
    "fit_profiled",
    "scale_random_design",
    "reflect_boundary_columns",
]



@dataclass(frozen=True)
class ProfiledState:
    """The profiled likelihood and everything it computed at one ``Lambda``.

    Attributes
    ----------
    loglik : float
        ML log-likelihood or REML log-likelihood (``-1/2`` the REML criterion).
    beta : (p,) GLS estimate of the fixed effects.
    sigma2 : float
        Profiled residual variance (ML: pwrss / n, REML: pwrss / (n - p)).
    pwrss : float
        Penalised weighted residual sum of squares ``r' sigma^2 V^{-1} r``.
    u : (N, q)
        Spherical conditional modes; the BLUPs are ``b_i = Lambda u_i``.
    Minv : (N, q, q)
        ``M_i^{-1}``; the conditional covariance of ``b_i`` given y and beta is
        ``sigma2 Lambda M_i^{-1} Lambda'``.
    MinvE : (N, q, p)
        ``M_i^{-1} Lambda' Z_i'F_i``: ``u_i`` moves by ``-MinvE_i d`` when beta moves by ``d``.
    FtWF : (p, p)
        ``F' sigma^2 V^{-1} F``; ``Cov(beta_hat) = sigma2 FtWF^{-1}``.
    logdet_M : float
        ``sum_i log |M_i|``.
    lam : (q, q)
    n : int
        Total number of observations.
    reml : bool
    """

    loglik: float
    beta: np.ndarray
    sigma2: float
    pwrss: float
    u: np.ndarray
    Minv: np.ndarray
    MinvE: np.ndarray
    FtWF: np.ndarray
    logdet_M: float
    lam: np.ndarray
    n: int
    reml: bool

    @property
    def cov_beta(self) -> np.ndarray:
        """``Cov(beta_hat) = sigma2 (F'WF)^{-1}``, shape (p, p)."""
        if self.FtWF.size == 0:
            return np.zeros((0, 0))
        return self.sigma2 * _spd_inverse(self.FtWF)

    @property
    def b(self) -> np.ndarray:
        """BLUPs ``b_i = Lambda u_i``, shape (N, q)."""
        return self.u @ self.lam.T

    @property
    def cov_b_conditional(self) -> np.ndarray:
        """``Cov(b_i | y, beta) = sigma2 Lambda M_i^{-1} Lambda'``, shape (N, q, q)."""
        return self.sigma2 * (self.lam @ self.Minv @ self.lam.T)

    @property
    def beta_sensitivity(self) -> np.ndarray:
        """``H_i = Lambda M_i^{-1} Lambda' Z_i'F_i`` (N, q, p): ``b_i`` moves by ``-H_i d`` when beta moves by ``d``."""
        return self.lam @ self.MinvE

    @property
    def cov_re(self) -> np.ndarray:
        """``Sigma = sigma2 Lambda Lambda'``, shape (q, q)."""
        return self.sigma2 * (self.lam @ self.lam.T)


_WALL = 1e10  # objective where the profiled likelihood is undefined (singular fixed-effect information)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(a)
    li = np.linalg.inv(chol)
    return li.T @ li


def _batched_spd_inverse(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of a stack (N, q, q) of SPD matrices, both from one Cholesky factor.

    The factor and the triangular inverse are computed with the batch axis last
    (:func:`dmlmm._linalg.cholesky_soa`, :func:`dmlmm._linalg.inv_from_chol_soa`: loops over
    the q rows, each step vectorised over the N matrices), 2.5-3x faster at 10,000 x 10 x 10
    than a batched Cholesky plus a batched LAPACK inverse (the inverse was 40 % of an ML
    likelihood evaluation). The matrices here have eigenvalues >= 1, so they are well conditioned.
    """
    chol = cholesky_soa(np.ascontiguousarray(np.moveaxis(m, 0, -1)))  # (q, q, N)
    logdet = 2.0 * np.log(np.diagonal(chol, axis1=0, axis2=1)).sum(axis=-1)
    return inv_from_chol_soa(chol), logdet


def _sum_tn(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_n a_n' b_n`` for stacks a (N, k, i), b (N, k, j) -> (i, j), as one matrix product."""
    return a.reshape(-1, a.shape[-1]).T @ b.reshape(-1, b.shape[-1])


def _sum_nt(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_n a_n b_n'`` for stacks a (N, i, k), b (N, j, k) -> (i, j), as one matrix product."""
    at = np.swapaxes(a, 0, 1).reshape(a.shape[1], -1)
    bt = np.swapaxes(b, 0, 1).reshape(b.shape[1], -1)
    return at @ bt.T


def _mv(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Batched matrix-vector product: (N, i, j) x (N, j) -> (N, i)."""
    return (a @ v[..., None])[..., 0]


def evaluate(stats: SufficientStats, lam: np.ndarray, reml: bool, grad: bool = False
             ) -> tuple[ProfiledState, np.ndarray | None]:
    """Profiled log-likelihood at ``Lambda``, and optionally its gradient w.r.t. ``Lambda``.

    Parameters
    ----------
    stats : SufficientStats
        Per-subject statistics with random design Z (``XtX`` (N, q, q), ``Xty`` (N, q),
        ``XtF`` (N, q, p)) and fixed design F (``FtF`` (N, p, p), ``Fty`` (N, p)).
    lam : (q, q) lower-triangular relative covariance factor.
    reml : bool
        REML (True) or ML (False).
    grad : bool
        Also return ``dl/dLambda`` (q, q) (full matrix; only its free entries are used).

    Returns
    -------
    state : ProfiledState
    grad_lam : (q, q) or None
    """
    A, Zty, ZtF = stats.XtX, stats.Xty, stats.XtF
    n = int(stats.n_obs.sum())
    q = A.shape[-1]
    p = stats.FtF.shape[-1]
    lam = np.asarray(lam, dtype=float)

    AL = A @ lam                                                    # (N, q, q)  Z'Z Lambda
    M = lam.T @ AL + np.eye(q)                                      # (N, q, q)
    Minv, logdet_Mi = _batched_spd_inverse(M)
    logdet_M = float(logdet_Mi.sum())
    cy = Zty @ lam                                                  # (N, q)     Lambda'Z'y
    E = lam.T @ ZtF                                                 # (N, q, p)  Lambda'Z'F
    Minv_cy = _mv(Minv, cy)
    MinvE = Minv @ E

    ytWy = float(stats.yty.sum() - np.vdot(cy, Minv_cy))
    if p:
        FtWF = stats.FtF.sum(axis=0) - _sum_tn(E, MinvE)
        FtWF = 0.5 * (FtWF + FtWF.T)
        FtWy = stats.Fty.sum(axis=0) - E.reshape(-1, p).T @ Minv_cy.reshape(-1)
        cholF = np.linalg.cholesky(FtWF)
        beta = np.linalg.solve(cholF.T, np.linalg.solve(cholF, FtWy))
        logdet_F = 2.0 * float(np.log(np.diag(cholF)).sum())
        pwrss = ytWy - float(beta @ FtWy)
        u = Minv_cy - MinvE @ beta
    else:
        FtWF = np.zeros((0, 0))
        beta = np.zeros(0)
        logdet_F = 0.0
        pwrss = ytWy
        u = Minv_cy
    pwrss = max(pwrss, np.finfo(float).tiny * max(1.0, abs(ytWy)))
    dof = n - p if reml else n
    sigma2 = pwrss / dof
    dev = dof * (LOG_2PI + np.log(sigma2)) + logdet_M + dof
    if reml:
        dev += logdet_F
    state = ProfiledState(
        loglik=-0.5 * float(dev), beta=beta, sigma2=float(sigma2), pwrss=float(pwrss), u=u,
        Minv=Minv, MinvE=MinvE, FtWF=FtWF, logdet_M=logdet_M, lam=lam, n=n, reml=bool(reml),
    )
    if not grad:
        return state, None

    Ztr = Zty - (ZtF @ beta if p else 0.0)                          # (N, q)  Z'r
    ZWr = Ztr - _mv(AL, u)                                          # (N, q)  Z'W r
    g = (ZWr.T @ u) / sigma2 - _sum_nt(AL, np.swapaxes(Minv, -1, -2))
    if reml and p:
        ZWF = ZtF - AL @ MinvE                                      # (N, q, p)  Z'W F
        T = ZWF @ _spd_inverse(FtWF)
        g = g + _sum_nt(T, MinvE)
    return state, g


def profiled_loglik(stats: SufficientStats, theta: np.ndarray, structure: CovarianceStructure,
                    reml: bool) -> float:
    """Profiled ML / REML log-likelihood at ``theta`` (see :func:`evaluate`)."""
    return evaluate(stats, structure.lam(theta), reml)[0].loglik


def profiled_loglik_grad(stats: SufficientStats, theta: np.ndarray, structure: CovarianceStructure,
                         reml: bool) -> tuple[float, np.ndarray]:
    """Profiled log-likelihood and its analytic gradient w.r.t. ``theta`` (n_theta,)."""
    state, g = evaluate(stats, structure.lam(theta), reml, grad=True)
    return state.loglik, structure.grad_theta(g)


def scale_random_design(stats: SufficientStats, d: np.ndarray) -> SufficientStats:
    """Statistics of the rescaled random design ``Z D^{-1}`` (``D = diag(d)``), shape-preserving.

    With ``Z~ = Z D^{-1}`` the model is unchanged when ``Lambda~ = D Lambda`` (still lower
    triangular); fitting on unit-scale columns conditions the optimisation.
    """
    inv = 1.0 / np.asarray(d, dtype=float)
    return SufficientStats(
        n_obs=stats.n_obs,
        yty=stats.yty,
        Xty=stats.Xty * inv,
        XtX=stats.XtX * inv[:, None] * inv[None, :],
        Fty=stats.Fty,
        FtF=stats.FtF,
        XtF=stats.XtF * inv[:, None],
    )


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
) -> ProfiledFit:
    """Maximise the profiled ML / REML likelihood over ``theta`` with L-BFGS-B (analytic gradient).

    The random design is rescaled to unit root-mean-square columns first (an
    equivalent parametrisation), L-BFGS-B runs from ``Lambda = I`` (or ``theta0``)
    with diagonal entries bounded below by zero, is restarted from its own
    solution (fresh curvature memory) while that still improves the fit -- from a
    column-reflected solution where it stopped at a spurious point on the bound
    (see :func:`reflect_boundary_columns`) -- and falls back to bounded Nelder-Mead
    (then one more L-BFGS-B polish) if it does not reach a small projected gradient.

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
            ll, g = profiled_loglik_grad(sstats, th, structure, reml)
        except np.linalg.LinAlgError:  # the fixed effects are not identified at this theta: a wall
            return _WALL, np.zeros_like(th)
        return -ll / n, -g / n

    def fval(th: np.ndarray) -> float:
        nonlocal n_eval
        n_eval += 1
        try:
            return -profiled_loglik(sstats, th, structure, reml) / n
        except np.linalg.LinAlgError:
            return _WALL

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
        start = best_th
        for run in range(1 + n_restarts):
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
        if pgnorm(best_th) >= gtol:
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
    state, _ = evaluate(stats, lam, reml)
    msg = "converged" if converged else f"projected gradient {gn:.2e} above tolerance {gtol:.1e}"
    return ProfiledFit(theta=theta, state=state, n_iter=n_iter, n_eval=n_eval, converged=converged,
                       grad_norm=gn, message=msg, history=history)

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


_MU_FACTOR = 0.01
_WARM = {"mu0": 1e-6, "floor": 1e-4}  # barrier start from a nearby solution (see _gamma_newton)
_WARM_FULL = _WARM  # (mu0 = 1e-8 for the full data took 4x more iterations at 100,000 subjects)
_SUBSET_MIN = 1000  # smallest subset of subjects in the warm start of fit_profiled
_WALL = 1e10  # objective where the profiled likelihood is undefined (singular fixed-effect information)


def _spd_inverse(a: np.ndarray) -> np.ndarray:
    chol = np.linalg.cholesky(a)
    li = np.linalg.inv(chol)
    return li.T @ li


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
    state, g, _ = _evaluate(stats, lam, reml, grad=grad, hess=False)
    return state, g


def _evaluate(stats: SufficientStats, lam: np.ndarray, reml: bool, grad: bool, hess: bool):
    """:func:`evaluate`, plus (``hess=True``) what :func:`_newton_model` needs.

    The per-subject products with the fixed ``Lambda`` are single matrix products over the
    stacked (N q, q) rows (one BLAS call each) rather than N batched q x q products.
    """
    A, Zty, ZtF = stats.XtX, stats.Xty, stats.XtF
    n = int(stats.n_obs.sum())
    N, q = A.shape[0], A.shape[-1]
    p = stats.FtF.shape[-1]
    lam = np.asarray(lam, dtype=float)

    AL = (A.reshape(N * q, q) @ lam).reshape(N, q, q)               # (N, q, q)  Z'Z Lambda
    # M_i = Lambda' A_i Lambda + I; A_i symmetric, so M_i = (A_i Lambda)' Lambda, built batch-last
    M_soa = np.tensordot(lam, AL, axes=([0], [1])).transpose(0, 2, 1)  # (q, q, N)
    M_soa = np.ascontiguousarray(M_soa)
    M_soa[np.arange(q), np.arange(q)] += 1.0
    chol = cholesky_soa(M_soa)
    logdet_M = 2.0 * float(np.log(np.diagonal(chol, axis1=0, axis2=1)).sum())
    Minv = inv_from_chol_soa(chol)                                  # (N, q, q)
    del chol, M_soa
    cy = Zty @ lam                                                  # (N, q)     Lambda'Z'y
    Minv_cy = _mv(Minv, cy)
    if p:
        E = np.tensordot(lam, ZtF, axes=([0], [1])).transpose(1, 0, 2)  # (N, q, p)  Lambda'Z'F
        MinvE = Minv @ E
    else:
        E = MinvE = np.zeros((N, q, 0))

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
    del E
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
        return state, None, None

    Ztr = Zty - (ZtF @ beta if p else 0.0)                          # (N, q)  Z'r
    ZWr = Ztr - _mv(AL, u)                                          # (N, q)  Z'W r
    ALMinv = AL @ Minv                                              # (N, q, q)  = K_i Lambda (Minv symmetric)
    g = (ZWr.T @ u) / sigma2 - ALMinv.sum(axis=0)
    ZWF = T = None
    if (reml or hess) and p:
        ZWF = ZtF - AL @ MinvE                                      # (N, q, p)  Z'W F
    if reml and p:
        T = ZWF @ _spd_inverse(FtWF)
        g = g + _sum_nt(T, MinvE)
    if not hess:
        return state, g, None
    # K_i = Z_i'W_i Z_i = A_i - (A_i Lambda M_i^{-1}) (A_i Lambda)'
    K = A - ALMinv @ np.swapaxes(AL, 1, 2)
    Gm = 0.5 * ((ZWr.T @ ZWr) / sigma2 - K.sum(axis=0))            # dl / d(Lambda Lambda')
    if T is not None:
        Gm = Gm + 0.5 * _sum_nt(T, ZWF)
    extra = {"K": K, "L": ALMinv, "Minv": Minv, "G": 0.5 * (Gm + Gm.T), "dof": dof, "u": u, "v": ZWr,
             "sigma2": sigma2, "ZWF": ZWF, "MinvE": MinvE, "FtWF": FtWF}
    return state, g, extra


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_i a_i[w, x] b_i[y, z]`` for stacks a, b (N, q, q) -> (q, q, q, q), one matrix product."""
    N, q = a.shape[0], a.shape[-1]
    return (a.reshape(N, q * q).T @ b.reshape(N, q * q)).reshape(q, q, q, q)


def _newton_model(extra: dict, lam: np.ndarray, structure: CovarianceStructure) -> np.ndarray:
    """Hessian of ``-loglik`` (ML, ``beta`` and ``sigma^2`` profiled out) in ``theta``, (n_theta, n_theta).

    With ``Gamma = Lambda Lambda'`` (the relative covariance), ``K_i = Z_i'W_i Z_i``, ``v_i = Z_i'W_i r_i``
    and ``u_i = Lambda' v_i``, the second derivative of ``-l`` along ``dGamma`` (``sigma^2`` and ``beta`` held)
    is ``-1/2 sum_i tr(K_i dGamma K_i dGamma) + sum_i v_i'dGamma K_i dGamma v_i / sigma^2``. A parameter at
    entry (r, c) of ``Lambda`` moves ``Gamma`` by ``D = e_r l_c' + l_c e_r'`` (``l_c`` column c of Lambda);
    with ``L_i = K_i Lambda`` and ``P_i = Lambda'K_i Lambda = I - M_i^{-1}`` every term is a sum over the
    subjects of products of two entries of small per-subject matrices, i.e. an entry of a Gram matrix
    (one BLAS call each, :func:`_gram`). Profiling ``sigma^2`` and ``beta`` out subtracts their Schur
    complements. ``Gamma`` is quadratic in Lambda, which adds ``-2 G[r, s] [c == d]``
    (``G = dl/dGamma``); that term curves the objective where a column of Lambda is zero
    (a boundary fit). For REML the same matrix (with REML's ``G`` and degrees of freedom) is used
    as the curvature model: the gradient is exact, the curvature misses REML's ``log|F'WF|`` term.
    """
    K, L, Minv, G, dof = extra["K"], extra["L"], extra["Minv"], extra["G"], extra["dof"]
    u, v, s2 = extra["u"], extra["v"], extra["sigma2"]
    N, q = K.shape[0], K.shape[-1]
    r, c = structure.rows, structure.cols
    R, C = r[:, None], c[:, None]          # entry e (rows of H)
    Rf, Cf = r[None, :], c[None, :]        # entry f (columns of H)
    eye = np.eye(q)
    P = eye - Minv
    uu = u[:, :, None] * u[:, None, :]
    vv = v[:, :, None] * v[:, None, :]
    uv = u[:, :, None] * v[:, None, :]
    LL = _gram(L, L)
    KX = _gram(K, P - uu / s2)                                      # sum_i K[a, b] (P - u u'/s2)[c, d]
    VP = _gram(vv, P)
    UVL = _gram(uv, L)
    H = -LL[R, Cf, Rf, C] - KX[R, Rf, C, Cf] + (VP[R, Rf, C, Cf] + UVL[C, Rf, R, Cf] + UVL[Cf, R, Rf, C]) / s2
    UV = uv.sum(axis=0)                                             # [c, r] = sum_i u_c v_r
    w = UV[c, r]
    H = H - 2.0 * np.outer(w, w) / (dof * s2 * s2)                  # sigma^2 profiled out
    if extra["ZWF"] is not None:                                    # beta profiled out
        ZWF, MinvE = extra["ZWF"], extra["MinvE"]
        C1 = np.einsum("nrp,nc->rcp", ZWF, u)
        C2 = np.einsum("ncp,nr->rcp", MinvE, v)
        ce = (C1[r, c] + C2[r, c]) / s2                             # (m, p)
        H = H - s2 * ce @ np.linalg.solve(extra["FtWF"], ce.T)
    H = H - 2.0 * G[R, Rf] * (C == Cf)
    S = np.zeros((r.size, structure.n_theta))
    S[np.arange(r.size), structure.which] = 1.0
    H = S.T @ H @ S
    return 0.5 * (H + H.T)


def _gamma_hessian(extra: dict, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Hessian of ``-loglik`` (ML, ``beta`` and ``sigma^2`` profiled out) in the lower-triangle entries
    ``gamma`` (positions ``rows``, ``cols``) of the relative covariance ``Gamma = Lambda Lambda'``.

    Entry e moves ``Gamma`` by ``D_e = e_r e_c' + e_c e_r'`` (``e_r e_r'`` on the diagonal). With
    ``K_i = Z_i'W_i Z_i`` and ``v_i = Z_i'W_i r_i`` the second derivative of ``-l`` along ``D_e, D_f``
    (``sigma^2``, ``beta`` held) is ``-1/2 sum_i tr(K_i D_e K_i D_f) + sum_i v_i'D_e K_i D_f v_i / sigma^2``:
    sums over the subjects of products of two entries, i.e. entries of Gram matrices
    (:func:`_gram`, one BLAS call each). Profiling ``sigma^2`` and ``beta`` out subtracts their
    Schur complements. For REML it is used as the curvature model (the gradient is exact).
    """
    K, v, s2, dof = extra["K"], extra["v"], extra["sigma2"], extra["dof"]
    vv = v[:, :, None] * v[:, None, :]
    KK = _gram(K, K)                                                # [a, b, c, d] = sum_i K[a, b] K[c, d]
    VVK = _gram(vv, K)                                              # sum_i v_a v_b K[c, d]
    VV = vv.sum(axis=0)
    m = rows.size
    halves = [(rows, cols, np.ones(m)), (cols, rows, (rows != cols).astype(float))]  # D_e = sum of e_a e_b'
    H = np.zeros((m, m))
    hs = np.zeros(m)
    for a, b, wa in halves:
        hs += wa * VV[a, b]
        for x, y, wx in halves:
            A_, B_, X_, Y_ = a[:, None], b[:, None], x[None, :], y[None, :]
            # tr(K e_a e_b' K e_x e_y') = K[y, a] K[b, x];  v'e_a e_b' K e_x e_y' v = v_a K[b, x] v_y
            H += np.outer(wa, wx) * (-0.5 * KK[Y_, A_, B_, X_] + VVK[A_, Y_, B_, X_] / s2)
    H -= np.outer(hs, hs) / (2.0 * dof * s2 * s2)                   # sigma^2 profiled out
    if extra["ZWF"] is not None:                                    # beta profiled out
        Cz = np.einsum("nap,nb->abp", extra["ZWF"], v)
        ce = sum(wa[:, None] * Cz[a, b] for a, b, wa in halves) / s2
        H -= s2 * ce @ np.linalg.solve(extra["FtWF"], ce.T)
    return 0.5 * (H + H.T)


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
        if evaluate(st, cand, reml)[0].loglik >= evaluate(st, lam, reml)[0].loglik:
            return cand
    except np.linalg.LinAlgError:
        pass
    return lam


def _usable(stats: SufficientStats, lam: np.ndarray, reml: bool) -> bool:
    """The likelihood can be evaluated at ``lam`` (finite; the fixed effects identified there)."""
    try:
        with np.errstate(all="ignore"):
            return bool(np.isfinite(evaluate(stats, lam, reml)[0].loglik)) and bool(np.all(np.isfinite(lam)))
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
    largest (at least ``floor``) to begin inside the cone.

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
            return -evaluate(st, lam, reml)[0].loglik / nobs - 2.0 * mu * float(np.log(np.diag(lam)).sum())
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
        for _ in range(40):
            lam_t = chol(gam0 + t * D)
            if lam_t is not None:
                f_t = value(lam_t, mu_)
                n_eval += 1
                if f_t <= f0 - 1e-4 * t * dec:
                    t_last[0] = t
                    return lam_t
            t *= 0.5
        return None

    while n_iter < max_iter:
        try:
            state, _, extra = _evaluate(st, lam, reml, grad=True, hess=True)
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
        grad_l = -np.where(off, 2.0, 1.0) * G[rows, cols] / nobs
        H_l = _gamma_hessian(extra, rows, cols) / nobs
        H_b = np.zeros_like(H_l)
        for a, b_, wa in halves:
            for x, y, wx in halves:
                H_b += np.outer(wa, wx) * gi[y[None, :], a[:, None]] * gi[b_[:, None], x[None, :]]
        grad_b = -np.where(off, 2.0, 1.0) * gi[rows, cols]
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

    def make_fun_hess(st: SufficientStats):
        nobs = max(int(st.n_obs.sum()), 1)

        def fun_hess(th: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
            nonlocal n_eval
            n_eval += 1
            lam = structure.lam(th)
            try:
                state, g, extra = _evaluate(st, lam, reml, grad=True, hess=True)
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
                sizes = []
                m = N // 10
                while m >= _SUBSET_MIN:
                    sizes.append(m)
                    m //= 10
                perm = np.random.default_rng(0).permutation(N)
                for m in reversed(sizes):
                    sub = sstats.subset(np.sort(perm[:m]))
                    if use_gamma:
                        warm = len(history) > 0
                        lam_s, it_s, _ = _gamma_newton(sub, structure, reml, structure.lam(th_start), max_iter,
                                                       **(_WARM if warm else {}))
                        th_start = structure.theta_from_lam(lam_s)
                        history.append((f"Gamma-Newton on {m} subjects ({it_s} iterations)",
                                        float(evaluate(sub, lam_s, reml)[0].loglik)))
            if use_gamma:
                warm = len(history) > 0
                lam_g, it_g, ev_g = _gamma_newton(sstats, structure, reml, structure.lam(th_start), max_iter,
                                                  **(_WARM_FULL if warm else {}))
                n_iter += it_g
                n_eval += ev_g
                lam_g = _drop_barrier_eigenvalues(sstats, lam_g, reml)
                th_start = structure.theta_from_lam(lam_g)
                history.append((f"Gamma-Newton ({it_g} iterations)", float(evaluate(sstats, lam_g, reml)[0].loglik)))
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
        newton_done = ok_n and pgnorm(best_th) < gtol
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
                            n_restarts=n_restarts, rescale=rescale, newton=False)
    msg = "converged" if converged else f"projected gradient {gn:.2e} above tolerance {gtol:.1e}"
    return ProfiledFit(theta=theta, state=state, n_iter=n_iter, n_eval=n_eval, converged=converged,
                       grad_norm=gn, message=msg, history=history)

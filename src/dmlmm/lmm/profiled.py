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

Maximising it (Newton phases, then L-BFGS-B where needed) is :mod:`dmlmm.lmm.optimise`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._linalg import cholesky_soa, inv_from_chol_soa
from ..sufficient import SufficientStats
from ..expfam import LOG_2PI
from .structure import CovarianceStructure

__all__ = ["ProfiledState", "evaluate", "profiled_loglik", "profiled_loglik_grad", "scale_random_design"]


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

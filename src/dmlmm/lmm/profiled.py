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

import weakref
from dataclasses import dataclass

import numpy as np

from .._linalg import cholesky_soa, inv_from_chol_soa, row_chunks
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
    (``u``, ``Minv`` and ``MinvE`` are None in a state evaluated with ``keep=False``.)
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


def evaluate(stats: SufficientStats, lam: np.ndarray, reml: bool, grad: bool = False, keep: bool = True
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
    keep : bool
        Keep the per-subject arrays ``u``, ``Minv``, ``MinvE`` in the state (else None: for an
        evaluation whose log-likelihood or gradient alone is wanted).

    Returns
    -------
    state : ProfiledState
    grad_lam : (q, q) or None
    """
    state, g, _ = _evaluate(stats, lam, reml, grad=grad, hess=False, keep=keep)
    return state, g


def _evaluate(stats: SufficientStats, lam: np.ndarray, reml: bool, grad: bool, hess: bool | str,
              keep: bool = True, at_sigma2: float | None = None):
    """:func:`evaluate`, plus (``hess``) the sums over subjects that a Newton step's curvature needs.

    Parameters
    ----------
    hess : False, "gamma" for :func:`_gamma_hessian`, "theta" for :func:`_newton_model`.
    keep : bool
        Keep the per-subject arrays of the state (``u``, ``Minv``, ``MinvE``); False for an
        evaluation whose log-likelihood alone is wanted (they are then None).
    at_sigma2 : float, optional
        Residual variance at which the gradient and the curvature sums are taken (default: the
        profiled one, ``state.sigma2``). With another value the gradient is that of the
        likelihood at ``Lambda`` and this fixed ``sigma^2`` (beta still profiled), which is what
        :mod:`dmlmm.lmm.collapsed` needs; ``state`` is unchanged.

    The subjects are taken in chunks of :data:`_CHUNK`, each fully batched: the (chunk, q, q)
    temporaries stay in cache and the allocator recycles them (whole-data temporaries of
    N x q x q doubles were mapped afresh, page by page, at every evaluation: most of the time at
    100,000 subjects). A first pass gives the sums that ``beta`` and ``sigma^2`` need; a second
    (gradient, curvature) uses them.
    """
    A, Zty, ZtF = stats.XtX, stats.Xty, stats.XtF
    n = int(stats.n_obs.sum())
    N, q = A.shape[0], A.shape[-1]
    p = stats.FtF.shape[-1]
    lam = np.asarray(lam, dtype=float)
    A_soa = _batch_last_xtx(stats)
    store = keep or bool(grad) or bool(hess)  # the second pass reads M_i^{-1} and M_i^{-1} E_i
    Minv = np.empty((N, q, q)) if store else None
    MinvE = np.empty((N, q, p)) if store else None
    Minv_cy = np.empty((N, q))
    logdet_M = 0.0
    cy_Minv_cy = 0.0
    FtWF = stats.FtF.sum(axis=0)
    FtWy = stats.Fty.sum(axis=0)
    diag = np.arange(q)
    for a, b in row_chunks(N, _CHUNK):
        # M_i = Lambda' A_i Lambda + I batch-last (q, q, n): (Lambda' A[c])[b, i] = (A_i Lambda)[c, b]
        M_soa = (lam.T @ np.matmul(lam.T, A_soa[:, :, a:b]).reshape(q, -1)).reshape(q, q, b - a)
        M_soa[diag, diag] += 1.0
        chol = cholesky_soa(M_soa)
        logdet_M += 2.0 * float(np.log(np.diagonal(chol, axis1=0, axis2=1)).sum())
        Minv_c = inv_from_chol_soa(chol)                            # (n, q, q)
        cy = Zty[a:b] @ lam                                         # Lambda'Z'y
        Minv_cy[a:b] = _mv(Minv_c, cy)
        cy_Minv_cy += float(np.vdot(cy, Minv_cy[a:b]))
        if p:
            E = np.matmul(lam.T, ZtF[a:b])                          # (n, q, p) Lambda'Z'F
            MinvE_c = Minv_c @ E
            FtWF = FtWF - _sum_tn(E, MinvE_c)
            FtWy = FtWy - E.reshape(-1, p).T @ Minv_cy[a:b].reshape(-1)
            if store:
                MinvE[a:b] = MinvE_c
        if store:
            Minv[a:b] = Minv_c

    ytWy = float(stats.yty.sum() - cy_Minv_cy)
    if p:
        FtWF = 0.5 * (FtWF + FtWF.T)
        cholF = np.linalg.cholesky(FtWF)
        beta = np.linalg.solve(cholF.T, np.linalg.solve(cholF, FtWy))
        logdet_F = 2.0 * float(np.log(np.diag(cholF)).sum())
        pwrss = ytWy - float(beta @ FtWy)
    else:
        FtWF = np.zeros((0, 0))
        beta = np.zeros(0)
        logdet_F = 0.0
        pwrss = ytWy
    u = None
    if store:
        u = Minv_cy - MinvE @ beta if p else Minv_cy
    pwrss = max(pwrss, np.finfo(float).tiny * max(1.0, abs(ytWy)))
    dof = n - p if reml else n
    sigma2 = pwrss / dof
    dev = dof * (LOG_2PI + np.log(sigma2)) + logdet_M + dof
    if reml:
        dev += logdet_F
    state = ProfiledState(
        loglik=-0.5 * float(dev), beta=beta, sigma2=float(sigma2), pwrss=float(pwrss),
        u=u if keep else None, Minv=Minv if keep else None, MinvE=MinvE if keep else None,
        FtWF=FtWF, logdet_M=logdet_M, lam=lam, n=n, reml=bool(reml),
    )
    if not grad:
        return state, None, None

    kind = hess
    if at_sigma2 is not None:
        sigma2 = float(at_sigma2)
    FtWF_inv = _spd_inverse(FtWF) if (reml and p) else None
    g = np.zeros((q, q))
    vv_sum = np.zeros((q, q))                                        # sum_i v_i v_i'
    K_sum = np.zeros((q, q))
    T_ZWF = np.zeros((q, q))
    sums = _CurvatureSums(q, p, kind)
    for a, b in row_chunks(N, _CHUNK):
        u_c, Minv_c, MinvE_c = u[a:b], Minv[a:b], MinvE[a:b]
        AL = (A[a:b].reshape(-1, q) @ lam).reshape(b - a, q, q)     # Z'Z Lambda
        Ztr = Zty[a:b] - (ZtF[a:b] @ beta if p else 0.0)            # Z'r
        v = Ztr - _mv(AL, u_c)                                      # Z'W r
        ALMinv = AL @ Minv_c                                        # K_i Lambda (M^{-1} symmetric)
        g += (v.T @ u_c) / sigma2 - ALMinv.sum(axis=0)
        ZWF = ZtF[a:b] - AL @ MinvE_c if ((reml or kind) and p) else None  # Z'W F
        if FtWF_inv is not None:
            T = ZWF @ FtWF_inv
            g += _sum_nt(T, MinvE_c)
        if not kind:
            continue
        K = A[a:b] - ALMinv @ np.swapaxes(AL, 1, 2)                 # K_i = Z_i'W_i Z_i
        vv_sum += v.T @ v
        K_sum += K.sum(axis=0)
        if FtWF_inv is not None:
            T_ZWF += _sum_nt(T, ZWF)
        sums.add(K=K, L=ALMinv, Minv=Minv_c, MinvE=MinvE_c, u=u_c, v=v, ZWF=ZWF, sigma2=sigma2)
    if not kind:
        return state, g, None
    Gm = 0.5 * (vv_sum / sigma2 - K_sum) + 0.5 * T_ZWF              # dl / d(Lambda Lambda')
    extra = {"G": 0.5 * (Gm + Gm.T), "dof": dof, "sigma2": sigma2, "FtWF": FtWF, "p": p, **sums.t}
    return state, g, extra


#: Subjects per chunk in :func:`_evaluate` (about 3 MB per (chunk, 10, 10) temporary).
_CHUNK = 4096


class _CurvatureSums:
    """Sums over subjects (Gram matrices, :func:`_gram`) that a curvature model needs, added chunk by chunk.

    ``kind`` "gamma": :func:`_gamma_hessian`'s; "theta": :func:`_newton_model`'s.
    """

    def __init__(self, q: int, p: int, kind: str) -> None:
        self.kind = kind
        z4 = lambda: np.zeros((q, q, q, q))  # noqa: E731
        if kind == "gamma":
            self.t = {"KK": z4(), "VVK": z4(), "VV": np.zeros((q, q)), "Cz": np.zeros((q, q, p))}
        else:
            self.t = {"LL": z4(), "KX": z4(), "VP": z4(), "UVL": z4(), "UV": np.zeros((q, q)),
                      "C1": np.zeros((q, q, p)), "C2": np.zeros((q, q, p))}

    def add(self, *, K, L, Minv, MinvE, u, v, ZWF, sigma2) -> None:
        t = self.t
        vv = v[:, :, None] * v[:, None, :]
        if self.kind == "gamma":
            t["KK"] += _gram_sym(K, K)                              # [a, b, c, d] = sum_i K[a, b] K[c, d]
            t["VVK"] += _gram_sym(vv, K)                            # sum_i v_a v_b K[c, d]
            t["VV"] += vv.sum(axis=0)
            if ZWF is not None:
                t["Cz"] += _gram_vec(ZWF, v)                        # [a, b, p] = sum_i ZWF[a, p] v_b
            return
        P = np.eye(K.shape[-1]) - Minv
        uu = u[:, :, None] * u[:, None, :]
        uv = u[:, :, None] * v[:, None, :]
        t["LL"] += _gram(L, L)
        t["KX"] += _gram(K, P - uu / sigma2)                        # sum_i K[a, b] (P - u u'/s2)[c, d]
        t["VP"] += _gram(vv, P)
        t["UVL"] += _gram(uv, L)
        t["UV"] += uv.sum(axis=0)                                   # [c, r] = sum_i u_c v_r
        if ZWF is not None:
            t["C1"] += _gram_vec(ZWF, u)                            # [r, c, p] = sum_i ZWF[r, p] u_c
            t["C2"] += _gram_vec(MinvE, v).transpose(1, 0, 2)       # [r, c, p] = sum_i MinvE[c, p] v_r


def _gram_vec(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_i a_i[r, p] x_i[c]`` for a (N, q, p), x (N, q) -> (q, q, p) as [r, c, p], one matrix product."""
    N, q, p = a.shape
    return (x.T @ a.reshape(N, q * p)).reshape(q, q, p).transpose(1, 0, 2)


_batch_last: tuple[weakref.ref, np.ndarray] | None = None  # (statistics, their XtX batch-last)


def _batch_last_xtx(stats: SufficientStats) -> np.ndarray:
    """``stats.XtX`` as a contiguous (q, q, N) array, kept for the statistics last asked about.

    An optimiser evaluates the likelihood tens of times on the same statistics, and the copy into
    this layout costs about as much as one product with it. The cache is one (weak reference,
    array) pair, replaced in one assignment (safe under threads) and dropped with the statistics.
    """
    global _batch_last
    cached = _batch_last
    if cached is not None and cached[0]() is stats:
        return cached[1]
    value = np.ascontiguousarray(np.moveaxis(stats.XtX, 0, -1))
    _batch_last = (weakref.ref(stats, _drop_batch_last), value)
    return value


def _drop_batch_last(ref: weakref.ref) -> None:
    global _batch_last
    if _batch_last is not None and _batch_last[0] is ref:
        _batch_last = None


def _gram(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sum_i a_i[w, x] b_i[y, z]`` for stacks a, b (N, q, q) -> (q, q, q, q), one matrix product."""
    N, q = a.shape[0], a.shape[-1]
    return (a.reshape(N, q * q).T @ b.reshape(N, q * q)).reshape(q, q, q, q)


def _gram_sym(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`_gram` for stacks of symmetric matrices: the product over their q (q + 1) / 2 distinct
    entries (a third of the work at q = 10), spread back to (q, q, q, q)."""
    q = a.shape[-1]
    iu, ju = np.triu_indices(q)
    packed = a[:, iu, ju].T @ b[:, iu, ju]                            # (m, m)
    pos = np.zeros((q, q), dtype=int)
    pos[iu, ju] = pos[ju, iu] = np.arange(iu.size)
    return packed[pos[:, :, None, None], pos[None, None, :, :]]


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
    G, dof, s2 = extra["G"], extra["dof"], extra["sigma2"]
    LL, KX, VP, UVL = extra["LL"], extra["KX"], extra["VP"], extra["UVL"]  # Gram sums (_CurvatureSums)
    r, c = structure.rows, structure.cols
    R, C = r[:, None], c[:, None]          # entry e (rows of H)
    Rf, Cf = r[None, :], c[None, :]        # entry f (columns of H)
    H = -LL[R, Cf, Rf, C] - KX[R, Rf, C, Cf] + (VP[R, Rf, C, Cf] + UVL[C, Rf, R, Cf] + UVL[Cf, R, Rf, C]) / s2
    w = extra["UV"][c, r]                                           # UV[c, r] = sum_i u_c v_r
    H = H - 2.0 * np.outer(w, w) / (dof * s2 * s2)                  # sigma^2 profiled out
    if extra["p"]:                                                  # beta profiled out
        ce = (extra["C1"][r, c] + extra["C2"][r, c]) / s2           # (m, p)
        H = H - s2 * ce @ np.linalg.solve(extra["FtWF"], ce.T)
    H = H - 2.0 * G[R, Rf] * (C == Cf)
    S = np.zeros((r.size, structure.n_theta))
    S[np.arange(r.size), structure.which] = 1.0
    H = S.T @ H @ S
    return 0.5 * (H + H.T)


def gamma_entries(G: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The gradient in the free lower-triangle entries (``rows``, ``cols``) of a symmetric matrix from its
    matrix gradient ``G`` (``df = tr(G dGamma)``): an off-diagonal entry moves two places."""
    return np.where(rows != cols, 2.0, 1.0) * G[rows, cols]


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
    s2, dof = extra["sigma2"], extra["dof"]
    KK, VVK, VV = extra["KK"], extra["VVK"], extra["VV"]           # Gram sums (_CurvatureSums)
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
    if extra["p"]:                                                  # beta profiled out
        Cz = extra["Cz"]                                            # [a, b, p] = sum_i (Z'WF)_i[a, p] v_i[b]
        ce = sum(wa[:, None] * Cz[a, b] for a, b, wa in halves) / s2
        H -= s2 * ce @ np.linalg.solve(extra["FtWF"], ce.T)
    return 0.5 * (H + H.T)


def profiled_loglik(stats: SufficientStats, theta: np.ndarray, structure: CovarianceStructure,
                    reml: bool) -> float:
    """Profiled ML / REML log-likelihood at ``theta`` (see :func:`evaluate`)."""
    return evaluate(stats, structure.lam(theta), reml, keep=False)[0].loglik


def profiled_loglik_grad(stats: SufficientStats, theta: np.ndarray, structure: CovarianceStructure,
                         reml: bool) -> tuple[float, np.ndarray]:
    """Profiled log-likelihood and its analytic gradient w.r.t. ``theta`` (n_theta,)."""
    state, g = evaluate(stats, structure.lam(theta), reml, grad=True, keep=False)
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

"""Gaussian and mixture-of-Gaussians priors on the random effects, with full covariances.

Model (K components; K = 1 is the linear mixed model's prior)::

    b_i | c_i = k ~ N(mu_k, Sigma_k),          c_i ~ Categorical(pi),  pi ~ Dirichlet(rho)
    mu_kd ~ N(0, mean_var)                     (or mu_k = 0 with ``zero_mean=True``)
    Sigma_k | a_k ~ IW(nu + D - 1, 2 nu diag(1 / a_k)),  a_kd ~ IG(1/2, 1 / scale^2)

The last line is Huang and Wand's (2013) prior: half-t(nu, scale) marginals on
the standard deviations and, for nu = 2, uniform marginals on correlations.

With a smoothness prior (``roughness`` given: the random effects are in the
Demmler-Reinsch coordinates of the spline basis, see :mod:`dmlmm.priors.smoothing`),
every coordinate d with roughness ``lam_d > 0`` instead has::

    mu_kd ~ N(0, v_k / lam_d)                  (a P-spline on each component's mean curve)
    a_kd | w_k ~ IG(1/2, lam_d / w_k)          (SD of coordinate d: half-t with scale sqrt(w_k / lam_d))

with half-Cauchy priors on sqrt(v_k) and sqrt(w_k); the polynomial coordinates
(lam_d = 0) keep the priors above.

``covariance="pspline"`` (with a smoothness prior) replaces the full covariance by the
subject-specific P-spline's (Ruppert, Wand and Carroll 2003; Durban et al. 2005)::

    Sigma_k = blockdiag(Sigma_k^poly, diag(w_k / lam_d) over the rough coordinates)
    Sigma_k^poly | a_k ~ IW(nu + P - 1, 2 nu diag(1 / a_k)),  a_kd ~ IG(1/2, 1 / scale^2)   (P polynomial coords)

so a subject's deviation from its component's mean curve is a random polynomial (any covariance) plus
a smooth random curve whose roughness is one learned variance w_k: the data cannot inflate the
variance of single rough coordinates, where the full covariance absorbed the noise (sigma^2 0.006
on UTI, 3e-5 on ChickWeight, curves interpolating the visits; docs/models.md). q(w_k) is inverse-gamma
with the same half-Cauchy auxiliary.

Variational factors: q(pi) Dirichlet, q(mu_k) Gaussian, q(Sigma_k) inverse-Wishart,
q(a_kd), q(v_k), q(w_k) and their auxiliaries inverse-gamma; all updates closed form.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .._linalg import sym
from ..expfam import (
    LOG_2PI,
    Dirichlet,
    Gaussian,
    InvGamma,
    InvWishart,
    blend,
    gaussian_entropy,
)
from ..accel import ascend
from .base import PathMoments, PathPrior, PointMixture, RandomEffectsPrior
from .huang_wand import hw_aux_target, hw_cov_target, hw_elbo_terms
from .smoothing import ScaleFactor, init_scale, rough_mask, scale_elbo, update_scale

__all__ = ["GaussianMixturePrior", "GaussianMixtureParams"]


@dataclass(frozen=True)
class GaussianMixtureParams:
    """Variational parameters of the (mixture of) Gaussian prior(s), stacked over K components."""

    weights: Dirichlet  # alpha (K,)
    mean: Gaussian | None  # precision (K, D, D), shift (K, D); None when zero_mean
    cov: InvWishart  # df (K,), scale (K, D, D)
    cov_aux: InvGamma  # (K, D)
    mean_smooth: ScaleFactor | None = None  # (K,) v_k, the mean curves' smoothing variances
    cov_smooth: ScaleFactor | None = None  # (K,) w_k, the covariances' smoothing variances


def _canonical_index(x: np.ndarray) -> np.ndarray:
    """An order of the rows of ``x`` (N, D) that depends neither on their given order nor on their signs:
    by norm, then lexicographically by absolute values (rounded to 10 digits)."""
    keys = np.round(np.abs(x), 10).T[::-1]
    return np.lexsort(np.vstack([keys, np.round(np.sqrt((x**2).sum(axis=1)), 10)]))


def canonical_order(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (N, D) in an order free of their given order and of the sign of the data."""
    return x[_canonical_index(x)]


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 50) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns labels (N,). Vectorised over points.

    Points are processed in a canonical (lexicographic) order, so the result does not
    depend on the order of the subjects.
    """
    order = _canonical_index(x)
    labels = np.empty(len(x), dtype=int)
    labels[order] = _kmeans_sorted(x[order], k, rng, n_iter)
    return labels


def _kmeans_sorted(x: np.ndarray, k: int, rng: np.random.Generator, n_iter: int) -> np.ndarray:
    n = x.shape[0]
    k = min(k, n)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = ((x - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):  # seeding: one pass per centre, not per point
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centers[j] = x[rng.choice(n, p=p)]
        d2 = np.minimum(d2, ((x - centers[j]) ** 2).sum(axis=1))
    labels = np.zeros(n, dtype=int)
    for _ in range(n_iter):
        dist = ((x[:, None, :] - centers[None]) ** 2).sum(axis=2)
        new = dist.argmin(axis=1)
        counts = np.bincount(new, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, new, x)
        empty = counts == 0
        centers = np.where(empty[:, None], centers, sums / np.maximum(counts, 1)[:, None])
        if empty.any():  # re-seed empty clusters at the farthest points
            far = np.argsort(dist.min(axis=1))[::-1][: empty.sum()]
            centers[empty] = x[far]
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
    return labels


class GaussianMixturePrior(RandomEffectsPrior):
    """Mixture of K full-covariance Gaussians (K = 1: the LMM's Gaussian prior).

    Parameters
    ----------
    dim : int
        Random-effects dimension D.
    n_components : int
    zero_mean : bool
        Fix mu = 0 (random effects centred; the population mean lives in the fixed effects).
    concentration : float
        Symmetric Dirichlet parameter rho of the weights.
    mean_var : float
        Prior variance of the component means (standardised scale).
    cov_df : float
        Huang-Wand nu (2: uniform correlations).
    cov_scale : float
        Huang-Wand half-t scale of the random-effect standard deviations (standardised scale).
    roughness : (D,) array, optional
        Roughness of each coordinate (Demmler-Reinsch eigenvalues, 0 on the polynomial null
        space): switches the smoothness prior on. None: no smoothness prior.
    smooth_scale : float
        Half-Cauchy scale of the square roots of the smoothing variances v_k and w_k.
    covariance : {"full", "pspline"}
        "full": Huang-Wand inverse-Wishart over all coordinates; "pspline" (needs ``roughness``):
        inverse-Wishart over the polynomial coordinates only, ``w_k / lam_d`` on the rough ones
        (module docstring). In ``q(Sigma_k)`` (``params.cov``, ``params.cov_aux``) the matrices are
        then P x P.
    """

    def __init__(
        self,
        dim: int,
        n_components: int = 1,
        zero_mean: bool = False,
        concentration: float = 0.5,
        mean_var: float = 100.0,
        cov_df: float = 2.0,
        cov_scale: float = 2.5,
        roughness: np.ndarray | None = None,
        smooth_scale: float = 1.0,
        covariance: str = "full",
    ) -> None:
        if covariance not in ("full", "pspline"):
            raise ValueError(f"covariance must be 'full' or 'pspline', got {covariance!r}")
        self.dim = int(dim)
        self.n_components = int(n_components)
        self.zero_mean = zero_mean
        self.concentration = float(concentration)
        self.mean_var = float(mean_var)
        self.cov_df = float(cov_df)
        self.cov_scale = float(cov_scale)
        self.roughness = None if roughness is None else np.asarray(roughness, dtype=float)
        self.smooth_scale = float(smooth_scale)
        self._rough = rough_mask(self.roughness, self.dim)
        self._lam = np.where(self._rough, self.roughness if self.roughness is not None else 0.0, 0.0)
        if covariance == "pspline" and not self.smooth:
            raise ValueError("covariance='pspline' needs a smoothness prior (roughness with positive entries)")
        self.covariance = covariance
        self._pspline = covariance == "pspline"
        #: coordinates of the inverse-Wishart block: all, or the polynomial ones under "pspline"
        self._iw_idx = np.flatnonzero(~self._rough) if self._pspline else np.arange(self.dim)

    def _settings(self) -> dict:
        return dict(zero_mean=self.zero_mean, concentration=self.concentration, mean_var=self.mean_var,
                    cov_df=self.cov_df, cov_scale=self.cov_scale, roughness=self.roughness,
                    smooth_scale=self.smooth_scale, covariance=self.covariance)

    @property
    def smooth(self) -> bool:
        return bool(self._rough.any())

    @property
    def n_paths(self) -> int:
        return self.n_components

    def path_components(self) -> np.ndarray:
        return np.arange(self.n_components)[:, None]

    @property
    def _df0(self) -> float:
        return self.cov_df + len(self._iw_idx) - 1.0

    def _block(self, a: np.ndarray) -> np.ndarray:
        """The inverse-Wishart block of (K, D, D) matrices, (K, P, P) (all of them unless "pspline")."""
        i = self._iw_idx
        return a if len(i) == self.dim else a[:, i[:, None], i[None, :]]

    def _blockdiag(self, block: np.ndarray, rough_diag: np.ndarray) -> np.ndarray:
        """Under "pspline": (K, D, D) from the inverse-Wishart block (K, P, P) and the rough coordinates'
        diagonal (K, n_rough), zero between them."""
        i, rough = self._iw_idx, np.flatnonzero(self._rough)
        full = np.zeros((self.n_components, self.dim, self.dim))
        full[:, i[:, None], i[None, :]] = block
        full[:, rough, rough] = rough_diag
        return full

    def _cov_expectations(self, params: GaussianMixtureParams) -> tuple[np.ndarray, np.ndarray]:
        """E[Sigma_k^{-1}] (K, D, D) and E[log |Sigma_k^{-1}|] (K,)."""
        e_prec, e_logdet_prec, _ = params.cov.expectations()
        if not self._pspline:
            return e_prec, e_logdet_prec
        lam, w = self._lam[self._rough], params.cov_smooth.var
        full = self._blockdiag(e_prec, lam[None, :] * w.mean_inv[:, None])
        return full, e_logdet_prec + np.sum(np.log(lam)) - len(lam) * w.mean_log

    def _cov_mean(self, params: GaussianMixtureParams) -> np.ndarray:
        """E[Sigma_k] (K, D, D)."""
        if not self._pspline:
            return params.cov.mean
        return self._blockdiag(params.cov.mean, params.cov_smooth.var.mean[:, None] / self._lam[self._rough][None, :])

    def _rough_stat(self, scatter: np.ndarray) -> np.ndarray:
        """Under "pspline": the statistic of q(w_k), 1/2 sum over rough d of lam_d scatter_kdd, (K,)."""
        return 0.5 * np.diagonal(scatter, axis1=-2, axis2=-1) @ self._lam

    # ------------------------------------------------------------------ init
    def init_params(self, b_hat: np.ndarray, rng: np.random.Generator) -> GaussianMixtureParams:
        b_hat = canonical_order(b_hat)  # the initialisation must not depend on the order of subjects
        K, D = self.n_components, self.dim
        labels = kmeans(b_hat, K, rng) if K > 1 else np.zeros(len(b_hat), dtype=int)
        onehot = np.eye(K)[labels]
        counts = onehot.sum(axis=0)
        means = (onehot.T @ b_hat) / np.maximum(counts, 1)[:, None]
        if self.zero_mean:
            means = np.zeros_like(means)
        resid = b_hat[:, None, :] - means[None]  # (N, K, D)
        covs = np.einsum("nk,nkd,nke->kde", onehot, resid, resid) / np.maximum(counts, 1)[:, None, None]
        overall = np.cov(b_hat.T).reshape(D, D) if len(b_hat) > 1 else np.eye(D)
        ridge = 0.1 * np.trace(overall) / D + 1e-3
        covs = covs + ridge * np.eye(D)
        df = self._df0 + counts
        iw = InvWishart(df, self._block(covs) * df[:, None, None])
        e_prec, _, _ = iw.expectations()
        lam, n_rough = self._lam, int(self._rough.sum())
        cov_smooth = mean_smooth = None
        if self._pspline:  # w_k from the components' rough variances, capped for a smooth start
            cov_smooth = init_scale(counts * n_rough, counts * self._rough_stat(covs), self.smooth_scale)
        elif self.smooth:
            aux = self._aux_update(e_prec, ScaleFactor(InvGamma(np.ones(K), np.ones(K)), InvGamma(np.ones(K), np.ones(K))))
            cov_smooth = init_scale(n_rough, aux.mean_inv @ lam, self.smooth_scale)
        if self.smooth and not self.zero_mean:
            mean_smooth = init_scale(n_rough, 0.5 * (means**2) @ lam, self.smooth_scale)
        aux = self._aux_update(e_prec, cov_smooth)
        mean = None
        if not self.zero_mean:
            e_full, _ = self._cov_expectations(GaussianMixtureParams(None, None, iw, aux, None, cov_smooth))
            prec = self._mean_prior_prec(mean_smooth)[:, :, None] * np.eye(D) + counts[:, None, None] * e_full
            mean = Gaussian(prec, (prec @ means[..., None])[..., 0])
        return GaussianMixtureParams(Dirichlet(self.concentration + counts), mean, iw, aux, mean_smooth, cov_smooth)

    def _aux_rate0(self, cov_smooth: ScaleFactor | None) -> tuple[np.ndarray, np.ndarray]:
        """E[rate] and E[log rate] of the Huang-Wand scales' prior, (K, P) (P = D unless "pspline")."""
        K, P = self.n_components, len(self._iw_idx)
        rate = np.full((K, P), 1.0 / self.cov_scale**2)
        log_rate = np.log(rate)
        if cov_smooth is not None and not self._pspline:
            lam = np.where(self._rough, self._lam, 1.0)
            rate = np.where(self._rough, lam * cov_smooth.var.mean_inv[:, None], rate)
            log_rate = np.where(self._rough, np.log(lam) - cov_smooth.var.mean_log[:, None], log_rate)
        return rate, log_rate

    def _aux_update(self, e_prec: np.ndarray, cov_smooth: ScaleFactor | None) -> InvGamma:
        return hw_aux_target(e_prec, self.cov_df, self._aux_rate0(cov_smooth)[0])

    def _mean_prior_prec(self, mean_smooth: ScaleFactor | None) -> np.ndarray:
        """Prior precision of each mean coordinate, (K, D)."""
        prec = np.full((self.n_components, self.dim), 1.0 / self.mean_var)
        if mean_smooth is not None:
            prec = np.where(self._rough, self._lam * mean_smooth.var.mean_inv[:, None], prec)
        return prec

    def _mean_prior_log_var(self, mean_smooth: ScaleFactor | None) -> np.ndarray:
        """E[log prior variance] of each mean coordinate, (K, D)."""
        log_var = np.full((self.n_components, self.dim), np.log(self.mean_var))
        if mean_smooth is not None:
            lam = np.where(self._rough, self._lam, 1.0)
            log_var = np.where(self._rough, mean_smooth.var.mean_log[:, None] - np.log(lam), log_var)
        return log_var

    # ------------------------------------------------------------------ moments of mu
    def _mean_moments(self, params: GaussianMixtureParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        K, D = self.n_components, self.dim
        if params.mean is None:
            return np.zeros((K, D)), np.zeros((K, D, D)), np.zeros(K)
        return params.mean.moments()

    # ------------------------------------------------------------------ engine interface
    def first_means(self, params: GaussianMixtureParams) -> tuple[np.ndarray, np.ndarray] | None:
        if params.mean is None:  # zero_mean: the fixed effects carry the population curve
            return None
        return params.mean.moments()[0], self._mean_prior_prec(params.mean_smooth)

    def translate_first_means(self, params: GaussianMixtureParams, delta: np.ndarray) -> GaussianMixtureParams:
        q = params.mean
        return replace(params, mean=Gaussian(q.precision, q.shift + (q.precision @ delta[..., None])[..., 0]))

    def path_prior(self, params: GaussianMixtureParams) -> tuple[PathPrior, None]:
        e_prec, e_logdet_prec = self._cov_expectations(params)
        m, v, _ = self._mean_moments(params)
        second = v + m[:, :, None] * m[:, None, :]
        const = (
            -0.5 * self.dim * LOG_2PI + 0.5 * e_logdet_prec - 0.5 * np.einsum("kij,kji->k", e_prec, second)
        )
        shift = (e_prec @ m[..., None])[..., 0]
        return PathPrior(params.weights.mean_log, e_prec, shift, const), None

    def update(
        self, params: GaussianMixtureParams, moments: PathMoments, cache: None = None, rho: float = 1.0
    ) -> GaussianMixtureParams:
        D = self.dim
        R, S1, S2 = moments.weight, moments.first, moments.second
        weights = blend(params.weights, Dirichlet(self.concentration + R), rho)
        # q(mu_k) given q(Sigma_k)
        e_prec, _ = self._cov_expectations(params)
        mean, mean_smooth = params.mean, params.mean_smooth
        if mean is not None:
            prior_prec = self._mean_prior_prec(mean_smooth)[:, :, None] * np.eye(D)
            mean = blend(mean, Gaussian(sym(prior_prec + R[:, None, None] * e_prec), (e_prec @ S1[..., None])[..., 0]), rho)
        m, v, _ = self._mean_moments(replace(params, mean=mean))
        if mean_smooth is not None:  # q(v_k) given q(mu_k)
            mu2 = m**2 + np.diagonal(v, axis1=-2, axis2=-1)
            mean_smooth = update_scale(mean_smooth, self._rough.sum(), 0.5 * mu2 @ self._lam, self.smooth_scale, rho)
        # q(Sigma_k) given q(mu_k), q(a_k)
        mm = m[:, :, None] * m[:, None, :]
        scatter = S2 - S1[:, :, None] * m[:, None, :] - m[:, :, None] * S1[:, None, :] + R[:, None, None] * (mm + v)
        cov = blend(params.cov, hw_cov_target(params.cov_aux, self.cov_df, R, self._block(scatter)), rho)
        # q(a_k) given q(Sigma_k), then q(w_k) given q(a_k) (given the rough scatter under "pspline")
        e_prec, _, _ = cov.expectations()
        cov_aux = blend(params.cov_aux, self._aux_update(e_prec, params.cov_smooth), rho)
        cov_smooth = params.cov_smooth
        if self._pspline:
            cov_smooth = update_scale(cov_smooth, R * self._rough.sum(), self._rough_stat(scatter), self.smooth_scale, rho)
        elif cov_smooth is not None:
            cov_smooth = update_scale(cov_smooth, self._rough.sum(), cov_aux.mean_inv @ self._lam, self.smooth_scale, rho)
        return GaussianMixtureParams(weights, mean, cov, cov_aux, mean_smooth, cov_smooth)

    def elbo(self, params: GaussianMixtureParams) -> float:
        total = -float(params.weights.kl_from_symmetric(self.concentration)) if self.n_components > 1 else 0.0
        if params.mean is not None:
            m, v, logdet_v = params.mean.moments()
            mu2 = m**2 + np.diagonal(v, axis1=-2, axis2=-1)
            prec, log_var = self._mean_prior_prec(params.mean_smooth), self._mean_prior_log_var(params.mean_smooth)
            total += float(np.sum(-0.5 * (LOG_2PI + log_var) - 0.5 * prec * mu2) + np.sum(gaussian_entropy(logdet_v, self.dim)))
        for f in (params.mean_smooth, params.cov_smooth):
            if f is not None:
                total += scale_elbo(f, self.smooth_scale)
        rate0, log_rate0 = self._aux_rate0(params.cov_smooth)
        for term in hw_elbo_terms(params.cov, params.cov_aux, self.cov_df, rate0, log_rate0):
            total += term
        return total

    def at_covariance(self, params: GaussianMixtureParams, cov: np.ndarray, count: float) -> GaussianMixtureParams:
        """One mean-zero component: ``q(Sigma)`` after ``count`` subjects with ``E[Sigma^-1]^-1 = cov`` (D, D),
        and the Huang-Wand scales' ``q(a)`` given it (as :meth:`update` leaves them)."""
        if self.n_components != 1 or not self.zero_mean or self._pspline:
            raise ValueError("at_covariance is for the one-component, mean-zero prior with a full covariance")
        df = np.array([self._df0 + float(count)])
        cov = InvWishart(df, df[:, None, None] * sym(np.asarray(cov, dtype=float))[None])
        e_prec, _, _ = cov.expectations()
        return replace(params, cov=cov, cov_aux=self._aux_update(e_prec, params.cov_smooth))

    def empty_component_cost(self, layer: int = 0) -> float:
        """Mean-field gap of one data-free component (see DeepMixturePrior.empty_component_cost)."""
        one = GaussianMixturePrior(self.dim, 1, **self._settings())
        params = one.init_params(np.zeros((2, self.dim)), np.random.default_rng(0))
        zero = PathMoments(np.zeros(1), np.zeros((1, self.dim)), np.zeros((1, self.dim, self.dim)))
        # coordinate ascent of a tiny, data-free problem, extrapolated
        _, best = ascend(lambda p: one.update(p, zero), one.elbo, params)
        return -best

    def point_mixture(self, params: GaussianMixtureParams, integrate_globals: bool = False) -> PointMixture:
        """The prior of b at the variational means; with ``integrate_globals`` the covariance
        also carries the posterior uncertainty of the means, Cov(b | k) = E[Sigma_k] + Cov(mu_k)."""
        m, v, _ = self._mean_moments(params)
        cov = self._cov_mean(params)
        if integrate_globals:
            cov = cov + v
        return PointMixture(params.weights.mean, m, cov)

    def continuation_intensity(self, params: GaussianMixtureParams) -> np.ndarray:
        """Per component, per unit of the penalty: E[v_k], the mean curve's smoothing variance, plus the
        level of the subjects' deviations' fitted spectrum, the median over the rough coordinates d of
        ``lam_d E[Sigma_k,dd]`` (a random walk's spectrum is flat in this form).

        Not the Huang-Wand scale ``E[w_k]``: that is the scale of a half-t prior on each SD, several
        times the variances it yields, and it follows the roughest coordinates, where subjects'
        deviations absorb noise; the continuation past the range is a smooth increment. With it the
        forecasts beyond the training data on the accuracy harness covered 99-100 % of the held-out
        visits with bands up to +-200 hours/week on Blackmore (docs/models.md, "Beyond the basis range").
        """
        total = np.zeros(self.n_paths)
        if params.mean_smooth is not None:
            total = total + params.mean_smooth.var.mean
        if params.cov_smooth is not None:
            rough = self._rough
            spectrum = self._lam[rough] * np.diagonal(self._cov_mean(params), axis1=1, axis2=2)[:, rough]  # (K, n_rough)
            total = total + np.median(spectrum, axis=1)
        return total

    def first_layer_dirichlet(self, params: GaussianMixtureParams) -> tuple[Dirichlet, float]:
        return params.weights, self.concentration

    def layer_counts(self, params: GaussianMixtureParams) -> list[np.ndarray]:
        return [params.weights.alpha - self.concentration]

    def prune(self, params: GaussianMixtureParams, keep: list[np.ndarray]):
        k = np.asarray(keep[0], dtype=bool)
        new = GaussianMixturePrior(self.dim, int(k.sum()), **self._settings())
        return new, _take_components(params, k)


def _take_components(params, keep: np.ndarray):
    """The same parameter container with only the components (leading axis) where ``keep``."""
    from dataclasses import fields, is_dataclass

    vals = {}
    for f in fields(params):
        v = getattr(params, f.name)
        if v is None:
            vals[f.name] = None
        elif is_dataclass(v):
            vals[f.name] = _take_components(v, keep)
        else:
            vals[f.name] = np.asarray(v)[keep]
    return type(params)(**vals)

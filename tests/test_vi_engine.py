"""The variational engine against independent computations: Monte Carlo ELBO, quadrature, monotonicity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as st
from scipy.special import gammaln, logsumexp

from helpers import toy_stats
from dmlmm.sufficient import sufficient_stats
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.inference.engine import (
    VariationalParams,
    VIConfig,
    elbo_globals,
    init_noise_and_fixed,
    noise_moments,
    run_vi,
)
from dmlmm.inference.local import local_step
from dmlmm.models.base import ridge_estimates
from dmlmm.priors.dmfa import DeepMixturePrior
from dmlmm.priors.gaussian import GaussianMixturePrior


_toy_stats = toy_stats


def _start(stats, prior, seed=0, iters=3):
    rng = np.random.default_rng(seed)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=iters, tol=1e-300, prune_threshold=0.0)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = run_vi(stats, prior, params, config, rng)
    return res.params, config


# ----------------------------------------------------------------------------- samplers / densities
def _ig_sample(q, size, rng):
    shape, rate = np.broadcast_arrays(q.shape, q.rate)
    return st.invgamma.rvs(a=shape, scale=rate, size=(size,) + shape.shape, random_state=rng)


def _ig_logpdf(x, shape, rate):
    return shape * np.log(rate) - gammaln(shape) - (shape + 1) * np.log(x) - rate / x


def _iw_diag_logpdf(sig, df, psi_diag):
    """log IW(sig | df, diag(psi_diag)) for a batch: sig (S, p, p), psi_diag (S, p). Written out so that
    40,000 draws need no Python loop; checked against scipy's invwishart on draws in the test that uses it."""
    p = sig.shape[-1]
    _, logdet_sig = np.linalg.slogdet(sig)
    trace = np.einsum("sj,sjj->s", psi_diag, np.linalg.inv(sig))
    log_gamma_p = p * (p - 1) / 4 * np.log(np.pi) + gammaln(df / 2 - np.arange(p) / 2).sum()
    return (df / 2 * np.log(psi_diag).sum(-1) - df * p / 2 * np.log(2) - log_gamma_p
            - (df + p + 1) / 2 * logdet_sig - trace / 2)


def _dir_logpdf(x, alpha):
    return gammaln(alpha.sum(-1)) - gammaln(alpha).sum(-1) + ((alpha - 1) * np.log(x)).sum(-1)


def _mvn_logpdf(x, mean, cov):
    d = x.shape[-1]
    L = np.linalg.cholesky(cov)
    z = np.linalg.solve(L, (x - mean)[..., None])[..., 0]
    return -0.5 * (d * np.log(2 * np.pi) + (z**2).sum(-1)) - np.log(np.diagonal(L, axis1=-2, axis2=-1)).sum(-1)


def _gauss_sample(q, size, rng):
    mean, cov, _ = q.moments()
    L = np.linalg.cholesky(cov)
    z = rng.standard_normal((size,) + mean.shape)
    return mean + np.einsum("...ij,s...j->s...i", L, z), mean, cov


def _sample_dmfa_layers(prior, pp, S, rng):
    """Draws of every DMFA factor and the Monte Carlo value of log p(globals) - log q(globals)."""
    total = np.zeros(S)
    draws = []
    for l, lay in enumerate(pp.layers):
        G, nu2, A2, rho = prior.mean_scale[l], prior.loading_scale[l] ** 2, prior.delta_scale[l] ** 2, prior.concentration[l]
        K = len(lay.weights.alpha)
        pi = rng.dirichlet(lay.weights.alpha, size=S) if K > 1 else np.ones((S, 1))
        if K > 1:
            total += _dir_logpdf(pi, np.full(K, rho)) - _dir_logpdf(pi, lay.weights.alpha)
        theta, mean, cov = _gauss_sample(lay.loadings, S, rng)  # (S, K, J, m+1)
        g = _ig_sample(lay.mean_scale, S, rng)
        tau = _ig_sample(lay.global_scale, S, rng)
        lam = _ig_sample(lay.local_scale, S, rng)
        var = np.concatenate([G * g[..., None], tau[:, :, None, None] * lam], axis=-1)
        total += (-0.5 * np.log(2 * np.pi * var) - 0.5 * theta**2 / var).sum(axis=(1, 2, 3))
        total -= _mvn_logpdf(theta, mean, cov).sum(axis=(1, 2))
        delta = _ig_sample(lay.delta, S, rng)
        h = _ig_sample(lay.delta_aux, S, rng)
        a = _ig_sample(lay.local_aux, S, rng)
        e = _ig_sample(lay.global_aux, S, rng)
        for x, q, shape0, rate0 in (
            (delta, lay.delta, 0.5, 1 / h),
            (h, lay.delta_aux, 0.5, 1 / A2),
            (g, lay.mean_scale, 0.5, 0.5),
            (lam, lay.local_scale, 0.5, 1 / a),
            (a, lay.local_aux, 0.5, 1.0),
            (tau, lay.global_scale, 0.5, 1 / e),
            (e, lay.global_aux, 0.5, 1 / nu2),
        ):
            lp = _ig_logpdf(x, shape0, rate0) - _ig_logpdf(x, q.shape, q.rate)
            total += lp.reshape(S, -1).sum(1)
        draws.append((pi, theta, delta))
    return total, draws


def _sample_noise(params, config, S, rng):
    s2 = _ig_sample(params.noise, S, rng)
    c = _ig_sample(params.noise_aux, S, rng)
    total = _ig_logpdf(s2, 0.5, 1 / c) - _ig_logpdf(s2, params.noise.shape, params.noise.rate)
    total += _ig_logpdf(c, 0.5, 1 / config.noise_scale**2) - _ig_logpdf(c, params.noise_aux.shape, params.noise_aux.rate)
    w, mean, cov = _gauss_sample(params.fixed, S, rng)
    P = len(mean)
    total += (-0.5 * np.log(2 * np.pi * config.fixed_var) * P - 0.5 * (w**2).sum(-1) / config.fixed_var)
    total -= _mvn_logpdf(w, mean, cov)
    return total, s2, w


def _local_elbo_draws(stats, i, loc, pp, cache, draws, paths, s_local, w_mean, w, var, rng, S):
    """Draws (S,) of subject i's log p(y_i, b, z, c | globals) - log q(b, z, c) for the local-ELBO checks.

    ``c`` is drawn from ``loc.resp[i]``, b from the local step's q(b | c) with precision
    ``pp.precision[c] + s_local(c) X'X`` (``s_local(c)``: the noise precision the step used, (S,) or scalar),
    the deeper latents from their optimal q; ``var(c)`` (S,) the residual variance drawn for each draw,
    ``w`` (S, P) fixed-effect draws, ``draws`` the DMFA factors' draws (:func:`_sample_dmfa_layers`; a layer's
    idiosyncratic draws are variances (S, K, J) or full covariances (S, K, J, J)).
    """
    D = stats.dim_random
    c = np.array([rng.choice(len(paths), p=loc.resp[i]) for _ in range(S)])
    s_c = np.broadcast_to(np.asarray(s_local(c), dtype=float), (S,))
    Q = pp.precision[c] + s_c[:, None, None] * stats.XtX[i]
    g = pp.shift[c] + s_c[:, None] * (stats.Xty[i] - stats.XtF[i] @ w_mean)
    cov = np.linalg.inv(Q)
    m = np.einsum("sij,sj->si", cov, g)
    b = m + np.einsum("sij,sj->si", np.linalg.cholesky(cov), rng.standard_normal((S, D)))
    zr_mean = np.einsum("sij,sj->si", cache.A[c], b) + cache.a[c]
    zr = zr_mean + np.einsum("sij,sj->si", np.linalg.cholesky(cache.C[c]), rng.standard_normal((S, cache.a.shape[1])))
    # log p(y_i | b, w, sigma2)
    r2 = (stats.yty[i] - 2 * b @ stats.Xty[i] + np.einsum("sd,de,se->s", b, stats.XtX[i], b)
          - 2 * w @ stats.Fty[i] + 2 * np.einsum("sd,dp,sp->s", b, stats.XtF[i], w)
          + np.einsum("sp,pq,sq->s", w, stats.FtF[i], w))
    v = var(c)
    n = stats.n_obs[i]
    lp = -0.5 * n * np.log(2 * np.pi * v) - 0.5 * r2 / v
    # log p(b, z | c, theta) + log pi_c
    z = [b, zr[:, :2], zr[:, 2:]]
    for l, (pi, theta, delta) in enumerate(draws):
        k = paths[c, l]
        th = theta[np.arange(S), k]  # (S, J, m+1)
        mean_l = th[..., 0] + np.einsum("sjm,sm->sj", th[..., 1:], z[l + 1])
        dl = delta[np.arange(S), k]
        if dl.ndim == 3:  # a full idiosyncratic covariance (the deep mixture's polynomial block), (S, J, J)
            lp += _mvn_logpdf(z[l], mean_l, dl)
        else:
            lp += (-0.5 * np.log(2 * np.pi * dl) - 0.5 * (z[l] - mean_l) ** 2 / dl).sum(1)
        lp += np.log(pi[np.arange(S), k])
    lp += -0.5 * np.log(2 * np.pi) - 0.5 * (z[-1] ** 2).sum(1)
    # minus log q(c, b, z_r)
    lp -= np.log(loc.resp[i, c])
    lp -= _mvn_logpdf(b, m, cov)
    lp -= _mvn_logpdf(zr, zr_mean, cache.C[c])
    return lp


def _mc_check(samples, exact, label):
    se = samples.std() / np.sqrt(len(samples))
    assert abs(samples.mean() - exact) < 4 * se + 1e-6 * abs(exact), f"{label}: MC {samples.mean():.4f} +- {se:.4f} vs {exact:.4f}"


# ----------------------------------------------------------------------------- tests
def test_dmfa_global_elbo_terms_match_monte_carlo():
    stats = _toy_stats()
    prior = DeepMixturePrior(3, (2, 2), (2, 1))
    params, config = _start(stats, prior)
    rng = np.random.default_rng(1)
    S = 40000
    mc_prior, _ = _sample_dmfa_layers(prior, params.prior, S, rng)
    _mc_check(mc_prior, prior.elbo(params.prior), "DMFA prior factors")
    mc_noise, _, _ = _sample_noise(params, config, S, rng)
    _mc_check(mc_noise, elbo_globals(params, prior, config) - prior.elbo(params.prior), "noise and fixed effects")


def test_gaussian_mixture_global_elbo_terms_match_monte_carlo():
    stats = _toy_stats(seed=3)
    prior = GaussianMixturePrior(3, 2)
    params, _ = _start(stats, prior)
    pp = params.prior
    rng = np.random.default_rng(2)
    S = 40000
    pi = rng.dirichlet(pp.weights.alpha, size=S)
    total = _dir_logpdf(pi, np.full(2, prior.concentration)) - _dir_logpdf(pi, pp.weights.alpha)
    mu, mean, cov = _gauss_sample(pp.mean, S, rng)
    total += _mvn_logpdf(mu, 0.0, prior.mean_var * np.eye(3)).sum(1) - _mvn_logpdf(mu, mean, cov).sum(1)
    a = _ig_sample(pp.cov_aux, S, rng)  # (S, K, D)
    inv_a2 = 1 / prior.cov_scale**2
    total += (_ig_logpdf(a, 0.5, inv_a2) - _ig_logpdf(a, pp.cov_aux.shape, pp.cov_aux.rate)).sum(axis=(1, 2))
    df0 = prior.cov_df + 3 - 1
    for k in range(2):  # two components
        sig = st.invwishart.rvs(df=pp.cov.df[k], scale=pp.cov.scale[k], size=S, random_state=rng)
        psi = 2 * prior.cov_df / a[:, k]  # (S, D): each draw's diagonal prior scale
        prior_lp = _iw_diag_logpdf(sig, df0, psi)
        some = [st.invwishart.logpdf(sig[i], df=df0, scale=np.diag(psi[i])) for i in range(20)]
        np.testing.assert_allclose(prior_lp[:20], some, rtol=1e-10)  # the batched density is scipy's
        total += prior_lp - st.invwishart.logpdf(sig.transpose(1, 2, 0), df=pp.cov.df[k], scale=pp.cov.scale[k])
    _mc_check(total, prior.elbo(pp), "Gaussian-mixture prior factors")


def test_local_elbo_matches_monte_carlo_under_q():
    """sum_i log_evidence_i = E_q[log p(y, b, z, c | globals)] - E_q[log q(b, z, c)], globals ~ q."""
    stats = _toy_stats(seed=5, n_subjects=6)
    prior = DeepMixturePrior(3, (2, 2), (2, 1))
    params, config = _start(stats, prior)
    pp, cache = prior.path_prior(params.prior)
    nm = noise_moments(params, stats.dim_fixed)
    loc = local_step(stats, pp, nm)
    exact = loc.log_evidence.sum()

    rng = np.random.default_rng(7)
    S = 30000
    _, draws = _sample_dmfa_layers(prior, params.prior, S, rng)
    _, s2, w = _sample_noise(params, config, S, rng)
    paths = prior.path_components()
    N = stats.n_subjects
    total = np.zeros(S)
    for i in range(N):  # tests may loop over subjects: this is the brute-force reference
        total += _local_elbo_draws(stats, i, loc, pp, cache, draws, paths, lambda c: nm.prec, nm.w_mean, w,
                                   lambda c: s2, rng, S)
    _mc_check(total, exact, "local ELBO")


def test_responsibilities_match_quadrature():
    """Random-intercept model (D0 = 1), one layer with a 1-d latent: q(c) by 2-d quadrature over (b, z)."""
    rng = np.random.default_rng(0)
    N, n = 5, 4
    codes = np.repeat(np.arange(N), n)
    y = np.repeat(rng.normal(0, 2, N), n) + 0.5 * rng.normal(size=N * n)
    stats = sufficient_stats(y, np.ones((N * n, 1)), None, codes, N)
    prior = DeepMixturePrior(1, (3,), (1,))
    params, _ = _start(stats, prior, iters=4)
    pp, _ = prior.path_prior(params.prior)
    nm = noise_moments(params, 0)
    loc = local_step(stats, pp, nm)
    assert np.allclose(loc.resp.sum(1), 1.0)

    lay = params.prior.layers[0]
    mean, cov, _ = lay.loadings.moments()  # (K, 1, 2)
    second = cov + mean[..., :, None] * mean[..., None, :]
    dinv, dlog = lay.delta.mean_inv[:, 0], lay.delta.mean_log[:, 0]
    elog_pi = lay.weights.mean_log
    grid = np.linspace(-12, 12, 1201)
    B, Z = np.meshgrid(grid, grid, indexing="ij")
    h = grid[1] - grid[0]
    logq = np.empty((N, 3))
    for i in range(N):
        for k in range(3):
            x2 = np.stack([np.ones_like(Z), Z], -1)
            e_quad = (B**2 - 2 * B * np.einsum("abm,m->ab", x2, mean[k, 0]) + np.einsum("abm,mn,abn->ab", x2, second[k, 0], x2))
            f = (-0.5 * np.log(2 * np.pi) - 0.5 * dlog[k] - 0.5 * dinv[k] * e_quad
                 - 0.5 * np.log(2 * np.pi) - 0.5 * Z**2
                 - 0.5 * n * (np.log(2 * np.pi) + nm.log_var)
                 - 0.5 * nm.prec * (stats.yty[i] - 2 * B * stats.Xty[i, 0] + B**2 * stats.XtX[i, 0, 0]))
            logq[i, k] = elog_pi[k] + logsumexp(f) + 2 * np.log(h)
    resp = np.exp(logq - logsumexp(logq, axis=1, keepdims=True))
    np.testing.assert_allclose(loc.resp, resp, atol=1e-6)
    np.testing.assert_allclose(loc.log_evidence, logsumexp(logq, axis=1), rtol=1e-6)


def _elbo_history(stats, prior, seed: int, max_iter: int, hard: bool = False) -> np.ndarray:
    """Plain coordinate ascent (no pruning) from the standard initialisation."""
    rng = np.random.default_rng(seed)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=max_iter, tol=1e-300, prune_threshold=0.0, hard_assignment=hard)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return np.asarray(run_vi(stats, prior, params, config, rng).elbo_history)


@pytest.mark.parametrize(
    "seed,ks,ds",
    [(0, (3, 2), (2, 1)), (1, (4,), (2,)), (2, (2, 2, 2), (3, 2, 1))],
)
def test_elbo_never_decreases_dmfa(seed, ks, ds):
    stats = _toy_stats(seed=seed, n_subjects=30, n_obs=6, dim=4)
    h = _elbo_history(stats, DeepMixturePrior(4, ks, ds), seed, 80)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()


@pytest.mark.parametrize("k,hard", [(1, False), (3, False), (3, True)])
def test_elbo_never_decreases_gaussian_mixture(k, hard):
    stats = _toy_stats(seed=k, n_subjects=40, n_obs=5, dim=3)
    h = _elbo_history(stats, GaussianMixturePrior(3, k), 0, 60, hard)
    # hard assignments are coordinate steps over point-mass q(c): monotone as well
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()

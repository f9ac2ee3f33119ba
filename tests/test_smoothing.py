"""The smoothness prior: exact ELBO terms (Monte Carlo), monotone coordinate ascent, recovery of a
known smoothing variance, sparse visits, band coverage and invariance to the sign of y."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from scipy.special import multigammaln

import dmlmm
from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.sufficient import sufficient_stats
from dmlmm.metrics import adjusted_rand_index, coverage
from dmlmm.priors.dmfa import PINNED_MEAN_VAR, POLY_DF, DeepMixturePrior
from dmlmm.priors.gaussian import GaussianMixturePrior
from dmlmm.simulate import dgp1
from dmlmm.inference.engine import noise_moments
from dmlmm.inference.local import local_step
from test_vi_engine import (
    _dir_logpdf,
    _elbo_history,
    _gauss_sample,
    _ig_logpdf,
    _ig_sample,
    _iw_diag_logpdf,
    _local_elbo_draws,
    _mc_check,
    _mvn_logpdf,
    _start,
)

ROUGH = np.array([0.0, 0.0, 1.0, 6.0, 25.0])  # two polynomial coordinates, three rough ones


def _smooth_stats(seed=0, n_subjects=30, n_obs=6):
    """Toy data in 5 coordinates whose rough ones carry little signal."""
    rng = np.random.default_rng(seed)
    D = len(ROUGH)
    codes = np.repeat(np.arange(n_subjects), n_obs)
    X = rng.normal(size=(len(codes), D))
    scale = 1.0 / np.sqrt(1.0 + ROUGH)
    b = rng.normal(size=(n_subjects, D)) * scale + np.where(rng.random(n_subjects) < 0.5, 1.0, -1.0)[:, None] * scale
    y = (X * b[codes]).sum(1) + 0.3 * rng.normal(size=len(codes))
    return sufficient_stats(y, X, np.zeros((len(codes), 0)), codes, n_subjects)


def _scale_pair_mc(f, S, rng, scale):
    """Draws of (v, g) of a ScaleFactor and log p(v | g) p(g) - log q(v) q(g)."""
    v, g = _ig_sample(f.var, S, rng), _ig_sample(f.aux, S, rng)
    lp = _ig_logpdf(v, 0.5, 1 / g) - _ig_logpdf(v, f.var.shape, f.var.rate)
    lp += _ig_logpdf(g, 0.5, 1 / scale**2) - _ig_logpdf(g, f.aux.shape, f.aux.rate)
    return v, lp.reshape(S, -1).sum(1)


@pytest.mark.parametrize("ks,poly", [((2, 2), "diagonal"), ((2, 1), "diagonal"), ((2, 1), "full")],
                         ids=["free-deeper-mean", "pinned-deeper-mean", "polynomial-block"])
def test_smooth_dmfa_prior_elbo_matches_monte_carlo(ks, poly):
    """With ``polynomial_covariance="full"`` the first layer's polynomial rows have one inverse-Wishart
    covariance per component (Huang-Wand scales) in place of their variances delta and auxiliaries."""
    stats = _smooth_stats()
    prior = DeepMixturePrior(5, ks, (2, 1), roughness=ROUGH, visit_times=4,  # the last rough row beyond 4 times
                             polynomial_covariance=poly)
    assert prior._alpha_d[ROUGH > 0][-1] > prior.idiosyncratic_shape
    params, _ = _start(stats, prior, iters=4)
    rng = np.random.default_rng(3)
    S = 40000
    total = np.zeros(S)
    rough = ROUGH > 0
    for l, lay in enumerate(params.prior.layers):
        G, nu2, A2, rho = prior.mean_scale[l], prior.loading_scale[l] ** 2, prior.delta_scale[l] ** 2, prior.concentration[l]
        K = len(lay.weights.alpha)
        pi = rng.dirichlet(lay.weights.alpha, size=S)
        total += _dir_logpdf(pi, np.full(K, rho)) - _dir_logpdf(pi, lay.weights.alpha)
        theta, mean, cov = _gauss_sample(lay.loadings, S, rng)  # (S, K, J, m+1)
        J = theta.shape[2]
        smooth = lay.smooth
        assert (smooth is not None) == (l == 0)
        row_rough = rough if l == 0 else np.zeros(J, dtype=bool)
        g = _ig_sample(lay.mean_scale, S, rng)
        tau = _ig_sample(lay.global_scale, S, rng)
        lam2 = _ig_sample(lay.local_scale, S, rng)
        pinned = l >= 1 and len(lay.weights.alpha) == 1  # one deeper component: mu ~ N(0, PINNED_MEAN_VAR)
        mu_var = np.full_like(g, PINNED_MEAN_VAR) if pinned else G * g
        if smooth is not None:
            v, lp = _scale_pair_mc(smooth.mean, S, rng, prior.smooth_scale)
            total += lp
            u, lp = _scale_pair_mc(smooth.delta, S, rng, prior.smooth_scale)
            total += lp
            t, lp = _scale_pair_mc(smooth.loadings, S, rng, prior.smooth_scale)
            total += lp
            lam = np.where(rough, ROUGH, 1.0)
            mu_var = np.where(row_rough, v[:, :, None] / lam, mu_var)
        var = np.concatenate([mu_var[..., None], tau[:, :, None, None] * lam2], axis=-1)
        if smooth is not None:  # loading curves: P-spline on every row, the polynomial ones at lam = 1
            var[..., 1:] = t[:, :, None, :] / lam[None, None, :, None] ** prior.loading_order
        total += (-0.5 * np.log(2 * np.pi * var) - 0.5 * theta**2 / var).sum(axis=(1, 2, 3))
        total -= _mvn_logpdf(theta, mean, cov).sum(axis=(1, 2))
        delta = _ig_sample(lay.delta, S, rng)
        h = _ig_sample(lay.delta_aux, S, rng)
        a = _ig_sample(lay.local_aux, S, rng)
        e = _ig_sample(lay.global_aux, S, rng)
        null = ~row_rough
        # idiosyncratic variances: half-Cauchy (auxiliary h) on the polynomial rows,
        # IG(alpha, alpha / (lam u)) on the rough rows
        # (the shape grows with the roughness: alpha lam_d ** idiosyncratic_power)
        a_shape = prior._alpha_d if l == 0 else prior.idiosyncratic_shape
        d_shape = np.where(row_rough, a_shape, 0.5)
        d_rate = 1 / h if smooth is None else np.where(row_rough, a_shape / (lam * u[:, :, None]), 1 / h)
        block = l == 0 and lay.poly_cov is not None  # the polynomial rows' variances are Phi_k's
        d_rows = row_rough if block else np.ones(J, dtype=bool)
        lp = _ig_logpdf(delta, d_shape, d_rate) - _ig_logpdf(delta, lay.delta.shape, lay.delta.rate)
        total += lp[:, :, d_rows].reshape(S, -1).sum(1)
        if block:
            P = int((~rough).sum())
            a_p = _ig_sample(lay.poly_aux, S, rng)  # (S, K, P)
            total += (_ig_logpdf(a_p, 0.5, 1 / A2) - _ig_logpdf(a_p, lay.poly_aux.shape, lay.poly_aux.rate)).reshape(S, -1).sum(1)
            for k in range(K):
                q = lay.poly_cov
                sig = st.invwishart.rvs(df=q.df[k], scale=q.scale[k], size=S, random_state=rng)
                total += (_iw_diag_logpdf(sig, POLY_DF + P - 1, 2 * POLY_DF / a_p[:, k])
                          - st.invwishart.logpdf(sig.transpose(1, 2, 0), df=q.df[k], scale=q.scale[k]))
        horseshoe = null if smooth is None else np.zeros(J, dtype=bool)
        for x, q, shape0, rate0, rows in (
            (h, lay.delta_aux, 0.5, 1 / A2, null & d_rows),
            (g, lay.mean_scale, 0.5, 0.5, null & (not pinned)),
            (lam2, lay.local_scale, 0.5, 1 / a, horseshoe),
            (a, lay.local_aux, 0.5, 1.0, horseshoe),
        ):
            lp = _ig_logpdf(x, shape0, rate0) - _ig_logpdf(x, q.shape, q.rate)
            total += lp[:, :, rows].reshape(S, -1).sum(1)
        for x, q, shape0, rate0 in ((tau, lay.global_scale, 0.5, 1 / e), (e, lay.global_aux, 0.5, 1 / nu2)):
            total += (_ig_logpdf(x, shape0, rate0) - _ig_logpdf(x, q.shape, q.rate)).reshape(S, -1).sum(1)
    _mc_check(total, prior.elbo(params.prior), "smooth DMFA prior factors")


def test_local_elbo_with_the_polynomial_block_matches_monte_carlo():
    """The path prior's expected log density of b under a full covariance of the polynomial rows:
    sum_i log_evidence_i = E_q[log p(y, b, z, c | globals)] - E_q[log q(b, z, c)], globals ~ q (Phi_k too)."""
    stats = _smooth_stats(seed=6, n_subjects=6)
    prior = DeepMixturePrior(5, (2, 2), (2, 1), roughness=ROUGH, polynomial_covariance="full")
    params, config = _start(stats, prior, iters=4)
    # the identity holds for any q: make q(Phi_k) strongly correlated, so that the block's off-diagonal counts
    lay = params.prior.layers[0]
    scale = lay.poly_cov.scale.copy()
    scale[:, 0, 1] = scale[:, 1, 0] = -0.8 * np.sqrt(scale[:, 0, 0] * scale[:, 1, 1])
    layers = (replace(lay, poly_cov=replace(lay.poly_cov, scale=scale)),) + params.prior.layers[1:]
    params = replace(params, prior=replace(params.prior, layers=layers))
    pp, cache = prior.path_prior(params.prior)
    nm = noise_moments(params, stats.dim_fixed)
    loc = local_step(stats, pp, nm)
    rng = np.random.default_rng(8)
    S = 30000
    poly = np.flatnonzero(ROUGH == 0)
    draws = []
    for lay in params.prior.layers:
        pi = rng.dirichlet(lay.weights.alpha, size=S)
        theta, _, _ = _gauss_sample(lay.loadings, S, rng)
        delta = _ig_sample(lay.delta, S, rng)  # (S, K, J)
        if lay.poly_cov is not None:  # the first layer: Phi_k on the polynomial rows, delta on the others
            psi = delta[..., None] * np.eye(delta.shape[2])
            for k in range(len(lay.weights.alpha)):
                q = lay.poly_cov
                psi[:, k][:, poly[:, None], poly[None, :]] = st.invwishart.rvs(df=q.df[k], scale=q.scale[k], size=S,
                                                                              random_state=rng)
            delta = psi
        draws.append((pi, theta, delta))
    assert draws[0][2].ndim == 4 and draws[1][2].ndim == 3
    s2, w = _ig_sample(params.noise, S, rng), np.zeros((S, 0))  # no fixed effects in these data
    paths = prior.path_components()
    total = np.zeros(S)
    for i in range(stats.n_subjects):  # the brute-force reference loops over subjects
        total += _local_elbo_draws(stats, i, loc, pp, cache, draws, paths, lambda c: nm.prec, nm.w_mean, w,
                                   lambda c: s2, rng, S)
    _mc_check(total, loc.log_evidence.sum(), "local ELBO with the polynomial block")


def test_smooth_gaussian_mixture_prior_elbo_matches_monte_carlo():
    stats = _smooth_stats(seed=4)
    D = len(ROUGH)
    prior = GaussianMixturePrior(D, 2, roughness=ROUGH)
    params, _ = _start(stats, prior, iters=4)
    pp = params.prior
    rng = np.random.default_rng(5)
    S = 20000
    rough = ROUGH > 0
    lam = np.where(rough, ROUGH, 1.0)
    pi = rng.dirichlet(pp.weights.alpha, size=S)
    total = _dir_logpdf(pi, np.full(2, prior.concentration)) - _dir_logpdf(pi, pp.weights.alpha)
    v, lp = _scale_pair_mc(pp.mean_smooth, S, rng, prior.smooth_scale)
    total += lp
    w, lp = _scale_pair_mc(pp.cov_smooth, S, rng, prior.smooth_scale)
    total += lp
    mu, mean, cov = _gauss_sample(pp.mean, S, rng)  # (S, K, D)
    mu_var = np.where(rough, v[:, :, None] / lam, prior.mean_var)
    total += (-0.5 * np.log(2 * np.pi * mu_var) - 0.5 * mu**2 / mu_var).sum(axis=(1, 2))
    total -= _mvn_logpdf(mu, mean, cov).sum(1)
    a = _ig_sample(pp.cov_aux, S, rng)  # (S, K, D)
    rate0 = np.where(rough, lam / w[:, :, None], 1 / prior.cov_scale**2)
    total += (_ig_logpdf(a, 0.5, rate0) - _ig_logpdf(a, pp.cov_aux.shape, pp.cov_aux.rate)).sum(axis=(1, 2))
    df0 = prior.cov_df + D - 1
    for k in range(2):
        sig = st.invwishart.rvs(df=pp.cov.df[k], scale=pp.cov.scale[k], size=S, random_state=rng)
        # IW log density with scale 2 nu diag(1/a), vectorised over draws
        sinv = np.linalg.inv(sig)
        psi_diag = 2 * prior.cov_df / a[:, k]
        _, logdet_sig = np.linalg.slogdet(sig)
        prior_lp = (
            0.5 * df0 * np.log(psi_diag).sum(-1) - 0.5 * df0 * D * np.log(2) - multigammaln(0.5 * df0, D)
            - 0.5 * (df0 + D + 1) * logdet_sig - 0.5 * np.einsum("sd,sdd->s", psi_diag, sinv)
        )
        total += prior_lp - st.invwishart.logpdf(sig.transpose(1, 2, 0), df=pp.cov.df[k], scale=pp.cov.scale[k])
    _mc_check(total, prior.elbo(pp), "smooth Gaussian-mixture prior factors")


@pytest.mark.parametrize("ks,ds,poly", [((3, 2), (2, 1), "diagonal"), ((3, 1), (2, 1), "diagonal"), ((2,), (3,), "diagonal"),
                                        ((3, 2), (2, 1), "full"), ((2,), (3,), "full")])
def test_elbo_never_decreases_with_smoothing_dmfa(ks, ds, poly):
    stats = _smooth_stats(seed=1, n_subjects=40)
    h = _elbo_history(stats, DeepMixturePrior(5, ks, ds, roughness=ROUGH, polynomial_covariance=poly), 0, 80)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()


@pytest.mark.parametrize("k", [1, 3])
def test_elbo_never_decreases_with_smoothing_gaussian_mixture(k):
    stats = _smooth_stats(seed=2, n_subjects=40)
    h = _elbo_history(stats, GaussianMixturePrior(5, k, roughness=ROUGH), 0, 60)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()


def test_known_smoothing_variance_of_the_mean_curve_is_recovered():
    """Curves whose mean has P-spline coefficients mu_d ~ N(0, v / lam_d) with v known: the
    posterior q(v) of the Gaussian (one-component) model covers the truth."""
    rng = np.random.default_rng(7)
    basis = SplineBasis(30, lower=0.0, upper=1.0, knots="uniform").fit()
    V, lam = basis.smoothing_basis(2)
    v_true = 400.0
    mu = np.r_[1.0, -0.5, rng.normal(size=28) * np.sqrt(v_true / lam[2:])]
    n_sub, n_obs = 200, 25  # 400 took twice as long; q(v) covers v at both sizes
    t = rng.uniform(0, 1, (n_sub, n_obs))
    dev = rng.normal(size=(n_sub, 2)) * 0.3  # subject level and trend
    f = (basis.transform(t.ravel()) @ V @ mu).reshape(n_sub, n_obs) + dev[:, :1] + dev[:, 1:] * (t - 0.5)
    y = f + 0.05 * rng.normal(size=f.shape)
    df = pd.DataFrame({"subject": np.repeat(np.arange(n_sub), n_obs), "time": t.ravel(), "y": y.ravel()})
    m = MixtureLMM(1, basis=SplineBasis(30, lower=0.0, upper=1.0, knots="uniform"), random_state=0).fit(df)
    q = m.params_.prior.mean_smooth.var  # on the standardised scale: v / y_scale^2
    v_std = v_true / m.design_.y_scale**2
    lo, hi = st.invgamma.ppf([0.0005, 0.9995], a=q.shape[0], scale=q.rate[0])
    assert lo < v_std < hi, (lo, v_std, hi)
    assert hi / lo < 6  # informative: the data pin v down within a small factor


def _sparse_visits(seed=0, n_subjects=120):
    """Blackmore-like: visits only at ages 8, 10, 12, 14, 16, non-negative responses."""
    rng = np.random.default_rng(seed)
    ages = np.array([8.0, 10.0, 12.0, 14.0, 16.0])
    rows = []
    for i in range(n_subjects):  # building a test frame, not numerical code
        grp = i % 2
        level = rng.gamma(2.0, 1.0) + grp * 2.0 * (ages - 8) / 4
        y = np.maximum(level + rng.normal(0, 0.7, len(ages)), 0.0)
        keep = np.array([0, 4]) if i % 4 == 3 else np.sort(rng.choice(len(ages), size=rng.integers(2, 6), replace=False))
        rows.append(pd.DataFrame({"subject": i, "age": ages[keep], "y": y[keep]}))
    return pd.concat(rows, ignore_index=True)


def _level_and_slope(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """One population, y = a_i + s_i t + noise (SD 0.3) at 5 uniform times on [0, 1], sd(a) = 1, sd(s) = 0.8,
    corr(a, s) = 0.7: the data and the covariance of the curve at t = 0 and t = 1."""
    sd_a, sd_s, rho = 1.0, 0.8, 0.7
    cov = np.array([[sd_a**2, rho * sd_a * sd_s], [rho * sd_a * sd_s, sd_s**2]])
    ab = rng.multivariate_normal([2.0, 1.0], cov, size=n)
    t = np.sort(rng.uniform(0, 1, (n, 5)), axis=1)
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), 5), "time": t.ravel(),
                       "y": (ab[:, :1] + ab[:, 1:] * t + 0.3 * rng.standard_normal((n, 5))).ravel()})
    X = np.array([[1.0, 0.0], [1.0, 1.0]])
    return df, X @ cov @ X.T


def _assert_curve_covariance(m, truth: np.ndarray) -> None:
    """The fitted covariance of the curve at t = 0 and 1: SDs within 10 % of the truth's, correlation within 0.03."""
    assert m.prior_.polynomial_covariance == "full" and m.params_.prior.layers[0].poly_cov is not None
    B = m.design_.basis.transform(np.array([0.0, 1.0]))
    fitted = B @ m.covariances_[0] @ B.T
    np.testing.assert_allclose(np.sqrt(np.diag(fitted)), np.sqrt(np.diag(truth)), rtol=0.1)
    corr = lambda c: c[0, 1] / np.sqrt(c[0, 0] * c[1, 1])  # noqa: E731
    assert abs(corr(fitted) - corr(truth)) < 0.03


def test_a_correlated_random_level_and_slope_is_recovered_with_the_polynomial_block():
    """300 subjects: the fitted covariance of the curve at t = 0 and t = 1 is the truth's (SDs 1 and 1.66,
    correlation 0.94) to within sampling error."""
    df, truth = _level_and_slope(300, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DeepMixtureLMM((1, 1), (1, 1), basis=SplineBasis(6, lower=0, upper=1), polynomial_covariance="full",
                           response_transform=None, random_state=0).fit(df)
    _assert_curve_covariance(m, truth)


def test_a_minibatch_fit_with_the_polynomial_block_recovers_the_level_and_slope(monkeypatch):
    """The stochastic fit (warm start on 300 of 1,500 subjects, minibatches of 150) updates q(Phi) by natural
    gradients too: q(Phi)'s degrees of freedom count all 1,500 subjects (nu + P - 1 + N = 1503; the warm start's
    300 alone would give 303), the same recovery as the full-batch fit above, and the residual SD within 5 % of
    0.3. Measured: SDs 1.021 / 1.637 (truth 1.000 / 1.661), correlation 0.942 (0.939); full batch 1.003 / 1.631,
    0.938."""
    import dmlmm.models.candidates as candidates

    calls = []
    stochastic = candidates.run_vi_stochastic

    def counted(*args, **kwargs):
        calls.append(1)
        return stochastic(*args, **kwargs)

    monkeypatch.setattr(candidates, "run_vi_stochastic", counted)
    df, truth = _level_and_slope(1500, np.random.default_rng(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DeepMixtureLMM((1, 1), (1, 1), basis=SplineBasis(6, lower=0, upper=1), polynomial_covariance="full",
                           response_transform=None, batch_size=150, subsample=300, random_state=0).fit(df)
    assert calls and m.converged_
    assert float(np.ravel(m.params_.prior.layers[0].poly_cov.df)[0]) == pytest.approx(1503.0, abs=1.0)
    _assert_curve_covariance(m, truth)
    assert np.sqrt(m.sigma2_) == pytest.approx(0.3, rel=0.05)


def test_idiosyncratic_shapes_grow_only_beyond_what_the_visit_times_resolve():
    """T distinct visit times resolve T - 2 rough coordinates: those keep the shape, the ones beyond get
    the shape times lam_d ** (1/4). Where fewer times than functions confound the noise the shape is
    confounded_shape (64), else alpha (16); without visit_times (or with as many as functions) every rough
    row has alpha. confounded_shape=None is the model before: alpha there too."""
    from dmlmm.priors.dmfa import DeepMixturePrior

    rough = np.array([0.0, 0.0, 1.0, 6.0, 25.0, 90.0])
    alpha = lambda prior: prior._alpha_d[rough > 0]  # noqa: E731
    np.testing.assert_array_equal(alpha(DeepMixturePrior(6, (2, 1), (2, 1), roughness=rough)), 16.0)
    np.testing.assert_array_equal(alpha(DeepMixturePrior(6, (2, 1), (2, 1), roughness=rough, visit_times=6)), 16.0)
    np.testing.assert_allclose(alpha(DeepMixturePrior(6, (2, 1), (2, 1), roughness=rough, visit_times=4)),
                               64.0 * np.array([1.0, 1.0, 25.0**0.25, 90.0**0.25]))
    np.testing.assert_allclose(alpha(DeepMixturePrior(6, (2, 1), (2, 1), roughness=rough, visit_times=4,
                                                      confounded_shape=None)),
                               16.0 * np.array([1.0, 1.0, 25.0**0.25, 90.0**0.25]))
    with pytest.raises(ValueError, match="confounded_shape must be positive"):
        DeepMixturePrior(6, (2, 1), (2, 1), roughness=rough, visit_times=4, confounded_shape=0.0)


def test_the_idiosyncratic_shape_grows_with_the_basis_up_to_the_default():
    """alpha = 16 (D / 20)^2 between 4 and 16: 4 up to 10 functions, 9 at 15, 16 from the default 20 on; a deep
    mixture is fitted with its basis's shape, and its model file keeps it."""
    from dmlmm.priors.dmfa import idiosyncratic_shape_for

    assert [idiosyncratic_shape_for(d) for d in (4, 6, 10, 15, 20, 30, 40)] == [4.0, 4.0, 4.0, 9.0, 16.0, 16.0, 16.0]
    rng = np.random.default_rng(0)
    times = rng.uniform(0, 1, (40, 6))
    df = pd.DataFrame({"subject": np.repeat(np.arange(40), 6), "time": times.ravel()})
    df["y"] = np.sin(3 * df["time"]) + rng.normal(0, 0.2, len(df))
    for n_basis, shape in ((8, 4.0), (15, 9.0)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = DeepMixtureLMM((2, 1), (1, 1), basis=SplineBasis(n_basis), random_state=0, max_iter=20,
                               response_transform=None).fit(df)
        assert m.prior_.idiosyncratic_shape == shape


def test_sparse_visits_curves_stay_in_range_and_bands_widen_between_visits():
    df = _sparse_visits(n_subjects=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DeepMixtureLMM(random_state=0).fit(df, "subject", "age", "y")
    assert m.prior_.visit_times == 5  # five shared ages, fewer than the functions: the prior knows
    grid = np.linspace(8, 16, 81)
    traj = m.predict_trajectory(df, times=grid)
    lo, hi = df.y.min(), df.y.max()
    span = hi - lo
    assert traj["mean"].between(lo - 0.25 * span, hi + 0.25 * span).all(), (traj["mean"].min(), traj["mean"].max())
    assert (m.cluster_means_["mean"].between(lo - 0.25 * span, hi + 0.25 * span)).all()
    # a subject's band widens away from its data: seen only at 8 and 16, widest in between
    width = (traj["upper"] - traj["lower"]).to_numpy().reshape(-1, len(grid))
    ends_only = (df.groupby("subject")["age"].apply(tuple) == (8.0, 16.0)).to_numpy()
    assert ends_only.sum() >= 20
    w = width[ends_only]
    assert (w[:, grid == 12.0][:, 0] > w[:, grid == 8.0][:, 0]).all()
    assert (w[:, grid == 12.0][:, 0] > w[:, grid == 16.0][:, 0]).all()


def test_bands_of_the_true_curve_cover_it_on_simulated_data():
    sim = dgp1(random_state=3, n_subjects=200)
    m = DeepMixtureLMM(random_state=0, basis=SplineBasis(lower=0, upper=1)).fit(sim.data)
    assert m.prior_.visit_times is None  # times everywhere: every rough coordinate keeps alpha
    grid = np.unique(sim.truth["time"])
    cov = coverage(sim.truth, m.predict_trajectory(sim.data, times=grid))
    assert 0.85 <= cov <= 0.99, cov


def test_clustering_does_not_depend_on_the_sign_of_y_or_the_direction_of_time():
    sim = dgp1(random_state=1, n_subjects=100)
    d = sim.data
    kw = dict(random_state=0, basis=SplineBasis(lower=0, upper=1), loading_order=2)  # one order: "auto" fits two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = DeepMixtureLMM(**kw).fit(d)
        b = DeepMixtureLMM(**kw).fit(d.assign(y=-d.y))
        c = DeepMixtureLMM(**kw).fit(d.assign(time=1.0 - d.time))
    assert adjusted_rand_index(a.labels_, b.labels_) == pytest.approx(1.0)
    assert b.elbo_ == pytest.approx(a.elbo_, rel=1e-6)
    assert adjusted_rand_index(a.labels_, c.labels_) > 0.95


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_auto_loading_order_keeps_the_fit_with_the_higher_elbo(tmp_path):
    df = dgp1(random_state=2, n_subjects=80).data
    basis = SplineBasis(16, lower=0, upper=1)
    fits = {o: DeepMixtureLMM((3, 2), (2, 1), basis=basis, loading_order=o, random_state=0, max_iter=150).fit(df)
            for o in (1, 2, "auto")}
    better = max((1, 2), key=lambda o: fits[o].elbo_)
    assert fits["auto"].elbo_ == fits[better].elbo_
    assert fits["auto"].prior_.loading_order == better
    assert fits[1].prior_.loading_order == 1 and fits[2].prior_.loading_order == 2
    for o in (1, "auto"):  # a saved model keeps the order it was fitted with
        fits[o].save(tmp_path / f"{o}.dmlmm")
        back = dmlmm.load(tmp_path / f"{o}.dmlmm")
        assert back.prior_.loading_order == fits[o].prior_.loading_order and back.loading_order == o


def test_auto_polynomial_covariance_keeps_the_fit_with_the_higher_elbo(tmp_path):
    df = dgp1(random_state=2, n_subjects=80).data
    basis = SplineBasis(12, lower=0, upper=1)
    fits = {b: DeepMixtureLMM((3, 2), (2, 1), basis=basis, loading_order=2, polynomial_covariance=b, random_state=0,
                              max_iter=150).fit(df)
            for b in ("diagonal", "full", "auto")}
    assert fits["diagonal"].elbo_ != fits["full"].elbo_
    better = max(("diagonal", "full"), key=lambda b: fits[b].elbo_)
    assert fits["auto"].elbo_ == fits[better].elbo_
    assert fits["auto"].prior_.polynomial_covariance == better
    assert (fits["full"].params_.prior.layers[0].poly_cov is not None) and fits["diagonal"].params_.prior.layers[0].poly_cov is None
    fits["auto"].save(tmp_path / "auto.dmlmm")  # a saved model keeps the block it was fitted with
    back = dmlmm.load(tmp_path / "auto.dmlmm")
    assert back.prior_.polynomial_covariance == better and back.polynomial_covariance == "auto"
    with pytest.raises(ValueError, match="polynomial_covariance"):
        DeepMixtureLMM(polynomial_covariance="block").fit(df)


def test_loading_order_is_checked():
    df = dgp1(random_state=0, n_subjects=10).data
    with pytest.raises(ValueError, match=r"loading_order must be 'auto' or a number of at least 1, got 0.5"):
        DeepMixtureLMM(loading_order=0.5).fit(df)


def test_a_single_deeper_component_has_its_mean_pinned_at_zero():
    """With the smoothness prior a deeper layer with one component has mean exactly zero: it is redundant
    with the first layer's means (a path's mean is ``mu_k + B_k mu2``), and a free one let the loading curves
    carry the population curve. ``mean_scale`` (the Cauchy scale of free deeper means; "auto": (0.5, 1e-3)
    with the smoothness prior, 0.5 in every layer without it) then does not enter the model. The research
    model (no smoothness prior) keeps its free mean."""
    sim = dgp1(random_state=0, n_subjects=150)
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ms in ("auto", 0.5):
            m = DeepMixtureLMM((3, 1), (2, 1), basis=SplineBasis(10), random_state=0, mean_scale=ms, max_iter=300,
                               loading_order=2).fit(sim.data, "subject", "time", "y")
            assert np.all(m.params_.prior.layers[1].loadings.moments()[0][..., 0] == 0.0)
            fits[ms] = m
        research = DeepMixtureLMM((3, 1), (2, 1), basis=SplineBasis(6), smoothing=None, random_state=0, max_iter=20)
        research.fit(sim.data, "subject", "time", "y")
    assert fits["auto"].prior_.mean_scale == (0.5, 1e-3) and fits[0.5].prior_.mean_scale == (0.5, 0.5)
    assert fits["auto"].elbo_ == fits[0.5].elbo_
    assert research.prior_.mean_scale == (0.5, 0.5)
    assert np.abs(research.params_.prior.layers[1].loadings.moments()[0][..., 0]).max() > 1e-2
    with pytest.raises(ValueError, match="mean_scale must be 'auto', a positive number, or one per layer"):
        DeepMixtureLMM(mean_scale="small").fit(sim.data, "subject", "time", "y")


def test_pruning_to_one_deeper_component_moves_its_mean_into_the_first_layer_exactly():
    """When a deeper layer is pruned to one component its mean c is pinned at zero and moved into the
    first layer's means, ``mu_k <- mu_k + B_k c``: every kept path's expected mean is unchanged, and so are
    the expected loadings of both layers."""
    stats = _smooth_stats(seed=2)
    prior = DeepMixturePrior(5, (2, 2), (2, 1), roughness=ROUGH)
    params, _ = _start(stats, prior, iters=5)
    old = params.prior
    m1, m2 = (lay.loadings.moments()[0] for lay in old.layers)  # (K1, 5, 3), (K2, 2, 2)
    c = m2[0, :, 0]
    assert np.abs(c).max() > 1e-3  # a free deeper mean to move
    new_prior, new = prior.prune(old, [np.ones(2, dtype=bool), np.array([True, False])])
    assert new_prior.n_components == (2, 1)
    n1, n2 = (lay.loadings.moments()[0] for lay in new.layers)
    assert np.all(n2[..., 0] == 0.0)
    np.testing.assert_allclose(n1[..., 0], m1[..., 0] + np.einsum("kjm,m->kj", m1[..., 1:], c), atol=1e-10)
    np.testing.assert_allclose(n1[..., 1:], m1[..., 1:], atol=1e-10)
    np.testing.assert_allclose(n2[..., 1:], m2[:1, :, 1:], atol=1e-10)
    # three layers pruned to (2, 1, 1): the third layer's mean moves through the second into the first
    deep = DeepMixturePrior(5, (2, 2, 2), (2, 2, 1), roughness=ROUGH)
    dp, _ = _start(stats, deep, iters=5)
    m1, m2, m3 = (lay.loadings.moments()[0] for lay in dp.prior.layers)
    assert np.abs(m3[0, :, 0]).max() > 1e-3
    path = lambda a, b, c: a[..., 0] + np.einsum("kjm,m->kj", a[..., 1:], b[0, :, 0] + b[0, :, 1:] @ c[0, :, 0])  # noqa: E731
    _, pruned = deep.prune(dp.prior, [np.ones(2, dtype=bool), np.array([True, False]), np.array([True, False])])
    n1, n2, n3 = (lay.loadings.moments()[0] for lay in pruned.layers)
    assert np.all(n2[..., 0] == 0.0) and np.all(n3[..., 0] == 0.0)
    np.testing.assert_allclose(path(n1, n2, n3), path(m1, m2, m3), atol=1e-10)
    # the research model (no smoothness prior) keeps the free mean
    research = DeepMixturePrior(5, (2, 2), (2, 1))
    rp, _ = _start(stats, research, iters=5)
    _, kept = research.prune(rp.prior, [np.ones(2, dtype=bool), np.array([True, False])])
    np.testing.assert_array_equal(kept.layers[1].loadings.shift, rp.prior.layers[1].loadings.shift[:1])

"""Residual variances per first-layer cluster (noise="cluster"): exact ELBO, monotone CAVI, prediction, saving."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dmlmm import DeepMixtureLMM, MixtureLMM, load
from dmlmm.sufficient import sufficient_stats
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.inference.engine import VariationalParams, VIConfig, elbo_globals, init_noise_and_fixed, noise_moments, run_vi
from dmlmm.expfam import InvGamma
from dmlmm.inference.local import local_step
from dmlmm.inference.noise import empty_noise_cost, noise_elbo, per_cluster
from dmlmm.models.base import ridge_estimates
from dmlmm.prediction import condition
from dmlmm.priors.base import PointMixture
from dmlmm.priors.dmfa import DeepMixturePrior
from dmlmm.priors.gaussian import GaussianMixturePrior
from test_vi_engine import _gauss_sample, _ig_logpdf, _ig_sample, _local_elbo_draws, _mc_check, _mvn_logpdf, _sample_dmfa_layers


def _toy_stats(seed=0, n_subjects=8, n_obs=5, dim=3, n_fixed=1):
    """Two groups of subjects with different means and different residual SDs (0.2 and 0.6)."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_subjects), n_obs)
    X = rng.uniform(0, 1, (len(codes), dim))
    F = rng.normal(size=(len(codes), n_fixed))
    grp = rng.random(n_subjects) < 0.5
    b = rng.normal(size=(n_subjects, dim)) + np.where(grp, 1.5, -1.5)[:, None]
    sd = np.where(grp, 0.2, 0.6)[codes]
    y = (X * b[codes]).sum(1) + F @ np.full(n_fixed, 0.3) + sd * rng.normal(size=len(codes))
    return sufficient_stats(y, X, F, codes, n_subjects)


def _cluster_start(stats, prior, seed=0, iters=3, max_iter=None):
    rng = np.random.default_rng(seed)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=max_iter or iters, tol=1e-300, prune_threshold=0.0)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    noise, aux = per_cluster(noise, aux, int(prior.path_components()[:, 0].max()) + 1)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = run_vi(stats, prior, params, config, rng)
    return res, config


def test_per_cluster_noise_elbo_terms_match_monte_carlo():
    stats = _toy_stats(n_subjects=20)
    prior = DeepMixturePrior(3, (2, 2), (2, 1))
    res, config = _cluster_start(stats, prior)
    params = res.params
    assert params.noise.shape.shape == (2,) and not np.allclose(params.noise.rate[0], params.noise.rate[1])
    rng = np.random.default_rng(1)
    S = 40000
    s2 = _ig_sample(params.noise, S, rng)  # (S, K1)
    c = _ig_sample(params.noise_aux, S, rng)
    total = (_ig_logpdf(s2, 0.5, 1 / c) - _ig_logpdf(s2, params.noise.shape, params.noise.rate)).sum(1)
    total += (_ig_logpdf(c, 0.5, 1 / config.noise_scale**2) - _ig_logpdf(c, params.noise_aux.shape, params.noise_aux.rate)).sum(1)
    w, mean, cov = _gauss_sample(params.fixed, S, rng)
    total += -0.5 * np.log(2 * np.pi * config.fixed_var) * len(mean) - 0.5 * (w**2).sum(-1) / config.fixed_var
    total -= _mvn_logpdf(w, mean, cov)
    _mc_check(total, elbo_globals(params, prior, config) - prior.elbo(params.prior), "per-cluster noise and fixed effects")


def test_local_elbo_with_per_cluster_noise_matches_monte_carlo():
    """sum_i log_evidence_i = E_q[log p(y, b, z, c | globals)] - E_q[log q(b, z, c)], each path with its own sigma^2."""
    stats = _toy_stats(seed=5, n_subjects=6)
    prior = DeepMixturePrior(3, (2, 2), (2, 1))
    res, config = _cluster_start(stats, prior)
    params = res.params
    paths = prior.path_components()
    pp, cache = prior.path_prior(params.prior)
    nm = noise_moments(params, stats.dim_fixed, paths)
    assert nm.prec.shape == (len(paths),)
    loc = local_step(stats, pp, nm)
    exact = loc.log_evidence.sum()

    rng = np.random.default_rng(7)
    S = 30000
    _, draws = _sample_dmfa_layers(prior, params.prior, S, rng)
    s2_all = _ig_sample(params.noise, S, rng)  # (S, K1)
    w, _, _ = _gauss_sample(params.fixed, S, rng)
    N = stats.n_subjects
    total = np.zeros(S)
    for i in range(N):  # brute-force reference; each path's first-layer variance
        total += _local_elbo_draws(stats, i, loc, pp, cache, draws, paths, lambda c: nm.prec[c], nm.w_mean, w,
                                   lambda c: s2_all[np.arange(S), paths[c, 0]], rng, S)
    _mc_check(total, exact, "local ELBO, per-cluster noise")


@pytest.mark.parametrize(
    "prior",
    [DeepMixturePrior(4, (3, 2), (2, 1)), DeepMixturePrior(4, (2, 2, 2), (3, 2, 1)), GaussianMixturePrior(4, 3)],
    ids=["dmfa2", "dmfa3", "gmm"],
)
def test_elbo_never_decreases_with_per_cluster_noise(prior):
    stats = _toy_stats(seed=2, n_subjects=40, n_obs=6, dim=4, n_fixed=2)
    res, _ = _cluster_start(stats, prior, max_iter=80)
    h = np.asarray(res.elbo_history)
    # 80 iterations, or fewer at an exact fixed point (rejected extrapolations are not recorded)
    assert (res.n_iter == 80 or res.converged) and len(h) >= 20
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()


def test_one_cluster_equals_shared_noise():
    """With one first-layer component, per-cluster noise is the shared noise (same fit up to rounding)."""
    stats = _toy_stats(seed=3, n_subjects=30)
    prior = GaussianMixturePrior(3, 1)
    res_c, _ = _cluster_start(stats, prior, max_iter=30)
    rng = np.random.default_rng(0)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=30, tol=1e-300, prune_threshold=0.0)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res_s = run_vi(stats, prior, params, config, rng)
    np.testing.assert_allclose(res_c.elbo_history, res_s.elbo_history, rtol=1e-10)
    np.testing.assert_allclose(res_c.params.noise.rate[0], res_s.params.noise.rate, rtol=1e-10)


def test_empty_noise_cost_is_the_data_free_optimum():
    A = 1.7
    noise, aux = InvGamma(np.asarray(3.0), np.asarray(2.0)), InvGamma(np.asarray(1.0), np.asarray(5.0))
    for _ in range(2000):  # coordinate ascent without data
        noise = InvGamma(np.asarray(0.5), np.asarray(aux.mean_inv))
        aux = InvGamma(np.asarray(1.0), np.asarray(noise.mean_inv + 1 / A**2))
    assert empty_noise_cost(A) == pytest.approx(-noise_elbo(noise, aux, A), rel=1e-9)
    assert empty_noise_cost(A) > 0  # mean field cannot represent the prior exactly


def test_condition_with_path_variances_matches_dense_gaussians():
    rng = np.random.default_rng(4)
    D, M, n = 3, 2, 4
    X = rng.normal(size=(n, D))
    y = rng.normal(size=n)
    stats = sufficient_stats(y, X, None, np.zeros(n, int), 1)
    means = rng.normal(size=(M, D))
    A = rng.normal(size=(M, D, D))
    covs = A @ np.swapaxes(A, 1, 2) + np.eye(D)
    weights = np.array([0.3, 0.7])
    s2 = np.array([0.1, 0.9])
    cm = condition(stats, PointMixture(weights, means, covs), np.zeros(0), s2)
    from scipy.stats import multivariate_normal

    dens = [np.log(weights[c]) + multivariate_normal(X @ means[c], X @ covs[c] @ X.T + s2[c] * np.eye(n)).logpdf(y) for c in range(M)]
    np.testing.assert_allclose(cm.log_marginal[0], np.logaddexp(*dens), rtol=1e-10)
    # the posterior of b under path c uses that path's variance
    c = 1
    Q = np.linalg.inv(covs[c]) + X.T @ X / s2[c]
    j = np.flatnonzero(cm.path == c)[0]
    np.testing.assert_allclose(cm.cov[j], np.linalg.inv(Q), rtol=1e-8)


# ----------------------------------------------------------------------------- the models
def _two_noise_frame(seed=0, n=60):
    """Two clusters of curves: flat and quiet (SD 0.1) vs rising and noisy (SD 0.8)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        g = i % 2
        t = np.sort(rng.uniform(0, 1, 8))
        f = (3.0 + 4.0 * t if g else np.zeros_like(t)) + rng.normal(0, 0.3)
        y = f + rng.normal(0, 0.8 if g else 0.1, len(t))
        rows.append(pd.DataFrame({"subject": f"s{i}", "time": t, "y": y}))
    return pd.concat(rows, ignore_index=True)


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")  # a slow final creep of the ELBO
@pytest.mark.parametrize("cls", [MixtureLMM, DeepMixtureLMM])
def test_models_learn_per_cluster_noise_and_use_it(cls, tmp_path):
    df = _two_noise_frame()
    kw = dict(n_components=4) if cls is MixtureLMM else dict(n_components=(4, 2), latent_dims=(2, 1))
    m = cls(**kw, noise="cluster", random_state=0).fit(df)
    by = m.sigma2_by_cluster_
    held = by.index[np.bincount(m.groups_, minlength=len(by)) > 0]
    assert len(held) == 2
    s2 = np.sort(by.loc[held].to_numpy())
    assert s2[0] < 0.05 and 0.3 < s2[1] < 1.2, s2
    assert s2[0] < m.sigma2_ < s2[1] and m.noise_ == "cluster"
    # bands of a new observation: narrower for a quiet subject than for a noisy one
    quiet, noisy = df[df.subject == "s0"], df[df.subject == "s1"]
    p = m.predict_trajectory(pd.concat([quiet, noisy]), times=[0.5], kind="observation")
    width = (p["upper"] - p["lower"]).to_numpy()
    assert width[0] < 0.5 * width[1]
    sims = m.sample_trajectories(pd.concat([quiet, noisy]), times=[0.5], n_samples=2000, kind="observation", random_state=0)
    sd = sims.groupby("subject")["value"].std()
    assert sd["s0"] < 0.5 * sd["s1"]
    # saving and loading round-trips bit-identically
    path = tmp_path / "m.dmlmm"
    m.save(path)
    m2 = load(path)
    np.testing.assert_array_equal(m2.params_.noise.rate, m.params_.noise.rate)
    np.testing.assert_array_equal(m2.params_.noise_aux.shape, m.params_.noise_aux.shape)
    pd.testing.assert_series_equal(m2.sigma2_by_cluster_, m.sigma2_by_cluster_)
    assert m2.sigma2_ == m.sigma2_ and m2.noise == m2.noise_ == "cluster"
    pd.testing.assert_frame_equal(m2.predict_trajectory(quiet, kind="observation"), m.predict_trajectory(quiet, kind="observation"))
    pd.testing.assert_series_equal(m2.score_samples(quiet), m.score_samples(quiet))


def test_shared_noise_reports_one_variance_per_group():
    df = _two_noise_frame(n=30)
    m = MixtureLMM(3, random_state=0).fit(df)
    assert np.all(m.sigma2_by_cluster_.to_numpy() == m.sigma2_)
    assert len(m.sigma2_by_cluster_) == m.n_components_[0]


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_auto_noise_keeps_the_fit_with_the_higher_elbo():
    df = _two_noise_frame(n=30)
    # one covariance (the choice between two, a race of the same kind, is tested in test_pspline_covariance.py)
    fits = {k: MixtureLMM(3, noise=k, covariance="pspline", random_state=0, max_iter=150).fit(df)
            for k in ("shared", "cluster", "auto")}
    better = max(("shared", "cluster"), key=lambda k: fits[k].elbo_)
    assert fits["auto"].noise_ == better == "cluster"  # the clusters' noise levels differ eightfold
    assert fits["auto"].elbo_ == fits[better].elbo_
    assert fits["shared"].noise_ == "shared"


def test_noise_option_is_checked():
    with pytest.raises(ValueError, match="noise must be one of"):
        MixtureLMM(2, noise="subject").fit(_two_noise_frame(n=10))


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_per_cluster_noise_with_minibatches_and_hard_assignments():
    df = _two_noise_frame(n=40)
    for kw in (dict(batch_size=10, max_iter=300), dict(hard_assignment=True)):
        m = MixtureLMM(3, noise="cluster", covariance="pspline", random_state=0, **kw).fit(df)
        s2 = m.sigma2_by_cluster_.to_numpy()
        assert np.isfinite(s2).all() and (s2 > 0).all() and m.noise_ == "cluster"
        used = np.bincount(m.groups_, minlength=len(s2)) > 0
        if used.sum() == 2:
            assert s2[used].max() > 5 * s2[used].min()

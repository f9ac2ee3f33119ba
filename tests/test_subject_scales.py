"""Subject-level residual scales (noise_df): exact ELBO terms, monotone CAVI, nu, predictions, API."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import integrate
from scipy.special import gammaln

from dmlmm import DeepMixtureLMM, MixtureLMM, load
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.expfam import InvGamma
from dmlmm.metrics import adjusted_rand_index
from dmlmm.inference.engine import VariationalParams, VIConfig, init_noise_and_fixed, noise_moments, run_vi
from dmlmm.inference.local import local_step, observation_factor
from dmlmm.inference.noise import path_groups, per_cluster
from dmlmm.inference.subject_scales import (DF_MAX, SubjectScales, group_moments, half_rss, initial_scales,
                                            log_likelihood_shift, optimal_df, profile_elbo, scales_elbo, weighted_stats)
from dmlmm.models.base import ridge_estimates
from dmlmm.prediction import condition
from dmlmm.prediction_scales import condition_with_scales
from dmlmm.priors.base import PointMixture
from dmlmm.priors.dmfa import DeepMixturePrior
from dmlmm.priors.gaussian import GaussianMixturePrior
from dmlmm.sufficient import sufficient_stats
from test_cluster_noise import _toy_stats  # two groups of subjects with residual SDs 0.2 and 0.6
from test_vi_engine import _gauss_sample, _ig_logpdf, _ig_sample, _local_elbo_draws, _mc_check, _sample_dmfa_layers


def _scaled_start(stats, prior, df=4.0, learn=True, iters=3, accelerate=True, seed=0, cluster=False):
    rng = np.random.default_rng(seed)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=iters, tol=1e-300, prune_threshold=0.0, subject_df=df, learn_df=learn,
                      accelerate=accelerate)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    if cluster:  # one residual variance per first-layer component
        noise, aux = per_cluster(noise, aux, int(prior.path_components()[:, 0].max()) + 1)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng), None, initial_scales(stats.n_obs, df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = run_vi(stats, prior, params, config, rng)
    return res, config


# ----------------------------------------------------------------------------- ELBO terms
def test_scales_elbo_matches_monte_carlo():
    rng = np.random.default_rng(0)
    q = InvGamma(rng.uniform(1.5, 6.0, 7), rng.uniform(0.5, 4.0, 7))
    scales = SubjectScales(q, 3.7)
    v = _ig_sample(q, 200000, rng)
    total = (_ig_logpdf(v, 3.7 / 2, 3.7 / 2) - _ig_logpdf(v, q.shape, q.rate)).sum(1)
    _mc_check(total, scales_elbo(scales), "subject scales' prior and entropy")


def test_local_elbo_with_subject_scales_matches_monte_carlo():
    """sum_i log_evidence_i = E_q[log p(y, b, z, c | globals, v)] - E_q[log q(b, z, c)] with v_i ~ q(v_i)."""
    stats = _toy_stats(seed=5, n_subjects=6)
    prior = DeepMixturePrior(3, (2, 2), (2, 1))
    res, config = _scaled_start(stats, prior)
    params = res.params
    assert not np.allclose(params.scales.weight, 1.0)
    paths = prior.path_components()
    pp, cache = prior.path_prior(params.prior)
    nm = noise_moments(params, stats.dim_fixed, paths)
    weighted = weighted_stats(stats, params.scales.weight)
    loc = local_step(weighted, pp, nm)
    exact = (loc.log_evidence + log_likelihood_shift(params.scales, stats.n_obs)).sum()

    rng = np.random.default_rng(7)
    S = 30000
    _, draws = _sample_dmfa_layers(prior, params.prior, S, rng)
    s2 = _ig_sample(params.noise, S, rng)
    v_all = _ig_sample(params.scales.q, S, rng)  # (S, N)
    w, _, _ = _gauss_sample(params.fixed, S, rng)
    N = stats.n_subjects
    total = np.zeros(S)
    for i in range(N):  # brute force: q(b | c) as the weighted local step computes it, v_i drawn from q(v_i)
        total += _local_elbo_draws(stats, i, loc, pp, cache, draws, paths, lambda c: nm.prec * params.scales.weight[i],
                                   nm.w_mean, w, lambda c: s2 * v_all[:, i], rng, S)
    _mc_check(total, exact, "local ELBO with subject scales")


@pytest.mark.parametrize("dim, n_obs, cluster", [(3, 6, False), (14, 3, False), (3, 6, True), (14, 3, True)],
                         ids=["dense", "observation-space", "dense-cluster-noise", "observation-space-cluster-noise"])
def test_group_moments_and_rss_match_the_local_moments(dim, n_obs, cluster):
    """Per subject and noise group, E[b'X'Xb], E[b] and R_i = sum_g E[1/sigma_g^2] E[1{c in g} ||y - Xb - Fw||^2] / 2
    against the local step's own moments of that subject and path alone (with 14 functions and 3 visits each,
    through the subjects' Gram factors; with one residual variance per first-layer component, two groups)."""
    stats = _toy_stats(seed=1, n_subjects=5, n_fixed=2, dim=dim, n_obs=n_obs)
    prior = DeepMixturePrior(dim, (2, 2), (1, 1))
    res, _ = _scaled_start(stats, prior, cluster=cluster)
    params = res.params
    paths = prior.path_components()
    pp, _ = prior.path_prior(params.prior)
    nm = noise_moments(params, stats.dim_fixed, paths)
    groups = path_groups(params.noise, paths)
    assert groups.max() == (1 if cluster else 0)
    weight = params.scales.weight
    weighted = weighted_stats(stats, weight)
    assert (observation_factor(weighted) is not None) == (n_obs < dim)
    loc = local_step(weighted, pp, nm, moment_threshold=0.0)
    s_path = np.broadcast_to(nm.prec, (prior.n_paths,))
    mom = group_moments(weighted, pp.precision, pp.shift, s_path, loc.resp, nm.w_mean, loc.mean_b, weight, groups, 0.0)
    wm, wc, _ = params.fixed.moments()
    s_group = np.atleast_1d(params.noise.mean_inv)
    half = half_rss(stats, mom, s_group, wm, wc)
    for i in range(stats.n_subjects):
        expected_half = 0.0
        for g in range(groups.max() + 1):
            on = groups == g
            one = local_step(weighted.subset(np.array([i])), replace(pp, log_weight=np.where(on, pp.log_weight, -np.inf)),
                             nm, moment_threshold=0.0)  # subject i on group g's paths alone
            second = one.moments.second.sum(0) / one.moments.weight.sum()  # E[b b' | c in g]
            first = one.moments.first.sum(0) / one.moments.weight.sum()
            r_g = loc.resp[i, on].sum()
            assert mom.resp[i, g] == pytest.approx(r_g, rel=1e-10)
            assert mom.quad[i, g] == pytest.approx(r_g * np.trace(stats.XtX[i] @ second), rel=1e-8)
            np.testing.assert_allclose(mom.mean[i, g], r_g * first, rtol=1e-8, atol=1e-12)
            rss = (stats.yty[i] - 2 * stats.Xty[i] @ first - 2 * stats.Fty[i] @ wm
                   + np.trace(stats.XtX[i] @ second) + 2 * first @ stats.XtF[i] @ wm
                   + np.trace(stats.FtF[i] @ (wc + np.outer(wm, wm))))
            expected_half += 0.5 * s_group[g] * r_g * rss
        # R_i is a small difference of large terms where 3 visits nearly fix 14 coefficients (here 1.4 out of
        # 0.5 E[1/sigma^2] y'y = 1.1e7): to 1e-13 of those terms
        assert half[i] == pytest.approx(expected_half, rel=1e-8, abs=1e-13 * 0.5 * s_group.max() * stats.yty[i])


def test_group_moments_with_mixed_ranks_match_explicit_posteriors():
    """Subjects with 1 to 9 visits and 14 functions go through their Gram factors by rank class (1, 2, 4, 8,
    and the largest): per pair, E[b | c] and E[b'X'Xb | c] against the explicit posterior
    Q = P_c + s_c X'X, m = Q^{-1}(shift_c + s_c X'(y - F w)), m'X'Xm + tr(X'X Q^{-1}), summed per noise group."""
    rng = np.random.default_rng(8)
    N, D, M = 40, 14, 3
    visits = rng.integers(1, 10, N)
    codes = np.repeat(np.arange(N), visits)
    X, F = rng.uniform(0, 1, (len(codes), D)), rng.normal(size=(len(codes), 1))
    y = rng.normal(size=len(codes))
    stats = sufficient_stats(y, X, F, codes, N)
    weight = rng.uniform(0.3, 2.0, N)
    weighted = weighted_stats(stats, weight)
    assert observation_factor(weighted) is not None
    A = rng.normal(size=(M, D, D))
    precision = A @ np.swapaxes(A, 1, 2) / D + np.eye(D)
    shift, s_path, w = rng.normal(size=(M, D)), rng.uniform(0.5, 3.0, M), np.array([0.4])
    resp = rng.dirichlet(np.ones(M), N)
    groups = np.array([0, 1, 1])
    mom = group_moments(weighted, precision, shift, s_path, resp, w, np.zeros((N, D)), weight, groups, 0.0)
    for i in range(N):
        xtx, xr = weighted.XtX[i], weighted.Xty[i] - weighted.XtF[i] @ w
        quad, mean = np.zeros(2), np.zeros((2, D))
        for c in range(M):
            cov = np.linalg.inv(precision[c] + s_path[c] * xtx)
            m = cov @ (shift[c] + s_path[c] * xr)
            quad[groups[c]] += resp[i, c] * (m @ xtx @ m + np.trace(xtx @ cov)) / weight[i]
            mean[groups[c]] += resp[i, c] * m
        np.testing.assert_allclose(mom.quad[i], quad, rtol=1e-9)
        np.testing.assert_allclose(mom.mean[i], mean, rtol=1e-9, atol=1e-12)


def test_profile_elbo_is_the_elbo_at_the_optimal_q_and_optimal_df_maximises_it():
    rng = np.random.default_rng(3)
    n = rng.integers(2, 12, 50).astype(float)
    half_rss = rng.gamma(2.0, 1.0, 50) * n / 2
    for df in (1.3, 7.0, 250.0):
        q = InvGamma(df / 2 + n / 2, df / 2 + half_rss)
        at_optimum = scales_elbo(SubjectScales(q, df)) + np.sum(-0.5 * n * q.mean_log - half_rss * q.mean_inv)
        assert profile_elbo(np.array(df), n, half_rss) == pytest.approx(at_optimum, rel=1e-12)
        # and the integral by quadrature, subject 0
        f = lambda u: np.exp(_ig_logpdf(np.exp(u), df / 2, df / 2) + u - 0.5 * n[0] * u - half_rss[0] * np.exp(-u))
        one = np.log(integrate.quad(f, -30, 30, epsabs=0, epsrel=1e-12, limit=400)[0])
        assert profile_elbo(np.array(df), n[:1], half_rss[:1]) == pytest.approx(one, abs=1e-8)
    best = optimal_df(n, half_rss)
    grid = np.exp(np.linspace(0.0, np.log(1000.0), 4001))
    assert profile_elbo(np.array(best), n, half_rss) >= profile_elbo(grid, n, half_rss).max() - 1e-9
    assert 1.0 < best < 1000.0
    # residuals exactly as the shared variance says for every subject: no tails, nu at its ceiling
    assert optimal_df(np.full(30, 8.0), np.full(30, 4.0)) == DF_MAX


@pytest.mark.parametrize("prior", [DeepMixturePrior(4, (3, 2), (2, 1)), GaussianMixturePrior(4, 3)], ids=["dmfa", "gmm"])
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("cluster", [False, True], ids=["shared", "cluster-noise"])
def test_elbo_never_decreases_with_subject_scales(prior, accelerate, cluster):
    stats = _toy_stats(seed=2, n_subjects=40, n_obs=6, dim=4, n_fixed=2)
    res, _ = _scaled_start(stats, prior, iters=80, accelerate=accelerate, cluster=cluster)
    assert np.size(res.params.noise.shape) == (3 if cluster else 1)
    h = np.asarray(res.elbo_history)
    assert (res.n_iter == 80 or res.converged) and len(h) >= 20
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()
    assert res.params.scales.df != 4.0  # learned


# ----------------------------------------------------------------------------- predictions
def test_conditioning_integrates_the_scale_exactly():
    """log p(y_i) and E[b_i | y_i] against scipy's adaptive quadrature over v, path by path."""
    rng = np.random.default_rng(4)
    D, M, n, df = 3, 2, 7, 5.0
    X = rng.normal(size=(n, D))
    F = rng.normal(size=(n, 1))
    w = np.array([0.4])
    y = X @ np.array([1.0, -0.5, 0.3]) + F @ w + rng.standard_t(3, n) * 0.5
    stats = sufficient_stats(y, X, F, np.zeros(n, int), 1)
    A = rng.normal(size=(M, D, D))
    covs = A @ np.swapaxes(A, 1, 2) + np.eye(D)
    mix = PointMixture(np.array([0.3, 0.7]), rng.normal(size=(M, D)), covs)
    sigma2 = np.array([0.2, 0.35])
    cm = condition_with_scales(stats, mix, w, sigma2, df)
    r = y - F @ w

    def dens(u, c, what):
        v = np.exp(u)
        V = X @ mix.covs[c] @ X.T + sigma2[c] * v * np.eye(n)
        d = r - X @ mix.means[c]
        lp = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + d @ np.linalg.solve(V, d))
        prior = _ig_logpdf(v, df / 2, df / 2) + u
        if what is None:
            return np.exp(lp + prior)
        post_mean = mix.means[c] + mix.covs[c] @ X.T @ np.linalg.solve(V, d)
        return np.exp(lp + prior) * post_mean[what]

    marg = [integrate.quad(dens, -15, 15, args=(c, None), epsabs=0, epsrel=1e-11, limit=200)[0] for c in range(M)]
    total = float(np.sum(mix.weights * marg))
    assert cm.log_marginal[0] == pytest.approx(np.log(total), abs=1e-7)
    for j in range(D):
        num = sum(mix.weights[c] * integrate.quad(dens, -15, 15, args=(c, j), epsabs=0, epsrel=1e-11, limit=200)[0]
                  for c in range(M))
        assert cm.weight @ cm.mean[:, j] == pytest.approx(num / total, abs=1e-7)
    # a very large nu is the Gaussian conditioning
    gauss = condition(stats, mix, w, sigma2)
    assert condition_with_scales(stats, mix, w, sigma2, 1e9).log_marginal[0] == pytest.approx(gauss.log_marginal[0], abs=1e-6)


def _noisy_frame(n_subjects=240, seed=0, df=3.0):
    """Straight lines plus a bump, 8 visits each; subject i's residual variance 0.05 v_i, v_i ~ IG(df/2, df/2)."""
    rng = np.random.default_rng(seed)
    rows = []
    v = 1.0 / rng.gamma(df / 2, 2 / df, n_subjects)
    for i in range(n_subjects):
        t = np.sort(rng.uniform(0, 10, 8))
        f = rng.normal(1, 0.5) + rng.normal(0.3, 0.1) * t + np.sin(t / 2)
        rows.append(pd.DataFrame({"subject": i, "time": t, "y": f + np.sqrt(0.05 * v[i]) * rng.normal(size=8)}))
    return pd.concat(rows, ignore_index=True), v


def test_recovers_heavy_tails_and_gaussian_noise():
    data, _ = _noisy_frame()
    m = MixtureLMM(1, noise_df="auto", response_transform=None, random_state=0).fit(data)
    assert 1.5 < m.noise_df_ < 8.0, m.noise_df_
    rng = np.random.default_rng(1)
    gauss = data.copy()
    gauss["y"] = (1 + 0.3 * gauss["time"] + np.sin(gauss["time"] / 2) + gauss["subject"].map(
        pd.Series(rng.normal(0, 0.5, 240))) + np.sqrt(0.05) * rng.normal(size=len(gauss)))
    g = MixtureLMM(1, noise_df="auto", response_transform=None, random_state=0).fit(gauss)
    assert g.noise_df_ > 50, g.noise_df_


def test_noisy_subjects_get_wider_bands_and_the_bands_cover():
    data, v = _noisy_frame(seed=2)
    held_idx = data.groupby("subject").sample(2, random_state=3).index
    train, held = data.drop(held_idx), data.loc[held_idx]
    m = MixtureLMM(1, noise_df="auto", response_transform=None, random_state=0).fit(train)
    gauss = MixtureLMM(1, response_transform=None, random_state=0).fit(train)
    noisy, calm = v[:60] > np.quantile(v, 0.8), v[:60] < np.quantile(v, 0.5)
    ratios = []
    for model in (m, gauss):
        pred = pd.concat([model.predict_trajectory(train[train.subject == s], times=held[held.subject == s]["time"].to_numpy(),
                                                   kind="observation") for s in range(60)])
        width = (pred["upper"] - pred["lower"]).groupby(pred["subject"]).mean()
        ratios.append(width[noisy].median() / width[calm].median())
        joined = held[held.subject < 60].merge(pred, on=["subject", "time"])
        cover = ((joined["y"] >= joined["lower"]) & (joined["y"] <= joined["upper"])).mean()
        if model is m:
            assert 0.88 <= cover <= 0.99, cover
    # the Gaussian model gives every subject about the same band; the scales widen the noisy ones'
    assert ratios[0] > 1.3 and ratios[1] < 1.1, ratios
    # held-out log score above the Gaussian model's on the same split
    assert m.score(held, condition_on=train) > gauss.score(held, condition_on=train)


# ----------------------------------------------------------------------------- API
def test_fitted_attributes_and_save_load(tmp_path):
    data, v = _noisy_frame(n_subjects=80, seed=5)
    m = DeepMixtureLMM((3, 2), (2, 1), noise_df=4.0, response_transform=None, random_state=0).fit(data)
    assert m.noise_df_ == 4.0
    assert m.subject_noise_.shape == (80,) and (m.subject_noise_ > 0).all()
    # the noisiest subjects by their own fitted scale are the truly noisiest
    assert np.corrcoef(np.log(m.subject_noise_.to_numpy()), np.log(v))[0, 1] > 0.6
    m.save(tmp_path / "m.dmlmm")
    back = load(tmp_path / "m.dmlmm")
    assert back.noise_df_ == 4.0
    pd.testing.assert_series_equal(back.subject_noise_, m.subject_noise_)
    a = m.predict_trajectory(data, times=[1.0, 5.0], kind="observation")
    b = back.predict_trajectory(data, times=[1.0, 5.0], kind="observation")
    pd.testing.assert_frame_equal(a, b)
    draws = m.sample_trajectories(data[data.subject < 3], times=[2.0], n_samples=50, kind="observation", random_state=0)
    assert draws["value"].notna().all()
    from dmlmm.report.collect import collect_results

    res = collect_results(m, data)
    assert res.facts["subjects' residual variances"].startswith("Student-t scales, nu = 4.0; median ")
    # each subject's posterior residual variance given its data: the fit's own (mean field) and the
    # quadrature's (exact given the globals) agree closely; a subject without data gets the prior mean
    noise = m.predict_noise(data)
    assert np.corrcoef(np.log(noise.to_numpy()), np.log(m.subject_noise_.loc[noise.index].to_numpy()))[0, 1] > 0.95
    np.testing.assert_allclose(res.clusters["residual_variance"].to_numpy(), noise.loc[res.clusters["subject"]].to_numpy())
    new = pd.DataFrame({"subject": ["new"], "time": [3.0], "y": [np.nan]})
    assert m.predict_noise(new).iloc[0] == pytest.approx(m.sigma2_ * 4.0 / (4.0 - 2.0), rel=1e-6)


def test_scales_with_one_residual_variance_per_cluster():
    """noise="cluster" with noise_df: subject i in cluster k has residual variance sigma2_k v_i. Two groups of
    subjects whose residual variances differ fourfold, a fifth of each group's subjects four times noisier
    again: the fit finds the groups, the two variances and heavy tails; a noisy subject's residual variance
    is its cluster's times its own scale; noise="auto" keeps the per-cluster variances."""
    rng = np.random.default_rng(11)
    rows, truth, noisy = [], [], []
    for i in range(160):
        g, loud = i % 2, rng.random() < 0.2
        t = np.sort(rng.uniform(0, 10, 8))
        f = (2.0 * g - 1.0) * np.sin(t / 2) * 2 + rng.normal(0, 0.3) + 0.1 * t
        sd = (0.15 if g == 0 else 0.3) * (2.0 if loud else 1.0)
        rows.append(pd.DataFrame({"subject": i, "time": t, "y": f + sd * rng.normal(size=8)}))
        truth.append(g)
        noisy.append(loud)
    data = pd.concat(rows, ignore_index=True)
    truth, noisy = np.array(truth), np.array(noisy)
    kw = dict(noise_df="auto", response_transform=None, random_state=0)
    # noise="auto" fits one residual variance and one per cluster (each with the scales) and keeps the
    # higher ELBO: it must keep the per-cluster one, checked against the truth. (That "auto" keeps the better
    # of the two as fitted alone is tested in test_cluster_noise.py; fitting them alone here too doubled this
    # test's time.)
    m = MixtureLMM(2, noise="auto", **kw).fit(data)
    assert m.noise_ == "cluster" and m.noise_df_ < 30.0
    assert adjusted_rand_index(truth, m.groups_.loc[range(160)].to_numpy()) == 1.0
    by_group = m.sigma2_by_cluster_.to_numpy()
    quiet_group = int(pd.Series(m.groups_.to_numpy()[truth == 0]).mode()[0])
    assert by_group[1 - quiet_group] / by_group[quiet_group] == pytest.approx(4.0, rel=0.35)  # truth 4
    ratio = m.subject_noise_.to_numpy() / by_group[m.groups_.loc[m.subject_noise_.index].to_numpy()]  # ~ E[v_i]
    assert np.median(ratio[noisy]) > 2.0 * np.median(ratio[~noisy])
    new = pd.DataFrame({"subject": ["new"], "time": [3.0], "y": [np.nan]})  # no data: the prior's mix of the two
    got = m.predict_noise(new).iloc[0] / (m.noise_df_ / (m.noise_df_ - 2.0))
    assert by_group.min() < got < by_group.max()


def test_noise_df_errors():
    data, _ = _noisy_frame(n_subjects=30, seed=6)
    with pytest.raises(ValueError, match="noise_df must be None, 'auto' or a positive number"):
        MixtureLMM(2, noise_df=-1).fit(data)


def test_a_minibatch_fit_learns_the_scales_of_the_full_batch_fit():
    """noise_df with a minibatch fit (warm start on a subsample, which learns nu; natural gradients, each
    minibatch's q(v_i) updated at that nu; full passes that learn nu again): nu, the ELBO, the clusters and
    each subject's residual variance of the full-batch fit."""
    data, v = _noisy_frame(n_subjects=600, seed=5)
    data = data.assign(y=data["y"] + 1.5 * (data["subject"] % 2) * np.sin(data["time"] / 3))  # two groups
    # one covariance (the choice between two is tested in test_pspline_covariance.py; it doubled this test's time)
    kw = dict(noise_df="auto", response_transform=None, covariance="pspline", random_state=0)
    full = MixtureLMM(3, batch_size="full", **kw).fit(data)
    mini = MixtureLMM(3, batch_size=60, subsample=300, **kw).fit(data)
    assert 2.0 < full.noise_df_ < 5.0  # truth 3
    assert mini.noise_df_ == pytest.approx(full.noise_df_, rel=0.05)
    assert abs(mini.elbo_ - full.elbo_) < 0.01 * abs(full.elbo_)
    assert adjusted_rand_index(full.labels_.to_numpy(), mini.labels_.loc[full.labels_.index].to_numpy()) > 0.9
    a, b = np.log(full.subject_noise_), np.log(mini.subject_noise_.loc[full.subject_noise_.index])
    assert np.corrcoef(a, b)[0, 1] > 0.99


def test_scales_start_from_the_ridge_fits_and_exploring_runs_hold_nu():
    """Each subject's starting scale follows its ridge fit's residual; exploring runs keep nu where it
    started (the final run learns it)."""
    from dmlmm.inference.moves import explore_config
    from dmlmm.models.starting import init_factory, ridge_estimates as ridge

    rng = np.random.default_rng(8)
    N, n, D = 60, 8, 3
    codes = np.repeat(np.arange(N), n)
    X = rng.uniform(0, 1, (N * n, D))
    noisy = rng.random(N) < 0.3
    y = (X * rng.normal(size=(N, D))[codes]).sum(1) + np.where(noisy, 1.0, 0.1)[codes] * rng.normal(size=N * n)
    stats = sufficient_stats(y, X, np.zeros((N * n, 0)), codes, N)
    prior = GaussianMixturePrior(D, 1)
    config = VIConfig(max_iter=40, subject_df=10.0, learn_df=True, prune_threshold=0.0)
    b_hat, pen = ridge(stats, 0.5, None, return_penalty=True)
    params = init_factory(stats, b_hat, config, "shared", None, pen)(None)(prior, rng)
    weight = params.scales.weight
    # (the ridge penalty also grows with a subject's own deviation, so the split is not perfect)
    assert np.median(weight[noisy]) < 0.5 * np.median(weight[~noisy])
    assert params.scales.df < 10.0  # learned from the ridge residuals: heavy tails
    explore = explore_config(config)
    assert not explore.learn_df
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        held = run_vi(stats, prior, params, explore, rng)
        final = run_vi(stats, prior, params, replace(explore, learn_df=True), rng)
    assert held.params.scales.df == params.scales.df
    assert final.params.scales.df != params.scales.df


def test_predict_noise_names_what_a_dask_frame_needs():
    dd = pytest.importorskip("dask.dataframe")
    data, _ = _noisy_frame(n_subjects=30, seed=6)
    m = MixtureLMM(1, noise_df="auto", response_transform=None, random_state=0, max_iter=30).fit(data)
    with pytest.raises(TypeError, match="predict_noise needs a pandas DataFrame: call .compute\\(\\) on the dask frame"):
        m.predict_noise(dd.from_pandas(data, npartitions=2))

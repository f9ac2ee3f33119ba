"""The mixture's P-spline covariance (``covariance="pspline"``): exact ELBO terms (Monte Carlo),
monotone coordinate ascent, the expected log prior of b, and what it is for: the residual variance is
not absorbed by rough coordinates when all subjects share a few visit times."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st
from scipy.special import multigammaln

from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.priors.gaussian import GaussianMixturePrior
from test_smoothing import ROUGH, _scale_pair_mc, _smooth_stats
from test_vi_engine import _dir_logpdf, _elbo_history, _gauss_sample, _ig_logpdf, _ig_sample, _mc_check, _mvn_logpdf, _start

POLY = np.flatnonzero(ROUGH == 0)
RGH = np.flatnonzero(ROUGH > 0)


def _fitted(seed=4, k=2):
    stats = _smooth_stats(seed=seed)
    prior = GaussianMixturePrior(len(ROUGH), k, roughness=ROUGH, covariance="pspline")
    params, _ = _start(stats, prior, iters=4)
    return prior, params.prior


def _sample_cov(prior, pp, S, rng):
    """Draws of (Sigma_k^poly (S, K, P, P), w (S, K), a (S, K, P)) and log p - log q of them."""
    K, P = prior.n_components, len(POLY)
    w, total = _scale_pair_mc(pp.cov_smooth, S, rng, prior.smooth_scale)
    a = _ig_sample(pp.cov_aux, S, rng)  # (S, K, P)
    total = total + (_ig_logpdf(a, 0.5, 1 / prior.cov_scale**2)
                     - _ig_logpdf(a, pp.cov_aux.shape, pp.cov_aux.rate)).sum(axis=(1, 2))
    df0 = prior.cov_df + P - 1
    sigs = np.empty((S, K, P, P))
    for k in range(K):
        sig = st.invwishart.rvs(df=pp.cov.df[k], scale=pp.cov.scale[k], size=S, random_state=rng)
        sigs[:, k] = sig
        psi = 2 * prior.cov_df / a[:, k]
        _, logdet_sig = np.linalg.slogdet(sig)
        prior_lp = (0.5 * df0 * np.log(psi).sum(-1) - 0.5 * df0 * P * np.log(2) - multigammaln(0.5 * df0, P)
                    - 0.5 * (df0 + P + 1) * logdet_sig - 0.5 * np.einsum("sd,sdd->s", psi, np.linalg.inv(sig)))
        total = total + prior_lp - st.invwishart.logpdf(sig.transpose(1, 2, 0), df=pp.cov.df[k], scale=pp.cov.scale[k])
    return sigs, w, total


def test_pspline_prior_factors_elbo_matches_monte_carlo():
    prior, pp = _fitted()
    assert pp.cov.scale.shape == (2, len(POLY), len(POLY))  # q(Sigma) only over the polynomial block
    rng = np.random.default_rng(5)
    S = 20000
    lam = np.where(ROUGH > 0, ROUGH, 1.0)
    pi = rng.dirichlet(pp.weights.alpha, size=S)
    total = _dir_logpdf(pi, np.full(2, prior.concentration)) - _dir_logpdf(pi, pp.weights.alpha)
    v, lp = _scale_pair_mc(pp.mean_smooth, S, rng, prior.smooth_scale)
    total += lp
    mu, mean, cov = _gauss_sample(pp.mean, S, rng)
    mu_var = np.where(ROUGH > 0, v[:, :, None] / lam, prior.mean_var)
    total += (-0.5 * np.log(2 * np.pi * mu_var) - 0.5 * mu**2 / mu_var).sum(axis=(1, 2))
    total -= _mvn_logpdf(mu, mean, cov).sum(1)
    _, _, lp = _sample_cov(prior, pp, S, rng)
    total += lp
    _mc_check(total, prior.elbo(pp), "P-spline covariance prior factors")


def test_pspline_path_prior_is_the_expected_log_density_of_b():
    """E_q[log N(b | mu_k, Sigma_k)] with Sigma_k = blockdiag(Sigma_poly, diag(w_k / lam_d)), by Monte
    Carlo over q, against the path prior's quadratic form."""
    prior, pp = _fitted(seed=6)
    b = np.array([0.4, -0.2, 0.3, -0.1, 0.05])
    rng = np.random.default_rng(7)
    S = 40000
    sigs, w, _ = _sample_cov(prior, pp, S, rng)
    mu, _, _ = _gauss_sample(pp.mean, S, rng)
    path, _ = prior.path_prior(pp)
    for k in range(prior.n_components):
        r = b - mu[:, k]  # (S, D)
        rp, rr = r[:, POLY], r[:, RGH]
        prec_p = np.linalg.inv(sigs[:, k])
        _, logdet_p = np.linalg.slogdet(sigs[:, k])
        var_r = w[:, k, None] / ROUGH[RGH]
        lp = (-0.5 * len(ROUGH) * np.log(2 * np.pi) - 0.5 * logdet_p - 0.5 * np.einsum("sd,sde,se->s", rp, prec_p, rp)
              - 0.5 * np.log(var_r).sum(1) - 0.5 * (rr**2 / var_r).sum(1))
        exact = path.const[k] + path.shift[k] @ b - 0.5 * b @ path.precision[k] @ b
        _mc_check(lp, exact, f"expected log prior of b, component {k}")
    # the precision is block diagonal: no covariance between the polynomial and the rough coordinates
    assert np.all(path.precision[:, POLY[:, None], RGH[None, :]] == 0)


@pytest.mark.parametrize("k", [1, 3])
def test_elbo_never_decreases_with_pspline_covariance(k):
    stats = _smooth_stats(seed=2, n_subjects=40)
    h = _elbo_history(stats, GaussianMixturePrior(5, k, roughness=ROUGH, covariance="pspline"), 0, 60)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:])), np.diff(h).min()


def test_pspline_covariance_is_checked():
    with pytest.raises(ValueError, match="covariance must be 'full' or 'pspline'"):
        GaussianMixturePrior(5, 1, roughness=ROUGH, covariance="diag")
    with pytest.raises(ValueError, match="needs a smoothness prior"):
        GaussianMixturePrior(5, 1, covariance="pspline")
    df = pd.DataFrame({"subject": np.repeat(np.arange(6), 4), "time": np.tile(np.arange(4.0), 6),
                       "y": np.random.default_rng(0).normal(size=24)})
    with pytest.raises(ValueError, match="covariance='pspline' needs the smoothness prior"):
        MixtureLMM(1, SplineBasis(6), smoothing=None, covariance="pspline").fit(df)
    with pytest.raises(ValueError, match="covariance must be 'auto', 'pspline' or 'full'"):
        MixtureLMM(1, SplineBasis(6), covariance="diagonal").fit(df)


def _shared_visit_data(seed=0, n=80):
    """Smooth curves (a quadratic per subject) seen at the same five times with noise SD 0.3: with 12
    basis functions and every subject at the same times, the residual variance is identified only by
    the covariance prior."""
    rng = np.random.default_rng(seed)
    t = np.array([0.0, 1.0, 2.5, 4.0, 6.0])
    c = rng.normal(size=(n, 3)) * [1.0, 0.3, 0.03]
    rows = [(i, tt, c[i, 0] + c[i, 1] * tt + c[i, 2] * tt**2 + 0.3 * rng.normal()) for i in range(n) for tt in t]
    return pd.DataFrame(rows, columns=["subject", "time", "y"])


def test_pspline_covariance_keeps_the_noise_where_the_full_one_absorbs_it():
    df = _shared_visit_data()
    fits = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for cov in ("full", "pspline"):
            fits[cov] = MixtureLMM(1, SplineBasis(12), covariance=cov, random_state=0).fit(df)
    truth = 0.3**2
    assert abs(fits["pspline"].sigma2_ - truth) < 0.35 * truth, fits["pspline"].sigma2_
    assert fits["full"].sigma2_ < 0.5 * truth  # the full covariance takes the noise into the curves
    assert fits["pspline"].prior_.covariance == "pspline" and fits["full"].prior_.covariance == "full"


def test_auto_covariance_keeps_the_higher_elbo():
    """"auto" fits both covariances and keeps the higher ELBO: the P-spline one on smooth curves seen at
    shared visit times; the full one on coefficients with an arbitrary covariance, where the P-spline
    mixture would split the one population into clusters to mimic it; "full" without a smoothness prior."""
    from test_mixture_models import _gaussian_curves

    smooth_df = _shared_visit_data(n=30)
    gauss_df, gauss_basis = _gaussian_curves(n_subjects=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = {cov: MixtureLMM(1, SplineBasis(8), covariance=cov, random_state=0).fit(smooth_df) for cov in ("pspline", "full")}
        auto = MixtureLMM(1, SplineBasis(8), random_state=0).fit(smooth_df)
        assert fits["pspline"].elbo_ > fits["full"].elbo_
        assert auto.prior_.covariance == "pspline" and auto.elbo_ == fits["pspline"].elbo_
        split = MixtureLMM(4, basis=gauss_basis, covariance="pspline", random_state=0).fit(gauss_df)
        auto = MixtureLMM(4, basis=gauss_basis, random_state=0).fit(gauss_df)
        assert split.n_components_[0] > 1  # the misspecified covariance makes clusters
        assert auto.prior_.covariance == "full" and auto.n_components_ == (1,) and auto.elbo_ > split.elbo_
        assert MixtureLMM(1, SplineBasis(5), smoothing=None, random_state=0).fit(smooth_df).prior_.covariance == "full"


def test_pspline_mixture_saves_and_loads(tmp_path):
    import dmlmm

    df = _shared_visit_data(n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(8), random_state=0).fit(df)
    m.save(tmp_path / "m.dmlmm")
    m2 = dmlmm.load(tmp_path / "m.dmlmm")
    assert m2.prior_.covariance == "pspline"
    assert "subjects' deviations: P-spline covariance" in m2.summary()
    a = m.predict_trajectory(df.head(10), times=np.linspace(0, 6, 7))
    b = m2.predict_trajectory(df.head(10), times=np.linspace(0, 6, 7))
    pd.testing.assert_frame_equal(a, b)


def _shared_time_gaussian_curves(n=150, times=(0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0), noise=0.2, seed=0, shared=True):
    """Curves with Gaussian coefficients of an arbitrary covariance (5 clamped cubic B-splines), every
    subject seen at the same seven times (``shared``; else at seven times of its own, uniform on [0, 1])
    with noise SD ``noise``."""
    rng = np.random.default_rng(seed)
    basis = SplineBasis(5, knots="clamped", lower=0, upper=1).fit()
    L = rng.normal(size=(5, 5)) * 0.4
    b = np.array([0.5, -1.0, 0.3, 1.0, 0.0]) + rng.normal(size=(n, 5)) @ L.T
    t = np.tile(times, (n, 1)).ravel() if shared else rng.uniform(0, 1, n * len(times))
    y = (basis.transform(t) * np.repeat(b, len(times), axis=0)).sum(1) + noise * rng.normal(size=t.size)
    return pd.DataFrame({"subject": np.repeat(np.arange(n), len(times)), "time": t, "y": y})


def test_noise_is_confounded_with_a_full_covariance_at_shared_times():
    """Every observation at one of T <= D distinct times where the basis has rank T, no subject seen twice
    at one time: sigma^2 I is one of the covariances X_T Sigma X_T' reaches. More distinct times than
    functions, or a replicate, identify the noise."""
    from dmlmm.models.design import noise_confounded, repeated_times

    basis = SplineBasis(8).fit(np.linspace(0, 1, 50))
    shared = np.array([0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0])
    assert noise_confounded(basis, shared, repeats=False)
    assert noise_confounded(basis, np.linspace(0, 1, 8), repeats=False)  # T = D: still every covariance
    assert not noise_confounded(basis, np.linspace(0, 1, 9), repeats=False)
    assert not noise_confounded(basis, shared, repeats=True)
    assert not noise_confounded(basis, None, repeats=False)  # times not known: taken as many
    codes = np.array([0, 0, 1, 1, 1])
    assert repeated_times(codes, np.array([0.0, 1.0, 0.0, 1.0, 1.0]))
    assert not repeated_times(codes, np.array([0.0, 1.0, 0.0, 1.0, 2.0]))
    assert not repeated_times(np.array([0, 1]), np.array([0.5, 0.5]))  # two subjects at one time


def test_auto_covariance_skips_the_full_one_where_shared_times_confound_the_noise():
    """At seven shared times under eight functions the full covariance's ELBO is higher, with the noise
    taken into the curves (sigma^2 a quarter of the truth): "auto" fits the P-spline one alone and keeps
    the noise; asking for the full one (or no smoothness prior, which means it) warns."""
    from dmlmm.exceptions import IdentifiabilityWarning

    df = _shared_time_gaussian_curves()
    truth = 0.2**2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = MixtureLMM(1, SplineBasis(8), covariance="full", random_state=0).fit(df)
        pspline = MixtureLMM(1, SplineBasis(8), covariance="pspline", random_state=0).fit(df)
    assert full.elbo_ > pspline.elbo_ + 50 and full.sigma2_ < 0.5 * truth
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        auto = MixtureLMM(1, SplineBasis(8), random_state=0).fit(df)
    assert auto.prior_.covariance == "pspline" and auto.elbo_ == pspline.elbo_
    assert abs(auto.sigma2_ - truth) < 0.35 * truth, auto.sigma2_
    shared = "every subject is observed at (some of) the same 7 distinct times, no more than the 8 basis functions: "
    full = shared + "under a full covariance of the spline coefficients the residual variance is not identified"
    deep = shared + "without the smoothness prior the residual variance is barely identified"
    for model, message in ((MixtureLMM(1, SplineBasis(8), covariance="full"), full),
                           (MixtureLMM(1, SplineBasis(8), smoothing=None), full),
                           (DeepMixtureLMM((2, 1), (2, 1), SplineBasis(8), smoothing=None), deep)):
        with pytest.warns(IdentifiabilityWarning, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
            model.set_params(max_iter=5, random_state=0).fit(df)
        assert any(w.filename == __file__ for w in caught if issubclass(w.category, IdentifiabilityWarning))
    with warnings.catch_warnings():  # the deep mixture with its smoothness prior: no warning
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", IdentifiabilityWarning)
        DeepMixtureLMM((2, 1), (2, 1), SplineBasis(8), max_iter=5, random_state=0).fit(df)
    # such curves seen at times of their own: the noise is identified, "auto" fits both and keeps the full one
    irregular = _shared_time_gaussian_curves(shared=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", IdentifiabilityWarning)  # (checked first: the filter added last)
        auto = MixtureLMM(1, SplineBasis(8), random_state=0).fit(irregular)
    assert auto.prior_.covariance == "full" and abs(auto.sigma2_ - truth) < 0.35 * truth, auto.sigma2_

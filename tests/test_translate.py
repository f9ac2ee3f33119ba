"""The translation move of the component means (dmlmm.inference.translate)."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest

from dmlmm import MixtureLMM, SplineBasis
from dmlmm.exceptions import ConvergenceWarning
from dmlmm.inference.engine import (VariationalParams, VIConfig, elbo_globals, init_noise_and_fixed, noise_moments,
                                    run_vi, update_globals)
from dmlmm.inference.local import local_step
from dmlmm.inference.translate import translate_means
from dmlmm.models.base import ridge_estimates
from dmlmm.priors.dmfa import DeepMixturePrior
from dmlmm.priors.gaussian import GaussianMixturePrior
from dmlmm.simulate import pspline_lines
from dmlmm.sufficient import sufficient_stats


def _stats(seed=0, N=40, n=8, D=6):
    """Subjects whose coefficients scatter little around their mean in the last D - 2 coordinates (the
    slow mode's setting), one fixed-effect covariate."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(N), n)
    X = rng.normal(size=(N * n, D))
    F = rng.normal(size=(N * n, 1))
    b = rng.normal(size=D) + np.c_[rng.normal(size=(N, 2)), 0.01 * rng.normal(size=(N, D - 2))]
    y = (X * b[codes]).sum(1) + 0.7 * F[:, 0] + 0.3 * rng.normal(size=N * n)
    return sufficient_stats(y, X, F, codes, N)


def _state(stats, prior, iters=3):
    """Globals after a few iterations without the move, a local step at them, and the global update."""
    rng = np.random.default_rng(1)
    b_hat = ridge_estimates(stats)
    config = VIConfig(max_iter=iters, tol=1e-300, prune_threshold=0.0, accelerate=False, translate_means=False)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, rng), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        params = run_vi(stats, prior, params, config, rng).params
    P = stats.dim_fixed
    pp, cache = prior.path_prior(params.prior)
    local = local_step(stats, pp, noise_moments(params, P), move_sums=True)
    new = update_globals(params, prior, stats, local, cache, None, config)
    return params, pp, local, new, config


def _kl(m0, V0, m1, V1):
    """KL(N(m0, V0) || N(m1, V1)), batched over the first axis."""
    P1 = np.linalg.inv(V1)
    d = m1 - m0
    return 0.5 * (np.einsum("nij,nji->n", P1, V0) + np.einsum("ni,nij,nj->n", d, P1, d) - m0.shape[1]
                  + np.linalg.slogdet(V1)[1] - np.linalg.slogdet(V0)[1])


def _moved_elbo(stats, prior, params, pp, local, new, config, delta, t):
    """The ELBO at the globals ``new`` with the means moved by ``t * delta`` and every q(b_i) of the local step at
    ``params`` moved by the same: the optimal local bound at those globals less KL(moved q(b_i) || optimal q(b_i))
    (one path: q(b_i) is Gaussian, and the local bound of any Gaussian q(b_i) is that difference)."""
    P = stats.dim_fixed
    moved = replace(new, prior=prior.translate_first_means(new.prior, t * delta))
    nm_old, nm = noise_moments(params, P), noise_moments(moved, P)
    pp_t, _ = prior.path_prior(moved.prior)
    best = local_step(stats, pp_t, nm)
    V_old = np.linalg.inv(pp.precision[0] + nm_old.prec * stats.XtX)
    V_t = np.linalg.inv(pp_t.precision[0] + nm.prec * stats.XtX)
    q_mean = local.mean_b + t * delta[0]
    return float(best.log_evidence.sum() - _kl(q_mean, V_old, best.mean_b, V_t).sum()) + elbo_globals(moved, prior, config)


@pytest.mark.parametrize("prior", [
    GaussianMixturePrior(6, 1, roughness=np.r_[0.0, 0.0, 1.0, 4.0, 9.0, 16.0], covariance="pspline"),
    GaussianMixturePrior(6, 1),
], ids=["pspline", "full"])
def test_the_move_is_the_exact_maximiser_along_the_translation(prior):
    """ELBO(t) along the move (means and every q(b_i) shifted by t delta) is a concave quadratic with its
    maximum at t = 1: equal at t = 0.5 and 1.5, and ELBO(1) - ELBO(0) = 4 (ELBO(1) - ELBO(0.5))."""
    stats = _stats()
    params, pp, local, new, config = _state(stats, prior, iters=1)
    P = stats.dim_fixed
    moved = translate_means(new, prior, local, pp, noise_moments(params, P), noise_moments(new, P))
    delta = prior.first_means(moved.prior)[0] - prior.first_means(new.prior)[0]
    assert np.abs(delta).max() > 1e-4  # a move that matters here
    f = {t: _moved_elbo(stats, prior, params, pp, local, new, config, delta, t) for t in (0.0, 0.5, 1.0, 1.5)}
    gain = f[1.0] - f[0.0]
    assert gain > 1e-3
    assert f[0.5] == pytest.approx(f[1.5], abs=1e-6 * gain + 1e-8)
    assert gain == pytest.approx(4.0 * (f[1.0] - f[0.5]), rel=1e-6)


def test_the_move_raises_the_deep_mixtures_elbo():
    """One path of the deep mixture: the moved state (the next local step re-optimises q(z | b) as well) ends
    above the unmoved one; and the move keeps E[B] and the covariance of each row of q(theta)."""
    prior = DeepMixturePrior(6, (1, 1), (2, 1), roughness=np.r_[0.0, 0.0, 1.0, 4.0, 9.0, 16.0])
    stats = _stats(seed=2)
    params, pp, local, new, config = _state(stats, prior)
    P = stats.dim_fixed
    moved = translate_means(new, prior, local, pp, noise_moments(params, P), noise_moments(new, P))
    delta = prior.first_means(moved.prior)[0] - prior.first_means(new.prior)[0]
    assert np.abs(delta).max() > 1e-3
    f0 = _moved_elbo(stats, prior, params, pp, local, new, config, delta, 0.0)
    f1 = _moved_elbo(stats, prior, params, pp, local, new, config, delta, 1.0)
    assert f1 > f0
    (m0, c0, _), (m1, c1, _) = new.prior.layers[0].loadings.moments(), moved.prior.layers[0].loadings.moments()
    np.testing.assert_allclose(m1[..., 1:], m0[..., 1:], atol=1e-12)
    np.testing.assert_allclose(m1[..., 0] - m0[..., 0], delta, rtol=1e-10)
    np.testing.assert_allclose(c1, c0)


def test_the_slow_mode_of_a_centred_fit_is_mended(monkeypatch):
    """Curves that differ by a level and a trend, a P-spline covariance: the subjects' rough deviations shrink
    to nothing and pin each subject to the mean curve, which then moved a little per iteration (without the move
    still unconverged after the budget, far below); with the move the fit converges and ends higher."""
    df = pspline_lines(7, n_subjects=80, n_obs=15, n_basis=20)
    kw = dict(basis=SplineBasis(20, lower=0.0, upper=1.0, knots="uniform"), covariance="pspline", max_iter=300,
              response_transform=None, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        moved = MixtureLMM(1, **kw).fit(df)
    monkeypatch.setattr("dmlmm.inference.engine.translate_means", lambda new, *a: new)
    with pytest.warns(ConvergenceWarning, match="before the ELBO converged"):
        plain = MixtureLMM(1, **kw).fit(df)
    assert moved.converged_ and not plain.converged_
    assert moved.elbo_ > plain.elbo_ + 100.0

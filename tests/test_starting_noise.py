"""The starting noise variance: the maximum-likelihood sigma^2 of the starting ridge fits' model."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from dmlmm import DeepMixtureLMM
from dmlmm.inference.engine import VIConfig, init_noise_and_fixed
from dmlmm.models.starting import pooled_ridge, ridge_estimates, ridge_prior
from dmlmm.sufficient import sufficient_stats


def _few_visits(seed=0, n_subjects=30, n_obs=3, dim=8):
    """Three visits per subject, eight coefficients: the ridge fits nearly interpolate."""
    rng = np.random.default_rng(seed)
    codes = np.repeat(np.arange(n_subjects), n_obs)
    X = rng.uniform(0, 1, (len(codes), dim))
    b = rng.normal(1.0, 0.5, size=(n_subjects, dim))
    y = (X * b[codes]).sum(1) + 0.3 * rng.normal(size=len(codes))
    return y, X, codes, sufficient_stats(y, X, None, codes, n_subjects)


def test_starting_sigma2_is_the_ridge_models_maximum_likelihood():
    y, X, codes, stats = _few_visits()
    rough = np.linspace(0.0, 50.0, X.shape[1])
    b_hat, penalties = ridge_estimates(stats, 0.5, rough, return_penalty=True)
    noise, _, _ = init_noise_and_fixed(stats, b_hat, VIConfig(), penalties)
    # independently: y_i ~ N(X_i m, s2 (I + X_i P^-1 X_i')) under b_i ~ N(m, s2 P^-1), maximised over s2
    prec, mean = ridge_prior(0.5, rough, pooled_ridge(stats.total(), stats.n_subjects, rough))
    quad = 0.0
    for i in range(stats.n_subjects):
        Xi, r = X[codes == i], y[codes == i] - X[codes == i] @ mean
        quad += r @ np.linalg.solve(np.eye(len(r)) + Xi @ np.diag(1.0 / prec) @ Xi.T, r)
    np.testing.assert_allclose(noise.rate / noise.shape, quad / len(y), rtol=1e-10)
    # the residuals alone: the nearly interpolating fits leave a fraction of it
    plain, _, _ = init_noise_and_fixed(stats, b_hat, VIConfig())
    assert plain.rate / plain.shape < 0.5 * quad / len(y)


def _sparse_linear_growth(seed: int) -> pd.DataFrame:
    """80 subjects, each seen at three of four visit times: quadratic growth, noise SD 0.08."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(80):
        a, s = rng.normal(5, 0.6), rng.normal(0.5, 0.1)
        for t in np.sort(rng.choice([0.0, 1.0, 2.0, 3.0], 3, replace=False)):
            rows.append((i, t, a + s * t + 0.1 * t**2 + rng.normal(0, 0.08)))
    return pd.DataFrame(rows, columns=["subject", "time", "y"])


def test_few_visits_and_a_generous_basis_converge_within_the_budget():
    # started from the interpolating ridge fits' residual variance, this fit used all of
    # max_iter=1000 and ended 46 nats below where it converges now
    df = _sparse_linear_growth(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", message=".*empty.*")
        model = DeepMixtureLMM(random_state=0, response_transform=None).fit(df, "subject", "time", "y")
    assert model.converged_


def test_an_unpenalised_ridge_fit_has_no_prior_and_no_penalty():
    *_, stats = _few_visits(n_obs=12, dim=4)  # enough visits for plain least squares
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0 for the prior mean of an unpenalised coordinate
        b_hat, penalties = ridge_estimates(stats, 0.0, return_penalty=True)
    np.testing.assert_array_equal(penalties, 0.0)
    assert np.isfinite(b_hat).all()

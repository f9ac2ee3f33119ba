"""Curves beyond the basis range: the smoothness prior's integrated-Wiener continuation.

Checked against independent computations: the integrated Wiener process's covariance in
closed form, the conditional variance of a wider P-spline prior computed by Gaussian
conditioning in its own spline space, the Gaussian predictive density (bands against
scores) and Monte Carlo draws.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import solve
from scipy.stats import norm

from dmlmm import MixtureLMM, SplineBasis
from dmlmm import continuation
from dmlmm.exceptions import ExtrapolationWarning
from dmlmm.simulate import dgp1


def test_increment_covariance_and_its_factor_are_exact():
    # the integrated Wiener process: min^2 max / 2 - min^3 / 6 (order 2); Brownian motion: min (order 1)
    h = np.array([0.05, 0.2, 0.37, 0.5])
    exact = {2: np.minimum(h[:, None], h) ** 2 * np.maximum(h[:, None], h) / 2 - np.minimum(h[:, None], h) ** 3 / 6,
             1: np.minimum(h[:, None], h)}
    for order, want in exact.items():
        np.testing.assert_allclose(continuation.increment_cov(h[:, None], h[None, :], order), want, rtol=1e-12)
        np.testing.assert_allclose(np.diag(want), continuation.increment_variance(h, order), rtol=1e-12)
    # the factor at the anchors' distinct distances, on both sides; zero inside the range
    t = np.r_[-0.2, -0.05, 0.0, 0.5, 1.0, 1.0 + h, 1.2]
    C = continuation.Continuation.at(t, 0.0, 1.0, 2).columns(t)
    below, above = continuation.distances(t, 0.0, 1.0)
    want = continuation.increment_cov(above[:, None], above[None, :], 2) + continuation.increment_cov(below[:, None], below[None, :], 2)
    np.testing.assert_allclose(C @ C.T, want, atol=1e-8 * want.max())
    assert not C[2:5].any()
    sub = continuation.Continuation.at(t, 0.0, 1.0, 2).columns(t[[0, 6]])  # any subset of the anchors: the same rows
    np.testing.assert_allclose(sub, C[[0, 6]])
    # many distinct distances: a Nystrom map through 200 of them
    many = np.r_[0.5, 1.0 + np.random.default_rng(0).uniform(0.0, 0.7, 3000)]
    Cm = continuation.Continuation.at(many, 0.0, 1.0, 2).columns(many)
    _, h = continuation.distances(many, 0.0, 1.0)
    Km = continuation.increment_cov(h[:, None], h[None, :], 2)
    assert Cm.shape[1] <= 200
    np.testing.assert_allclose(Cm @ Cm.T, Km, atol=1e-6 * Km.max())
    with pytest.raises(ValueError, match="among the anchors"):
        continuation.Continuation.at(t, 0.0, 1.0, 2).columns(np.array([1.3]))


def test_penalty_unit_gives_the_continuation_of_a_wider_p_spline_prior():
    """Conditioned on the whole curve over [0, 1], a P-spline prior laid over [0, 1.5] leaves f(1 + h)
    with variance kappa h^3 / 3, kappa from that basis's own penalty unit (units of its range)."""
    ratios = []
    for n_basis in (121, 241):  # the spline space converges to the process as its knots get denser
        wide = SplineBasis(n_basis, lower=0.0, upper=1.5, knots="uniform").fit()
        V, lam = wide.smoothing_basis(2)
        v = 0.7  # smoothing variance: c_d ~ N(0, v / lam_d) on the rough coordinates
        prior_var = np.where(lam > 0, v / np.where(lam > 0, lam, 1.0), 1e8)  # nearly flat level and trend
        Vinv = np.linalg.inv(V)
        prec = Vinv.T @ np.diag(1.0 / prior_var) @ Vinv  # of the B-spline coefficients
        grid = np.linspace(0.0, 1.0, 2000)
        X = wide.transform(grid)
        post_prec = prec + X.T @ X / 1e-9  # the curve observed (almost) exactly on [0, 1]
        h = np.array([0.25, 0.4])
        x = wide.transform(1.0 + h)
        var = np.einsum("td,dt->t", x, np.linalg.solve(post_prec, x.T))
        kappa = v * wide.penalty_unit(2)  # per unit of the wide range's u = t / 1.5
        ratios.append(var / (kappa * continuation.increment_variance(h / 1.5, 2)))
    assert np.all(ratios[1] > ratios[0])
    np.testing.assert_allclose(ratios[1], 1.0, atol=0.06)


@pytest.fixture(scope="module")
def fitted():
    sim = dgp1(random_state=5, n_subjects=80)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(1, random_state=0).fit(sim.data)
    return m, sim.data


def _beyond(m, data, dist):
    b = m.design_.basis
    return b.upper_ + np.asarray(dist) * (b.upper_ - b.lower_)


def test_forecast_band_beyond_the_range_adds_the_learned_increment(fitted):
    m, data = fitted
    subj = data[data.subject == data.subject.iloc[0]]
    dist = np.array([0.05, 0.1, 0.2])
    t = _beyond(m, data, dist)
    with pytest.warns(ExtrapolationWarning):
        band = m.predict_trajectory(subj, times=t, kind="curve")
    # the same forecast with linear continuation only: the conditional of b without the increment
    d = m._data(subj, require_response=False)
    cm, _, _ = m._conditional(d, subj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = m.design_.X(t)
    var_linear = np.einsum("td,de,te->t", X, cm.cov[0], X)
    var = ((band["upper"] - band["mean"]) / norm.ppf(0.975) / m.design_.y_scale).to_numpy() ** 2
    kappa = m.prior_.continuation_intensity(m.params_.prior)[0] * m.design_.continuation_unit
    assert kappa > 0
    np.testing.assert_allclose(var - var_linear, kappa * dist**3 / 3, rtol=1e-6)
    assert np.all(np.diff(var) > 0)
    # inside the range nothing changes
    inside = np.linspace(m.design_.basis.lower_, m.design_.basis.upper_, 5)
    a = m.predict_trajectory(subj, times=inside)
    Xi = m.design_.X(inside)
    np.testing.assert_allclose(((a["upper"] - a["mean"]) / norm.ppf(0.975) / m.design_.y_scale) ** 2,
                               np.einsum("td,de,te->t", Xi, cm.cov[0], Xi), rtol=1e-8)


def test_held_out_score_beyond_the_range_is_the_band_density(fitted):
    m, data = fitted
    first = data.subject.iloc[0]
    train = data[data.subject == first]
    t = float(_beyond(m, data, 0.15))
    held = pd.DataFrame({"subject": [first], "time": [t], "y": [float(train.y.iloc[-1]) + 0.3]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = m.score_samples(held, condition_on=train).iloc[0]
        band = m.predict_trajectory(train, times=[t], kind="observation").iloc[0]
    sd = (band["upper"] - band["mean"]) / norm.ppf(0.975)
    assert score == pytest.approx(norm.logpdf(held.y.iloc[0], band["mean"], sd), abs=1e-6)


def test_draws_beyond_the_range_have_the_band_variance(fitted):
    m, data = fitted
    subj = data[data.subject == data.subject.iloc[1]]
    t = _beyond(m, data, np.array([0.1, 0.3]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draws = m.sample_trajectories(subj, times=t, n_samples=4000, random_state=1)
        band = m.predict_trajectory(subj, times=t)
    sd = ((band["upper"] - band["mean"]) / norm.ppf(0.975)).to_numpy()
    emp = draws.groupby("time")["value"].std().to_numpy()
    np.testing.assert_allclose(emp, sd, rtol=0.06)


def _random_walk_curves(seed: int = 0, s: float = 1.0, n: int = 300, per: int = 20, factor: float = 0.0) -> pd.DataFrame:
    """Subjects' curves from the smoothness prior's own process: Demmler-Reinsch coefficients of
    variance s / lam_d on the rough coordinates (12 cubic B-splines on [0, 1]), noise SD 0.05; with
    ``factor``, plus ``factor * z_i`` (z_i ~ N(0, 1)) times the smoothest rough function: a smooth
    loading curve shared by all subjects."""
    from dmlmm import SplineBasis

    rng = np.random.default_rng(seed)
    basis = SplineBasis(12, lower=0.0, upper=1.0).fit()
    rot, lam = basis.smoothing_basis(2)
    rough = lam > 0
    sd = np.where(rough, np.sqrt(s / np.where(rough, lam, 1.0)), 1.0)
    b = rng.normal(size=(n, 12)) * sd
    if factor:
        b[:, np.flatnonzero(rough)[np.argmin(lam[rough])]] += factor * rng.normal(size=n)
    t = np.sort(rng.uniform(0, 1, (n, per)), axis=1)
    y = np.einsum("ntd,nd->nt", basis.transform(t.reshape(-1)).reshape(n, per, 12) @ rot, b)
    y = y + 0.05 * rng.normal(size=y.shape)
    return pd.DataFrame({"subject": np.repeat(np.arange(n), per), "time": t.reshape(-1), "y": y.reshape(-1)})


def test_deep_mixture_continuation_intensity_is_the_processes_intensity():
    """The deep mixture's continuation intensity (minus the mean curve's part) on curves drawn from the
    process itself is its intensity s within 10 %, for both loading orders; with a smooth loading curve
    on top (a factor of SD 3 on the smoothest rough function), still s with the default order 2 (the
    loading curve is estimated, not a process that continues; the rule before 2026-12-04 added the
    loading curves' prior scale t E[z^2]: 2.9 here)."""
    from dmlmm import DeepMixtureLMM, SplineBasis

    for factor, order in ((0.0, 2), (0.0, 1), (3.0, 2)):
        df = _random_walk_curves(factor=factor)
        m = DeepMixtureLMM((2, 1), (2, 1), basis=SplineBasis(12, lower=0.0, upper=1.0), response_transform=None,
                           loading_order=order, random_state=0).fit(df)
        pp = m.params_.prior
        k = m.prior_.path_components()[:, 0]
        kappa = (m.prior_.continuation_intensity(pp) - pp.layers[0].smooth.mean.var.mean[k]) * m.design_.y_scale**2
        np.testing.assert_allclose(kappa, 1.0, rtol=0.1, err_msg=f"factor={factor}, loading_order={order}")


def test_mixture_continuation_intensity_recovers_a_random_walks():
    """Subjects' curves drawn from the smoothness prior's own process (Demmler-Reinsch coefficients
    of variance s / lam_d): the mixture's continuation intensity (minus the mean curve's part) is
    s within 20 %; the Huang-Wand scale E[w] that it replaced was several times s."""
    from dmlmm import MixtureLMM, SplineBasis

    s = 1.0
    df = _random_walk_curves(s=s)
    for cov in ("full", "pspline"):
        m = MixtureLMM(1, basis=SplineBasis(12, lower=0.0, upper=1.0), response_transform=None, covariance=cov,
                       random_state=0).fit(df)
        ys2 = m.design_.y_scale ** 2
        pp = m.params_.prior
        kappa = (m.prior_.continuation_intensity(pp)[0] - pp.mean_smooth.var.mean[0]) * ys2
        assert kappa == pytest.approx(s, rel=0.2), cov
        if cov == "full":  # the Huang-Wand scale is a half-t scale, several times the variances it yields
            assert pp.cov_smooth.var.mean[0] * ys2 > 4 * s
        else:  # the P-spline covariance's w is the random walk's variance itself: these curves are its model
            assert pp.cov_smooth.var.mean[0] * ys2 == pytest.approx(s, rel=0.2)

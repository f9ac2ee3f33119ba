"""mixture_quantiles: quantiles of 1-D Gaussian mixtures (the bands of every prediction)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dmlmm.prediction import mixture_quantiles


def _cdf(weight, mean, sd, x):
    """The mixture's CDF at x, independently (scipy), for one group: weight (A,), mean/sd (A,)."""
    return float(np.sum(weight * stats.norm.cdf(x, loc=mean, scale=sd)))


def test_one_component_gives_the_normal_quantiles():
    mean = np.array([[0.0, 3.0, -1e4]])
    sd = np.array([[1.0, 0.25, 50.0]])
    probs = np.array([0.025, 0.5, 0.975])
    q = mixture_quantiles(np.ones(1), mean, sd, np.zeros(1, dtype=int), probs)
    expected = stats.norm.ppf(probs)[:, None] * sd[0][None, :] + mean[0][None, :]
    np.testing.assert_allclose(q[0], expected, rtol=1e-11, atol=1e-9)


@pytest.mark.parametrize("case", ["overlapping", "separated", "narrow_and_wide", "many"])
def test_the_cdf_at_each_quantile_is_its_probability(case):
    """Several mixtures in one call (groups), including modes so far apart that the median falls in the
    flat gap between them (no density to step on: any point of the gap is a median) and components of
    very different widths (a CDF that climbs 0.9 within a few 1e-6): the CDF just below each quantile is
    at most its probability and just above it at least."""
    rng = np.random.default_rng(0)
    if case == "overlapping":
        w, m, s = np.array([0.3, 0.7]), np.array([0.0, 1.0]), np.array([1.0, 1.5])
    elif case == "separated":
        w, m, s = np.array([0.5, 0.5]), np.array([-100.0, 100.0]), np.array([0.1, 0.1])
    elif case == "narrow_and_wide":
        w, m, s = np.array([0.9, 0.1]), np.array([0.0, 0.0]), np.array([1e-6, 10.0])
    else:
        k = 24
        w = rng.dirichlet(np.ones(k))
        m, s = rng.normal(0, 3, k), np.exp(rng.normal(-1, 1, k))
    # two groups: the mixture and a shifted single Gaussian, sorted by group
    weight = np.r_[w, 1.0]
    mean = np.r_[m, 5.0][:, None] * np.ones((1, 3))
    sd = np.r_[s, 2.0][:, None] * np.ones((1, 3))
    group = np.r_[np.zeros(len(w), dtype=int), 1]
    probs = np.array([0.025, 0.25, 0.5, 0.975])
    q = mixture_quantiles(weight, mean, sd, group, probs)
    assert q.shape == (2, 4, 3)
    eps = 1e-10 * (np.max(m + 10 * s) - np.min(m - 10 * s))  # x to this precision: CDF(x -/+ eps) brackets p
    for j, p in enumerate(probs):
        x = q[0, j, 0]
        assert _cdf(w, m, s, x - eps) <= p + 1e-14 and _cdf(w, m, s, x + eps) >= p - 1e-14, (case, p, x)
        assert q[1, j, 0] == pytest.approx(5.0 + 2.0 * stats.norm.ppf(p), rel=1e-11)
    assert np.all(np.diff(q[0, :, 0]) >= 0)  # monotone in the probability

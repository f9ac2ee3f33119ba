"""The variational factors' derived quantities: right, computed once per factor, and read-only."""

import pickle
from dataclasses import fields, replace

import numpy as np
import pytest
from scipy.special import digamma

from dmlmm.expfam import Gaussian, InvGamma, InvWishart, blend


def _spd(rng, n, d):
    a = rng.normal(size=(n, d, d))
    return a @ np.swapaxes(a, 1, 2) + d * np.eye(d)


def test_moments_match_an_explicit_inverse_and_are_computed_once():
    rng = np.random.default_rng(0)
    prec, shift = _spd(rng, 3, 4), rng.normal(size=(3, 4))
    q = Gaussian(prec, shift)
    mean, cov, logdet = q.moments()
    np.testing.assert_allclose(cov, np.linalg.inv(prec), rtol=1e-12)
    np.testing.assert_allclose(mean, np.linalg.solve(prec, shift[..., None])[..., 0], rtol=1e-12)
    np.testing.assert_allclose(logdet, -np.linalg.slogdet(prec)[1], rtol=1e-12)
    again = q.moments()
    assert all(a is b for a, b in zip(again, (mean, cov, logdet)))  # the same arrays: computed once
    with pytest.raises(ValueError, match="read-only"):
        cov[0, 0, 0] = 1.0  # a caller cannot corrupt what the next one reads
    # a new factor (a blend, a replaced field) has its own moments, not the old one's
    new = blend(q, Gaussian(2 * prec, shift), 0.5)
    np.testing.assert_allclose(new.moments()[1], np.linalg.inv(1.5 * prec), rtol=1e-12)
    np.testing.assert_allclose(replace(q, shift=2 * shift).moments()[0], 2 * mean, rtol=1e-12)


def test_the_cache_is_no_field_and_survives_pickling():
    rng = np.random.default_rng(1)
    q = Gaussian(_spd(rng, 2, 3), rng.normal(size=(2, 3)))
    q.moments()
    assert [f.name for f in fields(q)] == ["precision", "shift"]  # io, blend and extrapolation see no more
    back = pickle.loads(pickle.dumps(q))  # as candidates in worker processes travel
    np.testing.assert_array_equal(back.moments()[0], q.moments()[0])


def test_a_layers_prior_expectations_are_computed_once_per_prior():
    """The deep mixture's row priors and delta priors of a layer's factors: the same read-only arrays on a
    second read by the same prior, computed afresh (and right) by another prior with other settings, and
    equal to a fresh computation after a round trip through pickle (as candidates travel to workers)."""
    from dmlmm.priors.dmfa import DeepMixturePrior

    rng = np.random.default_rng(2)
    rough = np.r_[0.0, 0.0, np.linspace(1.0, 50.0, 6)]
    prior = DeepMixturePrior(8, (3, 2), (2, 1), roughness=rough)
    other = DeepMixturePrior(8, (3, 2), (2, 1), roughness=rough, loading_order=1.0)
    lay = prior.init_params(rng.normal(size=(40, 8)), rng).layers[0]
    rows, deltas = prior._row_priors(0, lay), prior._delta_prior(0, lay)
    assert all(a is b for a, b in zip(prior._row_priors(0, lay), rows))
    assert all(a is b for a, b in zip(prior._delta_prior(0, lay), deltas))
    with pytest.raises(ValueError, match="read-only"):
        rows[0][0, 0, 0] = 1.0
    for got, fresh in zip(rows + deltas, prior._row_priors_of(0, lay) + prior._delta_prior_of(0, lay)):
        np.testing.assert_array_equal(got, fresh)
    # the loading curves' prior precisions are lam ** loading_order: another order, other values
    theirs = other._row_priors(0, lay)
    np.testing.assert_array_equal(theirs[0], other._row_priors_of(0, lay)[0])
    assert not np.array_equal(theirs[0][..., 1:], rows[0][..., 1:])
    back = pickle.loads(pickle.dumps((prior, lay)))
    np.testing.assert_array_equal(back[0]._row_priors(0, back[1])[0], rows[0])


def test_inverse_gamma_and_inverse_wishart_expectations():
    rng = np.random.default_rng(2)
    shape, rate = rng.uniform(1, 5, 4), rng.uniform(0.5, 2, 4)
    q = InvGamma(shape, rate)
    np.testing.assert_allclose(q.mean_log, np.log(rate) - digamma(shape))
    assert q.mean_log is q.mean_log
    # E[log x] by Monte Carlo: x = 1 / Gamma(shape, scale = 1 / rate)
    draws = 1.0 / rng.gamma(shape, 1.0 / rate, size=(200_000, 4))
    np.testing.assert_allclose(q.mean_log, np.log(draws).mean(axis=0), atol=0.01)
    scale = _spd(rng, 2, 3)
    iw = InvWishart(np.array([7.0, 9.0]), scale)
    e_prec, _, logdet = iw.expectations()
    np.testing.assert_allclose(e_prec, np.array([7.0, 9.0])[:, None, None] * np.linalg.inv(scale), rtol=1e-12)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(scale)[1], rtol=1e-12)
    assert iw.expectations()[0] is e_prec

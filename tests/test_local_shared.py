"""The local step through a shared factorisation (Woodbury, dmlmm.inference.local_shared) equals the
dense one, pair by pair; and the deep mixture's shared form is its path precisions."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from helpers import toy_stats
from dmlmm.inference import local
from dmlmm.inference.local import NoiseMoments, local_step
from dmlmm.models.base import ridge_estimates
from dmlmm.priors.base import PathPrior, SharedPrecision
from dmlmm.priors.dmfa import DeepMixturePrior


def _shared_prior(rng, group, D, R):
    G, M = int(group.max()) + 1, len(group)
    base = rng.uniform(1.0, 4.0, (G, D))
    U = rng.normal(size=(M, D, R))
    # scale U_c so that diag(base) - U U' stays positive definite (its smallest eigenvalue >= 0.3)
    for c in range(M):
        lo = np.linalg.eigvalsh(np.diag(base[group[c]]))[0]
        U[c] *= np.sqrt(0.7 * lo) / np.linalg.norm(U[c], 2)
    prec = np.stack([np.diag(base[group[c]]) for c in range(M)]) - U @ np.swapaxes(U, 1, 2)
    sp = SharedPrecision(group, base, U)
    return PathPrior(rng.normal(size=M), prec, rng.normal(size=(M, D)), rng.normal(size=M), sp)


def _noise(rng, s, lv):
    return NoiseMoments(s, lv, rng.normal(size=2), 0.01 * np.eye(2))


@pytest.mark.parametrize("noise", ["shared", "per_group", "varies_within_group"])
def test_shared_local_step_equals_dense(noise, monkeypatch):
    rng = np.random.default_rng(3)
    stats = toy_stats(3, n_subjects=40, n_obs=8, dim=12, n_fixed=2)  # n_i = 8 < D = 12: X'X singular
    group = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])  # D M / G = 40: the shared route is taken
    pp = _shared_prior(rng, group, 12, 2)
    routes = []
    real = local.solve_shared
    monkeypatch.setattr(local, "solve_shared", lambda *a: routes.append(1) or real(*a))
    s = {"shared": 2.0, "per_group": np.array([1.5, 2.5, 3.0])[group],
         "varies_within_group": rng.uniform(1, 3, len(group))}[noise]
    nm = _noise(rng, s, np.log(1 / np.asarray(s)))
    active = rng.random((40, len(group))) < 0.7  # a restricted family of paths per subject
    active[np.arange(40), rng.integers(0, len(group), 40)] = True
    for act in (None, active):
        fast = local_step(stats, pp, nm, moment_threshold=0.0, active=act)
        dense = local_step(stats, replace(pp, shared=None), nm, moment_threshold=0.0, active=act)
        np.testing.assert_allclose(fast.log_evidence, dense.log_evidence, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(fast.resp, dense.resp, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fast.mean_b, dense.mean_b, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(fast.moments.weight, dense.moments.weight, rtol=1e-10)
        np.testing.assert_allclose(fast.moments.first, dense.moments.first, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(fast.moments.second, dense.moments.second, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(fast.path_quad, dense.path_quad, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fast.path_xty_b, dense.path_xty_b, rtol=1e-9, atol=1e-9)
    # the noise must be the same within a group for the shared factorisation
    assert len(routes) == (0 if noise == "varies_within_group" else 2)


@pytest.mark.parametrize("poly", ["diagonal", "full"])
def test_deep_mixture_shared_form_is_its_path_precision(poly):
    """With the full polynomial block the shared diagonal is the block's top eigenvalue there, and U_c
    gains the block's P = 2 columns (dmlmm.priors.dmfa, _shared_precision)."""
    rng = np.random.default_rng(0)
    stats = toy_stats(0, n_subjects=30, n_obs=6, dim=5)
    prior = DeepMixturePrior(5, (3, 2), (2, 1), roughness=np.r_[0, 0, 1.0, 4.0, 11.0], polynomial_covariance=poly)
    b_hat = ridge_estimates(stats)
    params = prior.init_params(b_hat, rng)
    if poly == "full":  # a correlated block, as after updates (the start is uncorrelated)
        lay = params.layers[0]
        scale = lay.poly_cov.scale.copy()
        scale[:, 0, 1] = scale[:, 1, 0] = 0.6 * np.sqrt(scale[:, 0, 0] * scale[:, 1, 1])
        params = replace(params, layers=(replace(lay, poly_cov=replace(lay.poly_cov, scale=scale)),) + params.layers[1:])
    pp, _ = prior.path_prior(params)
    sp = pp.shared
    assert sp is not None and sp.factor.shape == (6, 5, 2 if poly == "diagonal" else 4)
    np.testing.assert_array_equal(sp.group, prior.path_components()[:, 0])
    dense = np.stack([np.diag(sp.base[k]) for k in sp.group]) - sp.factor @ np.swapaxes(sp.factor, 1, 2)
    np.testing.assert_allclose(dense, pp.precision, rtol=1e-10, atol=1e-10 * np.abs(pp.precision).max())


def test_dense_fallback_when_a_capacitance_is_not_positive_definite(monkeypatch):
    rng = np.random.default_rng(4)
    stats = toy_stats(4, n_subjects=30, n_obs=8, dim=12, n_fixed=2)
    group = np.array([0, 0, 0, 1, 1, 1])
    pp = _shared_prior(rng, group, 12, 2)
    nm = _noise(rng, 2.0, -0.7)
    monkeypatch.setattr(local, "solve_shared", lambda *a: None)  # as when cholesky(C) fails
    fast = local_step(stats, pp, nm)
    dense = local_step(stats, replace(pp, shared=None), nm)
    np.testing.assert_allclose(fast.log_evidence, dense.log_evidence, rtol=1e-12)
    np.testing.assert_allclose(fast.moments.second, dense.moments.second, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("noise", ["shared", "cluster"])
def test_a_deep_mixture_fit_is_the_same_through_either_route(noise, monkeypatch):
    """End to end: the fit with the shared factorisation wherever it pays equals the all-dense fit."""
    from dmlmm import DeepMixtureLMM, SplineBasis
    from dmlmm.simulate import dgp1

    df = dgp1(random_state=1, n_subjects=60).data
    kw = dict(n_components=(4, 3), latent_dims=(2, 1), basis=SplineBasis(14, lower=0, upper=1), noise=noise,
              loading_order=2, random_state=0, max_iter=120)
    routes = []
    real = local.solve_shared
    monkeypatch.setattr(local, "solve_shared", lambda *a: routes.append(1) or real(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = DeepMixtureLMM(**kw).fit(df)
        assert routes  # D M / G = 14 * 3 >= 40 at the start: the shared route was taken
        monkeypatch.setattr(local, "_shared_route", lambda prior, s_path: None)
        dense = DeepMixtureLMM(**kw).fit(df)
    assert fast.n_iter_ == dense.n_iter_ and fast.n_components_ == dense.n_components_
    np.testing.assert_allclose(fast.elbo_, dense.elbo_, rtol=1e-8)
    pd.testing.assert_frame_equal(fast.responsibilities_, dense.responsibilities_, atol=1e-6)


def _mixed_stats(rng, D=12, n_subjects=40):
    """Subjects with 2-11 visits (some at repeated times, so rank < n_i) on spline-like rows."""
    from dmlmm.sufficient import sufficient_stats

    n_obs = rng.integers(2, 12, n_subjects)
    codes = np.repeat(np.arange(n_subjects), n_obs)
    t = rng.uniform(0, 1, len(codes))
    dup = rng.random(len(codes)) < 0.2  # some visits repeat the previous time
    t[1:][dup[1:]] = t[:-1][dup[1:]]
    X = np.exp(-((t[:, None] - np.linspace(0, 1, D)) ** 2) / 0.02)
    F = rng.normal(size=(len(codes), 2))
    y = X @ rng.normal(size=D) + rng.normal(size=len(codes))
    return sufficient_stats(y, X, F, codes, n_subjects)


def test_gram_factor_and_the_observation_space_inverse():
    from dmlmm._linalg import diag_lowrank_factor, gram_factor

    rng = np.random.default_rng(5)
    stats = _mixed_stats(rng)
    R, rank = gram_factor(stats.XtX)
    np.testing.assert_allclose(np.swapaxes(R, 1, 2) @ R, stats.XtX, atol=1e-12 * np.abs(stats.XtX).max())
    assert (rank <= stats.n_obs).all() and (rank < stats.n_obs).any()  # repeated times lower the rank
    assert (R[np.arange(len(rank)), np.minimum(rank, R.shape[1] - 1)][rank < R.shape[1]] == 0).all()
    e = rng.uniform(0.2, 5.0, (len(rank), 12))
    s = rng.uniform(0.5, 20.0, len(rank))
    A = s[:, None, None] * stats.XtX + e[:, :, None] * np.eye(12)
    W, logdet = diag_lowrank_factor(e, s, R)
    inv = (1.0 / e)[:, :, None] * np.eye(12) - np.swapaxes(W, 1, 2) @ W
    np.testing.assert_allclose(inv, np.linalg.inv(A), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(logdet, np.linalg.slogdet(A)[1], rtol=1e-12)
    # the subset keeps the factors, trimmed to its largest rank
    stats.gram_factor
    few = np.flatnonzero(rank <= 3)
    sub = stats.subset(few)
    assert "gram_factor" in sub.__dict__ and sub.gram_factor[0].shape[1] == rank[few].max()
    np.testing.assert_allclose(np.swapaxes(sub.gram_factor[0], 1, 2) @ sub.gram_factor[0], sub.XtX, atol=1e-12)


@pytest.mark.parametrize("noise", ["shared", "per_group"])
def test_observation_space_route_equals_dense(noise, monkeypatch):
    from dmlmm.inference import local_shared

    rng = np.random.default_rng(8)
    stats = _mixed_stats(rng)
    group = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pp = _shared_prior(rng, group, 12, 2)
    s = {"shared": 2.0, "per_group": np.array([1.5, 2.5, 3.0])[group]}[noise]
    nm = _noise(rng, s, np.log(1 / np.asarray(s)))
    sizes = []
    real = local_shared.diag_lowrank_factor
    monkeypatch.setattr(local_shared, "diag_lowrank_factor", lambda e, s, R: sizes.append(len(e)) or real(e, s, R))
    fast = local_step(stats, pp, nm, moment_threshold=0.0)
    n_low = int((stats.gram_factor[1] <= local_shared.SHARED_OBS_FRACTION * 12).sum())
    assert sizes == [n_low * 3] and 0 < n_low < stats.n_subjects  # both routes, one call each
    dense = local_step(stats, replace(pp, shared=None), nm, moment_threshold=0.0)
    np.testing.assert_allclose(fast.log_evidence, dense.log_evidence, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast.resp, dense.resp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.mean_b, dense.mean_b, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fast.moments.second, dense.moments.second, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fast.path_quad, dense.path_quad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("restricted", [False, True])
def test_observation_space_route_of_the_dense_step(restricted, monkeypatch):
    """Paths with their own full precisions (a mixture's components): the low-rank subjects' pairs are
    solved in observation space and agree with the Cholesky route everywhere."""
    rng = np.random.default_rng(11)
    stats = _mixed_stats(rng, D=12, n_subjects=50)
    M, D = 4, 12
    B = rng.normal(size=(M, D, D))
    prec = B @ np.swapaxes(B, 1, 2) / D + np.eye(D)
    pp = PathPrior(rng.normal(size=M), prec, rng.normal(size=(M, D)), rng.normal(size=M), None)
    nm = _noise(rng, np.array([1.0, 2.0, 3.0, 4.0]), np.zeros(M))
    active = None
    if restricted:
        active = rng.random((50, M)) < 0.6
        active[np.arange(50), rng.integers(0, M, 50)] = True
    calls = []
    real = local._solve_observation
    monkeypatch.setattr(local, "_solve_observation", lambda *a, **k: calls.append(len(a[4])) or real(*a, **k))
    fast = local_step(stats, pp, nm, moment_threshold=0.0, active=active)
    assert calls and 0 < calls[0] < (50 * M if active is None else active.sum())  # both routes were taken
    monkeypatch.setattr(local, "observation_factor", lambda st: None)
    dense = local_step(stats, pp, nm, moment_threshold=0.0, active=active)
    np.testing.assert_allclose(fast.log_evidence, dense.log_evidence, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fast.resp, dense.resp, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.mean_b, dense.mean_b, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fast.moments.second, dense.moments.second, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fast.path_quad, dense.path_quad, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fast.path_xty_b, dense.path_xty_b, rtol=1e-9, atol=1e-9)


def test_gram_factors_are_kept_only_for_low_rank_subjects():
    from dmlmm._linalg import max_obs_rank

    rng = np.random.default_rng(2)
    stats = _mixed_stats(rng, D=12)
    R, rank = stats.gram_factor
    limit = int(max_obs_rank(12))
    kept = rank <= limit
    assert kept.any() and (~kept).any() and (rank[~kept] == 13).all() and R.shape[1] <= limit
    np.testing.assert_allclose(np.swapaxes(R[kept], 1, 2) @ R[kept], stats.XtX[kept], atol=1e-12)
    assert not R[~kept].any()
    sub = stats.subset(np.flatnonzero(~kept)[:3])  # only subjects without a factor
    assert sub.gram_factor[0].shape[1] == 0 and (sub.gram_factor[1] == 13).all()


def test_factored_and_cholesky_routes_agree_pair_by_pair():
    """The observation-space route keeps A^{-1} factored; its pairs' quantities and covariance sums
    (both ways of forming them: per combination or per pair) equal the Cholesky route's."""
    from dmlmm._linalg import gram_factor
    from dmlmm.inference import local_shared

    rng = np.random.default_rng(12)
    stats = _mixed_stats(rng, D=12, n_subjects=30)
    group = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pp = _shared_prior(rng, group, 12, 2)
    factor = gram_factor(stats.XtX)
    subject = np.repeat(np.arange(30), len(group))
    path = np.tile(np.arange(len(group)), 30)
    g = rng.normal(size=(len(path), 12))
    s_group = np.array([1.5, 2.5, 3.0])
    fact = local_shared._solve_factored(pp.shared, s_group, factor, subject, path, g, len(group))
    chol = local_shared._solve_cholesky(pp.shared, s_group, stats.XtX, subject, path, g, len(group))
    np.testing.assert_allclose(fact.logdet, chol.logdet, rtol=1e-11)
    np.testing.assert_allclose(fact.quad, chol.quad, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(fact.mean, chol.mean, rtol=1e-9, atol=1e-10)
    w = rng.uniform(0.1, 1.0, len(path))
    one_per_combo = np.unique(subject * 3 + group[path], return_index=True)[1]  # fewer pairs than combos x 2
    for idx in (np.arange(len(path)), one_per_combo):
        a, b = fact.cov_sums(idx, w[idx]), chol.cov_sums(idx, w[idx])
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11 * np.abs(b).max())


@pytest.mark.parametrize("counts", [[1, 3, 2, 2], [1, 1, 1, 9]])  # even (padded products), uneven (gather)
def test_quadratic_forms_per_pair(counts):
    rng = np.random.default_rng(13)
    B = rng.normal(size=(4, 5, 5))
    xtx = B @ np.swapaxes(B, 1, 2)
    row = np.repeat(np.arange(4), counts)
    vec = rng.normal(size=(len(row), 5))
    expect = [v @ xtx[i] @ v for i, v in zip(row, vec)]
    np.testing.assert_allclose(local._quad_forms(xtx, row, vec), expect, rtol=1e-12)
    np.testing.assert_allclose(local._quad_forms(xtx, row[row != 0], vec[row != 0]), np.array(expect)[row != 0],
                               rtol=1e-12)


@pytest.mark.parametrize("counts, shuffled", [([3, 3, 3, 3], False),  # full and in order: a reshape
                                              ([3, 3, 3, 3], True),  # full, out of order: padded blocks
                                              ([1, 3, 2, 2], True),  # uneven: padded blocks
                                              ([1, 1, 1, 9], False)])  # padding would double the work: gather
def test_rows_times_a_combination_gram(counts, shuffled):
    """The factored route's ``rows_a W_u'W_u`` by combination equals the product pair by pair."""
    from dmlmm.inference.local_shared import _apply_gram

    rng = np.random.default_rng(14)
    W = rng.normal(size=(4, 3, 6))
    combo = np.repeat(np.arange(4), counts)
    if shuffled:
        combo = rng.permutation(combo)
    rows = rng.normal(size=(len(combo), 2, 6))
    expect = np.stack([r @ W[u].T @ W[u] for u, r in zip(combo, rows)])
    np.testing.assert_allclose(_apply_gram(W, combo, rows), expect, rtol=1e-12, atol=1e-12)


def test_threads_give_the_one_thread_step_with_a_wide_basis(monkeypatch):
    """From 30 functions the step runs on threads from 1,000 pairs (local._threads_for): the same per-subject
    outputs, and the path sums up to the order of summation."""
    if local._THREADS == 1:
        pytest.skip("one CPU: the step has no threads to use")
    rng = np.random.default_rng(5)
    stats = toy_stats(5, n_subjects=600, n_obs=10, dim=32, n_fixed=2)
    group = np.array([0, 1])  # 1,200 (subject, path) pairs
    pp = _shared_prior(rng, group, 32, 2)
    nm = _noise(rng, 2.0, np.log(0.5))
    assert local._threads_for(1200, 32) > 1 and local._threads_for(1200, 20) == 1
    chunks = []
    real = local._chunk_bounds
    monkeypatch.setattr(local, "_chunk_bounds", lambda *a: chunks.append(len(real(*a))) or real(*a))
    threaded = local_step(stats, pp, nm, moment_threshold=0.0)
    monkeypatch.setattr(local, "_threads_for", lambda n_pairs, dim: 1)
    alone = local_step(stats, pp, nm, moment_threshold=0.0)
    assert chunks == [local._THREADS, 1]  # the threaded step did split the subjects
    np.testing.assert_array_equal(threaded.resp, alone.resp)
    np.testing.assert_array_equal(threaded.mean_b, alone.mean_b)
    np.testing.assert_array_equal(threaded.log_evidence, alone.log_evidence)
    for a, b in ((threaded.moments.first, alone.moments.first), (threaded.moments.second, alone.moments.second)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)

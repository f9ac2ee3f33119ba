"""The linear mixed model on the shared engine: the joint q(w, b) step and agreement with a plain CAVI loop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from dmlmm.sufficient import sufficient_stats
from dmlmm.expfam import LOG_2PI, InvGamma
from dmlmm.inference.engine import VariationalParams, VIConfig, elbo_globals, init_noise_and_fixed, run_vi
from dmlmm.inference.joint import joint_effects, joint_local_step
from dmlmm.inference.local import NoiseMoments
from dmlmm.lmm.variational import fit_vb
from dmlmm.models.base import ridge_estimates
from dmlmm.priors.base import PathMoments, PathPrior
from dmlmm.priors.gaussian import GaussianMixturePrior
from dmlmm.priors.structured import BlockGaussianPrior, ScaledIdentityPrior


def _problem(n_subjects=12, seed=0):
    """Random-slope data: X (random design) shares its columns with F (fixed design)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 6, n_subjects)
    subj = np.repeat(np.arange(n_subjects), counts)
    t = rng.uniform(0, 3, counts.sum())
    X = np.c_[np.ones_like(t), t]
    F = np.c_[np.ones_like(t), t, rng.normal(size=t.size)]
    b = rng.normal(size=(n_subjects, 2)) * [1.0, 0.4]
    y = F @ [1.0, -0.5, 0.3] + np.einsum("nd,nd->n", X, b[subj]) + 0.5 * rng.normal(size=t.size)
    return sufficient_stats(y, X, F, subj, n_subjects), (X, F, y, subj)


@pytest.fixture(params=["one chunk", "chunks of 3"])
def chunking(request, monkeypatch):
    """The joint step over all subjects at once, and over chunks of 3 subjects (D = 2, P = 3)."""
    from dmlmm.inference import joint

    if request.param == "chunks of 3":
        monkeypatch.setattr(joint, "_CHUNK_ELEMENTS", 3 * 2 * 3)
    return request.param


def test_joint_step_bound_is_the_exact_log_evidence_at_point_globals(chunking):
    """With the globals held at points, the optimal q(w, b) is the exact posterior, so the
    bound equals log p(y) = log N(y; 0, fv F F' + Z Sigma Z' + s2 I) (dense, independent code)."""
    stats, (X, F, y, subj) = _problem()
    Sigma = np.array([[0.8, 0.2], [0.2, 0.3]])
    s2, fv = 0.4, 10.0
    prior = PathPrior(np.zeros(1), np.linalg.inv(Sigma)[None], np.zeros((1, 2)),
                      np.array([-LOG_2PI - 0.5 * np.linalg.slogdet(Sigma)[1]]))
    local = joint_local_step(stats, prior, NoiseMoments(1 / s2, np.log(s2), np.zeros(3), np.zeros((3, 3))), fv)
    m, v, logdet = local.fixed.moments()
    P = 3
    w_terms = -0.5 * P * (LOG_2PI + np.log(fv)) - 0.5 * (m @ m + np.trace(v)) / fv + 0.5 * (P * (1 + LOG_2PI) + logdet)
    bound = local.log_evidence.sum() + w_terms
    Z = np.zeros((len(y), 2 * stats.n_subjects))
    for d in range(2):
        Z[np.arange(len(y)), 2 * subj + d] = X[:, d]
    cov = fv * F @ F.T + Z @ np.kron(np.eye(stats.n_subjects), Sigma) @ Z.T + s2 * np.eye(len(y))
    assert bound == pytest.approx(st.multivariate_normal(np.zeros(len(y)), cov).logpdf(y), abs=1e-8)


def test_joint_step_moments_match_the_dense_posterior(chunking):
    stats, (X, F, y, subj) = _problem(seed=1)
    Sigma, s2, fv = np.diag([0.5, 0.2]), 0.3, 5.0
    e = joint_effects(stats, np.linalg.inv(Sigma), np.zeros(2), 1 / s2, fv)
    N = stats.n_subjects
    Z = np.zeros((len(y), 2 * N))
    for d in range(2):
        Z[np.arange(len(y)), 2 * subj + d] = X[:, d]
    A = np.c_[F, Z]  # dense joint posterior of (w, b) by one linear solve
    prior_prec = np.block([[np.eye(3) / fv, np.zeros((3, 2 * N))],
                           [np.zeros((2 * N, 3)), np.kron(np.eye(N), np.linalg.inv(Sigma))]])
    cov = np.linalg.inv(prior_prec + A.T @ A / s2)
    mean = cov @ A.T @ y / s2
    np.testing.assert_allclose(e.w_mean, mean[:3], atol=1e-10)
    np.testing.assert_allclose(e.b_mean.ravel(), mean[3:], atol=1e-10)
    np.testing.assert_allclose(e.w_cov, cov[:3, :3], atol=1e-10)
    np.testing.assert_allclose(e.b_w_cov[4], cov[3 + 8:3 + 10, :3], atol=1e-10)
    np.testing.assert_allclose(e.b_cov[4], cov[3 + 8:3 + 10, 3 + 8:3 + 10], atol=1e-10)
    assert e.logdet_cov == pytest.approx(np.linalg.slogdet(cov)[1], abs=1e-8)


def _plain_cavi(stats, prior, n_iter=3000):
    """Reference: the LMM's coordinate ascent written out (the pre-engine loop), no acceleration."""
    config = VIConfig(fixed_var=1e4, joint_fixed=True)
    b_hat = ridge_estimates(stats)
    noise, aux, _ = init_noise_and_fixed(stats, b_hat, config)
    params = prior.init_params(b_hat, np.random.default_rng(0))
    for _ in range(n_iter):
        pp, _ = prior.path_prior(params)
        e = joint_effects(stats, pp.precision[0], pp.shift[0], float(noise.mean_inv), config.fixed_var)
        second = e.b_cov + e.b_mean[:, :, None] * e.b_mean[:, None, :]
        params = prior.update(params, PathMoments(np.array([float(stats.n_subjects)]), e.b_mean.sum(0)[None],
                                                  second.sum(0)[None]))
        from dmlmm.inference.joint import expected_rss

        rss = float(expected_rss(stats, e).sum())
        noise = InvGamma(np.asarray(0.5 + 0.5 * stats.n_obs.sum()), np.asarray(float(aux.mean_inv) + 0.5 * rss))
        aux = InvGamma(np.asarray(1.0), np.asarray(float(noise.mean_inv) + 1.0))
    return e, noise, params


@pytest.mark.parametrize("make_prior", [
    lambda: GaussianMixturePrior(2, 1, zero_mean=True),
    lambda: BlockGaussianPrior([1, 1]),
    lambda: ScaledIdentityPrior(2),
], ids=["unstructured", "blocks", "scaled_identity"])
def test_engine_fit_agrees_with_the_plain_loop(make_prior, monkeypatch):
    stats, _ = _problem(n_subjects=40, seed=2)
    ref_e, ref_noise, _ = _plain_cavi(stats, make_prior())
    from dmlmm.inference import joint

    monkeypatch.setattr(joint, "_CHUNK_ELEMENTS", 7 * 2 * 3)  # the engine's joint steps in chunks of 7 subjects
    from dmlmm.lmm.structure import CovarianceStructure

    structure = {"unstructured": CovarianceStructure.unstructured(2),
                 "blocks": CovarianceStructure.block_diagonal([1, 1]),
                 "scaled_identity": CovarianceStructure.scaled_identity(2)}
    kind = type(make_prior()).__name__
    key = {"GaussianMixturePrior": "unstructured", "BlockGaussianPrior": "blocks", "ScaledIdentityPrior": "scaled_identity"}[kind]
    fit = fit_vb(stats, structure[key], max_iter=5000, tol=1e-13)
    assert fit.converged
    h = np.asarray(fit.elbo_history)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))
    np.testing.assert_allclose(fit.effects.w_mean, ref_e.w_mean, atol=1e-6)
    np.testing.assert_allclose(fit.effects.b_mean, ref_e.b_mean, atol=1e-6)
    np.testing.assert_allclose(fit.effects.w_cov, ref_e.w_cov, rtol=1e-5)
    assert float(fit.params.noise.mean) == pytest.approx(float(ref_noise.mean), rel=1e-6)


def test_engine_elbo_is_the_sum_of_its_terms():
    """run_vi's recorded ELBO with the joint step = local bounds + every global factor's terms."""
    stats, _ = _problem(n_subjects=30, seed=3)
    prior = GaussianMixturePrior(2, 1, zero_mean=True)
    config = VIConfig(max_iter=7, min_iter=50, joint_fixed=True, accelerate=False, fixed_var=1e4)
    b_hat = ridge_estimates(stats)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, np.random.default_rng(0)))
    with pytest.warns(Warning):
        res = run_vi(stats, prior, params, config, np.random.default_rng(0))
    pp, _ = prior.path_prior(res.params.prior)
    from dmlmm.inference.engine import noise_moments

    local = joint_local_step(stats, pp, noise_moments(res.params, 3), config.fixed_var)
    total = local.log_evidence.sum() + elbo_globals(res.params, prior, config)
    assert res.elbo == pytest.approx(total, rel=1e-12)


def test_joint_mode_refuses_mixtures():
    stats, _ = _problem()
    prior = GaussianMixturePrior(2, 2)
    config = VIConfig(joint_fixed=True)
    b_hat = ridge_estimates(stats)
    noise, aux, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, aux, fixed, prior.init_params(b_hat, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="joint_fixed needs a one-path prior"):
        run_vi(stats, prior, params, config, np.random.default_rng(0))

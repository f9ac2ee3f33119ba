"""The variational LMM's collapsed bound (dmlmm.lmm.collapsed) and the Newton start of fit_vb built on it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dmlmm.expfam import InvGamma
from dmlmm.inference.engine import VariationalParams, VIConfig, elbo_globals, init_noise_and_fixed, noise_moments
from dmlmm.inference.joint import joint_local_step
from dmlmm.lmm import collapsed as C
from dmlmm.lmm import variational
from dmlmm.lmm.structure import CovarianceStructure
from dmlmm.lmm.variational import fit_vb, prior_for
from dmlmm.models.starting import ridge_estimates
from dmlmm.sufficient import sufficient_stats

STRUCTURES = {"unstructured": CovarianceStructure.unstructured(3),
              "block-diagonal": CovarianceStructure.block_diagonal([1, 2])}


def _problem(n_subjects=150, seed=0):
    """Quadratic random curves (q = 3) with the same fixed design, 2-7 visits per subject."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 8, n_subjects)
    subj = np.repeat(np.arange(n_subjects), counts)
    t = rng.uniform(-1, 1, counts.sum())
    X = np.c_[np.ones_like(t), t, t**2]
    sigma = np.array([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.05]])
    b = rng.multivariate_normal(np.zeros(3), sigma, n_subjects)
    y = X @ [0.5, -1.0, 0.2] + np.einsum("nd,nd->n", X, b[subj]) + 0.3 * rng.normal(size=t.size)
    return sufficient_stats(y, X, X, subj, n_subjects)


def _hyper(structure):
    prior = prior_for(structure)
    return C.CollapsedHyper.for_blocks(structure.block_sizes(), prior.cov_df, prior.cov_scale, 1.0)


def _random_gamma(structure, rng):
    q = structure.dim
    A = rng.normal(size=(q, q)) * 0.5
    lam = np.zeros((q, q))
    lam[structure.rows, structure.cols] = A[structure.rows, structure.cols]
    lam[np.diag_indices(q)] = np.abs(np.diagonal(A)) + 0.3
    return lam @ lam.T


def _engine_elbo(stats, structure, cov, s, fixed_var):
    """The engine's ELBO with q(Sigma), q(sigma^2) at (cov, s), q(a), q(c) given them and q(w, b) at its best."""
    prior = prior_for(structure)
    config = VIConfig(fixed_var=fixed_var, joint_fixed=True)
    b_hat = ridge_estimates(stats)
    noise, _, fixed = init_noise_and_fixed(stats, b_hat, config)
    params = VariationalParams(noise, noise, fixed, prior.init_params(b_hat, np.random.default_rng(0)))
    alpha = float(noise.shape)
    params = replace(params, noise=InvGamma(np.asarray(alpha), np.asarray(alpha * s)),
                     noise_aux=InvGamma(np.asarray(1.0), np.asarray(1.0 / s + 1.0)),
                     prior=prior.at_covariance(params.prior, cov, stats.n_subjects))
    pp, _ = prior.path_prior(params.prior)
    local = joint_local_step(stats, pp, noise_moments(params, stats.dim_fixed), config.fixed_var)
    return float(local.log_evidence.sum()) + elbo_globals(replace(params, fixed=local.fixed), prior, config)


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_collapsed_bound_is_the_engine_elbo_up_to_a_constant(kind):
    """-F(S, s) + ELBO(S, s) is the same constant at different points: the closed-form optimisation
    over q(w, b) and the auxiliaries is exact (the engine computes its ELBO with other code).
    With fixed_var = 1e10 the O(1 / fixed_var) terms the bound leaves out are below 1e-6 nats."""
    structure = STRUCTURES[kind]
    stats = _problem()
    hyp = _hyper(structure)
    rng = np.random.default_rng(1)
    gaps = []
    for s in (0.05, 0.09, 0.3):
        gamma = _random_gamma(structure, rng)
        gaps.append(_engine_elbo(stats, structure, s * gamma, s, 1e10) + C.collapsed_value(stats, gamma, hyp, s).value)
    assert np.ptp(gaps) < 1e-6


def test_profiled_residual_variance_maximises_the_bound():
    structure = STRUCTURES["unstructured"]
    stats = _problem()
    hyp = _hyper(structure)
    gamma = _random_gamma(structure, np.random.default_rng(2))
    point = C.collapsed_value(stats, gamma, hyp)
    assert point.value == pytest.approx(C.collapsed_value(stats, gamma, hyp, point.s).value, rel=1e-13)
    for f in (0.99, 1.01):
        assert C.collapsed_value(stats, gamma, hyp, f * point.s).value > point.value


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_newton_system_gradient_and_curvature_match_differences(kind):
    """In Gamma's entries the gradient is exact (central differences of the bound with s profiled);
    in the log coordinates R expm(X) R' so are the gradient and, up to the likelihood curvature
    model's REML approximation, the Hessian (second differences of the bound)."""
    structure = STRUCTURES[kind]
    stats = _problem()
    hyp = _hyper(structure)
    rows, cols, q = structure.rows, structure.cols, structure.dim
    units = C._unit(rows, cols, q)
    point = C.collapsed_value(stats, _random_gamma(structure, np.random.default_rng(3)), hyp)
    grad, H, Gf = C._gamma_system(stats, point, hyp, rows, cols, units)
    h = 1e-6
    fd = [(C.collapsed_value(stats, point.gamma + h * E, hyp).value
           - C.collapsed_value(stats, point.gamma - h * E, hyp).value) / (2 * h) for E in units]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())
    g, Hx = C._log_coordinates(point, grad, H, Gf, rows, cols, units)

    def at(x):
        return C.collapsed_value(stats, C._moved(point, x, rows, cols, q), hyp).value

    m = rows.size
    hx = 1e-4
    I = np.eye(m) * hx
    fd_g = np.array([(at(I[e]) - at(-I[e])) / (2 * hx) for e in range(m)])
    np.testing.assert_allclose(g, fd_g, rtol=1e-5, atol=1e-6 * np.abs(fd_g).max())
    fd_H = np.array([[(at(I[e] + I[f]) - at(I[e] - I[f]) - at(-I[e] + I[f]) + at(-I[e] - I[f])) / (4 * hx * hx)
                      for f in range(m)] for e in range(m)])
    assert np.linalg.norm(Hx - fd_H) < 0.05 * np.linalg.norm(fd_H)


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_collapsed_start_reaches_the_cold_optimum_in_a_few_sweeps(kind):
    """From the collapsed bound's maximum coordinate ascent converges in a few sweeps to the optimum
    that the cold start reaches in hundreds (both to a tight tolerance), and the Newton runs are reported."""
    structure = STRUCTURES[kind]
    stats = _problem(n_subjects=300, seed=5)
    cold = fit_vb(stats, structure, tol=1e-13, max_iter=20000, start="cold")
    fit = fit_vb(stats, structure, tol=1e-13, max_iter=20000)
    assert fit.converged and cold.converged
    assert fit.newton_stages and fit.newton_stages[-1][0] == 300 and fit.warm_stages == []
    assert fit.n_iter <= 10 < cold.n_iter
    assert fit.elbo == pytest.approx(cold.elbo, rel=1e-10)
    np.testing.assert_allclose(fit.cov_re, cold.cov_re, rtol=1e-4)
    np.testing.assert_allclose(fit.effects.b_mean, cold.effects.b_mean, rtol=1e-4, atol=1e-5)


def test_collapsed_start_on_nested_subsets(monkeypatch):
    """With subsets (here 100 and 300 of 900 subjects) the start is the same optimum."""
    stats = _problem(n_subjects=900, seed=6)
    direct = fit_vb(stats, tol=1e-12, max_iter=20000)
    monkeypatch.setattr(variational, "NEWTON_SUBSET_MIN", 100)
    staged = fit_vb(stats, tol=1e-12, max_iter=20000)
    assert [m for m, _ in staged.newton_stages] == [100, 300, 900]
    assert staged.elbo == pytest.approx(direct.elbo, rel=1e-11)


def test_subset_warm_start_reaches_the_cold_fit(monkeypatch):
    """The coordinate-ascent warm start on nested subsets (the start for a scaled-identity Sigma; here
    60 and 120 of 500 subjects) converges to the cold start's optimum, its full-data ELBO trace never
    decreases, and the stages are reported."""
    from conftest import simulate_spline_lmm

    from dmlmm.basis import SplineBasis
    from dmlmm.lmm import LinearMixedModel
    from dmlmm.lmm.scaling import ResponseScaling

    df, _ = simulate_spline_lmm(n_subjects=500, n_basis=5, min_obs=3, max_obs=8, seed=4)
    model = LinearMixedModel(method="vb", basis=SplineBasis(5))
    _, design = model._build_design(df, None, None, None, None, "id", "t", "y", None, False)
    stats = design.stats(ResponseScaling.learn(design.y, design.F, "y").transform(design.y))
    cold = fit_vb(stats, tol=1e-13, max_iter=20000, start="cold")
    assert cold.warm_stages == [] and cold.newton_stages == []
    monkeypatch.setattr(variational, "WARM_FIRST", 60)
    monkeypatch.setattr(variational, "WARM_RATIO", 2)
    warm = fit_vb(stats, tol=1e-13, max_iter=20000, start="subsets")
    assert [m for m, _ in warm.warm_stages] == [60, 120] and all(k > 0 for _, k in warm.warm_stages)
    assert warm.converged and cold.converged
    assert warm.n_iter < cold.n_iter
    h = np.asarray(warm.elbo_history)
    assert np.all(np.diff(h) >= -1e-9 * np.abs(h[1:]))
    assert warm.elbo == pytest.approx(cold.elbo, rel=1e-9)
    np.testing.assert_allclose(warm.effects.w_mean, cold.effects.w_mean, rtol=2e-3)
    np.testing.assert_allclose(np.diagonal(warm.cov_re), np.diagonal(cold.cov_re), rtol=2e-3)


def test_at_covariance_sets_the_expected_precision():
    structure = STRUCTURES["block-diagonal"]
    prior = prior_for(structure)
    stats = _problem()
    params = prior.init_params(ridge_estimates(stats), np.random.default_rng(0))
    cov = np.array([[0.7, 0.0, 0.0], [0.0, 0.4, 0.1], [0.0, 0.1, 0.2]])
    new = prior.at_covariance(params, cov, 150)
    pp, _ = prior.path_prior(new)
    np.testing.assert_allclose(np.linalg.inv(pp.precision[0]), cov, rtol=1e-12)


def test_fit_vb_rejects_an_unknown_start():
    with pytest.raises(ValueError, match="start must be 'collapsed', 'subsets' or 'cold', not 'warm'"):
        fit_vb(_problem(n_subjects=20), start="warm")


@pytest.mark.parametrize("kind", list(STRUCTURES))
def test_penalty_hessian_matches_differences_of_its_gradient(kind):
    structure = STRUCTURES[kind]
    hyp = _hyper(structure)
    rows, cols, q = structure.rows, structure.cols, structure.dim
    units = C._unit(rows, cols, q)
    gamma = _random_gamma(structure, np.random.default_rng(7))
    s, h = 0.2, 1e-6

    def grad(g):
        return -C.gamma_entries(C._penalty(g, np.linalg.cholesky(g), s, hyp, grad=True)[1], rows, cols)

    fd = np.array([(grad(gamma + h * E) - grad(gamma - h * E)) / (2 * h) for E in units]).T
    np.testing.assert_allclose(C._penalty_hessian(gamma, s, hyp, rows, units), 0.5 * (fd + fd.T), rtol=1e-6, atol=1e-8)

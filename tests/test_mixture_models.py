"""MixtureLMM and DeepMixtureLMM through the user API."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.exceptions import DataError, IdentifiabilityWarning, NotFittedError
from dmlmm.metrics import adjusted_rand_index
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def small():
    return dgp1(random_state=11, n_subjects=120)


@pytest.fixture(scope="module")
def fitted_deep(small):
    m = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1), random_state=0)
    return m.fit(small.data, "subject", "time", "y")


def test_dgp1_clusters_recovered():
    # 300 of DGP 1's 600 subjects (half the time; benchmarks/accuracy.py and fit_speed.py fit all 600)
    sim = dgp1(random_state=3, n_subjects=300)
    m = DeepMixtureLMM((10, 5), (4, 1), basis=SplineBasis(10, lower=0, upper=1), random_state=0)
    m.fit(sim.data, "subject", "time", "y")
    assert adjusted_rand_index(sim.labels, m.labels_) >= 0.9
    assert adjusted_rand_index(sim.labels, m.groups_) >= 0.9
    assert m.converged_


def test_predict_equals_stored_labels(small, fitted_deep):
    pd.testing.assert_series_equal(fitted_deep.predict(small.data), fitted_deep.labels_)
    proba = fitted_deep.predict_proba(small.data)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    pd.testing.assert_frame_equal(proba, fitted_deep.responsibilities_)
    np.testing.assert_allclose(fitted_deep.group_proba_.sum(axis=1), 1.0)


def test_same_random_state_same_fit(small, fitted_deep):
    again = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1), random_state=0)
    again.fit(small.data, "subject", "time", "y")
    assert again.elbo_ == fitted_deep.elbo_
    np.testing.assert_array_equal(again.elbo_history_, fitted_deep.elbo_history_)
    pd.testing.assert_frame_equal(again.responsibilities_, fitted_deep.responsibilities_)


def test_permuting_subjects_changes_nothing(small, fitted_deep):
    df = small.data
    rng = np.random.default_rng(0)
    perm = rng.permutation(df["subject"].unique())
    relabel = dict(zip(df["subject"].unique(), [f"s{p:04d}" for p in perm]))
    shuffled = df.assign(subject=df["subject"].map(relabel)).sample(frac=1.0, random_state=1)
    m = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1), random_state=0)
    m.fit(shuffled, "subject", "time", "y")
    assert m.elbo_ == pytest.approx(fitted_deep.elbo_, rel=1e-8)
    back = m.labels_.rename(index={v: k for k, v in relabel.items()}).sort_index()
    assert adjusted_rand_index(back, fitted_deep.labels_) == 1.0


def _gaussian_curves(n_subjects=150, n_obs=25, seed=0):
    """Curves with Gaussian spline coefficients, well identified by their observations."""
    rng = np.random.default_rng(seed)
    basis = SplineBasis(5, knots="clamped", lower=0, upper=1).fit()
    L = rng.normal(size=(5, 5)) * 0.4
    b = np.array([0.5, -1.0, 0.3, 1.0, 0.0]) + rng.normal(size=(n_subjects, 5)) @ L.T
    t = rng.uniform(0, 1, (n_subjects, n_obs))
    X = basis.transform(t.ravel())
    y = (X * np.repeat(b, n_obs, axis=0)).sum(1) + 0.2 * rng.normal(size=t.size)
    return pd.DataFrame({"subject": np.repeat(np.arange(n_subjects), n_obs), "time": t.ravel(), "y": y}), basis


def test_one_component_one_layer_reduces_to_gaussian_prior():
    df, basis = _gaussian_curves()
    # the research priors: the smoothness priors of the two models are built differently (a tied
    # idiosyncratic spectrum and smooth loadings versus smooth Huang-Wand scales), so only without
    # them is the full-rank one-component deep model the Gaussian model up to its priors
    deep = DeepMixtureLMM((1,), (5,), basis=basis, smoothing=None, random_state=0, tol=1e-8).fit(df)
    gauss = MixtureLMM(1, basis=basis, smoothing=None, random_state=0, tol=1e-8).fit(df)
    grid = np.linspace(0, 1, 21)
    a = deep.predict_trajectory(df, times=grid)
    b = gauss.predict_trajectory(df, times=grid)
    sd = df["y"].std()
    diff = np.abs(a["mean"] - b["mean"])
    assert diff.median() < 0.01 * sd and diff.max() < 0.15 * sd
    width = np.abs((a["upper"] - a["lower"]) - (b["upper"] - b["lower"]))
    assert width.median() < 0.02 * sd and width.max() < 0.15 * sd
    assert deep.sigma2_ == pytest.approx(gauss.sigma2_, rel=0.01)
    ca = deep.prior_.point_mixture(deep.params_.prior).covs[0]
    cb = gauss.prior_.point_mixture(gauss.params_.prior).covs[0]
    np.testing.assert_allclose(ca, cb, atol=0.1 * np.abs(cb).max())  # within sampling error (N = 150)
    # same likelihood part; the bounds differ only through the priors of the prior's own parameters
    assert deep.score(df) == pytest.approx(gauss.score(df), abs=0.05)  # nats per subject (25 observations)


def test_log_score_equals_dense_gaussian_mixture_density(small, fitted_deep):
    """score_samples against a dense multivariate-normal mixture evaluation (no Woodbury)."""
    m = fitted_deep
    one = small.data[small.data["subject"] == small.data["subject"].iloc[0]]
    mix = m.prior_.point_mixture(m.params_.prior, integrate_globals=True)  # the predictive's prior of b
    X = m.design_.X(one["time"].to_numpy())
    s, sh = m.design_.y_scale, m.design_.y_shift
    dens = [
        np.log(wc) + st.multivariate_normal.logpdf(
            one["y"].to_numpy(), sh + s * X @ mc, s**2 * (X @ Sc @ X.T + m.sigma2_ / s**2 * np.eye(len(X)))
        )
        for wc, mc, Sc in zip(mix.weights, mix.means, mix.covs)
    ]
    expected = np.logaddexp.reduce(dens)
    assert m.score_samples(one).iloc[0] == pytest.approx(expected, rel=1e-9)


def test_heldout_score_is_conditional_density(small, fitted_deep):
    df = small.data
    held = df.groupby("subject").tail(2)
    train = df.drop(held.index)
    cond = fitted_deep.score_samples(held, condition_on=train)
    joint = fitted_deep.score_samples(df)
    marg = fitted_deep.score_samples(train)
    np.testing.assert_allclose(cond, joint - marg, rtol=1e-10)


def test_trajectories_are_ordered_and_sample_consistent(small, fitted_deep):
    sub = small.data[small.data["subject"].isin(small.data["subject"].unique()[:3])]
    tr = fitted_deep.predict_trajectory(sub, times=np.linspace(0, 1, 11))
    assert list(tr.columns) == ["subject", "time", "mean", "lower", "upper", "beyond_last_visit"]
    assert len(tr) == 33
    last = sub.groupby("subject")["time"].max()
    np.testing.assert_array_equal(tr["beyond_last_visit"], tr["time"].to_numpy() > last.loc[tr["subject"]].to_numpy())
    assert (tr["lower"] < tr["mean"]).all() and (tr["mean"] < tr["upper"]).all()
    obs = fitted_deep.predict_trajectory(sub, times=np.linspace(0, 1, 11), kind="observation")
    assert ((obs["upper"] - obs["lower"]) > (tr["upper"] - tr["lower"])).all()
    draws = fitted_deep.sample_trajectories(sub, times=np.linspace(0, 1, 11), n_samples=4000, random_state=0)
    mc = draws.groupby(["subject", "time"])["value"].agg(["mean", lambda v: v.quantile(0.975)])
    np.testing.assert_allclose(mc["mean"].to_numpy(), tr["mean"].to_numpy(), atol=0.05)
    np.testing.assert_allclose(mc.iloc[:, 1].to_numpy(), tr["upper"].to_numpy(), atol=0.08)
    pop = fitted_deep.predict_trajectory(None, times=[0.5])
    assert pop["subject"].tolist() == ["population"]


def test_cluster_means_and_summary(fitted_deep):
    cm = fitted_deep.cluster_means_
    assert set(cm.columns) == {"cluster", "time", "mean", "lower", "upper", "mean_lower", "mean_upper", "weight"}
    assert "clusters holding subjects" in fitted_deep.summary()
    assert fitted_deep.clusters_["n_subjects"].sum() == pytest.approx(120)


def test_mixture_lmm_recovers_groups_and_noise(small):
    m = MixtureLMM(5, basis=SplineBasis(8, lower=0, upper=1), random_state=0).fit(small.data, "subject", "time", "y")
    assert adjusted_rand_index(small.labels, m.labels_) >= 0.9
    assert np.sqrt(m.sigma2_) == pytest.approx(0.3, rel=0.15)


def test_covariate_effect_recovered():
    sim = dgp1(random_state=5, n_subjects=150)
    df = sim.data.copy()
    rng = np.random.default_rng(0)
    age = pd.Series(rng.normal(50, 10, 150), index=range(150))
    df["age"] = df["subject"].map(age)
    df["y"] = df["y"] + 0.05 * (df["age"] - 50)
    m = MixtureLMM(3, basis=SplineBasis(8, lower=0, upper=1), random_state=0)
    m.fit(df, "subject", "time", "y", covariates=["age"])
    assert m.fixed_effects_["age"] == pytest.approx(0.05, abs=0.015)


def test_scale_invariance(small):
    base = MixtureLMM(2, basis=SplineBasis(6, lower=0, upper=1), random_state=0).fit(small.data, "subject", "time", "y")
    for factor in (1e9, 1e-9):
        big = small.data.assign(y=small.data["y"] * factor + 3 * factor)
        m = MixtureLMM(2, basis=SplineBasis(6, lower=0, upper=1), random_state=0).fit(big, "subject", "time", "y")
        assert m.sigma2_ == pytest.approx(base.sigma2_ * factor**2, rel=1e-6)
        tr = m.predict_trajectory(big.head(20), times=[0.3])
        tb = base.predict_trajectory(small.data.head(20), times=[0.3])
        np.testing.assert_allclose(tr["mean"], tb["mean"] * factor + 3 * factor, rtol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_not_fitted():
    with pytest.raises(NotFittedError, match="not fitted"):
        DeepMixtureLMM().predict(pd.DataFrame({"subject": [1], "time": [0.0], "y": [1.0]}))


def test_latent_dim_too_large(small):
    with pytest.raises(ValueError, match=r"latent_dims\[1\] = 5 must be between 1 and the dimension of the layer below \(3\)"):
        DeepMixtureLMM((2, 2), (3, 5), basis=SplineBasis(6, lower=0, upper=1)).fit(small.data, "subject", "time", "y")


def test_components_not_positive(small):
    with pytest.raises(ValueError, match="positive integers"):
        DeepMixtureLMM((2, 0), (2, 1)).fit(small.data, "subject", "time", "y")


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_more_components_than_subjects(n_jobs, capfd):
    """Said once per fit, from the user's call, whatever the candidates (two loading orders) and wherever they
    run: with n_jobs=2 the worker processes printed it raw to the terminal, once per candidate, and the command
    line's report left it out; in one process it came once per candidate."""
    sim = dgp1(random_state=1, n_subjects=6)
    m = DeepMixtureLMM((10, 2), (2, 1), basis=SplineBasis(6, lower=0, upper=1), random_state=0, max_iter=50,
                       n_jobs=n_jobs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m.fit(sim.data, "subject", "time", "y")
    said = [w for w in caught if issubclass(w.category, IdentifiabilityWarning)
            and re.search(r"n_components\[0\]=10 exceeds the number of subjects \(6\)", str(w.message))]
    assert len(said) == 1 and said[0].filename == __file__, [(str(w.message), w.filename) for w in caught]
    assert "exceeds the number of subjects" not in capfd.readouterr().err  # nothing printed by the workers


def test_knot_intervals_without_observations_warn_without_smoothing():
    df = pd.DataFrame({"subject": np.repeat(np.arange(10), 3), "time": np.tile([0.0, 0.5, 1.0], 10),
                       "y": np.random.default_rng(0).normal(size=30)})
    with pytest.warns(IdentifiabilityWarning,
                      match=r"2 of the spline basis's 5 knot intervals hold no observation \(\[0.2, 0.4\], \[0.6, 0.8\]\)"):
        MixtureLMM(1, basis=SplineBasis(8, knots="uniform"), smoothing=None, random_state=0, max_iter=20).fit(df)
    with warnings.catch_warnings():  # the smoothness prior identifies the curve between the visits: no warning
        warnings.simplefilter("error", IdentifiabilityWarning)
        MixtureLMM(1, basis=SplineBasis(8, knots="uniform"), random_state=0, max_iter=20).fit(df)


@pytest.mark.parametrize("make, what", [
    (lambda d: d.time, "a function of time 'time' alone"),
    (lambda d: 2 * d.time + 1, "a function of time 'time' alone"),
    (lambda d: d.time**2, "a function of time 'time' alone"),
    (lambda d: 3 * d.sex - 1 + d.time, r"a combination of time 'time' and covariate\(s\) \['sex'\]"),
])
def test_covariates_confounded_with_time_warn(small, make, what):
    d = small.data.copy()
    d["sex"] = (d.subject.astype("category").cat.codes % 2).astype(float)  # baseline: identified
    d["x"] = make(d)
    m = MixtureLMM(2, basis=SplineBasis(8), random_state=0, max_iter=20)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="variational")
        with pytest.warns(IdentifiabilityWarning, match=rf"covariate 'x' is \(almost\) {what} \(R\^2 = 1.000000\)"):
            m.fit(d, "subject", "time", "y", covariates=["sex", "x"])
        with warnings.catch_warnings():  # a baseline covariate alone is fine
            warnings.simplefilter("error", IdentifiabilityWarning)
            m.fit(d, "subject", "time", "y", covariates=["sex"])


def test_times_outside_basis_range_name_subjects(small):
    df = small.data.copy()
    df.loc[df.index[:3], "time"] = 1.5
    first = df["subject"].iloc[0]
    with pytest.raises(DataError, match=rf"subject\(s\) \[{first}\] lie outside the basis range \[0, 1\]"):
        MixtureLMM(2, basis=SplineBasis(6, lower=0, upper=1, extrapolate=False)).fit(df, "subject", "time", "y")


def test_single_subject_and_constant_response():
    one = pd.DataFrame({"subject": [1, 1, 1], "time": [0, 1, 2.0], "y": [1, 2, 3.0]})
    with pytest.raises(DataError, match="only one subject"):
        MixtureLMM(1).fit(one)
    const = pd.DataFrame({"subject": [1, 1, 2, 2], "time": [0, 1, 0, 1.0], "y": [2.0] * 4})
    with pytest.raises(DataError, match="constant"):
        MixtureLMM(1).fit(const)


def test_single_observation_subjects_are_fine(small):
    df = pd.concat([small.data, pd.DataFrame({"subject": [9001, 9002], "time": [0.2, 0.7], "y": [0.5, -0.5]})])
    m = MixtureLMM(2, basis=SplineBasis(6, lower=0, upper=1), random_state=0).fit(df, "subject", "time", "y")
    assert 9001 in m.labels_.index


def test_collapse_to_one_cluster_is_reported():
    from dmlmm.exceptions import EmptyComponentWarning

    df, basis = _gaussian_curves(n_subjects=80)
    with pytest.warns(EmptyComponentWarning, match="no cluster structure"):
        m = MixtureLMM(4, basis=basis, random_state=0).fit(df)
    assert m.n_components_ == (1,)


def test_minibatch_natural_gradient_fit(small):
    """batch_size < N: stochastic natural-gradient steps (Robbins-Monro) still find the groups."""
    # research priors: with the smoothness prior this minibatch fit splits a group (ARI 0.66), the
    # known weakness of the stochastic fit that the scaling issue addresses
    m = MixtureLMM(4, basis=SplineBasis(8, lower=0, upper=1, knots="uniform"), smoothing=None, random_state=0,
                   batch_size=40, max_iter=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(small.data, "subject", "time", "y")
    assert adjusted_rand_index(small.labels, m.labels_) >= 0.9
    assert np.sqrt(m.sigma2_) == pytest.approx(0.3, rel=0.2)


def test_minibatch_natural_gradient_fit_deep(small):
    """Warm start on 60 of the 120 subjects, then minibatches of 40 (was a known defect: ARI 0.66)."""
    deep = DeepMixtureLMM((4, 2), (3, 1), basis=SplineBasis(8, lower=0, upper=1, knots="uniform"), smoothing=None,
                          random_state=0, batch_size=40, subsample=60, max_iter=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        deep.fit(small.data, "subject", "time", "y")
    assert adjusted_rand_index(small.labels, deep.groups_) >= 0.8


def test_cluster_mean_band_narrows_with_more_subjects():
    """The credible band of a cluster's mean curve reflects its parameters' posterior: about 1/sqrt(n)."""
    widths = []
    for n in (100, 400):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = MixtureLMM(2, basis=SplineBasis(8), random_state=0).fit(dgp1(random_state=3, n_subjects=n).data)
        c = m.cluster_means_
        assert (c["mean_lower"] <= c["mean"]).all() and (c["mean"] <= c["mean_upper"]).all()
        assert ((c["mean_upper"] - c["mean_lower"]) <= (c["upper"] - c["lower"]) + 1e-9).all()
        widths.append(float((c["mean_upper"] - c["mean_lower"]).mean()))
    assert 1.4 < widths[0] / widths[1] < 3.0  # sqrt(4) = 2


def test_first_layer_collapse_message_names_what_is_left():
    from dmlmm.models.fitting import collapse_message

    assert collapse_message(1, (1, 2), 2) is None  # one first-layer component was asked for
    assert collapse_message(10, (2, 1), 2) is None
    assert collapse_message(10, (1,), 1).endswith("(every subject is in one cluster)")
    assert collapse_message(10, (1, 1), 1).endswith("(every subject is in one cluster)")
    # measured at 100,000 subjects of two groups: the groups as the second layer's two components
    said = collapse_message(10, (1, 2), 2)
    assert "every subject is in one cluster" not in said
    assert said.endswith("the 2 clusters (labels_) differ in the deeper layers only ((1, 2) components per layer); "
                         "groups_ has one group")
    # a minibatch fit decided its structure on its warm start's subjects: the message says so and what to do
    hint = ("; a minibatch fit creates no cluster after its warm start: a larger subsample= (up to all subjects) or "
            "batch_size='full' looks at more of them")
    said = collapse_message(10, (1,), 1, (200, 400))
    assert said == ("all first-layer components but one ended empty and were pruned: the 200 of the 400 subjects that "
                    "this minibatch fit's warm start saw show no cluster structure this model can support (every "
                    "subject is in one cluster)" + hint)
    assert collapse_message(10, (1, 2), 2, (200, 400)).endswith(
        "groups_ has one group, as the 200 of the 400 subjects that this minibatch fit's warm start saw showed" + hint)
    assert collapse_message(10, (1,), 1, (400, 400)) == collapse_message(10, (1,), 1)  # it saw every subject
    assert collapse_message(10, (2, 1), 2, (200, 400)) is None


def test_a_fit_that_reproduces_its_response_exactly_says_so():
    """Noise-free curves inside the spline span (cubics, not lines: the up-front check lets them through): the
    residual variance ends near 1e-90 of the response's and the scores are +-1e78; the fit warns that densities
    and bands rest on a variance of about zero. Noisy data of the same design do not warn."""
    from dmlmm import SplineBasis
    from dmlmm.exceptions import IdentifiabilityWarning

    rng = np.random.default_rng(0)
    rows = [pd.DataFrame({"subject": s, "time": np.sort(rng.choice(np.arange(1, 100) / 100, 10, replace=False))})
            for s in range(60)]
    df = pd.concat(rows, ignore_index=True)
    df["y"] = 0.1 * df["subject"] + df["time"] ** 3 - df["time"] ** 2 * (df["subject"] % 3)
    model = MixtureLMM(3, SplineBasis(6), random_state=0, max_iter=100, covariance="full", response_transform=None)
    with pytest.warns(IdentifiabilityWarning, match=r"the curves reproduce the response 'y' almost exactly"):
        model.fit(df)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(df.assign(y=df["y"] + rng.normal(scale=0.05, size=len(df))))
    assert not [w for w in caught if "reproduce the response" in str(w.message)]

"""Class membership by baseline covariates (membership_covariates): bound, fit, recovery, errors."""

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.special import log_expit, logsumexp

import dmlmm
from dmlmm import DeepMixtureLMM, MixtureLMM
from dmlmm.exceptions import DataError, IdentifiabilityWarning
from dmlmm.expfam import Gaussian
from dmlmm.metrics import adjusted_rand_index
from dmlmm.priors.membership import membership_from_sums, membership_log_weights, membership_sums, stick_log_probs

A, B, C = -0.3, 1.5, -1.0  # log-odds of group 1: A + B x + C [sex == m]


def _simulate(n=400, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    male = rng.integers(0, 2, n)
    g = (rng.random(n) < 1 / (1 + np.exp(-(A + B * x + C * male)))).astype(int)
    k = 8
    t = np.sort(rng.uniform(0, 1, (n, k)), axis=1)
    mu = np.where(g[:, None] == 1, np.sin(2 * np.pi * t), 0.5 - np.sin(2 * np.pi * t))
    y = mu + rng.normal(0, 0.3, (n, k)) + rng.normal(0, 0.2, (n, 1))
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), k), "time": t.ravel(), "y": y.ravel(),
                       "x": np.repeat(x, k), "sex": np.repeat(np.where(male, "m", "f"), k)})
    return df, g, x, male


@pytest.fixture(scope="module")
def sim():
    return _simulate()


@pytest.fixture(scope="module")
def fitted(sim):
    df, *_ = sim
    return MixtureLMM(4, random_state=0, membership_covariates=["x", "sex"]).fit(df)


def test_stick_probabilities_sum_to_one():
    eta = np.random.default_rng(0).normal(size=(7, 4))
    lp = stick_log_probs(eta)
    assert lp.shape == (7, 5)
    np.testing.assert_allclose(logsumexp(lp, axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(lp[:, 0], log_expit(eta[:, 0]))


def test_bound_is_below_the_monte_carlo_expectation():
    rng = np.random.default_rng(3)
    S, Q, N = 3, 2, 5
    L = rng.normal(size=(S, Q, Q)) * 0.5
    cov = L @ np.swapaxes(L, 1, 2) + 0.1 * np.eye(Q)
    mean = rng.normal(size=(S, Q))
    prec = np.linalg.inv(cov)
    q = Gaussian(prec, (prec @ mean[..., None])[..., 0])
    Z = np.c_[np.ones(N), rng.normal(size=N)]
    bound, _ = membership_log_weights(q, Z)
    draws = mean[None] + np.einsum("sqr,msr->msq", np.linalg.cholesky(cov), rng.standard_normal((200_000, S, Q)))
    mc = stick_log_probs_many(np.einsum("nq,msq->mns", Z, draws))  # (draws, N, K)
    est, se = mc.mean(axis=0), mc.std(axis=0) / np.sqrt(mc.shape[0])
    assert (bound <= est + 4 * se).all()
    assert (est - bound < 1.0).all()  # a useful bound, not a trivial one


def stick_log_probs_many(eta):
    m, n, s = eta.shape
    return stick_log_probs(eta.reshape(m * n, s)).reshape(m, n, s + 1)


def test_elbo_is_monotone_and_groups_are_found(sim, fitted):
    df, g, *_ = sim
    h = fitted.elbo_history_
    assert np.all(np.diff(h) >= -1e-8 * np.abs(h[1:]))
    assert adjusted_rand_index(g, fitted.groups_.to_numpy()) == 1.0


def test_coefficients_agree_with_logistic_regression_on_the_true_groups(sim, fitted):
    """The two-group membership model is logistic regression of the group; check against statsmodels' MLE."""
    sm = pytest.importorskip("statsmodels.api")
    df, g, x, male = sim
    coef = fitted.membership_coefficients_
    first = int(coef["group"].iloc[0])
    # our stick: log-odds of reported group `first` against the other; the truth's group 1 is ...
    truth_is_first = np.mean(fitted.groups_.to_numpy()[g == 1] == first) > 0.5
    sign = 1.0 if truth_is_first else -1.0
    mle = sm.Logit(g, sm.add_constant(np.c_[x, male])).fit(disp=0)
    est = sign * coef["estimate"].to_numpy()
    np.testing.assert_allclose(est, mle.params, atol=0.08)
    np.testing.assert_allclose(coef["sd"].to_numpy(), mle.bse, rtol=0.2)
    # and the simulated coefficients lie within the (99.9 %) intervals
    assert np.all(np.abs(est - np.array([A, B, C])) < 3.3 * coef["sd"].to_numpy())


def test_deep_model_prunes_the_membership_model_with_its_components(sim):
    df, g, *_ = sim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = DeepMixtureLMM((5, 2), random_state=0, membership_covariates=["x", "sex"], max_iter=300).fit(df)
    k1 = m.n_components_[0]
    assert m.params_.membership.shift.shape == (k1 - 1, 3)
    assert m.membership_coefficients_.shape[0] == (k1 - 1) * 3
    h = m.elbo_history_
    assert np.all(np.diff(h) >= -1e-8 * np.abs(h[1:]))


def test_new_patients_get_class_probabilities_from_their_covariates(fitted, sim):
    df, *_ = sim
    new = pd.DataFrame({"subject": ["a", "b"], "time": [0.5, 0.5], "y": [np.nan, np.nan],
                        "x": [-2.0, 2.0], "sex": ["f", "f"]})
    p = fitted.membership_probabilities(new)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    coef = fitted.membership_coefficients_
    first = int(coef["group"].iloc[0])
    slope = coef.loc[(0, "x"), "estimate"]
    # the group favoured by a high x is the one the slope points to
    hi = first if slope > 0 else 1 - first
    assert p.loc["b", hi] > 0.85 and p.loc["a", hi] < 0.15
    # the forecast of a patient without visits follows the membership probabilities
    tr = fitted.predict_trajectory(new, times=[0.25]).set_index("subject")["mean"]
    assert abs(tr["a"] - tr["b"]) > 0.5  # the two groups' curves differ by ~1 at t = 0.25
    # and so do its class probabilities (predict_proba, dmlmm predict's probability column): the membership
    # model's, not the mean-field q(c) of a subject without data (0.579 against 0.565 on a two-class fit)
    groups = fitted.predict_group_proba(new)
    np.testing.assert_allclose(groups.loc[p.index].to_numpy(), p.to_numpy(), rtol=1e-10)


def test_save_load_keeps_the_membership_model(fitted, sim, tmp_path):
    df, *_ = sim
    fitted.save(tmp_path / "m.dmlmm")
    back = dmlmm.load(tmp_path / "m.dmlmm")
    pd.testing.assert_frame_equal(back.membership_coefficients_, fitted.membership_coefficients_)
    pd.testing.assert_frame_equal(back.predict_proba(df.head(40)), fitted.predict_proba(df.head(40)))


def test_membership_covariate_errors(sim):
    df, *_ = sim
    bad = df.copy()
    bad.loc[bad.index[1], "x"] = 99.0  # changes within subject 0
    with pytest.raises(DataError, match=r"membership covariate 'x' changes within subject 0 \(1 subject\(s\) in all\)"):
        MixtureLMM(2, membership_covariates=["x"], max_iter=5).fit(bad)
    with pytest.raises(DataError, match=r"membership covariate column\(s\) \['age'\] not found"):
        MixtureLMM(2, membership_covariates=["age"], max_iter=5).fit(df)
    with pytest.raises(DataError, match=r"membership covariate\(s\) \['one'\] take the same value for every subject"):
        MixtureLMM(2, membership_covariates=["one"], max_iter=5).fit(df.assign(one=1.0))
    with pytest.raises(ValueError, match="membership_covariates must be None or a list of distinct column names"):
        MixtureLMM(2, membership_covariates=["x", "x"]).fit(df)


def test_minibatch_fit_keeps_the_membership_model(sim, fitted):
    df, g, *_ = sim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(4, random_state=0, membership_covariates=["x", "sex"], batch_size=100, subsample=200).fit(df)
    assert adjusted_rand_index(g, m.groups_.to_numpy()) == 1.0
    a, b = m.membership_coefficients_, fitted.membership_coefficients_
    sign = 1.0 if a["group"].iloc[0] == b["group"].iloc[0] else -1.0
    np.testing.assert_allclose(sign * a["estimate"].to_numpy(), b["estimate"].to_numpy(), atol=0.15)


def test_the_update_from_sums_is_the_bounds_optimum_and_sums_add_over_subjects():
    """q(gamma)'s mean from :func:`membership_sums` zeroes the gradient of the Jaakkola-Jordan bound (written out
    per subject and stick here, differentiated numerically) plus the log prior; sums over two sets of subjects
    add up to the sums over all (what a Dask fit adds over its partitions)."""
    rng = np.random.default_rng(5)
    N, K, Q, scale = 40, 3, 3, 2.5
    Z = np.c_[np.ones(N), rng.normal(size=(N, Q - 1))]
    resp = rng.dirichlet(np.ones(K), size=N)
    xi = rng.uniform(0.1, 3.0, size=(N, K - 1))
    whole = membership_sums(Z, resp, xi)
    halves = [membership_sums(Z[s], resp[s], xi[s]) for s in (slice(0, 17), slice(17, N))]
    for part in range(2):
        np.testing.assert_allclose(halves[0][part] + halves[1][part], whole[part], rtol=1e-12)
    prior = Gaussian(np.broadcast_to(np.eye(Q) / scale**2, (K - 1, Q, Q)).copy(), np.zeros((K - 1, Q)))
    mean = membership_from_sums(prior, whole, scale).moments()[0]  # (K - 1, Q)

    def objective(gamma):  # the bound's terms in gamma (point mass), stick by stick, subject by subject
        total = -0.5 * np.sum(gamma**2) / scale**2
        for i in range(N):
            for j in range(K - 1):
                stop, passing = resp[i, j], resp[i, j + 1:].sum()
                x, lam = Z[i] @ gamma[j], np.tanh(xi[i, j] / 2) / (4 * xi[i, j])
                total += 0.5 * (stop - passing) * x - (stop + passing) * lam * x**2
        return total

    h = 1e-6
    grad = np.zeros_like(mean)
    for idx in np.ndindex(*mean.shape):
        e = np.zeros_like(mean)
        e[idx] = h
        grad[idx] = (objective(mean + e) - objective(mean - e)) / (2 * h)
    np.testing.assert_allclose(grad, 0.0, atol=1e-6)


def test_command_line_refits_over_its_own_outputs_and_predicts_with_the_membership_model(tmp_path):
    """`dmlmm fit --membership-covariates` twice into one folder (the second with --overwrite: membership.csv is
    dmlmm's own file, as band_check.csv) and `dmlmm predict` with the saved model, which used to stop with
    "membership covariates are read from a DataFrame" (the demo's model too). Its curves and class probabilities
    are those of trajectories.csv, and of the Python model on the same frame."""
    from click.testing import CliRunner

    from dmlmm.cli import main

    df, *_ = _simulate(n=80, seed=2)
    data = tmp_path / "d.csv"
    df.to_csv(data, index=False)
    fit = ["fit", "--no-report", str(data), "--model", "mixture", "--components", "2", "--n-basis", "6", "--membership-covariates",
           "x,sex", "--max-iter", "150", "--jobs", "1", "--out", str(tmp_path / "o")]
    for extra in ([], ["--overwrite"]):
        r = CliRunner().invoke(main, fit + extra)
        assert r.exit_code == 0, r.output
    assert "who ends up in which class" in r.output  # the summary prints the coefficients, as documented
    assert (tmp_path / "o" / "membership.csv").exists()
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "o" / "model.dmlmm"), str(data), "--out", str(out)])
    assert r.exit_code == 0, r.output
    pred, traj = pd.read_csv(out), pd.read_csv(tmp_path / "o" / "trajectories.csv")
    cols = ["mean", "lower", "upper", "cluster", "probability"]
    np.testing.assert_allclose(pred[cols].to_numpy(float), traj[cols].to_numpy(float), rtol=1e-9)
    model = dmlmm.load(tmp_path / "o" / "model.dmlmm")
    proba = model.predict_proba(df)
    first = pred.groupby("subject").first()
    np.testing.assert_allclose(first["probability"], proba.max(axis=1).loc[first.index], rtol=1e-9)
    # --dropna leaves out a new patient without any membership value, as the fit's --dropna (it stopped instead)
    new = tmp_path / "new.csv"
    new.write_text("subject,time,x,sex\nq1,0,0.5,\nq2,0,0.5,f\n")
    r = CliRunner().invoke(main, ["predict", str(tmp_path / "o" / "model.dmlmm"), str(new), "--times", "1", "--dropna"])
    assert r.exit_code == 0, r.output
    assert "dropped 1 subject(s) (1 row(s)) whose membership covariate(s) ['sex'] are missing at every visit: ['q1']" \
        in r.output
    assert "q2,1.0," in r.output and "q1," not in r.output


def test_one_class_kept_is_said_not_printed_as_an_empty_table():
    """Membership covariates on data with one kind of trajectory: the fit keeps one class, and the summary and
    the command line say there are no membership coefficients, where they printed pandas' 'Empty DataFrame'."""
    import click
    from click.testing import CliRunner

    from dmlmm.cli import _echo_membership
    from dmlmm.models.tables import ONE_CLASS_MEMBERSHIP

    rng = np.random.default_rng(4)
    n = 60
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), 5), "time": np.tile(np.linspace(0, 1, 5), n)})
    df["x"] = np.repeat(rng.normal(size=n), 5)
    df["y"] = np.repeat(rng.normal(size=n), 5) + 0.5 * df["time"] + rng.normal(0, 0.2, len(df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, membership_covariates=["x"], random_state=0, max_iter=100).fit(df)
    assert m.n_components_ == (1,) and len(m.membership_coefficients_) == 0
    assert "membership by covariates: one class was kept, so membership has no coefficients" in m.summary()
    assert "Empty DataFrame" not in m.summary()
    out = CliRunner().invoke(click.command()(lambda: _echo_membership(m)), [])
    assert ONE_CLASS_MEMBERSHIP in out.output and "Empty DataFrame" not in out.output


def test_a_missing_membership_covariate_is_named_with_its_subjects():
    """A subject without its baseline value: the message names the column as well as the subject (it named the
    subject only, and a user with several membership covariates had to search)."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"subject": np.repeat([f"p{i}" for i in range(20)], 4), "time": np.tile(np.arange(4.0), 20)})
    df["age"] = np.repeat(rng.normal(50, 10, 20), 4)
    df["sex"] = np.repeat(rng.choice(["f", "m"], 20), 4)
    df["y"] = rng.normal(size=len(df))
    df.loc[df["subject"] == "p7", "age"] = np.nan
    with pytest.raises(DataError, match=r"membership covariate\(s\) \['age'\] are missing for subject\(s\) \['p7'\]"):
        MixtureLMM(2, membership_covariates=["age", "sex"], random_state=0, max_iter=20).fit(df)


def test_dropna_leaves_out_subjects_without_any_membership_value():
    """dropna=True drops the subjects whose membership covariate is missing at every visit, says so, and fits the
    others as if they had not been given (it raised the missing-value error, dropna or not); a value missing at
    some visits only is still the subject's value at the others."""
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"subject": np.repeat([f"p{i}" for i in range(20)], 4), "time": np.tile(np.arange(4.0), 20)})
    df["age"] = np.repeat(rng.normal(50, 10, 20), 4)
    df["y"] = rng.normal(size=len(df))
    df.loc[df["subject"] == "p7", "age"] = np.nan
    df.loc[(df["subject"] == "p3") & (df["time"] > 0), "age"] = np.nan
    params = dict(membership_covariates=["age"], random_state=0, max_iter=20)
    with pytest.warns(UserWarning, match=r"dropped 1 subject\(s\) \(4 row\(s\)\) whose membership covariate\(s\) "
                                         r"\['age'\] are missing at every visit: \['p7'\]"):
        m = MixtureLMM(2, **params).fit(df, dropna=True)
    assert "p7" not in m.subjects_ and "p3" in m.subjects_ and len(m.subjects_) == 19
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = MixtureLMM(2, **params).fit(df[df["subject"] != "p7"])
    assert m.elbo_ == pytest.approx(ref.elbo_, rel=1e-12)
    everyone = df.assign(age=np.nan)
    with pytest.raises(DataError, match=r"every subject's membership covariate\(s\) \['age'\] are missing"):
        MixtureLMM(2, **params).fit(everyone, dropna=True)


def test_command_line_dropna_leaves_out_subjects_without_membership_values(tmp_path):
    """`dmlmm fit --dropna --membership-covariates`: a subject whose covariate is missing at every visit is
    dropped with one warning, and the outputs leave it out (the fit dropped it and the outputs then stopped with
    'membership covariate(s) ... are missing')."""
    from click.testing import CliRunner

    from dmlmm.cli import main

    df, *_ = _simulate(n=40, seed=2)
    gone = df["subject"].iloc[0]
    df.loc[df["subject"] == gone, "x"] = np.nan
    data = tmp_path / "d.csv"
    df.to_csv(data, index=False)
    r = CliRunner().invoke(main, ["fit", "--no-report", str(data), "--model", "mixture", "--components", "2", "--n-basis", "6",
                                  "--membership-covariates", "x", "--max-iter", "10", "--jobs", "1", "--dropna",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert r.output.count("whose membership covariate(s) ['x'] are missing at every visit") == 1
    traj = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    assert gone not in set(traj["subject"]) and traj["subject"].nunique() == 39


def test_separation_is_found_where_the_likelihood_has_no_finite_maximum():
    """separated_sticks: classes that a covariate (or a category's subjects) split perfectly are separated along
    that covariate; classes drawn from a logistic model with a real effect are not."""
    from dmlmm.priors.membership import separated_sticks

    rng = np.random.default_rng(0)
    n = 300
    x, rare = rng.normal(size=n), np.zeros(n)
    rare[:6] = 1.0
    Z = np.column_stack([np.ones(n), x, rng.normal(size=n), rare])
    Z[:, 1:] = (Z[:, 1:] - Z[:, 1:].mean(axis=0)) / Z[:, 1:].std(axis=0)

    def onehot(g):
        return np.eye(2)[g.astype(int)] * (1 - 2e-9) + 1e-9

    assert separated_sticks(Z, onehot(x > 0.3)) == {0: [1]}  # complete separation by x
    drawn = rng.random(n) < 1 / (1 + np.exp(-(0.3 + 1.5 * x)))
    assert separated_sticks(Z, onehot(drawn)) == {}
    assert separated_sticks(Z, onehot(np.where(rare == 1, 1, drawn))) == {0: [3]}  # all of a category in one class
    three = np.eye(3)[np.where(x > 0.5, 0, np.where(drawn, 1, 2))]  # the first stick separated, the second not
    assert separated_sticks(Z, three) == {0: [1]}
    assert separated_sticks(Z, np.c_[np.ones(n), np.zeros(n)]) == {}  # everyone in one class: no covariate at work


def test_a_fit_whose_classes_the_covariate_separates_says_so():
    """A membership covariate that splits the two trajectory classes exactly: the fit warns, naming the group and
    the covariate, where it reported a narrow interval (8.1 to 13.9 per unit) set by the prior."""
    rng = np.random.default_rng(3)
    n, k = 120, 6
    x = rng.normal(size=n)
    g = x > 0.2
    t = np.sort(rng.uniform(0, 1, (n, k)), axis=1)
    y = np.where(g[:, None], 1.5 * t, -1.5 * t) + rng.normal(0, 0.2, (n, k))
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), k), "time": t.ravel(), "y": y.ravel(), "x": np.repeat(x, k)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = MixtureLMM(2, basis=dmlmm.SplineBasis(5), membership_covariates=["x"], random_state=0, max_iter=100).fit(df)
    said = [str(w.message) for w in caught if issubclass(w.category, IdentifiabilityWarning)]
    low = m.membership_coefficients_.iloc[0]["group"]
    assert said == [f"the membership covariates separate the groups (almost) perfectly (group {low} against "
                    f"{1 - low}: x): without the prior the log-odds would grow without bound, so these coefficients' "
                    "size and interval are the prior's (N(0, 2.5^2) per SD of each covariate), not measured by the "
                    "data; read them as a very strong effect, and their probabilities near 0 or 1"]

"""LinearMixedModel speaks the API of every dmlmm model: predict / predict_proba (one cluster),
predict_trajectory, sample_trajectories, score_samples / score, weights_ / means_ / covariances_."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from dmlmm import LinearMixedModel, SplineBasis
from dmlmm.exceptions import ConvergenceWarning, DataError

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def fitted(sleepstudy):
    return LinearMixedModel(FORMULA, method="reml").fit(sleepstudy)


def _dense(m, days):
    Z = np.c_[np.ones(len(days)), days]
    w, S, s2 = m.fixed_effects_.to_numpy(), m.cov_re_.to_numpy(), m.sigma2_
    return Z, Z @ w, Z @ S @ Z.T, s2


def test_one_cluster(fitted, sleepstudy):
    lab = fitted.predict(sleepstudy)
    assert (lab == 0).all() and len(lab) == 18 and lab.name == "cluster"
    proba = fitted.predict_proba(sleepstudy)
    assert list(proba.columns) == [0] and (proba[0] == 1.0).all()
    assert fitted.weights_.tolist() == [1.0]
    assert fitted.means_.shape == (1, 2) and not fitted.means_.any()
    np.testing.assert_array_equal(fitted.covariances_[0], fitted.cov_re_.to_numpy())


def test_score_samples_is_the_dense_marginal_density(fitted, sleepstudy):
    got = fitted.score_samples(sleepstudy)
    g = sleepstudy[sleepstudy["Subject"] == 308]
    Z, mean, cov, s2 = _dense(fitted, g["Days"].to_numpy())
    assert got.loc[308] == pytest.approx(st.multivariate_normal(mean, cov + s2 * np.eye(len(g))).logpdf(g["Reaction"]),
                                         rel=1e-10)
    assert fitted.score(sleepstudy) == pytest.approx(got.mean())


def test_held_out_score_is_the_conditional_density(fitted, sleepstudy):
    g = sleepstudy[sleepstudy["Subject"] == 309]
    early, late = g[g["Days"] < 6], g[g["Days"] >= 6]
    got = fitted.score_samples(late, condition_on=early).loc[309]
    Z, mean, cov, s2 = _dense(fitted, g["Days"].to_numpy())
    V = cov + s2 * np.eye(len(g))
    o, h = (g["Days"] < 6).to_numpy(), (g["Days"] >= 6).to_numpy()
    y = g["Reaction"].to_numpy()
    cm = mean[h] + V[np.ix_(h, o)] @ np.linalg.solve(V[np.ix_(o, o)], y[o] - mean[o])
    cv = V[np.ix_(h, h)] - V[np.ix_(h, o)] @ np.linalg.solve(V[np.ix_(o, o)], V[np.ix_(o, h)])
    assert got == pytest.approx(st.multivariate_normal(cm, cv).logpdf(y[h]), rel=1e-9)


def _conditional_logpdf(m, g, held_mask):
    Z, mean, cov, s2 = _dense(m, g["Days"].to_numpy())
    V = cov + s2 * np.eye(len(g))
    o, h = ~held_mask, held_mask
    y = g["Reaction"].to_numpy()
    cm = mean[h] + V[np.ix_(h, o)] @ np.linalg.solve(V[np.ix_(o, o)], y[o] - mean[o])
    cv = V[np.ix_(h, h)] - V[np.ix_(h, o)] @ np.linalg.solve(V[np.ix_(o, o)], V[np.ix_(o, h)])
    return st.multivariate_normal(cm, cv).logpdf(y[h])


def test_held_out_scores_of_many_subjects_in_any_row_order(fitted, sleepstudy):
    """Every subject's held-out rows, then all the rows they are conditioned on (so no subject's rows
    lie together): each subject's score is still its dense conditional density. (The segment sums
    behind it once needed each subject's rows together and gave scores off by orders of magnitude.)"""
    held_mask = sleepstudy["Days"].isin([2, 7, 9]).to_numpy()
    held, train = sleepstudy[held_mask], sleepstudy[~held_mask]
    got = fitted.score_samples(held, condition_on=train)
    shuffled = fitted.score_samples(held.sample(frac=1.0, random_state=1),
                                    condition_on=train.sample(frac=1.0, random_state=2))
    for subject in (308, 333, 372):
        g = sleepstudy[sleepstudy["Subject"] == subject]
        want = _conditional_logpdf(fitted, g, g["Days"].isin([2, 7, 9]).to_numpy())
        assert got.loc[subject] == pytest.approx(want, rel=1e-9)
        assert shuffled.loc[subject] == pytest.approx(want, rel=1e-9)


def test_new_subjects_with_interleaved_rows_are_conditioned_on_their_own_visits(fitted, sleepstudy):
    a = sleepstudy[sleepstudy["Subject"] == 309].assign(Subject="a")
    b = sleepstudy[sleepstudy["Subject"] == 310].assign(Subject="b")
    seen = pd.concat([a[a["Days"] < 4], b[b["Days"] < 4]]).sort_values("Days")  # a, b, a, b, ...
    both = fitted.predict_trajectory(pd.concat([seen, pd.DataFrame({"Subject": ["a", "b"], "Days": [8.0, 8.0]})]))
    for label in ("a", "b"):
        alone = fitted.predict_trajectory(pd.concat([seen[seen["Subject"] == label],
                                                     pd.DataFrame({"Subject": [label], "Days": [8.0]})]))
        assert both[both["Subject"] == label]["mean"].iloc[-1] == pytest.approx(alone["mean"].iloc[-1], rel=1e-10)


def test_new_subject_is_conditioned_on_its_visits(fitted, sleepstudy):
    g = sleepstudy[sleepstudy["Subject"] == 309].copy()
    g["Subject"] = "new"
    seen = g[g["Days"] < 4]
    later = pd.DataFrame({"Subject": "new", "Days": [5.0, 9.0]})
    pred = fitted.predict_trajectory(pd.concat([seen, later], ignore_index=True))
    Z, mean, cov, s2 = _dense(fitted, np.r_[seen["Days"], later["Days"]])
    o = np.arange(len(seen))
    V = cov + s2 * np.diag(np.r_[np.ones(len(seen)), np.zeros(2)])
    expect = mean + cov[:, o] @ np.linalg.solve(V[np.ix_(o, o)], seen["Reaction"].to_numpy() - mean[o])
    np.testing.assert_allclose(pred["mean"], expect, rtol=1e-9)
    # a subject never fitted and without responses gets the population curve
    with pytest.warns(UserWarning, match="population level"):
        pop = fitted.predict_trajectory(later.assign(Subject="nobody"))
    np.testing.assert_allclose(pop["mean"], fitted.predict_trajectory(later[["Days"]], level="population")["mean"])


def test_a_fitted_subject_is_conditioned_on_the_rows_given_unless_they_are_its_own(fitted, sleepstudy):
    """A fitted patient's updated record (a visit changed, a later one added) gives the forecast of those rows, as
    for a new patient with the same visits (it used to be the fitted posterior, whatever the rows said); given its
    fitted rows, in any order, or none with a response, the fitted posterior."""
    g = sleepstudy[sleepstudy["Subject"] == 309]
    at = pd.DataFrame({"Subject": 309, "Days": [10.0, 12.0]})
    own = fitted.predict_trajectory(pd.concat([g, at], ignore_index=True))
    none = fitted.predict_trajectory(pd.concat([g.drop(columns="Reaction"), at], ignore_index=True))
    shuffled = fitted.predict_trajectory(pd.concat([g.iloc[::-1], at], ignore_index=True))
    pd.testing.assert_frame_equal(own, none, rtol=1e-12)
    pd.testing.assert_frame_equal(own.iloc[-2:].reset_index(drop=True), shuffled.iloc[-2:].reset_index(drop=True),
                                  rtol=1e-12)
    updated = pd.concat([g.assign(Reaction=g["Reaction"] + 50.0), at], ignore_index=True)
    moved = fitted.predict_trajectory(updated)
    as_new = fitted.predict_trajectory(updated.assign(Subject="new"))
    np.testing.assert_allclose(moved[["mean", "lower", "upper"]], as_new[["mean", "lower", "upper"]], rtol=1e-12)
    shift = (moved["mean"].iloc[-2:] - own["mean"].iloc[-2:]).to_numpy()
    assert (shift > 30.0).all(), shift  # the forecast follows the record (intercept and slope moved)


def test_forecasts_take_the_covariates_of_the_latest_visit_in_any_row_order():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"subject": np.repeat(np.arange(40), 8), "time": np.tile(np.arange(8.0), 40)})
    df["trt"] = np.where((df["time"] > 4) & (df["subject"] % 2 == 1), "B", "A")
    df["y"] = (np.sin(df["time"]) + (df["trt"] == "B") + np.repeat(rng.normal(size=40), 8)
               + 0.2 * rng.normal(size=len(df)))
    m = LinearMixedModel(basis=SplineBasis(6)).fit(df, covariates=["trt"])
    s = df[df["subject"] == 1]
    ahead = m.predict_trajectory(s, times=[8.0])["mean"].item()
    assert m.predict_trajectory(s.iloc[::-1], times=[8.0])["mean"].item() == pytest.approx(ahead, rel=1e-12)
    on_b = m.predict_trajectory(s.drop(columns="y").assign(trt="B"), times=[8.0])["mean"].item()
    assert ahead == pytest.approx(on_b, rel=1e-12)  # B, its treatment from day 5 on (frame order gave A)


def test_samples_match_the_bands(fitted, sleepstudy):
    rows = sleepstudy[sleepstudy["Subject"] == 310].head(4)
    band = fitted.predict_trajectory(rows, interval=0.9)
    draws = fitted.sample_trajectories(rows, n_samples=4000, random_state=1)
    assert list(draws.columns) == ["Subject", "sample", "value"] and len(draws) == 16000
    v = draws["value"].to_numpy().reshape(4000, 4)
    sd = (band["upper"] - band["lower"]).to_numpy() / (2 * st.norm.ppf(0.95))
    np.testing.assert_allclose(v.mean(0), band["mean"], atol=4 * sd.max() / np.sqrt(4000))
    np.testing.assert_allclose(v.std(0), sd, rtol=0.06)
    again = fitted.sample_trajectories(rows, n_samples=5, random_state=1)
    np.testing.assert_array_equal(again["value"], fitted.sample_trajectories(rows, n_samples=5, random_state=1)["value"])
    with pytest.raises(ValueError, match="n_samples must be a positive integer, got -1"):
        fitted.sample_trajectories(rows, n_samples=-1)


def test_longitudinal_forecast_marks_what_lies_beyond_the_visits(spline_data):
    m = LinearMixedModel(basis=SplineBasis(5)).fit(spline_data, subject="id", time="t", response="y")
    last = spline_data.groupby("id")["t"].max()
    grid = np.linspace(0, 1, 11)
    pred = m.predict_trajectory(spline_data[spline_data["id"].isin(["s001", "s002"])], times=grid)
    assert len(pred) == 22 and set(pred["id"]) == {"s001", "s002"}
    for sid, rows in pred.groupby("id"):
        np.testing.assert_array_equal(rows["beyond_last_visit"], rows["t"] > last[sid])
    # a new patient with two early visits: forecast from them, its band wider than at the visits
    new = pd.DataFrame({"id": "p", "t": [0.05, 0.15], "y": spline_data["y"].iloc[:2].to_numpy(),
                        "age": 40.0, "grp": "a"})
    f = m.predict_trajectory(new, times=[0.1, 0.9])
    width = (f["upper"] - f["lower"]).to_numpy()
    assert f["beyond_last_visit"].tolist() == [False, True] and width[1] > width[0]
    draws = m.sample_trajectories(new, times=[0.1, 0.9], n_samples=3, random_state=0)
    assert list(draws.columns) == ["id", "sample", "t", "value"] and len(draws) == 6


def test_samples_come_subject_by_subject_as_the_mixtures_do(spline_data):
    """sample_trajectories' rows in the mixtures' order (before, draw by draw): subject by subject as their labels
    sort, then draw, then time; each value still with its own row (the means per subject and time are the
    bands' means, and the two subjects' curves differ). Its columns in the mixtures' layout (subject, sample,
    time, value; before, sample came after the time), at the population level too."""
    from dmlmm import MixtureLMM

    kw = dict(subject="id", time="t", response="y")
    two = spline_data[spline_data["id"].isin(["s007", "s002"])].sort_values("id", ascending=False)  # s007 first here
    grid = [0.2, 0.5, 0.8]
    lmm = LinearMixedModel(basis=SplineBasis(5)).fit(spline_data, **kw)
    mix = MixtureLMM(1, basis=SplineBasis(5), random_state=0, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mix.fit(spline_data, **kw)
    a = lmm.sample_trajectories(two, times=grid, n_samples=2000, random_state=0)
    b = mix.sample_trajectories(two, times=grid, n_samples=2000, random_state=0)
    assert list(a.columns) == ["id", "sample", "t", "value"] and list(b.columns) == ["subject", "sample", "time", "value"]
    np.testing.assert_array_equal(a["id"], b["subject"])
    np.testing.assert_array_equal(a["sample"], b["sample"])
    np.testing.assert_array_equal(a["t"], b["time"])
    assert a["id"].iloc[0] == "s002" and a["sample"].iloc[:7].tolist() == [0, 0, 0, 1, 1, 1, 2]
    band = lmm.predict_trajectory(two, times=grid)
    for sid in ("s007", "s002"):
        v = a.loc[a["id"] == sid, "value"].to_numpy().reshape(2000, 3)
        want = band.loc[band["id"] == sid, "mean"].to_numpy()
        sd = (band.loc[band["id"] == sid, "upper"] - band.loc[band["id"] == sid, "lower"]).to_numpy() / (2 * 1.96)
        np.testing.assert_allclose(v.mean(0), want, atol=4 * sd.max() / np.sqrt(2000))
    means = band.groupby("id")["mean"].apply(np.asarray)
    assert np.abs(means["s007"] - means["s002"]).max() > 10 * sd.max() / np.sqrt(2000)  # a swap would show
    pa = lmm.sample_trajectories(two, times=grid, n_samples=3, random_state=0, level="population")
    pb = mix.sample_trajectories(two, times=grid, n_samples=3, random_state=0, level="population")
    assert list(pa.columns) == ["id", "sample", "t", "value"]
    np.testing.assert_array_equal(pa[["id", "sample", "t"]].to_numpy(), pb[["subject", "sample", "time"]].to_numpy())
    # the population curve: each draw the same for both subjects
    np.testing.assert_array_equal(pa.loc[pa["id"] == "s002", "value"], pa.loc[pa["id"] == "s007", "value"])
    assert list(lmm.sample_trajectories(None, times=grid, n_samples=2).columns) == ["sample", "t", "value"]


def test_bad_method_names_the_parameter(sleepstudy):
    with pytest.raises(ValueError, match="method must be one of 'vb', 'ml' or 'reml', got 'bayes'"):
        LinearMixedModel(FORMULA, method="bayes").fit(sleepstudy)
    with pytest.raises(ValueError, match="n_init must be a positive integer, got 0"):
        LinearMixedModel(FORMULA, n_init=0).fit(sleepstudy)


def test_default_basis_is_one_the_visit_times_identify():
    """Without a smoothness prior every spline column must be estimable, and the residual variance too:
    visits at k <= 10 distinct times get the largest basis they identify with one time to spare (k - 1
    functions, degree at most k - 2) instead of a rank-deficient design, or k functions whose unstructured
    covariance reaches white noise at the k times (ML then set sigma^2 to 1e-12 on such data); a basis given
    too large is refused with the count of distinct times and a size that works."""
    from dmlmm import DataError, LinearMixedModel, SplineBasis

    rng = np.random.default_rng(0)
    for k, n_basis, degree in ((2, 1, 0), (3, 2, 1), (5, 4, 3), (11, 10, 3), (12, 10, 3)):
        df = pd.DataFrame({"subject": np.repeat(np.arange(30), k), "time": np.tile(np.arange(float(k)) ** 1.5, 30)})
        df["y"] = rng.normal(size=len(df)) + df["time"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = LinearMixedModel(method="ml").fit(df)
        assert (m.builder_.basis_.n_basis, m.builder_.basis_.degree) == (n_basis, degree)
        flat = [w for w in caught if "the curves are flat, the model ignores time" in str(w.message)]
        assert len(flat) == (k == 2), [str(w.message) for w in caught]  # one function: said, with what to use
        if k <= 5:  # the noise, SD 1, is identified and estimated (0.78-1.25; with k functions ML gave 0.0)
            assert m.sigma2_ > 0.5, (k, m.sigma2_)
    with pytest.raises(DataError, match=r"rank deficient .* the basis of time has more functions than the data's 12 "
                                        r"distinct times identify: give a smaller one, e\.g\. basis=SplineBasis\("):
        LinearMixedModel(method="ml", basis=SplineBasis(16, knots="uniform")).fit(df.assign(time=df["time"].round(1)))


def test_default_basis_leaves_more_observations_than_random_effects():
    """Subjects seen at four or five ages each, the ages all different (so the distinct times identify ten
    functions): the default basis has fewer functions than the subjects' mean visits (N q < n, lme4's condition:
    ten functions here raised its IdentifiabilityWarning), and ML recovers the noise of a random
    intercept-and-slope truth. (On carData's Blackmore, whose curves are not straight lines, ten functions had
    ML take the noise into the random effects: sigma^2 7e-7 after minutes, unconverged; docs/models.md.)"""
    from dmlmm.exceptions import IdentifiabilityWarning

    rng = np.random.default_rng(1)
    n_subj, sigma2 = 120, 0.25
    visits = rng.integers(4, 6, size=n_subj)              # 4 or 5 visits: 4.5 on average
    subj = np.repeat(np.arange(n_subj), visits)
    t = rng.uniform(8, 18, size=subj.size)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.1], [0.1, 0.05]], size=n_subj)
    y = 2 + b[subj, 0] + (0.3 + b[subj, 1]) * (t - 13) + rng.normal(scale=np.sqrt(sigma2), size=subj.size)
    df = pd.DataFrame({"subject": subj, "time": t, "y": y})
    n_obs = len(df)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        m = LinearMixedModel(method="ml").fit(df)
    q = m.builder_.basis_.n_basis
    assert q == int(np.ceil(n_obs / n_subj)) - 1 == 4 and n_subj * q < n_obs
    assert 0.8 * sigma2 < m.sigma2_ < 1.25 * sigma2 and m.converged_, m.sigma2_


def test_default_basis_puts_knots_at_the_visits_where_uniform_ones_leave_functions_unseen():
    """Visits crowded early in a long range (as nlme's Remifentanil: most concentrations in the first hour of
    230 minutes): on uniform knots the last functions' supports hold visits of a handful of subjects, fewer
    than there are functions, and their rows of the unstructured covariance rest on those few (Remifentanil's
    ML stopped unconverged after 17 s, 175 log-likelihood units below the fit on knots at the visits). The
    default then takes the visits' (quantile) layout at the same size; with visits spread over the range it
    keeps uniform knots, and a layout asked for is kept. The counts are checked against a loop over subjects."""
    from dmlmm.lmm.design import default_basis

    def seen_by(basis, df):  # per function, the subjects with a visit where it is non-zero (written out)
        counts = np.zeros(basis.n_basis, dtype=int)
        for _, g in df.groupby("subject"):
            counts += (np.abs(basis.transform(g["time"].to_numpy())) > 1e-10).any(axis=0)
        return counts

    rng = np.random.default_rng(0)
    times = [np.sort(rng.exponential(10.0, 12)) + 0.5 for _ in range(40)]
    times[:3] = [np.r_[t, rng.uniform(60.0, 100.0, 2)] for t in times[:3]]  # three subjects also seen late
    early = pd.DataFrame({"subject": np.repeat(np.arange(40), [len(t) for t in times]), "time": np.concatenate(times)})
    spread = early.assign(time=rng.uniform(0.0, 100.0, len(early)))
    chosen = default_basis(early["time"].to_numpy(), subjects=early["subject"].to_numpy())
    uniform = SplineBasis(10, knots="uniform").fit(early["time"].to_numpy())
    assert chosen.n_basis == 10 and chosen.knots == "quantile"
    assert seen_by(uniform, early).min() < 10  # on uniform knots a function is seen by fewer subjects than functions
    assert seen_by(chosen, early).min() > seen_by(uniform, early).min()
    kept = default_basis(spread["time"].to_numpy(), subjects=spread["subject"].to_numpy())
    assert kept.knots == "uniform" and seen_by(kept, spread).min() >= kept.n_basis
    asked = default_basis(early["time"].to_numpy(), subjects=early["subject"].to_numpy(), knots="uniform")
    assert asked.knots == "uniform"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LinearMixedModel(method="ml").fit(early.assign(y=rng.normal(size=len(early)) + 50 * np.exp(-0.08 * early["time"])))
    assert m.builder_.basis_.knots == "quantile"


def test_scores_are_invariant_to_an_affine_map_of_the_response():
    """log p(a + c y) = log p(y) - n_i log|c| per subject: the scores of the fit to 1e6 + 1e-3 y, plus the
    Jacobian, are those of the fit to y. They came from the subjects' raw sums of squares, and 1e6 + 1e-3 y lost
    every digit (scores of +9,000 and -9,000 for -4 and -8)."""
    from dmlmm.simulate import dgp1

    df = dgp1(random_state=0, n_subjects=60).data
    basis = SplineBasis(6, knots="uniform")
    a = LinearMixedModel(basis=basis).fit(df)
    moved = df.assign(y=1e6 + 1e-3 * df["y"])
    b = LinearMixedModel(basis=basis).fit(moved)
    n_i = df.groupby("subject").size()
    np.testing.assert_allclose(b.score_samples(moved) + n_i * np.log(1e-3), a.score_samples(df), atol=1e-3)
    held = df.groupby("subject").tail(2)
    rest = df.drop(held.index)
    np.testing.assert_allclose(
        b.score_samples(moved.loc[held.index], condition_on=moved.loc[rest.index]) + 2 * np.log(1e-3),
        a.score_samples(held, condition_on=rest), atol=1e-3)


def test_subject_outputs_are_labelled_as_the_mixtures_are():
    """Integer subject ids come back as integers (they came back as objects, so merging score_samples with the
    user's frame failed), named by the subject column, in one sorted order for predict and score_samples."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"id": np.repeat([7, 3, 11, 5], 5), "t": np.tile(np.linspace(0, 1, 5), 4)})
    df["y"] = rng.normal(size=len(df)) + df["t"]
    m = LinearMixedModel(basis=SplineBasis(2, degree=1), method="ml").fit(df, subject="id", time="t", response="y")
    shuffled = df.sample(frac=1.0, random_state=1)
    ss, lab = m.score_samples(shuffled), m.predict(shuffled)
    for out in (ss, lab, m.predict_proba(shuffled)):
        assert out.index.tolist() == [3, 5, 7, 11] and out.index.dtype == np.int64 and out.index.name == "id"
    merged = df.merge(ss.rename("ll").reset_index(), on="id")
    assert len(merged) == len(df) and merged["ll"].notna().all()
    traj = m.predict_trajectory(df, times=np.array([0.5]))
    assert traj["id"].dtype == np.int64 and sorted(traj["id"]) == [3, 5, 7, 11]


def test_messages_for_covariates_missing_or_given_as_another_type():
    """times= with subject= for a model with covariates says how to give them (it said only that the column was
    not found); a formula's categorical level given as text against integer levels says to convert."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"id": np.repeat(["a", "b", "c", "d"], 4), "t": np.tile(np.arange(4.0), 4),
                       "g": np.repeat([1, 2, 1, 2], 4)})
    df["y"] = rng.normal(size=len(df)) + df["t"] + df["g"]
    m = LinearMixedModel(basis=SplineBasis(2, degree=1), method="ml").fit(df, subject="id", time="t", response="y",
                                                                           covariates=["g"])
    with pytest.raises(DataError, match=r"this model has covariates \['g'\]: the curve of subject 'a' needs their "
                                        r"values; pass its rows \(or one row with its covariates\) as data"):
        m.predict_trajectory(times=[1.0, 2.0], subject="a")
    f = LinearMixedModel("y ~ t + C(g) + (1 | id)", method="ml").fit(df)
    with pytest.raises(DataError, match=r"column 'g' has level\(s\) \['2'\] not seen when the model was fitted \(known "
                                        r"levels: \[1, 2\]\); they match fitted levels written as another type"):
        f.predict_trajectory(pd.DataFrame({"id": ["a"], "t": [1.0], "g": ["2"]}))


def test_replicate_rows_do_not_enlarge_the_default_basis():
    """The default basis counts visits (distinct times of a subject), not rows: 500 replicate rows of one subject
    at one time kept 10 functions for 15 subjects of 2 visits, and the REML curves of the others reached -1304
    within data in [-2.6, 5.9]."""
    rng = np.random.default_rng(0)
    few = pd.DataFrame({"id": np.repeat(np.arange(1, 15), 2), "t": rng.uniform(0, 4, 28)})
    few["y"] = rng.normal(size=len(few))
    reps = pd.DataFrame({"id": 0, "t": 2.0, "y": rng.normal(size=500)})
    sizes = []
    for df in (pd.concat([few, reps.iloc[:1]]), pd.concat([few, reps])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LinearMixedModel(method="reml").fit(df, subject="id", time="t", response="y")
        sizes.append(m.basis_.n_basis if hasattr(m, "basis_") else m.builder_.basis_.n_basis)
    assert sizes[0] == sizes[1]

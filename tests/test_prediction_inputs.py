"""Bad frames and times given to a fitted model's methods get the library's clear errors, naming the column,
the user's own row labels and a fix that exists for those methods (they have no ``dropna``)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dmlmm import DataError, LinearMixedModel, Longitudinal, MixtureLMM, SplineBasis
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return dgp1(random_state=0, n_subjects=40).data


@pytest.fixture(scope="module", params=["mixture", "lmm"])
def fitted(request, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if request.param == "mixture":
            return MixtureLMM(2, SplineBasis(6), max_iter=50, random_state=0).fit(data)
        return LinearMixedModel(basis=SplineBasis(6)).fit(data)


def test_times_that_are_not_numbers(fitted, data):
    one = data[data.subject == 3]
    with pytest.raises(DataError, match=r"times must be numeric, but row 0 holds 'a'"):
        fitted.predict_trajectory(one, times=["a"])
    with pytest.raises(DataError, match=r"times holds dates"):
        fitted.predict_trajectory(one, times=pd.to_datetime(["2020-01-01"]))


def test_missing_values_name_the_users_rows_and_a_fix_these_methods_have(fitted, data):
    one = data[data.subject == 3].copy()
    label = one.index[1]
    one.loc[label, "time"] = np.nan
    for call in (lambda: fitted.predict_trajectory(one), lambda: fitted.predict_trajectory(one, times=[0.2, 0.4]),
                 lambda: fitted.score_samples(one)):
        with pytest.raises(DataError, match=rf"column 'time': 1 \(rows \[{label}\]\)\. Drop or impute those rows "
                                            r"first \(dmlmm predict: --dropna drops them\)") as err:
            call()
        assert "dropna=True" not in str(err.value)
    with pytest.raises(DataError, match="the data frame is empty .* nothing to predict or score"):
        fitted.predict_trajectory(data.iloc[:0])


def test_a_frame_without_its_time_column_or_with_an_infinite_response(fitted, data):
    one = data[data.subject == 3]
    with pytest.raises(DataError, match=r"column\(s\) \['time'\] not found in the data"):
        fitted.predict_trajectory(one.drop(columns="time"), times=[0.2])
    bad = one.copy()
    bad.loc[bad.index[1], "y"] = np.inf
    with pytest.raises(DataError, match=rf"infinite values: column 'y': 1 \(rows \[{bad.index[1]}\]\)"):  # conditioned on
        fitted.predict_trajectory(bad.assign(subject=999), times=[0.2])


def test_responses_far_outside_the_fitted_data(data):
    """A new subject's value 1e200 (units, or a typing error) overflowed in the bands (an IndexError from
    deep inside); now a DataError. A value 1e6 standard deviations out is conditioned on, with a warning."""
    from dmlmm.exceptions import ExtrapolationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(6), max_iter=50, random_state=0).fit(data)
    new = pd.DataFrame({"subject": ["A"], "time": [0.1], "y": [1e200]})
    with pytest.raises(DataError, match=r"the response 'y' has 1 value\(s\) over 100 standard deviations .* too far"):
        m.predict_trajectory(new, times=[0.5])
    with pytest.warns(ExtrapolationWarning, match=r"over 100 standard deviations .* check their units"):
        m.predict_trajectory(new.assign(y=1e6), times=[0.5])


def test_class_probabilities_without_a_response_column_say_so(data):
    """A frame whose response column is missing (misspelled, renamed) got the prior's probabilities for
    every subject without a word; rows with an empty response are still the documented way to ask for them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(6), max_iter=50, random_state=0).fit(data)
    with pytest.warns(UserWarning, match=r"the data have no response column 'y': every subject gets the prior's"):
        p = m.predict_proba(data.rename(columns={"y": "Y"}))
    np.testing.assert_allclose(p.to_numpy(), np.broadcast_to(p.to_numpy()[0], p.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.predict_proba(data.assign(y=np.nan))


def test_held_out_scores_say_each_warning_once_with_the_users_row_labels():
    """score_samples(held, condition_on=train): a row repeated in train is named once, by train's own labels, and
    held-out times past the basis range are said once (both came twice, the second time with positions in an
    internal concatenation that exist in neither frame)."""
    from dmlmm.exceptions import ExtrapolationWarning

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"subject": np.repeat(np.arange(30), 6), "time": np.tile(np.linspace(0, 1, 6), 30)})
    df["y"] = np.repeat(rng.normal(size=30), 6) + df["time"] + rng.normal(0, 0.2, len(df))
    df.index = df.index + 1000  # labels that are not positions
    last = df["time"] == 1.0
    train, held = df[~last], df[last].assign(time=1.2)
    train = pd.concat([train, train.loc[[1001]]])  # a row entered twice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MixtureLMM(1, random_state=0, max_iter=50).fit(train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.score_samples(held, condition_on=train)
    dup = [str(w.message) for w in caught if "repeat an earlier row" in str(w.message)]
    ext = [w for w in caught if issubclass(w.category, ExtrapolationWarning)]
    assert len(dup) == 1 and "1001" in dup[0], dup
    assert len(ext) == 1, [str(w.message) for w in ext]


def test_predictions_warn_of_rows_entered_twice():
    """Predictions condition on the observed rows as fit does: a row repeated exactly counts twice, so it is
    said (rows to predict at, with the response missing, are not rows entered twice)."""
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"subject": np.repeat(np.arange(20), 5), "time": np.tile(np.linspace(0, 1, 5), 20)})
    df["y"] = np.repeat(rng.normal(size=20), 5) + rng.normal(0, 0.2, len(df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MixtureLMM(1, random_state=0, max_iter=50).fit(df)
    at = pd.DataFrame({"subject": [0, 0], "time": [0.5, 0.5], "y": [np.nan, np.nan]})
    twice = pd.concat([df, df.iloc[[7]], at], ignore_index=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.predict_trajectory(twice)
    dup = [str(w.message) for w in caught if "repeat an earlier row" in str(w.message)]
    assert dup == [dup[0]] and dup[0].startswith("1 row(s) repeat an earlier row's subject, time and response exactly "
                                                 "(rows [100])"), dup


def test_a_longitudinal_the_mixtures_cannot_read_as_it_is_meant():
    """Design matrices of a Longitudinal (from_arrays(y, x)) are refused by the mixtures, which build the spline
    design from times (two different x gave the same ELBO); at predict, a Longitudinal with other covariate columns
    than the model's is refused (age was read as the sex dummy); covariates= beside a Longitudinal is refused."""

    rng = np.random.default_rng(0)
    ys = [rng.normal(size=6) for _ in range(30)]
    xs = [np.c_[np.ones(6), np.arange(6.0)] for _ in range(30)]
    with pytest.raises(DataError, match=r"^this Longitudinal carries its own design matrices \(Longitudinal.from_"
                                        r"arrays\(y, x\)\), which MixtureLMM and DeepMixtureLMM do not use"):
        MixtureLMM(2, SplineBasis(6), random_state=0).fit(Longitudinal.from_arrays(ys, xs))
    df = dgp1(0, n_subjects=30).data
    df = df.assign(sex=np.where(df["subject"] % 2, "m", "f"), age=40.0 + df["subject"] % 7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=50).fit(df, covariates=["sex"])
    same = m.predict_trajectory(Longitudinal.from_frame(df, covariates=["sex"]), times=[0.5])
    np.testing.assert_allclose(same["mean"], m.predict_trajectory(df, times=[0.5])["mean"], rtol=1e-12)
    with pytest.raises(DataError, match=r"^this Longitudinal's covariate columns \['age'\] are not the model's "
                                        r"\['sex\[T.m\]'\]: build it with the fitted covariates"):
        m.predict_trajectory(Longitudinal.from_frame(df, covariates=["age"]), times=[0.5])
    with pytest.raises(DataError, match=r"^this Longitudinal's covariate columns \[\] are not the model's"):
        m.predict_trajectory(Longitudinal.from_frame(df), times=[0.5])
    with pytest.raises(ValueError, match=r"^covariates= is for data frames: a Longitudinal carries its covariates"):
        MixtureLMM(2, SplineBasis(6)).fit(Longitudinal.from_frame(df, covariates=["sex"]), covariates=["sex"])


@pytest.mark.parametrize("model", [MixtureLMM(2, max_iter=5), LinearMixedModel()], ids=["mixture", "lmm"])
def test_column_names_given_with_a_longitudinal_are_its_own_or_an_error(model):
    """A Longitudinal carries its column names and covariates: other names or covariates= beside it are an error
    (they were ignored without a word, and the LinearMixedModel fitted without the covariates asked for); its own
    names, or the defaults, are fine."""
    df = dgp1(0, n_subjects=30).data.rename(columns={"subject": "id", "time": "t", "y": "v"})
    long = Longitudinal.from_frame(df, "id", "t", "v")
    with pytest.raises(ValueError, match=r"^subject='patient', response='value' given with a Longitudinal, whose "
                                         r"columns are subject='id', time='t', response='v': a Longitudinal carries "
                                         r"its own column names; leave these arguments out, or build it with "
                                         r"Longitudinal.from_frame\(..., subject='patient', response='value'\)$"):
        model.fit(long, subject="patient", response="value")
    with pytest.raises(ValueError, match=r"^covariates= is for data frames"):
        model.fit(long, covariates=["t"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model.fit(long, subject="id", time="t", response="v") is model


@pytest.mark.parametrize("kind", ["mixture", "lmm"])
def test_held_out_scores_say_when_the_two_frames_overlap_or_a_subject_has_nothing_to_condition_on(kind):
    from dmlmm.simulate import split_heldout

    df = dgp1(0, n_subjects=40).data
    train, held = split_heldout(df, 0.2, random_state=0)
    model = (MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=50) if kind == "mixture"
             else LinearMixedModel(basis=SplineBasis(6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(train)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        honest = model.score(held, condition_on=train)
    with pytest.warns(UserWarning, match=rf"^{len(held)} row\(s\) of the data to score are also in condition_on "
                                         r"\(rows \[.*\]( \.\.\.)?\): each is scored given itself"):
        assert model.score(held, condition_on=df) > honest
    few = train[train["subject"] < 5]
    alone = held.loc[held["subject"] >= 5, "subject"].nunique()
    with pytest.warns(UserWarning, match=rf"^{alone} of the {held['subject'].nunique()} subject\(s\) to score have no "
                                         r"rows in condition_on \(\[5, 6, "):
        model.score(held, condition_on=few)


def test_bands_membership_and_membership_covariates_say_what_is_wrong():
    """'0.9' as interval, a frame without the subject column for membership_probabilities, the subject column as a
    membership covariate: ValueErrors naming what to give (a TypeError, a KeyError, a pandas error before)."""
    df = dgp1(0, n_subjects=30).data
    df["age"] = 40.0 + df["subject"] % 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=30, membership_covariates=["age"]).fit(df)
        lmm = LinearMixedModel(basis=SplineBasis(6)).fit(df)
    for model in (m, lmm):
        with pytest.raises(ValueError, match=r"^interval must be a number in \(0, 1\), e.g. 0.95, got '0.9'$"):
            model.predict_trajectory(df, times=[0.5], interval="0.9")
    with pytest.raises(ValueError, match=r"^interval must be a number in \(0, 1\), e.g. 0.95, got True$"):
        m.fixed_effects_table(interval=True)
    with pytest.raises(DataError, match=r"^membership_probabilities needs a data frame with the subject column "
                                        r"'subject' and the membership covariates \['age'\]; got \['time', 'y', 'age'\]"):
        m.membership_probabilities(df.drop(columns="subject"))
    with pytest.raises(ValueError, match=r"^membership_covariates cannot include 'subject' \(the subject column\)"):
        MixtureLMM(2, SplineBasis(6), max_iter=30, membership_covariates=["age", "subject"]).fit(df)


@pytest.mark.filterwarnings("ignore:.*are also in condition_on")
def test_messages_that_told_users_something_untrue():
    """Each message below used to say something that was not so: 'Pass dropna=True' to methods without it, 'changes
    within subject' for a value missing at one visit, 'durations with units' for decimal commas, a nameless 'must be
    finite', '400 rows have missing subject' for a condition_on frame without the subject column."""
    df = dgp1(0, n_subjects=30).data
    df["age"] = 40.0 + df["subject"] % 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        formula = LinearMixedModel("y ~ time + (1 | subject)").fit(df)
        lmm = LinearMixedModel(basis=SplineBasis(6)).fit(df)
        holed = df.copy()
        holed.loc[5, "age"] = np.nan  # subject 0's age, missing at one visit: its age at the others
        with_hole = MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=20, membership_covariates=["age"]).fit(holed)
        whole = MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=20, membership_covariates=["age"]).fit(df)
    assert with_hole.elbo_ == whole.elbo_
    gap = df.assign(time=np.where(df.index == 3, np.nan, df["time"]))
    with pytest.raises(DataError, match=r"\(rows \[3\]\)\. Drop or impute those rows first$"):
        formula.predict_trajectory(gap)
    comma = df.assign(y=df["y"].map(lambda v: f"{v:.2f}".replace(".", ",")))
    with pytest.raises(DataError, match=r"they are numbers written with a decimal comma: read the file with decimal=','"):
        MixtureLMM(2, SplineBasis(6), max_iter=20).fit(comma)
    missing = df.assign(y=np.where(df.index == 7, np.nan, df["y"]))
    for call in (lambda: lmm.score(missing), lambda: lmm.score(df, condition_on=missing)):
        with pytest.raises(DataError, match=r"^column 'y' has 1 missing or infinite value\(s\) \(rows \[7\]\)"):
            call()
    with pytest.raises(DataError, match=r"^scoring needs the subject column 'subject'; the columns are \['id'"):
        lmm.score(df, condition_on=df.rename(columns={"subject": "id"}))


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_warnings_for_what_users_can_live_with_but_should_know():
    """Subject labels 3 and '3' (two subjects), a 0/1 response (Gaussian curves of a binary outcome), and curves
    asked of a frame without the response column (the population's, as predict already said)."""
    from dmlmm.exceptions import EmptyComponentWarning

    df = dgp1(0, n_subjects=30).data
    mixed = df.assign(subject=df["subject"].astype(object))
    mixed.loc[mixed.index[mixed["subject"] == 3][:3], "subject"] = "3"
    small = dict(random_state=0, max_iter=20)
    with pytest.warns(UserWarning, match=r"^column 'subject' holds labels that differ only in type \(3, '3'\): they "
                                         r"are 2 different subjects here"):
        MixtureLMM(2, SplineBasis(6), **small).fit(mixed)
    binary = df.assign(y=(df["y"] > 0).astype(int))
    for model in (MixtureLMM(2, SplineBasis(6), **small), LinearMixedModel(basis=SplineBasis(6))):
        with pytest.warns(UserWarning, match=r"^the response 'y' takes two values only \(0 and 1\): dmlmm's models are "
                                             r"for continuous measurements"):
            model.fit(binary)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, SplineBasis(6), **small).fit(df)
    with pytest.warns(UserWarning, match=r"^the data have no response column 'y': every subject gets the population's"):
        m.predict_trajectory(df.drop(columns="y"), times=[0.5])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.predict_trajectory(df.drop(columns="y"), times=[0.5], level="population")
        m.predict_trajectory(df, times=[0.5])
        warnings.simplefilter("ignore", EmptyComponentWarning)
        MixtureLMM(2, SplineBasis(6), **dict(small, max_iter=300)).fit(df.assign(subject=df["subject"].astype(str)))


def test_the_linear_mixed_model_says_rows_entered_twice_too():
    df = dgp1(0, n_subjects=30).data
    twice = pd.concat([df, df.iloc[[4]]])
    with pytest.warns(UserWarning, match=r"^1 row\(s\) repeat an earlier row's values of \['time', 'y', 'subject'\] "
                                         r"exactly \(rows \[4\]\)"):
        LinearMixedModel("y ~ time + (1 | subject)").fit(twice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = LinearMixedModel(basis=SplineBasis(6)).fit(df)
    with pytest.warns(UserWarning, match=r"^1 row\(s\) repeat an earlier row's subject, time and response exactly"):
        lmm.score(twice)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lmm.score(df.iloc[:200], condition_on=df.iloc[200:])
    assert not [str(w.message) for w in caught if "repeat an earlier row" in str(w.message)]


def test_a_categorical_subject_column_leaks_no_pandas_future_warning():
    """pandas warns of its changing groupby default (observed=False) for categorical keys; none reaches the user."""
    from dmlmm import check_bands
    from dmlmm import outcomes as oc
    from dmlmm.report import collect_results

    df = dgp1(0, n_subjects=30).data
    df["subject"] = pd.Categorical("s" + df["subject"].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning)
        m = MixtureLMM(2, SplineBasis(6), max_iter=30, random_state=0).fit(df)
        m.predict_trajectory(df, times=[0.5])
        m.score(df)
        lmm = LinearMixedModel(basis=SplineBasis(6)).fit(df)
        lmm.predict_trajectory(df, times=[0.5])
        oc.baseline_table(m, df.assign(age=40.0 + np.arange(len(df)) % 5), ["age"])
        check_bands(LinearMixedModel(basis=SplineBasis(6)), df, warn=False)
        collect_results(m, df)


def test_one_observation_per_subject_is_said():
    from dmlmm.exceptions import IdentifiabilityWarning

    once = dgp1(0, n_subjects=60).data.groupby("subject").head(1)
    with pytest.warns(IdentifiabilityWarning, match=r"^every subject has one observation \(60 subjects\): a subject's "
                                                    r"own deviation"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, message=r"^(?!every subject)")
            MixtureLMM(2, SplineBasis(6), random_state=0, max_iter=30).fit(once)


def test_lmm_population_curve_with_covariates_asks_for_their_values():
    """LinearMixedModel with covariates: predict_trajectory(times=...) alone said the covariate columns were
    'not found in the data' (no data were given); it now says the population curve needs their values and how
    to give them, and predicts with them."""
    df = dgp1(0, n_subjects=30).data
    df["age"] = 40.0 + df["subject"] % 7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LinearMixedModel(basis=SplineBasis(6)).fit(df, covariates=["age"])
    with pytest.raises(DataError, match=r"^this model has covariates \['age'\]: the population curve is at given "
                                        r"covariate values; pass them with the times, e\.g\. predict_trajectory\("
                                        r"pd\.DataFrame\(\{'time': times, 'age': \.\.\.\}\)\)$"):
        m.predict_trajectory(times=[0.2, 0.5])
    at = m.predict_trajectory(pd.DataFrame({"time": [0.2, 0.5], "age": [45.0, 45.0]}))
    beta = m.fixed_effects_
    shift = m.predict_trajectory(pd.DataFrame({"time": [0.2, 0.5], "age": [46.0, 46.0]}))["mean"] - at["mean"]
    np.testing.assert_allclose(shift, beta["age"], rtol=1e-9)


def test_subject_labels_true_and_1_are_refused_not_merged():
    """True == 1 in Python and pandas: a subject column holding both would silently merge two subjects. The LMM
    and the mixtures (one data layer) name the column and the labels; True/False alone are two subjects."""
    df = dgp1(0, n_subjects=6).data
    mixed = df.assign(subject=df["subject"].astype(object))
    mixed.loc[mixed["subject"] == 2, "subject"] = True
    msg = (r"^column 'subject' holds True beside the number\(s\) 1: Python and pandas take True == 1 and False == 0 "
           r"as the same label, so these subjects would be merged; give the column one type \(e.g. "
           r"df\['subject'\].astype\(str\)\)$")
    for model in (MixtureLMM(2, SplineBasis(6)), LinearMixedModel(basis=SplineBasis(6))):
        with pytest.raises(DataError, match=msg):
            model.fit(mixed)
    flags = df[df["subject"].isin([0, 1])].assign(subject=lambda d: d["subject"] == 1)
    assert Longitudinal.from_frame(flags, "subject", "time", "y").n_subjects == 2

"""The data layer: per-subject sufficient statistics, ordering, labels and validation messages."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import dmlmm.sufficient as data_mod
from dmlmm.covariates import CovariateEncoding
from dmlmm.data import Longitudinal
from dmlmm.sufficient import SufficientStats, segment_sums, sufficient_stats
from dmlmm.exceptions import DataError


def naive_stats(y, X, F, codes, N):
    """Per-subject statistics with an explicit loop (fine in a test)."""
    out = {k: [] for k in ("n_obs", "yty", "Xty", "XtX", "Fty", "FtF", "XtF")}
    for i in range(N):
        m = codes == i
        yi, Xi, Fi = y[m], X[m], F[m]
        out["n_obs"].append(m.sum())
        out["yty"].append(yi @ yi)
        out["Xty"].append(Xi.T @ yi)
        out["XtX"].append(Xi.T @ Xi)
        out["Fty"].append(Fi.T @ yi)
        out["FtF"].append(Fi.T @ Fi)
        out["XtF"].append(Xi.T @ Fi)
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    counts = np.array([1, 4, 1, 7, 2, 1, 5])  # includes single-observation subjects
    codes = np.repeat(np.arange(len(counts)), counts)
    n = counts.sum()
    return rng.normal(size=n), rng.normal(size=(n, 3)), rng.normal(size=(n, 2)), codes, len(counts)


def test_sufficient_stats_match_naive_loop(arrays):
    y, X, F, codes, N = arrays
    st = sufficient_stats(y, X, F, codes, N)
    ref = naive_stats(y, X, F, codes, N)
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(st, k), v, rtol=1e-12, atol=1e-12, err_msg=k)
    assert st.n_subjects == N and st.dim_random == 3 and st.dim_fixed == 2
    assert st.XtX.shape == (N, 3, 3) and st.XtF.shape == (N, 3, 2)


def test_sufficient_stats_across_memory_chunks(arrays, monkeypatch):
    """Subjects whose rows straddle the row chunks used to bound memory are summed correctly."""
    y, X, F, codes, N = arrays
    monkeypatch.setattr(data_mod, "_CHUNK_ELEMENTS", 20)  # 2 rows of 3 x 3 products, 5 of 2 x 2, ...
    st = sufficient_stats(y, X, F, codes, N)
    ref = naive_stats(y, X, F, codes, N)
    for k, v in ref.items():
        np.testing.assert_allclose(getattr(st, k), v, rtol=1e-12, atol=1e-12, err_msg=k)


def test_sufficient_stats_without_fixed_effects(arrays):
    y, X, _, codes, N = arrays
    st = sufficient_stats(y, X, None, codes, N)
    assert st.FtF.shape == (N, 0, 0) and st.Fty.shape == (N, 0) and st.XtF.shape == (N, 3, 0)


def test_subset_and_segment_sums(arrays):
    y, X, F, codes, N = arrays
    st = sufficient_stats(y, X, F, codes, N)
    sub = st.subset(np.array([3, 0]))
    assert isinstance(sub, SufficientStats) and sub.n_subjects == 2
    np.testing.assert_allclose(sub.XtX[0], st.XtX[3])
    offsets = np.r_[0, np.cumsum(np.bincount(codes))]
    np.testing.assert_allclose(segment_sums(y, offsets), np.bincount(codes, weights=y))
    assert segment_sums(np.zeros((0, 2)), np.array([0])).shape == (0, 2)


# --------------------------------------------------------------------------- from_frame


@pytest.fixture
def frame():
    return pd.DataFrame({
        "id": ["b", "a", "b", "c", "a", "b"],
        "t": [2.0, 1.0, 0.5, 3.0, 0.0, 1.0],
        "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        "age": [30.0, 40.0, 30.0, 50.0, 40.0, 30.0],
        "arm": ["x", "y", "x", "z", "y", "x"],
    }, index=[10, 11, 12, 13, 14, 15])


def test_from_frame_orders_by_subject_then_time_and_keeps_labels(frame):
    d = Longitudinal.from_frame(frame, subject="id", time="t", response="y", covariates=["age", "arm"])
    assert list(d.subjects) == ["a", "b", "c"] and d.subjects.name == "id"
    np.testing.assert_array_equal(d.codes, [0, 0, 1, 1, 1, 2])
    np.testing.assert_array_equal(d.time, [0.0, 1.0, 0.5, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(d.response, [5.0, 2.0, 3.0, 6.0, 1.0, 4.0])
    assert list(d.row_index) == [14, 11, 12, 15, 10, 13]
    assert d.covariate_names == ("age", "arm[T.y]", "arm[T.z]")
    np.testing.assert_array_equal(d.covariates[:, 1:], [[1, 0], [1, 0], [0, 0], [0, 0], [0, 0], [0, 1]])
    np.testing.assert_array_equal(d.counts, [2, 3, 1])  # subject "c" has a single observation
    np.testing.assert_array_equal(d.offsets, [0, 2, 5, 6])
    assert d.n_subjects == 3 and d.n_obs == 6
    assert "3 subjects, 6 observations" in repr(d)
    back = d.to_frame()
    assert list(back.columns) == ["id", "t", "y", "age", "arm[T.y]", "arm[T.z]"]
    assert list(back["id"]) == ["a", "a", "b", "b", "b", "c"]


def test_from_frame_integer_labels_sorted_numerically():
    df = pd.DataFrame({"subject": [10, 2, 10, 2], "time": [0, 0, 1, 1], "y": [1.0, 2.0, 3.0, 5.0]})
    d = Longitudinal.from_frame(df)
    assert list(d.subjects) == [2, 10]


def test_from_frame_duplicate_times_allowed(frame):
    dup = pd.concat([frame, frame.iloc[[0]]])
    d = Longitudinal.from_frame(dup, subject="id", time="t", response="y")
    assert d.n_obs == 7 and d.counts.tolist() == [2, 4, 1]


def test_stats_method_matches_function(frame):
    d = Longitudinal.from_frame(frame, subject="id", time="t", response="y", covariates=["age"])
    X = np.c_[np.ones(d.n_obs), d.time]
    st = d.stats(X, d.covariates)
    ref = sufficient_stats(d.response, X, d.covariates, d.codes, d.n_subjects)
    np.testing.assert_allclose(st.XtF, ref.XtF)
    nores = Longitudinal.from_frame(frame.drop(columns="y"), subject="id", time="t", require_response=False)
    assert nores.response is None
    with pytest.raises(DataError, match="no response"):
        nores.stats(X)


def test_select_and_take_rows(frame):
    d = Longitudinal.from_frame(frame, subject="id", time="t", response="y")
    s = d.select(["c", "a"])
    assert list(s.subjects) == ["a", "c"] and s.codes.tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="unknown subject"):
        d.select(["zz"])
    kept = d.take_rows(d.subjects[d.codes] != "b")
    assert list(kept.subjects) == ["a", "c"] and kept.n_obs == 3


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda df: df.iloc[:0], {}, "empty"),
        (lambda df: df.drop(columns="t"), {}, r"column\(s\) \['t'\] not found.*the columns are: \['id', 'y', 'age', 'arm'\]"),
        (lambda df: df, {"response": "t"}, "more than one role"),
        (lambda df: df.assign(t=["0", "1", "x", "3", "4", "5"]), {}, "column 't' must be numeric.*'x'"),
        (lambda df: df.assign(y=["a"] * 6), {}, "column 'y' must be numeric"),
        # dates and durations are not turned into nanoseconds since 1970 (curves over t = 1.6e18)
        (lambda df: df.assign(t=pd.Timestamp("2020-01-01") + pd.to_timedelta(df["t"], unit="D")), {},
         r"column 't' holds dates \(datetime64\[ns\]\): give it as a number .* dmlmm\.times_from_dates\(data, subject, "
         r"column, unit='years'\) .* \(d - d\.min\(\)\)\.dt\.days / 365\.25"),
        (lambda df: df.assign(t=pd.to_timedelta(df["t"], unit="D")), {},
         r"column 't' holds durations \(timedelta64\[ns\]\): give it as a number .* d\.dt\.days for days"),
        (lambda df: df.assign(arm="x"), {"covariates": ["arm"]}, "single level"),
    ],
)
def test_from_frame_errors(frame, mutate, kwargs, message):
    args = {"subject": "id", "time": "t", "response": "y"} | kwargs
    with pytest.raises(DataError, match=message):
        Longitudinal.from_frame(mutate(frame), **args)


def test_from_frame_not_a_frame():
    with pytest.raises(DataError, match="expected a pandas DataFrame"):
        Longitudinal.from_frame(np.zeros((3, 3)))


def test_from_frame_missing_values_counted_and_dropped(frame):
    bad = frame.copy()
    bad.loc[10, "y"] = np.nan
    bad.loc[11, "t"] = np.inf
    bad.loc[12, "age"] = np.nan
    args = {"subject": "id", "time": "t", "response": "y", "covariates": ["age"]}
    with pytest.raises(DataError, match=r"3 row\(s\) have missing or infinite values.*'t': 1 \(rows \[11\]\).*'y': 1"):
        Longitudinal.from_frame(bad, **args)
    with pytest.warns(UserWarning, match="dropped 3 of 6"):
        d = Longitudinal.from_frame(bad, dropna=True, **args)
    assert d.n_obs == 3
    allbad = frame.assign(y=np.nan)
    with pytest.raises(DataError, match="no rows are left"):
        with pytest.warns(UserWarning):
            Longitudinal.from_frame(allbad, dropna=True, subject="id", time="t", response="y")


def test_encoding_reuse_rejects_unknown_levels(frame):
    d = Longitudinal.from_frame(frame, subject="id", time="t", response="y", covariates=["arm"])
    new = frame.assign(arm="w")
    with pytest.raises(DataError, match=r"level\(s\) \['w'\] not seen"):
        Longitudinal.from_frame(new, subject="id", time="t", response="y", encoding=d.encoding)
    enc = CovariateEncoding.from_dict(d.encoding.to_dict())
    assert enc.names == d.encoding.names


# --------------------------------------------------------------------------- from_arrays


def test_from_arrays_roundtrip():
    y = [np.array([1.0, 2.0]), np.array([3.0])]
    x = [np.ones((2, 2)), np.ones((1, 2))]
    d = Longitudinal.from_arrays(y, x, subjects=["p", "q"], covariates=[np.array([[1.0], [2.0]]), np.array([[3.0]])])
    assert list(d.subjects) == ["p", "q"] and d.design.shape == (3, 2)
    np.testing.assert_array_equal(d.time, [0.0, 1.0, 0.0])
    assert d.covariate_names == ("x0",)


@pytest.mark.parametrize(
    "y, x, kwargs, message",
    [
        ([], [], {}, "no subjects"),
        ([np.ones(2)], [np.ones((2, 1)), np.ones((1, 1))], {}, "2 design matrices"),
        ([np.ones(2), np.ones(1)], [np.ones((2, 1)), np.ones((1, 2))], {}, "different numbers of columns"),
        ([np.ones(2)], [np.ones((3, 1))], {}, "y has 2 values but x has 3 rows"),
        ([np.array([1.0, np.nan])], [np.ones((2, 1))], {}, "y has 1 missing"),
        ([np.ones(1), np.ones(1)], [np.ones((1, 1))] * 2, {"subjects": ["a", "a"]}, "unique"),
        ([np.ones(2)], [np.ones((2, 1))], {"times": [np.ones(3)]}, "one value per observation"),
    ],
)
def test_from_arrays_errors(y, x, kwargs, message):
    with pytest.raises(DataError, match=message):
        Longitudinal.from_arrays(y, x, **kwargs)


@pytest.mark.parametrize("make, what", [
    (lambda t, s: 3.0 + 0.5 * s, "constant within every subject"),            # a baseline variable
    (lambda t, s: 40.0 + t + 0.0 * s, "an exact straight line of time"),       # an age: time itself, shifted
    (lambda t, s: 1e6 + 2.0 * s + 0.25 * t, "an exact straight line of time"),  # far from zero: no cancellation
])
def test_a_response_without_noise_is_refused_by_every_model(make, what):
    """A response with nothing left for the noise within any subject (a baseline variable as response, or age)
    is refused up front: the deep mixture and LinearMixedModel broke down in the linear algebra on it, the mixture
    reported densities of 1e18. One noisy subject is enough to fit."""
    from dmlmm import DeepMixtureLMM, LinearMixedModel, MixtureLMM

    rng = np.random.default_rng(0)
    s = np.repeat(np.arange(30), 5)
    t = np.tile(np.arange(5.0), 30) + rng.uniform(0, 0.5, size=s.size)
    df = pd.DataFrame({"subject": s, "time": t, "y": make(t, s)})
    for model in (DeepMixtureLMM((2, 1), (1, 1), max_iter=30), MixtureLMM(2, max_iter=30), LinearMixedModel()):
        with pytest.raises(DataError, match=rf"the response 'y' is {what}.*nothing is left for measurement noise"):
            model.fit(df)
    noisy = df.copy()
    noisy.loc[noisy.subject == 0, "y"] += rng.normal(size=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        LinearMixedModel().fit(noisy)


def test_dropped_subjects_and_repeated_rows_are_said():
    """dropna names the subjects it leaves out entirely (it counted rows only, while whole subjects vanished
    from the outputs); a row that repeats an earlier one exactly (subject, time and response) is kept as a
    replicate, with a warning, as it is more likely entered twice."""
    df = pd.DataFrame({"s": [1, 1, 1, 2, 2, 3], "t": [0, 1, 1, 0, 1, 0], "y": [1.0, 2.0, 2.0, np.nan, np.nan, 3.0]})
    with pytest.warns(UserWarning) as caught:
        d = Longitudinal.from_frame(df, "s", "t", "y", dropna=True)
    text = [str(w.message) for w in caught]
    assert any("dropped 2 of 6 row(s)" in m and "1 subject(s) had no other rows and are left out: [2]" in m
               for m in text), text
    assert any(m.startswith("1 row(s) repeat an earlier row's subject, time and response exactly (rows [2])")
               for m in text), text
    assert list(d.subjects) == [1, 3] and d.n_obs == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Longitudinal.from_frame(df.assign(y=[1.0, 2.0, 2.5, 1.0, 1.0, 3.0]), "s", "t", "y")  # replicates differ


def test_messages_name_rows_and_types_plainly():
    """Row labels held as numpy integers read 'row 7', not 'row np.int64(7)' (numpy 2's repr); a dask frame
    given where a pandas one is needed is named so, with what to do."""
    from dmlmm.columns import as_numeric

    with pytest.raises(DataError, match=r"must be numeric, but row 7 holds 'x'"):
        as_numeric(pd.Series(["1", "x"], index=np.array([5, 7])), "column 't'")
    with pytest.raises(DataError, match=r"expected a pandas DataFrame, got numpy\.ndarray$"):
        Longitudinal.from_frame(np.zeros((3, 3)))


def test_written_dates_and_durations_as_time_say_how_to_make_numbers_of_them():
    """A CSV's dates ('1970-04-28') or durations with units ('118 days') arrive as text: the message says what
    they are and how to turn them into numbers, where it said only 'convert or drop those rows'."""
    from dmlmm.columns import as_numeric

    with pytest.raises(DataError, match=r"column 'date' must be numeric, but row 0 holds '1970-04-28' \(2 non-numeric "
                                         r"value\(s\) in all\); they are dates: give the time as a number"):
        as_numeric(pd.Series(["1970-04-28", "1971-04-29"]), "column 'date'")
    with pytest.raises(DataError, match=r"holds '118 days' .*; they are durations with units: give them as plain "
                                         r"numbers in one unit \(e\.g\. 118 for '118 days'"):
        as_numeric(pd.Series(["118 days", "484 days"]), "column 'age'")
    with pytest.raises(DataError, match=r"holds 'x' \(1 non-numeric value\(s\) in all\); convert or drop those rows$"):
        as_numeric(pd.Series(["1", "x"]), "column 'y'")
    with pytest.raises(DataError, match=r"holds '15/01/2020' .*; they look like dates written day/month/year or "
                                         r"month/day/year: give the time as a number"):  # not ISO: no hint before
        as_numeric(pd.Series(["15/01/2020", "3.2.21"]), "column 'visit'")

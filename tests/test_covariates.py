"""Covariate coding by formulaic: lists of columns as before, formulas with interactions and levels,
plain-JSON state that rebuilds the same columns, errors that name columns and levels, old model files."""

from __future__ import annotations

import io
import json
import warnings
import zipfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dmlmm
from dmlmm.cli import main
from dmlmm.covariates import CovariateEncoding, covariate_columns, parse_covariates
from dmlmm.data import Longitudinal
from dmlmm.exceptions import DataError, IdentifiabilityWarning
from dmlmm.io import FORMAT_VERSION, read_metadata
from dmlmm.simulate import dgp1


@pytest.fixture
def small() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [1, 1, 2, 2, 3, 3, 4, 4],
        "t": [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0],
        "y": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        "diet": ["a", "a", "b", "b", "c", "c", "b", "b"],
        "age": [30.0, 30.0, 40.0, 40.0, 50.0, 50.0, 60.0, 60.0],
        "dose": [1, 1, 2, 2, 3, 3, 1, 1],
    })


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    df = dgp1(0, n_subjects=40).data.copy()
    df["diet"] = np.array(["a", "b", "c"])[df["subject"] % 3]
    df["age"] = df["subject"] * 0.5 + 30.0
    df["y"] = df["y"] + np.where(df["diet"] == "b", 0.5, 0.0) + 0.02 * (df["age"] - 40) * (df["diet"] == "c")
    return df


# ---------------------------------------------------------------------------- the coding


def test_interaction_columns_and_values_by_hand(small):
    d = Longitudinal.from_frame(small, "id", "t", "y", "diet * age")
    assert d.covariate_names == ("diet[T.b]", "diet[T.c]", "age", "diet[T.b]:age", "diet[T.c]:age")
    s = small.sort_values(["id", "t"])
    b, c, age = (s["diet"] == "b").to_numpy(float), (s["diet"] == "c").to_numpy(float), s["age"].to_numpy()
    np.testing.assert_array_equal(d.covariates, np.column_stack([b, c, age, b * age, c * age]))


def test_a_list_of_columns_codes_as_before(small):
    d = Longitudinal.from_frame(small.assign(flag=small["id"] > 2), "id", "t", "y", ["age", "diet", "flag"])
    assert d.covariate_names == ("age", "diet[T.b]", "diet[T.c]", "flag[T.True]")
    assert d.encoding.formula is None and d.encoding.levels == {"age": None, "diet": ["a", "b", "c"], "flag": [False, True]}
    one = Longitudinal.from_frame(small, "id", "t", "y", "age")  # one column, as a string
    assert one.covariate_names == ("age",)


def test_categorical_levels_and_transforms(small):
    d = Longitudinal.from_frame(small, "id", "t", "y", "C(dose) + age:diet")
    assert d.covariate_names[:2] == ("C(dose)[T.2]", "C(dose)[T.3]")
    d = Longitudinal.from_frame(small, "id", "t", "y", "C(diet, levels=['c', 'b', 'a'])")
    assert d.covariate_names == ("C(diet, levels=['c', 'b', 'a'])[T.b]", "C(diet, levels=['c', 'b', 'a'])[T.a]")
    d = Longitudinal.from_frame(small, "id", "t", "y", "center(age) + poly(age, 2)")
    assert d.covariate_names == ("center(age)", "poly(age, 2)[1]", "poly(age, 2)[2]")
    # the state learned on the fitted rows is kept: two new rows are centred at the fitted mean, not their own
    enc = CovariateEncoding.from_dict(json.loads(json.dumps(d.encoding.to_dict())))
    np.testing.assert_allclose(enc.encode(pd.DataFrame({"age": [45.0, 45.0]}))[:, 0], [0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(enc.encode(small)[:, :], d.encoding.encode(small), rtol=0, atol=0)


def test_no_intercept_even_when_the_formula_removes_it(small):
    for f in ("0 + diet", "diet - 1"):
        assert Longitudinal.from_frame(small, "id", "t", "y", f).covariate_names == ("diet[T.b]", "diet[T.c]")


def test_time_terms_code_against_the_mean_curve(small):
    both = Longitudinal.from_frame(small, "id", "t", "y", "diet * t")
    assert both.covariate_names == ("diet[T.b]", "diet[T.c]", "diet[T.b]:t", "diet[T.c]:t")  # no plain 't'
    slopes = Longitudinal.from_frame(small, "id", "t", "y", "diet:t")
    assert slopes.covariate_names == ("diet[T.b]:t", "diet[T.c]:t")  # not one slope per diet: the curve has one
    s = small.sort_values(["id", "t"])
    np.testing.assert_array_equal(slopes.covariates[:, 0], ((s["diet"] == "b") * s["t"]).to_numpy(float))
    with pytest.raises(DataError, match="more than one role"):  # a list may not name the time column
        Longitudinal.from_frame(small, "id", "t", "y", ["t"])


@pytest.mark.filterwarnings("ignore::dmlmm.exceptions.ConvergenceWarning")
def test_a_function_of_time_alone_still_warns(frame):
    with pytest.warns(IdentifiabilityWarning, match="function of time"):
        dmlmm.MixtureLMM(1, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=3).fit(frame, covariates="I(time**2)")


def test_diet_by_time_fits_without_a_confounding_warning(frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", IdentifiabilityWarning)
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=20).fit(frame, covariates="diet * time")
    assert list(m.fixed_effects_.index) == ["diet[T.b]", "diet[T.c]", "diet[T.b]:time", "diet[T.c]:time"]


def test_unseen_level_names_column_levels_and_known_ones(small):
    enc = Longitudinal.from_frame(small, "id", "t", "y", "diet * age").encoding
    with pytest.raises(DataError) as e:
        Longitudinal.from_frame(small.assign(diet="q"), "id", "t", "y", encoding=enc)
    assert str(e.value) == ("covariate 'diet' has level(s) ['q'] not seen when the model was fitted "
                            "(known levels: ['a', 'b', 'c'])")
    enc = Longitudinal.from_frame(small, "id", "t", "y", "C(dose)").encoding
    with pytest.raises(DataError) as e:
        enc.encode(small.assign(dose=7))
    assert str(e.value) == ("covariate 'dose' has level(s) ['7'] not seen when the model was fitted "
                            "(known levels: [1, 2, 3])")


def test_missing_columns_and_bad_formulas_are_named(small):
    enc = Longitudinal.from_frame(small, "id", "t", "y", "diet * age").encoding
    with pytest.raises(DataError, match=r"column\(s\) \['age'\] not found"):
        Longitudinal.from_frame(small.drop(columns="age"), "id", "t", "y", encoding=enc)
    with pytest.raises(DataError, match=r"covariate column\(s\) \['age'\] not found"):
        enc.encode(small.drop(columns="age"))
    with pytest.raises(DataError, match=r"column\(s\) \['weight'\] not found"):
        Longitudinal.from_frame(small, "id", "t", "y", "diet * weight")
    with pytest.raises(DataError, match="cannot be read"):
        Longitudinal.from_frame(small, "id", "t", "y", "diet * (age")
    with pytest.raises(DataError, match="right-hand side only"):
        Longitudinal.from_frame(small, "id", "t", "y", "y ~ age")
    with pytest.raises(DataError, match=r"infinite values in column\(s\) \['log\(age - 30\)'\]"):
        Longitudinal.from_frame(small, "id", "t", "y", "log(age - 30)")


def test_parse_covariates():
    assert parse_covariates(None) == (None, [])
    assert parse_covariates(["a", "b"]) == (None, ["a", "b"])
    assert parse_covariates("my col", ["my col"]) == (None, ["my col"])
    assert parse_covariates("C(diet) + age:sex + center(w)") == ("C(diet) + age:sex + center(w)", ["diet", "age", "sex", "w"])
    assert covariate_columns("`my col` * x") == ["my col", "x"]


def test_state_is_plain_json_and_rebuilds_the_same_columns(small):
    d = Longitudinal.from_frame(small, "id", "t", "y", "C(dose) * age + poly(age, 2) + diet:t")
    text = json.dumps(d.encoding.to_dict(), allow_nan=False)
    enc = CovariateEncoding.from_dict(json.loads(text))
    assert enc.names == d.covariate_names
    one = small.iloc[[3]]  # one row: a single level of each factor, the fitted state still applies
    np.testing.assert_array_equal(enc.encode(one), d.encoding.encode(small)[[3]])


def test_old_encoding_dicts_still_read(small):
    old = {"columns": ["age", "diet"], "levels": {"age": None, "diet": ["a", "b", "c"]}}
    enc = CovariateEncoding.from_dict(old)
    assert enc.names == ("age", "diet[T.b]", "diet[T.c]")
    np.testing.assert_array_equal(enc.encode(small.iloc[[0, 2, 4]]), [[30.0, 0, 0], [40.0, 1, 0], [50.0, 0, 1]])


def test_levels_alone_fix_only_some_formulas():
    enc = CovariateEncoding.from_levels(["diet", "age"], {"diet": ["a", "b"], "age": None}, "diet * age")
    assert enc.names == ("diet[T.b]", "age", "diet[T.b]:age")
    enc = CovariateEncoding.from_levels(["diet"], {"diet": ["a", "b", "c"]}, "C(diet, levels=['c', 'a', 'b'])")
    assert enc.names == ("C(diet, levels=['c', 'a', 'b'])[T.a]", "C(diet, levels=['c', 'a', 'b'])[T.b]")
    with pytest.raises(DataError, match="depends on the data"):
        CovariateEncoding.from_levels(["dose"], {"dose": None}, "C(dose)")


# ---------------------------------------------------------------------------- fitted models


@pytest.fixture(scope="module")
def fitted(frame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=30).fit(
            frame, covariates="diet * age")


def test_round_trip_with_a_formula_predicts_bit_identically(fitted, frame, tmp_path):
    m = fitted
    assert list(m.fixed_effects_.index) == ["diet[T.b]", "diet[T.c]", "age", "diet[T.b]:age", "diet[T.c]:age"]
    m.save(tmp_path / "m.dmlmm")
    m2 = dmlmm.load(tmp_path / "m.dmlmm")
    assert m2.design_.encoding.formula == "diet * age"
    assert read_metadata(tmp_path / "m.dmlmm")["format_version"] == FORMAT_VERSION == 2  # older readers refuse it
    new = frame[frame["subject"].isin(m.subjects_[:8])]
    pd.testing.assert_series_equal(m.predict(new), m2.predict(new))
    pd.testing.assert_frame_equal(m.predict_proba(new), m2.predict_proba(new))
    pd.testing.assert_frame_equal(m.predict_trajectory(new), m2.predict_trajectory(new))
    assert np.array_equal(m.score_samples(new).to_numpy(), m2.score_samples(new).to_numpy())


def test_new_subjects_covariates_in_predict_trajectory(fitted):
    m = fitted
    grid = np.array([0.2, 0.6])
    new = pd.DataFrame({"subject": ["n1", "n2"], "time": [0.5, 0.5], "diet": ["a", "c"], "age": [40.0, 50.0]})
    tr = m.predict_trajectory(new, times=grid)
    pop = m.predict_trajectory(None, times=grid)
    w = m.fixed_effects_
    shift1 = w["age"] * 40.0
    shift2 = w["diet[T.c]"] + w["age"] * 50.0 + w["diet[T.c]:age"] * 50.0
    # the population curve is at the fitted covariates' means; each subject's at its own
    np.testing.assert_allclose(tr[tr.subject == "n2"]["mean"].to_numpy() - tr[tr.subject == "n1"]["mean"].to_numpy(),
                               shift2 - shift1, rtol=1e-8)
    assert np.isfinite(pop["mean"]).all()
    with pytest.raises(DataError, match=r"covariate 'diet' has level\(s\) \['z'\]"):
        m.predict_trajectory(new.assign(diet="z"), times=grid)


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            raw = zin.read(item.filename)
            if item.filename.endswith(".json"):
                meta = json.loads(raw)
                edit(meta)
                raw = json.dumps(meta).encode()
            zout.writestr(item, raw)


def test_files_written_before_formulas_load_and_predict_the_same(frame, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=20).fit(
            frame, covariates=["diet", "age"])
    m.save(tmp_path / "new.dmlmm")

    def to_old(meta):  # the design's encoding as files before formulas held it
        enc = meta["design"]["encoding"]
        meta["design"]["encoding"] = {"columns": enc["columns"], "levels": enc["levels"]}

    _rewrite(tmp_path / "new.dmlmm", tmp_path / "old.dmlmm", to_old)
    with zipfile.ZipFile(tmp_path / "old.dmlmm") as z:
        name = [n for n in z.namelist() if n.endswith(".json")][0]
        assert set(json.loads(z.read(name))["design"]["encoding"]) == {"columns", "levels"}
    old = dmlmm.load(tmp_path / "old.dmlmm")
    assert old.design_.encoding.names == ("diet[T.b]", "diet[T.c]", "age")
    new = frame[frame["subject"].isin(m.subjects_[:8])]
    pd.testing.assert_frame_equal(m.predict_trajectory(new), old.predict_trajectory(new))
    pd.testing.assert_frame_equal(m.predict_proba(new), old.predict_proba(new))


def test_cli_fit_takes_a_formula(frame, tmp_path):
    data = tmp_path / "d.csv"
    frame.to_csv(data, index=False)
    res = CliRunner().invoke(main, ["fit", "--no-report", str(data), "--model", "mixture", "--components", "2", "--n-basis", "6",
                                    "--max-iter", "10", "--covariates", "diet * age", "--out", str(tmp_path / "out"),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    m = dmlmm.load(tmp_path / "out" / "model.dmlmm")
    assert m.design_.encoding.formula == "diet * age"
    assert "diet[T.c]:age" in m.fixed_effects_.index


def test_time_terms_are_rebuilt_at_every_prediction_time(frame):
    """With covariates "diet * time" a subject's curve carries diet[T.b] + diet[T.b]:time * t at every
    grid time t (not the value at its last visit): two subjects with the same data but diets a and b
    differ by exactly that line, in predict_trajectory and in the mean of sample_trajectories."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(1, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=30).fit(
            frame, covariates="diet * time")
    one = frame[frame["subject"] == 0]
    pair = pd.concat([one.assign(subject=100, diet="a"), one.assign(subject=101, diet="b")], ignore_index=True)
    grid = np.array([0.1, 0.5, 0.9])
    pred = m.predict_trajectory(pair, times=grid)
    gap = pred[pred["subject"] == 101]["mean"].to_numpy() - pred[pred["subject"] == 100]["mean"].to_numpy()
    w = m.fixed_effects_
    # same observations, one cluster: the posterior of b differs only through the fixed part at the visits,
    # so compare with the curves conditioned on nothing (new patients given by their covariates alone)
    bare = pair.assign(y=np.nan)
    pred0 = m.predict_trajectory(bare, times=grid)
    gap0 = pred0[pred0["subject"] == 101]["mean"].to_numpy() - pred0[pred0["subject"] == 100]["mean"].to_numpy()
    np.testing.assert_allclose(gap0, w["diet[T.b]"] + w["diet[T.b]:time"] * grid, rtol=1e-9, atol=1e-9)
    assert np.ptp(gap) > 0  # the conditioned gap moves with time as well
    draws = m.sample_trajectories(bare, times=grid, n_samples=4000, random_state=0)
    means = draws.groupby(["subject", "time"])["value"].mean().unstack().to_numpy()
    band = pred0[pred0["subject"] == 101]
    sd = ((band["upper"] - band["lower"]) / 3.92).to_numpy()
    np.testing.assert_allclose(means[1] - means[0], gap0, atol=6 * sd.max() / np.sqrt(4000) * np.sqrt(2))


def test_time_formulas_give_order_free_subject_curves_and_the_average_population_curve(frame, tmp_path):
    """With covariates "x + x:time" (x varying between visits) and "diet * time": a subject's curve uses its
    latest visit's covariates whatever the order of the rows (the last row in the frame was used: curves moved
    by up to 1.2 with the rows reversed); the population curve and cluster_means_ average the subjects' fixed
    parts rebuilt at each time (they held the time columns at their training mean, flat where diet b rose),
    also after saving; and `dmlmm predict` rebuilds them too (it refused such models)."""
    df = frame.assign(x=np.sin(3 * frame["time"] + frame["subject"]))
    df["y"] = df["y"] + np.where(df["diet"] == "b", 2.0, 0.0) * df["time"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40).fit(
            df, covariates="diet * time + x + x:time")
    grid = np.array([0.1, 0.5, 0.9])
    few = df[df["subject"].isin([0, 1, 2])]
    forward = m.predict_trajectory(few, times=grid)
    backward = m.predict_trajectory(few.iloc[::-1], times=grid)
    pd.testing.assert_frame_equal(forward.sort_values(["subject", "time"]).reset_index(drop=True),
                                  backward.sort_values(["subject", "time"]).reset_index(drop=True), rtol=1e-12)
    pop = m.predict_trajectory(None, times=grid)["mean"].to_numpy()
    # linear model: the curve at the average covariates is the average of the subjects' population-level curves
    each = m.predict_trajectory(df, times=grid, level="population").groupby("time")["mean"].mean().to_numpy()
    np.testing.assert_allclose(pop, each, rtol=1e-9, atol=1e-9)
    assert pop[-1] - pop[0] > 0.3  # a third of the subjects (diet b) rise by 2 over the window
    cm = m.cluster_means_
    weighted = cm.groupby("time").apply(lambda g: np.average(g["mean"], weights=g["weight"]), include_groups=False)
    mid = m.predict_trajectory(None, times=weighted.index.to_numpy()[[0, 50, -1]])["mean"].to_numpy()
    np.testing.assert_allclose(weighted.to_numpy()[[0, 50, -1]], mid, rtol=1e-9, atol=1e-9)
    m.save(tmp_path / "m.dmlmm")
    pd.testing.assert_frame_equal(dmlmm.load(tmp_path / "m.dmlmm").predict_trajectory(None, times=grid),
                                  m.predict_trajectory(None, times=grid))
    data = tmp_path / "d.csv"
    few.to_csv(data, index=False)
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "m.dmlmm"), str(data), "--times", "0.1,0.5,0.9"])
    assert res.exit_code == 0, res.output
    cli = pd.read_csv(io.StringIO(res.stdout))
    np.testing.assert_allclose(cli["mean"].to_numpy(), forward["mean"].to_numpy(), rtol=1e-9)


def test_numbers_stored_as_text_are_read_as_numbers_with_a_warning(frame):
    """A diet coded '1'..'3' as text is read as one number (a slope per unit of the code), as before, but now
    with a warning that says how to ask for groups; C(diet) and a pandas Categorical are groups, quietly (a
    Categorical whose categories were such text was read as numbers, without a word)."""
    df = frame.assign(diet=(frame["subject"] % 3 + 1).astype(str))
    kw = dict(basis=dmlmm.SplineBasis(6), random_state=0, max_iter=5)
    with pytest.warns(UserWarning, match=r"covariate 'diet' holds numbers stored as text \('1', '2', '3', \.\.\.\): "
                                         r"they are read as numbers, one slope per unit; if they are categories"):
        m = dmlmm.MixtureLMM(2, **kw).fit(df, covariates="diet * time")
    assert list(m.fixed_effects_.index) == ["diet", "diet:time"]
    for data, cov in ((df, "C(diet) * time"), (df.assign(diet=pd.Categorical(df["diet"])), ["diet"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = dmlmm.MixtureLMM(2, **kw).fit(data, covariates=cov)
        assert not [w for w in caught if "stored as text" in str(w.message)]
        assert len(m.fixed_effects_) == (4 if isinstance(cov, str) else 2)  # two dummies (and their slopes)


def test_a_true_false_column_given_as_one_zero_takes_its_levels():
    """A covariate fitted as True/False and given as 1/0 (or 1.0/0.0) later codes as True/False: pandas matched
    the categories by type, so formulaic said the values were 'cast to nan' and the call was refused."""
    from dmlmm.covariates import CovariateEncoding

    enc = CovariateEncoding.learn(pd.DataFrame({"male": [False, True, True], "x": [0.5, 1.0, 2.0]}), ["male", "x"])
    want = enc.encode(pd.DataFrame({"male": [True, False], "x": [1.0, 1.0]}))
    assert want[:, enc.names.index("male[T.True]")].tolist() == [1.0, 0.0]
    for given in ([1, 0], [1.0, 0.0], np.array([1, 0], dtype=np.uint8)):
        np.testing.assert_array_equal(enc.encode(pd.DataFrame({"male": given, "x": [1.0, 1.0]})), want)
    with pytest.raises(dmlmm.DataError, match=r"covariate 'male' has level\(s\) \['2'\] not seen when the model was "
                                              r"fitted \(known levels: \[False, True\]\)"):
        enc.encode(pd.DataFrame({"male": [1, 2], "x": [1.0, 1.0]}))


def test_a_level_given_as_another_type_is_named_so():
    """'3' for a level fitted as the number 3: the error says the levels match in another type and how to
    convert (it said only 'not seen when the model was fitted (known levels: [1, 2, 3, 4])')."""
    enc = CovariateEncoding.learn(pd.DataFrame({"Diet": pd.Categorical([1, 2, 3, 4])}), ["Diet"])
    with pytest.raises(dmlmm.DataError, match=r"level\(s\) \['3'\] not seen when the model was fitted \(known levels: "
                                              r"\[1, 2, 3, 4\]\); they match fitted levels written as another type "
                                              r"\(str here, int when fitted\): convert the column, e.g. "
                                              r"df\['Diet'\].astype\('int'\)"):
        enc.encode(pd.DataFrame({"Diet": ["3"]}))
    with pytest.raises(dmlmm.DataError, match=r"level\(s\) \['7'\] not seen when the model was fitted \(known levels: "
                                              r"\[1, 2, 3, 4\]\)$"):
        enc.encode(pd.DataFrame({"Diet": ["7"]}))

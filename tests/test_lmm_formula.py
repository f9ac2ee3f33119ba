"""lme4-style formulas: parsing of bar terms, designs built by formulaic, and input errors."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from dmlmm.exceptions import DataError
from dmlmm.lmm import LinearMixedModel, parse_formula
from dmlmm.lmm.formula import RandomTerm

# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "formula, fixed, random",
    [
        ("Reaction ~ Days + (Days | Subject)", "Days", [RandomTerm("Days", "Subject")]),
        ("y ~ (1|g)", "1", [RandomTerm("1", "g")]),
        ("y ~ 0 + x + (0 + x | g)", "0 + x", [RandomTerm("0 + x", "g")]),
        ("y ~ -1 + x + (-1 + x|g)", "-1 + x", [RandomTerm("-1 + x", "g")]),
        ("y ~ x*z - 1 + (1|g) + (0+x|g)", "x*z - 1", [RandomTerm("1", "g"), RandomTerm("0+x", "g")]),
        ("y ~ x + (x || g)", "x", [RandomTerm("x", "g", correlated=False)]),
        ('y ~ C(h, levels=["a","b"]) + log(x) + (1 | `g`)', 'C(h, levels=["a","b"]) + log(x)', [RandomTerm("1", "g")]),
    ],
)
def test_parse_formula(formula, fixed, random):
    p = parse_formula(formula)
    assert p.fixed == fixed
    assert list(p.random) == random
    assert p.group == random[0].group


@pytest.mark.parametrize(
    "formula, message",
    [
        ("y ~ x", "no random-effects term"),
        ("y ~ x + (1|g) + (1|h)", r"several grouping factors \['g', 'h'\]"),
        ("y ~ x - (1|g)", "must be added with"),
        ("y ~ x | g", "each in its own parentheses"),
        ("~ x + (1|g)", "no response"),
        ("y ~ x + (|g)", "nothing left of"),
        ("y ~ x + (1|)", "no grouping factor"),
        ("y ~ x + (1|g:h)", "single column name"),
        ("y ~ x + (1|g", "unbalanced"),
        ("y ~ x ~ z + (1|g)", "exactly one '~'"),
    ],
)
def test_parse_formula_errors(formula, message):
    with pytest.raises(DataError, match=message):
        parse_formula(formula)


# --------------------------------------------------------------------------- designs


def test_random_intercept_matches_lme4(sleepstudy):
    """lme4: lmer(Reaction ~ Days + (1 | Subject)): SDs 37.12 (Subject) and 30.99 (residual)."""
    m = LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(sleepstudy)
    assert list(m.cov_re_.index) == ["Intercept"]
    assert float(f"{np.sqrt(m.cov_re_.iloc[0, 0]):.4g}") == 37.12
    assert float(f"{np.sqrt(m.sigma2_):.4g}") == 30.99
    assert m.deviance_ == pytest.approx(1786.465, abs=1e-3)


@pytest.mark.parametrize("formula", ["Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
                                     "Reaction ~ Days + (Days || Subject)"])
def test_uncorrelated_terms_match_lme4(sleepstudy, formula):
    """lme4: lmer(Reaction ~ Days + (Days || Subject)): SDs 25.051, 5.988, residual 25.565, REML 1743.669."""
    m = LinearMixedModel(formula, method="reml").fit(sleepstudy)
    sd = np.sqrt(np.diag(m.cov_re_.to_numpy()))
    assert m.cov_re_.iloc[0, 1] == 0.0
    assert float(f"{sd[0]:.5g}") == 25.051 and float(f"{sd[1]:.4g}") == 5.988
    assert float(f"{np.sqrt(m.sigma2_):.5g}") == 25.565
    assert m.deviance_ == pytest.approx(1743.669, abs=1e-3)
    assert len(m.theta_) == 2


def test_no_intercept_variants_are_the_same(sleepstudy):
    a = LinearMixedModel("Reaction ~ Days + (0 + Days | Subject)", method="reml").fit(sleepstudy)
    b = LinearMixedModel("Reaction ~ Days + (-1 + Days | Subject)", method="reml").fit(sleepstudy)
    assert list(a.cov_re_.index) == ["Days"]
    assert a.loglik_ == pytest.approx(b.loglik_, abs=1e-10)
    np.testing.assert_allclose(a.cov_re_, b.cov_re_)


def test_categorical_fixed_effects_and_prediction_rebuilds_columns(sleepstudy):
    df = sleepstudy.assign(phase=np.where(sleepstudy["Days"] < 2, "base", np.where(sleepstudy["Days"] < 6, "mid", "late")))
    m = LinearMixedModel("Reaction ~ Days + phase + (1 | Subject)", method="reml").fit(df)
    names = list(m.fixed_effects_.index)
    assert names[:2] == ["Intercept", "Days"] and len(names) == 4 and all("phase" in c for c in names[2:])
    new = pd.DataFrame({"Days": [7.0, 1.0], "phase": ["late", "base"], "Subject": [308, 308]})
    pred = m.predict_trajectory(new)
    f = np.array([[1.0, 7.0, *[1.0 if "late" in c else 0.0 for c in names[2:]]],
                  [1.0, 1.0, 0.0, 0.0]])
    expected = f @ m.fixed_effects_.to_numpy() + m.random_effects_.loc[308, "Intercept"]
    np.testing.assert_allclose(pred["mean"], expected)
    with pytest.raises(DataError, match=r"column .phase. has level\(s\) \[.other.\] not seen when the model was fitted"):
        m.predict_trajectory(pd.DataFrame({"Days": [1.0], "phase": ["other"], "Subject": [308]}))


def test_prediction_without_group_column_is_population_level(sleepstudy):
    m = LinearMixedModel("Reaction ~ Days + (Days | Subject)", method="reml").fit(sleepstudy)
    pop = m.predict_trajectory(pd.DataFrame({"Days": [0.0, 5.0]}))
    assert list(pop.columns) == ["mean", "lower", "upper"]
    np.testing.assert_allclose(pop["mean"], m.fixed_effects_["Intercept"] + m.fixed_effects_["Days"] * np.r_[0, 5])
    subj = m.predict_trajectory(pd.DataFrame({"Days": [0.0, 5.0]}), subject=308)
    assert list(subj.columns) == ["Subject", "mean", "lower", "upper"]
    re = m.random_effects_.loc[308]
    np.testing.assert_allclose(subj["mean"], pop["mean"] + re["Intercept"] + re["Days"] * np.r_[0, 5])


def test_transformed_response_and_terms(sleepstudy):
    m = LinearMixedModel("np.log(Reaction) ~ Days + I(Days**2) + (1 | Subject)", method="reml").fit(sleepstudy)
    assert len(m.fixed_effects_) == 3
    assert abs(m.fixed_effects_["Intercept"] - np.log(250)) < 0.1


# --------------------------------------------------------------------------- bad input


def test_unknown_column_names_it_and_lists_columns(sleepstudy):
    with pytest.raises(DataError, match=r"\['Dayz'\].*not found.*\['Reaction', 'Days', 'Subject'\]"):
        LinearMixedModel("Reaction ~ Dayz + (1 | Subject)", method="reml").fit(sleepstudy)
    with pytest.raises(DataError, match=r"\['Subj'\]"):
        LinearMixedModel("Reaction ~ Days + (1 | Subj)", method="reml").fit(sleepstudy)
    with pytest.raises(DataError, match=r"\['RT'\]"):
        LinearMixedModel("RT ~ Days + (1 | Subject)", method="reml").fit(sleepstudy)


def test_non_numeric_response(sleepstudy):
    with pytest.raises(DataError, match="response column 'Reaction' must be numeric"):
        LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(sleepstudy.assign(Reaction="fast"))


def test_missing_values_are_counted_or_dropped(sleepstudy):
    bad = sleepstudy.copy()
    bad.loc[[0, 5, 9], "Days"] = np.nan
    bad.loc[[3], "Reaction"] = np.inf
    with pytest.raises(DataError, match=r"4 row\(s\) have missing or infinite values.*'Days': 3.*'Reaction': 1"):
        LinearMixedModel("Reaction ~ Days + (Days | Subject)", method="reml").fit(bad)
    with pytest.warns(UserWarning, match="dropped 4 of 180 row"):
        m = LinearMixedModel("Reaction ~ Days + (Days | Subject)", method="reml").fit(bad, dropna=True)
    clean = LinearMixedModel("Reaction ~ Days + (Days | Subject)", method="reml").fit(bad.drop(index=[0, 3, 5, 9]))
    assert m.n_obs_ == 176
    assert m.loglik_ == pytest.approx(clean.loglik_, abs=1e-9)
    missing_group = sleepstudy.astype({"Subject": object})
    missing_group.loc[7, "Subject"] = None
    with pytest.raises(DataError, match=r"'Subject': 1"):
        LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(missing_group)


def test_unused_columns_with_missing_values_do_not_matter(sleepstudy):
    df = sleepstudy.assign(other=np.nan)
    m = LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(df)
    assert m.n_obs_ == 180


def test_formula_model_needs_a_frame(sleepstudy):
    with pytest.raises(DataError, match="DataFrame"):
        LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(sleepstudy.to_numpy())
    with pytest.raises(ValueError, match="formula"):
        LinearMixedModel("Reaction ~ Days + (1 | Subject)", method="reml").fit(X=np.ones((3, 1)), Z=np.ones((3, 1)), y=[1, 2, 3])


def test_numbers_stored_as_text_and_the_grouping_column_as_a_term_are_said(sleepstudy):
    """formulaic reads numbers stored as text as categories (one coefficient per distinct value) and fits the
    grouping column as a term without a word; both are said, with what to write instead. C(x) is left quiet."""
    import warnings

    df = sleepstudy.assign(DaysText=sleepstudy["Days"].astype(str))
    with pytest.warns(UserWarning, match=r"column 'DaysText' holds numbers stored as text \(e.g. '0'\): the formula "
                                         r"reads it as a categorical variable with 10 levels; convert it with "
                                         r"pd.to_numeric\(df\['DaysText'\]\)"):
        m = LinearMixedModel(formula="Reaction ~ DaysText + (1 | Subject)", method="reml").fit(df)
    assert len(m.fixed_effects_) == 10  # formulaic's reading is kept: the warning says what it did
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LinearMixedModel(formula="Reaction ~ C(DaysText) + (1 | Subject)", method="reml").fit(df)
    with pytest.warns(UserWarning, match=r"the grouping column 'Subject' is also a term of the formula"):
        LinearMixedModel(formula="Reaction ~ Days + C(Subject) + (1 | Subject)", method="reml").fit(df)


def test_a_transformed_formula_response_with_a_response_transform_is_refused():
    """'log(y) ~ ...' with response_transform='log' fitted log(log(y)) without a word (its intercept 1.19 for
    log(y)'s 3.28, predictions on the scale of log(y)); now a DataError says which of the two to keep."""
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"subject": np.repeat(np.arange(20), 4), "time": np.tile(np.arange(4.0), 20)})
    df["y"] = np.exp(3.0 + 0.1 * df["time"] + rng.normal(0, 0.1, len(df)))
    for transform, verb in (("log", "take log"), ("auto", "try log"), ("log1p", "take log1p")):
        with pytest.raises(DataError, match=re.escape(
                f"the formula's response 'log(y)' is already a function of the data, and response_transform="
                f"'{transform}' would {verb}(log(y)) too: write the response as the column ('y ~ ...') with "
                f"response_transform='{transform}'")):
            LinearMixedModel("log(y) ~ time + (1 | subject)", response_transform=transform).fit(df)
    m = LinearMixedModel("log(y) ~ time + (1 | subject)", method="ml").fit(df)
    ref = LinearMixedModel("y ~ time + (1 | subject)", method="ml", response_transform="log").fit(df)
    np.testing.assert_allclose(m.fixed_effects_.to_numpy(), ref.fixed_effects_.to_numpy(), rtol=1e-6)

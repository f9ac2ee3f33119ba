"""LinearMixedModel(response_transform=...): the exact and variational LMM of log(y), answering on y's scale."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate

import dmlmm
from dmlmm import DataError, LinearMixedModel, SplineBasis

FORMULA = "y ~ t + (t | g)"


def _frame(seed: int = 0, n: int = 60, m: int = 6) -> pd.DataFrame:
    """A random-slope LMM drawn on the log scale: y = exp(z), positive and right-skewed."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n), m)
    t = np.tile(np.linspace(0.0, 1.0, m), n)
    z = 1.0 + rng.normal(0, 0.5, n)[g] + (0.8 + rng.normal(0, 0.3, n)[g]) * t + rng.normal(0, 0.2, n * m)
    return pd.DataFrame({"g": g, "t": t, "y": np.exp(z)})


@pytest.fixture(scope="module")
def positive() -> pd.DataFrame:
    return _frame()


@pytest.mark.parametrize("method", ["ml", "reml", "vb"])
def test_the_log_model_is_the_lmm_of_log_y(positive, method):
    """Same estimates as the model fitted to log(y); bands, means and draws are exp of its; scores gain
    the Jacobian -sum log y; the log-likelihood on the data's scale is loglik_ plus that Jacobian."""
    a = LinearMixedModel(FORMULA, method=method, response_transform="log").fit(positive)
    logged = positive.assign(y=np.log(positive["y"]))
    b = LinearMixedModel(FORMULA, method=method).fit(logged)
    assert a.response_transform_ == "log" and b.response_transform_ is None
    np.testing.assert_allclose(a.fixed_effects_, b.fixed_effects_, rtol=1e-12)
    np.testing.assert_allclose(a.cov_re_, b.cov_re_, rtol=1e-12)
    assert a.sigma2_ == pytest.approx(b.sigma2_, rel=1e-12) and a.loglik_ == pytest.approx(b.loglik_, rel=1e-12)
    rows = positive[positive["g"] < 4]
    new = pd.DataFrame({"t": [0.5, 1.5], "g": [1, 99]})  # a fitted subject, and one at the population level
    for kind in ("curve", "observation"):
        for data, data_b in ((rows, logged[logged["g"] < 4]), (new, new)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # subject 99 is predicted at the population level
                pa, pb = a.predict_trajectory(data, kind=kind), b.predict_trajectory(data_b, kind=kind)
            for col in ("mean", "lower", "upper"):
                np.testing.assert_allclose(pa[col], np.exp(pb[col]), rtol=1e-10)
    sa = a.sample_trajectories(rows, n_samples=30, kind="observation", random_state=5)
    sb = b.sample_trajectories(logged[logged["g"] < 4], n_samples=30, kind="observation", random_state=5)
    np.testing.assert_allclose(sa["value"], np.exp(sb["value"]), rtol=1e-10)
    jac = -logged.groupby("g")["y"].sum()
    np.testing.assert_allclose(a.score_samples(positive), b.score_samples(logged) + jac.to_numpy(), rtol=1e-12)
    held, train = positive[positive["t"] == 1.0], positive[positive["t"] < 1.0]
    held_jac = -np.log(held["y"]).groupby(held["g"]).sum()
    np.testing.assert_allclose(
        a.score_samples(held, condition_on=train),
        b.score_samples(logged[logged["t"] == 1.0], condition_on=logged[logged["t"] < 1.0]) + held_jac.to_numpy(),
        rtol=1e-10)
    if method == "reml":
        assert a.loglik_data_scale_ is None
    else:
        assert a.loglik_data_scale_ == pytest.approx(b.loglik_ + jac.sum(), rel=1e-12)
    assert "Response modelled as log(y)" in a.summary()


def test_the_predictive_density_of_a_held_out_visit_integrates_to_one_and_its_band_holds_its_share():
    """Independent of the code's Jacobian: integrate the density of one held-out y numerically."""
    df = _frame(1)
    model = LinearMixedModel(FORMULA, method="ml", response_transform="log").fit(df[df["t"] < 1.0])
    subject_rows = df[(df["g"] == 3) & (df["t"] < 1.0)]
    t_new = float(df["t"].max())

    def density(y: float) -> float:
        held = pd.DataFrame({"g": [3], "t": [t_new], "y": [y]})
        return float(np.exp(model.score_samples(held, condition_on=subject_rows).iloc[0]))

    band = model.predict_trajectory(pd.DataFrame({"g": [3], "t": [t_new]}), kind="observation", interval=0.95)
    lo, hi = float(band["lower"].iloc[0]), float(band["upper"].iloc[0])
    total = integrate.quad(density, 0, lo, limit=200)[0] + integrate.quad(density, lo, hi, limit=200)[0] \
        + integrate.quad(density, hi, np.inf, limit=200)[0]
    inside = integrate.quad(density, lo, hi, limit=200)[0]
    assert total == pytest.approx(1.0, abs=2e-3)
    assert inside == pytest.approx(0.95, abs=3e-3)


@pytest.mark.parametrize("method", ["ml", "vb"])
def test_auto_keeps_the_scale_with_the_higher_likelihood_of_y_as_given(positive, method):
    """Log-normal data: log wins; a Gaussian response shifted above zero: the response as given wins.
    Each criterion is the explicit fit's (log-likelihood or ELBO plus the Jacobian)."""
    auto = LinearMixedModel(FORMULA, method=method, response_transform="auto").fit(positive)
    none = LinearMixedModel(FORMULA, method=method).fit(positive)
    log = LinearMixedModel(FORMULA, method=method, response_transform="log").fit(positive)
    crit = (lambda m: m.elbo_ + (-np.log(positive["y"]).sum() if m.response_transform_ else 0.0)) if method == "vb" \
        else (lambda m: m.loglik_data_scale_)
    assert auto.criterion_by_transform_ == pytest.approx({"none": crit(none), "log": crit(log)}, rel=1e-12)
    assert auto.response_transform_ == "log" and crit(log) > crit(none) + 50
    assert auto.loglik_ == pytest.approx(log.loglik_, rel=1e-12)
    gaussian = positive.assign(y=np.log(positive["y"]) + 10.0)  # Gaussian, all positive
    kept = LinearMixedModel(FORMULA, method=method, response_transform="auto").fit(gaussian)
    assert kept.response_transform_ is None and set(kept.criterion_by_transform_) == {"none", "log"}
    assert kept.criterion_by_transform_["none"] > kept.criterion_by_transform_["log"]


def test_auto_with_reml_chooses_by_ml_then_fits_reml(positive):
    auto = LinearMixedModel(FORMULA, method="reml", response_transform="auto").fit(positive)
    ml_none = LinearMixedModel(FORMULA, method="ml").fit(positive)
    ml_log = LinearMixedModel(FORMULA, method="ml", response_transform="log").fit(positive)
    reml_log = LinearMixedModel(FORMULA, method="reml", response_transform="log").fit(positive)
    assert auto.criterion_by_transform_ == pytest.approx(
        {"none": ml_none.loglik_data_scale_, "log": ml_log.loglik_data_scale_}, rel=1e-12)
    assert auto.method_ == "reml" and auto.response_transform_ == "log"
    assert auto.loglik_ == pytest.approx(reml_log.loglik_, rel=1e-12)
    np.testing.assert_allclose(auto.fixed_effects_, reml_log.fixed_effects_, rtol=1e-12)


def test_auto_fits_a_response_with_negative_values_as_given():
    df = _frame(2).assign(y=lambda d: np.log(d["y"]) - 1.5)
    assert (df["y"] < 0).any()
    m = LinearMixedModel(FORMULA, method="ml", response_transform="auto").fit(df)
    assert m.response_transform_ is None and list(m.criterion_by_transform_) == ["none"]
    assert m.loglik_data_scale_ == pytest.approx(m.loglik_, rel=1e-12)
    assert "Response modelled" not in m.summary()


def test_the_bound_on_the_data_scale_moves_by_the_change_of_units(positive):
    """y in other units (x 1000): the log model is the same up to its intercept, and its log-likelihood
    of y as given moves by exactly -n log 1000 (the Jacobian), whatever the code does inside."""
    a = LinearMixedModel(FORMULA, method="ml", response_transform="log").fit(positive)
    b = LinearMixedModel(FORMULA, method="ml", response_transform="log").fit(positive.assign(y=positive["y"] * 1000))
    assert b.loglik_data_scale_ - a.loglik_data_scale_ == pytest.approx(-len(positive) * np.log(1000), abs=1e-5)


def test_log1p_takes_zeros_and_log_refuses_them_naming_the_column():
    df = _frame(3)
    df.loc[df.index[::7], "y"] = 0.0
    m = LinearMixedModel(FORMULA, method="ml", response_transform="log1p").fit(df)
    assert m.response_transform_ == "log1p"
    assert (m.predict_trajectory(df.head(6), kind="observation")["lower"] > -1).all()
    with pytest.raises(DataError, match=r"column 'y' has \d+ value\(s\) <= 0 .*log1p"):
        LinearMixedModel(FORMULA, method="ml", response_transform="log").fit(df)
    auto = LinearMixedModel(FORMULA, method="ml", response_transform="auto").fit(df)
    assert set(auto.criterion_by_transform_) == {"none", "log1p"}
    with pytest.raises(ValueError, match="response_transform must be"):
        LinearMixedModel(FORMULA, response_transform="sqrt").fit(df)


def test_longitudinal_form_and_saving_keep_the_scale(tmp_path):
    df = _frame(4).rename(columns={"g": "id"})
    m = LinearMixedModel(basis=SplineBasis(5), method="ml", response_transform="log").fit(
        df, subject="id", time="t", response="y")
    pred = m.predict_trajectory(times=np.linspace(0, 1, 5), level="population")
    assert (pred["lower"] > 0).all()
    m.save(tmp_path / "m.dmlmm")
    back = dmlmm.load(tmp_path / "m.dmlmm")
    assert back.response_transform_ == "log" and back.criterion_by_transform_ == m.criterion_by_transform_
    assert back.loglik_data_scale_ == m.loglik_data_scale_
    rows = df[df["id"] < 3]
    pd.testing.assert_frame_equal(back.predict_trajectory(rows, kind="observation"),
                                  m.predict_trajectory(rows, kind="observation"))
    pd.testing.assert_series_equal(back.score_samples(rows), m.score_samples(rows))


def test_summaries_say_which_scale_their_criteria_are_on():
    """A fit on log(y) reports its log-likelihood (LinearMixedModel) or ELBO (mixtures) of the scale modelled next
    to the one of y as given, labelled: the report showed an unlabelled ELBO of the standardised scale beside the
    data-scale one of its header, and the command line an unlabelled log-likelihood of log(y)."""
    import warnings

    import numpy as np
    import pandas as pd

    from dmlmm import LinearMixedModel, MixtureLMM

    rng = np.random.default_rng(0)
    df = pd.DataFrame({"subject": np.repeat(np.arange(30), 5), "time": np.tile(np.arange(5.0), 30)})
    df["y"] = np.exp(rng.normal(0, 0.3, 30).repeat(5) + 0.1 * df["time"] + rng.normal(0, 0.1, len(df)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ml = LinearMixedModel(method="ml", response_transform="log").fit(df)
        reml = LinearMixedModel(method="reml", response_transform="log").fit(df)
        mix = MixtureLMM(2, random_state=0, max_iter=50).fit(df)
    assert f"(logLik of log(y), the scale modelled; of y as given: {ml.loglik_data_scale_:.3f})" in ml.summary()
    assert ml.loglik_data_scale_ != ml.loglik_
    assert f"REML log-likelihood of log(y): {reml.loglik_:.4f}" in reml.summary()
    assert (f"ELBO {mix.elbo_:.3f} on the model's standardised scale ({mix.elbo_data_scale_:.2f} on the data's scale"
            in mix.summary())

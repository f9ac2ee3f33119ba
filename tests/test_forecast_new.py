"""Forecasts for new patients: from covariates alone, and from a few early visits, in Python and on the CLI."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dmlmm import MixtureLMM
from dmlmm.cli import main
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def fitted():
    d = dgp1(0, n_subjects=80).data
    d["trt"] = np.where(d["subject"] % 2 == 0, "A", "B")
    d["y"] = d["y"] + np.where(d["trt"] == "A", 1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(3, random_state=0).fit(d, covariates=["trt"])
    return m, d


def test_new_patients_from_covariates_alone(fitted):
    m, _ = fitted
    new = pd.DataFrame({"subject": ["newA", "newB"], "time": [0.5, 0.5], "trt": ["A", "B"]})  # no response column
    grid = np.array([0.1, 0.5, 0.9])
    tr = m.predict_trajectory(new, times=grid)
    pop = m.predict_trajectory(None, times=grid)
    a, b = tr[tr.subject == "newA"], tr[tr.subject == "newB"]
    # the population curve shifted by each patient's own covariate effect, the band as wide as the population's
    assert len(m.fixed_effects_) == 1 and "B" in m.fixed_effects_.index[0]  # the effect of B against A
    effect_b = m.fixed_effects_.iloc[0]
    np.testing.assert_allclose(a["mean"].to_numpy() - b["mean"].to_numpy(), -effect_b, rtol=1e-8)
    assert effect_b == pytest.approx(-1.0, abs=0.3)  # simulated: A is 1 higher
    assert (a["upper"] - a["lower"]).to_numpy() == pytest.approx((pop["upper"] - pop["lower"]).to_numpy(), rel=0.05)
    assert tr["beyond_last_visit"].all()  # nothing observed: all of it is a forecast
    proba = m.predict_proba(new)  # no observations: the prior weights
    np.testing.assert_allclose(proba.to_numpy(), np.tile(m.clusters_["weight"].to_numpy(), (2, 1)), atol=1e-12)


def test_rows_without_response_are_times_to_predict_at(fitted):
    m, d = fitted
    s0 = d[d.subject == 0]
    early = s0[s0.time < 0.5]
    future = pd.DataFrame({"subject": [0, 0], "time": [0.7, 0.9], "y": [np.nan, np.nan], "trt": ["A", "A"]})
    grid = np.array([0.3, 0.7, 0.9])
    with_future = m.predict_trajectory(pd.concat([early, future]), times=grid)
    only_early = m.predict_trajectory(early, times=grid)
    pd.testing.assert_frame_equal(with_future, only_early)
    assert with_future["beyond_last_visit"].tolist() == list(grid > early.time.max())


def test_population_level_ignores_the_responses_at_the_subjects_covariates(fitted):
    """``level="population"``: each subject's population curve at its own covariates, as for a
    patient given by covariates alone; draws agree with the bands' mixture (Monte Carlo)."""
    m, d = fitted
    rows = d[d["subject"].isin([0, 1])]  # subject 0 in arm A, 1 in arm B, with their visits
    grid = np.array([0.1, 0.5, 0.9])
    pop = m.predict_trajectory(rows, times=grid, level="population")
    alone = m.predict_trajectory(rows.drop(columns="y"), times=grid)
    for col in ("mean", "lower", "upper"):
        np.testing.assert_allclose(pop[col].to_numpy(), alone[col].to_numpy(), rtol=1e-12)
    assert not pop["beyond_last_visit"].any()  # a population curve is no forecast from visits
    own = m.predict_trajectory(rows, times=grid)
    assert ((own["upper"] - own["lower"]) < 0.8 * (pop["upper"] - pop["lower"])).all()  # the visits narrow it
    draws = m.sample_trajectories(rows, times=grid, level="population", n_samples=4000, random_state=0)
    mc = draws.groupby(["subject", "time"])["value"].agg(["mean", "std"])
    gap = np.abs(mc["mean"].to_numpy() - pop["mean"].to_numpy())
    assert (gap < 4 * mc["std"].to_numpy() / np.sqrt(4000)).all()
    with pytest.raises(ValueError, match=r"^level must be 'subject' or 'population', got 'cluster'$"):
        m.predict_trajectory(rows, level="cluster")
    with pytest.raises(ValueError, match=r"^level must be 'subject' or 'population', got 'cluster'$"):
        m.sample_trajectories(rows, level="cluster")


def test_cli_predict_accepts_rows_without_a_response(fitted, tmp_path):
    m, d = fitted
    model_file = tmp_path / "model.dmlmm"
    m.save(model_file)
    new = tmp_path / "new.csv"
    pd.DataFrame({"subject": ["n1", "n1"], "time": [0.2, 0.4], "trt": ["A", "A"]}).to_csv(new, index=False)
    res = CliRunner().invoke(main, ["predict", str(model_file), str(new), "--times", "0.1,0.5"])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(pd.io.common.StringIO(res.stdout))
    expected = m.predict_trajectory(pd.DataFrame({"subject": ["n1"], "time": [0.2], "trt": ["A"]}), times=[0.1, 0.5])
    np.testing.assert_allclose(out["mean"], expected["mean"], rtol=1e-9)


def test_cli_predict_population_level(fitted, tmp_path):
    """``dmlmm predict --level population``: the population curves at the subjects' covariates and the
    prior cluster weights, the same numbers as the Python call; for a LinearMixedModel too."""
    from dmlmm import LinearMixedModel, SplineBasis

    m, d = fitted
    model_file = tmp_path / "model.dmlmm"
    m.save(model_file)
    rows = d[d["subject"].isin([0, 1])]
    data = tmp_path / "rows.csv"
    rows.to_csv(data, index=False)
    res = CliRunner().invoke(main, ["predict", str(model_file), str(data), "--times", "0.1,0.5", "--level", "population"])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(pd.io.common.StringIO(res.stdout))
    expected = m.predict_trajectory(rows, times=[0.1, 0.5], level="population")
    np.testing.assert_allclose(out["mean"], expected["mean"], rtol=1e-9)
    np.testing.assert_allclose(out["upper"], expected["upper"], rtol=1e-9)
    assert not out["beyond_last_visit"].any()
    # the cluster columns: the most probable cluster under the prior weights, with its prior probability
    assert np.allclose(out["probability"], m.clusters_["weight"].max(), atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lmm = LinearMixedModel(basis=SplineBasis(6)).fit(d, subject="subject", time="time", response="y")
    lmm_file = tmp_path / "lmm.dmlmm"
    lmm.save(lmm_file)
    res = CliRunner().invoke(main, ["predict", str(lmm_file), str(data), "--times", "0.1,0.5", "--level", "population"])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(pd.io.common.StringIO(res.stdout))
    np.testing.assert_allclose(out["mean"], lmm.predict_trajectory(rows, times=[0.1, 0.5], level="population")["mean"],
                               rtol=1e-9)

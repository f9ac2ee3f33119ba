"""dmlmm.check_bands: the last-visit check of forecast bands."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import simulate_spline_lmm

from dmlmm import CalibrationWarning, LinearMixedModel, SplineBasis, check_bands
from dmlmm.calibration import _wilson


def _model():
    return LinearMixedModel(method="ml", basis=SplineBasis(5, lower=0.0, upper=1.0))


@pytest.fixture(scope="module")
def data():
    df, _ = simulate_spline_lmm(n_subjects=400, n_basis=5, min_obs=3, max_obs=10, seed=11)
    return df


def test_bands_of_the_true_model_hold_their_level(data):
    """Data simulated from the model that is fitted: coverage of the held-out last visits near 95 %
    (the Wilson interval holds 0.95), no warning, and one row per subject's last visit."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        check = check_bands(model, data, subject="id", time="t", response="y")
    assert not hasattr(model, "n_iter_")  # the model given is not fitted
    last = data.loc[data.groupby("id")["t"].transform("max") == data["t"]]
    assert check.n == len(last) == 400
    assert set(check.table["subject"]) == set(last["id"])
    assert check.interval[0] <= 0.95 <= check.interval[1] and not check.too_narrow
    assert check.log_scale is None  # bands that hold are not checked again on the log scale
    assert check.below + check.above == pytest.approx(1 - check.coverage)
    assert (check.table["horizon"] > 0).all()
    assert check.by_horizon["observations"].sum() == 400
    assert "95 % forecast bands of each subject's last visit" in check.summary()


def test_shifted_last_visits_are_flagged(data):
    """Last visits moved up by three residual SDs (as if subjects left when their marker rose):
    the bands miss them, on the upper side, and the check warns."""
    shifted = data.copy()
    last = shifted.groupby("id")["t"].transform("max") == shifted["t"]
    shifted.loc[last, "y"] += 3 * 0.3
    with pytest.warns(CalibrationWarning, match=r"^95 % bands held .* of the 400 held-out last visits"):
        check = check_bands(_model(), shifted, subject="id", time="t", response="y")
    assert check.too_narrow and check.above > check.below
    assert "too narrow" in check.summary()


def test_wilson_interval_matches_the_closed_form():
    lo, hi = _wilson(90, 100)
    z = 1.959963984540054
    p, n = 0.9, 100
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert (lo, hi) == pytest.approx((centre - half, centre + half), rel=1e-12)


def test_bad_arguments_are_named(data):
    with pytest.raises(ValueError, match=r"level must be a number in \(0, 1\), e.g. 0.95, got 95"):
        check_bands(_model(), data, subject="id", time="t", level=95)
    with pytest.raises(ValueError, match="min_visits must be an integer of at least 2"):
        check_bands(_model(), data, subject="id", time="t", min_visits=1)
    with pytest.raises(ValueError, match="response column 'value' is not in the data"):
        check_bands(_model(), data, subject="id", time="t", response="value")
    with pytest.raises(ValueError, match="check_bands needs a model of the longitudinal form"):
        check_bands(LinearMixedModel("y ~ t + (t | id)"), data, subject="id", time="t")
    few = data[data["id"].isin(data["id"].unique()[:5])]
    with pytest.raises(ValueError, match="the data have 5 subjects: too few last visits to check the bands"):
        check_bands(_model(), few, subject="id", time="t")
    once = data.groupby("id").head(1)  # every subject seen once but five of them
    once = pd.concat([once, data[data["id"].isin(data["id"].unique()[:5])]]).drop_duplicates()
    with pytest.raises(ValueError, match=r"only 5 of the 400 subjects have at least 2 distinct visit times"):
        check_bands(_model(), once, subject="id", time="t")


def test_too_wide_bands_are_flagged(data):
    """Last visits moved to the mean of their forecast: every band holds its visit, the coverage's interval
    lies above 95 %, and the check says the bands are wider than the errors need (with their width)."""
    check = check_bands(_model(), data, subject="id", time="t", response="y", warn=False)
    moved = data.copy()
    last = moved.groupby("id")["t"].transform("max") == moved["t"]
    forecast = check.table.set_index(["subject", "time"])["mean"]
    moved.loc[last, "y"] = forecast.reindex(pd.MultiIndex.from_frame(moved.loc[last, ["id", "t"]])).to_numpy()
    with pytest.warns(CalibrationWarning, match=r"bands are wider than the forecasts' errors need \(median width"):
        wide = check_bands(_model(), moved, subject="id", time="t", response="y")
    assert wide.too_wide and not wide.too_narrow and wide.coverage == 1.0
    assert "too wide" in wide.summary()
    assert not check.too_wide  # the true model's bands: neither


def test_cli_check_bands_writes_band_check_csv(tmp_path):
    """`dmlmm fit --check-bands`: band_check.csv (one row per held-out last visit, the subject and
    time columns under their names in the data) and the summary."""
    import html

    import pandas as pd
    from click.testing import CliRunner

    from dmlmm.cli import main
    from dmlmm.simulate import dgp1

    path = tmp_path / "d.csv"
    dgp1(0, n_subjects=60).data.rename(columns={"subject": "id", "time": "age"}).to_csv(path, index=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["fit", str(path), "--subject", "id", "--time", "age", "--model", "lmm",
                                  "--n-basis", "6", "--check-bands", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    table = pd.read_csv(out / "band_check.csv")
    assert len(table) == 60 and {"id", "age", "observed", "lower", "upper", "inside"} <= set(table.columns)
    assert "95 % forecast bands of each subject's last visit, held out" in r.output
    # the report shows the check too (it was only printed), with the same sentence and numbers
    page = html.unescape((out / "report.html").read_text())
    first = next(line for line in r.output.splitlines() if "forecast bands of each subject's last visit" in line)
    assert "Band check (--check-bands, band_check.csv)" in page and first.strip() in page


def _shifted_positive(data):
    """The shifted last visits of test_shifted_last_visits_are_flagged, moved above zero."""
    out = data.copy()
    last = out.groupby("id")["t"].transform("max") == out["t"]
    out.loc[last, "y"] += 3 * 0.3
    out["y"] += 1.0 - out["y"].min()  # all >= 1
    return out


def test_too_narrow_bands_of_a_positive_response_are_checked_on_the_log_scale(data):
    """Bands too narrow, response never negative, no transform given: the check is run once more on
    log(y); its result is the check of the log-transformed data made directly (transform named), and
    the summary and the warning report it."""
    positive = _shifted_positive(data)
    with pytest.warns(CalibrationWarning, match=r"Fitted to log\(y\) instead, the bands held"):
        check = check_bands(_model(), positive, subject="id", time="t")
    assert check.too_narrow and check.log_transform == "log"
    logged = positive.assign(y=np.log(positive["y"]))
    direct = check_bands(_model(), logged, subject="id", time="t", transform="log", warn=False)
    assert direct.log_scale is None  # a transform already applied: no second check
    assert check.log_scale.coverage == direct.coverage
    assert check.log_scale.table["observed"].to_numpy() == pytest.approx(np.log(check.table["observed"].to_numpy()))
    assert f"Fitted to log(y) instead, the bands held {100 * direct.coverage:.1f} %" in check.summary()


def test_log_scale_check_uses_log1p_with_zeros_and_never_with_negatives(data):
    positive = _shifted_positive(data)
    positive.loc[positive.index[0], "y"] = 0.0
    check = check_bands(_model(), positive, subject="id", time="t", warn=False)
    assert check.too_narrow and check.log_transform == "log1p"
    direct = check_bands(_model(), positive.assign(y=np.log1p(positive["y"])), subject="id", time="t",
                         transform="log1p", warn=False)
    assert check.log_scale.coverage == direct.coverage
    negative = positive.copy()
    negative.loc[negative.index[0], "y"] = -0.5
    check = check_bands(_model(), negative, subject="id", time="t", warn=False)
    assert check.too_narrow and check.log_scale is None and check.log_transform is None
    assert "Fitted to" not in check.summary()


def test_a_model_with_its_own_transform_is_not_checked_again(data):
    """A model fitted with response_transform: its bands are on the response's scale already, and
    the log-scale check does not run however they fare."""
    from dmlmm import MixtureLMM

    positive = _shifted_positive(data)
    model = MixtureLMM(1, basis=SplineBasis(5, lower=0.0, upper=1.0), response_transform="log", random_state=0)
    check = check_bands(model, positive, subject="id", time="t", warn=False)
    assert check.log_scale is None
    logged = positive.assign(y=np.log(positive["y"]))
    direct = check_bands(MixtureLMM(1, basis=SplineBasis(5, lower=0.0, upper=1.0), response_transform=None,
                                    random_state=0), logged,
                         subject="id", time="t", warn=False)
    assert check.coverage == direct.coverage  # the same bands, mapped back


def test_warnings_of_the_refit_say_they_come_from_it(data):
    """The refit without the last visits forecasts beyond its own data where a basis is fitted to the training
    times (the default SplineBasis()): its extrapolation warning reaches the user once, saying which fit made it."""
    model = LinearMixedModel(method="ml", basis=SplineBasis(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_bands(model, data, subject="id", time="t", response="y", warn=False)
    refit = [w for w in caught if "check_bands, refitting without each subject's last visit" in str(w.message)]
    assert refit, [str(w.message) for w in caught]
    assert all(str(w.message).startswith("check_bands, refitting without each subject's last visit and forecasting "
                                         "it: ") for w in caught)
    assert len({str(w.message) for w in refit}) == len(refit)  # each once
    assert any("beyond" in str(w.message) or "extrapolat" in str(w.message) for w in refit)
    assert all(w.filename == __file__ for w in refit)


def test_missing_values_are_dropped_once_with_dropna(data):
    holed = data.copy()
    holed.loc[holed.index[[4, 9]], "y"] = np.nan
    with pytest.raises(Exception, match=r"missing or infinite values"):
        check_bands(_model(), holed, subject="id", time="t", response="y", warn=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = check_bands(_model(), holed, subject="id", time="t", response="y", warn=False, dropna=True)
    said = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert len(said) == 1 and said[0].startswith(f"dropped 2 of {len(holed)} row(s) with missing or infinite values")
    clean = check_bands(_model(), holed.dropna(subset=["y"]), subject="id", time="t", response="y", warn=False)
    assert check.coverage == clean.coverage and check.n == clean.n


def test_cli_check_bands_refuses_small_data_before_the_fit(tmp_path, monkeypatch):
    """--check-bands on 3 subjects: refused before the fit (which it ran in full before refusing), with no
    output folder left behind."""
    from click.testing import CliRunner

    import dmlmm.cli as cli

    path = tmp_path / "d.csv"
    path.write_text("subject,time,y\n1,0,0\n1,1,1\n2,0,1\n2,1,2\n3,0,0.5\n3,1,0.2\n")

    def no_fit(*a, **k):
        raise AssertionError("fitted before the check")

    monkeypatch.setattr(cli, "_fit_model", no_fit)
    r = CliRunner().invoke(cli.main, ["fit", str(path), "--model", "lmm", "--check-bands", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "--check-bands: the data have 3 subjects: too few last visits" in r.output
    assert not (tmp_path / "o").exists()

"""response_transform: a model of log(y) or log1p(y) whose curves, bands, draws and scores are on y's scale."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import simulate_spline_lmm

import dmlmm
from dmlmm import DataError, MixtureLMM, SplineBasis
from dmlmm.response_transform import check_transform

pytestmark = pytest.mark.filterwarnings("ignore::dmlmm.EmptyComponentWarning")  # one cluster in these data


def _model(**kw):
    return MixtureLMM(2, basis=SplineBasis(5, lower=0.0, upper=1.0), random_state=0, max_iter=300, **kw)


@pytest.fixture(scope="module")
def positive():
    """A spline LMM on the log scale: y = exp(z), right-skewed and positive."""
    df, _ = simulate_spline_lmm(n_subjects=80, n_basis=5, min_obs=3, max_obs=8, seed=3)
    return df.assign(y=np.exp(df["y"] - df["y"].mean()))


@pytest.fixture(scope="module")
def fits(positive):
    """The same model fitted with response_transform="log" and to log(y) directly."""
    return _model(response_transform="log").fit(positive, subject="id", time="t"), \
        _model(response_transform=None).fit(positive.assign(y=np.log(positive["y"])), subject="id", time="t")


def test_the_log_model_is_the_gaussian_model_of_log_y(positive, fits):
    """Same fit (ELBO, clusters); bands, means and draws are exp of the log model's; densities
    gain the Jacobian -sum log y; coefficients stay on the log scale."""
    a, b = fits
    assert a.elbo_ == pytest.approx(b.elbo_, rel=1e-12)
    np.testing.assert_allclose(a.responsibilities_.to_numpy(), b.responsibilities_.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(a.random_effects_.to_numpy(), b.random_effects_.to_numpy(), atol=1e-12)
    assert a.sigma2_ == pytest.approx(b.sigma2_, rel=1e-12)
    some = positive[positive["id"].isin(positive["id"].unique()[:5])]
    logged = some.assign(y=np.log(some["y"]))
    t = np.linspace(0, 1, 7)
    for kind in ("curve", "observation"):
        pa = a.predict_trajectory(some, times=t, kind=kind)
        pb = b.predict_trajectory(logged, times=t, kind=kind)
        for col in ("mean", "lower", "upper"):
            np.testing.assert_allclose(pa[col], np.exp(pb[col]), rtol=1e-10)
    sa = a.sample_trajectories(some, times=t, n_samples=20, kind="observation", random_state=4)
    sb = b.sample_trajectories(logged, times=t, n_samples=20, kind="observation", random_state=4)
    np.testing.assert_allclose(sa["value"], np.exp(sb["value"]), rtol=1e-10)
    jac = -logged.groupby("id")["y"].sum()
    np.testing.assert_allclose(a.score_samples(some), b.score_samples(logged) + jac.loc[a.score_samples(some).index],
                               rtol=1e-12)
    for col in ("mean", "lower", "upper", "mean_lower", "mean_upper"):
        np.testing.assert_allclose(a.cluster_means_[col], np.exp(b.cluster_means_[col]), rtol=1e-10)
    assert "residual SD" in a.summary() and "on the log scale" in a.summary()
    assert "response modelled as log(y); curves and bands on the data's scale" in a.summary()
    assert a.response_transform_ == "log" and b.response_transform_ is None
    assert a.elbo_by_transform_ == {"log": a.elbo_data_scale_}
    # the bounds on the data's scale differ by the Jacobian of the log: sum of -log y
    n = len(positive)
    assert a.elbo_data_scale_ == pytest.approx(a.elbo_ - n * np.log(a.design_.y_scale) - np.log(positive["y"]).sum(),
                                               rel=1e-12)


def test_the_predictive_density_of_y_integrates_to_one_and_its_band_holds_95_percent(positive, fits):
    """One held-out visit of a subject, its density on y's scale from score_samples(condition_on=)
    integrated numerically over y: total 1, and 0.95 between the band's ends (the Jacobian and the
    back-transformed quantiles checked against each other and against a closed form)."""
    a, _ = fits
    rows = positive[positive["id"] == positive["id"].iloc[0]]
    train, t_new = rows.iloc[:-1], float(rows["t"].iloc[-1])
    band = a.predict_trajectory(train, times=[t_new], kind="observation")
    lo, hi = float(band["lower"].iloc[0]), float(band["upper"].iloc[0])
    z = np.linspace(np.log(lo) - 6 * (np.log(hi) - np.log(lo)), np.log(hi) + 6 * (np.log(hi) - np.log(lo)), 4001)
    y = np.exp(z)
    yy = y[::4]
    # one call for the 1,001 values: copy j of the subject has its training visits and the value yy[j]
    # (1,001 calls of one row each made this among the suite's slowest tests)
    copies = [f"copy{j}" for j in range(len(yy))]
    grid = pd.DataFrame({"id": copies, "t": t_new, "y": yy})
    seen = pd.concat([train.assign(id=c) for c in copies], ignore_index=True)
    dens = np.exp(a.score_samples(grid, condition_on=seen).loc[copies].to_numpy())
    mid = len(yy) // 2
    one = a.score_samples(pd.DataFrame({"id": [rows["id"].iloc[0]], "t": [t_new], "y": [yy[mid]]}), condition_on=train)
    assert np.log(dens[mid]) == pytest.approx(one.iloc[0], rel=1e-12)  # the copies are the subject
    assert np.trapezoid(dens, yy) == pytest.approx(1.0, abs=2e-3)
    inside = (yy >= lo) & (yy <= hi)
    assert np.trapezoid(dens[inside], yy[inside]) == pytest.approx(0.95, abs=3e-3)


def test_log1p_takes_zeros(positive):
    """log1p: zeros allowed; the band is expm1 of the log1p model's."""
    data = positive.assign(y=positive["y"] - positive["y"].min())  # one zero
    a = _model(response_transform="log1p").fit(data, subject="id", time="t")
    b = _model(response_transform=None).fit(data.assign(y=np.log1p(data["y"])), subject="id", time="t")
    pa = a.predict_trajectory(data, times=[0.5], kind="observation")
    pb = b.predict_trajectory(data.assign(y=np.log1p(data["y"])), times=[0.5], kind="observation")
    np.testing.assert_allclose(pa[["lower", "upper"]], np.expm1(pb[["lower", "upper"]]), rtol=1e-10)
    np.testing.assert_allclose(a.score_samples(data),
                               b.score_samples(data.assign(y=np.log1p(data["y"])))
                               - np.log1p(data["y"]).groupby(data["id"]).sum().loc[a.subjects_], rtol=1e-12)


def test_values_outside_the_domain_are_named(positive, fits):
    zero = positive.copy()
    zero.loc[zero.index[3], "y"] = 0.0
    msg = (r"^response_transform='log' needs response values above 0, but column 'y' has 1 value\(s\) <= 0 "
           r"\(the first is 0\); use response_transform='log1p' for zeros, or drop those rows$")
    with pytest.raises(DataError, match=msg):
        _model(response_transform="log").fit(zero, subject="id", time="t")
    neg = positive.assign(y=positive["y"] - 5.0)
    with pytest.raises(DataError, match=r"response_transform='log1p' needs response values above -1, but column 'y'"):
        _model(response_transform="log1p").fit(neg, subject="id", time="t")
    # a fitted model's transform is no longer a choice: the message says what the model was fitted on (the command
    # line's predict, which has no --transform, advised "use --transform log1p")
    with pytest.raises(DataError, match=r"^this model was fitted on log\(y\): the responses given must be above 0, but "
                                        r"column 'y' has 1 value\(s\) <= 0 \(the first is 0\); drop those rows, or fit "
                                        r"again with response_transform='log1p', which takes zeros$"):
        fits[0].predict_trajectory(zero.iloc[:5], times=[0.5])
    with pytest.raises(ValueError, match=r"^response_transform must be 'auto', None, 'log' or 'log1p', got 'sqrt'$"):
        _model(response_transform="sqrt").fit(positive, subject="id", time="t")
    with pytest.raises(ValueError, match=r"^response_transform must be 'auto', None, 'log' or 'log1p', got 'exp'$"):
        check_transform("exp")
    assert check_transform("none") is None


def test_a_saved_model_keeps_its_transform(positive, fits, tmp_path):
    a, _ = fits
    a.save(tmp_path / "m.dmlmm")
    back = dmlmm.load(tmp_path / "m.dmlmm")
    assert back.response_transform == "log" and back.design_.transform == "log"
    some = positive[positive["id"].isin(positive["id"].unique()[:4])]
    pd.testing.assert_frame_equal(back.predict_trajectory(some, times=[0.2, 0.8]),
                                  a.predict_trajectory(some, times=[0.2, 0.8]))
    np.testing.assert_allclose(back.score_samples(some), a.score_samples(some), rtol=1e-12)


def test_auto_keeps_the_scale_with_the_higher_bound_on_the_data(positive, fits):
    """response_transform="auto" (the default): a positive response is fitted on the log scale and as
    given; the log scale's bound is the explicit fit's, the bound as given at most the explicit fit's (its
    run races the log scale's bound and stops once it cannot reach it: here 0.0024 nats short of
    convergence), and the log wins on data simulated on the log scale (recovery of the truth)."""
    auto = _model().fit(positive, subject="id", time="t")
    plain = _model(response_transform=None).fit(positive, subject="id", time="t")
    assert set(auto.elbo_by_transform_) == {"none", "log"}
    assert auto.elbo_by_transform_["log"] == pytest.approx(fits[0].elbo_data_scale_, rel=1e-12)
    assert auto.elbo_by_transform_["none"] <= plain.elbo_data_scale_ + 1e-9
    assert auto.elbo_by_transform_["none"] == pytest.approx(plain.elbo_data_scale_, rel=1e-4)
    assert auto.response_transform_ == "log" and auto.elbo_data_scale_ == max(auto.elbo_by_transform_.values())
    assert auto.elbo_by_transform_["log"] > auto.elbo_by_transform_["none"] + 10
    assert auto.elbo_ == pytest.approx(fits[0].elbo_, rel=1e-12)


def test_model_scale_elbo_inverts_the_bound_on_the_data_scale():
    """The bound another scale must beat, as an ELBO of this scale's standardised model: the inverse of
    data_scale_bound (a change of units n log y_scale and the transform's log-Jacobian)."""
    from dmlmm.response_transform import data_scale_bound, model_scale_elbo

    for elbo, n, y_scale, jac in [(-812.25, 340.0, 3.7, -95.5), (12.5, 20.0, 0.02, 0.0)]:
        bound = data_scale_bound(elbo, n, y_scale, jac)
        assert model_scale_elbo(bound, n, y_scale, jac) == pytest.approx(elbo, rel=1e-14)
    assert model_scale_elbo(-100.0, 10.0, np.e, -3.0) == pytest.approx(-100.0 + 10.0 + 3.0, rel=1e-14)


def test_the_scale_fitted_second_races_the_first_and_the_kept_fit_is_unchanged():
    """The log scale is fitted first (fitting_order); the response as given then races its bound and
    gives up once it cannot reach it: the kept fit is exactly the log scale's own, and the losing
    scale's bound lies below the bound of its full fit, never above (its runs are the full fit's,
    cut short)."""
    from dmlmm.models.fitting import fitting_order

    assert fitting_order([None, "log"]) == ["log", None] and fitting_order([None, "log1p"]) == ["log1p", None]
    assert fitting_order([None]) == [None] and fitting_order(["log"]) == ["log"]
    df, _ = simulate_spline_lmm(n_subjects=150, n_basis=5, min_obs=3, max_obs=8, seed=3)
    pos = df.assign(y=np.exp(2.0 * (df["y"] - df["y"].mean())))
    auto = _model().fit(pos, subject="id", time="t")
    log = _model(response_transform="log").fit(pos, subject="id", time="t")
    plain = _model(response_transform=None).fit(pos, subject="id", time="t")
    assert list(auto.elbo_by_transform_) == ["none", "log"]  # reported in the order of the candidates
    assert auto.response_transform_ == "log" and auto.elbo_ == log.elbo_
    np.testing.assert_array_equal(auto.responsibilities_.to_numpy(), log.responsibilities_.to_numpy())
    assert auto.elbo_by_transform_["log"] == log.elbo_data_scale_
    assert plain.elbo_data_scale_ - 10.0 < auto.elbo_by_transform_["none"] < plain.elbo_data_scale_


def test_auto_fits_a_response_with_negative_values_as_given():
    df, _ = simulate_spline_lmm(n_subjects=60, n_basis=5, min_obs=3, max_obs=8, seed=5)
    assert (df["y"] < 0).any()
    m = _model().fit(df, subject="id", time="t")
    assert m.response_transform_ is None and list(m.elbo_by_transform_) == ["none"]


def test_auto_keeps_a_gaussian_response_far_from_zero_as_given():
    """Gaussian on its own scale, positive: the response as given has the higher bound."""
    df, _ = simulate_spline_lmm(n_subjects=60, n_basis=5, min_obs=3, max_obs=8, seed=5)
    df = df.assign(y=df["y"] - df["y"].min() + 0.5)
    m = _model().fit(df, subject="id", time="t")
    assert set(m.elbo_by_transform_) == {"none", "log"}
    assert m.response_transform_ is None and m.elbo_by_transform_["none"] > m.elbo_by_transform_["log"] + 10


def test_the_bound_on_the_data_scale_moves_by_the_jacobian_of_a_change_of_units(positive):
    """Responses in other units (y * 1000): the same fit inside (standardised), and the bound on
    the data's scale lower by n log 1000, the Jacobian of the change of units."""
    df, _ = simulate_spline_lmm(n_subjects=60, n_basis=5, min_obs=3, max_obs=8, seed=5)
    a = _model().fit(df, subject="id", time="t")
    b = _model().fit(df.assign(y=1000 * df["y"]), subject="id", time="t")
    assert a.elbo_ == pytest.approx(b.elbo_, rel=1e-9)
    assert b.elbo_data_scale_ == pytest.approx(a.elbo_data_scale_ - len(df) * np.log(1000), rel=1e-9)


def test_a_longitudinal_input_is_on_the_users_scale_too(positive, fits):
    """Data given as a Longitudinal (not a frame) are the response as given, like a frame."""
    from dmlmm import Longitudinal

    a, _ = fits
    some = positive[positive["id"].isin(positive["id"].unique()[:4])]
    lon = Longitudinal.from_frame(some, "id", "t", "y")
    pd.testing.assert_frame_equal(a.predict_trajectory(lon, times=[0.3]), a.predict_trajectory(some, times=[0.3]))
    refit = _model(response_transform="log").fit(Longitudinal.from_frame(positive, "id", "t", "y"))
    assert refit.elbo_ == pytest.approx(a.elbo_, rel=1e-12)


def test_auto_raises_only_the_kept_scales_warnings(positive):
    """Both scales' fits stop at a tiny max_iter; the warnings are those of the scale kept, once."""
    import warnings

    def caught(**kw):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            m = MixtureLMM(2, basis=SplineBasis(5, lower=0.0, upper=1.0), random_state=0, max_iter=8, **kw).fit(
                positive, subject="id", time="t")
        return m, [(x.category.__name__, str(x.message)) for x in w]

    auto, w_auto = caught()
    kept, w_kept = caught(response_transform=auto.response_transform_)
    assert len(auto.elbo_by_transform_) == 2 and any(c == "ConvergenceWarning" for c, _ in w_auto)
    assert w_auto == w_kept


def test_values_past_the_largest_float_on_the_data_scale_are_said():
    """exp of a log-scale value above 709.8 is inf: said (bands and draws far past the data came back as inf
    without a word, their overflow silenced), and not for an input that is infinite already."""
    from dmlmm.response_transform import inverse

    with pytest.warns(RuntimeWarning, match=r"passed the largest floating-point number \(about 1.8e308: log scale"):
        y = inverse(np.array([1.0, 800.0]), "log")
    assert y[0] == np.e and np.isposinf(y[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isposinf(inverse(np.array([0.0, np.inf]), "log1p")).tolist() == [False, True]
        inverse(np.array([709.0]), "log")

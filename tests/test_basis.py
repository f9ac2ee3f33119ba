"""B-spline bases: partition of unity, knot layouts, Cox-de Boor values, persistence and range errors."""

from __future__ import annotations

import numpy as np
import pytest

from dmlmm.basis import SplineBasis, bspline_design
from dmlmm.exceptions import DataError, ExtrapolationWarning, NotFittedError


def cox_de_boor(x: float, knots: np.ndarray, j: int, k: int) -> float:
    """B_{j,k}(x) by the Cox-de Boor recursion (half-open intervals), written out independently."""
    if k == 0:
        return 1.0 if knots[j] <= x < knots[j + 1] else 0.0
    out = 0.0
    d1 = knots[j + k] - knots[j]
    if d1 > 0:
        out += (x - knots[j]) / d1 * cox_de_boor(x, knots, j, k - 1)
    d2 = knots[j + k + 1] - knots[j + 1]
    if d2 > 0:
        out += (knots[j + k + 1] - x) / d2 * cox_de_boor(x, knots, j + 1, k - 1)
    return out


def test_uniform_layout_sums_to_one_on_the_whole_range():
    b = SplineBasis(n_basis=10, lower=0.0, upper=1.0, knots="uniform").fit()
    x = np.linspace(0.0, 1.0, 401)
    X = b.transform(x)
    assert X.shape == (401, 10)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-12)
    assert (X >= -1e-14).all()
    np.testing.assert_allclose(np.diff(b.knots_), 1.0 / 7.0)  # equally spaced, extended beyond the range
    assert b.knots_[3] == pytest.approx(0.0) and b.knots_[10] == pytest.approx(1.0)


def test_reference_layout_does_not_sum_to_one_near_the_ends_and_equals_cox_de_boor():
    b = SplineBasis(n_basis=10, lower=0.0, upper=1.0, knots="reference").fit()
    inner = np.linspace(0.0, 1.0, 10)
    h = inner[1] - inner[0]
    np.testing.assert_allclose(b.knots_, np.r_[-2 * h, -h, inner, 1 + h, 1 + 2 * h])
    x = np.array([0.0, 0.03, 0.2, 0.5, 0.77, 0.97, 0.999])
    X = b.transform(x)
    ref = np.array([[cox_de_boor(v, b.knots_, j, 3) for j in range(10)] for v in x])
    np.testing.assert_allclose(X, ref, atol=1e-12)
    sums = X.sum(axis=1)
    assert sums[0] < 0.99 and sums[-1] < 0.99  # first / last knot interval under-supported
    mid = (x > inner[1]) & (x < inner[-2])
    np.testing.assert_allclose(sums[mid], 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="degree=3"):
        SplineBasis(n_basis=6, degree=2, lower=0.0, upper=1.0, knots="reference").fit()


def test_uniform_layout_equals_cox_de_boor():
    b = SplineBasis(n_basis=6, degree=2, lower=-1.0, upper=3.0, knots="uniform").fit()
    x = np.array([-1.0, -0.3, 0.9, 2.2, 2.99])
    ref = np.array([[cox_de_boor(v, b.knots_, j, 2) for j in range(6)] for v in x])
    np.testing.assert_allclose(b.transform(x), ref, atol=1e-12)


def test_clamped_layout():
    b = SplineBasis(n_basis=8, lower=0.0, upper=2.0, knots="clamped").fit()
    assert (b.knots_[:4] == 0.0).all() and (b.knots_[-4:] == 2.0).all()
    x = np.linspace(0.0, 2.0, 101)
    X = b.transform(x)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(X[0], np.eye(8)[0], atol=1e-12)  # interpolates at the ends
    np.testing.assert_allclose(X[-1], np.eye(8)[-1], atol=1e-12)


def test_range_from_data_and_knots_remembered():
    times = np.array([2.0, 5.0, 3.5, 9.0])
    b = SplineBasis(n_basis=7).fit(times)
    assert (b.lower_, b.upper_) == (2.0, 9.0)
    knots = b.knots_.copy()
    X1 = b.transform([4.0, 6.0])
    b2 = SplineBasis.from_dict(b.to_dict())  # persistence keeps the fitted knots
    np.testing.assert_array_equal(b2.knots_, knots)
    np.testing.assert_allclose(b2.transform([4.0, 6.0]), X1)
    np.testing.assert_allclose(b.transform([4.0, 6.0]), X1)  # evaluating new points does not refit
    np.testing.assert_array_equal(b.knots_, knots)
    assert b.column_names == [f"B{j}" for j in range(1, 8)]
    assert "n_basis=7" in repr(b)


def test_explicit_knot_vector():
    t = np.array([0, 0, 0, 0, 0.3, 0.6, 1, 1, 1, 1], dtype=float)
    b = SplineBasis(n_basis=6, knots=t).fit()
    assert (b.lower_, b.upper_) == (0.0, 1.0)
    x = np.array([0.1, 0.45, 0.8])
    ref = np.array([[cox_de_boor(v, t, j, 3) for j in range(6)] for v in x])
    np.testing.assert_allclose(b.transform(x), ref, atol=1e-12)
    with pytest.raises(ValueError, match="n_basis \\+ degree \\+ 1"):
        SplineBasis(n_basis=5, knots=t).fit()


def test_outside_the_range_continues_linearly_with_a_warning_or_raises():
    b = SplineBasis(n_basis=6, lower=0.0, upper=1.0, extrapolate=False).fit()
    with pytest.raises(DataError, match=r"1 time\(s\) lie outside the basis range \[0, 1\].*extrapolate=True"):
        b.transform([0.5, 1.2])
    with pytest.warns(ExtrapolationWarning, match="extrapolated there \\(linearly"):
        X = b.transform([0.5, 1.2, 1.7, -0.4, -0.1], extrapolate=True)
    be = SplineBasis(n_basis=6, lower=0.0, upper=1.0).fit()  # extrapolates by default
    with pytest.warns(ExtrapolationWarning):
        np.testing.assert_allclose(be.transform([1.2]), X[1:2])
    # linear continuation: value and slope of the boundary, no curvature beyond it
    h = 1e-6
    end = b.transform([1.0 - h, 1.0])
    np.testing.assert_allclose(X[1], end[1] + 0.2 * (end[1] - end[0]) / h, atol=1e-5)
    np.testing.assert_allclose(X[2] - X[1], (X[1] - end[1]) * 2.5, atol=1e-12)
    np.testing.assert_allclose(X[3] - X[4], (X[4] - b.transform([0.0])[0]) * 3.0, atol=1e-12)
    np.testing.assert_allclose(X.sum(axis=1), 1.0, atol=1e-9)  # partition of unity continues


def test_a_study_window_beyond_the_data_keeps_the_knots_on_the_data():
    import warnings

    rng = np.random.default_rng(0)
    t = rng.uniform(2.0, 9.0, 300)
    b = SplineBasis(n_basis=10, lower=0.0, upper=13.0).fit(t)  # gaps of 2 and 4 > half of 13 / 7
    assert b.window_ == (0.0, 13.0)
    assert b.lower_ == pytest.approx(t.min()) and b.upper_ == pytest.approx(t.max())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the window: continued, no warning
        X = b.transform([1.0, 12.0])
    lo_end, hi_end = b.transform([b.lower_]), b.transform([b.upper_])
    h = 1e-6
    slope = (b.transform([b.upper_]) - b.transform([b.upper_ - h])) / h
    np.testing.assert_allclose(X[1], hi_end[0] + (12.0 - b.upper_) * slope[0], atol=1e-4)
    assert np.all(np.isfinite(lo_end))
    with pytest.warns(ExtrapolationWarning, match=r"outside the basis range \[0, 13\]"):
        b.transform([14.0])
    strict = SplineBasis(n_basis=10, lower=0.0, upper=13.0, extrapolate=False).fit(t)
    strict.transform([12.5])  # inside the window: fine
    with pytest.raises(DataError, match="outside the basis range"):
        strict.transform([13.5])
    back = SplineBasis.from_dict(b.to_dict())
    assert back.window_ == b.window_ and back.lower_ == b.lower_
    # a window the data cover (gaps under half a knot interval, 8 / 14) is the basis range, as before
    c = SplineBasis(n_basis=10, lower=1.5, upper=9.5).fit(t)
    assert (c.lower_, c.upper_) == (1.5, 9.5) == c.window_
    # the research code's layout keeps the range it is given
    r = SplineBasis(n_basis=10, lower=0.0, upper=13.0, knots="reference").fit(t)
    assert (r.lower_, r.upper_) == (0.0, 13.0)


def test_quantile_knots_follow_the_visits_but_keep_half_the_uniform_width():
    rng = np.random.default_rng(1)
    times = np.r_[rng.uniform(0, 2, 400), rng.uniform(2, 10, 40)]  # dense early visits
    b = SplineBasis(n_basis=12, lower=0.0, upper=10.0).fit(times)
    inner = b.knots_[3:-3]
    assert inner[0] == 0.0 and inner[-1] == 10.0
    width = np.diff(inner)
    assert width.min() >= 0.5 * 10.0 / 9 - 1e-12
    assert width[0] < width[-1]  # narrower where visits are dense
    np.testing.assert_allclose(b.transform(np.linspace(0, 10, 50)).sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("knots", ["uniform", "quantile", "clamped"])
def test_smoothing_basis_is_demmler_reinsch(knots):
    from scipy.integrate import simpson

    times = np.random.default_rng(0).uniform(0, 4, 300) ** 1.5
    b = SplineBasis(n_basis=12, knots=knots).fit(times)
    V, lam = b.smoothing_basis(2)
    lo, hi = b.lower_, b.upper_
    # L2-orthonormal on the rescaled time u in [0, 1]: composite Simpson on a fine uniform grid, a quadrature
    # independent of the method's own (Gauss-Legendre per knot interval), within 1.1e-12 of the identity here
    # (an adaptive scipy quad per entry, checked to 1e-7, made this the slowest basis test)
    t = np.linspace(lo, hi, 20001)
    F = b.transform(t) @ V
    G = simpson(F[:, :3, None] * F[:, None, :], x=t, axis=0) / (hi - lo)
    np.testing.assert_allclose(G, np.eye(12)[:3], atol=1e-9)
    # null coordinates are the constant and the linear (Legendre) functions
    u = np.linspace(0, 1, 7)
    F = b.transform(lo + u * (hi - lo)) @ V
    np.testing.assert_allclose(F[:, 0], 1.0, atol=1e-9)
    np.testing.assert_allclose(F[:, 1], np.sqrt(3) * (2 * u - 1), atol=1e-9)
    assert (lam[:2] == 0).all() and lam[2] == 1.0 and (np.diff(lam[2:]) > 0).all()
    # roughness: int f''(u)^2 du of the coordinate functions is proportional to lam (finite differences)
    uu = np.linspace(0, 1, 40001)
    Fu = b.transform(lo + uu * (hi - lo)) @ V[:, 2:4]
    d2 = np.diff(Fu, 2, axis=0) / (uu[1] - uu[0]) ** 2
    r2, r3 = (d2**2).mean(axis=0)
    assert r3 / r2 == pytest.approx(lam[3] / lam[2], rel=1e-3)


def test_errors():
    with pytest.raises(NotFittedError, match="fit"):
        SplineBasis().transform([0.5])
    with pytest.raises(DataError, match="all observation times are equal"):
        SplineBasis(n_basis=5).fit(np.array([2.0, 2.0]))
    with pytest.raises(ValueError, match="too small"):
        SplineBasis(n_basis=3, degree=3).fit(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="knots must be one of"):
        SplineBasis(knots="random").fit(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="needs lower and upper"):
        SplineBasis().fit()
    with pytest.raises(DataError, match="finite"):
        SplineBasis(lower=0.0, upper=1.0).fit().transform([np.nan])


def test_extrapolation_counts_distinct_times():
    """The warning counts the times outside the range, not the rows: 83 subjects predicted at one time
    beyond it were '83 time(s)' from the linear mixed model."""
    from dmlmm.exceptions import ExtrapolationWarning

    b = SplineBasis(6, lower=0, upper=1).fit()
    with pytest.warns(ExtrapolationWarning, match=r"^2 time\(s\) lie outside the basis range \[0, 1\] "
                                                  r"\(e\.g\. \[1\.5, 2\.0\]\)"):
        b.transform(np.r_[np.full(83, 2.0), 1.5, 0.5])


def test_a_degree_zero_basis_continues_flat_beyond_its_range():
    """A one-function basis (degree 0, the LinearMixedModel default where subjects have two visits each) is
    a constant: beyond its range it continues as that constant (its derivative is zero), where asking scipy
    for the derivative of a degree-0 spline raised "Order of derivative (n = 1) must be <= order of spline"."""
    b = SplineBasis(n_basis=1, degree=0, lower=8.0, upper=12.0).fit()
    with pytest.warns(ExtrapolationWarning):
        X = b.transform([7.0, 10.0, 14.0])
    np.testing.assert_array_equal(X, np.ones((3, 1)))
    two = SplineBasis(n_basis=3, degree=1, lower=0.0, upper=1.0, knots="uniform").fit()
    np.testing.assert_array_equal(bspline_design([0.2, 0.7], two.knots_, 1, deriv=2), np.zeros((2, 3)))


def test_linear_mixed_model_with_one_function_forecasts_beyond_its_visits():
    """Two visits per subject give LinearMixedModel's default basis one function (flat curves, warned): its
    forecast at a later age is the subject's level, not a crash deep in scipy (nlme's Orthodont with the
    accuracy harness's split, ages 8-12 kept and 14 held out, raised there)."""
    import warnings

    import pandas as pd

    from dmlmm import LinearMixedModel

    rng = np.random.default_rng(3)
    level = rng.normal(25.0, 2.0, size=20)
    df = pd.DataFrame({"subject": np.repeat(np.arange(20), 2), "time": np.tile([8.0, 10.0], 20)})
    df["y"] = np.repeat(level, 2) + rng.normal(0.0, 1.0, size=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LinearMixedModel(method="ml").fit(df)
        assert m.builder_.basis_.n_basis == 1
        at = m.predict_trajectory(df, times=[9.0, 14.0])
        held = pd.DataFrame({"subject": np.arange(20), "time": 14.0, "y": level})
        score = m.score_samples(held, condition_on=df)
    wide = at.pivot(index="subject", columns="time", values="mean")
    np.testing.assert_allclose(wide[14.0], wide[9.0], rtol=1e-12)  # flat: the same level at 14 as within
    assert np.isfinite(score).all()


def test_sklearn_clone_keeps_a_fitted_basis_and_rebuilds_an_unfitted_one():
    """A basis given fitted is used as it is (its window and knots); scikit-learn's clone rebuilt it from its
    settings and dropped them, so clone(model).fit(df) laid other knots without a word. The repr says which."""
    sklearn_base = pytest.importorskip("sklearn.base")
    import dmlmm

    fitted = SplineBasis(n_basis=8).fit(np.array([-0.1, 0.3, 1.1]))
    copy_ = sklearn_base.clone(fitted)
    assert copy_ is not fitted and copy_.is_fitted and np.array_equal(copy_.knots_, fitted.knots_)
    assert copy_.window == (-0.1, 1.1) and repr(copy_).endswith("knots='quantile', fitted to [-0.1, 1.1])")
    model = sklearn_base.clone(dmlmm.MixtureLMM(2, basis=fitted))
    assert model.basis.is_fitted and model.basis is not fitted
    fresh = sklearn_base.clone(SplineBasis(n_basis=8, lower=0.0))
    assert not fresh.is_fitted and fresh.lower == 0.0 and repr(fresh).endswith("knots='quantile')")

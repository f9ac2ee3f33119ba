"""Bad hyperparameters are refused up front with a message naming the parameter (no raw errors)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from dmlmm import DeepMixtureLMM, LinearMixedModel, MixtureLMM, SplineBasis
from dmlmm.exceptions import DataError, DataWarning
from dmlmm.simulate import dgp1


@pytest.fixture(scope="module")
def data():
    return dgp1(0, n_subjects=30).data


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: MixtureLMM(2, noise_scale=0), r"noise_scale must be a positive number .*got 0$"),
        (lambda: MixtureLMM((3,)), r"n_components must be a positive integer \(for several layers use DeepMixtureLMM\), got \(3,\)"),
        (lambda: DeepMixtureLMM((10, 0)), r"n_components must be a tuple of positive integers, one per layer \(e.g. \(10, 5\)\), got \(10, 0\)"),
        (lambda: MixtureLMM(2, concentration=-1), r"concentration must be a positive number, or one per layer, got -1"),
        (lambda: DeepMixtureLMM(concentration=(0.5, -1)), r"concentration must be a positive number, or one per layer, got \(0.5, -1\)"),
        (lambda: MixtureLMM(2, cov_scale=float("nan")), r"cov_scale must be a positive number"),
        (lambda: MixtureLMM(2, random_state="abc"), r"random_state must be None, a non-negative integer, a numpy SeedSequence or Generator, got 'abc'"),
        (lambda: MixtureLMM(2, max_iter=0), r"max_iter must be a positive integer, got 0"),
        (lambda: MixtureLMM(2, smoothing=5), r"smoothing must be None or the order of the roughness penalty \(1, 2 or 3\), got 5"),
        (lambda: MixtureLMM(2, batch_size=-3), r"batch_size must be a positive integer, 'auto' or 'full', got -3"),
        (lambda: DeepMixtureLMM(noise="per-subject"), r"noise must be one of 'shared', 'cluster' or 'auto', got 'per-subject'"),
        # a string is truthy: prune="no" meant prune=True, delete_moves="False" delete moves
        (lambda: MixtureLMM(2, prune="no"), r"^prune must be True or False, got 'no'$"),
        (lambda: DeepMixtureLMM(delete_moves="False"), r"^delete_moves must be True or False, got 'False'$"),
        (lambda: MixtureLMM(2, hard_assignment=1), r"^hard_assignment must be True or False, got 1$"),
        # a per-layer tuple of the wrong length: an IndexError deep in the prior, or extra values ignored
        (lambda: DeepMixtureLMM(concentration=(0.5,)), r"^concentration must have one value per layer, 2 layers "
                                                        r"\(n_components=\(10, 5\)\); got \(0.5,\)$"),
        (lambda: DeepMixtureLMM(delta_scale=(1.0, 2.0, 3.0)), r"^delta_scale must have one value per layer, 2 layers"),
        (lambda: MixtureLMM(2, concentration=(0.5, 0.5)), r"^concentration must have one value per layer, 1 layer: "
                                                           r"give one number; got \(0.5, 0.5\)$"),
        (lambda: MixtureLMM(2, basis=5), r"^basis must be None or a dmlmm.SplineBasis, e.g. SplineBasis\(10\), got 5$"),
        (lambda: LinearMixedModel(basis="x"), r"^basis must be None or a dmlmm.SplineBasis"),
        (lambda: LinearMixedModel(blas_threads=0), r"^blas_threads must be None or a positive integer, got 0$"),
        (lambda: MixtureLMM(2, basis=SplineBasis(4.5)), r"^n_basis must be a positive integer, got 4.5$"),
        (lambda: MixtureLMM(2, basis=SplineBasis(degree="3")), r"^degree must be an integer >= 0 \(3: cubic\), got '3'$"),
        (lambda: MixtureLMM(2, basis=SplineBasis(lower="a")), r"^lower must be None or a finite number"),
        (lambda: MixtureLMM(2, basis=SplineBasis(extrapolate="no")), r"^extrapolate must be True or False, got 'no'$"),
        (lambda: MixtureLMM(2, basis=SplineBasis(knots=None)), r"^knots must be one of .* or a one-dimensional array "
                                                                r"of finite knots, got None$"),
    ],
)
def test_bad_hyperparameters_name_the_parameter(data, make, message):
    with pytest.raises(ValueError, match=message):
        make().fit(data)


def test_reversed_basis_range_names_the_bounds(data):
    with pytest.raises(ValueError, match=r"SplineBasis needs lower < upper, got lower=1, upper=0"):
        MixtureLMM(2, basis=SplineBasis(lower=1, upper=0)).fit(data)


def test_huge_response_is_not_called_constant(data):
    with pytest.raises(DataError, match=r"the response 'y' has values too large to standardise .*rescale it"):
        MixtureLMM(2).fit(data.assign(y=data["y"] * 1e300))


def test_tiny_units_are_not_called_constant(data):
    """Constant means constant relative to the values' own size: a response in units of 1e-13 is fitted,
    with the same curves up to the unit. In units of 1e-200 its variance underflows (a Gaussian LMM's
    bands had zero width, every model's sigma2_ read 0): refused with what to do, not called constant."""
    ref = MixtureLMM(2, max_iter=40, random_state=0, response_transform=None).fit(data)
    m = MixtureLMM(2, max_iter=40, random_state=0, response_transform=None).fit(data.assign(y=data["y"] * 1e-13))
    np.testing.assert_allclose(m.cluster_means_["mean"] / 1e-13, ref.cluster_means_["mean"], rtol=1e-6)
    np.testing.assert_allclose(m.sigma2_ / 1e-26, ref.sigma2_, rtol=1e-6)
    for model in (MixtureLMM(2, response_transform=None), LinearMixedModel()):
        with pytest.raises(DataError, match=r"the response 'y' is in units so small that its variance \([0-9.]+e-20[01] "
                                            r"squared\) is below what double precision holds: .*Multiply the response"):
            model.fit(data.assign(y=data["y"] * 1e-200))
    with pytest.raises(DataError, match=r"the response 'y' is constant \(every value is 3\)"):
        MixtureLMM(2).fit(data.assign(y=3.0))


def test_a_large_level_is_not_called_constant(data):
    """1e13 + y (SD about 1, far above rounding at 1e13, 0.002) was refused as 'constant (every value is 1e+13)';
    it is fitted as y is, shifted. Variation at the level of rounding is said as such, with what to do."""
    ref = MixtureLMM(1, max_iter=40, random_state=0, response_transform=None).fit(data)
    m = MixtureLMM(1, max_iter=40, random_state=0, response_transform=None).fit(data.assign(y=data["y"] + 1e13))
    np.testing.assert_allclose(m.sigma2_, ref.sigma2_, rtol=1e-3)
    np.testing.assert_allclose(m.cluster_means_["mean"] - 1e13, ref.cluster_means_["mean"], atol=1e-2)
    with pytest.raises(DataError, match=r"the response 'y' varies only in the last digits that double precision holds "
                                        r"\(SD .* around values up to 1e\+16\): .*subtract the common level first"):
        MixtureLMM(1).fit(data.assign(y=data["y"] + 1e16))


@pytest.mark.parametrize("model", [MixtureLMM(2, response_transform=None), DeepMixtureLMM(response_transform=None)])
def test_a_response_dominated_by_an_extreme_value_is_named(data, model):
    """One value 10^9 times the others: the bulk is constant in double precision. Before this check the
    noise variance's sum of squares cancelled below zero and the fit crashed in the local step
    (IndexError in maximum.reduceat); now the value and what to do are named."""
    y = data["y"].to_numpy().copy()
    y[7] = 1e9
    with pytest.raises(DataError, match=r"the response 'y' is dominated by a few extreme values: .* most extreme "
                                        r"value 1e\+09, .*check the extreme values for data-entry or unit errors"):
        model.fit(data.assign(y=y))


def test_an_extreme_value_the_fit_can_resolve_is_fitted(data):
    """3e8 among values of SD 1 (standard deviation 2e7 times the bulk's spread, under the limit): not refused,
    and the fit is finite with a positive noise variance; the value is named (a DataWarning)."""
    y = data["y"].to_numpy().copy()
    y[7] = 3e8
    with pytest.warns(DataWarning, match=r"^the response 'y' has 1 value\(s\) more than 100 robust spreads .*: 3e\+08 "):
        m = MixtureLMM(2, max_iter=60, random_state=0, response_transform=None).fit(data.assign(y=y))
    assert np.isfinite(m.elbo_) and m.sigma2_ > 0 and np.isfinite(m.cluster_means_["mean"]).all()


def test_auto_transform_fits_the_scale_that_can_be_fitted(data):
    """A positive response whose raw scale is dominated by one value: "auto" fits its log and says why."""
    y = np.exp(data["y"].to_numpy())
    y[7] = 1e12
    with pytest.warns(UserWarning, match=r"response_transform='auto': the response as given cannot be fitted "
                                         r"\(the response 'y' is dominated .*\); it is fitted on the log scale only"):
        m = MixtureLMM(2, max_iter=40, random_state=0).fit(data.assign(y=y))
    assert m.response_transform_ == "log" and list(m.elbo_by_transform_) == ["log"]


def test_sample_trajectories_arguments(data):
    m = MixtureLMM(2, max_iter=20, random_state=0).fit(data)
    with pytest.raises(ValueError, match=r"n_samples must be a positive integer, got -1"):
        m.sample_trajectories(data, n_samples=-1)
    with pytest.raises(ValueError, match=r"random_state must be None"):
        m.sample_trajectories(data, random_state="abc")
    s = m.sample_trajectories(data, times=np.linspace(0, 1, 3), n_samples=2, random_state=np.random.default_rng(1))
    assert len(s) == data["subject"].nunique() * 2 * 3


def test_bad_call_arguments_name_the_argument(data):
    """dropna='x' was taken as True; an LMM summary at interval=1.5 printed 'Wald 150 % intervals' of NaN;
    check_bands took min_visits=2.5, and a string for the model failed on get_params."""
    from dmlmm.calibration import check_bands

    with pytest.raises(ValueError, match=r"^dropna must be True or False, got 'x'$"):
        MixtureLMM(2, max_iter=5).fit(data, dropna="x")
    with pytest.raises(ValueError, match=r"^dropna must be True or False, got 'x'$"):
        LinearMixedModel().fit(data, dropna="x")
    lmm = LinearMixedModel(method="ml", basis=SplineBasis(2, degree=1)).fit(data)
    with pytest.raises(ValueError, match=r"^interval must be a number in \(0, 1\), e.g. 0.95, got 1.5$"):
        lmm.summary(interval=1.5)
    cols = dict(subject="subject", time="time", response="y")
    with pytest.raises(ValueError, match=r"^min_visits must be an integer of at least 2 .*got 2.5$"):
        check_bands(MixtureLMM(2), data, min_visits=2.5, **cols)
    with pytest.raises(TypeError, match=r"^model must be an unfitted dmlmm model \(e.g. DeepMixtureLMM\(\)\), got 'x'$"):
        check_bands("x", data, **cols)


def test_a_deeper_layer_is_capped_at_the_subjects_too(data):
    """DeepMixtureLMM((3, 1000)) on 30 subjects kept 1000 deeper components (20 times the time, no word); every
    layer now has at most one component per subject, said as for the first."""
    with pytest.warns(UserWarning, match=r"n_components\[1\]=1000 exceeds the number of subjects \(30\); using 30"):
        m = DeepMixtureLMM((3, 1000), (1, 1), basis=SplineBasis(5), max_iter=20, random_state=0).fit(data)
    assert m.n_components_[1] <= 30


def test_noise_free_data_that_break_the_fit_are_named():
    """Every subject on a_i + sin t (no noise): the residual variance falls towards 0 until the local step's
    precision is not positive definite. That surfaced as numpy's LinAlgError blaming collinear covariates; the
    breakdown is now a NumericalError that says the curves reproduce the response exactly."""
    from dmlmm.exceptions import NumericalError

    rng = np.random.default_rng(0)
    t = np.tile(np.arange(7.0), 15)
    df = pd.DataFrame({"subject": np.repeat(np.arange(15), 7), "time": t,
                       "y": np.repeat(rng.normal(0, 1, 15), 7) + np.sin(t)})
    with pytest.raises(NumericalError, match=r"variational inference broke down at iteration \d+: local posterior "
                                             r"precision is not positive definite.* The residual variance had fallen "
                                             r"to .* of the response's variance: the curves reproduce the response "
                                             r"exactly. Is it noise-free"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            MixtureLMM(2, max_iter=500, random_state=0).fit(df)

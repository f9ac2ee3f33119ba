"""Bad hyperparameters are refused up front with a message naming the parameter (no raw errors)."""

from __future__ import annotations

import numpy as np
import pytest

from dmlmm import DeepMixtureLMM, MixtureLMM, SplineBasis
from dmlmm.exceptions import DataError
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


def test_sample_trajectories_arguments(data):
    m = MixtureLMM(2, max_iter=20, random_state=0).fit(data)
    with pytest.raises(ValueError, match=r"n_samples must be a positive integer, got -1"):
        m.sample_trajectories(data, n_samples=-1)
    with pytest.raises(ValueError, match=r"random_state must be None"):
        m.sample_trajectories(data, random_state="abc")
    s = m.sample_trajectories(data, times=np.linspace(0, 1, 3), n_samples=2, random_state=np.random.default_rng(1))
    assert len(s) == data["subject"].nunique() * 2 * 3

"""Tests of the simulation-study metrics against hand computations and closed forms."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from dmlmm.metrics import (
    adjusted_rand_index,
    contingency_table,
    coverage,
    coverage_by_subject,
    log_rmse,
    summarise,
    summarise_log_score,
)


@pytest.fixture
def truth() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "subject": ["a", "a", "a", "b", "b"],
            "time": [0.0, 0.5, 1.0, 0.0, 1.0],
            "value": [0.0, 1.0, 2.0, 1.0, -1.0],
        }
    )


# --------------------------------------------------------------------------- log RMSE


def test_log_rmse_hand_computed(truth):
    predicted = pd.DataFrame(
        {
            "subject": ["b", "a", "a", "b", "a", "c"],  # shuffled, with an extra subject
            "time": [1.0, 1.0, 0.0, 0.0, 0.5, 0.0],
            "mean": [0.0, 4.0, 0.0, 2.0, 1.0, 9.0],
        }
    )
    out = log_rmse(truth, predicted)
    assert list(out.index) == ["a", "b"] and out.name == "log_rmse" and out.index.name == "subject"
    # a: errors (0, 0, 2) -> mse 4/3; b: errors (1, 1) -> mse 1
    assert out["a"] == pytest.approx(0.5 * np.log(4.0 / 3.0))
    assert out["b"] == pytest.approx(0.0)


def test_log_rmse_exact_prediction_is_minus_inf(truth):
    predicted = truth.rename(columns={"value": "mean"})
    out = log_rmse(truth, predicted)
    assert np.all(np.isneginf(out))


def test_log_rmse_missing_points_raise(truth):
    predicted = truth.rename(columns={"value": "mean"}).iloc[:-1]
    with pytest.raises(ValueError, match="lacks 1 of the 5 truth points"):
        log_rmse(truth, predicted)
    nan_pred = truth.rename(columns={"value": "mean"}).assign(mean=[0.0, np.nan, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="lacks"):
        log_rmse(truth, nan_pred)


def test_log_rmse_bad_inputs_raise(truth):
    with pytest.raises(ValueError, match="missing column"):
        log_rmse(truth, truth)  # no 'mean' column
    dup = pd.concat([truth, truth.iloc[:1]]).rename(columns={"value": "mean"})
    with pytest.raises(ValueError, match="repeated"):
        log_rmse(truth, dup)


def test_log_rmse_matches_direct_computation():
    rng = np.random.default_rng(0)
    n, g = 30, 17
    grid = np.linspace(0, 1, g)
    values = rng.normal(size=(n, g))
    means = values + rng.normal(scale=rng.uniform(0.1, 2, size=(n, 1)), size=(n, g))
    subj = np.repeat(np.arange(n), g)
    t = np.tile(grid, n)
    truth = pd.DataFrame({"subject": subj, "time": t, "value": values.ravel()})
    pred = pd.DataFrame({"subject": subj, "time": t, "mean": means.ravel()}).sample(frac=1, random_state=1)
    expected = np.log(np.sqrt(np.mean((values - means) ** 2, axis=1)))
    np.testing.assert_allclose(log_rmse(truth, pred).to_numpy(), expected)


# --------------------------------------------------------------------------- coverage


def test_coverage_hand_computed(truth):
    predicted = pd.DataFrame(
        {
            "subject": ["a", "a", "a", "b", "b"],
            "time": [0.0, 0.5, 1.0, 0.0, 1.0],
            "lower": [-1.0, 1.0, 2.5, 0.0, -3.0],  # inside, on the lower bound, above, inside, inside
            "upper": [1.0, 3.0, 3.0, 2.0, -1.0],  # ...                                ..., on the upper bound
        }
    )
    assert coverage(truth, predicted) == pytest.approx(4 / 5)
    by = coverage_by_subject(truth, predicted)
    assert by.name == "coverage" and by.index.name == "subject"
    assert by["a"] == pytest.approx(2 / 3) and by["b"] == pytest.approx(1.0)


def test_coverage_of_gaussian_bands_is_nominal():
    rng = np.random.default_rng(1)
    n = 20000
    truth = pd.DataFrame({"subject": np.arange(n) // 10, "time": np.arange(n) % 10, "value": rng.normal(size=n)})
    pred = truth[["subject", "time"]].assign(lower=-1.959964, upper=1.959964)
    assert coverage(truth, pred) == pytest.approx(0.95, abs=0.01)
    assert coverage_by_subject(truth, pred).mean() == pytest.approx(coverage(truth, pred))


def test_coverage_errors(truth):
    bad = truth[["subject", "time"]].assign(lower=1.0, upper=0.0)
    with pytest.raises(ValueError, match="lower > upper"):
        coverage(truth, bad)
    partial = truth[["subject", "time"]].assign(lower=0.0, upper=1.0).iloc[1:]
    with pytest.raises(ValueError, match="lacks"):
        coverage_by_subject(truth, partial)


# --------------------------------------------------------------------------- adjusted Rand index


def _ari_pair_counting(a, b) -> float:
    """Reference ARI by explicit pair counting (Steinley 2004): 2 (n11 n00 - n10 n01) / (...)."""
    n11 = n10 = n01 = n00 = 0
    for i, j in combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        n11 += same_a and same_b
        n10 += same_a and not same_b
        n01 += same_b and not same_a
        n00 += not same_a and not same_b
    return 2.0 * (n11 * n00 - n10 * n01) / ((n11 + n10) * (n10 + n00) + (n11 + n01) * (n01 + n00))


def test_ari_hand_computed():
    # table [[2, 1, 0], [0, 1, 2]]: index 2, rows 3 + 3 = 6, cols 1 + 1 + 1 = 3, C(6, 2) = 15
    # expected 6 * 3 / 15 = 1.2, max (6 + 3) / 2 = 4.5 -> (2 - 1.2) / (4.5 - 1.2) = 8 / 33
    a = [0, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(contingency_table(a, b), [[2, 1, 0], [0, 1, 2]])
    assert adjusted_rand_index(a, b) == pytest.approx(8 / 33)
    # crossed partitions: index 0, expected 2 * 2 / 6, max 2 -> -0.5
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_ari_matches_pair_counting():
    rng = np.random.default_rng(2)
    for _ in range(20):
        n = int(rng.integers(5, 40))
        a = rng.integers(0, rng.integers(1, 6), size=n)
        b = np.where(rng.random(n) < 0.6, a, rng.integers(0, 4, size=n))
        if len(set(a)) in (1, n) and len(set(b)) in (1, n):
            continue
        assert adjusted_rand_index(a, b) == pytest.approx(_ari_pair_counting(a, b))


def test_ari_identical_up_to_relabelling_and_symmetric():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=200)
    relabelled = np.array(["v", "w", "x", "y", "z"])[(a + 2) % 5]
    assert adjusted_rand_index(a, relabelled) == pytest.approx(1.0)
    b = rng.integers(0, 3, size=200)
    assert adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_index(b, a))


def test_ari_random_labels_have_zero_expectation():
    rng = np.random.default_rng(4)
    a = np.repeat(np.arange(4), 25)
    b = np.repeat(np.arange(5), 20)
    values = np.array([adjusted_rand_index(a, rng.permutation(b)) for _ in range(400)])
    assert abs(values.mean()) < 0.005
    assert values.max() < 0.2


def test_ari_degenerate_partitions():
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    assert adjusted_rand_index([0, 1, 2], [5, 4, 3]) == 1.0
    assert adjusted_rand_index([7], [3]) == 1.0
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 2, 3]) == pytest.approx(0.0)


def test_ari_series_are_aligned_on_index():
    truth = pd.Series([0, 0, 1, 1, 2], index=[10, 11, 12, 13, 14])
    pred = pd.Series(["x", "x", "y", "y", "z"], index=[10, 11, 12, 13, 14]).iloc[::-1]
    assert adjusted_rand_index(truth, pred) == pytest.approx(1.0)
    # the same values taken positionally, without the index, disagree
    assert adjusted_rand_index(truth.to_numpy(), pred.to_numpy()) < 1.0
    shuffled = pd.Series(["x", "y", "x", "z", "y"], index=[10, 12, 11, 14, 13])
    assert adjusted_rand_index(truth, shuffled) == pytest.approx(1.0)
    assert adjusted_rand_index(truth.to_numpy(), shuffled.to_numpy()) < 1.0
    with pytest.raises(ValueError, match="different subjects"):
        adjusted_rand_index(truth, pd.Series([0, 0, 1, 1, 2], index=[10, 11, 12, 13, 99]))


def test_ari_input_errors():
    with pytest.raises(ValueError, match="different lengths"):
        adjusted_rand_index([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="missing"):
        adjusted_rand_index([0.0, np.nan], [0, 1])
    with pytest.raises(ValueError, match="one-dimensional"):
        adjusted_rand_index(np.zeros((2, 2)), np.zeros((2, 2)))


# --------------------------------------------------------------------------- summaries


def test_summarise():
    out = summarise(pd.Series([1.0, 2.0, 3.0, 10.0]))
    assert out == pytest.approx({"mean": 4.0, "median": 2.5, "sd": np.sqrt(50.0 / 3.0)})
    assert np.isnan(summarise(np.array([2.0]))["sd"])
    with pytest.raises(ValueError, match="NaN"):
        summarise(pd.Series([1.0, np.nan]))
    with pytest.raises(ValueError, match="empty"):
        summarise(pd.Series([], dtype=float))


def test_summarise_log_score():
    out = summarise_log_score(pd.Series([-3.0, -1.0, -2.0, -10.0], index=list("abcd")))
    assert out == pytest.approx({"mean": -4.0, "median": -2.5})
    assert set(out) == {"mean", "median"}
    with pytest.raises(ValueError, match="NaN"):
        summarise_log_score(np.array([np.nan]))

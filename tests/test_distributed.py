"""The Dask path (dmlmm.distributed): same answer as the in-memory fit, on a 2-process LocalCluster."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import dmlmm  # noqa: E402
from helpers import error_line, split_parquet  # noqa: E402
from dmlmm import DataError, DeepMixtureLMM, MixtureLMM, SplineBasis, simulate  # noqa: E402
from dmlmm.distributed import is_dask_collection  # noqa: E402
from dmlmm.distributed import shard as sh  # noqa: E402
from dmlmm.distributed.outputs import collect  # noqa: E402
from dmlmm.distributed.stats import DaskStats, DistributedLocal, init_noise_and_fixed_from_sums  # noqa: E402
from dmlmm.exceptions import ConvergenceWarning, DataWarning, EmptyComponentWarning, ExtrapolationWarning  # noqa: E402
from dmlmm.inference.engine import VIConfig, init_noise_and_fixed, noise_moments  # noqa: E402
from dmlmm.inference.local import local_step  # noqa: E402
from dmlmm.inference.noise import path_rss  # noqa: E402
from dmlmm.metrics import adjusted_rand_index  # noqa: E402
from dmlmm.models.base import ridge_estimates  # noqa: E402
from dmlmm.models.starting import pooled_ridge, ridge_prior  # noqa: E402
from dmlmm.sufficient import SufficientStats  # noqa: E402

SRC = Path(dmlmm.__file__).resolve().parent


@pytest.fixture(scope="module")
def dgp1_frame() -> tuple[pd.DataFrame, pd.Series]:
    sim = simulate.dgp1(random_state=3, n_subjects=120)
    df = sim.data.copy()
    rng = np.random.default_rng(0)
    age = pd.Series(rng.normal(50, 10, sim.n_subjects), index=sim.labels.index)
    sex = pd.Series(rng.choice(["f", "m"], sim.n_subjects), index=sim.labels.index)
    df["age"] = age.loc[df["subject"]].to_numpy()
    df["sex"] = sex.loc[df["subject"]].to_numpy()
    df["y"] += 0.02 * (df["age"] - 50) + 0.3 * (df["sex"] == "m")
    return df, sim.labels


@pytest.fixture(scope="module")
def parquet_frame(dgp1_frame, tmp_path_factory):
    """The frame written to Parquet by subject (3 partitions) and read back lazily."""
    df, _ = dgp1_frame
    path = tmp_path_factory.mktemp("parquet") / "dgp1"
    dd.from_pandas(df.set_index("subject"), npartitions=3).to_parquet(path)
    return dd.read_parquet(path)


def test_workers_import_this_dmlmm(client):
    where = client.run(lambda: str(Path(__import__("dmlmm").__file__).resolve().parent))
    assert len(where) == 2 and set(where.values()) == {str(SRC)}


def test_in_memory_fit_does_not_import_dask():
    code = (
        "import sys, dmlmm\n"
        "sim = dmlmm.simulate.dgp1(random_state=0, n_subjects=40)\n"
        "m = dmlmm.DeepMixtureLMM((2, 1), basis=dmlmm.SplineBasis(6), max_iter=30, random_state=0)\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "m.fit(sim.data)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('dask', 'distributed'))\n"
        "assert not bad, bad\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_is_dask_collection(parquet_frame, dgp1_frame):
    assert is_dask_collection(parquet_frame) and is_dask_collection(parquet_frame["y"])
    assert not is_dask_collection(dgp1_frame[0]) and not is_dask_collection(None)


def _same_fit(m0, m1, rtol: float = 1e-6) -> None:
    """The same fit chosen, to its convergence tolerance. Iteration counts agree within 10 %: ``n_iter_``
    counts the losing starts' runs too, and a run racing the kept one stops when its recent rate of ascent
    cannot reach it (``engine._cannot_reach``): the partitions' sums round differently from the
    in-memory ones, coordinate ascent with SQUAREM amplifies that to ~1e-7 nats within tens of
    iterations, and a losing race can stop some iterations earlier or later. Measured on dgp1_frame's
    deep mixture: 335 iterations in memory, 318 in memory with y perturbed by 1e-14 relative, 343 and 360
    from Parquet. With ``tol=1e-9`` even the chosen run's trace moves: 470 against 490 iterations for y
    and its 1e-14 perturbation (452 against 330 before the deeper means were pinned), ending within
    1e-5 nats of each other."""
    assert abs(m1.elbo_ - m0.elbo_) <= rtol * abs(m0.elbo_)
    assert m1.n_components_ == m0.n_components_
    assert abs(m1.n_iter_ - m0.n_iter_) <= 0.1 * m0.n_iter_
    collect(m1)
    subjects = m0.labels_.index
    assert adjusted_rand_index(m0.labels_, m1.labels_.reindex(subjects)) == 1.0
    np.testing.assert_allclose(m1.responsibilities_.reindex(subjects).to_numpy(), m0.responsibilities_.to_numpy(), atol=1e-6)
    np.testing.assert_allclose(m1.group_proba_.reindex(subjects).to_numpy(), m0.group_proba_.to_numpy(), atol=1e-6)
    # the coefficients (up to about 5) to 1e-6 relative as well: on one machine (2026-12-05) the deep mixture's
    # differed by up to 1.9e-6 (4e-7 relative) between the Dask and the in-memory fit (the same before and after
    # the smooth start of shared visit times, which these data, 99 distinct times, do not get)
    np.testing.assert_allclose(m1.random_effects_.reindex(subjects).to_numpy(), m0.random_effects_.to_numpy(),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m1.sigma2_, m0.sigma2_, rtol=1e-6)
    np.testing.assert_allclose(m1.fixed_effects_.to_numpy(), m0.fixed_effects_.to_numpy(), rtol=1e-6, atol=1e-9)
    # cluster mean curves (values up to about 10) to the fits' ELBO tolerance, as the trajectories below:
    # measured on the deep mixture after the starting noise took the ridge penalty in (both 376
    # iterations, ELBOs 4e-9 apart relative), means within 6.6e-8 and bands within 7.3e-8 absolute
    pd.testing.assert_frame_equal(m1.cluster_means_, m0.cluster_means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m1.clusters_["n_subjects"], m0.clusters_["n_subjects"], rtol=1e-6, atol=1e-8)
    if m0.design_.n_fixed:  # the fixed effects' covariance in the bands (before, the mean-field one: far too narrow)
        np.testing.assert_allclose(m1._w_cov(), m0._w_cov(), rtol=1e-6)


def test_deep_mixture_same_answer_as_in_memory(client, parquet_frame, dgp1_frame, tmp_path):
    """Default algorithm (starting sizes, delete moves, pruning) from Parquet, subject as the index. One loading
    order (the comparison of prior variants runs the same loop as MixtureLMM's covariances, tested below): the
    two orders took 35-51 s, the test suite's slowest; three first-layer components (pruned to the two groups)
    in place of (4, 2): 12 s against 17 s."""
    df, truth = dgp1_frame
    kw = dict(n_components=(3, 1), basis=SplineBasis(8), loading_order=2.0, random_state=0)
    m0 = DeepMixtureLMM(**kw).fit(df, covariates=["age", "sex"])
    m1 = DeepMixtureLMM(**kw).fit(parquet_frame, covariates=["age", "sex"])
    assert is_dask_collection(m1.labels_) and is_dask_collection(m1.responsibilities_)
    with pytest.raises(TypeError, match=r"collect\(model\)"):
        m1.class_summary()
    assert list(m1.subjects_) == list(parquet_frame.index.compute().unique())
    _same_fit(m0, m1)
    assert m1.prior_.n_components == (2, 1)  # one of the three pruned
    assert adjusted_rand_index(truth, m1.groups_.reindex(truth.index)) == 1.0
    assert "DeepMixtureLMM" in m1.summary() and len(m1.class_summary())
    m1.save(tmp_path / "dask.dmlmm")  # after collect, as any fitted model
    assert dmlmm.load(tmp_path / "dask.dmlmm").elbo_ == m1.elbo_
    # predictions of a dask frame: lazy, per partition, the in-memory model's numbers
    proba = m1.predict_proba(parquet_frame)
    labels = m1.predict_group(parquet_frame)
    assert is_dask_collection(proba) and is_dask_collection(labels)
    np.testing.assert_allclose(proba.compute().reindex(subjects := m0.labels_.index).to_numpy(),
                               m0.predict_proba(df).to_numpy(), atol=1e-6)
    assert (labels.compute().reindex(subjects) == m0.predict_group(df)).all()
    # trajectories of a dask frame: lazy, per partition, the in-memory numbers (a forecast past the data included)
    times = np.linspace(0.0, 1.2, 7)
    with pytest.warns(ExtrapolationWarning, match="outside the basis range"):  # on the driver, as in memory
        traj = m1.predict_trajectory(parquet_frame, times=times, kind="observation")
    assert is_dask_collection(traj)
    got = traj.compute().sort_values(["subject", "time"]).reset_index(drop=True)
    want = m0.predict_trajectory(df, times=times, kind="observation").sort_values(["subject", "time"]).reset_index(drop=True)
    # (rtol 1e-5, atol 2e-6 for values up to about 10: the two fits stop at the ELBO tolerance 1e-5 along
    # slightly different paths, see _same_fit; measured: means and bands within 7.8e-7 absolute, 1.5e-5
    # relative at a band edge of -0.003)
    pd.testing.assert_frame_equal(got, want, rtol=1e-5, atol=2e-6, check_dtype=False)
    assert got["beyond_last_visit"].any()


def test_per_task_embeds_small_globals_and_broadcasts_large_ones(client):
    from dmlmm.distributed.stats import per_task

    small = np.arange(10.0)
    got = per_task(client, small, 3)
    assert len(got) == 3 and all(g is small for g in got)  # the object itself, in every task
    big = np.zeros(50_000)  # 400 kB: three copies are over the 1 MB limit
    got = per_task(client, big, 3)
    assert len(got) == 3 and all(isinstance(g, distributed.Future) for g in got) and len({g.key for g in got}) == 1
    np.testing.assert_array_equal(got[0].result(), big)
    assert all(g is small for g in per_task(client, small, 3, limit=10**6))
    assert isinstance(per_task(client, small, 3, limit=10)[0], distributed.Future)


def test_the_local_steps_routes_give_the_same_numbers(client, dgp1_frame, monkeypatch):
    """Globals inside the tasks or broadcast first, the shards' whole outputs gathered or only their sums
    (dmlmm.distributed.stats: EMBED_BYTES, GATHER_BYTES): the same arithmetic, so the same trace to the last
    digit."""
    from dmlmm.distributed import stats as st

    df, _ = dgp1_frame
    ddf = dd.from_pandas(df[df["subject"] < df["subject"].unique()[60]], npartitions=3, sort=False)
    kw = dict(n_components=2, basis=SplineBasis(6), covariance="pspline", random_state=0, max_iter=30)
    fits = {}
    for embed, whole in [(True, True), (False, False)]:
        monkeypatch.setattr(st, "EMBED_BYTES", 1 << 20 if embed else 0)
        monkeypatch.setattr(st, "GATHER_BYTES", 1 << 18 if whole else 0)
        calls = []
        real_map = client.map

        def counting_map(fn, *args, **kw_):
            calls.append(getattr(fn, "__name__", ""))
            return real_map(fn, *args, **kw_)

        monkeypatch.setattr(client, "map", counting_map)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fits[embed, whole] = MixtureLMM(**kw).fit(ddf)
        monkeypatch.setattr(client, "map", real_map)
        steps = calls.count("shard_step")
        assert steps > 20 and calls.count("step_sums") == (0 if whole else steps)
    a, b = fits[True, True], fits[False, False]
    np.testing.assert_array_equal(a.elbo_history_, b.elbo_history_)
    assert a.n_iter_ == b.n_iter_


def test_mixture_cluster_noise_same_answer(client, dgp1_frame):
    """Per-cluster noise, a column frame (subject not the index), partitions from pandas."""
    df, _ = dgp1_frame
    kw = dict(n_components=3, basis=SplineBasis(7), noise="cluster", covariance="pspline", random_state=2, max_iter=120)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(df, covariates=["age"])
        ddf = dd.from_pandas(df, npartitions=2, sort=False)  # 120 subjects x 10 rows: split between subjects
        m1 = MixtureLMM(**kw).fit(ddf, covariates=["age"])
    assert m1.noise_ == "cluster"
    _same_fit(m0, m1)


def test_formula_covariates_same_answer(client, dgp1_frame):
    """A formula whose coding the levels fix: the in-memory fit's columns and numbers; one that
    needs the data's values (C() of a numeric column) is refused with a pointer."""
    df, _ = dgp1_frame
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=40)
    ddf = dd.from_pandas(df, npartitions=2, sort=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(df, covariates="sex * age + sex:time")
        m1 = MixtureLMM(**kw).fit(ddf, covariates="sex * age + sex:time")
    assert list(m1.fixed_effects_.index) == ["sex[T.m]", "age", "sex[T.m]:age", "sex[T.m]:time"]
    _same_fit(m0, m1)
    few = df[df["subject"].isin(df["subject"].unique()[:3])]
    pd.testing.assert_frame_equal(m1.predict_trajectory(few, level="population"),
                                  m0.predict_trajectory(few, level="population"), rtol=1e-6)
    with pytest.raises(DataError, match="depends on the data"):
        MixtureLMM(**kw).fit(dd.from_pandas(df.assign(n=df["subject"] % 3), npartitions=2, sort=False),
                             covariates="C(n)")


def test_subject_split_over_partitions_is_named(client, dgp1_frame):
    df, _ = dgp1_frame
    ddf = dd.from_pandas(df.iloc[5:], npartitions=3, sort=False)
    with pytest.raises(DataError, match=r"more than one partition.*subject .*shuffle"):
        DeepMixtureLMM((2, 1), basis=SplineBasis(6)).fit(ddf)


def test_missing_values_and_options(client, dgp1_frame):
    """Missing values: the error without ``dropna``; with it one warning in the in-memory fit's words, the
    partitions' dropped rows added up (before, only the count), rows named by their labels, and the subject left
    with no row named (a frame indexed by subject: its rows have no labels of their own, so the subject only)."""
    df, _ = dgp1_frame
    bad = df.copy()
    bad.loc[bad.index[[3, 50]], "y"] = np.nan
    gone = bad["subject"].iloc[-1]
    bad.loc[bad["subject"] == gone, "time"] = np.inf  # every row of the last subject
    n_gone = int((bad["subject"] == gone).sum())
    ddf = dd.from_pandas(bad.set_index("subject"), npartitions=2)
    with pytest.raises(DataError, match="missing"):
        MixtureLMM(2, basis=SplineBasis(6)).fit(ddf)
    with pytest.raises(ValueError, match="full-batch"):
        MixtureLMM(2, basis=SplineBasis(6), batch_size=20).fit(ddf)
    with pytest.raises(DataError, match="not found"):
        MixtureLMM(2).fit(ddf, covariates=["weight"])
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=60)
    said = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for frame in (bad, dd.from_pandas(bad, npartitions=3, sort=False), ddf):
            with pytest.warns(UserWarning, match=f"dropped {2 + n_gone} of {len(bad)} row") as got:
                m = MixtureLMM(**kw).fit(frame, dropna=True)
            said.append([str(w.message) for w in got if "dropped" in str(w.message)])
    m0, m1 = MixtureLMM(**kw).fit(bad, dropna=True), m
    assert abs(m1.elbo_ - m0.elbo_) <= 1e-6 * abs(m0.elbo_)
    assert said[1] == said[0] and len(said[0]) == 1
    rows = list(bad.index[bad["subject"] == gone][:5])
    assert said[0][0] == (f"dropped {2 + n_gone} of {len(bad)} row(s) with missing or infinite values (column "
                          f"'time': {n_gone} (rows {rows} and {n_gone - 5} more); column 'y': 2 (rows "
                          f"{list(bad.index[[3, 50]])})); 1 subject(s) had no other rows and are left out: [{gone}]")
    assert said[2] == [f"dropped {2 + n_gone} of {len(bad)} row(s) with missing or infinite values (column 'time': "
                       f"{n_gone}; column 'y': 2); 1 subject(s) had no other rows and are left out: [{gone}]"]


def test_response_transforms_same_answer(client, dgp1_frame):
    """A positive response: "auto" fits it as given and on the log scale on the workers and keeps the scale
    the in-memory fit keeps, with the same bounds and numbers (before, a Dask frame was fitted as given
    only, and response_transform='log' was refused); a value outside log's domain is named."""
    df, _ = dgp1_frame
    pos = df.assign(y=np.exp(0.5 * df["y"]))
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=40)
    ddf = dd.from_pandas(pos, npartitions=2, sort=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(pos)
        m1 = MixtureLMM(**kw).fit(ddf)
    assert m0.response_transform_ == m1.response_transform_ == "log"
    assert list(m1.elbo_by_transform_) == ["none", "log"]
    np.testing.assert_allclose(list(m1.elbo_by_transform_.values()), list(m0.elbo_by_transform_.values()), rtol=1e-6)
    np.testing.assert_allclose(m1.elbo_data_scale_, m0.elbo_data_scale_, rtol=1e-6)
    _same_fit(m0, m1)
    huge = pos.copy()
    huge.loc[huge.index[5], "y"] = 1e12  # the scale as given is refused: the log scale alone, with a warning
    with pytest.warns(UserWarning, match=r"the response as given cannot be fitted \(the response 'y' is dominated"):
        m2 = MixtureLMM(**kw).fit(dd.from_pandas(huge, npartitions=3, sort=False))
    assert m2.response_transform_ == "log" and list(m2.elbo_by_transform_) == ["log"]
    bad = pos.copy()
    bad.loc[bad.index[5], "y"] = 0.0
    with pytest.raises(DataError, match=r"response_transform='log' needs response values above 0, but column 'y' "
                                         r"has 1 value\(s\) <= 0"):
        MixtureLMM(**kw, response_transform="log").fit(dd.from_pandas(bad, npartitions=2, sort=False))


def test_response_checks_are_the_in_memory_ones(client, dgp1_frame):
    """A response dominated by one value (ratio 3e8) is refused with the in-memory message (before, the Dask
    path had no such check); a response in units of 1e-13 is fitted (before, it was called constant)."""
    df, _ = dgp1_frame
    y = df["y"].to_numpy().copy()
    y[7] = 1e10
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=20)
    messages = []
    for frame in (df.assign(y=y), dd.from_pandas(df.assign(y=y), npartitions=3, sort=False)):  # exact sketches
        with pytest.raises(DataError, match=r"the response 'y' is dominated by a few extreme values") as err:
            MixtureLMM(**kw, response_transform=None).fit(frame)
        messages.append(str(err.value))
    assert messages[0] == messages[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw, response_transform=None).fit(df)
        m1 = MixtureLMM(**kw, response_transform=None).fit(dd.from_pandas(df.assign(y=df["y"] * 1e-13), npartitions=2, sort=False))
    np.testing.assert_allclose(m1.cluster_means_["mean"].to_numpy() / 1e-13, m0.cluster_means_["mean"].to_numpy(),
                               rtol=1e-6)


def _data_warnings(fit) -> list[warnings.WarningMessage]:
    """The DataWarnings and the binary-response UserWarning that ``fit()`` raises, in order."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit()
    return [w for w in caught if issubclass(w.category, DataWarning) or "takes two values only" in str(w.message)]


def test_far_values_and_a_binary_response_are_warned_as_in_memory(client, dgp1_frame):
    """The input warnings of the in-memory fit, word for word and pointing at the caller, on a Dask frame (before,
    it warned of neither): a missing-value code and a unit slip far from the rest (named with subject and time,
    found by one more pass over the partitions, the last partition's after the first's; three partitions of 400
    rows, so that the pooled sketches give the exact median), and a response with two values. A response mostly
    at its median with one extreme value is refused as in memory (the pooled spread now falls back to the
    deviations that are not 0, as robust_centre_spread does; before, its spread was 0 and the Dask fit went on)."""
    df, _ = dgp1_frame
    df = df.sort_values(["subject", "time"], kind="stable").reset_index(drop=True)
    y = df["y"].to_numpy().copy()
    last = len(y) - 3  # in the last partition
    y[[4, 50, last]] = [-999.0, 2000.0, -999.0]
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=5, response_transform=None)
    got = []
    for frame in (df.assign(y=y), dd.from_pandas(df.assign(y=y), npartitions=3, sort=False)):
        got.append(_data_warnings(lambda: MixtureLMM(**kw).fit(frame)))
    (w0,), (w1,) = got
    assert str(w1.message) == str(w0.message) and w1.filename == w0.filename == __file__
    s = df["subject"]
    for r in (4, 50, last):
        assert f"{y[r]:.6g} (subject {s[r]}, time {df['time'][r]:g})" in str(w1.message)
    assert "has 3 value(s) more than 100 robust spreads" in str(w1.message)
    # a positive response's long right tail is not far on the log scale: no warning on either
    pos = df.assign(y=np.exp(3 * df["y"]))
    assert _data_warnings(lambda: MixtureLMM(**kw).fit(dd.from_pandas(pos, npartitions=2, sort=False))) == []
    assert _data_warnings(lambda: MixtureLMM(**kw).fit(pos)) == []
    binary = df.assign(y=(df["y"] > 0).astype(float))
    got = [_data_warnings(lambda f=f: MixtureLMM(**kw).fit(f))
           for f in (binary, dd.from_pandas(binary, npartitions=3, sort=False))]
    assert [str(w.message) for w in got[1]] == [str(w.message) for w in got[0]] and len(got[0]) == 1
    assert "takes two values only (0 and 1)" in str(got[1][0].message) and got[1][0].filename == __file__
    mostly = df.assign(y=np.where(np.arange(len(df)) % 3 == 0, df["y"], 0.0))
    mostly.loc[10, "y"] = 1e12
    messages = []
    for frame in (mostly, dd.from_pandas(mostly, npartitions=3, sort=False)):
        with pytest.raises(DataError, match=r"dominated by a few extreme values") as err:
            MixtureLMM(**kw).fit(frame)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_report_before_collect_says_to_collect(client, dgp1_frame):
    """The report of a Dask fit whose per-subject tables are still on the workers: the documented TypeError
    (an AttributeError from inside the report before); after collect() it is made."""
    from dmlmm.distributed import collect
    from dmlmm.report import collect_results

    df, _ = dgp1_frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, basis=SplineBasis(6), random_state=0, max_iter=20).fit(
            dd.from_pandas(df, npartitions=2, sort=False))
    with pytest.raises(TypeError, match=r"the report needs the per-subject tables, which this Dask fit left on "
                                        r"the cluster: call dmlmm.distributed.collect\(model\) first"):
        collect_results(m, df)
    assert collect_results(collect(m), df).facts["subjects"] == str(df["subject"].nunique())


def test_prediction_refuses_a_subject_split_over_partitions(client, dgp1_frame):
    """As fit does: a split subject got one row of probabilities per partition, each from part of its visits."""
    df, _ = dgp1_frame
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = MixtureLMM(2, basis=SplineBasis(6), random_state=0, max_iter=20).fit(df)
    split = dd.from_pandas(df.sort_values("time"), npartitions=3, sort=False)
    for call in (lambda: m.predict_proba(split), lambda: m.predict(split),
                 lambda: m.predict_trajectory(split, times=[0.5]), lambda: m.score(split)):
        with pytest.raises(DataError, match=r"subject\(s\) have rows in more than one partition"):
            call()
    whole = dd.from_pandas(df, npartitions=3, sort=False)
    pd.testing.assert_frame_equal(m.predict_proba(whole).compute(), m.predict_proba(df), check_names=False)
    assert m.score(whole) == pytest.approx(m.score(df), abs=1e-12)
    with pytest.raises(DataError, match=r"expected a pandas DataFrame, got dask\..*DataFrame: this method works on "
                                        r"pandas frames; compute\(\) it"):
        m.sample_trajectories(whole)


def test_a_response_without_noise_is_refused_as_in_memory(client, dgp1_frame):
    """Constant within every subject, or an exact straight line of time: the in-memory message, from the
    partitions' pooled residual sums (the Dask fit crashed in the linear algebra or reported an ELBO of +17,000)."""
    df, _ = dgp1_frame
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=20)
    for y, what in ((df.groupby("subject")["y"].transform("mean"), "constant within every subject"),
                    (2 * df["time"] + 0.01 * df["subject"], "an exact straight line of time")):
        messages = []
        for frame in (df.assign(y=y), dd.from_pandas(df.assign(y=y), npartitions=3, sort=False)):
            with pytest.raises(DataError, match=rf"the response 'y' is {what}") as err:
                MixtureLMM(**kw).fit(frame)
            messages.append(str(err.value))
        assert messages[0] == messages[1]


# --------------------------------------------------------------------------- worker functions, no cluster


def _stats(df: pd.DataFrame):
    from dmlmm.data import Longitudinal
    from dmlmm.models.design import LongitudinalDesign

    d = Longitudinal.from_frame(df, covariates=["age", "sex"])
    design = LongitudinalDesign.learn(d, SplineBasis(6), 2)
    return d, design.stats(d)


def _path_globals(df: pd.DataFrame, stats, k: int):
    """The path prior and noise moments of a short MixtureLMM(k) fit to ``df`` (statistics ``stats``)."""
    m = MixtureLMM(k, basis=SplineBasis(6), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.fit(df, covariates=["age", "sex"])
    pp, _ = m.prior_.path_prior(m.params_.prior)
    return pp, noise_moments(m.params_, stats.dim_fixed, m.prior_.path_components())


def test_step_sums_match_in_memory_reductions(dgp1_frame):
    """Per-path sums of one shard give the engine's fixed-effect and noise reductions."""
    df, _ = dgp1_frame
    d, stats = _stats(df)
    pp, nm = _path_globals(df, stats, 3)
    loc = local_step(stats, pp, nm)
    shard = sh.Shard(d.subjects, stats)
    one = sh.shard_step(shard, None, None, sh.StepGlobals(pp, nm), False, 0.0, 1e-12)
    halves = [sh.Shard(d.subjects[:60], stats.subset(np.arange(60))), sh.Shard(d.subjects[60:], stats.subset(np.arange(60, 120)))]
    two = sh.add_all([sh.shard_step(s, None, None, sh.StepGlobals(pp, nm), False, 0.0, 1e-12).sums for s in halves])
    backend = DaskStats(None, [], stats.n_subjects, stats.dim_random, stats.dim_fixed)
    s_path = np.linspace(0.5, 2.0, pp.n_paths)
    wm, wc = np.array([0.1, -0.2]), np.array([[0.01, 0.002], [0.002, 0.02]])
    s_subj = loc.resp @ s_path
    for sums in (one.sums, two):
        dl = DistributedLocal([], sums)
        ftf, fty = backend.fixed_sums(dl, s_path)
        np.testing.assert_allclose(ftf, np.einsum("n,npq->pq", s_subj, stats.FtF), rtol=1e-10)
        np.testing.assert_allclose(fty, s_subj @ stats.Fty, rtol=1e-10)
        for got, want in zip(backend.path_rss(dl, wm, wc), path_rss(stats, loc, wm, wc)):
            np.testing.assert_allclose(got, want, rtol=1e-10)
        np.testing.assert_allclose(dl.log_evidence.sum(), loc.log_evidence.sum(), rtol=1e-12)
        np.testing.assert_allclose(dl.moments.second, loc.moments.second, rtol=1e-10, atol=1e-12)


def test_a_step_the_arithmetic_cannot_hold_returns_a_failure(dgp1_frame):
    """A shard's local step at a point the arithmetic cannot hold (the engine meets these at extrapolated
    points and rejects them) comes back as a StepFailure, not a raised task that distributed logs as
    'Compute Failed'; the driver raises it as the in-memory step would have. Overflow raises only under
    the driver's error state, which the globals carry."""
    df, _ = dgp1_frame
    d, stats = _stats(df)
    pp, nm = _path_globals(df, stats, 2)
    shard = sh.Shard(d.subjects, stats)
    bad = dataclasses.replace(pp, precision=-pp.precision, shared=None)  # not positive definite
    out = sh.shard_step(shard, None, None, sh.StepGlobals(bad, nm), False, 0.0, 1e-12)
    assert isinstance(out, sh.StepFailure) and out.kind == "LinAlgError" and "not positive definite" in out.message
    assert sh.step_sums(out) is out
    with pytest.raises(np.linalg.LinAlgError, match="not positive definite"):
        sh.raise_failures([sh.step_sums(sh.shard_step(shard, None, None, sh.StepGlobals(pp, nm), False, 0.0, 1e-12)), out])
    huge = dataclasses.replace(pp, shift=pp.shift * 1e160)  # its quadratic form overflows
    strict = dict(over="raise", invalid="raise", divide="raise", under="ignore")
    assert sh.shard_step(shard, None, None, sh.StepGlobals(huge, nm, strict), False, 0.0, 1e-12).kind == "FloatingPointError"
    with np.errstate(over="ignore", invalid="ignore"):
        assert isinstance(sh.shard_step(shard, None, None, sh.StepGlobals(huge, nm), False, 0.0, 1e-12), sh.ShardLocal)


def test_init_from_sums_matches_in_memory(dgp1_frame):
    df, _ = dgp1_frame
    d, stats = _stats(df)
    pooled = pooled_ridge(stats.total(), stats.n_subjects)
    b_hat, penalties = ridge_estimates(stats, 0.5, pooled=pooled, return_penalty=True)
    ridge = ridge_prior(0.5, None, pooled)
    sums = sh.add_all([sh.init_sums(sh.Shard(d.subjects, stats.subset(i)), b_hat[i], ridge)
                       for i in np.array_split(np.arange(stats.n_subjects), 3)])
    assert sums.penalty > 0
    cfg = VIConfig()
    for got, want in zip(init_noise_and_fixed_from_sums(sums, stats.dim_fixed, cfg),
                         init_noise_and_fixed(stats, b_hat, cfg, penalties)):
        for a, b in zip(dataclasses.astuple(got), dataclasses.astuple(want)):
            np.testing.assert_allclose(a, b, rtol=1e-10)
    assert isinstance(sh.totals(sh.Shard(d.subjects, stats)), SufficientStats)


def test_without_a_client_the_error_says_how_to_make_one():
    code = (
        "import dask.dataframe as dd, dmlmm\n"
        "ddf = dd.from_pandas(dmlmm.simulate.dgp1(random_state=0, n_subjects=10).data, npartitions=1)\n"
        "try:\n"
        "    dmlmm.MixtureLMM(2).fit(ddf)\n"
        "except RuntimeError as err:\n"
        "    assert 'distributed.Client' in str(err), err\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(SRC.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout


def _pooled(y: np.ndarray, n_parts: int):
    from dmlmm.data import Longitudinal
    from dmlmm.distributed.frame import combine_summaries

    df = pd.DataFrame({"subject": np.arange(len(y)) // 4, "time": np.arange(len(y)) % 4, "y": y})
    cuts = np.array_split(np.unique(df["subject"]), n_parts)
    reads = [(Longitudinal.from_frame(df[df["subject"].isin(c)]), int(df["subject"].isin(c).sum()), None) for c in cuts]
    return combine_summaries([sh.summarize(r, distinct_times=False) for r in reads], 0)


def test_pooled_response_summaries_match_the_exact_ones():
    """The partitions' sketches give the median and MAD of the whole response: exactly while each
    partition's values fit in its sketch, within 1 % beyond; with robust_centre_spread's fallback for a response
    mostly 0, and the same of log y for a positive response (the far-value warning's); the standard deviation
    of values whose squares underflow (units of 1e-200) is the in-memory one, which the refusal of such units
    quotes."""
    from dmlmm.standardise import response_scale, robust_centre_spread

    rng = np.random.default_rng(1)
    for n, parts, rtol in ((1000, 4, 1e-12), (1001, 3, 1e-12), (60000, 3, 1e-2)):
        y = rng.standard_t(3, n) * 2.0 + 5.0
        pooled = _pooled(y, parts)
        med = np.median(y)
        np.testing.assert_allclose(pooled.y_median, med, rtol=rtol)
        np.testing.assert_allclose(pooled.y_spread, 1.4826 * np.median(np.abs(y - med)), rtol=rtol)
        assert pooled.y_far == y[np.argmax(np.abs(y - med))]
    # the far-value warning's: the in-memory robust_centre_spread, of y and of log y
    for y in (np.exp(rng.normal(size=999)), np.r_[np.zeros(700), np.arange(1.0, 300.0)]):  # positive; mostly 0
        pooled = _pooled(y, 3)
        np.testing.assert_allclose([pooled.y_median, pooled.y_spread], robust_centre_spread(y), rtol=1e-12)
        if (y > 0).all():
            np.testing.assert_allclose(pooled.y_log_centre_spread, robust_centre_spread(np.log(y)), rtol=1e-12)
        else:
            assert pooled.y_log_centre_spread is None and pooled.y_spread == 1.4826 * 150.0  # median of 1..299
    y = rng.normal(size=400) * 1e-200
    pooled = _pooled(y, 3)
    assert np.std(y) == 0.0 and pooled.y_sd > 0
    big = np.abs(y).max()
    np.testing.assert_allclose(pooled.y_sd, big * np.std(y / big), rtol=1e-12)
    with pytest.raises(DataError, match=r"in units so small") as err:  # as in memory, with the same numbers
        response_scale(y)
    assert f"({pooled.y_sd:.3g} squared)" in str(err.value)


def test_auto_scales_hold_one_scale_at_a_time(client, dgp1_frame, monkeypatch):
    """With response_transform="auto" the scale fitted first (the log, dmlmm.models.fitting.fitting_order)
    is set aside (its statistics and local results cancelled on the workers) before the scale as given is
    fitted; kept after all, it is built again and gives the in-memory numbers (before, both scales'
    statistics stayed on the workers until the end)."""
    from dmlmm.distributed import fit as fit_mod

    df, _ = dgp1_frame
    pos = df.assign(y=np.exp(df["y"]))  # log-normal: the log scale is kept
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=40)
    fitted = []
    real = fit_mod._fit_scale

    def spy(model, frame, transform, client_, quiet=False, to_beat=None, plan=None):
        if not quiet:  # the inner call of a quiet (several scales) fit
            return real(model, frame, transform, client_, quiet, to_beat, plan)
        if fitted:  # the first scale's worker data are released before the next scale is fitted
            first = fitted[0]
            assert {f.status for f in list(first.stats.shards) + list(first.result.local.parts)} == {"cancelled"}
        fitted.append(real(model, frame, transform, client_, quiet, to_beat, plan))
        return fitted[-1]

    monkeypatch.setattr(fit_mod, "_fit_scale", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(pos)
        m1 = MixtureLMM(**kw).fit(dd.from_pandas(pos, npartitions=2, sort=False))
    assert [f.design.transform for f in fitted] == ["log", None]  # the in-memory fit does not come here
    assert m0.response_transform_ == "log" and m1.response_transform_ == "log"
    assert list(m1.elbo_by_transform_) == ["none", "log"]
    assert {f.status for f in fitted[1].stats.shards} == {"cancelled"}  # the losing scale as given, released too
    np.testing.assert_allclose(list(m1.elbo_by_transform_.values()), list(m0.elbo_by_transform_.values()), rtol=1e-6)
    _same_fit(m0, m1)


def test_subject_scales_same_answer(client, dgp1_frame, tmp_path):
    """``noise_df`` on a Dask frame: each subject's q(v_i) stays on its worker, nu is learned from all of them
    on the driver and SQUAREM extrapolates them where they are (dmlmm.distributed.scales): the in-memory
    fit's nu, ELBO, subjects' residual variances, fixed effects' covariance and bands (before, refused). The
    response is positive, so the log scale is fitted first and set aside, its scales kept on the workers, and
    restored when it wins. One group is noisier: ``noise="auto"`` fits one residual variance and one per
    cluster (with the scales, sigma2_k v_i) and keeps the latter, on both."""
    df, truth = dgp1_frame
    rng = np.random.default_rng(1)
    subjects = df["subject"].unique()[:80]
    noisy = pd.Series(rng.random(len(subjects)) < 0.25, index=subjects)  # a quarter of the subjects 4x noisier
    pos = df[df["subject"].isin(subjects)].copy()
    pos["y"] += 0.9 * noisy.loc[pos["subject"]].to_numpy() * rng.standard_normal(len(pos))
    pos["y"] += 0.6 * (truth.loc[pos["subject"]].to_numpy() == truth.iloc[0]) * rng.standard_normal(len(pos))  # one group noisier
    pos["y"] = np.exp(pos["y"] / 2)
    # one covariance: the Dask fit's choice between two is compared with the in-memory one's above
    # (test_formula_covariates_same_answer)
    kw = dict(n_components=2, basis=SplineBasis(6), noise_df="auto", noise="auto", covariance="pspline", random_state=0,
              max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(pos, covariates=["age"])
        m1 = MixtureLMM(**kw).fit(dd.from_pandas(pos, npartitions=2, sort=False), covariates=["age"])
    assert m0.response_transform_ == m1.response_transform_ == "log" and m0.noise_ == m1.noise_ == "cluster"
    assert 2.0 < m0.noise_df_ < 30.0  # heavy tails found
    np.testing.assert_allclose(m1.noise_df_, m0.noise_df_, rtol=1e-6)
    np.testing.assert_allclose(list(m1.elbo_by_transform_.values()), list(m0.elbo_by_transform_.values()), rtol=1e-6)
    assert is_dask_collection(m1.subject_noise_)
    _same_fit(m0, m1)
    np.testing.assert_allclose(m1.subject_noise_.reindex(m0.subject_noise_.index).to_numpy(), m0.subject_noise_.to_numpy(),
                               rtol=1e-6)
    own = m0.subject_noise_ / m0.sigma2_by_cluster_.to_numpy()[m0.groups_.loc[m0.subject_noise_.index].to_numpy()]
    noisiest = own.sort_values().index[-len(subjects) // 5:]  # E[v_i]: the model finds the noisy subjects
    assert noisy.loc[noisiest].mean() > 0.8
    some = pos[pos["subject"].isin(subjects[:4])]
    np.testing.assert_allclose(m1.predict_noise(some).to_numpy(), m0.predict_noise(some).to_numpy(), rtol=1e-6)
    pd.testing.assert_frame_equal(m1.predict_trajectory(some), m0.predict_trajectory(some), rtol=1e-5, atol=1e-6)
    m1.save(tmp_path / "scales.dmlmm")  # after collect (in _same_fit): the scales are gathered too
    back = dmlmm.load(tmp_path / "scales.dmlmm")
    np.testing.assert_allclose(back.predict_noise(some).to_numpy(), m0.predict_noise(some).to_numpy(), rtol=1e-6)


def test_shared_times_confound_the_noise_as_in_memory(client):
    """Every subject at the same seven times under eight functions: the Dask fit, as the in-memory one,
    fits the P-spline covariance alone under covariance="auto" (the same fit) and warns for "full"."""
    from dmlmm.exceptions import IdentifiabilityWarning

    rng = np.random.default_rng(0)
    times = np.array([0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0])
    n = 60
    level, slope = rng.normal(size=n), rng.normal(size=n) * 0.5
    df = pd.DataFrame({"subject": np.repeat(np.arange(n), len(times)), "time": np.tile(times, n)})
    df["y"] = np.repeat(level, len(times)) + np.repeat(slope, len(times)) * df["time"] + 0.2 * rng.normal(size=len(df))
    ddf = dd.from_pandas(df, npartitions=2, sort=False)
    kw = dict(n_components=1, basis=SplineBasis(8), random_state=0, max_iter=60, response_transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentifiabilityWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(df)
        m1 = MixtureLMM(**kw).fit(ddf)
    assert m0.prior_.covariance == m1.prior_.covariance == "pspline"
    _same_fit(m0, m1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(IdentifiabilityWarning, match="the same 7 distinct times, no more than the 8 basis functions"):
            MixtureLMM(**{**kw, "covariance": "full", "max_iter": 5}).fit(ddf)


def _shared_yearly_times(n_subjects: int = 80) -> pd.DataFrame:
    """Subjects seen at 3-5 of five shared yearly times, straight lines plus noise."""
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n_subjects):
        t = np.sort(rng.choice([-2.0, -1.0, 0.0, 1.0, 2.0], rng.integers(3, 6), replace=False))
        rows.append(pd.DataFrame({"subject": f"s{i:03d}", "time": t,
                                  "y": rng.normal() + (0.6 + 0.3 * rng.normal()) * t + rng.normal(0, 0.5, len(t))}))
    return pd.concat(rows, ignore_index=True)


def test_few_visit_times_reach_the_deep_mixtures_prior_as_in_memory(client):
    """Five shared times under twelve functions: the deep mixture's prior gets them on the workers' path too
    (the idiosyncratic shapes beyond what they resolve, priors/dmfa.py), and the Dask fit is the in-memory one."""
    df = _shared_yearly_times()
    kw = dict(n_components=(2, 1), latent_dims=(2, 1), basis=SplineBasis(12), loading_order=2, max_iter=100,
              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", EmptyComponentWarning)
        m0 = DeepMixtureLMM(**kw).fit(df)
        m1 = DeepMixtureLMM(**kw).fit(dd.from_pandas(df.set_index("subject"), npartitions=2))
    assert m0.prior_.visit_times == m1.prior_.visit_times == 5
    _same_fit(m0, m1)


def test_polynomial_block_same_answer_as_in_memory(client):
    """``polynomial_covariance="full"``: the block's updates read the workers' summed moments (the polynomial
    rows' E[t t'] off the diagonal too), and the Dask fit is the in-memory one."""
    df = _shared_yearly_times()
    kw = dict(n_components=(2, 1), latent_dims=(2, 1), basis=SplineBasis(8), loading_order=2, max_iter=100,
              random_state=0, polynomial_covariance="full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", EmptyComponentWarning)
        m0 = DeepMixtureLMM(**kw).fit(df)
        m1 = DeepMixtureLMM(**kw).fit(dd.from_pandas(df.set_index("subject"), npartitions=2))
    assert m0.params_.prior.layers[0].poly_cov is not None and m1.prior_.polynomial_covariance == "full"
    _same_fit(m0, m1)


def test_shared_visit_times_smooth_start_same_answer_as_in_memory(client, monkeypatch):
    """Subjects seen at a few shared yearly times: the fit explores the smooth start too (models/starting.py),
    built on the workers from their ridge fits, and the Dask fit is the in-memory one."""
    df = _shared_yearly_times()
    import dmlmm.models.candidates as candidates

    seen: list[int] = []
    inner = candidates.run_vi_with_starts

    def counting(*args, extra_starts=(), **kw):
        seen.append(len(extra_starts))
        return inner(*args, extra_starts=extra_starts, **kw)

    monkeypatch.setattr(candidates, "run_vi_with_starts", counting)
    kw = dict(n_components=3, basis=SplineBasis(12), max_iter=150, random_state=0)  # the same fit, converged or not
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(df)
        m1 = MixtureLMM(**kw).fit(dd.from_pandas(df.set_index("subject"), npartitions=2))
    assert seen == [1, 1]  # one smooth start in each fit
    _same_fit(m0, m1)


def _membership_frame(dgp1_frame) -> tuple[pd.DataFrame, pd.Series]:
    """dgp1_frame with an age that depends on the group (16 years between the groups' means, SD 10)."""
    df, truth = dgp1_frame
    rng = np.random.default_rng(0)
    age = pd.Series(rng.normal(50, 10, len(truth)) + 8 * truth.to_numpy(), index=truth.index)
    return df.assign(age=age.loc[df["subject"]].to_numpy()), truth


def test_membership_covariates_same_answer_as_in_memory(client, dgp1_frame):
    """Membership by baseline covariates on the workers (each shard's subjects' rows of Z, the membership sums
    returned with the step's): a deep mixture whose paths share first-layer components, from a frame indexed by
    subject, is the in-memory fit, coefficients and their SDs included; and both are the maximum-likelihood
    logistic regression of the true groups on age and sex (statsmodels), which the groups, recovered exactly,
    make the target (measured: slope of age 0.1585 against 0.1587, SD 0.0296 against 0.0300)."""
    import statsmodels.api as sm

    df, truth = _membership_frame(dgp1_frame)
    kw = dict(n_components=(2, 2), basis=SplineBasis(6), loading_order=2.0, random_state=0,
              membership_covariates=["age", "sex"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = DeepMixtureLMM(**kw).fit(df)
        m1 = DeepMixtureLMM(**kw).fit(dd.from_pandas(df.set_index("subject"), npartitions=3))
    _same_fit(m0, m1)
    a, b = m1.membership_coefficients_, m0.membership_coefficients_
    pd.testing.assert_frame_equal(a, b, rtol=1e-5, atol=1e-6)
    base = df.groupby("subject").first().loc[truth.index]
    X = sm.add_constant(np.c_[base["age"], base["sex"] == "m"].astype(float))
    group = int(a["group"].iloc[0])
    y = (m0.groups_.loc[truth.index] == group).to_numpy().astype(float)
    assert adjusted_rand_index(truth, m0.groups_.loc[truth.index]) == 1.0
    mle = sm.Logit(y, X).fit(disp=0)
    assert np.all(np.abs(a["estimate"].to_numpy() - mle.params) <= 0.1 * mle.bse)  # within a tenth of an SD
    np.testing.assert_allclose(a["sd"].to_numpy(), mle.bse, rtol=0.05)
    pd.testing.assert_frame_equal(m1.membership_probabilities(df), m0.membership_probabilities(df), rtol=1e-5, atol=1e-8)


def test_membership_covariates_missing_or_varying_as_in_memory(client, dgp1_frame):
    """A subject without any value of a membership covariate: the in-memory error without ``dropna``; with it, the
    in-memory warning word for word and the same fit. A covariate that changes within a subject, or a column that
    is not there: the in-memory errors."""
    df, _ = _membership_frame(dgp1_frame)
    gone = df["subject"].iloc[-1]
    bad = df.assign(age=df["age"].where(df["subject"] != gone))
    ddf = dd.from_pandas(bad, npartitions=2, sort=False)
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=40, membership_covariates=["age"])
    with pytest.raises(DataError, match=rf"membership covariate\(s\) \['age'\] are missing for subject\(s\) \[{gone}\]"):
        MixtureLMM(**kw).fit(ddf)
    said, fits = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for frame in (bad, ddf):
            with pytest.warns(UserWarning, match="whose membership covariate") as got:
                fits.append(MixtureLMM(**kw).fit(frame, dropna=True))
            said.append([str(w.message) for w in got if "membership covariate" in str(w.message)])
    assert said[0] == said[1] == [f"dropped 1 subject(s) (10 row(s)) whose membership covariate(s) ['age'] are missing "
                                  f"at every visit: [{gone}]"]
    assert gone not in set(fits[1].subjects_) and len(fits[1].subjects_) == len(fits[0].subjects_)
    assert abs(fits[1].elbo_ - fits[0].elbo_) <= 1e-6 * abs(fits[0].elbo_)
    varying = df.assign(age=df["age"] + (df["subject"] == gone) * np.arange(len(df)))
    with pytest.raises(DataError, match=rf"membership covariate 'age' changes within subject {gone}"):
        MixtureLMM(**kw).fit(dd.from_pandas(varying, npartitions=2, sort=False))
    with pytest.raises(DataError, match=r"column\(s\) \['patient'\] not found in the data"):  # before reading covariates
        MixtureLMM(**kw).fit(ddf, subject="patient")
    with pytest.raises(DataError, match=r"membership covariate column\(s\) \['weight'\] not found"):
        MixtureLMM(**{**kw, "membership_covariates": ["weight"]}).fit(ddf)
    with pytest.raises(ValueError, match="membership_covariates cannot include 'time'"):
        MixtureLMM(**{**kw, "membership_covariates": ["time"]}).fit(ddf)


def test_membership_covariates_on_two_response_scales_as_in_memory(client, dgp1_frame):
    """A positive response under response_transform="auto": the log scale, fitted first, is set aside while the
    scale as given is fitted, and its shards are built again (with their rows of Z) when it wins."""
    df, _ = _membership_frame(dgp1_frame)
    positive = df.assign(y=np.exp(0.5 * df["y"]))
    kw = dict(n_components=2, basis=SplineBasis(6), random_state=0, max_iter=30, membership_covariates=["age"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        m0 = MixtureLMM(**kw).fit(positive)
        m1 = MixtureLMM(**kw).fit(dd.from_pandas(positive, npartitions=3, sort=False))
    assert m0.response_transform_ == m1.response_transform_ == "log"
    _same_fit(m0, m1)
    pd.testing.assert_frame_equal(m1.membership_coefficients_, m0.membership_coefficients_, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------- the command line: dmlmm fit --dask
CLI_FAST = ["--model", "mixture", "--components", "2", "--n-basis", "6", "--transform", "none", "--no-report"]


def _cli(*args):
    """``dmlmm`` with ``args``, in this process (click's runner)."""
    from click.testing import CliRunner

    from dmlmm.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_cli_fit_on_dask_writes_what_the_in_memory_fit_writes(client, dgp1_frame, tmp_path):
    df, _ = dgp1_frame
    df = df.copy()
    df.loc[[3, 40, 41], "y"] = np.nan  # --dropna: the fit and the curves leave out the same rows
    df.to_csv(tmp_path / "d.csv", index=False)
    for sex, rows in df.groupby("sex"):  # a Hive folder per sex (the files do not hold the column); each
        split_parquet(rows.drop(columns="sex"), tmp_path / "visits" / f"sex={sex}")  # subject's rows in two files
    opts = [*CLI_FAST, "--covariates", "age,sex", "--max-iter", "40", "--dropna", "--check-bands", "-q"]
    r = _cli("fit", tmp_path / "visits", *opts, "--dask", client.scheduler.address, "--out", tmp_path / "dask")
    assert r.exit_code == 0, r.output
    assert "120 subject(s) have rows in more than one partition (e.g. 0): the rows are shuffled" in r.stderr
    # 120 subjects, fewer than --sample's 1,000: every subject's curve, as in memory; the covariates by cluster;
    # fewer than the band check's 2,000: it refits on all of them, as in memory
    assert sorted(p.name for p in (tmp_path / "dask").iterdir()) == ["band_check.csv", "baseline.csv", "clusters.csv",
                                                                     "model.dmlmm", "trajectories.csv"]
    r = _cli("fit", tmp_path / "d.csv", *opts, "--jobs", "1", "--out", tmp_path / "mem")
    assert r.exit_code == 0, r.output
    for name, keys in (("clusters.csv", ["subject"]), ("trajectories.csv", ["subject", "time"]),
                       ("band_check.csv", ["subject", "time"])):
        got, want = (pd.read_csv(tmp_path / f / name).sort_values(keys, ignore_index=True) for f in ("dask", "mem"))
        pd.testing.assert_frame_equal(got, want, rtol=1e-8, atol=1e-10)
    # sex read from the folders' names (a categorical) and from the CSV file (text): the same table
    pd.testing.assert_frame_equal(*(pd.read_csv(tmp_path / f / "baseline.csv") for f in ("dask", "mem")))
    for f in ("dask", "mem"):  # the model files forecast alike
        r = _cli("predict", tmp_path / f / "model.dmlmm", tmp_path / "d.csv", "--times", "0:1:0.5", "--out",
                 tmp_path / f"pred_{f}.csv")
        assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "pred_dask.csv"), pd.read_csv(tmp_path / "pred_mem.csv"),
                                  rtol=1e-7, atol=1e-9)
    # the predictions on the cluster: the Parquet folder (sex from the folders' names, every subject's rows in two
    # files) predicted partition by partition, the in-memory table
    r = _cli("predict", tmp_path / "mem" / "model.dmlmm", tmp_path / "visits", "--times", "0:1:0.5", "--dropna",
             "--dask", client.scheduler.address, "--out", tmp_path / "pred_on_dask")
    assert r.exit_code == 0, r.output
    assert "120 subject(s) have rows in more than one partition (e.g. 0): the rows are shuffled by subject on the " \
           "cluster before the predictions" in r.stderr
    assert "predictions for 120 subject(s) at 3 time(s) written to" in r.stderr
    got = pd.read_parquet(tmp_path / "pred_on_dask").sort_values(["subject", "time"], ignore_index=True)
    want = pd.read_csv(tmp_path / "pred_mem.csv").sort_values(["subject", "time"], ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False, rtol=1e-9, atol=1e-12)
    r = _cli("predict", tmp_path / "mem" / "model.dmlmm", tmp_path / "visits", "--dask", "local:1")
    assert error_line(r) == "error: --dask writes the predictions to a folder of Parquet files: give it with --out FOLDER"


def test_cli_dask_dropna_keeps_a_row_whose_membership_value_is_missing(client, dgp1_frame, tmp_path):
    """A baseline membership covariate missing at one later visit: --dropna cleans the rows on the model's
    columns, so that visit stays in the fit and in trajectories.csv on Dask as in memory (the subject's
    baseline comes from its other visits)."""
    df, _ = _membership_frame(dgp1_frame)
    df = df.rename(columns={"age": "base"}).drop(columns="sex")
    who = df["subject"].iloc[0]
    last = df.index[df["subject"] == who][-1]
    df.loc[last, "base"] = np.nan
    df.loc[df.index[df["subject"] == df["subject"].iloc[-1]][1], "y"] = np.nan  # a missing response: dropped alike
    gone = df["subject"].iloc[len(df) // 2]
    df.loc[df["subject"] == gone, "base"] = np.nan  # no baseline at all: left out of the fit and of the band check
    df.to_csv(tmp_path / "d.csv", index=False)
    folder = split_parquet(df, tmp_path / "visits")
    opts = [*CLI_FAST, "--membership-covariates", "base", "--max-iter", "40", "--dropna", "--check-bands", "-q"]
    r = _cli("fit", folder, *opts, "--dask", client.scheduler.address, "--out", tmp_path / "dask")
    assert r.exit_code == 0, r.output
    r = _cli("fit", tmp_path / "d.csv", *opts, "--jobs", "1", "--out", tmp_path / "mem")
    assert r.exit_code == 0, r.output
    for name, keys in (("clusters.csv", ["subject"]), ("trajectories.csv", ["subject", "time"]),
                       ("band_check.csv", ["subject", "time"])):
        got, want = (pd.read_csv(tmp_path / f / name).sort_values(keys, ignore_index=True) for f in ("dask", "mem"))
        pd.testing.assert_frame_equal(got, want, rtol=1e-7, atol=1e-9)
    assert gone not in set(pd.read_csv(tmp_path / "dask" / "band_check.csv")["subject"])
    traj = pd.read_csv(tmp_path / "dask" / "trajectories.csv")
    mine = traj[traj["subject"] == who]
    t_last = df.loc[last, "time"]
    assert t_last > df.loc[df["subject"] == who, "time"].drop(last).max()  # the visit kept is the subject's last:
    assert (mine["beyond_last_visit"] == (mine["time"] > t_last)).all()  # its curve is marked beyond it only


def test_rows_of_a_subject_in_two_partitions_are_brought_together(client, dgp1_frame):
    from dmlmm.cli_dask import by_subject

    df, _ = dgp1_frame
    ddf = dd.from_pandas(df, npartitions=7, sort=False)  # row blocks: subjects cut at the blocks' edges
    spans = [set(p.compute()) for p in ddf["subject"].partitions]
    assert any(a & b for a, b in zip(spans, spans[1:]))
    with pytest.warns(UserWarning, match=r"^\d+ subject\(s\) have rows in more than one partition \(e\.g\. \d+\): "
                                         r"the rows are shuffled by subject"):
        moved = by_subject(ddf, "subject", client)
    parts = [p.compute()["subject"].unique() for p in moved.partitions]
    labels = np.concatenate(parts)
    assert len(labels) == df["subject"].nunique() == len(set(labels))  # each subject in one partition
    pd.testing.assert_frame_equal(moved.compute().sort_values(["subject", "time"], ignore_index=True),
                                  df.sort_values(["subject", "time"], ignore_index=True),
                                  check_dtype=False)  # dask holds text as pyarrow strings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert by_subject(moved, "subject", client) is moved  # already by subject: as it is, silently


def test_cli_dask_summary_says_where_the_curves_are(client, parquet_frame, tmp_path):
    path = tmp_path / "byid"
    parquet_frame.to_parquet(path)  # written with the subject as index: no shuffle
    # a URL (file://, as s3:// on a real cluster), read by the workers
    r = _cli("fit", path.as_uri(), *CLI_FAST, "--max-iter", "30", "--sample", "0", "--dask", client.scheduler.address,
             "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "more than one partition" not in r.stderr
    assert "MixtureLMM: 120 subjects" in r.stdout
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clusters.csv", "model.dmlmm"]
    assert r.stdout.rstrip().endswith(
        f"--sample 0: no curves drawn; clusters.csv and the class summary cover all 120; draw the curves of other "
        f"subjects with: dmlmm predict {tmp_path / 'o' / 'model.dmlmm'} SUBJECTS (a CSV or Parquet file of their "
        "visits; with --dask, a Parquet folder of any size)")


def test_cli_dask_draws_the_curves_of_a_sample_within_each_cluster(client, parquet_frame, tmp_path):
    from dmlmm import load

    path = tmp_path / "byid"
    parquet_frame.to_parquet(path)
    opts = [a for a in CLI_FAST if a != "--no-report"]
    r = _cli("fit", path, *opts, "--max-iter", "30", "--sample", "30", "--seed", "4", "--dask", client.scheduler.address,
             "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["clusters.csv", "model.dmlmm", "report.html",
                                                                  "trajectories.csv"]
    clusters = pd.read_csv(tmp_path / "o" / "clusters.csv").set_index("subject")["cluster"]
    traj = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    drawn = traj["subject"].unique()
    sizes, got = clusters.value_counts(), clusters.loc[drawn].value_counts()
    assert len(sizes) == 2 and len(drawn) == max(30, sum(min(20, n) for n in sizes))  # at least 20 of each cluster
    assert all(got[k] >= min(20, sizes[k]) for k in sizes.index)
    assert (traj.groupby("subject")["cluster"].first() == clusters.loc[traj.groupby("subject")["cluster"].first().index]).all()
    # the curves are the saved model's, given the drawn subjects' visits
    visits = parquet_frame.compute().reset_index()
    want = load(tmp_path / "o" / "model.dmlmm").predict_trajectory(
        visits[visits["subject"].isin(drawn)], times=np.sort(traj["time"].unique()))
    pd.testing.assert_frame_equal(traj[["subject", "time", "mean", "lower", "upper"]].sort_values(["subject", "time"], ignore_index=True),
                                  want[["subject", "time", "mean", "lower", "upper"]].sort_values(["subject", "time"], ignore_index=True),
                                  check_dtype=False, rtol=1e-9, atol=1e-12)
    assert (f"trajectories.csv and report.html draw the curves of {len(drawn)} subjects drawn at random within each "
            "cluster (--sample 30, --seed 4); clusters.csv and the class summary cover all 120") in r.stdout
    page = (tmp_path / "o" / "report.html").read_text()
    assert (f"the trajectories and the figures of the data show {len(drawn)} of the 120 subjects (trajectories.csv "
            "holds their curves), drawn at random within each cluster (at least 20 of each, seed 4)") in page
    assert f"observations (sample)</div><div class=\"v\">{visits['subject'].isin(drawn).sum()}<" in page


@pytest.mark.parametrize("criterion", ["elbo", "heldout"])
def test_cli_select_on_dask_fits_the_candidates_on_the_cluster_as_in_memory(client, dgp1_frame, tmp_path, criterion):
    """With "heldout" the split of the partitions holds out the in-memory split's visits."""
    df, _ = dgp1_frame
    df.to_csv(tmp_path / "d.csv", index=False)
    df.set_index("subject").to_parquet(tmp_path / "d.parquet")
    opts = [*CLI_FAST, "--select", "--criterion", criterion, "--max-iter", "30"]  # the mixture with 1 and 2 components
    r = _cli("fit", tmp_path / "d.parquet", *opts, "--dask", client.scheduler.address, "--out", tmp_path / "dask")
    assert r.exit_code == 0, r.output
    on_dask = [line.rsplit(",", 1)[0] for line in r.stderr.splitlines() if line.startswith(("  [", "selected"))]
    r = _cli("fit", tmp_path / "d.csv", *opts, "--jobs", "1", "--out", tmp_path / "mem")
    assert r.exit_code == 0, r.output
    in_memory = [line.rsplit(",", 1)[0] for line in r.stderr.splitlines() if line.startswith(("  [", "selected"))]
    # the same candidates, ELBOs (to the hundredth printed) or held-out scores, components and choice; the seconds
    # differ
    assert on_dask == in_memory and len(on_dask) == 3 and on_dask[-1].startswith("selected: mixture of LMMs")
    assert ("held-out log score" in on_dask[-1]) == (criterion == "heldout")
    got, want = (pd.read_csv(tmp_path / f / "clusters.csv").sort_values("subject", ignore_index=True)
                 for f in ("dask", "mem"))
    pd.testing.assert_frame_equal(got, want, rtol=1e-7, atol=1e-9)


def test_select_model_by_heldout_visits_on_dask_as_in_memory(client, spline_data):
    """Irregular times: the held-out visits take distinct times with them, and the basis is still the one
    fitted on all the data's times, as in memory (not each candidate's training half's)."""
    from dmlmm.selection import select_model

    ddf = dd.from_pandas(spline_data.set_index("id"), npartitions=3, sort=True)
    kw = dict(models=("mixture",), mixture_components=(1, 2), criterion="heldout", basis=SplineBasis(6),
              max_iter=30, random_state=0, subject="id", time="t", response="y", response_transform=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, table = select_model(ddf, **kw)
        want_model, want = select_model(ddf.compute().reset_index(), **kw)
    cols = ["elbo", "heldout_score", "selected"]
    pd.testing.assert_frame_equal(table[cols], want[cols], rtol=1e-8)
    np.testing.assert_array_equal(model.design_.basis.knots_, want_model.design_.basis.knots_)


def test_select_model_on_dask_fits_one_candidate_at_a_time(parquet_frame):
    from dmlmm.selection import select_model

    with pytest.raises(ValueError, match=r"^n_jobs=2: on a Dask frame the candidates are fitted one after the other"):
        select_model(parquet_frame, n_jobs=2)


def test_heldout_split_and_scores_on_dask_are_the_in_memory_ones(client, dgp1_frame):
    df, _ = dgp1_frame
    ddf = dd.from_pandas(df.set_index("subject"), npartitions=3, sort=True)
    rng_mem, rng_dask = np.random.default_rng(5), np.random.default_rng(5)
    train, held = simulate.split_heldout(ddf.compute().reset_index(), 0.3, rng_mem)
    d_train, d_held = simulate.split_heldout(ddf, 0.3, rng_dask)
    for mine, theirs in ((train, d_train), (held, d_held)):
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.compute().reset_index().reset_index(drop=True))
    assert rng_mem.random() == rng_dask.random()  # both generators advanced past every row's draw
    with pytest.raises(ValueError, match=r"^random_state: a Dask frame's split draws each partition's rows from a "
                                         r"stream advanced to its first row, which a Philox generator cannot do"):
        simulate.split_heldout(ddf, 0.3, np.random.Generator(np.random.Philox(5)))
    model = MixtureLMM(2, basis=SplineBasis(6), max_iter=30, random_state=0).fit(train)
    want = model.score_samples(held, condition_on=train)
    got = model.score_samples(d_held, condition_on=d_train)
    assert is_dask_collection(got)
    pd.testing.assert_series_equal(got.compute().sort_index(), want.sort_index(), rtol=1e-10, check_index_type=False)
    assert model.score(d_held, condition_on=d_train) == pytest.approx(model.score(held, condition_on=train), abs=1e-12)
    assert model.score(d_held) == pytest.approx(model.score(held), abs=1e-12)
    for frame, given in ((d_held, train), (held, d_train)):
        with pytest.raises(DataError, match=r"^score_samples on a Dask frame conditions on a Dask frame of the same "):
            model.score_samples(frame, condition_on=given)
    with pytest.raises(DataError, match=r"^condition_on has 2 partition\(s\) and the frame scored 3: partition i "):
        model.score_samples(d_held, condition_on=dd.from_pandas(train, npartitions=2))
    # a partition whose subjects have one visit each holds none out: it scores nobody
    ones = df.groupby("subject").head(1).assign(subject=lambda f: f["subject"] + 10_000).set_index("subject")
    lone = dd.concat([d_held.partitions[0], dd.from_pandas(ones.iloc[:0], npartitions=1)])
    lone_given = dd.concat([d_train.partitions[0], dd.from_pandas(ones.iloc[:5], npartitions=1)])
    got = model.score_samples(lone, condition_on=lone_given).compute()
    pd.testing.assert_series_equal(got.sort_index(), want.loc[got.index].sort_index(), rtol=1e-10,
                                   check_index_type=False)
    shuffled = dd.from_pandas(train.sort_values("subject", ascending=False), npartitions=3, sort=False)
    with pytest.raises(DataError, match=r"^subject \S+ is in partition 0 of the frame scored but in another partition "):
        model.score_samples(d_held, condition_on=shuffled)


def test_the_exact_linear_mixed_model_says_how_to_fit_on_dask(parquet_frame):
    with pytest.raises(DataError, match=r"^LinearMixedModel fits in memory: compute\(\) the Dask frame first, or "
                                        r"fit the Gaussian LMM on the cluster as MixtureLMM\(1\)"):
        dmlmm.LinearMixedModel().fit(parquet_frame, subject="subject", time="time", response="y")


def test_band_check_rows_are_every_row_of_subjects_drawn_at_random(client, parquet_frame):
    from dmlmm.cli_dask import band_check_rows

    visits = parquet_frame.compute().reset_index()
    rows, total = band_check_rows(parquet_frame, "subject", client, seed=3, n=25)
    drawn = rows["subject"].unique()
    assert total == visits["subject"].nunique() == 120 and len(drawn) == 25
    pd.testing.assert_frame_equal(rows.sort_values(["subject", "time"], ignore_index=True),
                                  visits[visits["subject"].isin(drawn)].sort_values(["subject", "time"], ignore_index=True))
    again, _ = band_check_rows(parquet_frame, "subject", client, seed=3, n=25)
    other, _ = band_check_rows(parquet_frame, "subject", client, seed=4, n=25)
    assert set(again["subject"]) == set(drawn) != set(other["subject"])
    every, _ = band_check_rows(parquet_frame, "subject", client, seed=3, n=500)
    assert set(every["subject"]) == set(visits["subject"])


def test_sample_subjects_is_stratified_reproducible_and_floored():
    from dmlmm.cli_dask import sample_subjects

    cluster_of = pd.Series(np.repeat([0, 1, 2], [900, 90, 10]), index=[f"s{i}" for i in range(1000)])
    a = sample_subjects(cluster_of, 100, seed=1)
    counts = cluster_of.loc[a].value_counts().sort_index()
    # shares 90 / 9 / 1, raised to 20 for the second cluster and to all 10 of the third
    assert counts.to_dict() == {0: 90, 1: 20, 2: 10} and len(set(a)) == len(a)
    assert list(a) == [s for s in cluster_of.index if s in set(a)]  # in the subjects' order
    np.testing.assert_array_equal(a, sample_subjects(cluster_of, 100, seed=1))
    assert set(a) != set(sample_subjects(cluster_of, 100, seed=2))
    # largest remainders: the shares (50.5, 30.3, 20.2) add up to n where no floor binds
    even = pd.Series(np.repeat([0, 1, 2], [500, 300, 200]))
    assert even.loc[sample_subjects(even, 101, seed=0)].value_counts().sort_index().tolist() == [51, 30, 20]
    np.testing.assert_array_equal(sample_subjects(cluster_of, 1000, seed=0), cluster_of.index.to_numpy())
    assert len(sample_subjects(cluster_of, 0, seed=0, floor=0)) == 0


@pytest.mark.parametrize("args, message", [
    (["--jobs", "2"], "--jobs does not work with --dask: the cluster's workers do the parallel work; leave it out, "
                      "or fit without --dask"),
    (["--model", "lmm", "--method", "ml"], "--method does not work with --dask: the exact ML / REML fits run in "
                                           "memory (--model lmm without --method fits the variational LMM on the "
                                           "cluster); leave it out, or fit without --dask"),
    (["--dask", "local:0"], "--dask 'local:0': local:N needs a positive whole number of worker processes, e.g. "
                            "local:2"),
    (["--sample", "5", "--no-dask"], "--sample applies to --dask fits (which draw the curves of a sample of subjects); "
                                     "without --dask, trajectories.csv and the report draw every subject's curve"),
])
def test_cli_dask_refuses_what_needs_the_data_here(tmp_path, args, message):
    pd.DataFrame({"subject": [1, 1, 2], "time": [0.0, 1, 0], "y": [1.0, 2, 3]}).to_parquet(tmp_path / "d.parquet")
    dask = [] if "--dask" in args else ["--dask", "local:1"]
    if "--no-dask" in args:
        args, dask = [a for a in args if a != "--no-dask"], []
    r = _cli("fit", tmp_path / "d.parquet", *args, *dask, "--out", tmp_path / "o")
    assert error_line(r) == f"error: {message}"


def test_cli_dask_reads_parquet_only(tmp_path):
    pd.DataFrame({"subject": [1, 1, 2], "time": [0.0, 1, 0], "y": [1.0, 2, 3]}).to_csv(tmp_path / "d.csv")
    r = _cli("fit", tmp_path / "d.csv", "--dask", "local:1", "--out", tmp_path / "o")
    assert error_line(r) == (
        f"error: --dask reads Parquet (a file, or a folder of files partitioned by subject): '{tmp_path / 'd.csv'}' "
        "is not a Parquet file; write the data with e.g. pandas' df.to_parquet('visits.parquet') or dask's "
        "ddf.set_index('subject').to_parquet('visits/')")
    assert not (tmp_path / "o").exists()


def test_cli_dask_local_cluster_gives_the_fits_error_in_one_line(dgp1_frame, tmp_path):
    df, _ = dgp1_frame
    df.to_parquet(tmp_path / "d.parquet")  # y has negative values: no log scale
    r = _cli("fit", tmp_path / "d.parquet", "--transform", "log", "--dask", "local:1", "--out", tmp_path / "o")
    # one error line, no worker log or traceback (other tests' clusters may leave warnings in this process)
    assert error_line(r).startswith("error: --transform log needs response values above 0, but column 'y' has ")
    assert "distributed.worker" not in r.stderr and not (tmp_path / "o").exists()


def test_cli_dask_without_dask_says_what_to_install(tmp_path, monkeypatch):
    pd.DataFrame({"subject": [1, 1, 2], "time": [0.0, 1, 0], "y": [1.0, 2, 3]}).to_parquet(tmp_path / "d.parquet")
    monkeypatch.setitem(sys.modules, "dask.dataframe", None)
    r = _cli("fit", tmp_path / "d.parquet", "--dask", "local:1", "--out", tmp_path / "o")
    assert error_line(r) == 'error: --dask needs dask and its distributed scheduler: pip install "dmlmm[dask]"'

"""Visit dates turned into times on a Dask frame (dmlmm.distributed.dates) and ``dmlmm fit --dask --time-unit``:
the same numbers, rule, fit and outputs as in memory; outcomes, survival and characteristics by cluster of a Dask
frame too (``dmlmm.outcomes.outcome_report``, ``--outcome / --event-time / --baseline``)."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

import dmlmm  # noqa: E402
from dmlmm.distributed import times_from_dates  # noqa: E402
from dmlmm.dates import DateError  # noqa: E402
from dmlmm import outcomes as oc  # noqa: E402
from dmlmm.exceptions import DataError  # noqa: E402
from dmlmm.simulate import dgp1  # noqa: E402
from helpers import split_parquet  # noqa: E402


@pytest.fixture(scope="module")
def visits() -> pd.DataFrame:
    """DGP 1's first 60 subjects as visit dates: subject i enrols on day 11 i of 2019 and is seen t years later
    (to the second); its enrolment date in its own column. Per subject: an arm, the date its follow-up ended
    (2-6 years after enrolment) and whether it died then; per visit: a weight."""
    df = dgp1(0, n_subjects=60).data
    enrol = pd.Timestamp("2019-01-01") + pd.to_timedelta(11 * df["subject"], unit="D")
    seconds = np.round(df["time"] * 365.25 * 86400)
    ended = enrol + pd.to_timedelta(365 * (2 + df["subject"] % 5) + df["subject"], unit="D")
    return pd.DataFrame({"subject": df["subject"], "visit": enrol + pd.to_timedelta(seconds, unit="s"),
                         "enrolled": enrol.dt.strftime("%Y-%m-%d"), "y": df["y"],
                         "arm": np.where(df["subject"] % 3 == 0, "placebo", "drug"),
                         "ended": ended.dt.strftime("%Y-%m-%d"), "died": (df["subject"] % 4 == 1).astype(int),
                         "weight": np.round(70 + df["subject"] % 7 + 3 * df["time"], 1)})


def test_times_from_dates_on_dask_are_the_in_memory_ones(client, visits):
    frame = visits.assign(visit=visits["visit"].dt.strftime("%Y-%m-%d %H:%M:%S"))  # ISO text, as from a CSV
    frame.loc[5, "visit"] = None  # a row without a date: no time, as in memory
    frame["row"] = np.arange(len(frame))
    ddf = dd.from_pandas(frame.set_index("subject"), npartitions=3)  # sorted: each subject in one partition
    for origin in ("first-visit", "study-start", "enrolled"):
        want, want_rule = dmlmm.times_from_dates(frame, "subject", "visit", unit="weeks", origin=origin, response="y")
        got, rule = times_from_dates(ddf, "subject", "visit", unit="weeks", origin=origin, response="y")
        got = got.compute().reset_index().set_index("row").sort_index()
        assert rule == want_rule  # the same name, origins (all 60 subjects') and study start
        np.testing.assert_array_equal(got[rule.name].to_numpy(), want[rule.name].to_numpy())
        assert np.isnan(got[rule.name][5])
    # a subject in two partitions is named (its first visit would be read twice)
    split = dd.from_pandas(pd.concat([frame.iloc[::2], frame.iloc[1::2]]), npartitions=2, sort=False)
    with pytest.raises(DateError, match="subject '0' has rows in more than one partition"):
        times_from_dates(split, "subject", "visit")
    with pytest.raises(DateError, match="column 'y' does not hold dates"):
        times_from_dates(ddf, "subject", "y")
    with pytest.raises(DateError, match=r"a Dask DataFrame: dmlmm.distributed.times_from_dates\(ddf, ...\)"):
        dmlmm.times_from_dates(ddf, "subject", "visit")


def test_outcome_report_of_a_dask_frame_is_the_in_memory_one(client, visits):
    """Every table of outcome_report, from a Dask frame whose subjects lie in several partitions (split or not),
    as from the same rows in memory; the errors too."""
    frame = visits.assign(years=(visits["visit"] - visits["visit"].min()).dt.days / 365.25, futime=visits["died"] + 2.5)
    clusters = pd.Series(frame["subject"].drop_duplicates().to_numpy() % 2, index=frame["subject"].drop_duplicates())
    ask = dict(outcomes=["arm"], duration="futime", event="died", baseline=["weight", "arm"], subject="subject",
               order_by="years")
    want = oc.outcome_report(clusters, frame, **ask)
    split = pd.concat([frame.iloc[::2], frame.iloc[1::2]])  # every subject's rows in both partitions
    for ddf in (dd.from_pandas(frame, npartitions=3, sort=False), dd.from_pandas(split, npartitions=2, sort=False)):
        got = oc.outcome_report(clusters, ddf, **ask)
        assert got.files().keys() == want.files().keys() == {"outcomes.csv", "survival.csv", "baseline.csv",
                                                             "outcome_tests.csv"}
        for name, table in want.files().items():
            pd.testing.assert_frame_equal(got.files()[name], table)
        assert got.text() == want.text() and got.baseline.varying == ["weight"]
    ddf = dd.from_pandas(frame, npartitions=3, sort=False)
    with pytest.raises(DataError, match=r"column 'weight' must hold one value per subject \(an outcome\), but it "
                                        r"varies within 60 of 60 subject\(s\)"):
        oc.outcome_report(clusters, ddf, outcomes=["weight"], subject="subject", order_by="years")
    with pytest.raises(DataError, match="column 'nope' not found in the data"):
        oc.outcome_report(clusters, ddf, outcomes=["nope"], subject="subject")


def _cli(*args):
    from click.testing import CliRunner

    from dmlmm.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


FAST = ["--model", "mixture", "--components", "2", "--n-basis", "6", "--transform", "none", "--no-report",
        "--max-iter", "40", "--seed", "1"]


def test_cli_fit_on_dask_with_dates_and_outcomes_writes_what_the_in_memory_fit_writes(client, visits, tmp_path):
    visits = visits.copy()
    visits.loc[7, "visit"] = pd.NaT  # a visit without a date: --dropna drops it on both paths
    visits.assign(visit=visits["visit"].dt.strftime("%Y-%m-%d %H:%M:%S")).to_csv(tmp_path / "d.csv", index=False)
    folder = split_parquet(visits, tmp_path / "visits")  # Parquet's own datetime type; each subject in two files
    opts = [*FAST, "--time", "visit", "--time-unit", "years", "--time-origin", "enrolled"]
    r = _cli("fit", folder, *opts, "--dask", client.scheduler.address, "--out", tmp_path / "dask")
    assert r.exit_code == 2 and "error: column 'visit' has 1 row(s) without a date: pass --dropna" in r.stderr, r.output
    # an outcome that varies within subjects: the in-memory message, before the fit
    r = _cli("fit", folder, *opts, "--dropna", "--outcome", "weight", "--dask", client.scheduler.address, "--out",
             tmp_path / "dask")
    assert r.exit_code == 2 and ("error: column 'weight' must hold one value per subject (an outcome), but it varies "
                                 "within 60 of 60 subject(s)") in r.stderr, r.output
    # outcomes, survival from the dates follow-up ended (on the visits' scale) and characteristics by cluster
    opts += ["--outcome", "arm", "--event-time", "ended", "--event", "died", "--baseline", "weight,arm"]
    opts.append("--dropna")
    r = _cli("fit", folder, *opts, "--dask", client.scheduler.address, "--out", tmp_path / "dask")
    assert r.exit_code == 0, r.output
    assert "time: 'visit' as years since each subject's 'enrolled', in column 'years_since_enrolled'" in r.stdout
    assert "arm by cluster (each subject's last non-missing value; 60 subjects)" in r.stdout
    assert "--event-time: 'ended' as years since the origin of 'visit'" in r.stderr
    r = _cli("fit", tmp_path / "d.csv", *opts, "--jobs", "1", "--out", tmp_path / "mem")
    assert r.exit_code == 0, r.output
    for name, keys in (("clusters.csv", ["subject"]), ("trajectories.csv", ["subject", "years_since_enrolled"])):
        got, want = (pd.read_csv(tmp_path / f / name).sort_values(keys, ignore_index=True) for f in ("dask", "mem"))
        pd.testing.assert_frame_equal(got, want, rtol=1e-8, atol=1e-10)
    assert "visit" in pd.read_csv(tmp_path / "dask" / "trajectories.csv").columns  # each row's calendar date
    for name in ("outcomes.csv", "survival.csv", "baseline.csv", "outcome_tests.csv"):  # of all 60 subjects
        got, want = (pd.read_csv(tmp_path / f / name) for f in ("dask", "mem"))
        pd.testing.assert_frame_equal(got, want, rtol=1e-8, atol=1e-10)
    assert pd.read_csv(tmp_path / "dask" / "outcome_tests.csv")["subjects"].tolist() == [60, 60]

    new = pd.read_csv(tmp_path / "d.csv")
    new[new.subject.isin([3, 4])].to_csv(tmp_path / "new.csv", index=False)
    for f in ("dask", "mem"):  # the model files read new dates alike
        r = _cli("predict", tmp_path / f / "model.dmlmm", tmp_path / "new.csv", "--times", "0,0.5", "--out",
                 tmp_path / f"pred_{f}.csv")
        assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "pred_dask.csv"), pd.read_csv(tmp_path / "pred_mem.csv"),
                                  rtol=1e-7, atol=1e-9)
    # predicted on the cluster from the Parquet folder of dates: the same rows, dates included
    r = _cli("predict", tmp_path / "mem" / "model.dmlmm", folder, "--times", "0,0.5", "--dropna", "--dask",
             client.scheduler.address, "--out", tmp_path / "pred_on_dask")
    assert r.exit_code == 0, r.output
    got = pd.read_parquet(tmp_path / "pred_on_dask")
    got = got[got["subject"].isin([3, 4])].sort_values(["subject", "years_since_enrolled"], ignore_index=True)
    want = pd.read_csv(tmp_path / "pred_mem.csv", parse_dates=["visit"])
    pd.testing.assert_frame_equal(got, want.sort_values(["subject", "years_since_enrolled"], ignore_index=True),
                                  check_dtype=False, rtol=1e-7, atol=1e-9)
    # dates without a unit: the in-memory message
    r = _cli("fit", folder, *FAST, "--time", "visit", "--dask", client.scheduler.address, "--out", tmp_path / "x")
    assert r.exit_code == 2 and "error: column 'visit' holds dates: add --time-unit" in r.stderr, r.output

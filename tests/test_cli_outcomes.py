"""``dmlmm fit --outcome / --event-time / --event / --baseline`` and ``--select`` end to end on a small file."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dmlmm.cli import main
from dmlmm.simulate import dgp1

SMALL = ["--components", "3,2", "--latent-dims", "2,1", "--n-basis", "6", "--max-iter", "40", "--seed", "1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def bad(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    """60 subjects of DGP 1 with a per-subject outcome, follow-up time and event tied to the true groups."""
    s = dgp1(0, n_subjects=60)
    rng = np.random.default_rng(1)
    high = s.labels.to_numpy() > 0
    t = rng.exponential(np.where(high, 4.0, 0.6))
    c = rng.uniform(0.5, 3.0, 60)
    per = pd.DataFrame({"subject": s.labels.index, "followup": np.minimum(t, c), "dead": (t <= c).astype(int),
                        "status": np.where(rng.random(60) < np.where(high, 0.85, 0.15), "good", "poor"),
                        "age": rng.normal(50, 10, 60).round(1), "sex": rng.choice(["f", "m"], 60)})
    path = tmp_path_factory.mktemp("data") / "d.csv"
    s.data.merge(per, on="subject").to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fit_run(csv, tmp_path_factory):
    pytest.importorskip("lifelines")
    out = tmp_path_factory.mktemp("fit") / "res"
    r = run("fit", csv, *SMALL, "--outcome", "status", "--event-time", "followup", "--event", "dead",
            "--baseline", "age,sex", "--out", out)
    assert r.exit_code == 0, r.output
    return out, r


def test_outcome_files_and_printed_tables(fit_run):
    out, r = fit_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["baseline.csv", "clusters.csv", "model.dmlmm", "outcome_tests.csv", "outcomes.csv",
                     "report.html", "survival.csv", "trajectories.csv"]
    clusters = pd.read_csv(out / "clusters.csv")
    outcomes = pd.read_csv(out / "outcomes.csv")
    assert list(outcomes.columns) == ["outcome", "value", "cluster", "subjects", "percent"]
    per_cluster = outcomes[outcomes["cluster"] != "all"].astype({"cluster": int})
    # numbered as in clusters.csv, and each cluster's row percentages add up to 100
    assert (per_cluster.groupby("cluster")["subjects"].sum().to_dict()
            == clusters["cluster"].value_counts().sort_index().to_dict())
    assert np.allclose(per_cluster.groupby("cluster")["percent"].sum(), 100)
    surv = pd.read_csv(out / "survival.csv")
    assert list(surv.columns) == ["cluster", "followup", "survival", "lower", "upper", "at_risk", "events", "censored"]
    assert set(surv["cluster"]) == set(clusters["cluster"])
    tests = pd.read_csv(out / "outcome_tests.csv")
    assert tests["test"].tolist() == ["chi-square", "log-rank"] and (tests["p_value"] < 0.01).all()
    base = pd.read_csv(out / "baseline.csv")
    assert set(base["variable"]) == {"age", "sex"}
    text = r.stdout
    for fragment in ("class summary", "summarytable", "postprob", "relative entropy", "status by cluster",
                     "chi-square", "log-rank chi-square", "characteristics by cluster (each subject's first non-missing value",
                     "last non-missing value",
                     "outcomes.csv", "survival.csv"):
        assert fragment in text, fragment
    html = (out / "report.html").read_text()
    for sid in ("classes", "outcomes", "survival", "baseline"):
        assert f'<section id="{sid}">' in html


def test_outcome_errors_exit_2_naming_the_column(csv, tmp_path):
    df = pd.read_csv(csv)
    df.loc[df["subject"] == 3, "status"] = np.where(df.loc[df["subject"] == 3, "time"] > 0.5, "good", "poor")
    varying = tmp_path / "v.csv"
    df.to_csv(varying, index=False)
    bad(run("fit", varying, "--outcome", "status", "--out", tmp_path / "o"), "column 'status'", "one value per subject")
    assert not (tmp_path / "o").exists()
    bad(run("fit", csv, "--outcome", "nope", "--out", tmp_path / "o"), "'nope'", "not found")
    bad(run("fit", csv, "--event-time", "followup", "--out", tmp_path / "o"), "--event-time and --event")
    bad(run("fit", csv, "--event-time", "followup", "--event", "status", "--out", tmp_path / "o"),
        "column 'status'", "--event-value VALUE")
    bad(run("fit", csv, "--event-time", "status", "--event", "dead", "--out", tmp_path / "o"),
        "column 'status'", "follow-up time", "numeric")
    bad(run("fit", csv, "--model", "lmm", "--outcome", "status", "--out", tmp_path / "o"), "--model lmm")


def test_missing_lifelines_exit_2(csv, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lifelines", None)
    bad(run("fit", csv, "--event-time", "followup", "--event", "dead", "--out", tmp_path / "o"),
        "lifelines", "dmlmm[survival]")


def test_select_over_models_prints_each_candidate_and_the_choice(csv, tmp_path):
    """--select prints each candidate and the choice, and puts its table in the report."""
    r = run("fit", csv, "--select", "--components", "3,2", "--n-basis", "5", "--max-iter", "15", "--out", tmp_path / "s")
    assert r.exit_code == 0, r.output
    err = r.stderr
    assert "among 7 candidates" in err
    lines = [ln for ln in err.splitlines() if ln.strip().startswith("[")]
    assert len(lines) == 7 and all(f"/7]" in ln for ln in lines)
    assert sum("deep mixture" in ln for ln in lines) == 4 and sum("mixture of LMMs" in ln for ln in lines) == 3
    assert "selected: " in err
    # the choice says what the fit kept (a candidate asked for 3 components may keep 1: it said only "3")
    chosen = next(ln for ln in err.splitlines() if ln.startswith("selected: "))
    n_clusters = pd.read_csv(tmp_path / "s" / "clusters.csv")["cluster"].nunique()
    assert f"which kept {n_clusters} cluster(s) (components kept " in chosen, chosen
    html = (tmp_path / "s" / "report.html").read_text()
    assert 'id="selection"' in html and 'class="sel"' in html and "mixture" in html
    r = run("fit", "--no-report", csv, "--select", "--model", "mixture", "--components", "2", "--n-basis", "5",
            "--max-iter", "15", "--out", tmp_path / "m")
    assert r.exit_code == 0, r.output
    assert "among 2 candidates" in r.stderr and "selected: mixture of LMMs" in r.stderr
    bad(run("fit", csv, "--select", "--model", "lmm", "--out", tmp_path / "l"), "--select", "--model lmm")


def test_follow_up_ending_before_the_last_visit_is_warned():
    """--event-time in days against --time in years (or from another origin) ends follow-up before visits that
    were made: a warning names how many subjects and what to check; consistent data say nothing."""
    import warnings

    import pandas as pd

    from dmlmm.cli import _warn_follow_up_before_visits

    df = pd.DataFrame({"id": [1, 1, 2, 2, 3], "t": [0.0, 2.0, 0.0, 5.0, 1.0], "fu": [3.0, 3.0, 6.0, 6.0, 4.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_follow_up_before_visits(df, "id", "t", "fu")
    with pytest.warns(UserWarning, match=r"--event-time 'fu' ends before the subject's last visit \('t'\) for 2 of 3 "
                                         r"subjects \(e\.g\. \[2, 3\]\): check that both count in the same units"):
        _warn_follow_up_before_visits(df.assign(fu=[3.0, 3.0, 0.5, 0.5, 0.2]), "id", "t", "fu")

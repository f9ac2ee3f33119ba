"""Outcomes by cluster: tables with chi-square tests, Kaplan-Meier curves with the log-rank test, baseline tables."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import dmlmm
from dmlmm import outcomes as oc
from dmlmm.exceptions import DataError

lifelines = pytest.importorskip("lifelines")

# seven subjects in two clusters; each subject has two rows (visits), in shuffled order
CLUSTERS = pd.Series([0, 0, 0, 1, 1, 1, 1], index=[f"s{i}" for i in range(7)], name="cluster")
OUTCOME = ["A", "A", "B", "B", "B", "C", "C"]  # counts: cluster 0 [2, 1, 0], cluster 1 [0, 2, 2]
TIME = [1.0, 2.0, 4.0, 3.0, 5.0, 6.0, 7.0]
EVENT = [1, 0, 1, 1, 1, 0, 1]


def long_frame() -> pd.DataFrame:
    rows = []
    for i, s in enumerate(CLUSTERS.index):
        for visit in (0.0, 1.0):
            rows.append({"id": s, "t": visit, "y": float(i + visit), "outcome": OUTCOME[i], "futime": TIME[i],
                         "dead": EVENT[i], "age": 40.0 + 2 * i + visit, "sex": "f" if i % 2 else "m"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_outcome_table_and_chi_square_by_hand():
    t = oc.outcome_table(CLUSTERS, long_frame(), "outcome", subject="id", order_by="t")
    assert t.counts.to_numpy().tolist() == [[2, 1, 0], [0, 2, 2]]
    assert list(t.counts.columns) == ["A", "B", "C"] and list(t.counts.index) == [0, 1]
    assert t.percent.to_numpy() == pytest.approx(np.array([[200 / 3, 100 / 3, 0], [0, 50, 50]]))
    # expected counts (row total x column total / 7): [6/7, 9/7, 6/7], [8/7, 12/7, 8/7];
    # sum of (O - E)^2 / E = 64/42 + 4/63 + 6/7 + 8/7 + 4/84 + 36/56 = 77/18
    assert t.statistic == pytest.approx(77 / 18) and t.dof == 2
    assert t.p_value == pytest.approx(math.exp(-77 / 36))  # chi-square with 2 df: P(X > x) = exp(-x/2)
    assert t.min_expected == pytest.approx(6 / 7) and "rough" in t.test_text()
    assert t.n_subjects == 7 and t.n_missing == 0
    f = t.formatted()
    assert f.loc["0", "A"] == "2 (66.7 %)" and f.loc["all", "subjects"] == 7
    long = t.to_frame()
    assert list(long.columns) == ["outcome", "value", "cluster", "subjects", "percent"]
    assert long.query("cluster == 'all' and value == 'B'")["subjects"].item() == 3


def test_two_by_two_uses_yates_correction_as_r():
    cl = pd.Series([0] * 10 + [1] * 10, index=range(20))
    frame = pd.DataFrame({"id": range(20), "t": 0.0, "o": ["x"] * 8 + ["y"] * 2 + ["x"] * 3 + ["y"] * 7})
    t = oc.outcome_table(cl, frame, "o", subject="id")
    # [[8, 2], [3, 7]]: expected 5.5, 4.5; Yates: 4 / 5.5 * 2 + 4 / 4.5 * 2 = 3.2323, p = 0.0722 (as R's chisq.test)
    assert t.statistic == pytest.approx(3.2323, abs=1e-4) and t.p_value == pytest.approx(0.0722, abs=1e-4)


def test_last_non_missing_value_and_constant_columns():
    frame = long_frame()
    frame.loc[(frame["id"] == "s0") & (frame["t"] == 1.0), "outcome"] = np.nan  # the later visit lacks it
    frame.loc[frame["id"] == "s6", "outcome"] = np.nan  # no value at all: left out and counted
    t = oc.outcome_table(CLUSTERS, frame, "outcome", subject="id", order_by="t")
    assert t.counts.loc[0, "A"] == 2 and t.n_subjects == 6 and t.n_missing == 1
    v = oc.subject_values(frame, "id", "age", order_by="t")  # varying: the last visit's value
    assert v["s0"] == 41.0 and oc.subject_values(frame, "id", "age", order_by="t", at="first")["s0"] == 40.0
    # the time itself (an age at entry when the time is age): the earliest and the latest, though rows are shuffled
    assert (oc.subject_values(frame, "id", "t", order_by="t", at="first") == 0.0).all()
    assert (oc.subject_values(frame, "id", "t", order_by="t") == 1.0).all()
    frame.loc[(frame["id"] == "s3") & (frame["t"] == 1.0), "outcome"] = "C"
    with pytest.raises(DataError, match=r"column 'outcome' must hold one value per subject .*1 of 6 subject.*'s3'"):
        oc.outcome_table(CLUSTERS, frame, "outcome", subject="id")
    with pytest.raises(DataError, match="'nope' not found"):
        oc.outcome_table(CLUSTERS, frame, "nope", subject="id")


def random_long_frame(rng) -> pd.DataFrame:
    """Up to 8 subjects with 1-60 rows in all: missing times, values missing at random, a float, a text, a nullable
    integer and a categorical column that may or may not vary within subjects, in a shuffled order."""
    n = int(rng.integers(1, 60))
    frame = pd.DataFrame({
        "id": rng.integers(0, 8, n), "t": rng.choice([0.0, 1, 2, 3, np.nan], n), "a": rng.choice([1.0, 2, np.nan], n),
        "b": pd.Series(rng.choice(["x", "y", None], n), dtype=object),
        "c": pd.Series(rng.choice([1, 2], n)).astype("Int64").mask(rng.random(n) < 0.3),
        "e": pd.Categorical(rng.choice(["lo", "hi"], n), categories=["lo", "hi"])})
    if rng.random() < 0.5:
        frame["a"] = frame.groupby("id")["a"].transform("first")  # often one value per subject, as an outcome
    return frame.sample(frac=1.0, random_state=int(rng.integers(1000)))


def test_the_rows_kept_for_the_tables_give_the_same_values_and_checks_as_all_rows():
    """subject_value_rows (what a Dask fit brings here) against the whole frame, on random frames and on parts of
    them (partitions, a subject's rows split or not): each subject's first and last values, whether a column varies
    within a subject (and the error naming it), the subjects and their latest time."""
    rng = np.random.default_rng(0)
    cols = ["a", "b", "c", "e", "t"]  # the time too: an age at entry, when the time is age
    for _ in range(40):
        frame = random_long_frame(rng)
        parts = np.array_split(np.arange(len(frame)), int(rng.integers(1, 4)))
        kept = oc.subject_value_rows(frame, "id", cols, "t")
        assert len(kept) <= len(frame) and kept.index.isin(frame.index).all()
        pieces = pd.concat([oc.subject_value_rows(frame.iloc[p].set_index("id"), "id", cols, "t") for p in parts])
        for rows in (kept, pieces):
            assert set(rows["id"]) == set(frame["id"])
            pd.testing.assert_series_equal(rows.groupby("id")["t"].max(), frame.groupby("id")["t"].max())
            for c in cols:
                for at in ("first", "last"):
                    pd.testing.assert_series_equal(oc.subject_values(rows, "id", c, order_by="t", at=at),
                                                   oc.subject_values(frame, "id", c, order_by="t", at=at))
                errors = []
                for f in (frame, rows):
                    try:
                        oc.subject_values(f, "id", c, order_by="t", constant=True)
                        errors.append(None)
                    except DataError as e:  # names the same number of subjects and the same first one
                        errors.append(str(e).split("(e.g.")[0] + str(e).split("(e.g.")[1].split(":")[0])
                assert errors[0] == errors[1]


def km_by_hand(t, e):
    """Kaplan-Meier: product over event times of (1 - d / n)."""
    t, e = np.asarray(t, float), np.asarray(e, bool)
    s, out = 1.0, {}
    for u in np.unique(t[e]):
        n, d = (t >= u).sum(), ((t == u) & e).sum()
        s *= 1 - d / n
        out[u] = s
    return out


def logrank_by_hand(t, e, g):
    """Two-group log-rank chi-square: (O1 - E1)^2 / V over the distinct event times."""
    t, e, g = np.asarray(t, float), np.asarray(e, bool), np.asarray(g)
    o1 = e1 = v = 0.0
    for u in np.unique(t[e]):
        at = t >= u
        n, n1 = at.sum(), (at & (g == 0)).sum()
        d = ((t == u) & e).sum()
        o1 += ((t == u) & e & (g == 0)).sum()
        e1 += d * n1 / n
        v += d * (n1 / n) * (1 - n1 / n) * (n - d) / max(n - 1, 1)
    return (o1 - e1) ** 2 / v


def test_kaplan_meier_by_cluster_matches_lifelines_and_the_hand_computation():
    s = oc.survival_by_cluster(CLUSTERS, long_frame(), "futime", "dead", subject="id", order_by="t")
    from lifelines import KaplanMeierFitter
    from lifelines.statistics import logrank_test

    for k in (0, 1):
        m = (CLUSTERS == k).to_numpy()
        t, e = np.array(TIME)[m], np.array(EVENT)[m]
        kmf = KaplanMeierFitter().fit(t, e)
        c = s.curves[s.curves["cluster"] == k].set_index("time")
        assert c["survival"].to_numpy() == pytest.approx(kmf.survival_function_.iloc[:, 0].to_numpy())
        assert c["lower"].to_numpy() == pytest.approx(kmf.confidence_interval_.iloc[:, 0].to_numpy())
        assert c["upper"].to_numpy() == pytest.approx(kmf.confidence_interval_.iloc[:, 1].to_numpy())
        for u, surv in km_by_hand(t, e).items():
            assert c.loc[u, "survival"] == pytest.approx(surv)
        assert s.summary.loc[k, "subjects"] == m.sum() and s.summary.loc[k, "events"] == e.sum()
        assert s.summary.loc[k, "median"] == kmf.median_survival_time_
    # cluster 0: times 1 (event), 2 (censored), 4 (event): S = 2/3 after 1, then 0 after 4
    c0 = s.curves[s.curves["cluster"] == 0]
    assert c0["survival"].tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0])
    assert c0["at_risk"].tolist() == [3, 3, 2, 1] and c0["censored"].tolist() == [0, 0, 1, 0]
    ref = logrank_test(np.array(TIME)[:3], np.array(TIME)[3:], np.array(EVENT)[:3], np.array(EVENT)[3:])
    assert s.statistic == pytest.approx(ref.test_statistic) and s.p_value == pytest.approx(ref.p_value)
    assert s.statistic == pytest.approx(logrank_by_hand(TIME, EVENT, CLUSTERS.to_numpy())) and s.dof == 1
    assert s.to_frame().columns[1] == "futime" and "log-rank" in s.test_text()


def test_event_indicator_values():
    frame = long_frame()
    frame["status"] = frame["dead"].map({1: "died", 0: "alive"})
    frame.loc[frame["id"] == "s5", "status"] = "transplanted"
    s = oc.survival_by_cluster(CLUSTERS, frame, "futime", "status", event_value="died", subject="id")
    ref = oc.survival_by_cluster(CLUSTERS, frame, "futime", "dead", subject="id")
    assert s.statistic == pytest.approx(ref.statistic)  # s5 was censored in "dead" too
    assert s.event_label == "status = died"
    with pytest.raises(DataError, match="column 'status' must mark events as 1/0.*event_value"):
        oc.survival_by_cluster(CLUSTERS, frame, "futime", "status", subject="id")
    with pytest.raises(DataError, match="no subject has the event value"):
        oc.survival_by_cluster(CLUSTERS, frame, "futime", "status", event_value="gone", subject="id")
    assert oc.event_indicator(pd.Series(["Yes", "no", "TRUE", "0"])).tolist() == [True, False, True, False]
    frame.loc[0, "futime"] = -1.0
    with pytest.raises(DataError, match="column 'futime' must hold one value per subject"):
        oc.survival_by_cluster(CLUSTERS, frame, "futime", "dead", subject="id")


def test_missing_lifelines_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "lifelines", None)
    with pytest.raises(ImportError, match=r"pip install 'dmlmm\[survival\]'"):
        oc.survival_by_cluster(CLUSTERS, long_frame(), "futime", "dead", subject="id")


def test_baseline_table():
    b = oc.baseline_table(CLUSTERS, long_frame(), ["age", "sex"], subject="id", order_by="t")
    # age at the first visit (at entry, the default): 40 + 2i; cluster 0: 40, 42, 44
    assert b.table.loc[("age", "mean (SD)"), "cluster 0 (n=3)"] == "42.00 (2.00)"  # the decimals of all subjects' SD, 4.32
    assert b.table.loc[("sex", "f, n (%)"), "cluster 1 (n=4)"] == "2 (50.0 %)"  # s3, s5
    assert b.table.loc[("sex", "m, n (%)"), "all (n=7)"] == "4 (57.1 %)"
    assert b.varying == ["age"] and b.at == "first"
    tidy = b.tidy.set_index(["variable", "level", "cluster"])
    assert tidy.loc[("age", "", "all"), "mean"] == pytest.approx(np.mean([40 + 2 * i for i in range(7)]))
    assert tidy.loc[("sex", "f", 0), "count"] == 1
    # baseline.csv: counts written as whole numbers, blank on the mean (SD) rows
    lines = b.tidy.to_csv(index=False).splitlines()
    assert "sex,f,1,4,,,2,50.0" in lines and "age,,0,3,42.0,2.0,," in lines
    last = oc.baseline_table(CLUSTERS, long_frame(), ["age"], subject="id", order_by="t", at="last")
    assert last.table.loc[("age", "mean (SD)"), "cluster 0 (n=3)"] == "43.00 (2.00)" and last.at == "last"  # 41, 43, 45


def test_tables_read_what_the_user_declared_and_say_what_they_leave_out():
    """A pandas Categorical is counted by level in its own order, whatever its categories (numeric stages were
    summarised as a mean); subjects of the data without a cluster are said, not dropped in silence; event values
    that differ from event_value only in case are said; a frame with one row per subject needs no time column."""
    frame = long_frame()
    frame["stage"] = pd.Categorical(np.where(frame["id"].isin(CLUSTERS.index[:3]), 4, 1), categories=[4, 1],
                                    ordered=True)
    b = oc.baseline_table(CLUSTERS, frame, ["stage"], subject="id", order_by="t")
    assert list(b.table.index.get_level_values("statistic")) == ["4, n (%)", "1, n (%)"]
    assert b.table.loc[("stage", "4, n (%)"), "all (n=7)"] == "3 (42.9 %)"
    extra = pd.concat([frame, frame[frame["id"] == CLUSTERS.index[0]].assign(id="new")], ignore_index=True)
    with pytest.warns(UserWarning, match=r"^1 of the 8 subject\(s\) in the data are not among the clusters' subjects "
                                         r"\(e.g. 'new'\): they have no cluster and are left out of the table"):
        t = oc.outcome_table(CLUSTERS, extra, "outcome", subject="id", order_by="t")
    assert t.n_subjects == 7
    cased = frame.assign(status=np.where(frame["dead"] == 1, "Died", "alive"))
    cased.loc[cased["id"] == CLUSTERS.index[0], "status"] = "died"
    with pytest.warns(UserWarning, match=r"column 'status' holds 'Died', which differ from the event value 'died' "
                                         r"only in case: they are counted as censored"):
        s = oc.survival_by_cluster(CLUSTERS, cased, "futime", "status", event_value="died", subject="id")
    assert int(s.summary["events"].sum()) == int(EVENT[0])
    per_subject = frame.drop_duplicates("id").drop(columns="t")
    assert oc.outcome_table(CLUSTERS, per_subject, "outcome", subject="id").n_subjects == 7


@pytest.fixture(scope="module")
def fitted():
    from dmlmm.simulate import dgp1

    s = dgp1(0, n_subjects=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.DeepMixtureLMM((3, 2), (2, 1), basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40).fit(s.data)
    rng = np.random.default_rng(0)
    per = pd.DataFrame({"subject": s.labels.index, "futime": rng.exponential(np.where(s.labels > 0, 10.0, 0.5)),
                        "dead": rng.random(40) < 0.7, "group": np.where(s.labels > 0, "x", "y"),
                        "age": rng.normal(50, 10, 40)})
    return m, s.data.merge(per, on="subject")


def test_report_sections_with_a_fitted_model(fitted):
    from dmlmm.report import collect_results, render_report

    m, frame = fitted
    rep = oc.outcome_report(m, frame, outcomes=["group"], duration="futime", event="dead", baseline=["age"])
    assert set(rep.files()) == {"outcomes.csv", "survival.csv", "baseline.csv", "outcome_tests.csv"}
    tests = rep.files()["outcome_tests.csv"]
    assert tests["test"].tolist() == ["chi-square", "log-rank"] and (tests["p_value"] < 0.05).all()
    from dmlmm.summaries import cluster_labels

    assert rep.tables[0].counts.sum(axis=1).to_dict() == cluster_labels(m).value_counts().sort_index().to_dict()
    html = render_report(collect_results(m, frame), outcomes=rep)
    for sid in ("classes", "outcomes", "survival", "baseline"):
        assert f'<section id="{sid}">' in html, sid
    assert "Kaplan-Meier" in html and "log-rank chi-square" in html and "chi-square" in html
    assert "postprob" in html and "summarytable" in html and "relative entropy" in html.lower()
    assert html.count("data:image/png;base64,") == 7  # 5 figures + outcome bars + survival curves


def test_baseline_table_counts_what_the_formula_declares_categorical():
    """A diet coded 1-4 and fitted as C(diet) is four groups in the characteristics table, not a mean of 2.2."""
    from dmlmm.simulate import dgp1

    s = dgp1(0, n_subjects=40)
    df = s.data.assign(diet=(s.data["subject"] % 4) + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40).fit(df, covariates="C(diet)")
    b = oc.baseline_table(m, df, ["diet"])
    assert [lev for var, lev in b.table.index] == ["1, n (%)", "2, n (%)", "3, n (%)", "4, n (%)"]
    assert b.table.loc[("diet", "1, n (%)"), "all (n=40)"] == "10 (25.0 %)"
    plain = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(6), random_state=0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain.fit(df)
    assert list(oc.baseline_table(plain, df, ["diet"]).table.index) == [("diet", "mean (SD)")]  # undeclared: numeric


def test_subjects_that_match_none_of_the_clusters_are_an_error_not_an_empty_table():
    """Subject ids of another type than the model's (0, 1, ... against '0', '1', ...): each table was empty or
    all missing without a word, and the survival curves failed inside pandas."""
    numbered = pd.Series(CLUSTERS.to_numpy(), index=range(7), name="cluster")
    frame = long_frame().assign(id=lambda f: f["id"].str[1:])  # '0', '1', ... (text)
    message = (r"^none of the 7 subject\(s\) in column 'id' \('\d', '\d', '\d', \.\.\.\) is a subject of the clusters "
               r"\(0, 1, 2, \.\.\.\): the labels must match in value and type")
    with pytest.raises(DataError, match=message):
        oc.outcome_table(numbered, frame, "outcome", subject="id", order_by="t")
    with pytest.raises(DataError, match=message):
        oc.baseline_table(numbered, frame, ["age"], subject="id", order_by="t")
    with pytest.raises(DataError, match=message):
        oc.survival_by_cluster(numbered, frame, "futime", "dead", subject="id", order_by="t")
    fixed = frame.assign(id=frame["id"].astype(int))
    assert oc.outcome_table(numbered, fixed, "outcome", subject="id", order_by="t").counts.to_numpy().tolist() == \
        [[2, 1, 0], [0, 2, 2]]
    with pytest.raises(DataError, match=r"^no subject of the clusters has both a follow-up time \('futime'\)"):
        oc.survival_by_cluster(numbered, fixed.assign(futime=np.nan), "futime", "dead", subject="id", order_by="t")
    # one column given as a string is that column, not its letters
    assert oc.baseline_table(numbered, fixed, "age", subject="id", order_by="t").table.index[0] == ("age", "mean (SD)")


def test_a_categorical_subject_column_has_no_phantom_subjects():
    frame = long_frame()
    frame["id"] = pd.Categorical(frame["id"], categories=list(CLUSTERS.index) + ["s99"])
    t = oc.outcome_table(CLUSTERS, frame, "outcome", subject="id", order_by="t")
    assert t.counts.to_numpy().tolist() == [[2, 1, 0], [0, 2, 2]] and t.n_missing == 0


def test_percentages_round_halves_up_as_tables_in_papers_do():
    """37 of 80 is 46.25 %: '46.3 %' (Python's format rounds a half to even: '46.2 %')."""
    from dmlmm.columns import one_decimal

    assert [one_decimal(100 * n / 80) for n in (37, 33, 39)] == ["46.3", "41.3", "48.8"]
    clusters = pd.Series([0] * 80 + [1] * 20, index=[f"s{i}" for i in range(100)], name="cluster")
    frame = pd.DataFrame({"id": clusters.index, "t": 0.0, "status": ["a"] * 37 + ["b"] * 43 + ["a"] * 20})
    t = oc.outcome_table(clusters, frame, "status", subject="id", order_by="t")
    assert t.formatted().iloc[0].tolist()[:2] == ["37 (46.3 %)", "43 (53.8 %)"]


def test_the_subject_column_is_no_characteristic():
    """baseline_table skipped the subject column without a word (`dmlmm fit --baseline id` printed nothing for
    it): it is an error naming it."""
    with pytest.raises(DataError, match=r"column 'id' is the subject column: a characteristics table describes"):
        oc.baseline_table(CLUSTERS, long_frame(), ["id", "age"], subject="id", order_by="t")
    with pytest.raises(DataError, match=r"column 'id' is the subject column"):
        oc.check_outcome_columns(long_frame(), "id", order_by="t", baseline=["age", "id"])

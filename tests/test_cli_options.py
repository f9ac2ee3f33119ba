"""The basis and fit options of the command line, consistent names and numbers across every output
file, forecasts marked beyond the last visit, and a fast ``dmlmm --help``."""

from __future__ import annotations

import subprocess
import sys
from io import StringIO
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import dmlmm
from dmlmm.cli import main
from dmlmm.simulate import dgp1

FAST = ["--components", "3,2", "--latent-dims", "1,1", "--max-iter", "15"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """Data with the user's own names, a column called 'group' and one called 'cluster'."""
    df = dgp1(4, n_subjects=30).data.rename(columns={"subject": "patient", "time": "years", "y": "marker"})
    df["group"] = np.where(df["patient"] % 2 == 0, "control", "case")
    df["cluster"] = "site " + (df["patient"] % 3).astype(str)
    path = tmp_path_factory.mktemp("data") / "patients.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fitted(patients, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "res"
    r = run("fit", patients, "--subject", "patient", "--time", "years", "--response", "marker", *FAST,
            "--n-basis", "6", "--knots", "uniform", "--degree", "2", "--no-extrapolate", "--interval", "0.5",
            "--n-init", "2", "--out", out)
    assert r.exit_code == 0, r.output
    return out, r


# ---------------------------------------------------------------------------- options
def test_basis_and_fit_options_reach_the_model(fitted):
    out, _ = fitted
    m = dmlmm.load(out / "model.dmlmm")
    b = m.design_.basis
    assert (b.n_basis, b.degree, b.knots, b.extrapolate) == (6, 2, "uniform", False)
    assert m.n_init == 2


def test_interval_sets_the_band_of_the_trajectories(fitted, patients):
    out, _ = fitted
    m = dmlmm.load(out / "model.dmlmm")
    traj = pd.read_csv(out / "trajectories.csv")
    data = pd.read_csv(patients)
    expect = m.predict_trajectory(data, times=np.sort(traj["years"].unique()), interval=0.5)
    np.testing.assert_allclose(traj["upper"], expect["upper"], rtol=1e-9)
    assert "50 % predictive band" in (out / "report.html").read_text()


def test_knot_choices_are_read_from_the_library(monkeypatch):
    import dmlmm.basis

    help_text = run("fit", "--no-report", "--help").output
    assert all(layout in help_text for layout in dmlmm.basis._LAYOUTS)
    r = CliRunner().invoke(main, ["fit", "x.csv", "--knots", "wiggly"])
    assert r.exit_code == 2 and "'wiggly' is not one of" in r.output


def test_library_defaults_when_options_are_left_out(tmp_path):
    p = tmp_path / "d.csv"
    dgp1(2, n_subjects=25).data.to_csv(p, index=False)
    r = run("fit", "--no-report", p, "--model", "mixture", "--components", "2", "--max-iter", "5", "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    b = dmlmm.load(tmp_path / "o" / "model.dmlmm").design_.basis
    default = dmlmm.SplineBasis()
    assert (b.n_basis, b.degree, b.knots, b.extrapolate) == (default.n_basis, default.degree, default.knots,
                                                              default.extrapolate)


@pytest.mark.parametrize("args, fragment", [
    (["--n-init", "0"], "--n-init must be a positive integer"),
    (["--model", "lmm", "--method", "reml", "--n-init", "2"], "--n-init does not apply to the exact fits"),
    (["--model", "lmm", "--method", "ml", "--jobs", "2"], "--jobs does not apply to the exact fits"),
    (["--criterion", "heldout"], "--criterion chooses among the candidates of --select: add --select"),
    (["--degree", "1"], "--smoothing 2 (the default) needs splines of degree 2 or more and more than 2 basis "
                        "functions; use --smoothing 1 (or none) with --degree 1"),
    (["--degree", "0", "--smoothing", "1"], "--smoothing 1 needs splines of degree 1 or more and more than 1 basis "
                                           "functions; use --smoothing none with --degree 0"),
    (["--jobs", "0"], "--jobs must be a positive integer, -1 (every CPU) or auto, got 0"),
    (["--jobs", "two"], "--jobs must be a positive integer, -1 (every CPU) or auto, got two"),
    (["--interval", "1"], "--interval must be between 0 and 1"),
    (["--degree", "-1"], "--degree must be between 0 and 5"),
    (["--knots", "reference", "--degree", "2", "--n-basis", "6"], "spline basis:"),
    # a list that names nothing ran the fit without it; a negative seed said 'random_state must be ...'
    (["--covariates", ","], "--covariates ',' names no column: give column names separated by commas"),
    (["--outcome", ",,"], "--outcome ',,' names no column"),
    (["--membership-covariates", " , "], "--membership-covariates ' , ' names no column"),
])
def test_option_errors(fitted, patients, tmp_path, args, fragment):
    assert fragment in error_line(run("fit", patients, "--subject", "patient", "--time", "years", "--response",
                                      "marker", *args, "--out", tmp_path / "o"))


def test_seed_and_jobs_out_of_range_name_the_option(patients, tmp_path):
    """A negative seed said 'random_state must be ...' (fit) or numpy's 'expected non-negative integer'
    (simulate); demo --jobs 0 said 'n_jobs must be ...' after printing the data set."""
    for args in (["fit", patients, "--subject", "patient", "--time", "years", "--response", "marker", "--seed", "-1",
                  "--out", tmp_path / "o"], ["simulate", "dgp1", "--seed", "-1", "--out", tmp_path / "s.csv"]):
        r = run(*args)
        assert r.exit_code == 2 and "Invalid value for '--seed': -1 is not in the range x>=0" in r.output
    r = run("demo", "--jobs", "0", "--out", tmp_path / "d")
    assert r.exit_code == 2 and "Invalid value for '--jobs': 0 processes: give a positive number, or -1" in r.output


def test_predict_extrapolate_switch(fitted, patients):
    out, _ = fitted
    model = out / "model.dmlmm"
    line = error_line(run("predict", model, patients, "--times", "0.5,1.5"))
    assert "pass --extrapolate" in line and "extrapolate=True" not in line
    r = run("predict", model, patients, "--times", "0.5,1.5", "--extrapolate")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "extrapolated" in r.stderr


# ---------------------------------------------------------------------------- consistent outputs
def test_user_names_and_no_clashes_in_every_file(fitted, patients):
    out, r = fitted
    clusters = pd.read_csv(out / "clusters.csv")
    traj = pd.read_csv(out / "trajectories.csv")
    assert list(clusters.columns) == ["patient", "dmlmm_cluster", "probability", "cluster_layer1"]
    assert list(traj.columns) == ["patient", "years", "mean", "lower", "upper", "beyond_last_visit",
                                  "dmlmm_cluster", "probability", "cluster_layer1"]
    assert r.stderr.count("'cluster' -> 'dmlmm_cluster'") == 1  # one warning for both files
    data = pd.read_csv(patients)
    merged = data.merge(clusters, on="patient")  # joins back without suffixes: 'group' is the user's
    assert {"group", "cluster", "dmlmm_cluster"} <= set(merged.columns) and len(merged) == len(data)
    p = run("predict", out / "model.dmlmm", patients)
    pred = pd.read_csv(StringIO(p.stdout))
    assert list(pred.columns) == list(traj.columns)  # fit's trajectories and predict's: the same columns


def test_cluster_numbers_have_no_gaps(fitted):
    out, _ = fitted
    clusters = pd.read_csv(out / "clusters.csv")
    for col in ("dmlmm_cluster", "cluster_layer1"):
        assert sorted(clusters[col].unique()) == list(range(clusters[col].nunique()))


def test_gap_free_numbering_keeps_the_model_order():
    from dmlmm.report import cluster_numbering

    proba = pd.DataFrame(np.eye(5)[[0, 0, 3, 3, 3, 1]])
    groups = pd.DataFrame(np.eye(3)[[2, 2, 0, 0, 0, 0]])
    model = SimpleNamespace(labels_=pd.Series(proba.to_numpy().argmax(1)), responsibilities_=proba,
                            groups_=pd.Series(groups.to_numpy().argmax(1)), group_proba_=groups)
    cmap, gmap = cluster_numbering(model)
    assert cmap.tolist() == [0, 1, 3, 2, 4]  # 0, 1, 3 hold subjects: 0, 1, 2; then 2 and 4
    assert gmap.tolist() == [0, 2, 1]


def test_forecasts_are_marked_beyond_the_last_visit(fitted, patients):
    out, _ = fitted
    data = pd.read_csv(patients)
    last = data.groupby("patient")["years"].max()
    traj = pd.read_csv(out / "trajectories.csv")
    np.testing.assert_array_equal(traj["beyond_last_visit"], traj["years"] > traj["patient"].map(last))
    early = data[data["years"] < 0.4]
    r = run("predict", out / "model.dmlmm", pd_csv(early, out.parent / "early.csv"), "--times", "0.2,0.6")
    pred = pd.read_csv(StringIO(r.stdout))
    early_last = pred["patient"].map(early.groupby("patient")["years"].max())
    np.testing.assert_array_equal(pred["beyond_last_visit"], pred["years"] > early_last)
    assert pred.loc[pred["years"] == 0.6, "beyond_last_visit"].all()


def pd_csv(df, path):
    df.to_csv(path, index=False)
    return path


def test_report_draws_forecasts_dashed():
    from matplotlib.figure import Figure

    from dmlmm.report.figures import _plot_curve

    t = np.linspace(0, 1, 11)
    ax = Figure().subplots()
    _plot_curve(ax, pd.DataFrame({"time": t, "mean": t**2, "beyond_last_visit": t > 0.55}), "C0")
    solid, dashed = ax.get_lines()
    assert solid.get_linestyle() == "-" and dashed.get_linestyle() == "--"
    assert solid.get_xdata()[-1] == dashed.get_xdata()[0] == 0.5  # joined at the last point before the forecast
    ax = Figure().subplots()
    _plot_curve(ax, pd.DataFrame({"time": t, "mean": t}), "C0")  # without the column: one solid line
    assert [ln.get_linestyle() for ln in ax.get_lines()] == ["-"]


# ---------------------------------------------------------------------------- start-up time
def test_help_loads_neither_numpy_nor_pandas():
    code = ("import sys; from dmlmm.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('numpy', 'pandas', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_lazy_package_attributes_still_work():
    code = ("import dmlmm; from dmlmm import DeepMixtureLMM, load, DataError; import dmlmm.simulate as s\n"
            "print(dmlmm.SplineBasis().n_basis > 0, dmlmm.simulate is s, callable(dmlmm.select_model),"
            " 'load' in dir(dmlmm))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True True True True"


def test_prior_options_reach_the_model(patients, tmp_path):
    out = tmp_path / "res"
    r = run("fit", "--no-report", patients, "--subject", "patient", "--time", "years", "--response", "marker", *FAST,
            "--n-basis", "6", "--smoothing", "1", "--noise", "cluster", "--loading-order", "2",
            "--polynomial-covariance", "full", "--quiet", "--out", out)
    assert r.exit_code == 0, r.output
    m = dmlmm.load(out / "model.dmlmm")
    assert (m.smoothing, m.noise, m.loading_order, m.polynomial_covariance) == (1, "cluster", 2.0, "full")
    assert m.noise_ == "cluster" and m.prior_.loading_order == 2.0 and m.prior_.polynomial_covariance == "full"
    out2 = tmp_path / "res2"
    r = run("fit", "--no-report", patients, "--subject", "patient", "--time", "years", "--response", "marker", "--model", "mixture",
            "--components", "2", "--max-iter", "15", "--n-basis", "6", "--smoothing", "none", "--quiet", "--out", out2)
    assert r.exit_code == 0, r.output
    assert dmlmm.load(out2 / "model.dmlmm").smoothing is None
    out3 = tmp_path / "res3"
    r = run("fit", "--no-report", patients, "--subject", "patient", "--time", "years", "--response", "marker", "--model", "mixture",
            "--components", "2", "--max-iter", "15", "--n-basis", "6", "--covariance", "full", "--quiet", "--out", out3)
    assert r.exit_code == 0, r.output
    m3 = dmlmm.load(out3 / "model.dmlmm")
    assert m3.covariance == "full" and m3.prior_.covariance == "full"
    out4 = tmp_path / "res4"
    r = run("fit", "--no-report", patients, "--subject", "patient", "--time", "years", "--response", "marker", "--model", "lmm",
            "--max-iter", "30", "--n-basis", "6", "--noise-df", "auto", "--quiet", "--out", out4)
    assert r.exit_code == 0, r.output
    m4 = dmlmm.load(out4 / "model.dmlmm")
    assert m4.noise_df == "auto" and 1.0 <= m4.params_.scales.df <= 1000.0
    clusters = pd.read_csv(out4 / "clusters.csv")
    assert (clusters["residual_variance"] > 0).all()
    pred = out4 / "pred.csv"
    r = run("predict", out4 / "model.dmlmm", patients, "--times", "1,2", "--out", pred)
    assert r.exit_code == 0, r.output
    assert (pd.read_csv(pred)["residual_variance"] > 0).all()


@pytest.mark.parametrize("args, message", [
    (["--model", "mixture", "--loading-order", "2"], "--loading-order applies to the deep mixture (--model deep) only"),
    (["--loading-order", "0.5"], "--loading-order must be auto or a number of at least 1, got '0.5'"),
    (["--loading-order", "two"], "--loading-order must be auto or a number of at least 1, got 'two'"),
    (["--smoothing", "none", "--loading-order", "1"], "--loading-order needs the smoothness prior"),
    (["--model", "mixture", "--polynomial-covariance", "full"],
     "--polynomial-covariance applies to the deep mixture (--model deep) only"),
    (["--smoothing", "none", "--polynomial-covariance", "full"], "--polynomial-covariance needs the smoothness prior"),
    (["--model", "lmm", "--method", "reml", "--noise", "cluster"], "--noise applies to the variational fits"),
    (["--covariance", "full"], "--covariance applies to --model mixture and --model lmm"),
    (["--noise-df", "0"], "--noise-df must be none, auto or a positive number, got '0'"),
    (["--model", "lmm", "--method", "ml", "--noise-df", "4"], "--noise-df applies to the variational fits"),
    (["--model", "mixture", "--smoothing", "none", "--covariance", "pspline"],
     "--covariance pspline needs the smoothness prior"),
])
def test_prior_option_errors(patients, tmp_path, args, message):
    r = run("fit", patients, "--subject", "patient", "--time", "years", "--response", "marker", *args,
            "--out", tmp_path / "res")
    assert message in error_line(r)
    assert not (tmp_path / "res").exists()


def test_jobs_auto_runs_workers_for_full_batch_data_and_one_process_above(monkeypatch):
    from dmlmm import cli

    assert cli._parse_jobs("auto") == "auto" and cli._parse_jobs(" 3 ") == 3 and cli._parse_jobs("-1") == -1
    assert cli._resolve_jobs("auto", cli.AUTO_JOBS_MAX_SUBJECTS) == -1
    assert cli._resolve_jobs("auto", cli.AUTO_JOBS_MAX_SUBJECTS + 1) == 1
    assert cli._resolve_jobs(2, 10 ** 6) == 2  # a number given is kept
    monkeypatch.setattr("dmlmm.models.candidates.workers_allowed", lambda: False)  # e.g. inside a daemon
    assert cli._resolve_jobs("auto", 10) == 1


def test_smoothing_none_checks_the_default_basis_against_the_visit_times(tmp_path):
    """--smoothing none without --n-basis: the default 20 functions on five shared visit times are refused as
    --n-basis 20 is (they were fitted, with bands up to 70 times the response's range); enough distinct times
    pass, and the exact fits keep their own default (below ten functions here)."""
    rng = np.random.default_rng(0)
    n = 40
    df = pd.DataFrame({"id": np.repeat(np.arange(n), 5), "month": np.tile([0.0, 2.0, 3.0, 5.0, 8.0], n)})
    df["bdi"] = 20 + rng.normal(0, 5, n).repeat(5) - 0.8 * df["month"] + rng.normal(0, 2, len(df))
    p = tmp_path / "v.csv"
    df.to_csv(p, index=False)
    cols = ("--subject", "id", "--time", "month", "--response", "bdi")
    line = error_line(run("fit", "--no-report", p, *cols, "--smoothing", "none", "--out", tmp_path / "a"))
    assert ("--smoothing none with the default basis of 20 functions is more than these data can use: they have 5 "
            "distinct observation time(s)") in line and "give --n-basis 5 or fewer" in line
    r = run("fit", "--no-report", p, *cols, "--smoothing", "none", "--n-basis", "5", "--model", "mixture", "--components", "2",
            "--max-iter", "30", "--quiet", "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    r = run("fit", "--no-report", p, *cols, "--model", "lmm", "--method", "ml", "--quiet", "--out", tmp_path / "c")
    assert r.exit_code == 0, r.output

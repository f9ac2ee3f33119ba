"""``dmlmm fit DATA --dask SCHEDULER``: the fit on a Dask cluster, from the command line.

DATA is Parquet (a file or a folder of files, or a URL such as ``s3://bucket/visits/`` that the workers
can read), read by Dask, so the rows never come to this process; rows of one subject in several
partitions are shuffled by subject on the cluster first (:func:`by_subject`). The fit runs where the
rows live (:mod:`dmlmm.distributed`, docs/dask.md). SCHEDULER is a scheduler's address
(``tcp://host:8786``), or ``local`` / ``local:N`` for a ``LocalCluster`` of N worker processes on this
machine (one thread each; ``local``: one per CPU).

After the fit, the per-subject tables (each subject's cluster probabilities and posterior mean
coefficients) come to this process once, O(N (M + D)) memory, for ``clusters.csv`` and the model file;
the curves are not drawn for every subject (``trajectories.csv`` would hold 100 rows per subject, and
``report.html`` its figures): ``dmlmm predict model.dmlmm SUBJECTS`` draws those of the subjects
asked for.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

__all__ = ["LocalSpec", "parse_scheduler", "dask_client", "is_url", "read_dask_frame", "by_subject",
           "write_dask_outputs", "NOT_WITH_DASK", "DASK_OUTPUTS_NOTE", "NEEDS_DASK"]

#: Options of ``dmlmm fit`` that need the data in this process, refused with ``--dask`` (option: why).
NOT_WITH_DASK = {
    "--select": "it compares candidate models on held-out visits or their ELBOs, one fit each in this process",
    "--method": "the exact ML / REML fits run in memory",
    "--check-bands": "it refits without each subject's last visit in memory",
    "--outcome": "outcomes by cluster read each subject's row in this process",
    "--event-time": "survival by cluster reads each subject's row in this process",
    "--baseline": "baseline tables by cluster read each subject's row in this process",
    "--jobs": "the cluster's workers do the parallel work",
}

DASK_OUTPUTS_NOTE = ("a Dask fit writes no trajectories.csv or report.html (a curve per subject); draw the curves "
                     "of the subjects you want with: dmlmm predict {model} SUBJECTS (a CSV or Parquet file of their "
                     "visits)")


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


def by_subject(ddf: Any, subject: str, client: Any) -> Any:
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
                  "rows are shuffled by subject on the cluster before the fit (write the data partitioned by subject, "
                  f"e.g. ddf.set_index('{subject}').to_parquet(...), to save this step)", UserWarning, stacklevel=2)
    if ddf.index.name == subject:
        ddf = ddf.reset_index()
    return client.persist(ddf.shuffle(on=subject, npartitions=ddf.npartitions))  # once, not at every pass of the fit


def _distinct_labels(part: Any, subject: str) -> Any:
    """The distinct subject labels of one partition (a Series), from its column or its index."""
    labels = part.index if part.index.name == subject else part[subject]
    return pd.Series(pd.unique(labels.to_numpy()), dtype=labels.dtype)


def write_dask_outputs(model: Any, folder: Path, input_columns: list) -> tuple[list[str], Any]:
    """Bring the fitted model's per-subject tables here and write clusters.csv, model.dmlmm (and membership.csv)
    to ``folder``, the output columns named as after an in-memory fit (``input_columns``: the data's); returns
    the names written and clusters.csv's table."""
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
    save_model(model, folder / "model.dmlmm")
    written = ["clusters.csv", "model.dmlmm"]
    coef = getattr(model, "membership_coefficients_", None)
    if coef is not None:
        coef.reset_index().to_csv(folder / "membership.csv", index=False)
        written.append("membership.csv")
    return written, clusters

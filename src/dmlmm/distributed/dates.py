"""Visit dates turned into times on a Dask frame: :func:`dmlmm.times_from_dates` for a ``dask.dataframe``
(:func:`times_from_dates`; on the command line ``dmlmm fit --dask --time-unit``).

The same rule as in memory (:mod:`dmlmm.dates`), computed where the rows live. Every subject's rows must lie
in one partition (as the fit needs them; ``dmlmm fit --dask`` shuffles them so first): a subject's first visit
or its origin date is then read within its partition. One pass over the partitions gathers a row per subject
(its origin, its first date, whether its dates are whole days, how many of its rows have no date: O(N) here,
the model file's record of each fitted subject's origin); the numeric time column is then added lazily, one
partition at a time, with the numbers the in-memory turn gives the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..dates import (FIRST_VISIT, STUDY_START, DateError, DateTime, check_time_arguments, origins_by_row, origins_text,
                     parse_dates, read_date_column, time_column_name, with_time_column)
from .fit import current_client

__all__ = ["DaskDates", "turn_dates", "times_from_dates"]

#: Columns of the pass that reads each subject's origin (and their types but the subject's, the frame's own).
_SUMMARY = {"origin": "datetime64[ns]", "first": "datetime64[ns]", "whole": "bool", "missing": "int64"}


@dataclass(frozen=True)
class DaskDates:
    """What :func:`turn_dates` made: ``frame`` (lazy) with the numeric time column ``rule.name``, the rule (None:
    the time column holds numbers) and the number of rows without a date (their time is missing)."""

    frame: Any
    rule: DateTime | None
    rows_without_date: int = 0


def times_from_dates(ddf: Any, subject: str, time: str, unit: str = "years", origin: str = FIRST_VISIT,
                     response: str | None = None, client: Any = None) -> tuple[Any, DateTime]:
    """:func:`dmlmm.times_from_dates` for a Dask DataFrame: ``ddf`` with the numeric time column, and the rule.

    Parameters
    ----------
    ddf : dask.dataframe.DataFrame
        One row per observation, every subject's rows in one partition (the subject a column or the index),
        as its fit needs them.
    subject, time, unit, origin, response
        As :func:`dmlmm.times_from_dates`.
    client : distributed.Client, optional
        Default: the current one.

    Returns
    -------
    (dask.dataframe.DataFrame, DateTime)
        ``ddf`` with the new column ``rule.name``, added lazily partition by partition (the same numbers as
        in memory), after one pass that brings each subject's origin here (O(N)); the rule, for new data.
    """
    check_time_arguments(list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else []), subject, time,
                         unit)
    turned = turn_dates(ddf, subject, time, unit, origin, response, client)
    return turned.frame, turned.rule


def turn_dates(ddf: Any, subject: str, time: str, unit: str | None, origin: str | None, response: str | None = None,
               client: Any = None, options: tuple[str, str] = ("unit", "origin")) -> DaskDates:
    """The date column ``time`` of ``ddf`` turned into a numeric time column, as
    :func:`dmlmm.dates.dates_to_numbers` does in memory (the same checks and messages, naming the unit and the
    origin by ``options``), on the partitions of the current (or given) ``distributed.Client``.

    Raises DateError as in memory, and for a subject whose rows lie in two partitions.
    """
    meta = _flat(ddf._meta, subject)
    if time not in meta.columns:
        return DaskDates(ddf, None)  # the column check names it
    if pd.api.types.is_numeric_dtype(meta[time].dtype) and unit is None and origin is None:
        return DaskDates(ddf, None)  # numbers: nothing to read
    client = current_client(client)
    summary_meta = _summary(meta[subject].iloc[:0], pd.DataFrame({k: pd.Series(dtype=v) for k, v in _SUMMARY.items()}))
    parts = ddf.map_partitions(_partition_summary, subject, time, unit, origin, response, options, meta=summary_meta)
    summary = client.compute(parts).result()
    if summary.empty:  # numbers, and no unit asked for: the in-memory answer
        return DaskDates(ddf, None)
    twice = summary["subject"][summary["subject"].duplicated()]
    if len(twice):
        raise DateError(f"subject {str(twice.iloc[0])!r} has rows in more than one partition: each subject's rows must "
                        f"lie in one partition to time its visits from its own dates (ddf.shuffle(on='{subject}') or "
                        f"ddf.set_index('{subject}') puts them together)")
    missing = int(summary["missing"].sum())
    origin = origin or FIRST_VISIT
    name = time_column_name(unit, origin)
    whole = bool(summary["whole"].all())
    if origin == STUDY_START:
        start = summary["first"].min()
        iso = None if pd.isna(start) else pd.Timestamp(start).isoformat()
        spec = DateTime(time, unit, origin, name, study_start=iso, whole_days=whole)
    else:
        known = summary.dropna(subset=["origin"])
        spec = DateTime(time, unit, origin, name, subject_origins=origins_text(known["subject"], known["origin"]),
                        whole_days=whole)
    out_meta = ddf._meta.assign(**{name: pd.Series(dtype=float, index=ddf._meta.index)})
    timed = ddf.map_partitions(_partition_times, subject, time, unit, origin, response, spec.study_start, meta=out_meta)
    return DaskDates(timed, spec, missing)


def _flat(part: pd.DataFrame, subject: str) -> pd.DataFrame:
    """``part`` with its subject index (if that is where the subject is) made a column."""
    return part.reset_index() if part.index.name == subject else part


def _dates_or_nat(values: pd.Series) -> pd.Series:
    """``values`` as datetimes; all NaT where the partition holds no date at all."""
    dates = parse_dates(values)
    return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]") if dates is None else dates


def _partition_summary(part: pd.DataFrame, subject: str, time: str, unit: str | None, origin: str | None,
                       response: str | None, options: tuple[str, str]) -> pd.DataFrame:
    """One row per subject of one partition: its origin (first-visit or a column's date), its first date, whether
    its dates (and origin) are whole days, its rows without a date; no rows where the column holds numbers and no
    unit was asked for. Raises DateError as the in-memory turn (the same checks, on this partition's rows)."""
    flat = _flat(part, subject)
    none = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _SUMMARY.items()})
    if flat.empty:
        return _summary(flat[subject], none)
    if flat[time].notna().any():
        read = read_date_column(flat, time, unit, origin, options)
        if read is None:
            return _summary(flat[subject].iloc[:0], none)
        dates = read[0]
    else:  # no date here (dates elsewhere): its rows are counted as without one
        dates = pd.Series(pd.NaT, index=flat.index, dtype="datetime64[ns]")
    origin = origin or FIRST_VISIT
    whole = (dates == dates.dt.normalize()) | dates.isna()
    if origin == STUDY_START:
        origin_of_row = pd.Series(pd.NaT, index=flat.index, dtype="datetime64[ns]")
    else:
        origin_of_row = origins_by_row(flat, subject, dates, origin, response, options[1])
        if origin != FIRST_VISIT:
            whole &= (origin_of_row == origin_of_row.dt.normalize()) | origin_of_row.isna()
    rows = pd.DataFrame({"origin": origin_of_row, "first": dates, "whole": whole, "missing": dates.isna()})
    per = rows.groupby(flat[subject].to_numpy(), sort=False).agg(
        origin=("origin", "first"), first=("first", "min"), whole=("whole", "all"), missing=("missing", "sum"))
    return _summary(per.index.to_series(), per.astype(_SUMMARY))


def _summary(labels: pd.Series, per_subject: pd.DataFrame) -> pd.DataFrame:
    """The pass's table: the subject labels (their own type), then the per-subject columns."""
    out = per_subject.reset_index(drop=True)
    out.insert(0, "subject", labels.to_numpy())
    return out.astype({"subject": labels.dtype})


def _partition_times(part: pd.DataFrame, subject: str, time: str, unit: str, origin: str, response: str | None,
                     study_start: str | None) -> pd.DataFrame:
    """One partition with the numeric time column: the in-memory turn of its rows (its subjects' own origins, read
    within it), or from the study's first date over every partition (``study-start``)."""
    indexed = part.index.name == subject
    flat = _flat(part, subject)
    name = time_column_name(unit, origin)
    if flat.empty:
        timed = flat.assign(**{name: pd.Series(dtype=float, index=flat.index)})
    else:
        dates = _dates_or_nat(flat[time])
        if origin == STUDY_START:
            start = pd.Timestamp(study_start) if study_start is not None else pd.NaT
            origin_of_row = pd.Series(start, index=flat.index, dtype="datetime64[ns]")
        else:
            origin_of_row = origins_by_row(flat, subject, dates, origin, response)
        timed = with_time_column(flat, name, dates, origin_of_row, unit)
    return timed.set_index(subject) if indexed else timed

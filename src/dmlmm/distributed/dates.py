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

import numpy as np
import pandas as pd

from ..dates import FIRST_VISIT, STUDY_START, UNITS, DateError, DateTime, _with_time, dates_to_numbers, parse_dates
from .fit import current_client

__all__ = ["DaskDates", "turn_dates", "times_from_dates"]

_SUMMARY = {"subject": "object", "origin": "datetime64[ns]", "first": "datetime64[ns]", "whole": "bool",
            "missing": "int64", "name": "object"}


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
    if unit not in UNITS:
        raise DateError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
    present = list(ddf.columns) + ([ddf.index.name] if ddf.index.name is not None else [])
    for role, name in (("subject", subject), ("time", time)):
        if name not in present:
            raise DateError(f"{role} column {name!r} not found in the data; the columns are: {present}")
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
    parts = ddf.map_partitions(_partition_summary, subject, time, unit, origin, response, options,
                               meta=pd.DataFrame({k: pd.Series(dtype=v) for k, v in _SUMMARY.items()}))
    summary = client.compute(parts).result()
    if summary.empty or summary["name"].isna().all():  # numbers (and no unit asked): the in-memory answer
        return DaskDates(ddf, None)
    twice = summary["subject"][summary["subject"].duplicated()]
    if len(twice):
        raise DateError(f"subject {twice.iloc[0]!r} has rows in more than one partition: each subject's rows must lie "
                        f"in one partition to time its visits from its own dates (ddf.shuffle(on='{subject}') or "
                        f"ddf.set_index('{subject}') puts them together)")
    missing = int(summary["missing"].sum())
    name = str(summary["name"].dropna().iloc[0])
    origin = origin or FIRST_VISIT
    whole = bool(summary["whole"].all())
    if origin == STUDY_START:
        start = summary["first"].min()
        start = None if pd.isna(start) else pd.Timestamp(start)
        spec = DateTime(time, unit, origin, name, study_start=None if start is None else start.isoformat(),
                        whole_days=whole)
    else:
        known = summary.dropna(subset=["origin"])
        spec = DateTime(time, unit, origin, name, whole_days=whole, subject_origins={
            str(k): pd.Timestamp(v).isoformat() for k, v in zip(known["subject"], known["origin"])})
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
    """One row per subject of one partition: its origin (first-visit or column), its first date, whether its
    dates are whole days, its rows without a date, and the new column's name (None: no dates to turn)."""
    flat = _flat(part, subject)
    empty = pd.DataFrame({k: pd.Series(dtype=v) for k, v in _SUMMARY.items()})
    if flat.empty:
        return empty
    # the in-memory turn on this partition: its checks and messages, and (but for study-start) each subject's origin
    timed, spec = dates_to_numbers(flat, subject, time, unit, origin, response, options=options)
    if spec is None:
        return empty.assign(name=pd.Series(dtype=object))
    dates = _dates_or_nat(flat[time])
    keys = flat[subject].astype(str).to_numpy()
    first = dates.groupby(keys).min()
    whole = ((dates == dates.dt.normalize()) | dates.isna()).groupby(keys).all()
    missing = dates.isna().groupby(keys).sum()
    labels = first.index
    origins = pd.Series({k: pd.Timestamp(v) for k, v in (spec.subject_origins or {}).items()}, dtype="datetime64[ns]")
    out = pd.DataFrame({
        "subject": pd.Series(labels, dtype=object),
        "origin": origins.reindex(labels).to_numpy(dtype="datetime64[ns]"),
        "first": first.to_numpy(dtype="datetime64[ns]"),
        "whole": whole.reindex(labels).to_numpy(dtype=bool) & bool(spec.whole_days),
        "missing": missing.reindex(labels).to_numpy(dtype=np.int64),
        "name": spec.name,
    })
    return out


def _partition_times(part: pd.DataFrame, subject: str, time: str, unit: str, origin: str, response: str | None,
                     study_start: str | None) -> pd.DataFrame:
    """One partition with the numeric time column: the in-memory turn of its rows (its subjects' own origins), or
    the study's first date over every partition (``study-start``)."""
    indexed = part.index.name == subject
    flat = _flat(part, subject)
    if origin == STUDY_START:
        start = pd.Timestamp(study_start) if study_start is not None else pd.NaT
        name = f"{unit}_since_study_start"
        timed = _with_time(flat, name, _dates_or_nat(flat[time]), pd.Series(start, index=flat.index), unit)
    elif len(flat):
        timed, _ = dates_to_numbers(flat, subject, time, unit, origin, response)
    else:
        name = f"{unit}_since_" + ("first_visit" if origin == FIRST_VISIT else origin)
        timed = flat.assign(**{name: pd.Series(dtype=float, index=flat.index)})
    return timed.set_index(subject) if indexed else timed

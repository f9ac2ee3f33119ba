"""Date-valued time columns: visit dates turned into a number of days, weeks, months or years since an
origin (:func:`times_from_dates`; on the command line ``dmlmm fit --time-unit``), and the same turn for new
data (:meth:`DateTime.apply`; ``dmlmm predict``).

    >>> import pandas as pd
    >>> visits = pd.DataFrame({"id": ["a", "a", "b"], "visit": ["2020-01-01", "2020-07-01", "2021-03-15"],
    ...                        "y": [1.0, 2.0, 3.0]})
    >>> data, rule = times_from_dates(visits, "id", "visit", unit="months")
    >>> data["months_since_first_visit"].round(2).tolist()
    [0.0, 5.98, 0.0]
    >>> rule.name
    'months_since_first_visit'

Fit on ``rule.name`` as the time column; ``rule.apply(new_visits, "id")`` times new data the same way (a
fitted subject from its first visit in ``visits``).

A clinical export gives visits as dates (``2019-03-14``); the models need a number. The origin decides
what the curves mean:

- ``first-visit`` (the default): time since each subject's own first visit, the time on study;
- ``study-start``: time since the earliest date in the data (calendar time);
- a column name: time since that column's date, one per subject (a birth date gives age, a diagnosis
  date disease duration).

A model file written by ``dmlmm fit`` records the rule (:meth:`DateTime.to_meta`), with each fitted
subject's origin, so that ``dmlmm predict`` puts new visits of a fitted subject on the fit's own scale (its origin is its first
visit in the fit's data, not in the new file) and a new subject's on its own.

A month is 365.25 / 12 days and a year 365.25 days. Only ISO 8601 dates are read (``2019-03-14``,
``2019-03-14 08:30``) and Parquet's date types: ``14/03/2019`` is ambiguous (day first or month first)
and is refused with a message saying what to write instead.
"""

from __future__ import annotations

import datetime
import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from ._dask_frames import is_dask_collection
from .exceptions import DataError

__all__ = ["UNITS", "DateTime", "DateError", "parse_dates", "dates_to_numbers", "read_date_column", "origins_text",
           "origins_by_row", "with_time_column", "time_column_name", "check_time_arguments", "times_from_dates"]

#: Days per unit of ``--time-unit``.
UNITS: dict[str, float] = {"days": 1.0, "weeks": 7.0, "months": 365.25 / 12, "years": 365.25}
FIRST_VISIT, STUDY_START = "first-visit", "study-start"
_DAY = np.timedelta64(1, "D")


class DateError(DataError):
    """A date column that cannot be turned into times as asked."""


def parse_dates(values: pd.Series) -> pd.Series | None:
    """``values`` as datetimes (NaT where empty) if they are dates, else None (numbers, or text that is not
    all ISO 8601 dates). Time zones are dropped after conversion to UTC."""
    if pd.api.types.is_datetime64_any_dtype(values):
        out = values
    elif pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        text = values.dropna()
        if len(text) and all(isinstance(v, (datetime.date, pd.Timestamp)) for v in text):  # Parquet's date type
            return parse_dates(pd.to_datetime(values, utc=any(getattr(v, "tzinfo", None) for v in text)))
        if not len(text) or not all(isinstance(v, str) for v in text):
            return None
        text = text.str.strip()
        if not text.str.match(r"^\d{4}-\d{2}-\d{2}").all():  # ISO 8601 only: 03/04/2019 is ambiguous
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parsed = pd.to_datetime(text, errors="coerce", format="ISO8601",
                                    utc=text.str.contains(r"[+-]\d{2}:?\d{2}$|Z$").any())
        if parsed.isna().any():
            return None
        out = parsed.reindex(values.index)  # NaT where the column is empty
    else:
        return None
    if getattr(out.dt, "tz", None) is not None:
        out = out.dt.tz_convert("UTC").dt.tz_localize(None)
    return out.astype("datetime64[ns]")


@dataclass(frozen=True)
class DateTime:
    """How a date column became the model's time: ``name`` = (``column`` - origin) / ``unit``.

    Attributes
    ----------
    column : the data's date column (``--time``).
    unit : "days", "weeks", "months" or "years".
    origin : "first-visit", "study-start" or the name of a column holding one date per subject.
    name : the numeric time column the model was fitted on, e.g. ``years_since_first_visit``.
    study_start : ISO date-time of the earliest date (origin "study-start"), else None.
    subject_origins : {subject label (as text): ISO date-time} of the fitted subjects (origin
        "first-visit" or a column), else None.
    whole_days : every date of the fit's data was at midnight: dates written back are days.
    """

    column: str
    unit: str
    origin: str
    name: str
    study_start: str | None = None
    subject_origins: dict[str, str] | None = None
    whole_days: bool = True

    def describe(self) -> str:
        """One line for the summary, e.g. ``'visit_date' as years since each subject's first visit``."""
        since = {FIRST_VISIT: "each subject's first visit",
                 STUDY_START: f"the study's first date ({_show(self.study_start)})"}.get(
            self.origin, f"each subject's '{self.origin}'")
        return f"time: '{self.column}' as {self.unit} since {since}, in column '{self.name}'"

    def to_meta(self) -> dict:
        return {"column": self.column, "unit": self.unit, "origin": self.origin, "name": self.name,
                "study_start": self.study_start, "subject_origins": self.subject_origins,
                "whole_days": self.whole_days}

    @classmethod
    def from_meta(cls, meta: dict) -> "DateTime":
        return cls(str(meta["column"]), str(meta["unit"]), str(meta["origin"]), str(meta["name"]),
                   meta.get("study_start"), meta.get("subject_origins"), bool(meta.get("whole_days", True)))

    def apply(self, frame: pd.DataFrame, subject: str, response: str | None = None) -> pd.DataFrame:
        """``frame`` with the numeric time column ``name`` added from its date column (``dmlmm predict``).

        A fitted subject's origin is the one of the fit; a new subject's is its first visit in ``frame``
        (origin "first-visit": its first date with a ``response`` value, or its first date where it has none)
        or its date in the origin column."""
        dates = _dates_of(frame, self.column)
        origin = self._origin_of(frame[subject], frame, subject, response, dates)
        return with_time_column(frame, self.name, dates, origin, self.unit)

    def dates_at(self, table: pd.DataFrame, subject: str, frame: pd.DataFrame,
                 response: str | None = None) -> pd.Series:
        """The calendar date of each row of ``table`` (subject, time ``name``): origin + time, for the
        outputs. ``frame``: the data the table was made from (the new subjects' origins)."""
        origin = self._origin_of(table[subject], frame, subject, response)
        out = origin + pd.to_timedelta(table[self.name].to_numpy() * UNITS[self.unit], unit="D")
        return out.dt.round("D") if self.whole_days else out.dt.round("s")

    def times_of(self, frame: pd.DataFrame, column: str, subject: str, response: str | None = None) -> pd.Series | None:
        """Another date column of ``frame`` (an event or censoring date) on the fit's time scale: (date - its
        subject's origin) / unit; None where ``column`` does not hold dates."""
        dates = parse_dates(frame[column])
        if dates is None:
            return None
        origin = self._origin_of(frame[subject], frame, subject, response)
        return pd.Series((dates - origin) / _DAY / UNITS[self.unit], index=frame.index, name=column)

    @cached_property
    def _fitted_origins(self) -> pd.Series:
        """``subject_origins`` as datetimes indexed by label, parsed once per rule (in one vectorised step: a
        fit of a million subjects has a million)."""
        got = self.subject_origins or {}
        return pd.Series(pd.to_datetime(list(got.values()), format="ISO8601"), index=list(got.keys()),
                         dtype="datetime64[ns]")

    def _origin_of(self, labels: pd.Series, frame: pd.DataFrame, subject: str, response: str | None,
                   dates: pd.Series | None = None) -> pd.Series:
        """The origin of each of ``labels`` (subjects): the fit's where it has one, else its own from
        ``frame`` (its dates read, or ``dates``, only where a subject has none from the fit)."""
        if self.origin == STUDY_START:
            return pd.Series(pd.Timestamp(self.study_start), index=labels.index)
        origin = labels.astype(str).map(self._fitted_origins)
        if origin.notna().all():
            return origin
        dates = _dates_of(frame, self.column) if dates is None else dates
        own = origins_by_row(frame, subject, dates, self.origin, response)
        per_subject = own.groupby(frame[subject].astype(str).to_numpy()).first()
        return origin.fillna(labels.astype(str).map(per_subject))


def dates_to_numbers(frame: pd.DataFrame, subject: str, time_col: str, unit: str | None, origin: str | None,
                     response: str | None = None, options: tuple[str, str] = ("--time-unit", "--time-origin"),
                     ) -> tuple[pd.DataFrame, DateTime | None]:
    """The fit's data with a numeric time column made from a date column; the rule, or None when the time
    column holds numbers and no unit was asked for. A subject's first visit is its first date with a
    ``response`` value (rows without one, which ``--dropna`` drops, do not move it).

    Raises DateError when the column holds dates and no unit was given, a unit was given for numbers, the
    origin column is missing or not one date per subject, or the new column's name is taken; the messages
    name the unit and the origin by ``options`` (the command line's by default)."""
    if time_col not in frame.columns:
        return frame, None  # the column check names it
    read = read_date_column(frame, time_col, unit, origin, options)
    if read is None:
        return frame, None
    dates, name = read
    origin = origin or FIRST_VISIT
    known = dates.dropna()
    whole = bool(len(known) == 0 or (known == known.dt.normalize()).all())
    if origin == STUDY_START:
        start = known.min() if len(known) else None
        origin_of_row = pd.Series(start, index=frame.index)
        spec = DateTime(time_col, unit, origin, name, study_start=None if start is None else start.isoformat(),
                        whole_days=whole)
    else:
        origin_of_row = origins_by_row(frame, subject, dates, origin, response, options[1])
        if origin != FIRST_VISIT:
            whole = whole and bool((origin_of_row.dropna() == origin_of_row.dropna().dt.normalize()).all())
        firsts = origin_of_row.groupby(frame[subject].astype(str).to_numpy()).first().dropna()
        spec = DateTime(time_col, unit, origin, name, subject_origins=origins_text(firsts.index, firsts),
                        whole_days=whole)
    return with_time_column(frame, name, dates, origin_of_row, unit), spec


def read_date_column(frame: pd.DataFrame, time_col: str, unit: str | None, origin: str | None,
                     options: tuple[str, str] = ("--time-unit", "--time-origin")) -> tuple[pd.Series, str] | None:
    """The dates of column ``time_col`` and the name of the time column to make from them; None where the column
    holds numbers and no unit was asked for. Raises DateError as :func:`dates_to_numbers` does."""
    opt_unit, opt_origin = options
    dates = parse_dates(frame[time_col])
    if dates is None:
        text = frame[time_col].dropna()
        if text.dtype == object and len(text) and text.map(lambda v: isinstance(v, str)).all() and \
                text.str.strip().str.fullmatch(r"\d{1,2}[/.-]\d{1,2}[/.-](\d{2}|\d{4})").all():
            raise DateError(f"column '{time_col}' holds dates written day/month/year or month/day/year "
                            f"({text.iloc[0]!r}), which cannot be told apart: write them as 2019-03-14 (ISO 8601; "
                            f"spreadsheet programs can format a date column so) and give {opt_unit}")
        if unit is not None or origin is not None:
            raise DateError(f"{opt_unit} and {opt_origin} turn a column of dates into times, but column "
                            f"'{time_col}' does not hold dates written as 2019-03-14 (ISO 8601): leave them out for "
                            "a time column of numbers, or write its dates in that form")
        return None
    if unit is None:
        raise DateError(f"column '{time_col}' holds dates: add --time-unit (days, weeks, months or years) to fit on "
                        f"the time since each subject's first visit, or also --time-origin study-start (the "
                        f"study's first date) or --time-origin COLUMN (a date per subject, e.g. a birth date for "
                        f"age)")
    if unit not in UNITS:
        raise DateError(f"{opt_unit} must be one of {', '.join(UNITS)}, got {unit!r}")
    name = time_column_name(unit, origin)
    if name in frame.columns:
        raise DateError(f"{opt_unit}: the time would go to a new column '{name}', but the data already have one: "
                        "rename that column")
    return dates, name


def time_column_name(unit: str, origin: str | None) -> str:
    """The numeric time column made from dates, e.g. ``years_since_first_visit`` (origin None: the first visit)."""
    origin = origin or FIRST_VISIT
    return f"{unit}_since_" + {FIRST_VISIT: "first_visit", STUDY_START: "study_start"}.get(origin, origin)


def origins_text(labels, origins: pd.Series) -> dict[str, str]:
    """``{label as text: ISO date-time}`` of the subjects ``labels`` and their ``origins`` (no missing ones):
    the model file's record, to the second (to the nanosecond where a date has a fraction of a second)."""
    values = np.asarray(origins, dtype="datetime64[ns]")
    fraction = bool((values.astype("int64") % 1_000_000_000).any())
    text = np.datetime_as_string(values, unit="ns" if fraction else "s")
    return dict(zip(pd.Index(labels).astype(str), text.tolist()))


def times_from_dates(data: pd.DataFrame, subject: str, time: str, unit: str = "years", origin: str = FIRST_VISIT,
                     response: str | None = None) -> tuple[pd.DataFrame, DateTime]:
    """``data`` with a numeric time column made from the date column ``time``, and the rule that made it.

    Parameters
    ----------
    data : DataFrame
        One row per observation (for a Dask DataFrame, :func:`dmlmm.distributed.times_from_dates`).
    subject, time : str
        The subject column and the date column (ISO 8601 text such as ``2019-03-14``, datetimes or dates).
    unit : {"days", "weeks", "months", "years"}
        A month is 365.25 / 12 days, a year 365.25 days.
    origin : str
        "first-visit" (each subject's first visit), "study-start" (the earliest date) or the name of a
        column holding one date per subject (a birth date gives age).
    response : str, optional
        The response column: a subject's first visit is then its first date with a value.

    Returns
    -------
    (DataFrame, DateTime)
        ``data`` with the new column ``rule.name`` (e.g. ``years_since_first_visit``) beside the dates;
        the rule, whose :meth:`~DateTime.apply` times new data the same way.
    """
    if is_dask_collection(data):
        check_time_arguments([], subject, time, unit, check_columns=False)
        raise DateError("data is a Dask DataFrame: dmlmm.distributed.times_from_dates(ddf, ...) turns its dates into "
                        "times on its partitions, with the same arguments")
    check_time_arguments(list(data.columns), subject, time, unit)
    # with a unit given, a column that does not hold dates is refused there: the rule is never None
    return dates_to_numbers(data, subject, time, unit, origin, response, options=("unit", "origin"))


def check_time_arguments(columns: list, subject: str, time: str, unit: str, check_columns: bool = True) -> None:
    """The DateError of :func:`times_from_dates` (in memory or on Dask) for a unit it does not know or a subject
    or time column not among ``columns``."""
    if unit not in UNITS:
        raise DateError(f"unit must be one of {', '.join(map(repr, UNITS))}, got {unit!r}")
    for role, name in ((("subject", subject), ("time", time)) if check_columns else ()):
        if name not in columns:
            raise DateError(f"{role} column {name!r} not found in the data; the columns are: {columns}")


def _dates_of(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame.columns:
        raise DateError(f"the model was fitted on the dates of column '{column}' (turned into times): the data "
                        "have no such column")
    dates = parse_dates(frame[column])
    if dates is None:
        raise DateError(f"the model was fitted on the dates of column '{column}' (turned into times), but here it "
                        "does not hold dates written as 2019-03-14 (ISO 8601)")
    return dates


def origins_by_row(frame: pd.DataFrame, subject: str, dates: pd.Series, origin: str,
                 response: str | None = None, opt_origin: str = "--time-origin") -> pd.Series:
    """Each row's subject's origin from ``frame`` itself: its first visit (its first date with a ``response``
    value; its first date where it has none), or its date in column ``origin``."""
    keys = frame[subject].astype(str).to_numpy()
    if origin == FIRST_VISIT:
        first_any = dates.groupby(keys).transform("min")
        if response is None or response not in frame.columns:
            return first_any
        seen = dates.where(pd.to_numeric(frame[response], errors="coerce").notna())
        return seen.groupby(keys).transform("min").fillna(first_any)
    if origin not in frame.columns:
        raise DateError(f"{opt_origin} '{origin}': no such column (use first-visit, study-start or the name of a "
                        "column holding one date per subject)")
    own = parse_dates(frame[origin])
    if own is None:
        raise DateError(f"{opt_origin} column '{origin}' must hold dates written as 2019-03-14 (ISO 8601)")
    spread = own.groupby(keys).nunique()
    has_dates = dates.notna().groupby(keys).any()
    lacking = has_dates.index[has_dates & (spread == 0)]
    if len(lacking):
        raise DateError(f"{opt_origin} column '{origin}' is empty for {len(lacking)} subject(s) with visits (e.g. "
                        f"'{lacking[0]}'): give each subject its date, or leave those subjects out")
    if (spread > 1).any():
        bad = spread.index[spread > 1][0]
        raise DateError(f"{opt_origin} column '{origin}' must hold one date per subject, but subject '{bad}' has "
                        f"{int(spread[bad])} different dates")
    return own.groupby(keys).transform("first")


def with_time_column(frame: pd.DataFrame, name: str, dates: pd.Series, origin: pd.Series, unit: str) -> pd.DataFrame:
    """``frame`` with column ``name`` = (dates - origin) in ``unit``; rows without a date or origin get NaN
    (the data checks then name them)."""
    days = (dates - origin) / _DAY
    return frame.assign(**{name: days.to_numpy(dtype=float) / UNITS[unit]})


def _show(iso: str | None) -> str:
    if iso is None:
        return "none"
    ts = pd.Timestamp(iso)
    return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat(sep=" ")

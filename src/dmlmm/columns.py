"""The user's columns: their roles (subject, time, response) and reading one as numbers."""

from __future__ import annotations

import warnings
from decimal import ROUND_HALF_UP, Decimal
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .exceptions import DataError

__all__ = ["ColumnNames", "as_numeric"]


@dataclass(frozen=True)
class ColumnNames:
    """The user's names for the subject, time and response columns."""

    subject: str = "subject"
    time: str = "time"
    response: str = "y"

    def roles(self) -> dict[str, str]:
        """Each column's role: ``{subject: "subject", time: "time", response: "response"}``."""
        return {self.subject: "subject", self.time: "time", self.response: "response"}


def as_numeric(values, name: str) -> np.ndarray:
    """Float array of ``values`` (NaN kept), or a DataError naming ``name`` and the first non-numeric row.

    Parameters
    ----------
    values : Series or array-like, shape (n,)
        A Series keeps its index, so the message names the user's row label.
    name : str
        How the message refers to the values, e.g. ``"column 'y'"``.
    """
    s = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s):
        # pd.to_numeric would give nanoseconds since 1970 (or of the durations): curves over 1.6e18
        kind, example = (("dates", "dmlmm.times_from_dates(data, subject, column, unit='years') for years since each "
                                   "subject's first visit, or with d the column, (d - d.min()).dt.days / 365.25 for "
                                   "years since the first date")
                         if pd.api.types.is_datetime64_any_dtype(s) else
                         ("durations", "with d the column, d.dt.days for days or d.dt.days / 365.25 for years"))
        raise DataError(
            f"{name} holds {kind} ({s.dtype}): give it as a number in the unit you want the curves in, "
            f"e.g. {example}"
        )
    if pd.api.types.is_bool_dtype(s):
        s = s.astype(float)
    conv = pd.to_numeric(s, errors="coerce")
    bad = conv.isna().to_numpy() & s.notna().to_numpy()
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{name} must be numeric, but row {_plain(s.index[first])!r} holds {_plain(s.iloc[first])!r} "
            f"({int(bad.sum())} non-numeric value(s) in all); " + _text_hint(s[bad])
        )
    return conv.to_numpy(dtype=float, na_value=np.nan)


def _text_hint(bad: pd.Series) -> str:
    """What to do with non-numeric values: written dates ('2020-01-05') or durations ('118 days') get the
    conversion to a number (a file's text is not parsed as dates); anything else, convert or drop."""
    text = bad.astype(str).str.strip()
    if len(text) and text.str.fullmatch(r"[+-]?(\d{1,3}(\.\d{3})+|\d+)?,\d+").all():
        return ("they are numbers written with a decimal comma: read the file with decimal=',' (pandas: "
                "pd.read_csv(path, sep=';', decimal=',')), or write it with decimal points")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dates = pd.to_datetime(text, errors="coerce", format="ISO8601").notna().all()
        spans = not dates and pd.to_timedelta(text, errors="coerce").notna().all()
    if dates:
        return ("they are dates: give the time as a number in the unit you want the curves in, e.g. days or "
                "years since the study's first date (pandas: (d - d.min()).dt.days with d = pd.to_datetime(column))")
    if len(text) and text.str.fullmatch(r"\d{1,2}[/.-]\d{1,2}[/.-](\d{2}|\d{4})").all():  # 15/01/2020, 1.2.21
        return ("they look like dates written day/month/year or month/day/year: give the time as a number in the "
                "unit you want the curves in, e.g. days since the study's first date (pandas: (d - d.min()).dt.days "
                "with d = pd.to_datetime(column, dayfirst=True) for day/month/year)")
    if spans:
        return ("they are durations with units: give them as plain numbers in one unit (e.g. 118 for '118 days'; "
                "pandas: pd.to_timedelta(column).dt.days)")
    return "convert or drop those rows"


def _plain(value):
    """A numpy scalar as the Python value it holds (numpy 2 prints ``np.int64(3)`` for 3 in messages)."""
    return value.item() if isinstance(value, np.generic) else value


def warn_mixed_labels(labels: pd.Index, column: str, stacklevel: int = 3) -> None:
    """A UserWarning when subject labels differ only in type (``3`` and ``'3'``, ``1.0`` and ``1``): they are
    different subjects, which is rarely what a column read from several files or typed by hand means."""
    if labels.dtype != object or len(labels) < 2:
        return
    text = pd.Index([_plain_text(v) for v in labels])
    twins = text.duplicated(keep=False)
    if twins.any():
        shown = [_plain(v) for v in labels[twins][:4]]
        warnings.warn(
            f"column '{column}' holds labels that differ only in type ({', '.join(map(repr, shown))}): they are "
            f"{int(twins.sum())} different subjects here; give the column one type (e.g. .astype(str)) if they are "
            "the same subjects", UserWarning, stacklevel=stacklevel)


def check_bool_number_labels(values: pd.Series, column: str) -> None:
    """A DataError when a subject column holds True/False beside the numbers 1/0: Python and pandas take
    ``True == 1`` (and ``False == 0``) as one label, so two subjects would silently become one."""
    if values.dtype != object:
        return
    flags = values.map(lambda v: isinstance(v, (bool, np.bool_)))
    if not flags.any() or flags.all():
        return
    zero_one = [v for v in values[~flags].unique() if _is_number(v) and v in (0, 1)]
    clash = sorted({bool(v) for v in values[flags].unique()} & {bool(v) for v in zero_one})
    if clash:
        numbers = ", ".join(repr(v) for v in zero_one if bool(v) in clash)
        raise DataError(
            f"column '{column}' holds {' and '.join(map(repr, clash))} beside the number(s) {numbers}: Python and "
            "pandas take True == 1 and False == 0 as the same label, so these subjects would be merged; give the "
            "column one type (e.g. df['" + column + "'].astype(str))")


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _plain_text(value) -> str:
    """A label as text, whole floats without their '.0' (1.0 and '1' read alike)."""
    v = _plain(value)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def one_decimal(x: float) -> str:
    """``x`` to one decimal, halves rounded away from zero as a paper's tables do (46.25 -> '46.3'; Python's
    format rounds a half to even, '46.2'), from the shortest decimal that reads back as ``x``."""
    x = float(x)
    if not np.isfinite(x):
        return f"{x:.1f}"
    return str(Decimal(repr(x)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))

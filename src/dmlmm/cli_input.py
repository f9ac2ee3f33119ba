"""Input of the ``dmlmm`` command line: CSV files, column checks, response transforms, basis size.

:func:`read_table` reads a CSV file or Parquet data (:mod:`dmlmm.cli_parquet`: a file, recognised by its
content, or a folder of files).

:func:`read_csv` reads what a spreadsheet or another program is likely to
produce: compressed files (gzip, bz2, xz, zip, zstd; recognised by their
content, whatever the name), comma-, semicolon-, tab- or bar-separated values
(semicolon files may use decimal commas), UTF-8 with or without a byte-order
mark, UTF-16 with one, and, with a warning, Windows-1252 or Latin-1. Every
problem is a :class:`InputError` with a one-line message.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import difflib
import gzip
import io
import lzma
import re
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .columns import as_numeric
from .exceptions import DataError
from .response_transform import forward

__all__ = ["InputError", "read_table", "read_csv", "check_columns", "apply_transform", "check_transform_domain",
           "check_n_basis", "TRANSFORMS", "MAX_N_BASIS"]

TRANSFORMS = ("auto", "none", "log", "log1p")
MAX_N_BASIS = 100  # far beyond what a smooth curve needs; the cost grows as n_basis**3
_SEPARATORS = (",", ";", "\t", "|")
_SEP_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"), (b"PK\x03\x04", "zip"),
          (b"(\xb5/\xfd", "zstd"))
_SAMPLE_LINES = 200


class InputError(DataError):
    """Input the command line cannot use; the message is one line, ready to print."""


# ---------------------------------------------------------------------------- reading
def read_table(path: str | Path, id_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a long table: a folder of Parquet files, a Parquet file (by its content, whatever its name) or a CSV
    file (:func:`read_csv`). Rows of a CSV file are numbered by their line, Parquet rows from 1.

    Raises InputError for a missing, empty, unreadable or malformed input.
    """
    from .cli_parquet import is_parquet_file, read_parquet

    p = Path(path)
    if not p.exists():
        raise InputError(f"file '{p}' not found")
    if p.is_dir() or is_parquet_file(p):
        return read_parquet(p, id_columns)
    return read_csv(p, id_columns)


def read_csv(path: str | Path, id_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a long CSV file into a frame whose index is each row's line number in the file.

    ``id_columns`` (e.g. the subject column) are identifiers, not numbers: read as text, and turned
    into integers only where every value is an integer written plainly (``12``, not ``012``, ``12.0``
    or ``1e1``), so that ``007`` and ``7`` stay two patients and a record number keeps its zeros.

    Raises InputError for a missing, empty, binary or malformed file.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"file '{p}' not found")
    if p.is_dir():
        raise InputError(f"'{p}' is a folder, not a CSV file")
    raw, compression = _decompressed(p)
    if not raw.strip():
        raise InputError(f"'{p}' is empty" + (f" (after {compression} decompression)" if compression else ""))
    text = _decode(raw, p)
    if "\x00" in text[:65536]:
        raise InputError(f"'{p}' is not a CSV file (it holds binary data)")
    excel = re.match(r"[ \t]*sep=.[ \t]*\r?\n", text)  # Excel's "sep=;" first line names the separator
    skipped = 0
    if excel:
        text, skipped = text[excel.end():], 1
    text, skipped = _skip_comment_lines(text, skipped, id_columns, p)
    sep, decimal = sniff(text)
    header = _header_fields(text, sep)
    _check_header(header, p)
    ids = {raw: str for raw in header if raw.strip() in set(id_columns)}  # as pandas names them: "subject " too
    index_col = None
    if _extra_field(text, sep, len(header)):  # every row one field longer than the header
        index_col = _extra_field_rows(text, sep, header, p)
    try:
        # "." is SAS's and Stata's missing value: read as missing, as "NA" and empty cells are
        df = pd.read_csv(io.StringIO(text), sep=sep, decimal=decimal, skipinitialspace=True,
                         dtype=ids or None, na_values=["."], index_col=index_col)
    except pd.errors.EmptyDataError:
        raise InputError(f"'{p}' is empty") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise InputError(f"could not read '{p}' as CSV ({_SEP_NAMES[sep]}-separated): {_one_line(e)}") from None
    if len(df) == 0:
        raise InputError(f"'{p}' has a header ({', '.join(map(str, df.columns))}) but no data rows")
    stripped = [c.strip() if isinstance(c, str) else c for c in df.columns]
    if len(set(stripped)) == len(stripped):
        df.columns = stripped
    df.index = _line_numbers(text, sep, len(df)) + skipped
    blank = df.isna().all(axis=1).to_numpy()
    if blank.any():  # a spreadsheet's trailing ";;;;" rows: nothing to keep, said with their line numbers
        lines = df.index[blank].tolist()
        warnings.warn(f"skipped {int(blank.sum())} empty row(s) of '{p.name}' (every column blank; line(s) "
                      f"{lines[:10]}{' ...' if len(lines) > 10 else ''})", UserWarning, stacklevel=2)
        df = df.loc[~blank]
        if len(df) == 0:
            raise InputError(f"'{p}' has a header ({', '.join(map(str, df.columns))}) but no data rows")
    for c in id_columns:
        if c in df.columns:
            df[c] = _identifiers(df[c])
    return df


def _skip_comment_lines(text: str, skipped: int, id_columns: Sequence[str], p: Path) -> tuple[str, int]:
    """Drop the lines starting with ``#`` at the top of the file (an export's notes: date, units), said in a
    warning; ``skipped`` counts the lines dropped before. A last such line that names the ``id_columns``
    (``#id,time,y``, as some tools write their header) is the header, its ``#`` removed. Returns the text
    from the header on and the number of lines dropped."""
    top = re.match(r"(?:[ \t]*#[^\n]*\n)+", text)
    if top is None:
        return text, skipped
    lines = top.group(0).splitlines(keepends=True)
    last = lines[-1].lstrip(" \t")[1:]
    if id_columns and set(id_columns) <= {f.strip().strip('"') for f in re.split(r"[,;\t|]", last)}:
        lines, rest = lines[:-1], last + text[top.end():]
    else:
        rest = text[top.end():]
    if lines:
        warnings.warn(f"skipped {len(lines)} comment line(s) starting with '#' at the top of '{p.name}'",
                      UserWarning, stacklevel=3)
    return rest, skipped + len(lines)


def _header_fields(text: str, sep: str) -> list[str]:
    """The header's fields as pandas names the columns (leading spaces skipped, trailing ones kept)."""
    for row in csv.reader(io.StringIO(text[:1_000_000]), delimiter=sep, skipinitialspace=True):
        if row:
            return row
    return []


def _check_header(header: list[str], p: Path) -> None:
    """An InputError for a column named twice (pandas would read the second as 'y.1' and the fit the first)."""
    names = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for j, name in enumerate(names):
        if name and name in seen:
            raise InputError(f"column '{name}' appears twice in the header of '{p.name}' (columns {seen[name] + 1} and "
                             f"{j + 1}): rename one of them")
        seen.setdefault(name, j)


def _data_rows(text: str, sep: str, limit: int | None = None):
    """(line number, fields) of the non-blank rows after the header (csv.reader's line numbers: the line a row
    ends on), at most ``limit`` of them."""
    reader = csv.reader(io.StringIO(text), delimiter=sep, skipinitialspace=True)
    header_seen = False
    for row in reader:
        if not row:
            continue
        if not header_seen:
            header_seen = True
            continue
        yield reader.line_num, row
        limit = None if limit is None else limit - 1
        if limit == 0:
            return


def _extra_field(text: str, sep: str, n_header: int) -> bool:
    """Whether the first rows all hold one field more than the header names (pandas would take the first column
    for the index, and every column would shift one place)."""
    counts = [len(row) for _, row in _data_rows(text, sep, _SAMPLE_LINES)]
    return bool(counts) and n_header > 0 and all(c == n_header + 1 for c in counts)


def _extra_field_rows(text: str, sep: str, header: list[str], p: Path):
    """``index_col=False`` where the extra field is empty in every row (a separator ending each row: it is
    dropped), else an InputError: the rows do not match the header (numbers with the separator as thousands
    separator, 2,037, or an unnamed first column)."""
    rows = list(_data_rows(text, sep))
    if all(len(row) == len(header) + 1 and not row[-1].strip() for _, row in rows):
        return False
    line, row = next((ln, r) for ln, r in rows if len(r) != len(header) or r[-1].strip())
    shown = sep.join(row)
    raise InputError(
        f"the rows of '{p.name}' hold {len(header) + 1} fields but the header names {len(header)} columns "
        f"({', '.join(h.strip() for h in header)}; line {line}: {shown!r}): numbers written with a thousands "
        f"separator that is also the {_SEP_NAMES[sep]} separator (2{sep}037), or a first column without a name? "
        "Quote such numbers or write them without separators (2037), or name every column")


def _line_numbers(text: str, sep: str, n_rows: int) -> pd.Index:
    """Each data row's line number in the file (messages say 'row N' for line N): blank lines, which pandas
    skips, counted; rows 2, 3, ... where the file has none (or its rows do not match one to one)."""
    plain = pd.RangeIndex(2, n_rows + 2)
    if not re.search(r"\n[ \t]*\r?\n", text.strip("\r\n")):  # no blank line inside: the common, fast case
        return plain
    lines = [ln for ln, _ in _data_rows(text, sep)]
    return pd.Index(lines) if len(lines) == n_rows else plain


def _identifiers(s: pd.Series) -> pd.Series:
    """Text identifiers as integers where each is a plainly written integer, else as text (missing stay missing)."""
    text = s.astype(str).str.strip().where(s.notna())
    given = text.dropna()
    if len(given) and given.str.fullmatch(r"-?(0|[1-9][0-9]{0,17})").all():  # integers as written (int64 range)
        return pd.to_numeric(text, errors="coerce").astype("Int64" if s.isna().any() else "int64")
    return text


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _decompressed(p: Path) -> tuple[bytes, str | None]:
    """The file's bytes, decompressed when its content is gzip, bz2, xz, zip or zstd."""
    with p.open("rb") as fh:
        head = fh.read(8)
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    try:
        if kind is None:
            return p.read_bytes(), None
        if kind == "gzip":
            return gzip.decompress(p.read_bytes()), kind
        if kind == "bz2":
            return bz2.decompress(p.read_bytes()), kind
        if kind == "xz":
            return lzma.decompress(p.read_bytes()), kind
        if kind == "zip":
            return _unzip(p), kind
        return _unzstd(p), kind
    except InputError:
        raise
    except Exception as e:  # truncated or damaged archive: OSError, EOFError, zlib.error, lzma.LZMAError, ...
        raise InputError(f"'{p}' looks {kind}-compressed but cannot be decompressed ({_one_line(e)})") from None


def _unzip(p: Path) -> bytes:
    with zipfile.ZipFile(p) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/") and not n.startswith("__MACOSX/")]
        if "[Content_Types].xml" in names:  # an Office Open XML file (a zip): .xlsx, .docx, ...
            kind = "an Excel workbook" if any(n.startswith("xl/") for n in names) else "an Office document"
            raise InputError(f"'{p}' is {kind}, not a CSV file: save the sheet as CSV (File > Save As > CSV) "
                             "and give that file")
        if len(names) != 1:
            raise InputError(f"'{p}' is a zip archive of {len(names)} files; it must hold exactly one CSV file")
        return zf.read(names[0])


def _unzstd(p: Path) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise InputError(f"'{p}' is zstd-compressed: install the 'zstandard' package to read it, "
                         "or decompress it first") from None
    with zstandard.ZstdDecompressor().stream_reader(p.open("rb")) as reader:
        return reader.read()


def _decode(raw: bytes, p: Path) -> str:
    """Text of the file: UTF-8 (BOM or not), UTF-16 with a BOM, else Windows-1252 / Latin-1 with a warning."""
    for bom, enc in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if raw.startswith(bom):
            try:
                return raw.decode(enc)
            except UnicodeDecodeError as e:
                raise InputError(f"'{p}' starts like {enc} text but is not valid {enc} ({e.reason} at byte {e.start})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = e.start
    if b"\x00" in raw[:65536]:
        raise InputError(f"'{p}' is not a CSV file (it holds binary data)")
    line = raw.count(b"\n", 0, bad) + 1
    for enc, label in (("cp1252", "Windows-1252"), ("latin-1", "Latin-1 (ISO-8859-1)")):
        try:
            text = raw.decode(enc)
        except UnicodeDecodeError:
            continue
        warnings.warn(f"'{p}' is not UTF-8 text (byte 0x{raw[bad]:02x} on line {line}); read it as {label}. "
                      "If accented names look wrong in the outputs, save the file as UTF-8", UserWarning, stacklevel=3)
        return text
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def sniff(text: str) -> tuple[str, str]:
    """Separator and decimal mark of CSV text, from its first lines.

    The separator is the one among comma, semicolon, tab and bar that splits the header into
    two or more fields and most of the sample rows into as many; a comma wins ties. A file
    that is not comma-separated and writes numbers as ``1,5`` (never ``1.5``) has decimal
    commas.
    """
    lines = [ln for ln in text.splitlines()[:_SAMPLE_LINES] if ln.strip()]
    if not lines:
        return ",", "."
    fields = {}
    for sep in _SEPARATORS:
        counts = [len(r) for r in csv.reader(lines, delimiter=sep)]
        agree = sum(c == counts[0] for c in counts[1:]) / max(len(counts) - 1, 1)
        if counts[0] >= 2 and agree >= 0.9:
            fields[sep] = counts[0]
    best = "," if "," in fields or not fields else max(fields, key=fields.get)
    decimal = "."
    if best != ",":
        cells = [c.strip() for row in csv.reader(lines[1:], delimiter=best) for c in row]
        if any(re.fullmatch(r"[+-]?\d+,\d+", c) for c in cells) and not any(re.fullmatch(r"[+-]?\d*\.\d+", c) for c in cells):
            decimal = ","
    return best, decimal


# ---------------------------------------------------------------------------- columns
def check_columns(frame: pd.DataFrame, needed: Sequence[str]) -> None:
    """InputError naming the missing columns, the columns there are, a close match and a separator hint."""
    missing = [c for c in dict.fromkeys(needed) if c not in frame.columns]
    if not missing:
        return
    have = [str(c) for c in frame.columns]
    msg = f"column(s) {missing} not found in the data; the columns are: {list(frame.columns)}"
    if len(have) == 1:  # most likely a separator that was not recognised
        seps = [name for s, name in _SEP_NAMES.items() if s in have[0]]
        hint = f"its header holds a {seps[0]}" if seps else "only one column was found"
        raise InputError(msg + f"; {hint}: the file may use a separator that could not be told from its lines "
                         "(dmlmm reads comma, semicolon, tab and bar separated files whose rows all have as many "
                         "fields as the header); check the header and the rows")
    close = {m: difflib.get_close_matches(str(m), have, n=1, cutoff=0.6) for m in missing}
    close = {m: c[0] for m, c in close.items() if c}
    if close:
        msg += " (did you mean " + ", ".join(f"{c!r} for {m!r}" for m, c in close.items()) + "?)"
    raise InputError(msg)


# ---------------------------------------------------------------------------- response transform
def apply_transform(frame: pd.DataFrame, response: str, transform: str) -> pd.DataFrame:
    """A copy of ``frame`` with ``response`` transformed (``log``: y > 0; ``log1p``: y > -1).

    Missing values stay missing (``--dropna`` decides about them); values outside the
    transform's domain are an InputError naming the column, their count and the first row.
    """
    if transform in (None, "none"):
        return frame
    y = check_transform_domain(frame, response, transform)
    out = frame.copy()
    out[response] = forward(y, transform, response)
    return out


def check_transform_domain(frame: pd.DataFrame, response: str, transform: str) -> np.ndarray:
    """The response as numbers, or an InputError naming the column, the count of values outside
    ``transform``'s domain (``log``: y > 0; ``log1p``: y > -1) and the first row."""
    y = as_numeric(frame[response], f"column '{response}'")
    floor = 0.0 if transform == "log" else -1.0
    bad = ~np.isnan(y) & ~(y > floor)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        need = "positive values" if transform == "log" else "values above -1"
        fix = "use --transform log1p for zeros, or drop those rows" if transform == "log" else "drop those rows"
        raise InputError(
            f"--transform {transform} needs {need}, but column '{response}' has {int(bad.sum())} value(s) "
            f"<= {floor:g} (row {frame.index[first]} holds {y[first]:g}); {fix}"
        )
    return y


# ---------------------------------------------------------------------------- basis size
def check_n_basis(n_basis: int | None, degree: int, times: pd.Series, default: int, smoothing: bool = True,
                  check_default: bool = False) -> None:
    """InputError when ``--n-basis`` is below the degree's minimum or above what the data can use.

    The upper limit is the number of distinct observation times or, for models with a
    smoothness prior (``smoothing``), the library's default basis size if that is larger (the
    prior keeps it estimable); never more than :data:`MAX_N_BASIS`. With ``check_default`` (``--smoothing
    none``) and without ``--n-basis`` the default size is checked the same way (the default 20 functions on
    five visit times were fitted, with bands up to 70 times the response's range).
    """
    if n_basis is None and not check_default:
        return
    t = pd.to_numeric(times, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    distinct = len(np.unique(t[np.isfinite(t)]))
    if n_basis is None:
        if default <= distinct:
            return
        raise InputError(
            f"--smoothing none with the default basis of {default} functions is more than these data can use: they "
            f"have {distinct} distinct observation time(s) and, without the smoothness prior, every function must be "
            f"seen by the data; give --n-basis {distinct} or fewer, or keep the smoothness prior (--smoothing 2)"
        )
    if n_basis < degree + 1:
        raise InputError(f"--n-basis must be at least {degree + 1} for a spline basis of degree {degree}, got {n_basis}")
    limit = min(max(distinct, default if smoothing else 0), MAX_N_BASIS)
    if n_basis <= limit:
        return
    if limit == MAX_N_BASIS:
        raise InputError(
            f"--n-basis {n_basis} is more than a smooth curve needs: the command line allows at most {MAX_N_BASIS} "
            f"(the cost grows with the cube of the basis size; the default is {default})"
        )
    why = " (the default: the smoothness prior keeps it estimable)" if limit > distinct else ""
    if limit < degree + 1:
        why = f" with --degree {max(limit - 1, 0)} or lower"
    raise InputError(
        f"--n-basis {n_basis} is more than these data can use: they have {distinct} distinct observation "
        f"time(s); use --n-basis {limit} or fewer{why}"
    )

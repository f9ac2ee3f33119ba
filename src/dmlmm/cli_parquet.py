"""Parquet input of the ``dmlmm`` command line: one file, or a folder of files (a Parquet data set).

Parquet stores each column's type, so nothing is guessed: numbers stay numbers, text stays text
(a subject column of text labels is not turned into integers as a CSV's plainly written ones
are), and a column held as the index (``df.set_index("subject").to_parquet(...)``, Dask's
``set_index``) becomes a column again. Rows are numbered from 1 in the order read (a folder's
files in name order), and messages that name a row use that number. Reading needs pyarrow
(``pip install "dmlmm[parquet]"``, also in ``dmlmm[dask]``). Every problem is an
:class:`~dmlmm.cli_input.InputError` with a one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

__all__ = ["PARQUET_MAGIC", "is_parquet_file", "parquet_files", "read_parquet"]

#: The first (and last) four bytes of every Parquet file.
PARQUET_MAGIC = b"PAR1"


def is_parquet_file(p: Path) -> bool:
    """Whether the file at ``p`` starts with Parquet's magic bytes (whatever its name)."""
    with p.open("rb") as fh:
        return fh.read(4) == PARQUET_MAGIC


def parquet_files(folder: Path) -> list[Path]:
    """The Parquet files of a data-set folder, in name order, searched in its subfolders too (Hive
    partitions such as ``site=A/``, whose key and value become a column); hidden files and Spark's
    ``_SUCCESS`` / ``_metadata`` are not data."""
    found = [f for f in folder.rglob("*") if f.is_file() and not any(part.startswith((".", "_"))
                                                                      for part in f.relative_to(folder).parts)]
    return sorted(f for f in found if is_parquet_file(f))


def read_parquet(path: Path, id_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Read a Parquet file or folder into a frame whose index numbers the rows from 1.

    ``id_columns`` (e.g. the subject column) keep their stored values; a categorical one becomes
    its labels (other categorical columns stay categorical: factors of the fit). Nullable integer or
    float columns with missing values become float64 with NaN (the fit's checks then name the rows),
    and a column that holds the index is restored as a column.

    Raises InputError for a missing pyarrow, a damaged file, a folder without Parquet files or a
    data set without rows.
    """
    from .cli_input import InputError, _one_line

    if path.is_dir():
        files = parquet_files(path)
        if not files:
            raise InputError(f"'{path}' is a folder without Parquet files: give a CSV or Parquet file, or a folder of "
                             "Parquet files")
    else:
        files = [path]
    try:
        import pyarrow.parquet  # noqa: F401  (pandas reads through it)
    except ImportError:
        raise InputError(f"'{path}' is Parquet: reading it needs the pyarrow package "
                         "(pip install \"dmlmm[parquet]\"), or save the data as CSV") from None
    frames = []
    for f in files:
        try:
            frames.append(pd.read_parquet(f, engine="pyarrow"))
        except Exception as e:  # a truncated or damaged file: pyarrow.ArrowInvalid, OSError, ...
            raise InputError(f"could not read '{f}' as Parquet: {_one_line(e)}") from None
    hive = [_hive_partitions(f.relative_to(path)) if path.is_dir() else {} for f in files]
    frames = [_index_as_columns(df) for df in frames]
    for key in hive[0]:  # each Hive key a factor over the files' values, as pandas reads such a folder
        levels = sorted({parts.get(key) for parts in hive} - {None})
        for df, parts in zip(frames, hive):
            if key in parts and key not in df.columns:
                df[key] = pd.Categorical([parts[key]] * len(df), categories=levels)
    columns = list(frames[0].columns)
    for f, df in zip(files[1:], frames[1:]):
        if list(df.columns) != columns:
            raise InputError(f"the Parquet files of '{path}' differ in their columns: "
                             f"'{files[0].relative_to(path)}' has {columns}, '{f.relative_to(path)}' has "
                             f"{list(df.columns)}; every file of a data set needs the same columns")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if len(df) == 0:
        raise InputError(f"'{path}' has columns ({', '.join(map(str, df.columns))}) but no rows")
    df.index = pd.RangeIndex(1, len(df) + 1)
    for c in df.columns:
        df[c] = _plain(df[c], keep_values=c in set(id_columns))
    return df


def _hive_partitions(relative: Path) -> dict[str, str]:
    """The Hive partitions of a file's folders, ``{key: value}`` (``site=A/part-0.parquet`` -> ``{"site": "A"}``):
    columns that the files themselves do not store."""
    parts = (part.partition("=") for part in relative.parent.parts)
    return {key: value for key, sep, value in parts if sep and key}


def _index_as_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with a named index (one a ``set_index`` wrote) as its first column(s)."""
    if any(name is not None for name in df.index.names):
        return df.reset_index()
    return df.reset_index(drop=True)


def _plain(s: pd.Series, keep_values: bool) -> pd.Series:
    """A column in the types the fit reads: an identifier's categories as their labels, nullable numbers as
    float64 with NaN (an identifier's integers as Int64, as a CSV's), pyarrow-backed or nullable text as Python
    strings (missing as NaN)."""
    if isinstance(s.dtype, pd.CategoricalDtype):  # a factor stays one (the fit codes it by its levels)
        return s.astype(object).where(s.notna()) if keep_values else s
    if pd.api.types.is_extension_array_dtype(s.dtype):
        if pd.api.types.is_bool_dtype(s.dtype):
            return s.astype(object).where(s.notna()) if s.isna().any() else s.astype(bool)
        if pd.api.types.is_integer_dtype(s.dtype):
            if not s.isna().any():
                return s.astype("int64")
            return s.astype("Int64") if keep_values else s.astype("float64")
        if pd.api.types.is_float_dtype(s.dtype):
            return s.astype("float64")
        if pd.api.types.is_string_dtype(s.dtype):
            return s.astype(object).where(s.notna())
    return s

"""Output of the ``dmlmm`` command line: all-or-nothing folders and files, with a lock.

:class:`OutputFolder` is how ``dmlmm fit`` and ``dmlmm demo`` write ``--out``:

1. before anything is fitted, it creates the folders above ``--out`` if needed,
   takes an exclusive lock next to it (``.<name>.lock``; a second writer gets an
   error naming the folder), cleans up what an interrupted run left behind, checks
   the ``--overwrite`` rules and creates a staging folder ``.<name>.tmp-XXXX``
   next to ``--out`` (which also proves that the place is writable);
2. the command writes every output into the staging folder;
3. :meth:`OutputFolder.commit` moves it into place with renames: an existing
   ``--out`` is renamed to ``.<name>.old-XXXX``, the staging folder to ``--out``,
   then the old one is deleted. ``--out`` therefore always holds the complete
   outputs of one run.

An exception or Ctrl-C before the commit removes the staging folder (and the
folders the run created) and releases the lock, leaving ``--out`` as it was. A
process killed outright (``kill -9``, power loss) releases its lock too (the
lock is an ``flock`` held by the process, not the file's existence); the next
run into the same ``--out`` deletes its staging folder and, if it was killed
between the two renames, restores the previous ``--out`` from its ``.old``
copy.

:class:`OutputFiles` does the same for single files (``dmlmm predict --out``,
``dmlmm simulate``): temporary names next to them, renamed at the end.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import warnings
from datetime import datetime
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["OutputError", "OutputFolder", "OutputFiles", "DMLMM_FILES", "MODEL_COLUMNS", "user_columns",
           "write_outputs"]

# names dmlmm writes into an output folder (--overwrite replaces a folder holding only these)
DMLMM_FILES = frozenset({"clusters.csv", "trajectories.csv", "model.dmlmm", "report.html", "data.csv", "outcomes.csv",
                         "survival.csv", "baseline.csv", "outcome_tests.csv", "membership.csv", "band_check.csv"})
_CLUTTER = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
# the files of dmlmm predict --dask (one per partition: predictions-00000.parquet, ...)
_PREDICTION_FILES = re.compile(r"predictions-\d{5,}\.parquet")


def _written_by_dmlmm(name: str) -> bool:
    """Whether a file of an output folder is one dmlmm writes (--overwrite replaces a folder of only these)."""
    return name in DMLMM_FILES or _PREDICTION_FILES.fullmatch(name) is not None


# the columns dmlmm adds to its CSV outputs (besides the user's subject and time columns)
MODEL_COLUMNS = ("mean", "lower", "upper", "beyond_last_visit", "cluster", "probability", "cluster_layer1")

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


class OutputError(ValueError):
    """An output that cannot be written as asked; the message is one line, ready to print."""


def _mode(kind: str) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if kind == "dir" else 0o666) & ~umask


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the folders created, deepest first."""
    missing = []
    p = folder
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise OutputError(f"cannot create the folder '{folder}': '{p}' is a file, not a folder")
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise OutputError(f"cannot create the folder '{folder}': '{d}' is a file, not a folder") from None
        except OSError as e:
            _remove_empty(missing)
            raise OutputError(f"cannot create the folder '{d}': {e.strerror or e}") from None
    return missing


def _remove_empty(folders: Iterable[Path]) -> None:
    for d in folders:  # deepest first
        try:
            d.rmdir()
        except OSError:
            pass


# ---------------------------------------------------------------------------- the lock
class _Lock:
    """An exclusive ``flock`` on a small file; the file names the holder (pid, host, start time)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.fd = path, what, None

    def acquire(self) -> None:
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot write next to {self.what} ('{self.path.parent}': "
                                  f"{e.strerror or e}); choose another --out") from None
            try:
                locked = _try_lock(fd)
            except OSError:  # a file system without locks: go on unprotected
                warnings.warn(f"cannot lock '{self.path}' (the file system does not support locks): another dmlmm "
                              f"writing {self.what} at the same time would not be detected", UserWarning, stacklevel=2)
                locked = True
            if not locked:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip()
                os.close(fd)
                raise OutputError(f"{self.what} is being written by another dmlmm run"
                                  + (f" ({holder})" if holder else "")
                                  + "; wait for it to finish, or choose another --out")
            if self._still_linked(fd):
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                             f"{datetime.now():%Y-%m-%d %H:%M:%S}\n".encode())
                return
            os.close(fd)  # the holder removed the file between our open and our lock: try again
        raise OutputError(f"could not lock {self.what}: its lock file '{self.path}' keeps changing")

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.path.samestat(os.fstat(fd), os.stat(self.path))
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock, so no one locks a file about to vanish
        except OSError:
            pass
        try:
            _unlock(self.fd)
        finally:
            os.close(self.fd)
            self.fd = None


# ---------------------------------------------------------------------------- folders
class OutputFolder:
    """Write an output folder all or nothing (see the module docstring).

    Parameters
    ----------
    out : Path
        The output folder.
    overwrite : bool
        Replace an existing, non-empty ``out`` (only if it holds nothing but dmlmm's outputs).
    inputs : paths the command reads; refused if they lie inside ``out`` (which would be replaced).

    Use as a context manager; write into :attr:`staging`, then call :meth:`commit`.
    """

    def __init__(self, out: Path, overwrite: bool = False, inputs: Sequence[Path] = ()) -> None:
        out = Path(out)
        self.out = out.resolve() if out.is_symlink() else out  # replace the folder, not the link to it
        self.overwrite = overwrite
        self.inputs = [Path(p) for p in inputs]
        self.staging: Path | None = None
        self.committed = False
        self._old: Path | None = None
        self._created: list[Path] = []
        self._lock = _Lock(self.out.parent / f".{self.out.name}.lock", f"output folder '{self.out}'")

    # -------------------------------------------------------------- names next to out
    def _sibling(self, kind: str) -> Path:
        return self.out.parent / f".{self.out.name}.{kind}-{secrets.token_hex(4)}"

    def _leftovers(self, kind: str) -> list[Path]:
        prefix = f".{self.out.name}.{kind}-"
        try:
            entries = sorted(self.out.parent.iterdir(), key=lambda p: p.stat().st_mtime)
        except OSError:
            return []
        return [p for p in entries if p.name.startswith(prefix) and p.is_dir()]

    # -------------------------------------------------------------- protocol
    def __enter__(self) -> "OutputFolder":
        if not self.out.name or self.out.name in (".", ".."):
            raise OutputError(f"--out '{self.out}' must name a folder (not '.' or '..')")
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"'{self.out}' exists and is not a folder; give --out a folder name")
        self._created = _make_parents(self.out.parent)
        try:
            self._lock.acquire()
            self._recover()
            self._check()
            self.staging = self._sibling("tmp")
            self.staging.mkdir()
            os.chmod(self.staging, _mode("dir"))
        except BaseException:
            self._finish()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish()

    def _recover(self) -> None:
        """Clean up after runs that died while writing this folder (we hold the lock, so they are dead)."""
        for tmp in self._leftovers("tmp"):
            shutil.rmtree(tmp, ignore_errors=True)
            warnings.warn(f"removed '{tmp.name}', the unfinished outputs of an interrupted run", UserWarning,
                          stacklevel=3)
        olds = self._leftovers("old")
        if olds and not self.out.exists():
            os.rename(olds[-1], self.out)
            olds = olds[:-1]
            warnings.warn(f"restored '{self.out}' (the outputs of an earlier run), which an interrupted run "
                          "had moved aside", UserWarning, stacklevel=3)
        for old in olds:
            shutil.rmtree(old, ignore_errors=True)

    def _check(self) -> None:
        out = self.out
        if not out.exists():
            return
        if not out.is_dir():
            raise OutputError(f"'{out}' exists and is not a folder; give --out a folder name")
        entries = [p for p in out.iterdir() if p.name not in _CLUTTER]
        if entries and not self.overwrite:
            raise OutputError(f"output folder '{out}' already exists; pass --overwrite to replace its contents")
        resolved = out.resolve()
        for inp in self.inputs:
            if resolved == inp.resolve() or resolved in inp.resolve().parents:
                what = "folder" if inp.is_dir() else "file"
                where = "the output folder" if resolved == inp.resolve() else "inside the output folder"
                raise OutputError(f"the input {what} '{inp}' is {where} '{out}', which --overwrite "
                                  "replaces; move it elsewhere or choose another --out")
        foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in entries
                         if not _written_by_dmlmm(p.name) or p.is_dir())
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(f"output folder '{out}' holds files dmlmm did not write ({shown}); --overwrite "
                              "replaces the whole folder, so move them elsewhere or choose another --out")
        if not os.access(out, os.W_OK | os.X_OK) or not os.access(out.parent, os.W_OK | os.X_OK):
            raise OutputError(f"cannot replace '{out}': permission denied")

    def commit(self) -> None:
        """Move the staging folder into place (replacing ``out``, if it exists)."""
        if self.staging is None or self.committed:
            raise RuntimeError("nothing to commit")
        if self.out.exists():
            self._old = self._sibling("old")
            os.rename(self.out, self._old)
        os.rename(self.staging, self.out)
        self.committed = True
        self.staging = None
        if self._old is not None:
            shutil.rmtree(self._old, ignore_errors=True)
            self._old = None

    def _finish(self) -> None:
        """Undo what an unfinished run did and release the lock (also after a commit)."""
        try:
            if self._old is not None and not self.out.exists():
                os.rename(self._old, self.out)  # interrupted between the two renames of commit
                self._old = None
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            self._lock.release()
            if not self.committed:
                _remove_empty(self._created)


# ---------------------------------------------------------------------------- single files
class OutputFiles:
    """Write a few files all or nothing: temporary names next to each, renamed at the end.

    ``paths`` are checked (not a folder; existing only with ``overwrite``) and their temporary
    files created on entry, so an unwritable place is reported before any work. Write to
    :meth:`temp` of each path, then :meth:`commit`.
    """

    def __init__(self, paths: Sequence[Path], overwrite: bool = False) -> None:
        self.paths = [Path(p) for p in paths]
        self.overwrite = overwrite
        self._temps: dict[Path, Path] = {}
        self._created: list[Path] = []
        self.committed = False

    def __enter__(self) -> "OutputFiles":
        for p in self.paths:
            if p.is_dir():
                raise OutputError(f"'{p}' is a folder; give a file name")
            if p.exists() and not self.overwrite:
                raise OutputError(f"output file '{p}' already exists; pass --overwrite to replace it")
        try:
            for p in self.paths:
                self._created += _make_parents(p.parent)
                tmp = p.parent / f".{p.name}.tmp-{secrets.token_hex(4)}"
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except OSError as e:
                    raise OutputError(f"cannot write '{p}': {e.strerror or e}") from None
                os.close(fd)
                self._temps[p] = tmp
        except BaseException:
            self._finish()
            raise
        return self

    def temp(self, path: Path) -> Path:
        return self._temps[Path(path)]

    def commit(self, paths: Sequence[Path] | None = None) -> None:
        """Rename the temporary files into place (only those of ``paths``, if given; the others are dropped)."""
        keep = set(self._temps) if paths is None else {Path(p) for p in paths}
        mode = _mode("file")
        for p, tmp in list(self._temps.items()):
            if p in keep:
                os.chmod(tmp, mode)
                os.replace(tmp, p)
                del self._temps[p]
        self.committed = True
        self._finish()

    def __exit__(self, exc_type, exc, tb) -> None:
        self._finish()

    def _finish(self) -> None:
        for tmp in self._temps.values():
            try:
                tmp.unlink()
            except OSError:
                pass
        self._temps.clear()
        if not self.committed:
            _remove_empty(self._created)


# ---------------------------------------------------------------------------- the output tables
def user_columns(table, subject: str, time: str, input_columns: Iterable):
    """``table`` (columns subject, time and :data:`MODEL_COLUMNS`) with the user's names.

    The subject and time columns take the names they have in the input; a model column whose
    name the input already uses (say the data have a column ``cluster``) is called
    ``dmlmm_cluster`` instead, with a warning, so that the outputs can be joined back to the
    data without clashes.
    """
    taken = {str(c) for c in input_columns}
    names = {"subject": subject, "time": time}
    renamed = []
    for c in table.columns:
        if c in names:
            continue
        new = c
        while new in taken:
            new = f"dmlmm_{new}"
        if new != c:
            renamed.append(f"'{c}' -> '{new}'")
        names[c] = new
    if renamed:
        warnings.warn(f"the data have column(s) of the names dmlmm gives its outputs; the outputs rename "
                      f"dmlmm's: {', '.join(renamed)}", UserWarning, stacklevel=2)
    return table.rename(columns=names)


def with_dates(table, dated, subject: str, frame, response: str | None = None):
    """``table`` with the calendar date of each row (origin + time) under the date column's name, right after
    the numeric time column ``dated.name``."""
    table = table.copy()
    at = list(table.columns).index(dated.name) + 1 if dated.name in table.columns else len(table.columns)
    table.insert(at, dated.column, dated.dates_at(table, subject, frame, response))
    return table


def write_outputs(model, frame, folder: Path, *, selection=None, title: str = "dmlmm report", source: str = "",
                  known_labels=None, label_name: str = "known label", notes: str = "", interval: float = 0.95,
                  input_columns: Iterable | None = None, outcomes=None, report: bool = True, dated=None):
    """Write clusters.csv, trajectories.csv, model.dmlmm and (with ``report``) report.html to ``folder``.

    With ``outcomes`` (a :class:`dmlmm.outcomes.OutcomeReport`), also its tables (outcomes.csv,
    survival.csv, baseline.csv, outcome_tests.csv) and their sections in the report.
    With ``dated`` (a :class:`dmlmm.dates.DateTime`: the time was made from a date column),
    trajectories.csv also holds each row's calendar date under the date column's name, and the model
    file records the rule for ``dmlmm predict``.
    Returns the names written and the :class:`~dmlmm.report.FitResults` they were made from.
    """
    from .io import save_model
    from .models.base import VariationalLongitudinalModel
    from .report import collect_results, write_report

    res = collect_results(model, frame, interval=interval,
                          response_label=_response_name(model))
    subject, time = _subject_time(model)
    columns = list(frame.columns) if input_columns is None else list(input_columns)
    tables = {"clusters.csv": res.clusters, "trajectories.csv": res.trajectories}
    tables = {k: v for k, v in tables.items() if v is not None}
    with warnings.catch_warnings(record=True) as caught:  # one warning for both tables
        warnings.simplefilter("always")
        named = {k: user_columns(v, subject, time, columns) for k, v in tables.items()}
    if caught:
        warnings.warn(str(caught[-1].message), UserWarning, stacklevel=2)
    if dated is not None and "trajectories.csv" in named:
        named["trajectories.csv"] = with_dates(named["trajectories.csv"], dated, subject, frame, _response_name(model))
    written = []
    for name, table in named.items():
        table.to_csv(folder / name, index=False)
        written.append(name)
    if isinstance(model, VariationalLongitudinalModel) or type(model).__name__ == "LinearMixedModel":
        save_model(model, folder / "model.dmlmm", time_dates=None if dated is None else dated.to_meta())
        written.append("model.dmlmm")
    coef = getattr(model, "membership_coefficients_", None)
    if coef is not None:
        coef.reset_index().to_csv(folder / "membership.csv", index=False)
        written.append("membership.csv")
    for name, table in (outcomes.files() if outcomes else {}).items():
        table.to_csv(folder / name, index=False)
        written.append(name)
    if report:
        write_report(folder / "report.html", res, title=title, source=source, selection=selection,
                     known_labels=known_labels, label_name=label_name, notes=notes, outcomes=outcomes)
        written.append("report.html")
    return written, res


def _subject_time(model) -> tuple[str, str]:
    cols = model.design_.columns if hasattr(model, "design_") else model.builder_.columns_
    return cols.subject, cols.time


def _response_name(model) -> str:
    cols = model.design_.columns if hasattr(model, "design_") else model.builder_.columns_
    return cols.response

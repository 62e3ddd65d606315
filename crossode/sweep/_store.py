"""The results file: one JSON record per line, appended, flushed and fsynced as soon as a cell finishes.

Guarantees:

- **Nothing lost**: a record is on disk (``fsync``) before the next cell starts being counted as done.
- **Resume**: :meth:`ResultStore.finished` gives the cell keys (``record["tags"]["cell"]``) already in the file;
  a line cut short by a kill (no trailing newline, or not valid JSON) is dropped when the store opens, so the
  file stays valid JSONL and that cell simply runs again.
- **One writer**: the store holds an exclusive ``fcntl.flock`` on ``<file>.lock`` while open; a second sweep (or a
  plain ``compare --out``) on the same file fails at once with :class:`StoreLockedError` instead of interleaving lines.
- **Clear failures**: a path that cannot be a results file (a directory, a device such as ``/dev/full``, a
  read-only file, a place where no file can be created) is refused when the store opens, before any cell runs
  (:class:`~crossode.InvalidInputError`, one line); a write that fails later (disk full) is undone (no torn line is
  left) and raises :class:`StoreWriteError`, so the caller keeps that record in memory and says so.
- **Readers say what they skip**: a line that is not a JSON record (garbage, not UTF-8, cut short) is skipped with a
  :class:`SkippedLineWarning` naming the file and line number.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import warnings
from collections.abc import Callable, Iterator

from .._errors import CrossODEError, InvalidInputError

__all__ = ["ResultStore", "StoreLockedError", "StoreWriteError", "SkippedLineWarning", "iter_records",
           "read_records", "latest_by_cell"]


class StoreLockedError(CrossODEError):
    """Another process holds the results file's lock (another sweep is writing it)."""


class StoreWriteError(CrossODEError):
    """A record could not be written (e.g. the disk is full); nothing partial was left in the file."""


class SkippedLineWarning(UserWarning):
    """A results-file line that is not a JSON record was skipped (the message names the file and line)."""


def _warn_skip(path: str, lineno: int, why: str) -> None:
    warnings.warn(f"{path}:{lineno}: {why}; line skipped", SkippedLineWarning, stacklevel=4)


def iter_records(path: str | os.PathLike, on_skip: Callable[[str, int, str], None] | None = None) -> Iterator[dict]:
    """The records of a JSONL results file, skipping blank lines.

    Any other line that is not a JSON object (garbage, not UTF-8, cut short by a kill) is skipped and reported
    with ``on_skip(path, line_number, reason)`` (default: a :class:`SkippedLineWarning`). A missing or unreadable
    file raises :class:`~crossode.InvalidInputError`.
    """
    path = os.fspath(path)
    on_skip = on_skip or _warn_skip
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise InvalidInputError(f"results file {path!r} cannot be read ({e.strerror or e}).") from None
    with fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InvalidInputError(f"results file {path!r} is not a regular file.")
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                on_skip(path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})")
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                torn = not raw.endswith(b"\n")
                on_skip(path, lineno, "an incomplete last record (the writer was killed mid-write?)" if torn
                        else "not a JSON record")
                continue
            if not isinstance(obj, dict):
                on_skip(path, lineno, f"a JSON {type(obj).__name__}, not a record")
                continue
            yield obj


def read_records(path: str | os.PathLike, on_skip=None) -> list[dict]:
    """All records of a JSONL results file as dicts (see :func:`iter_records`)."""
    return list(iter_records(path, on_skip))


def latest_by_cell(records) -> list[dict]:
    """``records`` with only the last record of each cell (``tags.cell``; a retried cell's newer record replaces
    the older one), in the order of first appearance; records without a cell key are all kept."""
    last: dict[str, int] = {}
    for i, r in enumerate(records):
        key = (r.get("tags") or {}).get("cell") if isinstance(r.get("tags"), dict) else None
        if key is not None:
            last[key] = i
    first: dict[str, int] = {}
    out = []
    for i, r in enumerate(records):
        key = (r.get("tags") or {}).get("cell") if isinstance(r.get("tags"), dict) else None
        if key is None:
            out.append(r)
        elif key not in first:
            first[key] = i
            out.append(records[last[key]])
    return out


class ResultStore:
    """Exclusive, append-only access to a JSONL results file; use as a context manager.

    **Arguments:** ``path``: the results file (created with its directory if missing).

    **Raises:** :class:`StoreLockedError` on enter when another process holds ``<path>.lock``;
    :class:`~crossode.InvalidInputError` on enter when ``path`` cannot be a results file (a directory, a device,
    not writable, not creatable); :class:`StoreWriteError` from :meth:`append` when a write fails.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self._lock_fh = None
        self._fd = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> ResultStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, check the path is a writable regular file, repair a torn last line, open for appending."""
        try:
            self._open()
        except OSError as e:
            self.close()
            raise InvalidInputError(
                f"results file {self.path!r} cannot be written ({e.strerror or e}"
                + (f": {e.filename!r}" if e.filename and os.fspath(e.filename) != self.path else "") + ")."
            ) from None
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        if os.path.isdir(self.path):
            raise InvalidInputError(f"results file {self.path!r} is a directory; give a file name.")
        if os.path.exists(self.path) and not stat.S_ISREG(os.stat(self.path).st_mode):
            raise InvalidInputError(
                f"results file {self.path!r} is not a regular file (a device or FIFO such as /dev/full cannot hold "
                "a locked, fsynced results file); give a file name.")
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        lock_fh = open(self.lock_path, "a+")
        try:
            fcntl.flock(lock_fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_fh.seek(0)
            holder = lock_fh.read().strip() or "unknown"
            lock_fh.close()
            raise StoreLockedError(
                f"results file {self.path!r} is in use by another sweep (process {holder} holds {self.lock_path!r}); "
                "wait for it to finish or write to another file with --out."
            ) from None
        lock_fh.seek(0)
        lock_fh.truncate()
        lock_fh.write(str(os.getpid()))
        lock_fh.flush()
        self._lock_fh = lock_fh
        created = not os.path.exists(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):  # replaced between the check and the open
            raise InvalidInputError(f"results file {self.path!r} is not a regular file; give a file name.")
        self._repair()
        if created:  # make the new directory entry durable too
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the file and release the lock (the lock file stays; removing it would race)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _repair(self) -> None:
        """Cut a partial last line (the writer was killed mid-write) so appends start on a fresh line."""
        if not os.path.exists(self.path):
            return
        with open(self.path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            # find the last newline; everything after it is a torn record
            pos = size
            block = 65536
            while pos > 0:
                start = max(0, pos - block)
                fh.seek(start)
                chunk = fh.read(pos - start)
                i = chunk.rfind(b"\n")
                if i >= 0:
                    fh.truncate(start + i + 1)
                    break
                pos = start
            else:
                fh.truncate(0)
            fh.flush()
            os.fsync(fh.fileno())

    # -- reading and writing ----------------------------------------------------------------------------

    def records(self) -> list[dict]:
        """Every record in the file now (lines that are not records are skipped with a warning)."""
        return read_records(self.path) if os.path.exists(self.path) else []

    def finished(self) -> set[str]:
        """Cell keys that already have a record (whatever its status)."""
        return set(self.statuses())

    def statuses(self) -> dict[str, str]:
        """Cell key -> status of its latest record (a retried cell's newest record wins)."""
        return {r["tags"]["cell"]: r.get("status") for r in self.records()
                if isinstance(r.get("tags"), dict) and "cell" in r["tags"]}

    def append(self, record) -> None:
        """Append one record (a :class:`~crossode.Record` or a dict) as one line; fsync before returning.

        A failed write (disk full, file too large, I/O error) is undone, so no partial line stays, and raises
        :class:`StoreWriteError`; the record was not saved.
        """
        if self._fd is None:
            raise RuntimeError("ResultStore is not open")
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        line = json.dumps(data, separators=(",", ":"))
        if "\n" in line:  # json.dumps escapes newlines in strings; this guards the one-record-per-line contract
            raise ValueError("record serialised with a newline")
        payload = (line + "\n").encode("utf-8")
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as e:
            try:
                os.ftruncate(self._fd, start)  # never leave a torn record behind
            except OSError:
                pass
            reason = errno.errorcode.get(e.errno, "") if e.errno else ""
            raise StoreWriteError(f"could not write a record to {self.path!r}: {e.strerror or e}"
                                  + (f" ({reason})" if reason else "")) from None

"""The results file: one JSON record per line, appended, flushed and fsynced as soon as a cell finishes.

Guarantees:

- **Nothing lost**: a record is on disk (``fsync``) before the next cell starts being counted as done.
- **Resume**: :meth:`ResultStore.finished` gives the cell keys (``record["tags"]["cell"]``) already in the file;
  a line cut short by a kill (no trailing newline, or not valid JSON) is dropped when the store opens, so the
  file stays valid JSONL and that cell simply runs again.
- **One writer**: the store holds an exclusive ``fcntl.flock`` on ``<file>.lock`` while open; a second sweep on
  the same file fails at once with :class:`StoreLockedError` instead of interleaving lines.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator

from .._errors import CrossODEError

__all__ = ["ResultStore", "StoreLockedError", "iter_records", "read_records"]


class StoreLockedError(CrossODEError):
    """Another process holds the results file's lock (another sweep is writing it)."""


def iter_records(path: str | os.PathLike) -> Iterator[dict]:
    """The records of a JSONL results file, skipping blank lines and a torn (unparseable) line."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a kill; the cell has no valid record and is re-run on resume
            if isinstance(obj, dict):
                yield obj


def read_records(path: str | os.PathLike) -> list[dict]:
    """All records of a JSONL results file as dicts (see :func:`iter_records`)."""
    return list(iter_records(path))


class ResultStore:
    """Exclusive, append-only access to a JSONL results file; use as a context manager.

    **Arguments:** ``path``: the results file (created with its directory if missing).

    **Raises:** :class:`StoreLockedError` on enter when another process holds ``<path>.lock``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"
        self._lock_fh = None
        self._fh = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> ResultStore:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Take the lock, repair a torn last line, and open the file for appending."""
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
        self._repair()
        self._fh = open(self.path, "a", encoding="utf-8")
        if created:  # make the new directory entry durable too
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Close the file and release the lock (the lock file stays; removing it would race)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
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
        """Every record in the file now."""
        return read_records(self.path) if os.path.exists(self.path) else []

    def finished(self) -> set[str]:
        """Cell keys that already have a record (whatever its status)."""
        return {r["tags"]["cell"] for r in self.records() if isinstance(r.get("tags"), dict) and "cell" in r["tags"]}

    def append(self, record) -> None:
        """Append one record (a :class:`~crossode.Record` or a dict) as one line; flush and fsync before returning."""
        if self._fh is None:
            raise RuntimeError("ResultStore is not open")
        data = record.to_dict() if hasattr(record, "to_dict") else dict(record)
        line = json.dumps(data, separators=(",", ":"))
        if "\n" in line:  # json.dumps escapes newlines in strings; this guards the one-record-per-line contract
            raise ValueError("record serialised with a newline")
        self._fh.write(line + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

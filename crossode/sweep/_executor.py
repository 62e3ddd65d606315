"""Executors: how cells get run. A small interface so a distributed engine can replace the local one.

An :class:`Executor` takes cells and yields ``(cell, record)`` pairs as cells finish, in any order. It must
always yield exactly one record per cell it started (a crash or a hang is a record with status ``crashed`` or
``timeout``), and must stop every cell still running when the iteration is abandoned (``close()`` on the
generator, an exception, Ctrl-C). With ``on_output(cell, obj)`` it also hands over, in order and before the cell's
record, every line the cell streamed while it ran (:func:`crossode.sweep._worker.emit`; training runs stream one
record per iteration).

- :class:`LocalExecutor`: every cell in a fresh process of its own on this machine, ``jobs`` at a time: forked
  from a per-backend template that has already imported the framework (``reference``, ``torch``, ``jax``), or a
  fresh ``python -m crossode.sweep._worker`` interpreter (``julia``, custom worker commands, or when a template
  finds forking unsafe); see :mod:`crossode.sweep._worker`. Threads are pinned through the environment, the time
  limit starts when the cell's own work starts, output goes to temporary files (no pipe deadlocks), and each cell
  runs in its own session so it can be killed with everything it started. The Dask executor runs this same
  executor on each worker for each cell (:mod:`crossode.sweep._dask`).
- :class:`InlineExecutor`: runs cells in the calling process, one after the other (debugging and tests only: no
  isolation, no time limit, peak memory not clean).
"""

from __future__ import annotations

import abc
import collections
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from .._record import Record
from ._config import Cell

__all__ = ["Executor", "LocalExecutor", "InlineExecutor", "WORKER_COMMAND", "START_METHODS"]

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "crossode.sweep._worker")
"""The command line that runs one cell in a fresh interpreter (the cell JSON is appended as the last argument)."""

START_METHODS = ("auto", "spawn")
"""``auto``: fork cells of :data:`~crossode.sweep._worker.FORK_BACKENDS` from a template, spawn the others;
``spawn``: a fresh interpreter for every cell."""

STDERR_TAIL = 2000
"""Characters of a failed worker's stderr kept in the record's message."""

STREAM_CHUNK = 1 << 22
"""Bytes of a cell's stream file read per poll (the rest waits for the next poll): four times the longest line
:func:`~crossode.sweep._worker.emit` writes, so every chunk that starts a complete line holds it."""

STARTUP_LIMIT_S = 120.0
"""Seconds a worker may take to start (interpreter, framework import) before its cell begins; a cell's own limit
counts from then. The start-up gets ``max(STARTUP_LIMIT_S, cell.timeout)``."""


class Executor(abc.ABC):
    """Runs sweep cells. ``jobs`` is the number of cells it runs at the same time; ``local`` says the cells run on
    this machine (so a backend unavailable here is recorded as such without starting anything)."""

    jobs: int = 1
    local: bool = True

    def describe(self) -> str:
        """A few words on where cells run, for the sweep's first line."""
        return f"jobs={self.jobs}"

    @abc.abstractmethod
    def run(self, cells: Sequence[Cell], on_start: Callable[[Cell], None] | None = None, *,
            on_output: Callable[[Cell, dict], None] | None = None) -> Iterator[tuple[Cell, Record]]:
        """Yield ``(cell, record)`` for every cell as it finishes; ``on_start(cell)`` is called when one starts,
        ``on_output(cell, obj)`` for each line the cell streams (:func:`~crossode.sweep._worker.emit`) as it
        arrives, all of a cell's lines before its record.

        Abandoning the iterator stops the cells still running (their records are not produced).
        """


class InlineExecutor(Executor):
    """Run every cell in this process (no isolation, no timeout): for debugging and fast tests."""

    def __init__(self, runner: str | None = None):
        self.runner = runner

    def run(self, cells, on_start=None, *, on_output=None):
        import importlib

        from ._worker import DEFAULT_RUNNER, set_stream_sink

        module, func = (self.runner or DEFAULT_RUNNER).split(":")
        fn = getattr(importlib.import_module(module), func)
        for cell in cells:
            if on_start:
                on_start(cell)
            set_stream_sink((lambda obj, c=cell: on_output(c, obj)) if on_output else (lambda obj: None))
            try:
                rec = fn(cell.to_json())
            finally:
                set_stream_sink(None)
            rec.host = socket.gethostname()
            yield cell, rec


# ------------------------------------------------------------------------------------------ fork templates


class _TemplateError(Exception):
    """The template cannot fork this cell (it is not forkable, or it died); the cell is spawned instead."""


class _Template:
    """Executor side of one fork template process (protocol in :mod:`crossode.sweep._worker`). Thread-safe."""

    def __init__(self, backend: str, env: dict, log_path: str, limit: float):
        self.backend = backend
        self.log_path = log_path
        self.lock = threading.Lock()
        self.exits: dict[int, int] = {}
        self.pids: dict[int, int] = {}
        self.errors: dict[int, str] = {}
        self.running: set[int] = set()  # request ids whose child has not been seen to end
        self._buf = b""
        self._next = 0
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                list(WORKER_COMMAND) + ["--template", backend], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log, env=env, start_new_session=True, bufsize=0,
            )
        self._fd = self.proc.stdout.fileno()
        os.set_blocking(self._fd, False)
        ready = self._wait(lambda: self._ready is not None, limit)
        if not ready:
            self.close()
            raise _TemplateError(f"the {backend} fork template did not start within {limit:g} s"
                                 + _tail_text(self._log_tail()))
        if not self._ready.get("forkable"):
            self.close()
            raise _TemplateError(f"the {backend} fork template is not fork-safe: {self._ready.get('why')}")
        self.pid = int(self._ready["pid"])

    _ready: dict | None = None

    def _log_tail(self) -> str:
        return _tail(self.log_path)

    def _pump(self) -> None:
        """Read whatever replies are available (non-blocking)."""
        while True:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                return
            self._buf += chunk
            *lines, self._buf = self._buf.split(b"\n")
            for text in lines:
                if not text.strip():
                    continue
                msg = json.loads(text)
                if "ready" in msg:
                    self._ready = msg
                elif "pid" in msg:
                    self.pids[msg["id"]] = msg["pid"]
                elif "exit" in msg:
                    self.exits[msg["id"]] = msg["exit"]
                elif "error" in msg:
                    self.errors[msg["id"]] = msg["error"]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _wait(self, done: Callable[[], bool], limit: float) -> bool:
        deadline = time.monotonic() + limit
        while True:
            self._pump()
            if done():
                return True
            if not self.alive():
                self._pump()
                return done()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self._fd], [], [], min(left, 0.5))

    def fork(self, request: dict) -> tuple[int, int]:
        """Send one cell; returns ``(request id, child pid)`` once the child exists."""
        with self.lock:
            rid = self._next
            self._next += 1
            try:
                data = json.dumps({**request, "id": rid}, separators=(",", ":")).encode() + b"\n"
                fd = self.proc.stdin.fileno()
                while data:
                    data = data[os.write(fd, data):]
            except OSError as e:
                raise _TemplateError(f"the {self.backend} fork template is gone ({e})"
                                     + _tail_text(self._log_tail())) from None
            if not self._wait(lambda: rid in self.pids or rid in self.errors, 30.0):
                raise _TemplateError(f"the {self.backend} fork template did not fork within 30 s"
                                     + _tail_text(self._log_tail()))
            if rid in self.errors:
                raise _TemplateError(f"the {self.backend} fork template refused: {self.errors.pop(rid)}")
            self.running.add(rid)
            return rid, self.pids.pop(rid)

    def poll(self, rid: int) -> int | None:
        """The child's return code (negative: killed by that signal), or ``None`` while it runs.

        Raises :class:`_TemplateError` when the template died first (its children die with it)."""
        with self.lock:
            self._pump()
            if rid in self.exits:
                self.running.discard(rid)
                return self.exits.pop(rid)
            if not self.alive():
                self._pump()
                self.running.discard(rid)
                if rid in self.exits:
                    return self.exits.pop(rid)
                raise _TemplateError(f"the {self.backend} fork template died (status {self.proc.returncode})"
                                     + _tail_text(self._log_tail()))
            return None

    def wait(self, rid: int, limit: float = 10.0) -> None:
        """Wait (bounded) until the template has reaped child ``rid``."""
        with self.lock:
            self._wait(lambda: rid in self.exits, limit)
            self.exits.pop(rid, None)
            self.running.discard(rid)

    def close(self) -> None:
        """End the template: closing its stdin makes it kill its children and exit."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _killpg(self.proc.pid)
            self.proc.wait()
        self.proc.stdout.close()


# ------------------------------------------------------------------------------------------------ helpers


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # the process's own session: it and anything it started
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGKILL)  # not yet in its own session (a child that was just forked)
        except (ProcessLookupError, PermissionError):
            pass


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 4 * STDERR_TAIL))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return text.strip()[-STDERR_TAIL:]


def _tail_text(tail: str) -> str:
    return f"; stderr tail:\n{tail}" if tail else ""


class _Job:
    """One running cell: a spawned interpreter (``proc``) or a child forked from ``template`` (``rid``, ``pid``)."""

    def __init__(self, cell: Cell, paths: dict, method: str, note: str | None = None):
        self.cell, self.paths, self.method, self.note = cell, paths, method, note
        self.launched = time.monotonic()
        self.started: float | None = None
        self.proc: subprocess.Popen | None = None
        self.template: _Template | None = None
        self.rid = self.pid = None
        self.returncode: int | None = None
        self.lost: str | None = None  # why the exit status is unknown (the template died)
        self._stream_pos = 0

    def read_stream(self) -> list[dict]:
        """The complete lines the cell streamed since the last call (a line still being written waits); lines that
        are not JSON objects are skipped."""
        try:
            with open(self.paths["stream"], "rb") as fh:
                fh.seek(self._stream_pos)
                data = fh.read(STREAM_CHUNK)
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self._stream_pos += end + 1
        out = []
        for raw in data[:end].split(b"\n"):
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def poll(self) -> bool:
        """True once the process has ended (``returncode`` or ``lost`` set)."""
        if self.started is None and os.path.exists(self.paths["started"]):
            self.started = time.monotonic()
        if self.proc is not None:
            self.returncode = self.proc.poll()
            return self.returncode is not None
        try:
            self.returncode = self.template.poll(self.rid)
        except _TemplateError as e:
            self.lost = str(e)
            return True
        return self.returncode is not None

    def deadline(self, startup_limit: float) -> float:
        if self.started is not None:
            return self.started + self.cell.timeout
        return self.launched + max(startup_limit, self.cell.timeout)

    def kill(self) -> None:
        if self.proc is not None:
            _killpg(self.proc.pid)
            self.proc.wait()
        else:
            _killpg(self.pid)
            try:
                self.template.wait(self.rid)
            except _TemplateError:
                pass


class LocalExecutor(Executor):
    """Each cell in a fresh process on this machine, up to ``jobs`` at once.

    **Arguments:**
    - ``jobs``: cells run in parallel (1 keeps timings clean; more share the cores).
    - ``start``: ``"auto"`` (fork from a pre-imported template where the backend allows it, else spawn) or
      ``"spawn"`` (a fresh interpreter for every cell); see :data:`START_METHODS`.
    - ``worker``: the worker command (default :data:`WORKER_COMMAND`); a custom one is always spawned (tests
      substitute misbehaving workers).
    - ``runner``: ``"module:function"`` that measures a cell dict in the worker (default: the real measurement).
    - ``keep_templates``: keep the fork templates alive after :meth:`run` returns (for executors that serve many
      runs, such as one per Dask worker); :meth:`close` ends them.
    - ``startup_limit``: seconds a worker may take to start its cell (at least the cell's own limit); the cell's
      limit counts from when it starts (:data:`STARTUP_LIMIT_S`).
    - ``poll_s``: how often running cells are checked.
    """

    def __init__(self, jobs: int = 1, worker: Sequence[str] = WORKER_COMMAND, poll_s: float = 0.02, *,
                 start: str = "auto", runner: str | None = None, keep_templates: bool = False,
                 max_templates: int = 4, startup_limit: float = STARTUP_LIMIT_S):
        from ._worker import DEFAULT_RUNNER

        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"`jobs` must be a positive integer; got {jobs!r}")
        if start not in START_METHODS:
            raise ValueError(f"`start` must be one of {START_METHODS}; got {start!r}")
        self.jobs = jobs
        self.worker = list(worker)
        self.poll_s = poll_s
        self.start = start
        self.runner = runner or DEFAULT_RUNNER
        self.keep_templates = keep_templates
        self.max_templates = max_templates
        self.startup_limit = float(startup_limit)
        self._templates: collections.OrderedDict[tuple, _Template | str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._logdir: str | None = None

    # -- templates ----------------------------------------------------------------------------------------

    def _forks(self, cell: Cell) -> bool:
        from ._worker import FORK_BACKENDS

        return self.start == "auto" and self.worker == list(WORKER_COMMAND) and cell.backend in FORK_BACKENDS

    def _template(self, cell: Cell) -> _Template:
        """The running template for this cell's (backend, threads, device), started on first use.

        Raises :class:`_TemplateError` (with the reason) when there is none and the cell must be spawned."""
        from ._worker import thread_env

        key = (cell.backend, cell.threads, cell.device)
        with self._lock:
            t = self._templates.get(key)
            if isinstance(t, _Template) and not t.alive():
                self._templates.pop(key)
                t = None
            if t is None:
                if self._logdir is None:
                    self._logdir = tempfile.mkdtemp(prefix="crossode-templates-")
                env = thread_env(cell.threads, cell.device)
                env["CROSSODE_SWEEP_PARENT"] = str(os.getpid())
                log = os.path.join(self._logdir, f"{cell.backend}-{cell.threads}-{cell.device}.log")
                try:
                    t = _Template(cell.backend, env, log, max(self.startup_limit, cell.timeout))
                except _TemplateError as e:
                    t = str(e)  # remembered: this kind of cell is spawned from now on
                self._templates[key] = t
                live = [k for k, v in self._templates.items()
                        if isinstance(v, _Template) and k != key and not v.running]  # idle ones only
                for k in live[:max(0, len(live) + 1 - self.max_templates)]:  # least recently used first
                    self._templates.pop(k).close()
            self._templates.move_to_end(key)
        if isinstance(t, str):
            raise _TemplateError(t)
        return t

    def close(self) -> None:
        """End the fork templates (they are restarted on the next :meth:`run`)."""
        with self._lock:
            templates, self._templates = list(self._templates.values()), collections.OrderedDict()
        for t in templates:
            if isinstance(t, _Template):
                t.close()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)
            self._logdir = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- cells --------------------------------------------------------------------------------------------

    def _start(self, cell: Cell, tmpdir: str, index: int) -> _Job:
        paths = {k: os.path.join(tmpdir, f"{index}.{k}") for k in ("out", "err", "started", "stream")}
        note = None
        if self._forks(cell):
            try:
                t = self._template(cell)
                job = _Job(cell, paths, "fork")
                job.template = t
                job.rid, job.pid = t.fork({"cell": cell.to_json(), "out": paths["out"], "err": paths["err"],
                                           "started": paths["started"], "stream": paths["stream"],
                                           "runner": self.runner})
                return job
            except _TemplateError as e:
                note = str(e)  # spawn it instead, and say why in the record
        from ._worker import DEFAULT_RUNNER, thread_env  # not at import time: `python -m ..._worker` imports it first

        env = thread_env(cell.threads, cell.device)
        env["CROSSODE_SWEEP_PARENT"] = str(os.getpid())
        env["CROSSODE_CELL_STARTED"] = paths["started"]
        env["CROSSODE_CELL_STREAM"] = paths["stream"]
        runner = ["--runner", self.runner] if self.runner != DEFAULT_RUNNER else []
        job = _Job(cell, paths, "spawn", note)
        with open(paths["out"], "wb") as out, open(paths["err"], "wb") as err:
            job.proc = subprocess.Popen(
                self.worker + runner + [json.dumps(cell.to_json())], stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, env=env, start_new_session=True,
            )
        job.pid = job.proc.pid
        return job

    def _finish(self, job: _Job, timed_out: bool) -> Record:
        cell = job.cell
        wall = time.monotonic() - job.launched
        tail = _tail(job.paths["err"])
        if timed_out and job.started is None:
            rec = cell.blank_record("timeout", f"the worker did not start the cell within "
                                    f"{max(self.startup_limit, cell.timeout):g} s (interpreter and framework import) "
                                    "and was killed" + _tail_text(tail))
        elif timed_out:
            rec = cell.blank_record("timeout", f"the cell ran past its {cell.timeout:g} s limit and was killed"
                                    + _tail_text(tail))
        else:
            rec = None
            rc = job.returncode
            if job.lost is not None:
                why = job.lost
            elif rc == 0:
                try:
                    with open(job.paths["out"], encoding="utf-8") as fh:
                        lines = [ln for ln in fh.read().splitlines() if ln.strip()]
                    rec = Record.from_dict(json.loads(lines[-1]))
                except (OSError, IndexError, ValueError, TypeError) as e:
                    why = f"the worker printed no record ({type(e).__name__}: {e})"
                else:
                    why = ""
            elif rc < 0:
                name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
                why = f"the worker was killed by {name}" + (" (out of memory?)" if -rc == signal.SIGKILL else "")
            else:
                why = f"the worker exited with status {rc}"
            if rec is None:
                rec = cell.blank_record("crashed", why + _tail_text(tail))
        rec.host = socket.gethostname()
        rec.tags["worker_wall_s"] = round(wall, 3)
        if job.started is not None:
            rec.tags["startup_s"] = round(job.started - job.launched, 3)
        rec.tags["start_method"] = job.method
        if job.note:
            rec.tags["start_note"] = job.note[:STDERR_TAIL]
        return rec

    def run(self, cells, on_start=None, should_stop: Callable[[], bool] | None = None, *, on_output=None):
        """See :meth:`Executor.run`; ``should_stop()`` (checked while cells run) abandons the run when true."""

        def pump(job, final=False):
            if on_output is None:
                return
            while True:
                lines = job.read_stream()
                for obj in lines:
                    on_output(job.cell, obj)
                if not (final and lines):
                    return

        pending = list(cells)
        pending.reverse()  # pop() from the end keeps the given order
        running: list[_Job] = []
        index = 0
        with tempfile.TemporaryDirectory(prefix="crossode-sweep-") as tmpdir:
            try:
                while pending or running:
                    while pending and len(running) < self.jobs:
                        cell = pending.pop()
                        if on_start:
                            on_start(cell)
                        running.append(self._start(cell, tmpdir, index))
                        index += 1
                    done = None
                    now = time.monotonic()
                    for job in running:
                        pump(job)
                    for job in running:
                        if job.poll():
                            done = (job, False)
                            break
                        if now > job.deadline(self.startup_limit):
                            job.kill()
                            done = (job, True)
                            break
                    if done is None:
                        if should_stop is not None and should_stop():
                            return
                        time.sleep(self.poll_s)
                        continue
                    job, timed_out = done
                    running.remove(job)
                    pump(job, final=True)  # everything it streamed, before its record
                    rec = self._finish(job, timed_out)
                    for path in job.paths.values():
                        try:
                            os.remove(path)
                        except OSError:
                            pass
                    yield job.cell, rec
            finally:
                for job in running:
                    job.kill()
                if not self.keep_templates:
                    self.close()

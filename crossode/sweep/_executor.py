"""Executors: how cells get run. A small interface so a distributed engine can replace the local one.

An :class:`Executor` takes cells and yields ``(cell, record)`` pairs as cells finish, in any order. It must
always yield exactly one record per cell it started (a crash or a hang is a record with status ``crashed`` or
``timeout``), and must stop every cell still running when the iteration is abandoned (``close()`` on the
generator, an exception, Ctrl-C).

- :class:`LocalExecutor`: one fresh ``python -m crossode.sweep._worker`` process per cell, ``jobs`` at a time,
  threads pinned through the environment, a wall-clock limit per cell, output in temporary files (no pipe
  deadlocks), each worker in its own session so it can be killed with everything it started.
- :class:`InlineExecutor`: runs cells in the calling process, one after the other (debugging and tests only: no
  isolation, no time limit, peak memory not clean).
"""

from __future__ import annotations

import abc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

from .._record import Record
from ._config import Cell

__all__ = ["Executor", "LocalExecutor", "InlineExecutor", "WORKER_COMMAND"]

WORKER_COMMAND: tuple[str, ...] = (sys.executable, "-m", "crossode.sweep._worker")
"""The command line that runs one cell (the cell JSON is appended as the last argument)."""

STDERR_TAIL = 2000
"""Characters of a failed worker's stderr kept in the record's message."""


class Executor(abc.ABC):
    """Runs sweep cells. ``jobs`` is the number of cells it runs at the same time."""

    jobs: int = 1

    @abc.abstractmethod
    def run(self, cells: Sequence[Cell], on_start: Callable[[Cell], None] | None = None
            ) -> Iterator[tuple[Cell, Record]]:
        """Yield ``(cell, record)`` for every cell as it finishes; ``on_start(cell)`` is called when one starts.

        Abandoning the iterator stops the cells still running (their records are not produced).
        """


class InlineExecutor(Executor):
    """Run every cell in this process (no isolation, no timeout): for debugging and fast tests."""

    def run(self, cells, on_start=None):
        from ._worker import run_cell

        for cell in cells:
            if on_start:
                on_start(cell)
            yield cell, run_cell(cell.to_json())


class LocalExecutor(Executor):
    """Each cell in a fresh worker process on this machine, up to ``jobs`` at once.

    **Arguments:**
    - ``jobs``: cells run in parallel (1 keeps timings clean; more share the cores).
    - ``worker``: the worker command (default :data:`WORKER_COMMAND`); tests substitute misbehaving workers.
    - ``poll_s``: how often running workers are checked.
    """

    def __init__(self, jobs: int = 1, worker: Sequence[str] = WORKER_COMMAND, poll_s: float = 0.02):
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValueError(f"`jobs` must be a positive integer; got {jobs!r}")
        self.jobs = jobs
        self.worker = list(worker)
        self.poll_s = poll_s

    def _start(self, cell: Cell, tmpdir: str, index: int) -> dict:
        out_path = os.path.join(tmpdir, f"{index}.out")
        err_path = os.path.join(tmpdir, f"{index}.err")
        from ._worker import thread_env  # not at import time: `python -m ..._worker` must import it first

        env = thread_env(cell.threads, cell.device)
        env["CROSSODE_SWEEP_PARENT"] = str(os.getpid())
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                self.worker + [json.dumps(cell.to_json())], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, start_new_session=True,
            )
        start = time.monotonic()
        return {"cell": cell, "proc": proc, "out": out_path, "err": err_path, "start": start,
                "deadline": start + cell.timeout}

    @staticmethod
    def _kill(job: dict) -> None:
        proc = job["proc"]
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the worker's own session: it and anything it started
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()

    @staticmethod
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

    def _finish(self, job: dict, timed_out: bool) -> Record:
        cell, proc = job["cell"], job["proc"]
        wall = time.monotonic() - job["start"]
        tail = self._tail(job["err"])
        if timed_out:
            rec = cell.blank_record("timeout", f"the cell ran past its {cell.timeout:g} s limit and was killed"
                                    + (f"; stderr tail:\n{tail}" if tail else ""))
        else:
            rec = None
            rc = proc.returncode
            if rc == 0:
                try:
                    with open(job["out"], encoding="utf-8") as fh:
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
                rec = cell.blank_record("crashed", why + (f"; stderr tail:\n{tail}" if tail else ""))
        rec.tags["worker_wall_s"] = round(wall, 3)
        return rec

    def run(self, cells, on_start=None):
        pending = list(cells)
        pending.reverse()  # pop() from the end keeps the given order
        running: list[dict] = []
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
                        if job["proc"].poll() is not None:
                            done = (job, False)
                            break
                        if now > job["deadline"]:
                            self._kill(job)
                            done = (job, True)
                            break
                    if done is None:
                        time.sleep(self.poll_s)
                        continue
                    job, timed_out = done
                    running.remove(job)
                    rec = self._finish(job, timed_out)
                    for path in (job["out"], job["err"]):
                        try:
                            os.remove(path)
                        except OSError:
                            pass
                    yield job["cell"], rec
            finally:
                for job in running:
                    self._kill(job)

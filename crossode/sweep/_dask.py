"""A sweep executor on Dask distributed: cells run on the workers of a cluster, records come back to the client.

:class:`DaskExecutor` submits one task per cell (``Client.submit`` with the cell's ``resources``) and yields records
as tasks finish (``as_completed``). On the worker the task runs the cell through the same
:class:`~crossode.sweep.LocalExecutor` as a local sweep, one per worker process (fork templates kept between
cells): a fresh process per cell with the same isolation, time limit, thread pinning and clean peak memory, so a
cell that segfaults or hangs costs only itself, never its worker. Only the client writes the results file.

- A worker that dies mid-cell: Dask reschedules the task and it runs again on another worker; the client counts the
  attempts (each start is a ``crossode-cell`` event from the worker) and, when a second attempt dies too (or the
  scheduler gives up, ``KilledWorker``), records the cell ``crashed`` with the workers that died. The record of a
  cell that needed a retry has ``tags["attempts"] == 2``.
- Losing the scheduler, or a task failing outside its cell's process (a worker without crossode, say), stops the
  sweep with :class:`ClusterError` (records so far are saved; ``--resume`` goes on).
- Abandoning the run (Ctrl-C, the client killed) cancels the tasks; a worker notices within a poll and kills the
  cell's process. Workers of a ``LocalCluster`` exit with the client.
- Streamed lines (``on_output``; training runs stream one record per iteration): the worker forwards each line as
  it arrives as a Dask event on a per-sweep topic, numbered per task attempt, and returns them all with the record
  too; the client hands each line over once, in order, before the cell's record (events that arrive late are
  recognised by their number).

Importing this module does not import ``distributed``; :class:`DaskExecutor` does, on first use.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import socket
import threading
import time
import uuid

from .._errors import CrossODEError
from .._record import Record
from ._config import Cell
from ._executor import Executor, LocalExecutor

__all__ = ["DaskExecutor", "ClusterError", "EVENT_TOPIC", "local_resources", "comparable"]

EVENT_TOPIC = "crossode-cell"
"""Dask event topic on which workers announce each cell attempt they start."""

MAX_ATTEMPTS = 2
"""Runs of a cell whose worker died before the cell is recorded ``crashed`` (the first run and one retry)."""


VARYING_FIELDS = frozenset({"time_forward_s", "time_gradient_s", "compile_s", "peak_memory_bytes", "host"})
VARYING_TAGS = frozenset({"worker_wall_s", "startup_s", "process_max_rss_bytes", "dask_worker", "attempts",
                          "machine", "git_commit", "start_method", "start_note"})


def comparable(record: dict) -> dict:
    """A record dict without what legitimately differs between runs and machines (timings, memory, host, worker,
    start method, attempts): two runs of one cell with the same versions should give equal results."""
    out = {k: v for k, v in record.items() if k not in VARYING_FIELDS}
    out["tags"] = {k: v for k, v in (record.get("tags") or {}).items() if k not in VARYING_TAGS}
    return out


class ClusterError(CrossODEError):
    """The Dask cluster cannot be used (``distributed`` missing, no scheduler, no workers, scheduler lost)."""


def _distributed():
    try:
        import distributed
    except ImportError as e:
        raise ClusterError(f"--executor dask needs Dask distributed: pip install 'crossode[dask]' ({e})") from None
    return distributed


def local_resources() -> dict[str, float]:
    """Dask resources the workers of a local cluster offer: ``gpu`` where ``nvidia-smi`` sees one, ``julia`` where
    the Julia backend is available."""
    from .._registry import unavailable_reason
    from ._sweep import machine_info

    res = {}
    if machine_info().get("gpu"):
        res["gpu"] = 1.0
    if unavailable_reason("julia") is None:
        res["julia"] = 1.0
    return res


# ------------------------------------------------------------------------------------------- worker side

_EXECUTORS: dict[tuple, LocalExecutor] = {}
_EXECUTORS_LOCK = threading.Lock()


def _executor_on_worker(start: str, runner: str | None) -> LocalExecutor:
    """One :class:`LocalExecutor` per worker process (and start method/runner), fork templates kept alive."""
    with _EXECUTORS_LOCK:
        ex = _EXECUTORS.get((start, runner))
        if ex is None:
            ex = _EXECUTORS[(start, runner)] = LocalExecutor(jobs=1, start=start, runner=runner, keep_templates=True)
        return ex


def _released(worker, key) -> bool:
    """True once the scheduler no longer wants task ``key`` (cancelled, the client gone)."""
    ts = worker.state.tasks.get(key)
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def run_cell_task(cell_json: dict, start: str = "auto", runner: str | None = None,
                  stream_topic: str | None = None) -> dict | None:
    """The Dask task of one cell: run it in a fresh process on this worker; returns the record dict (``None`` when
    the task was cancelled while the cell ran: the cell was killed and has no record). With ``stream_topic`` the
    lines the cell streams are sent as events ``{"key", "attempt", "seq", "line"}`` on that topic as they arrive
    and returned too, under the record dict's ``"_stream"`` key (with ``"_stream_attempt"``)."""
    from distributed import get_worker

    from ._sweep import git_commit, machine_info

    worker = get_worker()
    key = worker.get_current_task()
    host = socket.gethostname()
    worker.log_event(EVENT_TOPIC, {"key": key, "worker": worker.address, "host": host})
    cell = Cell.from_json(cell_json)
    lines: list[dict] = []
    attempt = uuid.uuid4().hex[:12]
    on_output = None
    if stream_topic is not None:
        def on_output(_cell, obj):
            worker.log_event(stream_topic, {"key": key, "attempt": attempt, "seq": len(lines), "line": obj})
            lines.append(obj)
    out = list(_executor_on_worker(start, runner).run([cell], should_stop=lambda: _released(worker, key),
                                                      on_output=on_output))
    if not out:
        return None
    rec = out[0][1]
    rec.tags["dask_worker"] = worker.address
    rec.tags["git_commit"] = git_commit()  # of the crossode this worker runs, and its machine
    rec.tags["machine"] = machine_info()
    data = rec.to_dict()
    if stream_topic is not None:
        data["_stream"], data["_stream_attempt"] = lines, attempt
    return data


# ------------------------------------------------------------------------------------------- client side


class DaskExecutor(Executor):
    """Run cells on a Dask cluster: an existing one (``address``) or a ``LocalCluster`` of ``workers`` processes.

    **Arguments:**
    - ``address``: scheduler address, e.g. ``"tcp://head:8786"``; ``None`` starts a local cluster.
    - ``workers``: worker processes of the local cluster (one thread each; default: the CPU count).
    - ``start``, ``runner``: passed to each worker's :class:`~crossode.sweep.LocalExecutor`.
    - ``resources``: what the local cluster's workers offer (default :func:`local_resources`).
    - ``wait_s``: how long to wait for a first worker (the scheduler gets ``distributed.comm.timeouts.connect``).

    Cells whose ``resources`` no connected worker offers are recorded ``unavailable`` instead of waiting forever.
    ``jobs`` is the cluster's total worker threads once connected.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, *, start: str = "auto",
                 runner: str | None = None, resources: dict | None = None, wait_s: float = 60.0,
                 poll_s: float = 0.05):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ValueError(f"`address` must be a scheduler address such as 'tcp://host:8786'; got {address!r}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"`workers` must be a positive integer; got {workers!r}")
        from ._executor import START_METHODS

        if start not in START_METHODS:
            raise ValueError(f"`start` must be one of {START_METHODS}; got {start!r}")
        if address is not None and workers is not None:
            raise ValueError("give `address` (an existing cluster) or `workers` (a local cluster), not both")
        self.address = address
        self.workers = workers
        self.start = start
        self.runner = runner
        self.resources = resources
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.jobs = workers or 1
        self.local = address is None

    def describe(self) -> str:
        if self.address:
            return f"dask scheduler {self.address}"
        return f"dask LocalCluster of {self.workers or os.cpu_count()} workers"

    @contextlib.contextmanager
    def _client(self):
        distributed = _distributed()
        if self.address is not None:
            import dask

            try:
                client = distributed.Client(self.address)  # waits distributed.comm.timeouts.connect (30 s)
            except (OSError, TimeoutError, ValueError) as e:
                limit = dask.config.get("distributed.comm.timeouts.connect")
                first = str(e).splitlines()[0] if str(e) else ""
                raise ClusterError(f"cannot reach the Dask scheduler at {self.address!r} (waited {limit}): "
                                   f"{type(e).__name__}: {first}") from None
            with client:
                yield client
            return
        import logging

        n = self.workers or os.cpu_count() or 1
        res = local_resources() if self.resources is None else dict(self.resources)
        import dask

        with dask.config.set({"distributed.scheduler.allowed-failures": MAX_ATTEMPTS - 1}), \
                distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                         resources=res or None, silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            yield client

    @staticmethod
    def _workers(client) -> dict:
        try:
            return client.scheduler_info(n_workers=-1)["workers"]
        except TypeError:  # distributed before 2025.4 lists every worker without asking
            return client.scheduler_info()["workers"]

    def run(self, cells, on_start=None, *, on_output=None):
        distributed = _distributed()
        with self._client() as client:
            try:
                client.wait_for_workers(1, timeout=self.wait_s)
            except (TimeoutError, OSError):
                raise ClusterError(f"no Dask worker connected to {self.describe()} within {self.wait_s:g} s.") from None
            workers = self._workers(client)
            self.jobs = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
            offered = [w.get("resources") or {} for w in workers.values()]
            yield from self._run(client, distributed, cells, on_start, offered, on_output)

    def _run(self, client, distributed, cells, on_start, offered, on_output=None):
        token = uuid.uuid4().hex[:8]
        started: queue.Queue = queue.Queue()
        client.subscribe_topic(EVENT_TOPIC, lambda event: started.put(event[1]))
        stream_topic = None
        streamed: queue.Queue = queue.Queue()
        delivered: dict[tuple[str, str], int] = collections.defaultdict(int)  # (task key, attempt) -> lines handed over
        if on_output is not None:
            stream_topic = f"crossode-stream-{token}"
            client.subscribe_topic(stream_topic, lambda event: streamed.put(event[1]))

        def deliver(key, attempt, seq, line):
            if seq == delivered[(key, attempt)]:  # in order, each once (a late event's line was delivered already)
                delivered[(key, attempt)] += 1
                on_output(cell_of[key], line)

        def drain_stream():
            while on_output is not None:
                try:
                    msg = streamed.get_nowait()
                except queue.Empty:
                    return
                if msg.get("key") in pending:
                    deliver(msg["key"], msg.get("attempt"), msg.get("seq"), msg.get("line"))
        futures: dict = {}
        cell_of: dict[str, Cell] = {}
        ready = []
        for cell in cells:
            need = dict(cell.resources)
            if need and not any(all(res.get(k, 0) >= v for k, v in need.items()) for res in offered):
                have = sorted({k for res in offered for k in res}) or ["none"]
                ready.append((cell, cell.blank_record(
                    "unavailable", f"no worker of the Dask cluster offers the resources this cell needs ({need}); "
                    f"the workers offer: {', '.join(have)}.")))
                continue
            key = f"crossode-cell-{cell.key}-{token}"
            cell_of[key] = cell
            futures[key] = client.submit(run_cell_task, cell.to_json(), self.start, self.runner, stream_topic,
                                         key=key, resources=need or None, pure=False)
        yield from ready
        attempts: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        resubmitted: dict[str, bool] = {}
        ac = distributed.as_completed(list(futures.values()))
        pending = set(futures)
        try:
            while pending:
                while True:
                    try:
                        msg = started.get_nowait()
                    except queue.Empty:
                        break
                    key = msg.get("key")
                    if key not in pending:
                        continue
                    attempts[key].append((msg.get("worker"), msg.get("host")))
                    if len(attempts[key]) == 1 and on_start:
                        on_start(cell_of[key])
                    if len(attempts[key]) > MAX_ATTEMPTS:  # the scheduler retries more often than we want
                        futures[key].cancel()
                        pending.discard(key)
                        yield cell_of[key], self._died(cell_of[key], attempts[key][:-1], None)
                drain_stream()
                batch = ac.next_batch(block=False)
                if not batch:
                    time.sleep(self.poll_s)
                    continue
                for fut in batch:
                    key = fut.key
                    if key not in pending:
                        continue
                    drain_stream()
                    pending.discard(key)
                    cell = cell_of[key]
                    if fut.status in ("lost", "cancelled") and not resubmitted.get(cell.key) and \
                            len(attempts[key]) < MAX_ATTEMPTS:
                        # the scheduler lost the task with the workers another cell took down: submit it once more
                        # (same attempt history, so MAX_ATTEMPTS still bounds how often the cell runs)
                        resubmitted[cell.key] = True
                        again = f"{key}-again"
                        cell_of[again], attempts[again] = cell, attempts[key]
                        futures[again] = client.submit(run_cell_task, cell.to_json(), self.start, self.runner,
                                                       stream_topic, key=again, resources=dict(cell.resources) or None,
                                                       pure=False)
                        pending.add(again)
                        ac.add(futures[again])
                        continue
                    if on_output is not None and fut.status == "finished":
                        data = fut.result() or {}
                        attempt = data.get("_stream_attempt")
                        for seq, line in enumerate(data.get("_stream") or []):  # what no event brought yet
                            deliver(key, attempt, seq, line)
                    yield cell, self._record(cell, fut, attempts.get(key, []), distributed)
        finally:
            left = [futures[k] for k in pending]
            if left:
                with contextlib.suppress(Exception):
                    client.cancel(left)
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(EVENT_TOPIC)
            if stream_topic is not None:
                with contextlib.suppress(Exception):
                    client.unsubscribe_topic(stream_topic)

    def _record(self, cell: Cell, fut, attempts, distributed) -> Record:
        if fut.status == "finished":
            data = fut.result()
            if data is None:
                raise ClusterError(f"the Dask task of {cell.label} was cancelled by the cluster; rerun with --resume.")
            rec = Record.from_dict(data)
            rec.tags["attempts"] = max(1, len(attempts))
            return rec
        if fut.status == "error":
            exc = fut.exception()
            if isinstance(exc, distributed.KilledWorker):
                return self._died(cell, attempts, exc)
            import crossode

            from ._sweep import git_commit

            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ClusterError(  # outside the cell's process: the worker's environment, not the cell, is broken
                f"the Dask task of {cell.label} failed on its worker: {type(exc).__name__}: {first}; do the workers "
                f"run the crossode of this client (version {crossode.__version__}, commit {git_commit()})? The "
                "records so far are saved: rerun with --resume.")
        raise ClusterError(f"the Dask scheduler lost the task of {cell.label} (status {fut.status}); the records so "
                           "far are saved: rerun with --resume.")

    @staticmethod
    def _died(cell: Cell, attempts, exc) -> Record:
        where = ", ".join(f"{w} on {h}" for w, h in attempts) or "a worker"
        n = len(attempts)
        why = (f"the Dask worker running this cell died {'each of ' if n > 1 else ''}{n} time{'s' if n != 1 else ''} "
               f"({where})" if n else "the Dask workers running this cell died")
        if exc is not None:
            why += f"; the scheduler gave up: {exc}"
        rec = cell.blank_record("crashed", why + " (a cell whose worker dies is retried once, on another worker)")
        rec.tags["attempts"] = n
        if attempts:
            rec.host = attempts[-1][1]
        return rec

"""The training driver: runs -> executor (a fresh worker per run) -> results file, records streamed as runs train.

The sweep engine does the work: :class:`~crossode.sweep.LocalExecutor` (or the Dask executor) runs each run in a
fresh process with the training runner (:data:`crossode.train._worker.RUNNER`), its time limit and pinned threads;
the iteration records each run streams reach :func:`train`'s ``on_output`` as they are written and are appended to
the :class:`~crossode.sweep.ResultStore` (fsynced, locked) at once; when the run ends, however it ends (finished,
failed, crashed, timed out), its ``train_run`` record follows.

Resume (``resume=True``): a run whose latest attempt has a ``train_run`` record is done and skipped; a run that has
only iteration records (the parent or its worker was killed mid-run) runs again from iteration 0 as a new attempt
(training state is not checkpointed, and a continued run would not have one clean timing); its earlier records stay in
the file and readers use the latest attempt (:func:`crossode.train._records.latest_attempts`). ``retry`` statuses
also run again the finished runs whose status is one of them.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import uuid
from collections.abc import Collection

from .._errors import InvalidInputError
from .._record import Record
from .._registry import unavailable_reason
from ..sweep._executor import Executor, LocalExecutor
from ..sweep._store import ResultStore, StoreWriteError
from ..sweep._sweep import _one_line_message, _run_with_progress, git_commit, machine_info
from ._config import TrainConfig
from ._records import COMMON, ITERATION, RUN, latest_attempts, runs_state
from ._worker import RUNNER

__all__ = ["train", "print_runs", "run_record"]


class _WriteFailed(Exception):
    pass


@dataclasses.dataclass
class _Track:
    """What the parent saw a run stream (for the record of a run that timed out or crashed)."""

    attempt: str | None = None
    iterations: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    wall_s: float | None = None
    eval: dict | None = None


def run_record(cell, rec: Record, track: _Track | None = None) -> dict:
    """The ``train_run`` record of a run from its worker's summary :class:`~crossode.Record` (or the executor's
    record of a run that crashed or timed out) and what it streamed."""
    track = track or _Track()
    tags = dict(rec.tags)
    summ = tags.pop("train_run", None) or {}
    if not tags.get("attempt"):
        tags["attempt"] = track.attempt or uuid.uuid4().hex[:12]
    st = cell.step
    common = dict(zip(COMMON, (cell.label, cell.problem.get("kind"), cell.problem_name, cell.backend,
                               cell.solver["name"], cell.sensitivity["name"], st.get("rtol"), st.get("atol"),
                               st.get("dt"), cell.dtype, cell.device)))
    return {
        "kind": RUN, **common, "status": rec.status, "message": rec.message,
        "iterations": summ.get("iterations", track.iterations),
        "loss": rec.loss if rec.loss is not None else track.loss,
        "grad_norm": summ.get("grad_norm", track.grad_norm),
        "wall_s": summ.get("wall_s", track.wall_s),
        "time_per_iteration_s": summ.get("time_per_iteration_s"),
        "compile_s": rec.compile_s, "setup_s": summ.get("setup_s"),
        "nfe_forward": rec.nfe_forward, "nfe_backward": rec.nfe_backward,
        "peak_memory_bytes": rec.peak_memory_bytes, "memory_kind": rec.memory_kind,
        "eval": summ.get("eval", track.eval), "artifacts": summ.get("artifacts"),
        "init_params": summ.get("init_params"), "threads": rec.threads or cell.threads, "versions": rec.versions,
        "host": rec.host, "details": rec.details, "tags": tags,
    }


def train(config: TrainConfig, out: str | os.PathLike, *, resume: bool = False, retry: Collection[str] = (),
          executor: Executor | None = None, jobs: int = 1, timeout: float | None = None, progress: bool = True,
          summary: bool = True, console=None, details: bool = False) -> list[dict]:
    """Run the config's runs, appending every iteration record as it arrives and each run's record when it ends.

    **Arguments:** as :func:`crossode.sweep.run_sweep` (``resume``, ``retry``, ``executor``, ``jobs``, ``timeout``:
    per-run limit, ``progress``, ``summary``, ``details``); resume semantics in the module docstring.

    **Returns:** the ``train_run`` records of the config's runs now in ``out`` (latest attempts), in run order.

    **Raises:** :class:`InvalidInputError` (runs already recorded without ``resume``; ``out`` not usable),
    :class:`~crossode.sweep.StoreLockedError`, :class:`StoreWriteError` (the run stops; the unsaved record is in the
    error's ``records``).
    """
    from rich.console import Console

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    executor = executor or LocalExecutor(jobs=jobs, runner=RUNNER)
    extra = {"git_commit": git_commit(), "machine": machine_info()}
    retry = set(retry)
    runs = config.runs
    unsaved: list[dict] = []
    failure: list[StoreWriteError] = []
    with ResultStore(out) as store:
        state = runs_state(store.records())
        recorded = [c for c in runs if c.key in state]
        if recorded and not (resume or retry):
            raise InvalidInputError(
                f"{os.fspath(out)!r} already has records for {len(recorded)} of the {len(runs)} runs of this config; "
                "pass --resume to skip the finished ones (runs killed mid-way run again), or write to another file "
                "with --out.")
        done = [c for c in recorded if state[c.key]["status"] is not None and state[c.key]["status"] not in retry]
        partial = [c for c in recorded if state[c.key]["status"] is None]
        again = [c for c in recorded if state[c.key]["status"] in retry]
        todo = [c for c in runs if c not in done]
        if timeout is not None:
            todo = [dataclasses.replace(c, timeout=float(timeout)) for c in todo]
        if progress:
            console.print(f"[bold]{len(runs)} runs[/bold] x {config.iterations} iterations: {len(done)} finished in "
                          f"{os.fspath(out)}, "
                          + (f"{len(partial)} killed mid-run (run again from iteration 0), " if partial else "")
                          + (f"{len(again)} to retry ({', '.join(sorted(retry))}), " if again else "")
                          + f"{len(todo)} to run ({executor.describe()}).")
        tracks: dict[str, _Track] = {c.key: _Track() for c in todo}

        def append(obj):
            try:
                store.append(obj)
            except StoreWriteError as e:
                unsaved.append(obj)
                failure.append(e)
                raise _WriteFailed() from None

        def on_output(cell, obj):
            tags = obj.get("tags") if isinstance(obj, dict) else None
            if obj.get("kind") != ITERATION or not isinstance(tags, dict) or tags.get("cell") != cell.key:
                return  # not a training record of this run: never written
            t = tracks.setdefault(cell.key, _Track())
            if tags.get("attempt") != t.attempt:
                t.attempt, t.iterations = tags.get("attempt"), 0
            if obj.get("status") == "ok" and obj.get("iteration"):
                t.iterations, t.loss, t.grad_norm = obj["iteration"], obj.get("loss"), obj.get("grad_norm")
                t.wall_s = obj.get("wall_s")
                t.eval = obj.get("eval") or t.eval
            append(obj)

        count = [len(done)]

        def record(cell, rec, bar=None):
            for k, v in extra.items():
                rec.tags.setdefault(k, v)
            _one_line_message(rec)
            row = run_record(cell, rec, tracks.get(cell.key))
            append(row)
            count[0] += 1
            if progress and not console.is_terminal:
                wall = row.get("wall_s")
                console.print(f"[{count[0]}/{len(runs)}] {cell.label}: {row['status']}, {row['iterations']} "
                              f"iterations" + (f" ({wall:.1f} s training)" if wall else "")
                              + (f" {row['message'][:160]}" if row["status"] != "ok" else ""),
                              markup=False, highlight=False)
            elif bar is not None and row["status"] != "ok":
                bar.console.print(f"[red]{row['status']}[/red] {cell.label}: {row['message'][:160]}")
            if details and row["status"] != "ok" and row.get("details"):
                console.print(row["details"], markup=False, highlight=False)

        quick, slow = [], []
        for c in todo:
            (quick if executor.local and unavailable_reason(c.backend) is not None else slow).append(c)
        try:
            for c in quick:
                record(c, c.blank_record("unavailable", f"The {c.backend!r} backend is unavailable: "
                                                        f"{unavailable_reason(c.backend)}."))
            if slow:
                _run_with_progress(slow, executor, record, console, progress, on_output=on_output)
        except _WriteFailed:
            pass
        run_rows, _ = latest_attempts(store.records())
    by_key = {r["tags"]["cell"]: r for r in run_rows}
    rows = [by_key[c.key] for c in runs if c.key in by_key]
    if summary:
        print_runs(rows + [r for r in unsaved if r.get("kind") == RUN])
    if failure:
        err = StoreWriteError(f"{failure[0]}. A record was NOT saved; the training stopped. Free space, then run the "
                              "same command with --resume.")
        err.records = unsaved
        raise err
    return rows


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_runs(rows, console=None) -> None:
    """A rich table of ``train_run`` records: status, iterations, losses, evaluation metrics, times, NFE, memory."""
    from rich.table import Table

    from rich.console import Console

    console = console or Console(width=None if sys.stdout.isatty() else 200)
    if not rows:
        console.print("no runs.")
        return
    metrics = list(dict.fromkeys(m for r in rows for m in (r.get("eval") or {})))
    table = Table(title="training runs", title_justify="left")
    cols = ["run", "status", "iters", "loss"] + metrics + ["train s", "ms/iter", "compile s", "NFE f/b", "peak MB"]
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "status") else "right")
    for r in rows:
        ev = r.get("eval") or {}
        status = r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]"
        t = r.get("time_per_iteration_s")
        mb = r.get("peak_memory_bytes")
        table.add_row(r["run"], status, str(r.get("iterations", 0)), _fmt(r.get("loss"), ".4g"),
                      *[_fmt(ev.get(m), ".3g") for m in metrics], _fmt(r.get("wall_s"), ".2f"),
                      _fmt(None if t is None else 1e3 * t, ".2f"), _fmt(r.get("compile_s"), ".2f"),
                      f"{_fmt(r.get('nfe_forward'), 'd')}/{_fmt(r.get('nfe_backward'), 'd')}",
                      _fmt(None if mb is None else mb / 1e6, ".1f"))
    console.print(table)

"""The sweep driver: cells -> executor -> results file, with a progress bar and a summary table."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from collections.abc import Collection, Sequence

from .._errors import InvalidInputError
from .._record import Record, one_line
from .._registry import unavailable_reason
from ._config import Cell
from ._executor import Executor, LocalExecutor
from ._store import ResultStore, StoreWriteError, latest_by_cell

RETRY_DEFAULT = ("crashed", "timeout")
"""Statuses ``--retry-failed`` re-runs when no statuses are given."""

__all__ = ["run_sweep", "machine_info", "git_commit", "print_summary"]


@functools.cache
def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the crossode source tree, or ``None`` (not a checkout, or no git)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    commit = out.stdout.strip()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return commit + ("+dirty" if dirty else "")


@functools.cache
def machine_info() -> dict:
    """CPU model and core count (``/proc/cpuinfo``), GPU names (``nvidia-smi``, if present), OS."""
    import platform

    cpu = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            gpu = "; ".join(x.strip() for x in out.stdout.strip().splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu or platform.processor() or "unknown", "cores": os.cpu_count(), "gpu": gpu,
            "os": platform.platform()}


def _unavailable(cell: Cell) -> Record | None:
    reason = unavailable_reason(cell.backend)
    if reason is None:
        return None
    return cell.blank_record("unavailable", f"The {cell.backend!r} backend is unavailable: {reason}.")


class _WriteFailed(Exception):
    pass


def _one_line_message(rec: Record) -> None:
    """A record's ``message`` as one line; what did not fit (a worker's stderr tail, a traceback) to ``details``."""
    if rec.message and "\n" in rec.message:
        rec.details = "\n".join(x for x in (rec.message.strip(), rec.details) if x)
        rec.message = one_line(rec.message)


def run_sweep(cells: Sequence[Cell], out: str | os.PathLike, *, resume: bool = False,
              retry: Collection[str] = (), executor: Executor | None = None, jobs: int = 1,
              timeout: float | None = None, progress: bool = True, summary: bool = True, console=None,
              details: bool = False) -> list[Record]:
    """Run ``cells``, appending each record to ``out`` (JSONL) as soon as it finishes.

    **Arguments:**
    - ``resume``: skip cells that already have a record in ``out``; without it, an ``out`` that already holds
      records of these cells is an error (nothing is overwritten or duplicated).
    - ``retry``: statuses to run again (implies ``resume``): a cell whose latest record has one of them runs again
      and its new record is appended (the old one stays in the file; readers use the latest per cell).
    - ``executor``: how cells run (default :class:`LocalExecutor` with ``jobs``; or a
      :class:`~crossode.sweep.DaskExecutor`).
    - ``timeout``: per-cell limit in seconds, overriding the cells' own.
    - ``progress`` / ``summary``: show a progress bar (ETA, current cell) / print a summary table at the end.
    - ``details``: also print the full ``details`` (traceback, stderr tail) of each failed cell.

    Messages are stored as one line (the rest in the record's ``details``).

    **Returns:** the records of every cell of the sweep now in ``out`` (earlier runs included; the latest record of
    a retried cell), in cell order.

    **Raises:** :class:`InvalidInputError` (finished cells without ``resume``; ``out`` not usable),
    :class:`~crossode.sweep.StoreLockedError` (another sweep writes ``out``), :class:`StoreWriteError` (a record
    could not be written, e.g. disk full: the sweep stops; the error's ``records`` are the unsaved records, also in
    the summary).
    """
    from rich.console import Console

    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    executor = executor or LocalExecutor(jobs=jobs)
    extra = {"git_commit": git_commit(), "machine": machine_info()}
    retry = set(retry)
    unsaved: list[Record] = []
    failure: list[StoreWriteError] = []
    with ResultStore(out) as store:
        statuses = store.statuses()
        recorded = [c for c in cells if c.key in statuses]
        if recorded and not (resume or retry):
            raise InvalidInputError(
                f"{os.fspath(out)!r} already has records for {len(recorded)} of the {len(cells)} cells of this "
                "sweep; pass --resume to skip them, or write to another file with --out."
            )
        again = [c for c in recorded if statuses[c.key] in retry]
        done = [c for c in recorded if statuses[c.key] not in retry]
        todo = [c for c in cells if c.key not in statuses or statuses[c.key] in retry]
        if timeout is not None:
            todo = [dataclasses.replace(c, timeout=float(timeout)) for c in todo]
        if progress and (done or todo):
            console.print(f"[bold]{len(cells)} cells[/bold]: {len(done)} already in {os.fspath(out)}, "
                          + (f"{len(again)} to retry ({', '.join(sorted(retry))}), " if retry else "")
                          + f"{len(todo)} to run ({executor.describe()}).")
        quick, slow = [], []
        for c in todo:  # on a remote cluster the workers decide what is available
            (quick if executor.local and unavailable_reason(c.backend) is not None else slow).append(c)

        count = [len(done)]

        def record(cell, rec, bar=None):
            for k, v in extra.items():  # a remote worker has already put in its own machine and commit
                rec.tags.setdefault(k, v)
            _one_line_message(rec)
            try:
                store.append(rec)
            except StoreWriteError as e:
                unsaved.append(rec)
                failure.append(e)
                raise _WriteFailed() from None
            count[0] += 1
            first = rec.message[:160]
            if progress and not console.is_terminal:  # logs and CI: one line per cell instead of a live bar
                wall = rec.tags.get("worker_wall_s")
                console.print(f"[{count[0]}/{len(cells)}] {cell.label}: {rec.status}"
                              + (f" ({wall:.1f} s)" if wall is not None else "") + (f" {first}" if not rec.ok else ""),
                              markup=False, highlight=False)
            elif bar is not None and not rec.ok and rec.status not in ("unsupported", "unavailable"):
                bar.console.print(f"[red]{rec.status}[/red] {cell.label}: {first}")
            if details and not rec.ok and rec.details:
                console.print(rec.details, markup=False, highlight=False)

        try:
            for c in quick:  # no process needed to know a backend is missing
                record(c, _unavailable(c))
            if slow:
                _run_with_progress(slow, executor, record, console, progress)
        except _WriteFailed:
            pass  # the executor stopped its workers; the unsaved record is reported below
        by_key = {(r.get("tags") or {}).get("cell"): r for r in latest_by_cell(store.records())}
    records = [Record.from_dict(by_key[c.key]) for c in cells if c.key in by_key]
    records += unsaved
    if summary:
        print_summary(records)
    if failure:
        err = StoreWriteError(
            f"{failure[0]}. The record of {unsaved[0].tags.get('label', 'a cell')} was NOT saved (it is in the table "
            "above); the sweep stopped. Free space, then run the same command with --resume."
        )
        err.records = unsaved
        raise err
    return records


def _run_with_progress(cells, executor, record, console, show, on_output=None):
    """Run ``cells`` on ``executor`` under a progress bar, calling ``record(cell, rec, bar)`` for each record (and
    passing ``on_output``, the streamed lines' callback, to the executor)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    running: dict[str, str] = {}
    with Progress(SpinnerColumn(), BarColumn(bar_width=30), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.description}"),
                  console=console, disable=not show or not console.is_terminal, transient=False) as bar:
        task = bar.add_task("", total=len(cells))

        def describe():
            names = list(running.values())
            text = "" if not names else names[0] if len(names) == 1 else f"{len(names)} running: " + ", ".join(names)
            bar.update(task, description=text[:100])

        def on_start(cell):
            running[cell.key] = cell.label
            describe()

        gen = executor.run(cells, on_start=on_start, **({"on_output": on_output} if on_output else {}))
        try:
            for cell, rec in gen:
                record(cell, rec, bar)
                running.pop(cell.key, None)
                bar.advance(task)
                describe()
        finally:
            gen.close()  # stops workers still running if we leave early (Ctrl-C, an error)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_summary(records: Sequence[Record], console=None, max_rows: int = 40) -> None:
    """A rich table of the records (one row per record, or per backend/solver/sensitivity for big sweeps)."""
    from collections import Counter, defaultdict
    from statistics import median

    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if sys.stdout.isatty() else 160)
    if not records:
        console.print("no records.")
        return
    if len(records) <= max_rows:
        table = Table(title="sweep results", title_justify="left")
        for col in ("problem", "t1", "backend", "method", "step", "status", "grad err", "grad ms", "NFE f/b",
                    "peak MB"):
            table.add_column(col, justify="left" if col in ("problem", "backend", "method", "status", "step")
                             else "right")
        for r in records:
            step = f"dt={r.dt:g}" if r.dt is not None else (f"rtol={r.rtol:g}" if r.rtol is not None else "-")
            status = r.status if r.ok else f"[red]{r.status}[/red]"
            table.add_row(r.problem, _fmt(r.tags.get("t1"), "g"), r.backend, f"{r.solver}+{r.sensitivity}", step,
                          status, _fmt(r.grad_error, ".1e"),
                          _fmt(None if r.time_gradient_s is None else 1e3 * r.time_gradient_s, ".2f"),
                          f"{_fmt(r.nfe_forward, 'd')}/{_fmt(r.nfe_backward, 'd')}",
                          _fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 1e6, ".1f"))
    else:
        groups = defaultdict(list)
        for r in records:
            groups[(r.backend, r.solver, r.sensitivity)].append(r)
        table = Table(title=f"sweep results ({len(records)} records, grouped)", title_justify="left")
        for col in ("backend", "method", "cells", "ok", "failures", "median grad err", "median grad ms"):
            table.add_column(col, justify="left" if col in ("backend", "method", "failures") else "right")
        for (b, s, g), rs in groups.items():
            ok = [r for r in rs if r.ok]
            fails = Counter(r.status for r in rs if not r.ok)
            errs = [r.grad_error for r in ok if r.grad_error is not None]
            times = [r.time_gradient_s for r in ok if r.time_gradient_s is not None]
            table.add_row(b, f"{s}+{g}", str(len(rs)), str(len(ok)),
                          ", ".join(f"{k} {v}" for k, v in fails.items()) or "-",
                          _fmt(median(errs) if errs else None, ".1e"),
                          _fmt(1e3 * median(times) if times else None, ".2f"))
    console.print(table)
    counts = Counter(r.status for r in records)
    console.print("status: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))

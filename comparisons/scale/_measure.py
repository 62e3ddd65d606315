"""Fair timing and clean peak memory for the scale benchmark.

Timing follows ``comparisons/jax_overhead.py`` and ``comparisons/jax_direct.py``: after a warm-up, the contenders
of one cell run in interleaved rounds in ONE process (every round runs every contender, the order rotated each round,
the garbage collector off during a round), so the load of the shared machine hits all of them alike; per call
seconds are kept and reduced to the minimum and the median. Each call includes the device synchronisation and the
copy of the gradient to host NumPy, for crossode and its peers alike.

Memory follows ``comparisons/mali/memory.py`` (and the Diffrax notes §6): the peak resident set of one gradient above
the resident set just before it (procfs ``VmHWM`` after resetting it through ``clear_refs``,
:func:`crossode._harness.peak_rss_delta`), each measurement in a process of its own: a child forked from a process
that has imported the libraries but computed nothing (as the sweep engine's fork templates), whose allocator returns
every freed block above 64 KiB to the system (``mallopt``: a static mmap threshold), warmed up on a tiny problem so
that lazy initialisation is not counted and no full-size block is cached in the heap. JAX cannot be forked after
XLA has started, so JAX memory cells run in freshly spawned processes instead.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import statistics
import time
import traceback
from collections.abc import Callable

__all__ = ["interleaved", "rounds_for", "summarise", "in_fork", "static_mmap_threshold"]


def _one(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def rounds_for(single_s: dict[str, float], budget_s: float, lo: int, hi: int) -> int:
    """Rounds that fit ``budget_s`` when every contender runs at least once per round (between ``lo`` and ``hi``)."""
    per_round = sum(single_s.values())
    return max(lo, min(hi, int(budget_s / max(per_round, 1e-9))))


def interleaved(fns: dict[str, Callable[[], object]], single_s: dict[str, float], rounds: int,
                round_s: float) -> dict[str, list[float]]:
    """Seconds per call of every contender: ``rounds`` rounds, each running contender ``k`` back to back
    ``max(1, round_s / single_s[k])`` times (fast contenders get more samples), the order rotated every round, the
    garbage collector off inside a round."""
    keys = list(fns)
    reps = {k: max(1, int(round_s / max(single_s[k], 1e-9))) for k in keys}
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        gc.collect()
        gc.disable()
        try:
            for k in order:
                fn = fns[k]
                times[k] += [_one(fn) for _ in range(reps[k])]
        finally:
            gc.enable()
    return times


def summarise(times: list[float]) -> dict:
    return {"time_min_s": min(times), "time_median_s": statistics.median(times), "n_times": len(times)}


def static_mmap_threshold(nbytes: int = 64 * 1024) -> bool:
    """Make glibc serve (and, when freed, unmap) every allocation of at least ``nbytes`` with mmap, so a freed large
    block never stays in the heap to hide the next allocation from the resident set (setting it turns off glibc's
    dynamic threshold)."""
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(-3, int(nbytes)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _child(fn, conn) -> None:
    try:
        static_mmap_threshold()
        out = fn()
    except BaseException as e:  # noqa: BLE001 - the parent gets every failure as a status
        out = {"status": "crashed", "message": f"{type(e).__name__}: {e}", "details": traceback.format_exc()}
    try:
        conn.send(out)
    finally:
        conn.close()
        os._exit(0)


def in_fork(fn: Callable[[], dict], timeout: float) -> dict:
    """``fn()`` in a forked child (see the module docstring); a crash, kill or timeout becomes a status dict."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, send), daemon=True)
    proc.start()
    send.close()
    try:
        if recv.poll(timeout):
            try:
                return recv.recv()
            except EOFError:
                pass
            proc.join(5)
            return {"status": "crashed", "message": f"memory child exited with code {proc.exitcode}"}
        return {"status": "timeout", "message": f"memory child exceeded {timeout:g} s"}
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        recv.close()

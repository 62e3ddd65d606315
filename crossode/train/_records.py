"""Training records: one ``train_iteration`` record per logged iteration, one ``train_run`` record per finished run.

Both are JSON objects on one line of the results file (the sweep's :class:`~crossode.sweep.ResultStore`: fsynced,
locked, torn last line repaired), with ``kind`` first. Common fields: ``run`` (the run's label), ``workload``,
``problem``, ``backend``, ``solver``, ``sensitivity``, ``rtol``, ``atol``, ``dt``, ``dtype``, ``device``, ``status``,
``message`` and ``tags`` (``cell``: the run's key; ``attempt``: which execution of the run wrote it).

``train_iteration`` (streamed from the run's worker as it trains): ``iteration`` (``k`` optimizer steps done; 0 is
the initial point, with evaluation metrics only), ``loss`` and ``grad_norm`` (the mini-batch loss and gradient norm
at the parameters before step ``k``), ``wall_s`` (cumulative training time after step ``k``: steps only, evaluation
and logging excluded), ``time_s`` (step ``k`` alone), ``nfe_forward``, ``nfe_backward``, ``steps_accepted``,
``steps_rejected`` (of step ``k``'s gradient), ``peak_memory_bytes`` and ``memory_kind`` (``cpu_rss``: the worker's
peak resident set since training started, above the resident set then; ``xla_temp``, ``cuda_allocator``,
``jax_gpu_peak``: the backend's own), ``batch`` (a digest of the step's mini-batch indices: equal across runs),
``eval`` (the workload's metrics at the parameters after step ``k``, every ``eval_every`` steps and at the last one;
else ``null``). A failing step is an iteration record with the failure's status and no numbers.

``train_run`` (written by the parent when the run ends, however it ends): ``iterations`` (steps done), ``loss``,
``grad_norm`` (of the last step), ``wall_s`` (total training time), ``time_per_iteration_s`` (median),
``compile_s`` (ahead-of-time compilation, JAX), ``setup_s``, ``nfe_forward``/``nfe_backward`` (mean per step),
``peak_memory_bytes`` (maximum), ``memory_kind``, ``eval`` (metrics after the last step), ``artifacts`` (small
arrays for the report), ``init_params`` (a digest of the initial parameters: equal across runs), ``threads``,
``versions``, ``host``, ``details``; tags add the sweep's ``git_commit``, ``machine``, ``worker_wall_s``.

Attempts and resume: every execution of a run has its own ``tags.attempt``; readers keep, per run, only the records
of its latest attempt (the one that wrote the run's last record in the file), so a run that was killed and ran again
appears once, with the iterations of the execution that finished.
"""

from __future__ import annotations

import hashlib

import numpy as np

__all__ = ["ITERATION", "RUN", "COMMON", "digest", "latest_attempts", "runs_state", "is_training_record"]

ITERATION = "train_iteration"
RUN = "train_run"
COMMON = ("run", "workload", "problem", "backend", "solver", "sensitivity", "rtol", "atol", "dt", "dtype", "device")


def digest(values) -> str:
    """A short (12 hex digits) SHA-256 digest of an array's float64 (or int64) bytes."""
    arr = np.ascontiguousarray(values)
    arr = arr.astype(np.int64 if np.issubdtype(arr.dtype, np.integer) else np.float64)
    return hashlib.sha256(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:12]


def is_training_record(r: dict) -> bool:
    """Whether a results-file record is a training record (iteration or run)."""
    return r.get("kind") in (ITERATION, RUN)


def _key(r):
    tags = r.get("tags")
    return tags.get("cell") if isinstance(tags, dict) else None


def _attempt(r):
    tags = r.get("tags")
    return tags.get("attempt") if isinstance(tags, dict) else None


def latest_attempts(records) -> tuple[list[dict], dict[str, list[dict]]]:
    """``(runs, iterations)`` of a training results file: per run key, only the records of its latest attempt (the
    attempt of the run's last record in file order). ``runs``: the ``train_run`` records (order of first
    appearance; runs still going or killed have none); ``iterations``: run key -> its ``train_iteration`` records in
    iteration order."""
    latest: dict[str, str] = {}
    order: list[str] = []
    for r in records:
        if not is_training_record(r) or _key(r) is None:
            continue
        if _key(r) not in latest:
            order.append(_key(r))
        latest[_key(r)] = _attempt(r)
    runs: dict[str, dict] = {}
    iters: dict[str, list[dict]] = {k: [] for k in order}
    for r in records:
        k = _key(r)
        if not is_training_record(r) or k is None or _attempt(r) != latest[k]:
            continue
        if r["kind"] == RUN:
            runs[k] = r
        else:
            iters[k].append(r)
    for k in iters:
        iters[k].sort(key=lambda r: r.get("iteration") or 0)
    return [runs[k] for k in order if k in runs], iters


def runs_state(records) -> dict[str, dict]:
    """Run key -> ``{"status": the latest attempt's run status, or None while it has no run record (killed
    mid-run), "attempt": ..., "iterations": iteration records of that attempt}``."""
    runs, iters = latest_attempts(records)
    by_key = {_key(r): r for r in runs}
    return {k: {"status": by_key[k].get("status") if k in by_key else None,
                "attempt": _attempt(by_key[k]) if k in by_key else (_attempt(v[-1]) if v else None),
                "iterations": len(v)} for k, v in iters.items()}

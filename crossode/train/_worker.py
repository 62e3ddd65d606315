"""One training run in its worker process: build the workload and the backend's trainer, train, stream records.

:func:`run_training` is the sweep worker's runner for training runs (``LocalExecutor(runner=RUNNER)``): it gets the
run's :class:`~crossode.sweep.Cell` dict, streams one ``train_iteration`` record per iteration through
:func:`crossode.sweep._worker.emit` (the executor appends each to the results file as it arrives) and returns a
:class:`~crossode.Record` summarising the run, from which the parent writes the ``train_run`` record. A step that
fails (:class:`~crossode.SolverFailure`) ends the run with that status; anything unexpected is ``crashed``.

Mini-batches are drawn once per run from ``training.seed`` in NumPy (:func:`minibatches`), so every run of a config
sees the same sequence; the initial parameters are the workload problem's (the MLP's seeded initialisation).
"""

from __future__ import annotations

import os
import resource
import statistics
import time
import traceback
import uuid

import numpy as np

from .._errors import BackendUnavailableError, UnsupportedError
from .._harness import PeakRSS
from .._record import Record, SolverFailure, one_line
from ._records import COMMON, ITERATION, digest

__all__ = ["run_training", "minibatches", "RUNNER"]

RUNNER = "crossode.train._worker:run_training"
"""``module:function`` of the training runner, for :class:`~crossode.sweep.LocalExecutor`."""


def minibatches(seed: int, n_rows: int, batch_size: int | None, iterations: int):
    """The mini-batch row indices of each iteration (``None`` entries: the whole batch): a fresh random subset of
    ``batch_size`` distinct rows per step from ``numpy.random.default_rng(seed)``, the same for every run."""
    if batch_size is None:
        return [None] * iterations
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n_rows, size=batch_size, replace=False)) for _ in range(iterations)]


def _clean(x):
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def run_training(data: dict) -> Record:
    """Train one run (a :meth:`Cell.to_json` dict of a training config) and return its summary record."""
    from .._sensitivity import sensitivity_from_name
    from .._solvers import solver_from_name
    from ..sweep._config import Cell, build_step
    from ..sweep._worker import _pin_torch, emit
    from .._training import Adam, make_trainer
    from ._workloads import build_workload

    cell = Cell.from_json(data)
    settings = cell.tags["train"]
    attempt = uuid.uuid4().hex[:12]
    rec = cell.blank_record("ok", "")
    rec.tags.pop("train", None)
    rec.tags.update(attempt=attempt, train=settings)
    rec.threads = cell.threads
    st = cell.step
    common = dict(zip(COMMON, (cell.label, cell.problem.get("kind"), cell.problem_name, cell.backend,
                               cell.solver["name"], cell.sensitivity["name"], st.get("rtol"), st.get("atol"),
                               st.get("dt"), cell.dtype, cell.device)))
    summary: dict = {"iterations": 0, "eval": None, "artifacts": None}
    rec.tags["train_run"] = summary

    def send(**fields):
        emit({"kind": ITERATION, **common, **fields, "tags": {"cell": cell.key, "attempt": attempt}})

    def fail(status, message, details=""):
        rec.status, rec.message = status, one_line(message)
        rec.details = "\n".join(x for x in (str(message).strip() if one_line(message) != str(message).strip()
                                            else "", details.strip()) if x)
        return rec

    t_setup = time.perf_counter()
    try:
        workload = build_workload(cell.problem)
        problem = workload.problem
        solver = solver_from_name(cell.solver["name"], **cell.solver["options"])
        sens = sensitivity_from_name(cell.sensitivity["name"], **cell.sensitivity["options"])
        step = build_step(cell.step)
        opt = settings["optimizer"]
        trainer = make_trainer(cell.backend, problem, solver, sens, step, device=cell.device, dtype=cell.dtype,
                               optimizer=Adam(lr=opt["lr"], b1=opt["b1"], b2=opt["b2"], eps=opt["eps"]),
                               batch_size=settings["batch_size"])
    except BackendUnavailableError as e:
        return fail("unavailable", str(e))
    except UnsupportedError as e:
        return fail("unsupported", str(e))
    except SolverFailure as e:
        return fail(e.status, e.message)
    except Exception as e:  # noqa: BLE001 - the run's record says what happened
        return fail("crashed", f"setup failed: {type(e).__name__}: {e}", traceback.format_exc())
    _pin_torch(cell.threads)
    rec.versions = dict(getattr(trainer, "versions", {}) or {})
    summary["setup_s"] = round(time.perf_counter() - t_setup, 4)
    rec.compile_s = getattr(trainer, "compile_s", None)
    init = trainer.params()
    summary["init_params"] = digest(init)
    n_iter, every = int(settings["iterations"]), int(settings["eval_every"])
    batches = minibatches(int(settings["seed"]), problem.batch or 1, settings["batch_size"], n_iter)

    method = (solver, step)
    metrics = workload.evaluate(init, method)
    send(iteration=0, loss=None, grad_norm=None, wall_s=0.0, time_s=None, status="ok", message="",
         eval={k: _clean(v) for k, v in metrics.items()})
    rss = PeakRSS()
    rss.start()
    wall, times, nfe_f, nfe_b, peak, kind = 0.0, [], [], [], 0, None
    last = None
    for k in range(1, n_iter + 1):
        rows = batches[k - 1]
        start = time.perf_counter()
        try:
            out = trainer.step(rows)
            trainer.synchronize()
        except SolverFailure as e:
            send(iteration=k, loss=None, grad_norm=None, wall_s=wall, time_s=None, status=e.status,
                 message=one_line(e.message), batch=None if rows is None else digest(rows), eval=None)
            fail(e.status, f"iteration {k}: {e.message}")
            break
        except Exception as e:  # noqa: BLE001
            send(iteration=k, loss=None, grad_norm=None, wall_s=wall, time_s=None, status="crashed",
                 message=one_line(f"{type(e).__name__}: {e}"), batch=None, eval=None)
            fail("crashed", f"iteration {k}: {type(e).__name__}: {e}", traceback.format_exc())
            break
        dt = time.perf_counter() - start
        wall += dt
        times.append(dt)
        s = out.stats
        if s.nfe_forward is not None:
            nfe_f.append(s.nfe_forward)
        if s.nfe_backward is not None:
            nfe_b.append(s.nfe_backward)
        own = trainer.peak_memory()
        mem, kind = (own[0], own[1]) if own is not None else (rss.peak(), "cpu_rss")
        if mem is not None:
            peak = max(peak, mem)
        metrics = None
        if k % every == 0 or k == n_iter:
            metrics = {m: _clean(v) for m, v in workload.evaluate(trainer.params(), method).items()}
            summary["eval"] = metrics
        last = out
        summary["iterations"] = k
        send(iteration=k, loss=out.loss, grad_norm=out.grad_norm, wall_s=wall, time_s=dt,
             nfe_forward=s.nfe_forward, nfe_backward=s.nfe_backward, steps_accepted=s.steps_accepted,
             steps_rejected=s.steps_rejected, peak_memory_bytes=mem, memory_kind=kind, status="ok", message="",
             batch=None if rows is None else digest(rows), eval=metrics)
    final = trainer.params()
    if summary["iterations"]:
        try:
            summary["artifacts"] = workload.artifacts(final)
        except Exception as e:  # noqa: BLE001 - artifacts are for figures only
            summary["artifacts"] = {"error": f"{type(e).__name__}: {e}"}
    summary.update(wall_s=wall, time_per_iteration_s=statistics.median(times) if times else None,
                   grad_norm=None if last is None else last.grad_norm)
    rec.loss = None if last is None else last.loss
    rec.nfe_forward = int(round(statistics.mean(nfe_f))) if nfe_f else None
    rec.nfe_backward = int(round(statistics.mean(nfe_b))) if nfe_b else None
    rec.time_gradient_s = summary["time_per_iteration_s"]
    rec.peak_memory_bytes, rec.memory_kind = (peak, kind) if kind is not None else (None, None)
    rec.repeats = summary["iterations"]
    rec.tags["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rec.tags["pid"] = os.getpid()
    return rec

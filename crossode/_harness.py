"""The neutral harness: run one cell on one backend, time it fairly, measure memory, compare to the reference.

- :func:`solve` / :func:`gradient`: NumPy in, NumPy out, raising on failure (for library users and tests).
- :func:`measure`: never raises for a solver or backend failure; returns a :class:`~crossode.Record` whose
  ``status`` says what happened. Timing protocol: the first gradient call is timed separately (it includes
  tracing/compilation/first-call work); then ``repeats`` gradient calls and, after one untimed warm-up solve,
  ``repeats`` forward solves are timed
  with device synchronisation and the medians reported; ``compile_s = first - median`` unless the backend
  reports its own compile time. Memory is measured on the first call: the backend's device allocator peak where it
  has one, otherwise the process's peak resident set above the pre-call baseline (Linux procfs ``VmHWM`` after
  resetting it through ``clear_refs``) — meaningful only for the first cell measured in a process (the sweep engine
  runs each cell in a fresh one); later in-process cells get no CPU number (``peak_memory_bytes = None``).
- Status honesty: a finished cell whose ``grad_error`` exceeds :func:`~crossode.error_limit` (what its tolerance
  promises) is ``inaccurate``, with the raw error kept. Messages are one line; tracebacks go to ``details``.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import time
import traceback

import numpy as np

from ._errors import BackendUnavailableError, InvalidInputError, UnsupportedError
from ._problem import Problem
from ._limits import grid_steps
from ._record import (ERROR_RESOLUTION, INACCURATE_CAP, INACCURATE_FACTOR, GradientOutput, Record, SolveOutput,
                      SolverFailure, error_limit, one_line)
from ._reference import reference, relative_error
from ._registry import get_backend
from ._sensitivity import AbstractSensitivity, Direct, check_pair
from ._solvers import AbstractSolver, AbstractStepControl, Adaptive, Dopri5, Fixed

__all__ = ["solve", "gradient", "measure", "peak_rss_delta", "PeakRSS", "loss_function", "taylor_metric"]

DTYPES = ("float64", "float32")


def _check_common(problem, solver, sensitivity, step, dtype):
    if not isinstance(problem, Problem):
        raise InvalidInputError(f"`problem` must be a crossode.Problem; got {type(problem).__name__}.")
    if not isinstance(step, AbstractStepControl):
        raise InvalidInputError(f"`step` must be Adaptive(...) or Fixed(dt=...); got {step!r}.")
    if dtype not in DTYPES:
        raise InvalidInputError(f"`dtype` must be 'float64' or 'float32'; got {dtype!r}.")
    check_pair(solver, sensitivity)
    if isinstance(step, Adaptive) and not solver.adaptive:
        raise UnsupportedError(
            f"`solver={solver!r}` has no embedded error estimate, so it needs `step=Fixed(dt=...)`; got {step!r}."
        )
    if isinstance(step, Fixed):  # before any backend allocates the grid
        needed = grid_steps(problem.t0, problem.t1, step.dt)
        if needed > step.max_steps:
            raise SolverFailure("max_steps", f"dt={step.dt:g} needs {needed:,} steps over tspan [{problem.t0:g}, "
                                             f"{problem.t1:g}], more than max_steps={step.max_steps:,}")


def _prepare(problem, backend, solver, sensitivity, step, device, dtype):
    _check_common(problem, solver, sensitivity, step, dtype)
    b = get_backend(backend) if isinstance(backend, str) else backend
    reason = b.supports(problem, solver, sensitivity, step, device)
    if reason is not None:
        raise UnsupportedError(f"backend {b.name!r}: {reason}")
    return b, b.prepare(problem, solver, sensitivity, step, device=device, dtype=dtype)


def solve(problem: Problem, backend="torch", solver: AbstractSolver = Dopri5(), step: AbstractStepControl = Adaptive(),
          *, device: str = "cpu", dtype: str = "float64") -> SolveOutput:
    """Forward solve ``problem`` on ``backend``; returns saved states ``(len(saveat), *y0.shape)`` and stats.

    Raises :class:`SolverFailure` (with a status) when the solve fails, and :class:`UnsupportedError` /
    :class:`BackendUnavailableError` when the combination cannot run.
    """
    return _prepare(problem, backend, solver, Direct(), step, device, dtype)[1].solve()


def gradient(problem: Problem, backend="torch", solver: AbstractSolver = Dopri5(),
             sensitivity: AbstractSensitivity = Direct(), step: AbstractStepControl = Adaptive(),
             *, device: str = "cpu", dtype: str = "float64") -> GradientOutput:
    """Loss and gradients (w.r.t. the flat parameters and ``y0``) of ``problem`` on ``backend``.

    Raises like :func:`solve`; a non-finite result raises :class:`SolverFailure` with status ``diverged``.
    """
    out = _prepare(problem, backend, solver, sensitivity, step, device, dtype)[1].gradient()
    _check_finite(out)
    return out


def _check_finite(out: GradientOutput) -> None:
    if not (np.isfinite(out.loss) and np.all(np.isfinite(out.dparams)) and np.all(np.isfinite(out.dy0))):
        raise SolverFailure("diverged", "the loss or gradient is not finite")


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_RSS_MEASURED = False
"""Whether a cell of this process already had its CPU peak RSS measured (later deltas share its heap)."""


class PeakRSS:
    """The process's peak resident set since :meth:`start`, above the resident set then (Linux procfs ``VmHWM``
    after resetting it through ``clear_refs``); :meth:`peak` is ``None`` where procfs or ``clear_refs`` is
    unavailable."""

    def start(self) -> None:
        gc.collect()
        self.base = _read_status_kb("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            self.ok = self.base is not None
        except OSError:
            self.ok = False

    def peak(self) -> int | None:
        hwm = _read_status_kb("VmHWM") if self.ok else None
        return None if hwm is None else max(0, (hwm - self.base) * 1024)


def peak_rss_delta(fn):
    """Run ``fn()`` and return ``(result, bytes)``: peak RSS during the call above the RSS before it (Linux).

    Returns ``bytes=None`` where procfs or ``clear_refs`` is unavailable.
    """
    rss = PeakRSS()
    rss.start()
    result = fn()
    return result, rss.peak()


def _timed(fn, sync):
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def _versions(backend) -> dict:
    import crossode

    v = {"crossode": crossode.__version__, "python": platform.python_version(), "numpy": np.__version__}
    try:
        v.update(backend.versions())
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return v


def _threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() else None


def measure(
    problem: Problem,
    backend: str = "torch",
    solver: AbstractSolver = Dopri5(),
    sensitivity: AbstractSensitivity = Direct(),
    step: AbstractStepControl = Adaptive(),
    *,
    device: str = "cpu",
    dtype: str = "float64",
    repeats: int = 3,
    save_gradients: bool = False,
    with_reference: bool = True,
    tags: dict | None = None,
    taylor: bool = False,
) -> Record:
    """Run one cell and return its :class:`Record` (see the module docstring for the protocol).

    ``taylor=True`` adds the Taylor test of the measured ``dparams`` (:func:`taylor_metric`; untimed, about 21 more
    forward solves) to the record's ``taylor_*`` fields.

    Invalid arguments (wrong types, unknown names) raise :class:`InvalidInputError`; everything that can happen
    while running (unavailable backend, unsupported combination, solver failure, unexpected exception) becomes the
    record's ``status`` and ``message``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise InvalidInputError(f"`repeats` must be a positive integer; got {repeats!r}.")
    rec = Record(
        problem=problem.name if isinstance(problem, Problem) else str(problem),
        backend=backend if isinstance(backend, str) else getattr(backend, "name", str(backend)),
        solver=getattr(solver, "name", str(solver)),
        sensitivity=getattr(sensitivity, "name", str(sensitivity)),
        rtol=step.rtol if isinstance(step, Adaptive) else None,
        atol=step.atol if isinstance(step, Adaptive) else None,
        dt=step.dt if isinstance(step, Fixed) else None,
        batch_steps=step.batch_steps if isinstance(step, Adaptive) else None,
        device=device,
        dtype=dtype,
        threads=_threads(),
        solver_options=dataclasses.asdict(solver) if dataclasses.is_dataclass(solver) else {},
        sensitivity_options=dataclasses.asdict(sensitivity) if dataclasses.is_dataclass(sensitivity) else {},
        tags=dict(tags or {}),
    )
    try:
        b, prepared = _prepare(problem, backend, solver, sensitivity, step, device, dtype)
    except BackendUnavailableError as e:
        rec.status, rec.message = "unavailable", str(e)
        return rec
    except UnsupportedError as e:
        rec.status, rec.message = "unsupported", str(e)
        return rec
    except SolverFailure as e:
        return _fail(rec, e.status, e.message)
    except InvalidInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any backend failure becomes a status
        return _fail(rec, "crashed", f"prepare failed: {type(e).__name__}: {e}", traceback.format_exc())
    rec.versions = _versions(b)
    sync = prepared.synchronize
    global _RSS_MEASURED
    try:
        prepared.reset_peak_memory()
        (out, first_s), rss = peak_rss_delta(lambda: _timed(prepared.gradient, sync))
        _check_finite(out)
        device_peak = prepared.peak_memory()
        if device_peak is not None:
            rec.peak_memory_bytes, rec.memory_kind = int(device_peak[0]), device_peak[1]
        elif rss is not None and not _RSS_MEASURED:
            rec.peak_memory_bytes, rec.memory_kind = rss, "cpu_rss"
        _RSS_MEASURED = True
        grad_times = [_timed(prepared.gradient, sync)[1] for _ in range(repeats)]
        _timed(prepared.solve, sync)  # untimed warm-up: a backend may compile its solve program on first use
        fwd_times = [_timed(prepared.solve, sync)[1] for _ in range(repeats)]
    except SolverFailure as e:
        _RSS_MEASURED = True
        return _fail(rec, e.status, e.message)
    except Exception as e:  # noqa: BLE001 - CrossODEError or anything else: the cell crashed
        _RSS_MEASURED = True
        return _fail(rec, "crashed", f"{type(e).__name__}: {e}", traceback.format_exc())
    rec.loss = float(out.loss)
    st = out.stats
    rec.nfe_forward, rec.nfe_backward = st.nfe_forward, st.nfe_backward
    rec.steps_accepted, rec.steps_rejected = st.steps_accepted, st.steps_rejected
    rec.per_sample = getattr(st, "per_sample", None)
    rec.time_gradient_s = float(np.median(grad_times))
    rec.time_forward_s = float(np.median(fwd_times))
    own_compile = getattr(prepared, "compile_s", None)
    rec.compile_s = own_compile if own_compile is not None else max(0.0, first_s - rec.time_gradient_s)
    rec.repeats = repeats
    if save_gradients:
        rec.dparams, rec.dy0 = np.asarray(out.dparams).tolist(), np.asarray(out.dy0).tolist()
    if with_reference:
        _compare(rec, problem, out)
    if taylor:
        taylor_metric(rec, problem, backend, solver, sensitivity, step, device, dtype, out)
    return rec


def loss_function(problem: Problem, backend, solver, sensitivity, step, device="cpu", dtype="float64"):
    """``theta -> loss`` of the cell's own solver at parameters ``theta`` (NumPy float64), the ``J`` of the Taylor
    test: through the backend's trainer (:func:`crossode._training.make_trainer`: one compiled solve program for
    every ``theta``) where it has one, else a fresh ``prepare`` per ``theta``. A failed solve raises."""
    from ._training import make_trainer, trainer_factory

    name = backend if isinstance(backend, str) else getattr(backend, "name", None)
    try:
        trainer_factory(name)
    except (UnsupportedError, KeyError, TypeError):
        trainer = None
    else:
        trainer = make_trainer(name, problem, solver, sensitivity, step, device=device, dtype=dtype)
    if trainer is not None:
        return lambda theta: problem.loss.value(trainer.solve(theta))

    def J(theta):
        p = problem.remake(params=np.asarray(theta, dtype=np.float64))
        return p.loss.value(_prepare(p, backend, solver, Direct(), step, device, dtype)[1].solve().ys)

    return J


def taylor_metric(rec: Record, problem: Problem, backend, solver, sensitivity, step, device, dtype,
                  out: GradientOutput) -> None:
    """Fill ``rec.taylor_*``: Onken & Ruthotto's Taylor test (:func:`crossode._taylor.taylor_test`, ``h = 2^-k``,
    ``k = 1..20``, a seeded random unit direction) of ``out.dparams`` against :func:`loss_function`. Float64 cells
    with parameters only (the round-off floor is float64's); otherwise ``taylor_status = "not_run"`` and why."""
    from ._taylor import taylor_test

    def skip(why):
        rec.taylor_status, rec.taylor = "not_run", {"status": "not_run", "message": why}

    if dtype != "float64":
        return skip("the Taylor test needs float64 (its round-off floor is float64's)")
    if problem.n_params == 0:
        return skip("the problem has no parameters")
    try:
        J = loss_function(problem, backend, solver, sensitivity, step, device, dtype)
        res = taylor_test(J, problem.params, np.ravel(out.dparams))
    except Exception as e:  # noqa: BLE001 - the gradient's record stands; the Taylor test says why it could not run
        return skip(one_line(f"{type(e).__name__}: {e}"))
    rec.taylor_slope, rec.taylor_status, rec.taylor_inconsistency = res.slope, res.status, res.inconsistency
    rec.taylor = res.to_dict()


def _fail(rec: Record, status: str, message: str, details: str = "") -> Record:
    """Set a failure status with a one-line message; the full text (and a traceback) goes to ``details``."""
    rec.status, rec.message = status, one_line(message)
    full = str(message).strip()
    rec.details = "\n".join(x for x in (full if full != rec.message else "", details.strip()) if x)
    return rec


def _compare(rec: Record, problem: Problem, out: GradientOutput) -> None:
    """Fill the error fields of ``rec`` against the independent reference (or say why it is missing)."""
    try:
        ref = reference(problem)
    except SolverFailure as e:
        rec.reference = None
        rec.message = (rec.message + "; " if rec.message else "") + f"no reference: {e.message}"
        return
    rec.reference = ref.method
    rec.loss_error = abs(out.loss - ref.loss) / max(abs(ref.loss), 1e-300)
    rec.grad_error = relative_error(np.concatenate([np.ravel(out.dparams), np.ravel(out.dy0)]), ref.grad)
    rec.dparams_error = relative_error(out.dparams, ref.dparams) if ref.dparams.size else 0.0
    rec.dy0_error = relative_error(out.dy0, ref.dy0)
    if out.dt0 is not None:
        rec.dt0_error = relative_error([out.dt0], [ref.dt0])
    if out.dt1 is not None:
        rec.dt1_error = relative_error([out.dt1], [ref.dt1])
    # A finished solve can still produce a useless gradient (e.g. explicit steps hovering at the stability limit of a
    # stiff problem: the forward is fine, its linearisation is not). Never let such a number pass as `ok`.
    if not np.isfinite(rec.grad_error):
        rec.status = "diverged"
        rec.message = "the gradient is finite but so large that its error against the reference overflows"
    else:
        limit = error_limit(rec.rtol, rec.dtype)
        if rec.grad_error > limit:
            what = (f"min({INACCURATE_CAP:g}, {INACCURATE_FACTOR:g} x max(rtol={rec.rtol:g}, "
                    f"{ERROR_RESOLUTION.get(rec.dtype, 1e-10):g}))" if rec.rtol is not None
                    else f"{INACCURATE_CAP:g} (fixed steps)")
            rec.status = "inaccurate"
            rec.message = (f"gradient error {rec.grad_error:.3g} against the reference exceeds {limit:.3g} = {what}"
                           + (f"; {rec.message}" if rec.message else ""))

"""``check``: run a user's solver over problems and step sizes (or tolerances) and give a verdict per problem.

Per problem and step setting: the forward error of the saved states and the gradient error (``dparams``,
``dy0``) against the independent reference, NFE counted through ``func``, time per gradient; per problem: the
observed orders (:mod:`._orders`), the Taylor test of the gradient against the solver's own loss
(:func:`crossode._taylor.taylor_test`, at the setting :func:`taylor_index` picks) and the same rows for crossode's
built-in method of the declared order (:func:`crossode.measure`, ``Direct``), for a work-precision comparison.

Verdict per problem, ``pass``, ``fail`` or ``inconclusive``. Fixed steps: every cell finished (``ok``, or
``inaccurate`` at a coarse step: its error still counts); the gradient error shrinks with ``dt``; the gradient's
observed order is within :data:`ORDER_TOLERANCE` of the declared ``order`` (else of the solution's observed order
on that problem, else of the median solution order over the other problems); the Taylor slope is consistent.
Adaptive: the gradient error shrinks with ``rtol``, its tolerance exponent is within :data:`ORDER_TOLERANCE` of the
solution's, and the Taylor test is consistent, or inconsistent by less than :data:`TAYLOR_TOLERANCE_FACTOR` times the
gradient's own accuracy (step sizes treated as constants, see :mod:`crossode._taylor`). ``inconclusive``: nothing
failed but an order could not be measured (errors at the reference's resolution; with tolerances, neither error
responds to ``rtol``). The report passes when no problem failed and at least one passed.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import statistics
import sysconfig
import time
import traceback
from collections.abc import Callable, Sequence

import numpy as np

from .._errors import InvalidInputError, fmt_choices
from .._harness import _compare, measure
from .._problem import Problem
from .._record import ERROR_RESOLUTION, GradientOutput, Record, SolverFailure, Stats, one_line
from .._reference import reference
from .._registry import unavailable_reason
from .._sensitivity import Direct
from .._solvers import RK4, Adaptive, Bosh3, Dopri5, Dopri8, Euler, Fixed, Heun, Midpoint
from .._taylor import DEFAULT_KS, TaylorResult, taylor_test
from ..problems import PROBLEMS, get_problem
from ._contract import output_times, step_kwargs
from ._orders import ConvergenceOrder, convergence_order

__all__ = [
    "check", "CheckReport", "ProblemCheck", "DEFAULT_DTS", "DEFAULT_RTOLS", "FRAMEWORKS", "ORDER_TOLERANCE",
    "default_problems", "builtin_solver",
]

DEFAULT_DTS = (0.1, 0.05, 0.025)
"""Fixed step sizes used when neither ``dts`` nor ``rtols`` is given."""

DEFAULT_RTOLS = (1e-3, 1e-5, 1e-7)
"""Tolerances of ``crossode check --rtol`` examples (``atol = rtol`` unless given)."""

FRAMEWORKS = ("torch", "jax")
ORDER_TOLERANCE = 0.3
"""Largest accepted distance between the observed gradient order and the expected one."""

TAYLOR_TOLERANCE_FACTOR = 10.0
"""Adaptive solvers: a Taylor inconsistency up to this times ``max(rtol, gradient error)`` at the Taylor test's
setting is "consistent to the solver's accuracy"."""

RESOLUTION = {"closed_form": 1e-13}
"""Errors at or below this are not resolved by the reference, by reference method (closed form: measured 1e-15 to
1e-12); other methods: ``crossode.ERROR_RESOLUTION['float64']`` (1e-10)."""
_FLOOR = ERROR_RESOLUTION["float64"]

_GRID_SLACK = 0.05
MAX_STEPS = 12
MAX_PROBLEMS = 32

_BUILTIN_FIXED = {1: Euler, 2: Midpoint, 3: Bosh3, 4: RK4, 5: Dopri5}
_BUILTIN_ADAPTIVE = {1: Heun, 2: Heun, 3: Bosh3, 4: Dopri5, 5: Dopri5}


def builtin_solver(order: int | None, adaptive: bool):
    """crossode's built-in method closest to ``order`` (1 Euler, 2 Midpoint, 3 Bosh3, 4 RK4, 5 Dopri5, >5
    Dopri8; adaptive: 1-2 Heun, 3 Bosh3, 4-5 Dopri5, >5 Dopri8; no order: RK4 / Dopri5)."""
    table = _BUILTIN_ADAPTIVE if adaptive else _BUILTIN_FIXED
    if order is None:
        return Dopri5() if adaptive else RK4()
    return (table.get(int(order)) or Dopri8)()


def _grid_misfit(problem: Problem, dt: float) -> float:
    """Largest relative difference between ``dt`` and the step that fits an output interval (``I / ceil(I/dt)``)."""
    times, _ = output_times(problem)
    worst = 0.0
    for a, b in zip(times[:-1], times[1:]):
        interval = abs(b - a)
        n = max(1, math.ceil(interval / dt - 1e-9))
        worst = max(worst, abs(interval / n - dt) / dt)
    return worst


def default_problems(dts: Sequence[float] | None = None) -> tuple[list[Problem], dict[str, str]]:
    """``(problems, skipped)``: the non-stiff zoo problems, less (with fixed ``dts``) those whose output times are
    so close that ``dt`` would not set the step (an interval ``I`` gets ``ceil(I/dt)`` steps of ``I/ceil(I/dt)``;
    more than 5% away from ``dt`` for some ``dt`` skips the problem), with the reason for each skipped one."""
    chosen, skipped = [], {}
    for name in PROBLEMS:
        p = get_problem(name)
        if p.stiff:
            continue
        if dts:
            bad = [d for d in dts if _grid_misfit(p, d) > _GRID_SLACK]
            if bad:
                times, _ = output_times(p)
                gap = min(abs(b - a) for a, b in zip(times[:-1], times[1:]))
                skipped[name] = (f"its output times are {gap:.3g} apart, so dt={bad[0]:g} would not set the step "
                                 "size (choose it with --problems to run it anyway)")
                continue
        chosen.append(p)
    return chosen, skipped


# ------------------------------------------------------------------------------------------------ results


@dataclasses.dataclass
class ProblemCheck:
    """The check of one problem: per-setting records (candidate and built-in), orders, Taylor test, verdict."""

    problem: str
    description: str
    mode: str
    cells: list[Record]
    builtin: list[Record]
    builtin_solver: str | None
    solution: ConvergenceOrder
    gradient: ConvergenceOrder
    builtin_gradient: ConvergenceOrder | None
    work_order: float | None
    taylor: TaylorResult | None
    expected_order: float | None = None
    expected_from: str = ""
    status: str = "inconclusive"
    reasons: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every criterion was measured and met (``status == 'pass'``)."""
        return self.status == "pass"

    @property
    def reason(self) -> str:
        """Why it failed or is inconclusive, on one line ('' when passed)."""
        return "; ".join(self.reasons)

    def to_dict(self) -> dict:
        """JSON-friendly form (records as :meth:`Record.to_dict`)."""
        return {
            "problem": self.problem, "description": self.description, "mode": self.mode,
            "status": self.status, "passed": self.passed, "reasons": self.reasons, "notes": self.notes,
            "expected_order": self.expected_order, "expected_from": self.expected_from,
            "solution_order": self.solution.to_dict(), "gradient_order": self.gradient.to_dict(),
            "builtin_solver": self.builtin_solver,
            "builtin_gradient_order": None if self.builtin_gradient is None else self.builtin_gradient.to_dict(),
            "work_order": self.work_order, "taylor": None if self.taylor is None else self.taylor.to_dict(),
            "cells": [r.to_dict() for r in self.cells], "builtin": [r.to_dict() for r in self.builtin],
        }


@dataclasses.dataclass
class CheckReport:
    """Everything ``crossode check`` found; ``passed`` is the verdict, :meth:`failures` the one-line reasons."""

    label: str
    framework: str
    mode: str
    steps: list[dict]
    order: float | None
    problems: list[ProblemCheck]
    skipped: dict[str, str]
    notes: list[str] = dataclasses.field(default_factory=list)
    order_tolerance: float = ORDER_TOLERANCE

    @property
    def passed(self) -> bool:
        """The verdict: no problem failed and at least one passed (inconclusive ones neither pass nor fail)."""
        return any(p.status == "pass" for p in self.problems) and not any(p.status == "fail" for p in self.problems)

    def failures(self) -> list[str]:
        """``'problem: reason'`` for each failed problem (and, when nothing passed, each inconclusive one)."""
        bad = [p for p in self.problems if p.status == "fail"]
        if not bad and not self.passed:
            bad = [p for p in self.problems if p.status == "inconclusive"]
        return [f"{p.problem}: {p.reason}" for p in bad]

    def to_dict(self) -> dict:
        """JSON-friendly form of the whole report."""
        return {
            "label": self.label, "framework": self.framework, "mode": self.mode, "steps": self.steps,
            "order": self.order, "order_tolerance": self.order_tolerance, "passed": self.passed,
            "failures": self.failures(),
            "inconclusive": {p.problem: p.reason for p in self.problems if p.status == "inconclusive"},
            "skipped": self.skipped,
            "notes": self.notes, "problems": [p.to_dict() for p in self.problems],
        }

    def table(self, width: int = 160) -> str:
        """The summary and per-setting tables as plain text (what ``crossode check`` prints)."""
        from ._report import render_text

        return render_text(self, width=width)

    def write(self, out_dir: str) -> dict[str, str]:
        """Write ``check.json``, ``records.jsonl`` (readable by ``crossode report``) and ``check.png``."""
        from ._report import write_outputs

        return write_outputs(self, out_dir)


# ------------------------------------------------------------------------------------------------ running


def _step_label(step: dict) -> str:
    return f"dt={step['dt']:g}" if "dt" in step else f"rtol={step['rtol']:g}"


def _one_line(e: BaseException) -> str:
    text = one_line(str(e), 200)
    where = ""
    tb = traceback.extract_tb(e.__traceback__)
    # the innermost frame in the user's own code: not crossode, not an installed library, not the standard library
    skip = tuple({os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
                 | {os.path.abspath(p) for k in ("stdlib", "platstdlib", "purelib", "platlib")
                    if (p := sysconfig.get_paths().get(k))})
    user = [f for f in tb if not os.path.abspath(f.filename).startswith(skip) and not f.filename.startswith("<")]
    if user:
        frame = user[-1]
        where = f" ({os.path.basename(frame.filename)}:{frame.lineno})"
    return f"{type(e).__name__}: {text}{where}"


def _runner(framework: str):
    reason = unavailable_reason(framework)
    if reason is not None:
        raise InvalidInputError(f"--framework {framework}: {reason}")
    module = importlib.import_module(f"crossode.check._{framework}")
    return module.TorchRunner if framework == "torch" else module.JaxRunner


def _resolution(ref) -> float:
    return RESOLUTION.get(ref.method, _FLOOR)


def _run_cell(runner, problem: Problem, ref, step: dict, repeats: int, label: str) -> tuple[Record, object]:
    rec = Record(problem=problem.name, backend=runner.framework, solver=label, sensitivity="own",
                 dt=step.get("dt"), rtol=step.get("rtol"), atol=step.get("atol"), reference=ref.method,
                 repeats=repeats, tags={"role": "candidate"})
    kw = step_kwargs(step)
    try:
        forward = runner.forward(kw) if hasattr(runner, "forward") else None  # JAX: states and NFE first
        start = time.perf_counter()
        res = runner.gradient(kw)
        first = time.perf_counter() - start
        if forward is not None:
            _, res.ys, res.nfe_forward = forward
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner.gradient(kw)
            times.append(time.perf_counter() - start)
    except SolverFailure as e:
        rec.status, rec.message = e.status, e.message
        return rec, None
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything; it becomes a status
        rec.status, rec.message = "crashed", f"odeint raised {_one_line(e)}"
        return rec, None
    rec.loss = res.loss
    rec.nfe_forward, rec.nfe_backward = res.nfe_forward, res.nfe_backward
    rec.time_gradient_s = statistics.median(times)
    rec.compile_s = max(0.0, first - rec.time_gradient_s)
    ys = np.asarray(res.ys, dtype=np.float64)
    rec.tags["solution_error"] = float(np.linalg.norm(ys.ravel() - ref.ys.ravel()) / np.linalg.norm(ref.ys))
    for what, g, r in (("the parameters", res.dparams, ref.dparams), ("y0", res.dy0, ref.dy0)):
        if g.shape != r.shape:
            rec.status = "solver_error"
            rec.message = f"the gradient w.r.t. {what} has shape {g.shape}, expected {r.shape}"
            return rec, None
        # "non-zero" relative to the whole gradient: a reference part at round-off level is zero
        if r.size and not np.any(g) and np.linalg.norm(r) > 1e-8 * np.linalg.norm(ref.grad):
            rec.status = "solver_error"
            rec.message = (f"the gradient w.r.t. {what} is exactly zero (reference norm {np.linalg.norm(r):.2g}): "
                           "the output is detached from it")
            return rec, None
    _compare(rec, problem, GradientOutput(res.loss, res.dparams, res.dy0, Stats()))
    return rec, res


def _builtin_rows(problem, framework, solver, steps, repeats) -> list[Record]:
    rows = []
    for step in steps:
        control = Fixed(dt=step["dt"]) if "dt" in step else Adaptive(rtol=step["rtol"], atol=step["atol"])
        rows.append(measure(problem, framework, solver, Direct(), control, repeats=repeats,
                            tags={"role": "builtin"}))
    return rows


def taylor_index(steps: list[dict]) -> int:
    """The setting the Taylor test runs at: the coarsest ``dt`` (the loss is smooth in theta at any fixed step; the
    coarsest is cheapest), the middle ``rtol`` (at loose tolerances the loss is rough in theta: step-pattern changes
    make it jump by the size of the error; the tightest is the most expensive)."""
    return 0 if "dt" in steps[0] else len(steps) // 2


def _errors(records: list[Record], key: str) -> list[float | None]:
    out = []
    for r in records:
        if r.status not in ("ok", "inaccurate"):
            out.append(None)
        else:
            out.append(r.tags.get(key) if key == "solution_error" else getattr(r, key))
    return out


def _work_order(cells: list[Record], floor: float) -> float | None:
    pts = [(r.nfe_forward, r.grad_error) for r in cells
           if r.status in ("ok", "inaccurate") and r.nfe_forward and r.grad_error is not None]
    if len(pts) < 2:
        return None
    fit = convergence_order([1.0 / n for n, _ in pts], [e for _, e in pts], floor)
    return fit.order


def _check_problem(odeint, runner_cls, problem, steps, *, order, builtin, repeats, label, ks,
                   framework) -> ProblemCheck:
    mode = "fixed" if "dt" in steps[0] else "adaptive"
    try:
        ref = reference(problem)
    except SolverFailure as e:
        raise InvalidInputError(f"problem {problem.name!r} has no independent reference: {e.message}") from None
    floor = _resolution(ref)
    runner = runner_cls(odeint, problem)
    cells, results = [], []
    for step in steps:
        rec, res = _run_cell(runner, problem, ref, step, repeats, label)
        cells.append(rec)
        results.append(res)
    notes = [runner.note] if getattr(runner, "note", "") else []
    if mode == "fixed":
        misfit = [s["dt"] for s in steps if _grid_misfit(problem, s["dt"]) > _GRID_SLACK]
        if misfit:
            notes.append(f"dt={misfit[0]:g} does not divide the output intervals evenly: a solver that lands on the "
                         "output times takes shorter steps, and orders are measured against the nominal dt")
    xs = [s["dt"] if mode == "fixed" else s["rtol"] for s in steps]
    solution = convergence_order(xs, _errors(cells, "solution_error"), floor)
    gradient = convergence_order(xs, _errors(cells, "grad_error"), floor)
    taylor = None
    at = taylor_index(steps)
    if results[at] is not None:
        res = results[at]
        theta = np.concatenate([problem.params, problem.y0])
        g = np.concatenate([res.dparams, res.dy0.ravel()])
        try:
            taylor = taylor_test(runner.loss_function(step_kwargs(steps[at])), theta, g, ks=ks, J0=res.loss)
        except Exception as e:  # noqa: BLE001 - reported as a note; the cells already say what failed
            notes.append(f"Taylor test could not run: {_one_line(e)}")
    solver = builtin_solver(order, mode == "adaptive") if builtin else None
    rows = _builtin_rows(problem, framework, solver, steps, repeats) if builtin else []
    bgrad = convergence_order(xs, _errors(rows, "grad_error"), floor) if rows else None
    return ProblemCheck(
        problem=problem.name, description=problem.description, mode=mode, cells=cells, builtin=rows,
        builtin_solver=None if solver is None else solver.name, solution=solution, gradient=gradient,
        builtin_gradient=bgrad, work_order=_work_order(cells, floor), taylor=taylor, notes=notes,
    )


def _verdict(pc: ProblemCheck, order: float | None, fallback: float | None, steps: list[dict],
             tol: float = ORDER_TOLERANCE) -> None:
    """Set ``pc.status`` (pass / fail / inconclusive), ``reasons`` (fail) and ``notes``."""
    reasons, unknown = [], []
    what = "dt" if pc.mode == "fixed" else "rtol"
    label = "order" if pc.mode == "fixed" else "rtol exponent"
    failed = [(c, s) for c, s in zip(pc.cells, steps) if c.status not in ("ok", "inaccurate")]
    if failed:
        c, s = failed[0]
        more = f" (and {len(failed) - 1} more settings)" if len(failed) > 1 else ""
        pc.reasons, pc.status = [f"{c.status} at {_step_label(s)}: {c.message}{more}"], "fail"
        return
    g, sol = pc.gradient, pc.solution
    if pc.mode == "fixed" and order is not None:
        pc.expected_order, pc.expected_from = float(order), "declared --order"
    elif sol.order is not None:
        pc.expected_order, pc.expected_from = sol.order, f"solution {label}"
    elif fallback is not None:
        pc.expected_order, pc.expected_from = fallback, f"median solution {label} of the other problems"
    if g.order is None:
        unknown.append(f"gradient {label} not measurable: {g.message}; use larger {what}")
    elif pc.mode == "adaptive" and g.order < 0.3 and (sol.order is None or sol.order < 0.3):
        unknown.append(f"neither the solution nor the gradient error changes with rtol (exponents "
                       f"{_fmt(sol.order)}, {g.order:.2f}): the steps are set by something else (e.g. the output "
                       "times); use tighter rtols or another problem")
    else:
        if not g.shrinking:
            errs = ", ".join(f"{g.errors[i]:.2e}" for i in g.used)
            reasons.append(f"gradient error does not shrink with {what} ({errs})")
        pairwise = ", ".join(f"{x:.2f}" for x in g.pairwise)
        if pc.expected_order is None:
            unknown.append(f"no expected {label}: the solution's could not be measured ({sol.message}); give --order")
        elif abs(g.order - pc.expected_order) > tol:
            reasons.append(f"gradient {label} {g.order:.2f} (pairwise {pairwise}), expected "
                           f"{pc.expected_order:.2f} ± {tol:g} ({pc.expected_from}); solution {label} "
                           f"{_fmt(sol.order)}")
    t, at = pc.taylor, taylor_index(steps)
    if t is not None and t.status == "inconsistent":
        # Adaptive: the gradient usually treats step sizes as constants, so it is consistent only up to the solver's
        # accuracy (crossode._taylor); tolerate an inconsistency of the order of its own gradient error.
        accuracy = max(steps[at].get("rtol") or 0.0, pc.cells[at].grad_error or 0.0)
        if pc.mode == "adaptive" and t.inconsistency is not None and \
                t.inconsistency <= TAYLOR_TOLERANCE_FACTOR * accuracy:
            pc.notes.append(f"Taylor test at {_step_label(steps[at])}: {t.message}: within "
                            f"{TAYLOR_TOLERANCE_FACTOR:g} x the gradient's own accuracy {accuracy:.1e} (step sizes "
                            "treated as constants)")
        else:
            reasons.append(f"Taylor test at {_step_label(steps[at])}: {t.message}: the gradient is not the "
                           "derivative of the loss the solver computed")
    elif t is not None and t.status == "unresolved":
        pc.notes.append(f"Taylor test unresolved: {t.message}")
    if reasons:
        hint = _diagnosis(pc, tol)
        if hint:
            reasons.append(hint)
        pc.reasons, pc.status = reasons, "fail"
    elif unknown:
        pc.reasons, pc.status = unknown, "inconclusive"
    else:
        pc.reasons, pc.status = [], "pass"


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _diagnosis(pc: ProblemCheck, tol: float) -> str:
    """One line naming the likely culprit, from how the solution order, gradient order and Taylor test agree."""
    g, sol, t, exp = pc.gradient, pc.solution, pc.taylor, pc.expected_order
    if pc.mode != "fixed" or g.order is None or exp is None:
        return ""
    sol_ok = sol.order is not None and abs(sol.order - exp) <= tol
    if t is not None and t.status == "inconsistent" and (sol_ok or sol.order is None):
        return ("diagnosis: the forward solution converges but the gradient does not and disagrees with the "
                "solver's own loss, so the backward pass misses a dependence (a detached stage or a wrong "
                "custom backward)")
    if t is not None and t.status == "consistent" and sol.order is not None and not sol_ok \
            and abs(sol.order - g.order) <= 2 * tol:
        if sol.order < exp:
            return (f"diagnosis: the gradient is the exact derivative of the computed loss and converges like the "
                    f"solution (order {sol.order:.2f}), so the method itself is of lower order than {exp:g} "
                    "(check the tableau's weights and nodes)")
        return (f"diagnosis: solution and gradient both converge faster than order {exp:g} ({sol.order:.2f}): the "
                "steps are not yet in the asymptotic range (use smaller dt, while errors stay above the reference's "
                "resolution) or this problem superconverges")
    return ""


def _parse_steps(dts, rtols, atols) -> list[dict]:
    if dts is not None and rtols is not None:
        raise InvalidInputError("give dts (fixed step) or rtols (adaptive), not both.")
    if atols is not None and rtols is None:
        raise InvalidInputError("atols need rtols.")
    values = DEFAULT_DTS if dts is None and rtols is None else (dts if dts is not None else rtols)
    name = "dts" if rtols is None else "rtols"
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{name}` must be a list of positive numbers; got {values!r}.") from None
    if not 2 <= len(values) <= MAX_STEPS:
        raise InvalidInputError(f"`{name}` needs 2 to {MAX_STEPS} values to fit an order; got {len(values)}.")
    if not all(math.isfinite(v) and v > 0 for v in values) or len(set(values)) != len(values):
        raise InvalidInputError(f"`{name}` must be distinct positive finite numbers; got {values}.")
    values = sorted(values, reverse=True)
    if rtols is None:
        return [{"dt": v} for v in values]
    if atols is None:
        atol = values
    else:
        try:
            atol = [float(a) for a in atols]
        except (TypeError, ValueError):
            raise InvalidInputError(f"`atols` must be a list of positive numbers; got {atols!r}.") from None
        if len(atol) == 1:
            atol = atol * len(values)
        if len(atol) != len(values) or not all(math.isfinite(a) and a > 0 for a in atol):
            raise InvalidInputError(f"`atols` must be one positive number or one per rtol; got {atols!r}.")
    return [{"rtol": r, "atol": a} for r, a in zip(values, atol)]


def _parse_problems(problems, steps) -> tuple[list[Problem], dict[str, str]]:
    if problems is None:
        dts = [s["dt"] for s in steps if "dt" in s]
        chosen, skipped = default_problems(dts or None)
        if not chosen:
            raise InvalidInputError("no default problem fits these dts: " + "; ".join(
                f"{k}: {v}" for k, v in skipped.items()))
        return chosen, skipped
    if isinstance(problems, (str, Problem)):
        problems = [problems]
    out = []
    for p in list(problems)[: MAX_PROBLEMS + 1]:
        if isinstance(p, Problem):
            out.append(p)
        elif isinstance(p, str):
            if p not in PROBLEMS:
                raise InvalidInputError(f"Unknown problem {p!r}; expected one of {fmt_choices(PROBLEMS)}.")
            out.append(get_problem(p))
        else:
            raise InvalidInputError(f"`problems` must hold problem names or crossode.Problem objects; got {p!r}.")
    if not out or len(out) > MAX_PROBLEMS:
        raise InvalidInputError(f"`problems` must name 1 to {MAX_PROBLEMS} problems.")
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"problem names must be unique; repeated: {', '.join(dup)}.")
    return out, {}


def check(
    odeint: Callable,
    framework: str = "torch",
    *,
    order: float | None = None,
    problems=None,
    dts: Sequence[float] | None = None,
    rtols: Sequence[float] | None = None,
    atols: Sequence[float] | None = None,
    builtin: bool = True,
    repeats: int = 1,
    order_tolerance: float = ORDER_TOLERANCE,
    taylor_ks: Sequence[int] = DEFAULT_KS,
    label: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Reference-check ``odeint`` (the contract of :mod:`crossode.check._contract`) and return the report.

    **Arguments:**
    - ``framework``: ``"torch"`` or ``"jax"``.
    - ``order``: the declared order (fixed step: the gradient's observed order must be within
      :data:`ORDER_TOLERANCE` of it; also picks the built-in comparison method). ``None``: compare with the
      solution's observed order.
    - ``problems``: zoo names and/or :class:`~crossode.Problem` objects; default :func:`default_problems`.
    - ``dts`` (fixed step, default :data:`DEFAULT_DTS`) or ``rtols`` (adaptive; ``atols`` default ``rtols``).
    - ``builtin``: also run crossode's built-in method of that order on the same framework (work-precision rows).
    - ``order_tolerance``: accepted distance of the gradient's order from the expected one (default
      :data:`ORDER_TOLERANCE`; DiffEqDevTools' own tests use 0.2 and, for methods whose asymptotic range is out of
      reach in float64, 1).
    - ``repeats``: timed gradient calls per setting after the first (median reported; the first's extra time is
      ``compile_s``).
    - ``taylor_ks``: Taylor-test step lengths ``2^-k``; ``label``: the solver's name in records and tables;
      ``progress``: called with one line per problem.

    Bad arguments raise :class:`~crossode.InvalidInputError`; whatever the solver does becomes a status.
    """
    if not callable(odeint):
        raise InvalidInputError(f"`odeint` must be callable; got {type(odeint).__name__}.")
    if framework not in FRAMEWORKS:
        raise InvalidInputError(f"`framework` must be {fmt_choices(FRAMEWORKS)}; got {framework!r}.")
    if order is not None:
        if isinstance(order, bool) or not isinstance(order, (int, float)) or not (0 < order <= 20):
            raise InvalidInputError(f"`order` must be a number in (0, 20]; got {order!r}.")
    if isinstance(order_tolerance, bool) or not isinstance(order_tolerance, (int, float)) or \
            not 0 < order_tolerance <= 5:
        raise InvalidInputError(f"`order_tolerance` must be a number in (0, 5]; got {order_tolerance!r}.")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or not 1 <= repeats <= 100:
        raise InvalidInputError(f"`repeats` must be an integer from 1 to 100; got {repeats!r}.")
    steps = _parse_steps(dts, rtols, atols)
    probs, skipped = _parse_problems(problems, steps)
    runner_cls = _runner(framework)
    label = label or getattr(odeint, "__qualname__", None) or "odeint"
    checks = []
    for p in probs:
        if progress:
            progress(f"checking {p.name} ({len(steps)} settings)")
        checks.append(_check_problem(odeint, runner_cls, p, steps, order=order, builtin=builtin,
                                     repeats=repeats, label=label, ks=taylor_ks, framework=framework))
    for pc in checks:
        others = [o.solution.order for o in checks if o is not pc and o.solution.order is not None]
        _verdict(pc, order, statistics.median(others) if others else None, steps, float(order_tolerance))
    notes = []
    if order is not None and steps and "rtol" in steps[0]:
        notes.append("adaptive steps: --order only picks the built-in comparison method; the verdict compares the "
                     "gradient's rtol exponent with the solution's (the work order column shows error vs NFE)")
    return CheckReport(label=label, framework=framework, mode="fixed" if "dt" in steps[0] else "adaptive",
                       steps=steps, order=order, problems=checks, skipped=skipped, notes=notes,
                       order_tolerance=float(order_tolerance))


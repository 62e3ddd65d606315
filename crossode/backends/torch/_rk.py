"""Explicit Runge-Kutta stepping from :mod:`crossode._tableaux`: one step, and a whole solve with saves.

Everything here is ordinary differentiable torch arithmetic: run it with autograd on and you get the Direct
gradient; run it under ``no_grad`` and store :attr:`Solution.steps` to recompute steps later (Checkpointed).

Conventions:

- times and step sizes are Python floats (float64) whatever the state dtype, so they are never differentiated
  and never lose precision in float32 runs; ``f`` receives them as 0-d float64 tensors (see :class:`Field`);
- adaptive steps are clipped to land exactly on every save time and on ``t1``; after a clipped, accepted step
  the controller's unclipped proposal is kept (a short step to a save time does not slow the solve down);
- ``Fixed`` steps walk :func:`crossode.fixed_grid` exactly;
- ``k1 = f(t_n, y_n)`` is evaluated once per accepted state and reused by every attempt from it (rejections
  do not repeat it); FSAL tableaux take it from the previous step's last stage;
- states of any shape (batched too) are one system: the error norm is taken over all elements.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch

from ..._errors import InvalidInputError
from ..._record import SolverFailure
from ..._solvers import Adaptive, Fixed, fixed_grid
from ..._tableaux import ButcherTableau
from ..._stepping import min_step_size
from ._control import StepController, initial_step, rms_norm

__all__ = ["Field", "Solution", "rk_step", "integrate"]


class Field:
    """``f(t: float, y) -> Tensor`` around a user function ``func(t: Tensor, y: Tensor)``, counting calls.

    ``func`` gets ``t`` as a 0-d float64 tensor (a float64 tensor of shape ``(batch,)`` passes through: per-sample
    steps); its output must have the state's shape and is cast to the state's dtype.

    ``nfe`` counts evaluations; ``on_graph`` records whether any output required grad (Direct's backward VJP
    count, :func:`~._solve.solve`, is then known from the accepted steps: no per-evaluation autograd hook).
    """

    def __init__(self, func: Callable, device: torch.device):
        self.func = func
        self.device = device
        self.nfe = 0
        self.on_graph = False

    def time(self, t: float) -> torch.Tensor:
        """``t`` as a 0-d float64 tensor on the state's device (0-d tensors do not promote float32 states)."""
        return torch.full((), t, dtype=torch.float64, device=self.device)

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.func(t if isinstance(t, torch.Tensor) else self.time(t), y)
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidInputError(f"`func` must return a tensor of the state's shape {tuple(y.shape)}; got {got}.")
        if out.dtype != y.dtype:
            # e.g. a float32 state times a float64 function of t in 0-d arithmetic: keep the state's precision.
            out = out.to(y.dtype)
        if out.requires_grad:
            self.on_graph = True
        return out


def _combine(y: torch.Tensor, h, coeffs: Sequence[float], ks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``y + h * sum_j coeffs[j] * ks[j]`` skipping zero coefficients (a fixed order of operations).

    ``h`` is a float, or (per-sample steps) a tensor of the state's dtype that broadcasts against rows of ``y``.
    """
    acc = y
    per_row = isinstance(h, torch.Tensor)
    for cj, kj in zip(coeffs, ks):
        if cj != 0.0:
            acc = acc + kj * (h * cj) if per_row else torch.add(acc, kj, alpha=h * cj)
    return acc


def rk_step(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    tab: ButcherTableau,
    t: float,
    y: torch.Tensor,
    h: float,
    k1: torch.Tensor,
    *,
    error: bool = True,
    last_stage: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One explicit RK step from ``(t, y)`` with ``k1 = f(t, y)``; returns ``(y_new, err, k_last)``.

    ``t`` and ``h`` are floats, or (per-sample steps, :mod:`._persample`) float64 tensors of shape ``(batch,)``:
    one time and step per row of ``y``; ``f`` then gets the stage times as such a tensor.

    ``err = h * sum_i b_err[i] k_i`` (``None`` without an estimate or with ``error=False``); ``k_last`` is
    ``f(t + h, y_new)`` for FSAL tableaux (the next ``k1``), else ``None``. With ``last_stage=False`` (and
    ``error=False``) an FSAL step skips its last stage: ``y_new`` is bitwise the same, one evaluation cheaper
    (used when recomputing a step only to differentiate ``y_new``).
    """
    s = tab.stages
    ks = [k1]
    y_new = None
    hc = h.to(y.dtype).view(-1, *([1] * (y.dim() - 1))) if isinstance(h, torch.Tensor) else h
    for i in range(1, s):
        yi = _combine(y, hc, tab.a[i], ks)
        if tab.fsal and i == s - 1:
            # The FSAL stage is evaluated at the new solution (a[-1] == b): reuse its input as y_new.
            y_new = yi
            if not (error or last_stage):
                return y_new, None, None
        ks.append(f(t + tab.c[i] * h, yi))
    if y_new is None:
        y_new = _combine(y, hc, tab.b, ks)
    err = None
    if error and tab.b_err is not None:
        # Only step-size control reads the estimate and it is never differentiated: keep it off the graph.
        with torch.no_grad():
            err = _combine(torch.zeros_like(y), hc, tab.b_err, ks)
    return y_new, err, (ks[-1] if tab.fsal else None)


@dataclasses.dataclass
class Solution:
    """Result of :func:`integrate`.

    ``ys``: states at the save times; ``steps``: accepted ``(t_n, h_n)`` in order; ``states``: ``y_n`` at the
    start of each accepted step (only with ``record=True``); ``save_steps[j]``: number of accepted steps taken
    when save ``j`` was written; ``h_next``: the controller's proposal after the last step (signed);
    ``accepted``/``rejected``: step counts.
    """

    ys: list
    steps: list
    states: list
    save_steps: list
    h_next: float | None
    accepted: int
    rejected: int


def _check_finite(y: torch.Tensor, t: float, what: str = "state") -> None:
    if not bool(torch.isfinite(y).all()):
        raise SolverFailure("diverged", f"the {what} became non-finite at t={t:.6g}")


def integrate(
    f: Callable[[float, torch.Tensor], torch.Tensor],
    tab: ButcherTableau,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    t_save: Sequence[float],
    step: Adaptive | Fixed,
    *,
    grid: Sequence[float] | None = None,
    h0: float | None = None,
    norm: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    init_norm: Callable | None = None,
    record: bool = False,
) -> Solution:
    """Integrate ``y' = f(t, y)`` from ``(t0, y0)`` to ``t1``, saving at ``t_save`` (sorted in integration order,
    inside ``[t0, t1]``; ``t0`` itself may be a save time).

    **Arguments:**
    - ``step``: :class:`Adaptive` or :class:`Fixed` (on ``grid``, default :func:`fixed_grid`).
    - ``h0``: first step magnitude overriding ``step.dt0`` and the automatic choice.
    - ``norm(err, y, y_new)``: scaled error norm (default :func:`rms_norm` with the step's tolerances);
      ``init_norm(x, y)``: the matching norm for :func:`initial_step`.
    - ``record``: keep ``y_n`` of every accepted step in :attr:`Solution.states`.

    **Raises:** :class:`SolverFailure` with status ``max_steps``, ``step_size_too_small`` or ``diverged``.
    """
    direction = 1.0 if t1 > t0 else -1.0
    ys, steps, states, save_steps = [], [], [], []
    j = 0
    while j < len(t_save) and t_save[j] == t0:
        ys.append(y0)
        save_steps.append(0)
        j += 1

    if isinstance(step, Fixed):
        pts = list(fixed_grid(t0, t1, step.dt, t_save, max_steps=step.max_steps)) if grid is None else list(grid)
        if len(pts) - 1 > step.max_steps:  # a caller's own grid (the adjoint's reversed segments)
            raise SolverFailure(
                "max_steps", f"the fixed grid needs {len(pts) - 1} steps, more than max_steps={step.max_steps}"
            )
        y, k1 = y0, None
        for n in range(len(pts) - 1):
            t, t_next = float(pts[n]), float(pts[n + 1])
            h = t_next - t
            if k1 is None:
                k1 = f(t, y)
            if record:
                states.append(y)
            steps.append((t, h))
            y, _, k1 = rk_step(f, tab, t, y, h, k1, error=False)
            while j < len(t_save) and t_save[j] == t_next:
                # One finiteness check per save time (not per step: on CUDA each check is a sync).
                _check_finite(y, t_next)
                ys.append(y)
                save_steps.append(n + 1)
                j += 1
        if j < len(t_save):
            raise SolverFailure("solver_error", f"save time {t_save[j]} is not on the fixed grid")
        return Solution(ys, steps, states, save_steps, None, len(steps), 0)

    # ---- adaptive
    if tab.b_err is None:
        raise SolverFailure("solver_error", "this tableau has no error estimate; use Fixed(dt)")
    rtol, atol = step.rtol, step.atol
    if norm is None:

        def norm(err, y, y_new):
            return rms_norm(err, y, y_new, rtol, atol)

    ctrl = StepController(tab.error_order, rtol, atol, step.max_steps)
    hmin = min_step_size(t0, t1)
    k1 = f(t0, y0)
    if h0 is None:
        h0 = step.dt0
    if h0 is None:
        _check_finite(k1, t0, "vector field")
        h0 = initial_step(f, t0, y0, k1, tab.error_order, rtol, atol, direction, init_norm)
    h = direction * abs(h0)
    targets = list(t_save[j:])
    if not targets or targets[-1] != t1:
        targets.append(t1)
    n_saves = len(t_save)
    t, y = t0, y0
    for target in targets:
        while t != target:
            ctrl.check_budget(t)
            remaining = target - t
            # Land exactly on the target when the step would reach it or leave a negligible sliver.
            landing = abs(h) >= abs(remaining) * (1.0 - 1e-10)
            h_try = remaining if landing else h
            if k1 is None:
                k1 = f(t, y)
            y_new, err, k_last = rk_step(f, tab, t, y, h_try, k1)
            err_norm = float(norm(err, y, y_new))
            accept, h_next = ctrl.propose(h_try, err_norm)
            if accept:
                if record:
                    states.append(y)
                steps.append((t, h_try))
                t = target if landing else t + h_try
                y = y_new
                k1 = k_last  # None for non-FSAL tableaux: evaluated lazily at the next attempt
                if landing:
                    # Clipping shortened the step: keep the controller's earlier, larger proposal.
                    h_next = direction * max(abs(h_next), abs(h))
            else:
                if not math.isfinite(err_norm):
                    # A non-finite candidate is rejected (a smaller step may stay finite), but a non-finite
                    # accepted state or slope can never recover.
                    _check_finite(y, t)
                    _check_finite(k1, t, "vector field")
                if abs(h_next) < hmin:
                    raise SolverFailure(
                        "step_size_too_small",
                        f"step size {abs(h_next):.3g} fell below {hmin:.3g} at t={t:.17g} "
                        f"(rtol={rtol:g}, atol={atol:g}); the problem may be stiff or blow up",
                    )
            h = h_next
        if len(ys) < n_saves and t_save[len(ys)] == target:
            ys.append(y)
            save_steps.append(len(steps))
    return Solution(ys, steps, states, save_steps, h, ctrl.accepted, ctrl.rejected)

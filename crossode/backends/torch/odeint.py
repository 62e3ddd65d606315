"""``odeint``: the native PyTorch entry point, for training code (``loss.backward()`` just works).

Conventions (torchdiffeq's): ``t[0]`` is the start time, ``t[-1]`` the end time, and the output holds the
solution at *every* ``t`` including ``y(t[0]) = y0``, shape ``(len(t), *y0.shape)``. A batched ``y0`` of shape
``(B, n)`` is integrated as one system (one step sequence, error norm over the whole batch), as in
torchdiffeq. Gradients flow to ``y0`` and to the parameters (see ``params`` in :func:`odeint`); not to ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..._errors import InvalidInputError, UnsupportedError
from ..._record import Stats
from ..._sensitivity import (
    MALI,
    AbstractSensitivity,
    Backsolve,
    Checkpointed,
    Direct,
    Forward,
    check_pair,
)
from ..._solvers import ALF, AbstractSolver, AbstractStepControl, Adaptive, Dopri5, Fixed
from ..._tableaux import TABLEAUX
from ._solve import SolveSpec, add_stat, check_params_declared, resolve_params, solve

__all__ = ["odeint"]

_SENSITIVITIES = (Direct, Checkpointed, Backsolve, Forward)


def _times(t) -> list[float]:
    if isinstance(t, torch.Tensor):
        if t.ndim != 1:
            raise InvalidInputError(f"`t` must be one-dimensional; got shape {tuple(t.shape)}.")
        if t.requires_grad:
            raise InvalidInputError("`t` must not require grad: odeint does not differentiate w.r.t. times.")
        ts = [float(x) for x in t.detach().to("cpu", torch.float64).tolist()]
    else:
        try:
            ts = [float(x) for x in t]
        except (TypeError, ValueError):
            raise InvalidInputError(f"`t` must be a 1-D tensor or sequence of numbers; got {t!r}.") from None
    if len(ts) < 2:
        raise InvalidInputError(f"`t` needs at least two times (start and end); got {len(ts)}.")
    if not all(math.isfinite(x) for x in ts):
        raise InvalidInputError(f"`t` must be finite; got {ts}.")
    d = [b - a for a, b in zip(ts, ts[1:])]
    if not (all(x > 0 for x in d) or all(x < 0 for x in d)):
        raise InvalidInputError(f"`t` must be strictly increasing or strictly decreasing; got {ts}.")
    return ts


def check_config(solver: AbstractSolver, sensitivity: AbstractSensitivity, step: AbstractStepControl) -> str | None:
    """``None`` if :func:`odeint` supports the (explicit RK) configuration, else the reason."""
    if type(solver) not in TABLEAUX:
        return f"`solver={solver!r}` is not available in the PyTorch backend (explicit RK methods and ALF only)."
    if isinstance(step, Adaptive) and not solver.adaptive:
        return f"`solver={solver!r}` has no error estimate, so it needs `step=Fixed(dt)`, not `Adaptive(...)`."
    if isinstance(sensitivity, MALI):
        return f"`sensitivity=MALI()` requires `solver=ALF()`; got `solver={solver!r}`."
    if not isinstance(sensitivity, _SENSITIVITIES):
        return (
            f"`sensitivity={sensitivity!r}` is not available in the PyTorch backend; use Direct(), Checkpointed(), "
            "Backsolve() or Forward()."
        )
    if isinstance(sensitivity, Checkpointed) and sensitivity.checkpoints is not None:
        return "`Checkpointed(checkpoints=k)` is not available in PyTorch: it stores every accepted step (ACA)."
    if getattr(sensitivity, "vjp", "auto") != "auto":
        return f"`vjp={sensitivity.vjp!r}` is a Julia option; PyTorch uses autograd ('auto')."
    return None


def odeint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor | Sequence[float],
    *,
    solver: AbstractSolver = Dopri5(),
    sensitivity: AbstractSensitivity = Direct(),
    step: AbstractStepControl = Adaptive(),
    params: Sequence[torch.Tensor] | None = None,
    stats: Stats | None = None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` and return ``y`` at every time in ``t``, shape ``(len(t), *y0.shape)``.

    **Arguments:**
    - ``func``: ``func(t, y) -> dy/dt`` with ``t`` a 0-d float64 tensor and ``dy/dt`` shaped like ``y``; any
      callable or ``nn.Module``.
    - ``y0``: initial state at ``t[0]``, any shape, floating dtype (float32 or float64), any device.
    - ``t``: 1-D tensor or sequence, strictly monotone (decreasing integrates backwards); ``t[0]`` is the
      start time and ``y(t[0]) = y0`` is the first output row.
    - ``solver``: an explicit RK descriptor (:class:`~crossode.Euler` ... :class:`~crossode.Dopri8`) or
      :class:`~crossode.ALF`, which is dispatched to ``_alf.odeint_alf`` (see there: its own conventions for
      ``t`` gradients and the dtype of the ``t`` passed to ``func``).
    - ``sensitivity``: :class:`~crossode.Direct` (autograd through every step), :class:`~crossode.Checkpointed`
      (recompute steps backwards; same gradient as Direct), :class:`~crossode.Backsolve` (continuous adjoint),
      :class:`~crossode.Forward` (forward sensitivities; small systems), or :class:`~crossode.MALI` with ALF.
    - ``step``: :class:`~crossode.Adaptive` or :class:`~crossode.Fixed` (steps on :func:`crossode.fixed_grid`).
    - ``params``: the tensors besides ``y0`` that receive gradients. Default: ``func.parameters()`` for an
      ``nn.Module`` (or a bound method of one), and for a ``functools.partial`` every tensor and module
      parameter among its arguments; an explicit list replaces the default (torchdiffeq's ``adjoint_params``).
      ``Direct`` differentiates through anything ``func`` uses. Every other sensitivity differentiates only
      w.r.t. ``y0`` and ``params``, so before solving it evaluates ``func`` once at ``(t[0], y0)`` with a graph
      (ALF reuses its ``v0 = func(t[0], y0)``; RK methods count one extra forward evaluation) and raises
      :class:`~crossode.InvalidInputError` if that graph reaches a tensor that requires grad and is not
      declared (e.g. one captured by a lambda): the gradient is either right for every such tensor or refused,
      never missing. Tensors that do not require grad need no declaration; ``y0`` need not require grad.
    - ``stats``: a :class:`~crossode.Stats` to fill (counts are added): forward counts on return,
      ``nfe_backward`` once the backward pass has run.

    **Raises:** :class:`~crossode.InvalidInputError` for malformed arguments, :class:`~crossode.UnsupportedError`
    for unsupported combinations, :class:`~crossode.SolverFailure` when the solve fails (``max_steps``,
    ``step_size_too_small``, ``diverged``) — never a NaN result.
    """
    if not callable(func):
        raise InvalidInputError(f"`func` must be callable; got {type(func).__name__}.")
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise InvalidInputError(f"`y0` must be a floating-point tensor; got {y0!r}.")
    if not isinstance(step, (Adaptive, Fixed)):
        raise InvalidInputError(f"`step` must be Adaptive(...) or Fixed(dt); got {step!r}.")
    if stats is not None and not isinstance(stats, Stats):
        raise InvalidInputError(f"`stats` must be a crossode.Stats or None; got {type(stats).__name__}.")
    check_pair(solver, sensitivity)
    if isinstance(solver, ALF):
        # ALF/MALI lives in `_alf.py`/`_mali.py`, which validates `t` itself (it can differentiate w.r.t. times).
        from ._alf import odeint_alf

        if not isinstance(t, torch.Tensor):
            t = torch.tensor([float(x) for x in t], dtype=torch.float64, device=y0.device)
        return odeint_alf(func, y0, t, params=params, solver=solver, sensitivity=sensitivity, step=step, stats=stats)
    ts = _times(t)
    params = resolve_params(func, params)
    reason = check_config(solver, sensitivity, step)
    if reason is not None:
        raise UnsupportedError(reason)
    spec = SolveSpec(func, TABLEAUX[type(solver)], step, ts[0], ts[-1], ts, params, stats)
    if torch.is_grad_enabled() and not isinstance(sensitivity, Direct):
        # One evaluation with a graph at (t0, y0): does func use a tensor needing grad that is not in params?
        field = spec.field(y0.device)
        with torch.enable_grad():
            check_params_declared(field(ts[0], y0.detach()), params, sensitivity)
        add_stat(stats, "nfe_forward", field.nfe)
    return solve(spec, y0, sensitivity)

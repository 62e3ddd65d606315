"""``odeint`` / ``odeint_adjoint``: the native PyTorch entry points, for training code (``loss.backward()`` works).

Shaped like torchdiffeq's: ``odeint(func, y0, t, rtol=, atol=, method=, options=)`` and ``odeint_adjoint(...,
adjoint_params=)``, with crossode's descriptors (``solver=``, ``sensitivity=``, ``step=``) accepted alongside
through ONE mapping, :mod:`._torchdiffeq` (its table lists every keyword). Conventions (torchdiffeq's): ``t[0]`` is
the start time, ``t[-1]`` the end time, and the output holds the solution at *every* ``t`` including
``y(t[0]) = y0``, shape ``(len(t), *y0.shape)``. A batched ``y0`` of shape ``(B, n)`` is integrated as one system
(one step sequence, error norm over the whole batch), as in torchdiffeq. Gradients flow to ``y0``, to the
parameters (see ``params`` in :func:`odeint`) and to ``t`` when it requires grad.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..._errors import InvalidInputError, UnsupportedError
from ..._record import Stats
from ..._sensitivity import AbstractSensitivity, Direct, check_pair
from ..._solvers import ALF, AbstractSolver, AbstractStepControl
from ..._tableaux import TABLEAUX
from .._capabilities import torch_check_config as check_config
from ._solve import SaveTimes, SolveSpec, StartTime, TimeGrad, add_stat, check_params_declared, resolve_params, solve
from ._torchdiffeq import adjoint_sensitivity, resolve

__all__ = ["odeint", "odeint_adjoint"]


def _times(t) -> list[float]:
    if isinstance(t, torch.Tensor):
        if t.ndim != 1:
            raise InvalidInputError(f"`t` must be one-dimensional; got shape {tuple(t.shape)}.")
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


def odeint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor | Sequence[float],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: dict | None = None,
    event_fn: None = None,
    solver: AbstractSolver | None = None,
    sensitivity: AbstractSensitivity | None = None,
    step: AbstractStepControl | None = None,
    params: Sequence[torch.Tensor] | None = None,
    stats: Stats | None = None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` and return ``y`` at every time in ``t``, shape ``(len(t), *y0.shape)``.

    torchdiffeq's calls work unchanged (``odeint(func, y0, t, rtol=1e-6, atol=1e-8, method="dopri5",
    options={...})``); crossode's descriptors may replace or join them. Each setting is given once: the solver as
    ``method`` (a name) or ``solver`` (a descriptor), the steps as ``rtol``/``atol``/``options`` or ``step``. The
    mapping and what is refused: :mod:`crossode.backends.torch._torchdiffeq`.

    **Arguments:**
    - ``func``: ``func(t, y) -> dy/dt`` with ``t`` a 0-d float64 tensor and ``dy/dt`` shaped like ``y``; any
      callable or ``nn.Module``.
    - ``y0``: initial state at ``t[0]``, any shape, floating dtype (float32 or float64), any device.
    - ``t``: 1-D tensor or sequence, strictly monotone (decreasing integrates backwards); ``t[0]`` is the
      start time and ``y(t[0]) = y0`` is the first output row. If ``t`` requires grad (every method supports
      it), its gradient is the continuous-flow one, as torchdiffeq's adjoint computes it: ``dL/dt_i = <dL/dy_i,
      f(t_i, y_i)>`` for ``i >= 1`` and ``dL/dt_0 = -<dL/dz_0, f(t_0, y_0)>`` with ``dL/dz_0`` the gradient
      reaching the start of the integration (excluding the output row ``y(t[0])``); one evaluation of ``func``
      more in the forward pass and one per output time in the backward pass.
    - ``rtol``, ``atol``: tolerances (default torchdiffeq's ``1e-7``, ``1e-9``); ignored by fixed-step methods.
    - ``method``: a torchdiffeq method (``"dopri5"`` default, ``"dopri8"``, ``"bosh3"``, ``"adaptive_heun"``,
      ``"euler"``, ``"midpoint"``, ``"heun2"``, ``"rk4"`` = Kutta's 3/8 rule like torchdiffeq's) or a crossode
      solver name (``"tsit5"``, ``"alf"``, ...).
    - ``options``: torchdiffeq's: ``step_size`` (fixed-step methods; without it one step per interval of ``t``),
      ``first_step``, ``max_num_steps``; its other options only at their defaults.
    - ``event_fn``: torchdiffeq's event handling is not implemented (anything but ``None`` is refused).
    - ``solver``: a crossode descriptor instead of ``method``: an explicit RK descriptor (:class:`~crossode.Euler`
      ... :class:`~crossode.Dopri8`) or :class:`~crossode.ALF`, dispatched to ``_alf.odeint_alf``.
    - ``sensitivity``: :class:`~crossode.Direct` (default: autograd through every step),
      :class:`~crossode.Checkpointed` (recompute steps backwards; same gradient as Direct),
      :class:`~crossode.Backsolve` (continuous adjoint, what :func:`odeint_adjoint` uses),
      :class:`~crossode.Forward` (forward sensitivities; small systems), or :class:`~crossode.MALI` with ALF.
    - ``step``: :class:`~crossode.Adaptive` or :class:`~crossode.Fixed` (steps on :func:`crossode.fixed_grid`)
      instead of ``rtol``/``atol``/``options``. ``Adaptive(batch_steps="per_sample")`` steps every row of a batched
      ``y0`` (shape ``(batch, ...)``) on its own (Direct with explicit RK; Direct and MALI with ALF): ``func`` then
      gets ``t`` as a float64 tensor of shape ``(rows,)``, one time per row of ``y`` (only the rows still running).
    - ``params``: the tensors besides ``y0`` that receive gradients (torchdiffeq's ``adjoint_params``). Default:
      ``func.parameters()`` for an ``nn.Module`` (or a bound method of one), and for a ``functools.partial``
      every tensor and module parameter among its arguments; an explicit list replaces the default.
      ``Direct`` differentiates through anything ``func`` uses. Every other sensitivity differentiates only
      w.r.t. ``y0`` and ``params``, so before solving it evaluates ``func`` once at ``(t[0], y0)`` with a graph
      (ALF reuses its ``v0 = func(t[0], y0)``; RK methods count one extra forward evaluation) and raises
      :class:`~crossode.InvalidInputError` if that graph reaches a tensor that requires grad and is not
      declared (e.g. one captured by a lambda): the gradient is either right for every such tensor or refused,
      never missing. Tensors that do not require grad need no declaration; ``y0`` need not require grad.
    - ``stats``: a :class:`~crossode.Stats` to fill (counts are added): forward counts on return,
      ``nfe_backward`` once the backward pass has run (Direct: known from the accepted steps and added by one
      autograd hook per solve, not one per evaluation).

    **Raises:** :class:`~crossode.InvalidInputError` for malformed arguments (naming the argument and what is
    allowed), :class:`~crossode.UnsupportedError` for unsupported combinations or torchdiffeq features,
    :class:`~crossode.SolverFailure` when the solve fails (``max_steps``, ``step_size_too_small``,
    ``diverged``) — never a NaN result.
    """
    if not callable(func):
        raise InvalidInputError(f"`func` must be callable; got {type(func).__name__}.")
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise InvalidInputError(f"`y0` must be a floating-point tensor (a tuple of tensors is not supported); got "
                                f"{type(y0).__name__}.")
    if event_fn is not None:
        raise UnsupportedError("`event_fn` (torchdiffeq's event handling) is not implemented in crossode.")
    if stats is not None and not isinstance(stats, Stats):
        raise InvalidInputError(f"`stats` must be a crossode.Stats or None; got {type(stats).__name__}.")
    if sensitivity is None:
        sensitivity = Direct()
    ts = _times(t)
    cfg = resolve(ts, method=method, rtol=rtol, atol=atol, options=options, solver=solver, step=step)
    solver, step = cfg.solver, cfg.step
    check_pair(solver, sensitivity)
    if isinstance(solver, ALF):
        # ALF/MALI lives in `_alf.py`/`_mali.py`, which validates `t` itself and differentiates w.r.t. times.
        from ._alf import odeint_alf

        if not isinstance(t, torch.Tensor):
            t = torch.tensor(ts, dtype=torch.float64, device=y0.device)
        return odeint_alf(func, y0, t, params=params, solver=solver, sensitivity=sensitivity, step=step, stats=stats)
    params = resolve_params(func, params)
    reason = check_config(solver, sensitivity, step)
    if reason is not None:
        raise UnsupportedError(reason)
    tab = cfg.tableau or TABLEAUX[type(solver)]
    spec = SolveSpec(func, tab, step, ts[0], ts[-1], ts, params, stats)
    time_grad = torch.is_grad_enabled() and isinstance(t, torch.Tensor) and t.requires_grad
    z0 = y0
    if time_grad:
        field = spec.field(y0.device)
        with torch.no_grad():
            tg = TimeGrad(func, ts, stats, field(ts[0], y0.detach()))
        add_stat(stats, "nfe_forward", field.nfe)
        z0 = StartTime.apply(t, y0, tg)
    if torch.is_grad_enabled() and not isinstance(sensitivity, Direct):
        # One evaluation with a graph at (t0, y0): does func use a tensor needing grad that is not in params?
        field = spec.field(y0.device)
        with torch.enable_grad():
            check_params_declared(field(ts[0], z0.detach()), params, sensitivity)
        add_stat(stats, "nfe_forward", field.nfe)
    ys = solve(spec, z0, sensitivity)
    if time_grad:  # y(t0) is y0 itself (no t0 dependence); the other rows get their dL/dt_i
        ys = torch.cat([y0.unsqueeze(0), SaveTimes.apply(t, ys[1:], tg)])
    return ys


def odeint_adjoint(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    t: torch.Tensor | Sequence[float],
    *,
    rtol: float | None = None,
    atol: float | None = None,
    method: str | None = None,
    options: dict | None = None,
    event_fn: None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    solver: AbstractSolver | None = None,
    step: AbstractStepControl | None = None,
    stats: Stats | None = None,
) -> torch.Tensor:
    """torchdiffeq's ``odeint_adjoint``: :func:`odeint` with ``sensitivity=Backsolve()`` (the continuous adjoint:
    memory independent of the number of steps, gradient accurate to the tolerance).

    Same arguments as :func:`odeint`; ``adjoint_params`` are the tensors that receive gradients (default: as
    ``params`` in :func:`odeint`); ``adjoint_rtol``, ``adjoint_atol``, ``adjoint_method`` and
    ``adjoint_options`` are accepted when equal to the forward settings (crossode's backward solve uses the
    forward solver and tolerances) and refused otherwise.
    """
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise InvalidInputError(f"`y0` must be a floating-point tensor (a tuple of tensors is not supported); got "
                                f"{type(y0).__name__}.")
    cfg = resolve(_times(t), method=method, rtol=rtol, atol=atol, options=options, solver=solver, step=step)
    sensitivity = adjoint_sensitivity(cfg, method=method, rtol=rtol, atol=atol, options=options,
                                      adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                                      adjoint_method=adjoint_method, adjoint_options=adjoint_options)
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, event_fn=event_fn,
                  solver=solver, sensitivity=sensitivity, step=step, params=adjoint_params, stats=stats)

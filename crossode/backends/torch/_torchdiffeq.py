"""torchdiffeq's keywords -> crossode descriptors: the ONE mapping behind ``crossode.torch.odeint(..., rtol=,
atol=, method=, options=)`` and ``odeint_adjoint(..., adjoint_params=)``.

Either spelling may be used, and the two mix (``method="dopri5", sensitivity=Backsolve()``), but each setting is
given once: ``method`` or ``solver``; ``rtol``/``atol``/the step options or ``step``.

================================================  =================================================================
torchdiffeq                                       crossode
================================================  =================================================================
``method="dopri5"`` (default), ``"dopri8"``,      ``Dopri5()``, ``Dopri8()``, ``Bosh3()``, ``Heun()`` with
``"bosh3"``, ``"adaptive_heun"``                  ``Adaptive(rtol, atol)``
``method="euler"``, ``"midpoint"``, ``"heun2"``   ``Euler()``, ``Midpoint()``, ``Heun()`` with ``Fixed``
``method="rk4"``                                  torchdiffeq's ``rk4``: Kutta's 3/8 rule (``RK4_38_TABLEAU``),
                                                  with ``Fixed``; ``solver=RK4()`` is the classical tableau
fixed steps: ``options["step_size"]``             ``Fixed(dt=step_size)``: torchdiffeq's grid ``t0 + k*step_size``
                                                  ending at ``t[-1]``; without it one step per interval of ``t``
a crossode solver name (``"tsit5"``, ``"alf"``,   that solver (``Adaptive`` if it has an error estimate, else
``"heun"``, ``"rk4"`` is torchdiffeq's)           ``Fixed``)
``"fehlberg2"``, ``"heun3"``, ``"explicit_adams"``, rejected (:class:`~crossode.UnsupportedError`): not in crossode
``"implicit_adams"``, ``"fixed_adams"``,
``"scipy_solver"``
``rtol=1e-7``, ``atol=1e-9`` (torchdiffeq's       ``Adaptive(rtol=, atol=)``: numbers or one-element tensors (per-
defaults, also crossode's when ``step`` is not    component tolerances are rejected); ignored by fixed-step methods,
given)                                            as in torchdiffeq
``options["first_step"]``                         ``Adaptive(dt0=)``
``options["max_num_steps"]``                      ``Adaptive(max_steps=)`` (torchdiffeq counts accepted steps,
                                                  crossode accepted + rejected)
``safety=0.9``, ``ifactor=10``, ``dfactor=0.2``,  accepted at exactly these values (crossode's controller and
``min_step=0``, ``max_step=inf``,                 float64 times are torchdiffeq's defaults); other values rejected
``dtype=torch.float64``, ``perturb=False``
``interp="linear"`` / ``"cubic"`` (fixed steps)   accepted; no effect: crossode steps onto every ``t``
``norm``, ``step_t``, ``jump_t``,                 rejected (``UnsupportedError``), with the reason
``grid_constructor``, ``event_fn``, tuple ``y0``
``odeint_adjoint(...)``                           ``sensitivity=Backsolve()`` (the continuous adjoint, error
                                                  control over the whole augmented state like torchdiffeq's)
``adjoint_params``                                ``params``
``adjoint_rtol``, ``adjoint_atol``,               accepted when equal to the forward settings (Backsolve solves
``adjoint_method``, ``adjoint_options``           backwards with the forward solver and tolerances); else rejected
``t.requires_grad``                               supported by every method: the continuous-flow gradient
                                                  ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>``, ``dL/dt_0 = -<a(t_0), f(t_0,
                                                  y_0)>``, as torchdiffeq's adjoint computes it
================================================  =================================================================

What remains different, so results agree to the tolerance rather than to round-off: adaptive steps are shortened
to land on every ``t`` where torchdiffeq steps past it and interpolates; fixed steps with a ``step_size`` whose
grid misses some ``t`` insert those ``t`` as step boundaries where torchdiffeq interpolates. On the same grid the
fixed-step methods (``euler``, ``midpoint``, ``heun2``, ``rk4``) give torchdiffeq's solution to round-off.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..._errors import InvalidInputError, UnsupportedError, fmt_choices
from ..._sensitivity import Backsolve
from ..._solvers import (
    RK4,
    SOLVERS,
    AbstractSolver,
    AbstractStepControl,
    Adaptive,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Heun,
    Midpoint,
)
from ..._tableaux import RK4_38_TABLEAU, ButcherTableau

__all__ = ["ADAPTIVE_METHODS", "FIXED_METHODS", "NOT_IMPLEMENTED", "DEFAULT_RTOL", "DEFAULT_ATOL", "Resolved",
           "resolve", "adjoint_sensitivity"]

DEFAULT_RTOL, DEFAULT_ATOL = 1e-7, 1e-9
"""torchdiffeq's default tolerances, also ``odeint``'s whenever ``step`` is not given."""

ADAPTIVE_METHODS: dict[str, type] = {"dopri5": Dopri5, "dopri8": Dopri8, "bosh3": Bosh3, "adaptive_heun": Heun}
FIXED_METHODS: dict[str, type] = {"euler": Euler, "midpoint": Midpoint, "heun2": Heun, "rk4": RK4}
NOT_IMPLEMENTED = ("fehlberg2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver")

_AT_DEFAULT = {  # options accepted only at the value crossode implements (torchdiffeq's default)
    "safety": 0.9, "ifactor": 10.0, "dfactor": 0.2, "min_step": 0.0, "max_step": math.inf, "perturb": False,
    "dtype": torch.float64,
}
_ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "safety", "ifactor", "dfactor", "min_step", "max_step", "dtype")
_FIXED_OPTIONS = ("step_size", "perturb", "interp")
_STEP_OPTIONS = ("first_step", "max_num_steps", "step_size")  # set the steps: not together with `step=`
_NOT_IMPLEMENTED_OPTIONS = {
    "norm": "crossode's error norm is the RMS over every state entry (torchdiffeq's default)",
    "step_t": "adaptive steps already land on every time in `t`",
    "jump_t": "adaptive steps already land on every time in `t`",
    "grid_constructor": "fixed steps are `options['step_size']` or one per interval of `t`",
}


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The crossode settings of one call: ``solver`` and ``step`` descriptors, and ``tableau`` when the steps use
    other coefficients than ``solver``'s own (torchdiffeq's ``rk4``: Kutta's 3/8 rule), else ``None``."""

    solver: AbstractSolver
    step: AbstractStepControl
    tableau: ButcherTableau | None = None


def _number(name: str, value) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UnsupportedError(f"`{name}` must be one number; per-component values (a tensor of shape "
                                   f"{tuple(value.shape)}) are not supported.")
        if value.requires_grad:
            raise InvalidInputError(f"`{name}` cannot require grad.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"`{name}` must be a positive finite number; got {value!r}.")
    return float(value)


def _method(method) -> tuple[AbstractSolver, bool, ButcherTableau | None]:
    """(descriptor, fixed steps?, tableau override) for a torchdiffeq or crossode method name."""
    if not isinstance(method, str):
        raise InvalidInputError(f"`method` must be a method name (a string); got {type(method).__name__}: "
                                f"{method!r}. Pass a crossode descriptor as `solver=` instead.")
    name = method.lower()
    if name in ADAPTIVE_METHODS:
        return ADAPTIVE_METHODS[name](), False, None
    if name in FIXED_METHODS:
        return FIXED_METHODS[name](), True, RK4_38_TABLEAU if name == "rk4" else None
    if name in NOT_IMPLEMENTED:
        raise UnsupportedError(f"`method={method!r}` (torchdiffeq) is not implemented in crossode; use one of "
                               f"{fmt_choices([*ADAPTIVE_METHODS, *FIXED_METHODS])} or a crossode solver "
                               f"({fmt_choices(SOLVERS)}).")
    if name in SOLVERS:
        solver = SOLVERS[name]()
        return solver, not solver.adaptive, None
    raise InvalidInputError(f"Unknown `method={method!r}`; expected a torchdiffeq method "
                            f"({fmt_choices([*ADAPTIVE_METHODS, *FIXED_METHODS])}) or a crossode solver "
                            f"({fmt_choices(SOLVERS)}).")


def _same(value, default) -> bool:
    if isinstance(default, (bool, torch.dtype)):
        return value == default and type(value) is type(default)
    if isinstance(value, bool):
        return False
    try:
        return float(value) == default
    except (TypeError, ValueError):
        return False


def _check_options(options, fixed: bool, solver: AbstractSolver) -> dict:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidInputError(f"`options` must be a dict; got {type(options).__name__}.")
    allowed = _FIXED_OPTIONS if fixed else _ADAPTIVE_OPTIONS
    for key, value in options.items():
        if key in _NOT_IMPLEMENTED_OPTIONS:
            raise UnsupportedError(f"options[{key!r}] is not supported: {_NOT_IMPLEMENTED_OPTIONS[key]}.")
        if key not in allowed:
            kind = "fixed-step" if fixed else "adaptive"
            raise InvalidInputError(f"options[{key!r}] is not an option of the {kind} method {solver.name!r}; "
                                    f"allowed: {', '.join(allowed)}.")
        if key in _AT_DEFAULT and not _same(value, _AT_DEFAULT[key]):
            raise UnsupportedError(f"options[{key!r}]={value!r} is not supported: crossode implements only "
                                   f"{key}={_AT_DEFAULT[key]!r}.")
        if key == "interp" and value not in ("linear", "cubic"):
            raise InvalidInputError(f"options['interp'] must be 'linear' or 'cubic'; got {value!r}.")
    return options


def resolve(ts: list, *, method=None, rtol=None, atol=None, options=None, solver=None, step=None) -> Resolved:
    """The crossode ``solver``/``step`` (and tableau) of a call that may use torchdiffeq's ``method``, ``rtol``,
    ``atol``, ``options`` and crossode's ``solver``, ``step``, on the times ``ts`` (floats), per the module's
    table. Raises :class:`InvalidInputError` / :class:`UnsupportedError` naming the argument and what is allowed."""
    tableau = None
    if method is not None and solver is not None:
        raise InvalidInputError("give the solver once: `method=` (a name, torchdiffeq's spelling) or `solver=` "
                                f"(a crossode descriptor); got method={method!r} and solver={solver!r}.")
    if solver is not None:
        if not isinstance(solver, AbstractSolver):
            raise InvalidInputError(f"`solver` must be a crossode solver descriptor such as crossode.Dopri5(); got "
                                    f"{solver!r}. Pass a name as `method=` instead.")
        fixed = not solver.adaptive
    else:
        solver, fixed, tableau = _method("dopri5" if method is None else method)
    if step is not None:
        fixed = isinstance(step, Fixed)
    options = _check_options(options, fixed, solver)
    step_keys = [k for k in _STEP_OPTIONS if k in options]
    if step is not None:
        if not isinstance(step, (Adaptive, Fixed)):
            raise InvalidInputError(f"`step` must be Adaptive(...) or Fixed(dt); got {step!r}.")
        given = [f"`{k}`" for k, v in (("rtol", rtol), ("atol", atol)) if v is not None]
        given += [f"options[{k!r}]" for k in step_keys]
        if given:
            raise InvalidInputError(f"give the steps once: `step={step!r}` or {' / '.join(given)}, not both.")
        return Resolved(solver, step, tableau)
    if fixed:
        dt = options.get("step_size")
        if dt is None:  # torchdiffeq: one step per interval of t; crossode: one step over the span with every t
            dt = abs(ts[-1] - ts[0])  # inserted as a step boundary, i.e. the same grid
        return Resolved(solver, Fixed(dt=_number("options['step_size']", dt)), tableau)
    kw = {"rtol": DEFAULT_RTOL if rtol is None else _number("rtol", rtol),
          "atol": DEFAULT_ATOL if atol is None else _number("atol", atol)}
    if options.get("first_step") is not None:
        kw["dt0"] = _number("options['first_step']", options["first_step"])
    if "max_num_steps" in options:
        n = options["max_num_steps"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidInputError(f"options['max_num_steps'] must be a positive integer; got {n!r}.")
        kw["max_steps"] = n
    return Resolved(solver, Adaptive(**kw), tableau)


def adjoint_sensitivity(resolved: Resolved, *, method=None, rtol=None, atol=None, options=None, adjoint_rtol=None,
                        adjoint_atol=None, adjoint_method=None, adjoint_options=None) -> Backsolve:
    """torchdiffeq's ``odeint_adjoint`` as ``Backsolve()``. Its ``adjoint_*`` settings are accepted only when they
    equal the forward ones (crossode's backward solve uses the forward solver and tolerances)."""
    step = resolved.step
    forward = {"adjoint_rtol": getattr(step, "rtol", rtol), "adjoint_atol": getattr(step, "atol", atol)}
    for name, value in (("adjoint_rtol", adjoint_rtol), ("adjoint_atol", adjoint_atol)):
        if value is not None and _number(name, value) != forward[name]:
            raise UnsupportedError(f"`{name}={value!r}` differs from the forward setting ({forward[name]!r}); "
                                   "crossode's Backsolve integrates backwards with the forward solver and "
                                   "tolerances.")
    if adjoint_method is not None:
        name = adjoint_method.lower() if isinstance(adjoint_method, str) else adjoint_method
        same = name == (method.lower() if isinstance(method, str) else method) or (
            method is None and name == resolved.solver.name)
        if not same:
            raise UnsupportedError(f"`adjoint_method={adjoint_method!r}` differs from the forward method "
                                   f"({method or resolved.solver.name!r}); crossode's Backsolve integrates "
                                   "backwards with the forward solver.")
    if adjoint_options not in (None, {}) and adjoint_options != (options or {}):
        raise UnsupportedError(f"`adjoint_options={adjoint_options!r}` differ from `options={options!r}`; "
                               "crossode's Backsolve uses the forward options (its error norm covers the whole "
                               "augmented state).")
    return Backsolve()

"""Asynchronous leapfrog (ALF) stepping for PyTorch, shared by every gradient method.

The state is the pair ``(z, v)``: ``z`` the ODE state, ``v`` a carried velocity with ``v0 = f(t0, z0)``. One step
of size ``h`` from ``s`` (Zhuang et al., ICLR 2021, Algorithm 2; ``shared/notes/mali.md`` §1)::

    k  = z + (h/2) v;   u = f(s + h/2, k);   v' = v + 2 eta (u - v);   z' = k + (h/2) v'

and its exact inverse (Algorithm 3) needs one evaluation of ``f`` at ``k = z' - (h/2) v'``.

Gradient methods (all discretise-then-optimise, all on the *same* steps, so they agree to round-off):

- :class:`~crossode.Direct`: autograd through :func:`alf_step` (graph grows with the number of steps);
- :class:`~crossode.MALI`: :mod:`._mali`, inverse steps in the backward pass, memory independent of the steps;
- :class:`~crossode.Checkpointed`: :mod:`._mali`, stores the midpoint ``k`` of every step (ACA-style).

Times are float64 Python numbers whatever the state dtype; every accepted step is recorded as a point of a float64
grid and both passes derive ``h = grid[n+1] - grid[n]`` from it, so forward and backward use bit-identical steps
and the last point is exactly ``t[-1]``. ``f`` receives the time as a 0-dim float64 tensor on the state's device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..._errors import InvalidInputError, UnsupportedError
from ..._record import SolverFailure, Stats
from ..._sensitivity import MALI, AbstractSensitivity, Checkpointed, Direct
from ..._solvers import ALF, Adaptive, Fixed, fixed_grid
from ._control import StepController, initial_step, rms_norm
from ._persample import per_sample_reason
from ._solve import resolve_params

__all__ = ["odeint_alf", "alf_step", "alf_inverse", "alf_step_vjp"]

# Step-size control is _control.py's (RMS norm, I-controller with safety 0.9 and factors in [0.2, 10], Hairer's
# initial step). ALF's estimate h*(u - v) compares the midpoint slope with the carried velocity; the two agree to
# O(h), so the estimate is O(h^2) and its order (the controller's q, exponent -1/q) is 2: the exponent -1/2 that
# TorchDiffEqPack uses with `order = 1`. The order-2 *method* exponent (-1/3) was measured too: both track rtol
# proportionally with the same work-precision; -1/3 under-corrects this O(h^2) estimate.
ERROR_ORDER = 2
# After an accepted step the next proposal is h * min(10, 0.9 err^(-1/2)): it may shrink (by at most 0.9, when
# err is close to 1), as in TorchDiffEqPack and SciPy, not h * clip(.., 1, 10) as for RK (Diffrax's never-shrink
# rule). Why: ALF's carried velocity v has a parasitic component that alternates in sign from step to step and
# enters the estimate h (u - v) directly; a step-size sequence that holds h until a rejection and then cuts it
# (the never-shrink rule) changes the smooth part of u - v abruptly and feeds the parasitic mode, which then
# limits the step. Measured (rtol 1e-6, atol 1e-8, no save times): cubic spiral over [0, 5] 52314 accepted + 5369
# rejected steps with the never-shrink rule, 13183 + 0 with this one (TorchDiffEqPack: 13184), final-state error
# 8.3e-6 vs 1.0e-5; over [0, 25] max_steps=1e6 reached at t = 15.6 before, 25176 steps now. Summed over rtol
# 1e-3..1e-6 and 0/3/9 save times: spiral 508k -> 212k steps, van der Pol 268k -> 174k, Lotka-Volterra
# 494k -> 229k, FitzHugh-Nagumo 17.8k -> 18.3k.
ACCEPT_FACTOR_MIN = 0.0
# Failure thresholds: a step below MIN_STEP_REL * max(|t|, |t1 - t0|) or this many rejections in a row is a
# step-size collapse (what undamped ALF does on decaying modes, mali.md §3) and is reported, never jumped over.
MIN_STEP_REL = 1e-12
MAX_CONSECUTIVE_REJECTIONS = 30
PARASITIC_RATIO = 100.0
COLLAPSE_RATIO = 100.0
PARASITIC_STEPS = 20


@dataclasses.dataclass
class _Counter:
    """Work counters of one solve, folded into the caller's :class:`Stats` at the end of each pass."""

    nfe_forward: int = 0
    nfe_backward: int = 0
    accepted: int = 0
    rejected: int = 0


def _add_stats(stats: Stats | None, *, fwd: int = 0, bwd: int = 0, acc: int = 0, rej: int = 0) -> None:
    if stats is None:
        return
    stats.nfe_forward = (stats.nfe_forward or 0) + fwd
    stats.nfe_backward = (stats.nfe_backward or 0) + bwd
    stats.steps_accepted = (stats.steps_accepted or 0) + acc
    stats.steps_rejected = (stats.steps_rejected or 0) + rej


def _time(s: float, like: torch.Tensor) -> torch.Tensor:
    # float64 like the rest of the PyTorch backend (a 0-d tensor does not promote a float32 state); torch.full
    # avoids a host-to-device copy on CUDA.
    return torch.full((), s, dtype=torch.float64, device=like.device)


# ------------------------------------------------------------------------------------------------- the step


def alf_step(func: Callable, s: float, h: float, z: torch.Tensor, v: torch.Tensor, eta: float):
    """One ALF step of size ``h`` from time ``s``; returns ``(z', v', u, k)`` (``u = f(s + h/2, k)``). 1 evaluation."""
    c = 0.5 * h
    k = z + c * v
    u = func(_time(s + c, z), k)
    # u + u == 2.0 * u bit for bit (and in autograd), but a tensor-tensor add is cheaper than a scalar multiply
    v1 = (u + u) - v if eta == 1.0 else v + (2.0 * eta) * (u - v)
    z1 = k + c * v1
    return z1, v1, u, k


def _inverse_from_u(z1, v1, u, k, h: float, eta: float):
    v = (u + u) - v1 if eta == 1.0 else (v1 - (2.0 * eta) * u) / (1.0 - 2.0 * eta)
    z = k - (0.5 * h) * v
    return z, v


def alf_inverse(func: Callable, s: float, h: float, z1: torch.Tensor, v1: torch.Tensor, eta: float):
    """Exact inverse of :func:`alf_step`: the state at ``s`` from the state at ``s + h``. 1 evaluation.

    Pass the step's start time ``s`` and the same float64 ``h`` (not ``s + h`` and ``h``): the midpoint time is
    then ``s + h/2`` bit for bit, as in the forward step.
    """
    c = 0.5 * h
    k = z1 - c * v1
    u = func(_time(s + c, z1), k)
    return _inverse_from_u(z1, v1, u, k, h, eta)


# The autograd engine behind torch.autograd.grad. Its Python wrapper (argument normalisation, shape checks through
# symbolic-shape helpers, torch-function dispatch) costs ~40 us per call, as much as the whole VJP of a small f;
# MALI and Checkpointed make one such call per step, on plain tensors, so they call the engine directly.
_ENGINE = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)


def _vjp_fast_ok(params) -> bool:
    """Whether :func:`_vjp` may bypass ``torch.autograd.grad`` for these inputs (no ``__torch_function__``)."""
    return _ENGINE is not None and not torch.overrides.has_torch_function(tuple(params))


def _vjp(u: torch.Tensor, inputs: tuple, g: torch.Tensor, fast: bool):
    """``torch.autograd.grad(u, inputs, g, allow_unused=True)``; ``fast``: call the engine directly."""
    if fast and type(u) is torch.Tensor and type(g) is torch.Tensor and u.shape == g.shape:
        return _ENGINE.run_backward((u,), (g,), False, False, inputs, True, False)
    return torch.autograd.grad(u, inputs, g, allow_unused=True)


def alf_step_vjp(func, params, s: float, h: float, k: torch.Tensor, a_z1, a_v1, eta: float, fast: bool = False):
    """Vector-Jacobian product of one ALF step, written around the single evaluation ``u = f(s + h/2, k)``.

    Given cotangents ``(a_z1, a_v1)`` of ``(z', v')`` returns ``(a_z, a_v, param_grads, u)``; ``u`` is the detached
    value of ``f`` at ``k`` (MALI reuses it for the inverse step, so a reverse step costs one evaluation and one
    VJP). ``params`` are the tensors ``func`` uses that need gradients; ``param_grads`` has ``None`` for unused ones.
    Chain rule of ``z' = k + (h/2) v'``, ``v' = (1 - 2 eta) v + 2 eta u``, ``k = z + (h/2) v``.
    ``fast``: call the autograd engine directly (see :func:`_vjp_fast_ok`). MALI's reverse sweep
    (``_mali._reverse_sweep``) inlines this function.
    """
    c = 0.5 * h
    b = a_v1 + c * a_z1  # total cotangent of v'
    with torch.enable_grad():
        kk = k.detach().requires_grad_(True)
        u = func(_time(s + c, k), kk)
        if u.requires_grad:
            # b + b == 2.0 * b bit for bit
            grads = _vjp(u, (kk, *params), (b + b) if eta == 1.0 else (2.0 * eta) * b, fast)
        else:  # f depends on neither the state nor the params
            grads = (None,) * (1 + len(params))
    a_k = a_z1 if grads[0] is None else a_z1 + grads[0]
    # eta = 1: (1 - 2 eta) b + c a_k == c a_k - b bit for bit
    a_v = c * a_k - b if eta == 1.0 else (1.0 - 2.0 * eta) * b + c * a_k
    return a_k, a_v, grads[1:], u.detach()


# ------------------------------------------------------------------------------------------ step control


def _rms(x: torch.Tensor) -> float:
    return math.sqrt(float(torch.mean(torch.abs(x) ** 2)))


def _norms(h, u, v, z, z1, rtol, atol, az=None, cpu64=None):
    """Error norm of the estimate ``h (u - v)``, the ratio ``rms(u - v) / rms(u)`` and ``|z1|``; one device sync.

    The same numbers as ``rms_norm(h * (u - v), z, z1, rtol, atol)`` and the two means of squares computed
    separately (bit for bit on CPU, single-threaded), from ONE stacked reduction: the rows ``(h (u - v) / scale,
    u - v, u, z1)`` squared, summed (``mean = sum / n`` exactly on CPU) and read with one ``tolist``. The ``z1``
    row stands in for ``rms_norm``'s ``+ 0 * sum(z1)`` (NaN when ``z1`` is not finite): a finite ``sum(z1^2)``
    implies a finite ``sum(z1)``, and only when it is not is ``sum(z1)`` computed. ``az`` is ``|z|`` when the
    caller has it (the accepted step's ``|z1|``); ``cpu64`` whether ``z`` is a non-empty float64 CPU tensor
    (the caller's constant; asking a tensor for its device costs microseconds). Call under ``torch.no_grad()``.
    """
    if cpu64 is None:
        cpu64 = _is_cpu64(z)
    d = u - v
    az1 = z1.abs()
    scale = torch.maximum(z.abs() if az is None else az, az1).mul_(rtol).add_(atol)
    st = torch.stack((torch.mul(d, h).div_(scale), d, u, z1)).square_()
    if st.dim() != 2:
        st = st.view(4, -1)
    n = st.shape[1]
    if cpu64:
        e2, d2, u2, zsq = st.sum(1).tolist()
        e = math.sqrt(e2 / n)
        d2, u2 = d2 / n, u2 / n
    else:  # float32/half: mean and sqrt in the state dtype (CUDA: one sync, same numbers up to reduction order)
        m = st.mean(1)
        m[:1].sqrt_()
        e, d2, u2, zsq = m.tolist()
    # sum(z1^2) finite => sum(z1) finite (and 0 * it = 0); otherwise recompute rms_norm's term exactly (rare)
    err = e if math.isfinite(zsq) else e + 0.0 * float(z1.sum())
    rho = math.sqrt(d2 / u2) if u2 > 0 else (0.0 if d2 == 0 else math.inf)
    return err, rho, az1


def _is_cpu64(z: torch.Tensor) -> bool:
    return z.dtype == torch.float64 and z.device.type == "cpu" and z.numel() > 0


def _check_finite(z: torch.Tensor, s: float) -> None:
    if not bool(torch.isfinite(z).all()):
        raise SolverFailure("diverged", f"ALF: the state became non-finite at t={s!r}.")


# --------------------------------------------------------------------------------------------- marching


@dataclasses.dataclass
class Trajectory:
    """What a forward march produced: states at ``times[1:]``, the end ``(z, v)`` and the float64 step grid."""

    saves: list
    z: torch.Tensor
    v: torch.Tensor
    grid: np.ndarray  # float64 accepted step boundaries, grid[0] = t0, grid[-1] = t1
    save_steps: np.ndarray  # save_steps[i] = number of steps taken when times[i + 1] was reached


def march(func, z, v, times: Sequence[float], eta: float, step, counter: _Counter, visit=None) -> Trajectory:
    """Integrate from ``times[0]`` through every ``times[i]``; autograd records whatever grad mode is active.

    ``visit(n, k)`` is called with the midpoint ``k`` of every accepted step (used by ``Checkpointed``).
    Raises :class:`SolverFailure` on ``max_steps``, step-size collapse or a non-finite state.
    """
    if isinstance(step, Fixed):
        return _march_fixed(func, z, v, times, eta, step, counter, visit)
    return _march_adaptive(func, z, v, times, eta, step, counter, visit)


def _march_fixed(func, z, v, times, eta, step: Fixed, counter, visit) -> Trajectory:
    grid = fixed_grid(times[0], times[-1], step.dt, saveat=times[1:-1], max_steps=step.max_steps)
    n_steps = len(grid) - 1
    # fixed_grid places every save time exactly on the grid (two saves closer than 1e-10*dt share a point)
    index = {float(g): n for n, g in enumerate(grid)}
    save_steps = np.array(
        [index[s] if s in index else int(np.argmin(np.abs(grid - s))) for s in times[1:]], dtype=np.int64
    )
    is_save = np.zeros(len(grid), dtype=bool)
    is_save[save_steps] = True
    saves = []
    for n in range(n_steps):
        s = float(grid[n])
        z, v, _, k = alf_step(func, s, float(grid[n + 1]) - s, z, v, eta)
        counter.nfe_forward += 1
        counter.accepted += 1
        if visit is not None:
            visit(n, k)
        if is_save[n + 1]:
            _check_finite(z, float(grid[n + 1]))
            saves.append(z)
    return Trajectory(saves, z, v, np.asarray(grid, dtype=np.float64), save_steps)


def _march_adaptive(func, z, v, times, eta, step: Adaptive, counter, visit) -> Trajectory:
    rtol, atol = step.rtol, step.atol
    t0, t1 = times[0], times[-1]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    if step.dt0 is None:
        # reuses v0 = f(t0, z0) as f0: one extra evaluation
        h = initial_step(lambda s, y: func(_time(s, y), y), t0, z.detach(), v.detach(), ERROR_ORDER, rtol, atol,
                         direction)
        counter.nfe_forward += 1
    else:
        h = step.dt0
    h = min(h, span)
    control = StepController(ERROR_ORDER, rtol, atol, step.max_steps, accept_factor_min=ACCEPT_FACTOR_MIN)
    s = t0
    grid, saves, save_steps = [t0], [], []
    target = 1
    consecutive = parasitic = 0
    last_nonfinite = False
    h_max = 0.0
    grad_mode = torch.is_grad_enabled()  # Direct records the steps; the error norm never needs a graph
    az = None  # |z|, carried over from the accepted step's |z1|
    cpu64 = _is_cpu64(z)
    while target < len(times):
        t_next = times[target]
        remaining = abs(t_next - s)
        if h < MIN_STEP_REL * max(abs(s), span) and h < remaining:
            if last_nonfinite:
                raise SolverFailure("diverged", f"ALF: non-finite values near t={s!r}; the step size collapsed.")
            raise SolverFailure(
                "step_size_too_small",
                f"ALF: step size collapsed to {h:.3g} at t={s!r} after {counter.accepted} accepted and "
                f"{counter.rejected} rejected steps (undamped ALF is unstable on decaying modes; see the ALF docs).",
            )
        control.check_budget(s)
        landing = h >= remaining
        s_new = t_next if landing else s + direction * h
        hh = s_new - s  # the exact float64 step both passes use
        z1, v1, u, k = alf_step(func, s, hh, z, v, eta)
        counter.nfe_forward += 1
        if grad_mode:
            with torch.no_grad():
                err, rho, az1 = _norms(hh, u, v, z, z1, rtol, atol, az, cpu64)
        else:
            err, rho, az1 = _norms(hh, u, v, z, z1, rtol, atol, az, cpu64)
        accept, h_next = control.propose(abs(hh), err)
        if accept:
            counter.accepted += 1
            h_max = max(h_max, abs(hh))
            # Parasitic-mode detector: u = f(k) ~ f(z) while v should carry f(z) too; |u - v| >> |u| means v is
            # dominated by ALF's parasitic root, and a step 100x below the largest one so far means it is what
            # limits the step size. This is the exponential step collapse of undamped ALF on decaying modes
            # (mali.md §3); stop now rather than after max_steps (and never jump to t1).
            parasitic = parasitic + 1 if rho > PARASITIC_RATIO and abs(hh) < h_max / COLLAPSE_RATIO else 0
            if parasitic >= PARASITIC_STEPS:
                raise SolverFailure(
                    "step_size_too_small",
                    f"ALF: step size collapsed to {abs(hh):.3g} (largest accepted {h_max:.3g}) at t={s!r} after "
                    f"{counter.accepted} accepted steps: the carried velocity is dominated by ALF's parasitic mode "
                    f"(|u - v| = {rho:.3g} |u|). Undamped ALF is unstable on decaying modes; use another solver "
                    f"or a shorter horizon.",
                )
            if visit is not None:
                visit(len(grid) - 1, k)
            z, v, s, az = z1, v1, s_new, az1
            grid.append(s)
            if landing:
                saves.append(z)
                save_steps.append(len(grid) - 1)
                target += 1
            # a step shortened to land on a save time says nothing against the step proposed before it
            h = max(h_next, h) if landing and abs(hh) < h else h_next
            consecutive = 0
        else:
            counter.rejected += 1
            consecutive += 1
            last_nonfinite = not math.isfinite(err)
            if last_nonfinite and not bool(torch.isfinite(z).all() and torch.isfinite(v).all()):
                raise SolverFailure("diverged", f"ALF: the state became non-finite at t={s!r}.")
            h = h_next
            if consecutive >= MAX_CONSECUTIVE_REJECTIONS:
                raise SolverFailure(
                    "diverged" if last_nonfinite else "step_size_too_small",
                    f"ALF: {consecutive} consecutive rejected steps at t={s!r} (last error norm {err:.3g}, "
                    f"step {abs(hh):.3g}).",
                )
    return Trajectory(saves, z, v, np.asarray(grid, dtype=np.float64), np.asarray(save_steps, dtype=np.int64))


# ------------------------------------------------------------------------------------------------ entry


def _check_times(t: torch.Tensor) -> list[float]:
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() < 1:
        raise InvalidInputError(f"`t` must be a 1-D tensor of at least one time; got {t!r}.")
    times = t.detach().to(device="cpu", dtype=torch.float64).tolist()
    if not all(math.isfinite(x) for x in times):
        raise InvalidInputError(f"`t` must be finite; got {times}.")
    pairs = list(zip(times, times[1:]))
    if pairs and not (all(b > a for a, b in pairs) or all(b < a for a, b in pairs)):
        raise InvalidInputError("`t` must be strictly increasing or strictly decreasing.")
    return times


def odeint_alf(
    func: Callable,
    y0: torch.Tensor,
    t: torch.Tensor,
    *,
    params: Sequence[torch.Tensor] | None = None,
    solver: ALF,
    sensitivity: AbstractSensitivity,
    step: Adaptive | Fixed,
    stats: Stats | None = None,
) -> torch.Tensor:
    """Solve ``dy/dt = func(t, y)`` with ALF and return the states at every ``t``, shape ``(len(t), *y0.shape)``.

    **Arguments:**
    - ``func``: ``func(t, y) -> dy/dt`` with ``t`` a 0-dim float64 tensor on ``y0``'s device and ``y`` like ``y0``
      (any shape; batches are just extra dimensions, the error norm is the RMS over all elements).
    - ``y0``: floating tensor; float32 and float64 on any device.
    - ``t``: 1-D, strictly monotone (decreasing integrates backwards); ``t[0]`` is the initial time and
      ``out[0] = y0``. If ``t.requires_grad``, its gradient is the continuous-flow one:
      ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` for ``i >= 1`` and ``dL/dt_0 = -<dL/dz0, f(t_0, y_0)>`` with ``dL/dz0``
      the total gradient reaching the start of the integration (through ``z0`` and ``v0``, excluding ``out[0]``).
    - ``params``: the tensors ``func`` uses that need gradients (default and rule: :func:`~.odeint.odeint`).
      MALI and Checkpointed return gradients only to ``y0`` and these; a tensor that requires grad, reaches
      ``v0 = func(t[0], y0)`` and is not listed raises :class:`~crossode.InvalidInputError`.
    - ``solver``: :class:`~crossode.ALF` (``eta``); ``step``: :class:`~crossode.Adaptive` or
      :class:`~crossode.Fixed` (grid :func:`~crossode.fixed_grid`); ``sensitivity``: ``Direct()``, ``MALI()`` or
      ``Checkpointed()`` (every step; an integer ``checkpoints`` is unsupported). ``Adaptive(batch_steps=
      "per_sample")`` with Direct or MALI steps every row of ``y0`` on its own (``_persample.py``; ``func`` then
      gets one time per row, a float64 tensor of shape ``(rows,)``).
    - ``stats``: counters are *added* to it: forward NFE = accepted + rejected + 1 (``v0``) + 1 (automatic
      initial step, which reuses ``v0``); MALI backward NFE = 2 per step (one evaluation, one VJP) + 1 (VJP of
      ``v0``) + one evaluation per save time when ``t`` requires grad.

    **Raises:** :class:`~crossode.SolverFailure` with status ``max_steps``, ``step_size_too_small`` or ``diverged``
    from the forward call (``step_size_too_small`` also when the step has shrunk 100x below the largest accepted
    one while ``|u - v| > 100 |u|`` for 20 steps: undamped ALF's parasitic mode growing on decaying dynamics);
    with MALI, ``reconstruction_error`` (and ``diverged``) from the backward call (``loss.backward()`` /
    ``torch.autograd.grad`` re-raise it unchanged, so catch it around them), when the reconstructed initial state
    drifts from the true one beyond the limit of :func:`crossode._sensitivity.mali_reconstruction` (``MALI`` docs).
    :class:`~crossode.UnsupportedError` for an unsupported sensitivity; ``InvalidInputError`` for bad inputs.
    """
    from . import _mali  # the autograd Functions live there and import this module's stepping code

    if not isinstance(solver, ALF):
        raise InvalidInputError(f"`solver` must be ALF(); got {solver!r}.")
    if not isinstance(step, (Adaptive, Fixed)):
        raise InvalidInputError(f"`step` must be Adaptive(...) or Fixed(...); got {step!r}.")
    if not isinstance(sensitivity, (MALI, Direct, Checkpointed)):
        raise UnsupportedError(
            f"`solver=ALF()` in PyTorch supports sensitivity Direct(), MALI() or Checkpointed(); got {sensitivity!r}."
        )
    if isinstance(sensitivity, Checkpointed) and (sensitivity.checkpoints is not None or sensitivity.vjp != "auto"):
        raise UnsupportedError(
            f"PyTorch ALF supports only `Checkpointed()` (every step, vjp='auto'); got {sensitivity!r}."
        )
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise InvalidInputError(f"`y0` must be a floating-point tensor; got {type(y0).__name__}.")
    reason = per_sample_reason(solver, sensitivity, step)
    if reason is not None:
        raise UnsupportedError(reason)
    times = _check_times(t)
    params = resolve_params(func, params)
    if len(times) == 1:
        return y0.unsqueeze(0)
    return _mali.solve(func, y0, t, times, params, solver.eta, sensitivity, step, stats)

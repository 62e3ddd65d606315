"""The PyTorch backend's step-size controller as a Diffrax controller, so adaptive grids agree across backends.

:class:`LandingController` is ``crossode/backends/torch/_control.py::StepController`` plus the landing rule of
``crossode/backends/torch/_rk.py::integrate``, step for step:

- error norm ``RMS(err / (atol + rtol * max(|y|, |y_new|)))`` over all elements (``NaN`` when ``y_new`` is not
  finite); accept when ``<= 1``;
- next step ``h * clip(0.9 * norm**(-1/q), 1, 10)`` after an accepted step, ``h * clip(0.9 * norm**(-1/q), 0.2,
  0.9)`` after a rejected one (``q`` = order of the error estimate, crossode's tableau value); ``10`` for a zero
  norm, ``0.2`` for a non-finite one. ``h`` is the step just attempted (the proposal itself when the step was not
  shortened, so no ``t1 - t0`` round-off enters the sequence);
- **steps land exactly on every save time and on t1**: a proposal that reaches a stop, or falls short of it by at
  most ``1e-10`` of the remaining interval, is shortened to end on it; after an accepted shortened step the next
  proposal is ``max(controller proposal, proposal before shortening)`` (a short step to a save time does not slow
  the solve down);
- a rejected step whose next proposal is below :func:`crossode._stepping.min_step_size` (ten float64 spacings at
  ``max(|t0|, |t1|)``) stops the solve with
  ``RESULTS.dt_min_reached`` (PyTorch: ``SolverFailure('step_size_too_small')``).

Relation to Diffrax's own controllers. ``ClipStepSizeController(PIDController(rtol, atol, pcoeff=0, icoeff=1,
factormin=0.2, factormax=10, safety=0.9, error_order=q), step_ts=save_times)`` does the same arithmetic (norm with
``max(|y0|, |y1|)``, factor limits ``[1, 10]`` after acceptance and ``[0.2, 0.9]`` after rejection, no special rule
after rejections), except that (i) it multiplies the *shortened* step after landing on a save time, so the steps
after each save time are smaller than PyTorch's, (ii) it accepts only ``norm < 1``, (iii) it snaps to ``t1`` only
within 100 ulps (PyTorch: ``1e-10`` of the remaining interval, at every stop) and (iv) it has no minimum step. With
a single save time at ``t1`` and no ties, (i) and (iii) never apply and the two controllers give the same grid
(``lotka_volterra`` saved at ``t1`` only, rtol 1e-6: Dopri5 82/21 and Tsit5 91/18 accepted/rejected steps with
all three). With save times inside the interval they differ: ``cubic_spiral`` (29 save times) Dopri5 takes 67/15
steps here and in PyTorch, 53/12 with ``PIDController`` and ``SaveAt(ts)`` interpolation, 67/9 with
``ClipStepSizeController(PIDController)``; ``lotka_volterra`` (4 save times) 82/22, 82/21 and 83/22.

Step-size selection is never differentiated (``stop_gradient``, as in Diffrax and the PyTorch backend).

:class:`GridController` is the fixed-step counterpart for solves that are split into several ``diffeqsolve``
calls (``BacksolveAdjoint`` solves backwards between consecutive save times): it steps on a given grid in either
direction, so the backward solve walks the forward grid in reverse, as the PyTorch backend does.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import PyTree

from ..._stepping import min_step_size

__all__ = ["LandingController", "make_landing_controller", "GridController", "propose", "scaled_rms", "SAFETY", "FACTOR_MIN",
           "FACTOR_MAX", "LANDING_SLACK"]

SAFETY = 0.9
FACTOR_MIN = 0.2
FACTOR_MAX = 10.0
LANDING_SLACK = 1e-10  # land on a stop when the proposal falls short of it by at most this fraction


def scaled_rms(err, y0, y1, rtol, atol):
    """``RMS(err / (atol + rtol*max(|y0|, |y1|))) + 0*sum(y1)`` (``NaN`` iff ``y1`` is not finite), no gradient."""
    err, y0, y1 = (jax.lax.stop_gradient(x) for x in (err, y0, y1))
    scale = atol + rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))
    return jnp.sqrt(jnp.mean(jnp.square(err / scale))) + 0.0 * jnp.sum(y1)


def propose(h, norm, accept, q, accept_factor_min=1.0):
    """The PyTorch ``StepController.propose`` factor rule: ``h * factor`` (``h`` a magnitude); ``accept_factor_min``
    as there (1: an accepted step never shrinks the next; ALF passes 0)."""
    finite = jnp.isfinite(norm)
    raw = SAFETY * jnp.where(finite & (norm > 0), norm, 1.0) ** (-1.0 / q)
    f_acc = jnp.where(norm == 0, FACTOR_MAX, jnp.clip(raw, accept_factor_min, FACTOR_MAX))
    f_rej = jnp.where(finite, jnp.clip(raw, FACTOR_MIN, SAFETY), FACTOR_MIN)
    return h * jnp.where(accept, f_acc, f_rej)


class LandingController(diffrax.AbstractAdaptiveStepSizeController):
    """See the module docstring. ``stops``: save times after ``t0`` and ``t1``, sorted in integration order.

    State: ``(h, landing, index)``: the current proposal (a positive magnitude), whether the step being attempted
    was shortened to land on ``stops[index]``, and the index of the next stop.
    """

    rtol: float
    atol: float
    stops: jax.Array
    error_order: int
    h_min: float
    norm: Callable[[PyTree], jax.Array] = optx.rms_norm  # for implicit solvers' root finders (Diffrax protocol)

    def wrap(self, direction):
        # Diffrax integrates backwards in time as forwards in -t; negation is exact, so the grid is the same.
        return LandingController(self.rtol, self.atol, self.stops * direction, self.error_order, self.h_min,
                                 self.norm)

    def _attempt(self, t, h, index):
        n = self.stops.shape[0]
        stop = self.stops[jnp.minimum(index, n - 1)]
        remaining = stop - t
        landing = h >= remaining * (1.0 - LANDING_SLACK)
        return jnp.where(landing, stop, t + h), landing

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is None:
            raise ValueError("LandingController needs an explicit dt0 (crossode computes Hairer's initial step).")
        h = jnp.abs(jnp.asarray(dt0, jnp.result_type(t0)))
        index = jnp.asarray(0, jnp.int32)
        tnext, landing = self._attempt(t0, h, index)
        return tnext, (h, landing, index)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        h, landing, index = controller_state
        h_try = jnp.where(landing, t1 - t0, h)
        errs = jax.tree_util.tree_leaves(y_error)
        ys0 = jax.tree_util.tree_leaves(y0)
        ys1 = jax.tree_util.tree_leaves(y1_candidate)
        err = jnp.concatenate([jnp.ravel(x) for x in errs])
        norm = scaled_rms(err, jnp.concatenate([jnp.ravel(x) for x in ys0]),
                          jnp.concatenate([jnp.ravel(x) for x in ys1]), self.rtol, self.atol)
        accept = norm <= 1.0
        h_next = propose(h_try, norm, accept, self.error_order)
        h_next = jnp.where(accept & landing, jnp.maximum(h_next, h), h_next)
        h_next = jax.lax.stop_gradient(h_next)
        result = diffrax.RESULTS.where(
            jnp.logical_not(accept) & (h_next < self.h_min), diffrax.RESULTS.dt_min_reached,
            diffrax.RESULTS.successful,
        )
        next_t0 = jnp.where(accept, t1, t0)
        index = jnp.where(accept & landing, index + 1, index)
        next_t1, next_landing = self._attempt(next_t0, h_next, index)
        return accept, next_t0, next_t1, False, (h_next, next_landing, index), result


def make_landing_controller(rtol: float, atol: float, t0: float, t1: float, saveat: np.ndarray,
                            error_order: int) -> LandingController:
    """The controller for a solve from ``t0`` to ``t1`` that must end steps on every time of ``saveat``."""
    forward = t1 > t0
    stops = [float(s) for s in np.asarray(saveat, dtype=np.float64) if (s > t0 if forward else s < t0)]
    if not stops or stops[-1] != t1:
        stops.append(float(t1))
    return LandingController(rtol, atol, jnp.asarray(stops, jnp.float64), int(error_order), min_step_size(t0, t1))


class GridController(diffrax.AbstractStepSizeController):
    """Step from grid point to grid point, whatever the interval of the ``diffeqsolve`` call.

    ``ts``: the grid, strictly increasing, in the time variable of the solve it is given to (Diffrax negates time
    for a backward solve and calls :meth:`wrap`, which negates and reverses the grid to match). A step from ``t``
    ends at the first grid point after ``t`` (Diffrax clips it to the interval's end), so every call in a sequence
    of calls between grid points (``BacksolveAdjoint``'s segments between save times) takes exactly the grid's
    steps; ``diffrax.StepTo`` instead requires its grid to start and end at ``t0`` and ``t1`` of the call.
    Stateless (the state is a dummy ``0``), so the controller state Diffrax carries from one call to the next is
    harmless.
    """

    ts: jax.Array

    def wrap(self, direction):
        ts = self.ts * direction
        return GridController(jnp.where(direction > 0, ts, ts[::-1]))

    def _next(self, t):
        i = jnp.minimum(jnp.searchsorted(self.ts, t, side="right"), self.ts.shape[0] - 1)
        return self.ts[i]

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        if dt0 is not None:
            raise ValueError("GridController steps on its grid: pass dt0=None.")
        return self._next(t0), jnp.asarray(0, jnp.int32)

    def adapt_step_size(self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state):
        return True, t1, self._next(t1), False, controller_state, diffrax.RESULTS.successful

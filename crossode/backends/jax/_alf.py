"""Asynchronous leapfrog (ALF) in JAX: the step, its inverse, and the step loop shared by every ALF gradient.

State ``(z, v)`` with ``v0 = f(t0, z0)`` (evaluated by the caller, so its gradient path is ordinary autodiff).
One step of size ``h`` from ``s`` (Zhuang et al. 2021, Algorithm 2; ``eta`` = damping, 1 by default)::

    k = z + h/2 v;  u = f(s + h/2, k);  v' = v + 2 eta (u - v);  z' = k + h/2 v'

and its closed-form inverse (Algorithm 3), one evaluation of ``f`` each. The midpoint time is computed as
``s + h/2`` from the step's *start* time in both directions, so forward and inverse evaluate ``f`` at the same
float64 time.

Step control (adaptive) is the PyTorch backend's ALF controller (``crossode/backends/torch/_alf.py::
_march_adaptive`` with ``_control.py::StepController``), step for step, so both backends realise the same grid
(same accepted/rejected counts, checked in ``tests/test_cross_backend.py``). The step boundaries agree up to the
last-bit differences of the two backends' evaluations of ``f`` (PyTorch kernels against XLA, which contracts
``a*b + c`` into FMAs), amplified by the cancellation in ``u - v``: ~1e-12 relative over a few hundred steps,
~1e-9 after 27k steps (``lotka_volterra``, rtol 1e-6). An accept/reject decision could only differ where an
error norm ties with 1 at that level.

- first step: ``Adaptive.dt0`` or Hairer's initial step with ``f0 = f(t0, z0)`` (PyTorch reuses ``v0``; here
  :func:`crossode._stepping.initial_step` evaluates ``problem.rhs.f`` in NumPy at prepare time, equal up to
  round-off amplified by the ``f1 - f0`` cancellation, ~1e-11) and order ``q = 2``, clipped to ``|t1 - t0|``;
- error estimate ``err = h (u - v)`` (carried velocity against the midpoint slope, ``O(h^2)``: ``q = 2``,
  exponent ``-1/2``), scale ``atol + rtol * max(|z|, |z'|)``, RMS over all elements, ``NaN`` if ``z'`` is not
  finite; accept when ``<= 1``;
- next step ``|h| * min(0.9 err^(-1/2), 10)`` after an accepted step (10 if ``err == 0``; it may shrink by up
  to 0.9, as in TorchDiffEqPack: the never-shrink rule of the RK controllers feeds ALF's parasitic mode, see
  PyTorch's ``ACCEPT_FACTOR_MIN``; no special rule after a rejection) and ``|h| * clip(0.9 err^(-1/2), 0.2,
  0.9)`` after a rejected one (0.2 for a non-finite estimate), ``h`` being the step actually attempted;
- steps are shortened to land exactly on every save time and on ``t1`` when the proposal reaches it (no
  interpolation, no uncontrolled final step); after an accepted shortened step the next proposal is
  ``max(controller proposal, proposal before shortening)``;
- failures, checked in PyTorch's order: before an attempt, the step size has collapsed (``|h| < 1e-12 max(|t|,
  |t1 - t0|)`` and the next stop is farther than ``|h|``), then the attempt budget is spent; after an accepted
  step, the parasitic-mode detector (``|u - v| > 100 |u|`` in RMS while ``|h|`` is 100x below the largest accepted
  step, 20 accepted steps in a row); after a rejection, 30 rejections in a row.

The accepted trial is kept, so every attempt costs **one** evaluation. Step-size selection is
``stop_gradient``-ed, like Diffrax's controllers: gradients are those of the discrete map on the realised grid.

Failure codes (``info[0]``, statuses in :data:`FAIL_CODES`): 0 ok; 1 ``max_steps`` (accepted + rejected attempts);
2 ``step_size_too_small`` (collapse before an attempt, or 30 consecutive rejections); 3 ``diverged`` (the same two
conditions after a non-finite error estimate, as PyTorch's ``last_nonfinite``, or a non-finite state on a fixed
step); 4 ``step_size_too_small`` from the parasitic-mode detector.

Loop kinds: ``"lax"`` (forward solve, MALI forward, forward-mode AD), ``"checkpointed"`` (reverse-mode autodiff
through the steps with Equinox's checkpointed while loop; ``checkpoints >= steps`` stores every step).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import numpy as np

from ._control import propose, scaled_rms

__all__ = ["ALFConfig", "alf_step", "alf_inverse", "alf_loop", "FAIL_CODES"]

FAIL_CODES = {0: "ok", 1: "max_steps", 2: "step_size_too_small", 3: "diverged", 4: "step_size_too_small"}

# Controller constants: identical to the PyTorch backend's ALF (crossode/backends/torch/_alf.py); the factor
# rule is _control.propose (PyTorch's StepController: safety 0.9, factors [1, 10] / [0.2, 0.9]).
ERROR_ORDER = 2  # q of err = h (u - v); exponent -1/q
ACCEPT_FACTOR_MIN = 0.0  # an accepted step may shrink the next one (PyTorch's ALF, see its ACCEPT_FACTOR_MIN)
MIN_STEP_REL = 1e-12
MAX_CONSECUTIVE_REJECTIONS = 30
PARASITIC_RATIO = 100.0
COLLAPSE_RATIO = 100.0
PARASITIC_STEPS = 20


def alf_step(f, s, h, z, v, p, eta):
    """One ALF step from time ``s``; returns ``(z', v', u)`` with ``u`` the midpoint slope."""
    k = z + (0.5 * h) * v
    u = f(s + 0.5 * h, k, p)
    v1 = v + (2.0 * eta) * (u - v)
    z1 = k + (0.5 * h) * v1
    return z1, v1, u


def alf_inverse(f, s, h, z1, v1, p, eta):
    """Invert :func:`alf_step` (``s`` = the step's start time): ``(z, v)`` from ``(z', v')``."""
    k = z1 - (0.5 * h) * v1
    u = f(s + 0.5 * h, k, p)
    v = (v1 - (2.0 * eta) * u) / (1.0 - 2.0 * eta)
    z = k - (0.5 * h) * v
    return z, v


@dataclasses.dataclass(frozen=True, eq=False)
class ALFConfig:
    """Static description of one ALF solve (hashable by identity; built once in ``prepare``)."""

    t0: float
    t1: float
    saveat: np.ndarray  # save times, in integration order
    eta: float = 1.0
    max_steps: int = 100_000
    # adaptive
    adaptive: bool = True
    rtol: float = 1e-6
    atol: float = 1e-8
    dt0: float = 0.0  # positive magnitude
    # fixed
    grid: np.ndarray | None = None  # fixed_grid(...) when not adaptive

    @property
    def direction(self) -> float:
        return 1.0 if self.t1 > self.t0 else -1.0

    @property
    def n_steps_fixed(self) -> int:
        return len(self.grid) - 1


class _State(NamedTuple):
    t: jax.Array
    h: jax.Array  # next proposal (signed)
    z: jax.Array
    v: jax.Array
    ys: jax.Array  # (n_save, *z0.shape)
    save_idx: jax.Array  # next save to fill
    save_steps: jax.Array  # (n_save,) accepted-step count at each save
    ts: jax.Array  # (max_steps + 1,) accepted times (only with record_times)
    n_steps: jax.Array
    n_acc: jax.Array
    n_rej: jax.Array
    n_run: jax.Array  # consecutive rejections
    n_para: jax.Array  # consecutive accepted steps flagged by the parasitic-mode detector
    h_max: jax.Array  # largest accepted step magnitude
    last_nonfinite: jax.Array  # the last rejection had a non-finite error estimate (PyTorch's flag)
    code: jax.Array
    done: jax.Array


class ALFResult(NamedTuple):
    ys: jax.Array
    z: jax.Array
    v: jax.Array
    ts: jax.Array  # accepted times (adaptive with record_times) or the fixed grid
    save_steps: jax.Array
    n_acc: jax.Array
    n_rej: jax.Array
    code: jax.Array


def alf_loop(f, cfg: ALFConfig, z0, v0, p, *, kind: str = "lax", checkpoints: int | None = None,
             record_times: bool = False) -> ALFResult:
    """Integrate ALF from ``(z0, v0)`` over ``cfg``; ``kind`` is ``"lax"`` or ``"checkpointed"`` (reverse AD)."""
    dtype = z0.dtype
    saveat = jnp.asarray(cfg.saveat, dtype=dtype)
    n_save = int(cfg.saveat.size)
    direction = cfg.direction
    t1 = cfg.t1
    eta = cfg.eta
    adaptive = cfg.adaptive
    if adaptive:
        max_steps = int(cfg.max_steps)
        stops = jnp.asarray(np.append(cfg.saveat, t1), dtype=dtype)  # next stop: a save time, then t1
        grid = None
    else:
        grid = jnp.asarray(cfg.grid, dtype=dtype)
        max_steps = cfg.n_steps_fixed
    ts_len = (max_steps + 1) if (record_times and adaptive) else 1

    ys = jnp.zeros((n_save + 1, *z0.shape), dtype)  # + one trash row
    save_steps = jnp.zeros((n_save + 1,), jnp.int32)
    first_is_t0 = bool(cfg.saveat[0] == cfg.t0)
    if first_is_t0:
        ys = ys.at[0].set(z0)
    save_idx0 = 1 if first_is_t0 else 0
    zero_i = jnp.asarray(0, jnp.int32)
    init = _State(
        t=jnp.asarray(cfg.t0, dtype),
        h=jnp.asarray(cfg.dt0 if adaptive else 0.0, dtype),  # step magnitude
        z=z0, v=v0, ys=ys,
        save_idx=jnp.asarray(save_idx0, jnp.int32),
        save_steps=save_steps,
        ts=jnp.full((ts_len + 1,), cfg.t0, dtype),
        n_steps=zero_i, n_acc=zero_i, n_rej=zero_i, n_run=zero_i, n_para=zero_i,
        h_max=jnp.asarray(0.0, dtype), last_nonfinite=jnp.asarray(False), code=zero_i,
        done=jnp.asarray(False),
    )

    i32 = jnp.int32
    span = abs(cfg.t1 - cfg.t0)

    def cond(s: _State):
        return jnp.logical_not(s.done) & (s.code == 0)

    def body(s: _State):
        t = s.t
        if adaptive:
            # the PyTorch backend's controller, step for step (crossode/backends/torch/_alf.py::_march_adaptive)
            stop = stops[jnp.minimum(s.save_idx, n_save)]  # pending save time, then t1
            remaining = jnp.abs(stop - t)
            h_min = MIN_STEP_REL * jnp.maximum(jnp.abs(t), span)
            collapsed = (s.h < h_min) & (s.h < remaining)
            out_of_steps = s.n_steps >= max_steps
            landing = s.h >= remaining
            t_next = jnp.where(landing, stop, t + direction * s.h)
        else:
            collapsed = jnp.asarray(False)
            out_of_steps = jnp.asarray(False)
            t_next = grid[s.n_steps + 1]
        h = t_next - t  # the exact float64 step both passes use
        z1, v1, u = alf_step(f, t, h, s.z, s.v, p, eta)
        finite = jnp.all(jnp.isfinite(z1)) & jnp.all(jnp.isfinite(v1))
        if adaptive:
            d = jax.lax.stop_gradient(u - s.v)
            en = scaled_rms(h * d, s.z, z1, cfg.rtol, cfg.atol)
            d2, u2 = jnp.mean(d * d), jnp.mean(jnp.square(jax.lax.stop_gradient(u)))
            rho = jnp.where(u2 > 0, jnp.sqrt(d2 / jnp.where(u2 > 0, u2, 1.0)), jnp.where(d2 == 0, 0.0, jnp.inf))
            accept = en <= 1.0
            ah = jnp.abs(h)
            h_new = propose(ah, en, accept, ERROR_ORDER, ACCEPT_FACTOR_MIN)
            # a step shortened to land on a stop says nothing against the proposal made before it
            h_new = jnp.where(accept & landing & (ah < s.h), jnp.maximum(h_new, s.h), h_new)
            h_next = jax.lax.stop_gradient(h_new)
            h_max = jnp.where(accept, jnp.maximum(s.h_max, ah), s.h_max)
            # parasitic-mode detector (PyTorch: see _march_adaptive): v dominated by ALF's parasitic root while
            # the step is 100x below the largest accepted one
            flagged = (rho > PARASITIC_RATIO) & (ah < h_max / COLLAPSE_RATIO)
            n_para = jnp.where(accept, jnp.where(flagged, s.n_para + 1, 0), s.n_para)
            n_run = jnp.where(accept, 0, s.n_run + 1)
            last_nonfinite = jnp.where(accept, s.last_nonfinite, jnp.logical_not(jnp.isfinite(en)))
            code = jnp.where(
                accept,
                jnp.where(n_para >= PARASITIC_STEPS, 4, 0),
                jnp.where(n_run >= MAX_CONSECUTIVE_REJECTIONS, jnp.where(last_nonfinite, 3, 2), 0),
            )
            # failures detected before the attempt (collapse, then budget): no step is taken (state unchanged)
            pre = jnp.where(collapsed, jnp.where(s.last_nonfinite, 3, 2), jnp.where(out_of_steps, 1, 0))
            accept = accept & (pre == 0)
            code = jnp.where(pre != 0, pre, code).astype(i32)
            attempted = (pre == 0).astype(i32)
        else:
            accept = jnp.asarray(True)
            h_next = s.h
            n_run, n_para, h_max, last_nonfinite = s.n_run, s.n_para, s.h_max, s.last_nonfinite
            code = jnp.where(finite, 0, 3).astype(i32)
            attempted = jnp.asarray(1, i32)
        hit_save = accept & (s.save_idx < n_save) & (t_next == saveat[jnp.minimum(s.save_idx, n_save - 1)])
        n_acc = s.n_acc + accept.astype(i32)
        # write-only buffer updates (Equinox checkpointed-loop buffers cannot be read inside the loop):
        # rows past the end are trash slots that absorb the writes of steps that save nothing
        slot = jnp.where(hit_save, s.save_idx, n_save)
        ys_new = s.ys.at[slot].set(z1)
        steps_new = s.save_steps.at[slot].set(n_acc)
        if ts_len > 1:  # accepted times for MALI's backward pass (max_steps + 1 float64)
            ts_new = s.ts.at[jnp.where(accept, jnp.minimum(n_acc, ts_len - 1), ts_len)].set(t_next)
        else:
            ts_new = s.ts
        return _State(
            t=jnp.where(accept, t_next, t),
            h=h_next,
            z=jnp.where(accept, z1, s.z),
            v=jnp.where(accept, v1, s.v),
            ys=ys_new,
            save_idx=s.save_idx + hit_save.astype(jnp.int32),
            save_steps=steps_new,
            ts=ts_new,
            n_steps=s.n_steps + attempted,
            n_acc=n_acc,
            n_rej=s.n_rej + attempted - accept.astype(i32),
            n_run=n_run,
            n_para=n_para,
            h_max=h_max,
            last_nonfinite=last_nonfinite,
            code=code,
            done=accept & (t_next == t1),
        )

    if kind == "lax":
        out = jax.lax.while_loop(cond, body, init)
    elif kind == "checkpointed":
        out = eqxi.while_loop(
            cond, body, init, max_steps=max_steps, kind="checkpointed",
            checkpoints=checkpoints if checkpoints is not None else max_steps,
            buffers=lambda s: (s.ys, s.save_steps, s.ts),
        )
    else:
        raise ValueError(kind)
    code = jnp.where((out.code == 0) & jnp.logical_not(out.done), 1, out.code)
    ts = out.ts[:ts_len] if adaptive else grid
    return ALFResult(out.ys[:n_save], out.z, out.v, ts, out.save_steps[:n_save], out.n_acc, out.n_rej, code)

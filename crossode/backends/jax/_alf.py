"""Asynchronous leapfrog (ALF) in JAX: the step, its inverse, and the step loop shared by every ALF gradient.

State ``(z, v)`` with ``v0 = f(t0, z0)`` (evaluated by the caller, so its gradient path is ordinary autodiff).
One step of size ``h`` from ``s`` (Zhuang et al. 2021, Algorithm 2; ``eta`` = damping, 1 by default)::

    k = z + h/2 v;  u = f(s + h/2, k);  v' = v + 2 eta (u - v);  z' = k + h/2 v'

and its closed-form inverse (Algorithm 3), one evaluation of ``f`` each. The midpoint time is computed as
``s + h/2`` from the step's *start* time in both directions, so forward and inverse evaluate ``f`` at the same
float64 time.

Step control (adaptive) is the PyTorch backend's ALF controller, step for step: error estimate
``err = h (u - v)`` (carried velocity against the midpoint slope: an order-1 estimate, exponent ``-1/2``), scale
``atol + rtol * max(|z|, |z'|)``, RMS norm, accept when ``<= 1``; accepted: factor ``min(10, 0.9 err^(-1/2))``
(10 if ``err == 0``; at most 1 right after a rejection), a step shortened to land on a stop does not shrink the
proposal; rejected: factor ``max(0.2, 0.9 err^(-1/2))`` (0.2 for a non-finite estimate). The accepted trial is
kept, so every attempt costs **one** evaluation. Steps are shortened to land exactly on every save time and on
``t1`` (no interpolation, no uncontrolled final step). Step-size selection is ``stop_gradient``-ed, like
Diffrax's controllers: gradients are those of the discrete map on the realised grid.

Failure codes (``info[0]``): 0 ok; 1 ``max_steps`` (accepted + rejected attempts); 2 ``step_size_too_small``
(``|h| < 1e-12 max(|t|, |t1 - t0|)`` before reaching the next stop, or 30 consecutive rejections); 3 ``diverged``
(non-finite state on a fixed step, or 30 consecutive non-finite error estimates).

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

__all__ = ["ALFConfig", "alf_step", "alf_inverse", "alf_loop", "FAIL_CODES"]

FAIL_CODES = {0: "ok", 1: "max_steps", 2: "step_size_too_small", 3: "diverged"}

# Controller constants: identical to the PyTorch backend's ALF (crossode/backends/torch/_alf.py).
ERROR_ORDER = 1
SAFETY = 0.9
FACTOR_MIN = 0.2
FACTOR_MAX = 10.0
MIN_STEP_REL = 1e-12
MAX_CONSECUTIVE_REJECTIONS = 30


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
    ys: jax.Array  # (n_save, n)
    save_idx: jax.Array  # next save to fill
    save_steps: jax.Array  # (n_save,) accepted-step count at each save
    ts: jax.Array  # (max_steps + 1,) accepted times (only with record_times)
    n_steps: jax.Array
    n_acc: jax.Array
    n_rej: jax.Array
    n_bad: jax.Array  # consecutive non-finite trials
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

    ys = jnp.zeros((n_save + 1, z0.shape[0]), dtype)  # + one trash row
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
        n_steps=zero_i, n_acc=zero_i, n_rej=zero_i, n_bad=zero_i, code=zero_i,
        done=jnp.asarray(False),
    )

    i32 = jnp.int32
    span = abs(cfg.t1 - cfg.t0)

    def cond(s: _State):
        return jnp.logical_not(s.done) & (s.code == 0)

    def body(s: _State):
        t = s.t
        if adaptive:
            # the PyTorch backend's controller, step for step (crossode/backends/torch/_alf.py)
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
            err_vec = jax.lax.stop_gradient(h * (u - s.v))
            zs, z1s = jax.lax.stop_gradient(s.z), jax.lax.stop_gradient(z1)
            scale = cfg.atol + cfg.rtol * jnp.maximum(jnp.abs(zs), jnp.abs(z1s))
            en = jnp.sqrt(jnp.mean((err_vec / scale) ** 2)) + 0.0 * jnp.sum(z1s)  # NaN if z1 is not finite
            accept = en <= 1.0
            en_ok = jnp.isfinite(en)
            raw = SAFETY * jnp.where(en > 0, en, 1.0) ** (-1.0 / (ERROR_ORDER + 1))
            f_acc = jnp.where(en == 0, FACTOR_MAX, jnp.minimum(FACTOR_MAX, raw))
            f_acc = jnp.where(s.n_bad > 0, jnp.minimum(f_acc, 1.0), f_acc)
            f_rej = jnp.where(en_ok, jnp.maximum(FACTOR_MIN, raw), FACTOR_MIN)
            ah = jnp.abs(h)
            h_acc = ah * f_acc
            h_acc = jnp.where(landing & (ah < s.h), jnp.maximum(h_acc, s.h), h_acc)
            h_next = jax.lax.stop_gradient(jnp.where(accept, h_acc, ah * f_rej))
            n_bad = jnp.where(accept, 0, s.n_bad + 1)
            code = jnp.where(n_bad >= MAX_CONSECUTIVE_REJECTIONS, jnp.where(en_ok, 2, 3), 0)
            # failures detected before the attempt: no step is taken (state unchanged)
            pre = jnp.where(collapsed, 2, jnp.where(out_of_steps, 1, 0))
            accept = accept & (pre == 0)
            code = jnp.where(pre != 0, pre, code).astype(i32)
            attempted = (pre == 0).astype(i32)
        else:
            accept = jnp.asarray(True)
            h_next = s.h
            n_bad = s.n_bad
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
            n_bad=n_bad,
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

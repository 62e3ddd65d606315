"""Good and deliberately broken JAX solvers in the ``crossode check`` contract (test data, not examples).

Fixed-step RK with ``ceil(interval / dt)`` equal steps per output interval, one ``lax.scan`` per interval (the
step counts are static: ``t`` is concrete). The broken variants differ from RK4 in one place.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

RK4_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
WRONG_WEIGHTS = (1 / 6, 1 / 6, 1 / 2, 1 / 6)  # second order, see torch_solvers.py


def _rk(func, y0, t, dt, weights=RK4_WEIGHTS, detach_stage=False, nan=False):
    ts = np.asarray(t, dtype=np.float64)
    ys, y = [y0], y0
    for a, b in zip(ts[:-1], ts[1:]):
        n = max(1, math.ceil(abs(b - a) / dt - 1e-9))
        h = (b - a) / n

        def body(y, i, a=a, h=h):
            s = a + i * h
            k1 = func(s, y)
            y2 = y + h / 2 * k1
            k2 = func(s + h / 2, jax.lax.stop_gradient(y2) if detach_stage else y2)
            k3 = func(s + h / 2, y + h / 2 * k2)
            k4 = func(s + h, y + h * k3)
            y = y + h * (weights[0] * k1 + weights[1] * k2 + weights[2] * k3 + weights[3] * k4)
            return y, None

        y, _ = jax.lax.scan(body, y, jnp.arange(n, dtype=jnp.float64))
        if nan:
            y = y * jnp.nan
        ys.append(y)
    return jnp.stack(ys)


def rk4(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct classical RK4."""
    return _rk(func, y0, t, dt)


def rk4_wrong_weight(func, y0, t, *, dt=None, rtol=None, atol=None):
    """RK4 with wrong weights (second order)."""
    return _rk(func, y0, t, dt, weights=WRONG_WEIGHTS)


def rk4_detached_stage(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct forward; the second stage's input goes through stop_gradient."""
    return _rk(func, y0, t, dt, detach_stage=True)


def rk4_nan(func, y0, t, *, dt=None, rtol=None, atol=None):
    """NaN states."""
    return _rk(func, y0, t, dt, nan=True)


def rk4_all_stopped(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct numbers with every gradient stopped (zero gradient)."""
    return jax.lax.stop_gradient(_rk(func, y0, t, dt))


def rk4_python_floats(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct RK4 that reads t with float() on jnp scalars: not jit-compilable, runs eagerly."""
    ts = [float(t[i]) for i in range(t.shape[0])]
    return _rk(func, y0, ts, dt)

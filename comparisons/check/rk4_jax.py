"""A classical fixed-step RK4 in JAX, in the shape ``crossode check`` expects.

    crossode check comparisons/check/rk4_jax.py:odeint --framework jax --order 4 --dt 0.1,0.05,0.025

A pure function of ``y0`` and of the parameters ``func`` closes over, so ``jax.grad`` differentiates it and
``jax.jit`` compiles it. The output times ``t`` are concrete (crossode closes over them), so the number of steps
per interval, ``ceil(interval / dt)``, is a static Python integer and each interval is one ``lax.scan``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def _rk4_step(func, s, y, h):
    k1 = func(s, y)
    k2 = func(s + h / 2, y + h / 2 * k1)
    k3 = func(s + h / 2, y + h / 2 * k2)
    k4 = func(s + h, y + h * k3)
    return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def odeint(func, y0, t, *, dt=None, rtol=None, atol=None):
    """``y`` at every time in ``t`` (``y[0] = y0``), shape ``(len(t), *y0.shape)``; ``dt`` is required."""
    if dt is None:
        raise ValueError("this RK4 is fixed-step: pass dt")
    ts = np.asarray(t, dtype=np.float64)
    ys = [y0]
    y = y0
    for a, b in zip(ts[:-1], ts[1:]):
        n = max(1, math.ceil(abs(b - a) / dt - 1e-9))
        h = (b - a) / n

        def body(y, i, a=a, h=h):
            return _rk4_step(func, a + i * h, y, h), None

        y, _ = jax.lax.scan(body, y, jnp.arange(n, dtype=jnp.float64))
        ys.append(y)
    return jnp.stack(ys)

"""Good and deliberately broken torch solvers in the ``crossode check`` contract (test data, not examples).

Every solver steps ``ceil(interval / dt)`` equal RK steps between output times; ``_rk`` takes the stage weights so
the broken variants differ from the correct RK4 in exactly one place.
"""

import math

import torch

RK4_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)
# Still consistent and second order (sum b = 1, sum b c = 1/2, sum b c^2 = 1/3) but sum b_i a_ij c_j = 5/24 != 1/6:
# the order drops from 4 to 2.
WRONG_WEIGHTS = (1 / 6, 1 / 6, 1 / 2, 1 / 6)


def _rk(func, y0, t, dt, weights=RK4_WEIGHTS, detach_stage=False, nan_after=None):
    ts = [float(x) for x in t]
    ys, y, steps = [y0], y0, 0
    for a, b in zip(ts[:-1], ts[1:]):
        n = max(1, math.ceil(abs(b - a) / dt - 1e-9))
        h = (b - a) / n
        for i in range(n):
            s = a + i * h
            k1 = func(s, y)
            y2 = y + h / 2 * k1
            k2 = func(s + h / 2, y2.detach() if detach_stage else y2)
            k3 = func(s + h / 2, y + h / 2 * k2)
            k4 = func(s + h, y + h * k3)
            y = y + h * (weights[0] * k1 + weights[1] * k2 + weights[2] * k3 + weights[3] * k4)
            steps += 1
            if nan_after is not None and steps == nan_after:
                y = y * float("nan")
        ys.append(y)
    return torch.stack(ys)


def rk4(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct classical RK4."""
    return _rk(func, y0, t, dt)


def rk4_wrong_weight(func, y0, t, *, dt=None, rtol=None, atol=None):
    """RK4 with wrong weights (second order)."""
    return _rk(func, y0, t, dt, weights=WRONG_WEIGHTS)


def rk4_detached_stage(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct forward, but the second stage's input is detached: the gradient misses a path."""
    return _rk(func, y0, t, dt, detach_stage=True)


def rk4_nan(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Turns the state into NaN after 5 steps."""
    return _rk(func, y0, t, dt, nan_after=5)


def rk4_detached_output(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Correct numbers, returned without a graph."""
    return _rk(func, y0, t, dt).detach()


def rk4_final_only(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Returns only the last state (wrong shape)."""
    return _rk(func, y0, t, dt)[-1]


def rk4_raises(func, y0, t, *, dt=None, rtol=None, atol=None):
    """Raises inside the solver."""
    raise RuntimeError("step size controller exploded")

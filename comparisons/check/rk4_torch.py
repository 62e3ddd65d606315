"""A classical fixed-step RK4 in PyTorch, in the shape ``crossode check`` expects (torchdiffeq's ``odeint``).

    crossode check comparisons/check/rk4_torch.py:odeint --framework torch --order 4 --dt 0.1,0.05,0.025

Between consecutive output times it takes ``ceil(interval / dt)`` equal steps, so every output time is a step end
(the order is then the method's, not an interpolant's). Gradients come from autograd through the steps.
"""

import math

import torch


def odeint(func, y0, t, *, dt=None, rtol=None, atol=None):
    """``y`` at every time in ``t`` (``y[0] = y0``), shape ``(len(t), *y0.shape)``; ``dt`` is required."""
    if dt is None:
        raise ValueError("this RK4 is fixed-step: pass dt")
    ts = [float(x) for x in t]
    ys = [y0]
    y = y0
    for a, b in zip(ts[:-1], ts[1:]):
        n = max(1, math.ceil(abs(b - a) / dt - 1e-9))
        h = (b - a) / n
        for i in range(n):
            s = a + i * h
            k1 = func(s, y)
            k2 = func(s + h / 2, y + h / 2 * k1)
            k3 = func(s + h / 2, y + h / 2 * k2)
            k4 = func(s + h, y + h * k3)
            y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return torch.stack(ys)

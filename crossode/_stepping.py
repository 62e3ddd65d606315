"""Step-size formulas shared by every backend that runs its own step control (pure Python floats).

Hairer's initial step (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4; also SciPy, torchdiffeq, Diffrax) in two
halves, so each backend only computes the three norms with its own arrays:

1. ``h0 = first_guess(d0, d1)`` with ``d0 = ||y0||``, ``d1 = ||f(t0, y0)||`` (RMS norms scaled by
   ``atol + rtol*|y0|``);
2. evaluate ``f`` once at ``(t0 + h0, y0 + h0*f0)``, ``d2 = ||f1 - f0|| / h0``, then ``refine(h0, d1, d2, q)``
   with ``q`` the order of the error estimate.

Using the same formula everywhere makes the first step, and so the realised grid, comparable across backends
(Diffrax's own automatic choice does not run; see ``diffrax.md`` pitfall 1).

The smallest usable step, :func:`min_step_size` (ten spacings of the time type at the largest ``|t|`` of the span),
is also defined here once: the PyTorch and JAX RK controllers stop with ``step_size_too_small`` below it, and the
Julia backend passes it as ``dtmin``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["first_guess", "refine", "error_order", "initial_step", "min_step_size"]


def first_guess(d0: float, d1: float) -> float:
    """``0.01*d0/d1``, or ``1e-6`` when either norm is tiny or not finite."""
    if not math.isfinite(d0 + d1) or d0 < 1e-5 or d1 < 1e-5:
        return 1e-6
    return 0.01 * d0 / d1


def refine(h0: float, d1: float, d2: float, order: int) -> float:
    """``min(100*h0, (0.01/max(d1, d2))**(1/order))``; ``h0`` itself when the probe left the domain of ``f``."""
    max_d = max(d1, d2)
    if not math.isfinite(max_d):
        return h0
    h1 = max(1e-6, h0 * 1e-3) if max_d <= 1e-15 else (0.01 / max_d) ** (1.0 / order)
    return min(100.0 * h0, h1)


def min_step_size(t0: float, t1: float, dtype: str = "float64") -> float:
    """Ten spacings of ``dtype`` at the largest ``|t|`` of ``[t0, t1]``: a rejected step whose next proposal is
    smaller stops the solve with ``step_size_too_small``. PyTorch and JAX keep times in float64 (the default);
    Julia's float32 solves step in Float32 time, which cannot resolve smaller steps."""
    return 10.0 * float(np.spacing(np.asarray(max(abs(t0), abs(t1)), dtype=np.dtype(dtype))))


def error_order(solver) -> int:
    """Order ``q`` of a solver's embedded error estimate (the controller exponent is ``-1/q``)."""
    from ._solvers import ALF
    from ._tableaux import TABLEAUX

    if isinstance(solver, ALF):
        return 2  # err = h (u - v) is O(h^2); see crossode/backends/torch/_alf.py
    tab = TABLEAUX.get(type(solver))
    if tab is not None and tab.error_order is not None:
        return tab.error_order
    return solver.order


def initial_step(problem, order: int, rtol: float, atol: float, f0: np.ndarray | None = None, *,
                 clip: bool = True) -> tuple[float, int]:
    """Hairer's initial step for ``problem`` in NumPy (``problem.rhs.f``), for backends that take ``dt0`` as input.

    RMS norms scaled by ``atol + rtol*|y0|``; the probe point is ``t0 + h0`` with the unclipped first guess ``h0``
    (as ``crossode/backends/torch/_control.py::initial_step``, so both backends start with the same step); the
    result is clipped to ``|t1 - t0|`` when ``clip`` (PyTorch ALF clips, PyTorch RK lets the first step land on
    the first stop instead). Returns ``(h, evaluations)``: 2 evaluations, or 1 when ``f0 = f(t0, y0)`` is given.
    """
    t0, t1 = problem.tspan
    span = abs(t1 - t0)
    direction = 1.0 if t1 > t0 else -1.0
    y0, p = np.asarray(problem.y0, dtype=np.float64), np.asarray(problem.params, dtype=np.float64)
    n_eval = 0
    if f0 is None:
        f0 = problem.rhs.f(t0, y0, p)
        n_eval += 1
    scale = atol + rtol * np.abs(y0)

    def rms(x):
        return float(np.sqrt(np.mean(np.square(x))))

    d1 = rms(f0 / scale)
    h0 = first_guess(rms(y0 / scale), d1)
    with np.errstate(all="ignore"):
        f1 = problem.rhs.f(t0 + direction * h0, y0 + (direction * h0) * f0, p)
    n_eval += 1
    h = refine(h0, d1, rms((f1 - f0) / scale) / h0, order)
    return (min(h, span) if clip else h), n_eval

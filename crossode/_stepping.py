"""Step-size formulas shared by every backend that runs its own step control (pure Python floats).

Hairer's initial step (Hairer, Norsett & Wanner, *Solving ODEs I*, II.4; also SciPy, torchdiffeq, Diffrax) in two
halves, so each backend only computes the three norms with its own arrays:

1. ``h0 = first_guess(d0, d1)`` with ``d0 = ||y0||``, ``d1 = ||f(t0, y0)||`` (RMS norms scaled by
   ``atol + rtol*|y0|``);
2. evaluate ``f`` once at ``(t0 + h0, y0 + h0*f0)``, ``d2 = ||f1 - f0|| / h0``, then ``refine(h0, d1, d2, q)``
   with ``q`` the order of the error estimate.

Using the same formula everywhere makes the first step, and so the realised grid, comparable across backends
(Diffrax's own automatic choice does not run; see ``diffrax.md`` pitfall 1).
"""

from __future__ import annotations

import math

__all__ = ["first_guess", "refine"]


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

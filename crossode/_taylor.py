"""The Taylor test: is a gradient consistent with the loss that was actually computed? (NumPy only.)

Onken & Ruthotto (2020, "Discretize-Optimize vs. Optimize-Discretize") check a gradient ``g`` of a loss ``J`` at
``theta`` along a random unit direction ``v`` with

    E0(h) = |J(theta + h v) - J(theta)|                    ~ h    (any g)
    E1(h) = |J(theta + h v) - J(theta) - h v.g|           ~ h^2  (only if v.g = dJ/dtheta . v)

for ``h = 2^-k``. If ``g`` is the exact derivative of the computed ``J`` (discretise-then-optimise), ``E1`` falls
with slope 2 in log-log; if ``g`` is off by ``delta`` (an adjoint ODE solved to a tolerance, a detached stage, a
wrong backward pass), ``E1(h) ~ h |v.delta| + h^2 |v^T H v| / 2`` falls with slope 1 once ``h`` is small enough.
This checks consistency only: a solver with a wrong tableau still passes (its gradient is the exact derivative
of its own wrong loss); convergence against a reference is a separate question.

Choosing the h range (``ks``): ``h`` multiplies a *unit* direction over all of ``theta``, so the largest ``h``
should change the loss by a modest amount (the default ``k = 1..20``, ``h = 0.5 .. 1e-6``, is Onken & Ruthotto's
and suits problems whose parameters are of order one; rescale ``theta`` or pass larger ``k`` otherwise). Large
``h`` may show higher slopes (``h^3`` terms) or fail outright; such points (an exception or a non-finite loss)
are recorded as ``nan`` and skipped.

Round-off: ``J(theta + h v) - J(theta)`` cancels digits, so ``E1`` stops falling near
``roundoff * eps * max(|J(theta)|, |J(theta + h v)|)`` (``eps`` of float64, ``roundoff = 1e3`` ulps by default,
enough for the rounding accumulated over thousands of solver steps). Points at or below this floor are not used;
the slope is the least-squares slope of ``log E1`` vs ``log h`` over the ``window`` smallest ``h`` before the first
point at the floor (the most asymptotic part that round-off has not reached). Fewer than 3 such points:
``status = "unresolved"`` (``J`` is linear along ``v``, or the range starts too low).

Adaptive solvers: ``J(theta + h v)`` may take different steps than ``J(theta)``. Step sizes are smooth functions
of ``theta`` until the pattern of accepted/rejected steps changes, which makes ``J`` jump by O(tolerance) there.
Most solvers treat the step sizes as constants in the backward pass (crossode's, torchdiffeq's, Diffrax's), so
their ``g`` misses ``dJ/d(step sizes)``, a term of the order of the tolerance: expect slope 2 at large ``h`` and
slope 1 at small ``h``, with ``E1(h)/h`` (reported as ``inconsistency``, relative to ``||g||``) of the order of
the solver's own gradient error; an isolated flat point is a step-pattern change. Then slope 1 means "consistent
to the solver's accuracy", not "wrong": read ``inconsistency`` next to the gradient error against a reference. With
fixed steps, slope 1 means a wrong gradient.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from ._errors import InvalidInputError

__all__ = ["TaylorResult", "taylor_test", "taylor_direction", "DEFAULT_KS", "MIN_SLOPE"]

DEFAULT_KS = tuple(range(1, 21))
"""Default exponents: ``h = 2^-k`` for ``k = 1..20`` (Onken & Ruthotto)."""

MIN_SLOPE = 1.7
"""``E1`` slopes at or above this are ``consistent`` (2 expected; 3 when ``v^T H v`` happens to vanish)."""


@dataclasses.dataclass
class TaylorResult:
    """Outcome of :func:`taylor_test`.

    ``h``, ``e0``, ``e1``, ``floor``: per step length (``nan`` where ``J`` failed); ``used``: indices of the
    points the slope was fitted on; ``slope``/``slope_e0``: least-squares slopes of ``log E1``/``log E0`` vs
    ``log h`` over them (``None`` when unresolved); ``pairwise``: slopes between neighbouring points;
    ``directional``: ``v.g``; ``inconsistency``: ``min E1(h)/h / ||g||`` over the used points, an upper bound on
    ``|v.(dJ/dtheta - g)| / ||g||`` (comparable with a relative gradient error); ``status``: ``consistent``,
    ``inconsistent`` or ``unresolved``; ``message``: one line.
    """

    h: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    floor: np.ndarray
    used: list[int]
    slope: float | None
    slope_e0: float | None
    pairwise: np.ndarray
    directional: float
    inconsistency: float | None
    status: str
    message: str

    @property
    def consistent(self) -> bool:
        """Whether ``E1`` fell with slope >= :data:`MIN_SLOPE`."""
        return self.status == "consistent"

    def to_dict(self) -> dict:
        """JSON-friendly form (``nan`` -> ``None``)."""

        def clean(a):
            return [None if not math.isfinite(x) else float(x) for x in np.asarray(a, dtype=float)]

        return {
            "h": clean(self.h), "e0": clean(self.e0), "e1": clean(self.e1), "floor": clean(self.floor),
            "used": list(self.used), "slope": self.slope, "slope_e0": self.slope_e0,
            "pairwise": clean(self.pairwise), "directional": self.directional,
            "inconsistency": self.inconsistency, "status": self.status, "message": self.message,
        }


def taylor_direction(n: int, seed: int = 0) -> np.ndarray:
    """A reproducible random unit vector of length ``n`` (standard normal, normalised)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidInputError(f"`n` must be a positive integer; got {n!r}.")
    v = np.random.default_rng(seed).standard_normal(int(n))
    return v / np.linalg.norm(v)


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def taylor_test(
    J: Callable[[np.ndarray], float],
    theta,
    g,
    *,
    v=None,
    seed: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    base: float = 2.0,
    window: int = 6,
    roundoff: float = 1e3,
    min_slope: float = MIN_SLOPE,
    J0: float | None = None,
) -> TaylorResult:
    """Taylor test of gradient ``g`` of ``J`` at ``theta`` (see the module docstring for how to read it).

    **Arguments:**
    - ``J``: ``theta -> float`` (NumPy float64 in, a number out); called ``len(ks)`` times (once more unless
      ``J0`` is given). An exception or non-finite value at some ``h`` marks that point ``nan``.
    - ``theta``, ``g``: 1-D float arrays of the same length (the point and the gradient under test).
    - ``v``: direction (normalised here); default :func:`taylor_direction` with ``seed``.
    - ``ks``, ``base``: step lengths ``h = base^-k``, in the order given (use increasing ``k``).
    - ``window``: how many of the smallest clean ``h`` the slope is fitted on; ``roundoff``: the floor in ulps.
    - ``min_slope``: slope at or above which the gradient is ``consistent``.
    - ``J0``: ``J(theta)`` if already known.

    Returns a :class:`TaylorResult`. Raises :class:`~crossode.InvalidInputError` for malformed arguments and lets
    an exception of ``J(theta)`` itself propagate.
    """
    theta = np.asarray(theta, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if theta.ndim != 1 or theta.size == 0 or g.shape != theta.shape:
        raise InvalidInputError(f"`theta` and `g` must be 1-D of equal length; got {theta.shape} and {g.shape}.")
    if not (np.all(np.isfinite(theta)) and np.all(np.isfinite(g))):
        raise InvalidInputError("`theta` and `g` must be finite.")
    ks = list(ks)
    if len(ks) < 3 or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in ks):
        raise InvalidInputError(f"`ks` must hold at least 3 integers; got {ks!r}.")
    if not (isinstance(base, (int, float)) and base > 1):
        raise InvalidInputError(f"`base` must be a number > 1; got {base!r}.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 3:
        raise InvalidInputError(f"`window` must be an integer >= 3; got {window!r}.")
    if v is None:
        v = taylor_direction(theta.size, seed)
    else:
        v = np.asarray(v, dtype=np.float64)
        if v.shape != theta.shape or not np.all(np.isfinite(v)) or not np.linalg.norm(v) > 0:
            raise InvalidInputError(f"`v` must be a finite non-zero vector of shape {theta.shape}.")
        v = v / np.linalg.norm(v)
    j0 = float(J(theta.copy()) if J0 is None else J0)
    if not math.isfinite(j0):
        raise InvalidInputError(f"J(theta) is not finite ({j0}); the Taylor test needs a finite loss.")
    vg = float(v @ g)
    eps = np.finfo(np.float64).eps
    hs = np.array([float(base) ** (-k) for k in ks])
    e0, e1, floor = (np.full(hs.size, np.nan) for _ in range(3))
    for i, h in enumerate(hs):
        try:
            jh = float(J(theta + h * v))
        except Exception:  # noqa: BLE001 - a failing large step is a missing point, not a failed test
            continue
        if not math.isfinite(jh):
            continue
        e0[i] = abs(jh - j0)
        e1[i] = abs(jh - j0 - h * vg)
        floor[i] = roundoff * eps * max(abs(j0), abs(jh), abs(h * vg))
    with np.errstate(divide="ignore", invalid="ignore"):
        pairwise = np.log(e1[:-1] / e1[1:]) / np.log(hs[:-1] / hs[1:])
    # Clean points: finite and above the floor, up to the first point that reaches the floor.
    clean = []
    for i in range(hs.size):
        if not np.isfinite(e1[i]):
            continue
        if e1[i] <= floor[i]:
            break
        clean.append(i)
    used = clean[-window:]
    if len(used) < 3:
        return TaylorResult(
            hs, e0, e1, floor, used, None, None, pairwise, vg, None, "unresolved",
            f"only {len(used)} step lengths have E1 above round-off (J is nearly linear along v, or start at a "
            "larger h)",
        )
    slope = _slope(hs[used], e1[used])
    pos = [i for i in used if e0[i] > 0]
    slope_e0 = _slope(hs[pos], e0[pos]) if len(pos) >= 2 else None
    gnorm = float(np.linalg.norm(g))
    inconsistency = float(min(e1[i] / hs[i] for i in used) / gnorm) if gnorm > 0 else None
    lo, hi = hs[used[-1]], hs[used[0]]
    if slope >= min_slope:
        status, msg = "consistent", f"E1 slope {slope:.2f} (>= {min_slope:g}) for h in [{lo:.1e}, {hi:.1e}]"
    else:
        status = "inconsistent"
        msg = f"E1 slope {slope:.2f} (< {min_slope:g}) for h in [{lo:.1e}, {hi:.1e}]"
        if inconsistency is not None:
            msg += f", |v.(dJ - g)| / ||g|| about {inconsistency:.1e}"
    return TaylorResult(hs, e0, e1, floor, used, slope, slope_e0, pairwise, vg, inconsistency, status, msg)

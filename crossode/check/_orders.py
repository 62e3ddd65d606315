"""Observed convergence orders, as DiffEqDevTools' ``ConvergenceSimulation`` reports them (NumPy only).

For step sizes ``dt_i`` (or tolerances ``rtol_i``) and errors ``e_i``: the pairwise orders
``log(e_i / e_{i+1}) / log(dt_i / dt_{i+1})`` and the least-squares slope of ``log e`` against ``log dt`` over
all resolved points. With tolerances the slope is the tolerance-proportionality exponent (``e ~ rtol^q``; about 1
for a well-behaved controller), not the method's order.

Errors at or below ``floor`` (what the independent reference resolves) are left out: past it the error stops
falling for reasons that have nothing to do with the solver.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["ConvergenceOrder", "convergence_order"]


@dataclasses.dataclass
class ConvergenceOrder:
    """Errors against step sizes with their fitted order.

    ``steps``/``errors``: as given (``None`` error: the cell failed); ``used``: indices of the resolved points
    (finite, above ``floor``); ``order``: least-squares slope over them (``None`` with fewer than two);
    ``pairwise``: orders between consecutive resolved points; ``shrinking``: every resolved error is smaller than
    the one before it; ``message``: one line when the order could not be measured.
    """

    steps: list[float]
    errors: list[float | None]
    used: list[int]
    order: float | None
    pairwise: list[float]
    shrinking: bool
    floor: float
    message: str = ""

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return dataclasses.asdict(self)


def convergence_order(steps: Sequence[float], errors: Sequence[float | None], floor: float = 0.0) -> ConvergenceOrder:
    """Fit the observed order of ``errors`` against ``steps`` (see the module docstring)."""
    steps = [float(s) for s in steps]
    errs = [None if e is None or not math.isfinite(e) else float(e) for e in errors]
    used = [i for i, e in enumerate(errs) if e is not None and e > floor]
    pairwise = [
        math.log(errs[i] / errs[j]) / math.log(steps[i] / steps[j]) if steps[i] != steps[j] else math.nan
        for i, j in zip(used[:-1], used[1:])
    ]
    shrinking = all(errs[j] < errs[i] for i, j in zip(used[:-1], used[1:]))
    if len(used) < 2:
        below = [f"{steps[i]:g}" for i, e in enumerate(errs) if e is not None and e <= floor]
        msg = (f"fewer than two errors above the reference's resolution {floor:.0e}"
               + (f" (at {', '.join(below)} they are below it)" if below else ""))
        return ConvergenceOrder(steps, errs, used, None, pairwise, shrinking, floor, msg)
    if len({steps[i] for i in used}) < 2:
        return ConvergenceOrder(steps, errs, used, None, pairwise, shrinking, floor,
                                "the resolved points share one step size")
    x = np.log([steps[i] for i in used])
    y = np.log([errs[i] for i in used])
    order = float(np.polyfit(x, y, 1)[0])
    return ConvergenceOrder(steps, errs, used, order, pairwise, shrinking, floor)

"""Test helpers for solver authors: :func:`check_solver` asserts that a solver passes ``crossode check``.

Copy into your own test suite (``odeint(func, y0, t, *, dt=None, rtol=None, atol=None)``, torchdiffeq's shape;
the contract is in :mod:`crossode.check._contract`)::

    # tests/test_against_crossode.py
    import pytest
    from crossode.testing import check_solver

    from mysolver import odeint        # your solver


    def test_rk4_gradient_converges_at_order_4():
        check_solver(odeint, framework="torch", order=4,
                     problems=["exponential_decay", "lotka_volterra"], dts=[0.1, 0.05, 0.025])


    def test_adaptive_solver_tracks_rtol():
        check_solver(odeint, framework="torch", problems=["lotka_volterra"], rtols=[1e-4, 1e-6, 1e-8])

A failing check raises ``AssertionError`` whose message is the full table with one line per failed problem
(e.g. ``lotka_volterra: gradient order 2.01 (pairwise 2.00, 2.02), expected 4.00 ± 0.3 (declared --order)...``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .check import CheckReport, check

__all__ = ["check_solver"]


def check_solver(
    odeint: Callable,
    framework: str = "torch",
    order: float | None = 4,
    problems=None,
    dts: Sequence[float] | None = None,
    *,
    rtols: Sequence[float] | None = None,
    atols: Sequence[float] | None = None,
    builtin: bool = False,
    repeats: int = 1,
    **kwargs,
) -> CheckReport:
    """Run :func:`crossode.check.check` and return its report; raise ``AssertionError`` with the table if it fails.

    Same arguments as :func:`crossode.check.check` (``order=None`` compares with the solution's observed order),
    but the built-in comparison rows are off by default (``builtin=True`` adds them) to keep tests fast.
    Problems that are ``inconclusive`` (an order that cannot be measured) do not fail the check, but at least one
    problem must pass.
    """
    report = check(odeint, framework, order=order, problems=problems, dts=dts, rtols=rtols, atols=atols,
                   builtin=builtin, repeats=repeats, **kwargs)
    if not report.passed:
        lines = report.failures() or ["no problem passed"]
        raise AssertionError("crossode check failed:\n  " + "\n  ".join(lines) + "\n\n" + report.table())
    return report

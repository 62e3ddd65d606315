"""Reference-check a solver: ``crossode check FILE.py:NAME`` and :func:`check` (pytest: :mod:`crossode.testing`).

A solver author hands over a torchdiffeq-shaped ``odeint(func, y0, t, *, dt=None, rtol=None, atol=None)`` (PyTorch
or JAX; the contract is in :mod:`crossode.check._contract`). For each problem and step size (or tolerance) crossode
measures the forward and gradient errors against the independent reference, fits the observed convergence orders
(pairwise and least squares, as DiffEqDevTools does), runs the Taylor test of the gradient against the solver's own
loss (:func:`crossode._taylor.taylor_test`) and puts crossode's built-in method of the same order beside it; the
verdict and its reasons are in :class:`CheckReport`. :func:`taylor_test` (the neutral Taylor test, from
:mod:`crossode._taylor`) is re-exported for use on any ``J``. Importing this package imports no framework.
"""

from ._check import (
    DEFAULT_DTS as DEFAULT_DTS,
    DEFAULT_RTOLS as DEFAULT_RTOLS,
    FRAMEWORKS as FRAMEWORKS,
    ORDER_TOLERANCE as ORDER_TOLERANCE,
    CheckReport as CheckReport,
    ProblemCheck as ProblemCheck,
    builtin_solver as builtin_solver,
    check as check,
    default_problems as default_problems,
)
from .._taylor import TaylorResult as TaylorResult, taylor_test as taylor_test
from ._load import load_solver as load_solver
from ._orders import ConvergenceOrder as ConvergenceOrder, convergence_order as convergence_order

__all__ = [
    "check", "CheckReport", "ProblemCheck", "load_solver", "convergence_order", "ConvergenceOrder",
    "default_problems", "builtin_solver", "DEFAULT_DTS", "DEFAULT_RTOLS", "FRAMEWORKS", "ORDER_TOLERANCE",
    "taylor_test", "TaylorResult",
]

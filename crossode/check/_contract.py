"""The solver contract ``crossode check`` tests against, shared by the framework runners (no framework import).

A solver is ``odeint(func, y0, t, *, dt=None, rtol=None, atol=None)`` returning the states at every time of ``t``,
shape ``(len(t), *y0.shape)``, with ``out[0] = y0`` (torchdiffeq's convention):

- ``func(t, y)`` is crossode's vector field of the problem in the solver's framework. It closes over the
  problem's parameters (torch: an ``nn.Module`` whose one parameter ``params`` requires grad; JAX: a closure over
  the traced parameter array), so the solver needs no parameter argument: differentiating its output
  differentiates w.r.t. the parameters too. Adjoint solvers that need the parameters explicitly can use
  ``func.parameters()`` (torch).
- ``y0``: float64, shape ``(n_states,)``, requires grad (torch) / traced (JAX).
- ``t``: float64, ``[t0, *saveat]`` (``saveat`` alone when it starts at ``t0``), strictly monotone. In JAX it is
  a concrete array (closed over, never traced), so a fixed-step solver may read it with ``np.asarray(t)`` to
  choose static step counts.
- fixed-step solvers get ``dt=...`` (and ``rtol``/``atol`` ``None``); adaptive ones ``rtol=..., atol=...``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .._record import SolverFailure

__all__ = ["GradientResult", "output_times", "check_output_shape", "step_kwargs"]


@dataclasses.dataclass
class GradientResult:
    """What one gradient call through the user's solver produced (float64 NumPy, neutral layouts).

    ``ys``: saved states ``(len(saveat), *y0.shape)`` (``None`` when the runner gets them from a forward call);
    ``nfe_forward``/``nfe_backward``: evaluations of ``func`` counted in the forward / backward pass (``None``:
    not countable)."""

    loss: float
    dparams: np.ndarray
    dy0: np.ndarray
    ys: np.ndarray | None = None
    nfe_forward: int | None = None
    nfe_backward: int | None = None


def output_times(problem) -> tuple[list[float], int]:
    """``(t, offset)``: the times passed to ``odeint`` and the index of the first saved row in its output."""
    saveat = [float(s) for s in problem.saveat]
    if saveat[0] == problem.t0:
        return saveat, 0
    return [problem.t0, *saveat], 1


def check_output_shape(shape: tuple, n_times: int, y0_shape: tuple) -> None:
    """Raise ``SolverFailure('solver_error', ...)`` unless ``shape == (n_times, *y0_shape)``."""
    expected = (n_times, *y0_shape)
    if tuple(shape) != expected:
        raise SolverFailure("solver_error", f"odeint returned shape {tuple(shape)}, expected (len(t), *y0.shape) = "
                            f"{expected}")


def step_kwargs(step: dict) -> dict:
    """The keyword arguments ``odeint`` gets for one step setting (``{'dt': h}`` or ``{'rtol': r, 'atol': a}``)."""
    if "dt" in step:
        return {"dt": float(step["dt"])}
    return {"rtol": float(step["rtol"]), "atol": float(step["atol"])}

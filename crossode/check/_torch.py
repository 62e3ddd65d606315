"""The PyTorch side of ``crossode check``: call a torchdiffeq-shaped ``odeint`` on a neutral problem (imports torch).

``func`` is :class:`crossode.backends.torch.VectorField` (an ``nn.Module`` whose one parameter is the flat
parameter vector) wrapped in a counting module; ``y0`` is a float64 leaf that requires grad; ``t`` is a float64
tensor ``[t0, *saveat]``. The gradient is ``torch.autograd.grad(loss, [params, y0])``.
"""

from __future__ import annotations

import numpy as np
import torch

from .._record import SolverFailure
from ..backends.torch import make_vector_field
from ._contract import GradientResult, check_output_shape, output_times

__all__ = ["TorchRunner"]


class _Counting(torch.nn.Module):
    """``func`` as the solver sees it: the problem's field, counting its evaluations."""

    def __init__(self, field: torch.nn.Module):
        super().__init__()
        self.field = field
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return self.field(t, y)


class TorchRunner:
    """Runs the user's ``odeint`` on one problem; every call recomputes everything."""

    framework = "torch"
    note = ""

    def __init__(self, odeint, problem):
        self.odeint = odeint
        self.problem = problem
        self.times, self.offset = output_times(problem)
        self.func = _Counting(make_vector_field(problem, dtype=torch.float64))
        self.t = torch.tensor(self.times, dtype=torch.float64)
        w = problem.loss.weights
        self.weights = None if w is None else torch.tensor(w, dtype=torch.float64)

    def _solve(self, y0: torch.Tensor, kwargs: dict) -> torch.Tensor:
        ys = self.odeint(self.func, y0, self.t, **kwargs)
        if not isinstance(ys, torch.Tensor):
            raise SolverFailure("solver_error", f"odeint returned {type(ys).__name__}, expected a torch.Tensor")
        check_output_shape(tuple(ys.shape), len(self.times), tuple(y0.shape))
        if not bool(torch.isfinite(ys.detach()).all()):
            raise SolverFailure("diverged", "odeint returned non-finite states")
        return ys[self.offset :]

    def gradient(self, kwargs: dict) -> GradientResult:
        """Loss, saved states and ``d loss / d(params, y0)`` through the user's solver; contract violations raise
        :class:`~crossode.SolverFailure`."""
        y0 = torch.tensor(self.problem.y0, dtype=torch.float64, requires_grad=True)
        self.func.calls = 0
        ys = self._solve(y0, kwargs)
        nfe_forward = self.func.calls
        loss = self.problem.loss.apply(ys, self.weights)
        if not loss.requires_grad:
            raise SolverFailure("solver_error", "the output is detached from autograd (requires_grad=False): no "
                                "gradient reaches y0 or the parameters")
        params = self.func.field.params
        self.func.calls = 0
        dp, dy0 = torch.autograd.grad(loss, [params, y0], allow_unused=True)
        nfe_backward = self.func.calls
        for what, g in (("the parameters", dp), ("y0", dy0)):
            if g is None:
                raise SolverFailure("solver_error", f"the gradient w.r.t. {what} is None: the output does not depend "
                                    "on it through autograd (detached, or computed outside torch)")
        out = GradientResult(
            loss=float(loss.detach()), dparams=dp.detach().double().numpy().copy(),
            dy0=dy0.detach().double().numpy().copy(), ys=ys.detach().double().numpy().copy(),
            nfe_forward=nfe_forward, nfe_backward=nfe_backward,
        )
        if not (np.all(np.isfinite(out.dparams)) and np.all(np.isfinite(out.dy0))):
            raise SolverFailure("diverged", "the gradient is non-finite")
        return out

    def loss_function(self, kwargs: dict):
        """``J(theta)``, ``theta = [params, y0]``: the loss through the user's solver, as a float."""
        m = self.problem.n_params
        params = self.func.field.params

        def J(theta: np.ndarray) -> float:
            saved = params.detach().clone()
            try:
                with torch.no_grad():
                    params.copy_(torch.as_tensor(theta[:m], dtype=params.dtype))
                y0 = torch.tensor(theta[m:], dtype=torch.float64, requires_grad=True)
                ys = self._solve(y0, kwargs)
                return float(self.problem.loss.apply(ys, self.weights).detach())
            finally:
                with torch.no_grad():
                    params.copy_(saved)

        return J

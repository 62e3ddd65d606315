"""crossode's PyTorch backend: explicit RK and ALF solvers with Direct, Checkpointed, Backsolve, Forward and MALI
gradients. :func:`odeint` / :func:`odeint_adjoint` are the native API for training code (torchdiffeq's keywords
or crossode's descriptors); :class:`TorchBackend` the harness adapter;
:func:`make_vector_field` builds a neutral problem's field as an ``nn.Module`` for any torch solver;
:func:`make_trainer` is the backend's side of ``crossode train`` (``torch.optim.Adam``)."""

import torch

from ..._rhs import SymbolicRHS
from ._backend import TorchBackend as TorchBackend
from ._field import make_field
from ._train import make_trainer as make_trainer
from .odeint import odeint as odeint, odeint_adjoint as odeint_adjoint

__all__ = ["TorchBackend", "odeint", "odeint_adjoint", "make_vector_field", "VectorField", "make_trainer"]


class VectorField(torch.nn.Module):
    """A neutral problem's ``f(t, y)`` as an ``nn.Module`` with ONE parameter, ``params``: the flat parameter
    vector in the problem's layout, so ``params.grad`` (or ``autograd.grad(..., field.params)``) is ``dparams``.

    Every evaluation reads ``params`` directly, so adjoint solvers that differentiate w.r.t. ``func.parameters()``
    (torchdiffeq's ``odeint_adjoint``) see it as well as plain autograd. ``t`` may be a number or a 0-d tensor;
    ``y`` has shape ``(..., n_states)``.
    """

    def __init__(self, problem, dtype: torch.dtype = torch.float64, device="cpu"):
        super().__init__()
        self.problem = problem
        self.params = torch.nn.Parameter(torch.tensor(problem.params, dtype=dtype, device=device))
        rhs = problem.rhs
        self._gather = None
        if isinstance(rhs, SymbolicRHS) and rhs.linear_matrix is not None:
            # y' = A(p) y with each entry of A one parameter or a constant (the zoo's matrix problems): A is one
            # gather from `params`, a few ops per evaluation instead of one per term.
            flat = list(rhs.linear_matrix)
            pos = {sym: i for i, sym in enumerate(rhs.param_symbols)}
            if all(e in pos or e.is_number for e in flat):
                n = rhs.n_states
                kw = {"device": device}
                self.register_buffer("_idx", torch.tensor([pos.get(e, 0) for e in flat], **kw).reshape(n, n))
                self.register_buffer("_is_param", torch.tensor([e in pos for e in flat], **kw).reshape(n, n))
                self.register_buffer("_const", torch.tensor([0.0 if e in pos else float(e) for e in flat],
                                                            dtype=dtype, **kw).reshape(n, n))
                self._gather = True
        self._f = None if self._gather else make_field(problem, self.params)

    def forward(self, t, y: torch.Tensor) -> torch.Tensor:
        """``dy/dt`` at ``(t, y)``, shaped like ``y``."""
        if self._gather:
            a = torch.where(self._is_param, self.params[self._idx], self._const)
            return y @ a.T.to(y.dtype)
        return self._f(t, y)


def make_vector_field(problem, dtype: torch.dtype = torch.float64, device="cpu") -> VectorField:
    """The problem's vector field as a :class:`VectorField` (``nn.Module``; ``field.params`` the flat parameters)."""
    return VectorField(problem, dtype=dtype, device=device)

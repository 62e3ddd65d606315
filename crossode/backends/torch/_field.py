"""Torch vector fields built from a neutral :class:`~crossode.Problem`.

The parameters are ONE flat tensor ``p`` in the problem's layout (so ``dparams`` comes back in the neutral
flat layout with no reshuffling); ``f(t, y)`` closes over it. States may carry leading batch dimensions:
``y[..., i]`` is state ``i`` (a batched problem's ``y`` is ``(batch, n_states)``). ``t`` is a number or a 0-d
tensor, or with per-sample steps a float64 tensor of shape ``(batch,)``: one time per row of ``y``.

MLP fields (:class:`~crossode.MLPRHS`): ``F.linear`` per layer on the feature map of ``y`` (``cube``: ``y*y*y``);
with ``time_input`` the first layer is ``F.linear(phi(y), W1[:, :n], b1 + t * W1[:, n])``, the same as
``W1 @ [phi(y), t] + b1`` without building the concatenated input.

CNF fields (:class:`~crossode.CNFRHS`, state ``[x, logp]``): the network as above on ``x = y[..., :d]``, and the
exact trace of its Jacobian by forward tangents written as plain tensor operations, ``U_1 = W1[:, :d]^T``,
``U_{l+1} = (s'(z_l) * U_l) W_{l+1}^T`` (``(..., d, width)``, row ``j`` = ``dz/dx_j``), ``tr = sum_j U_L[..., j, j]``,
so autograd differentiates it (second derivatives included) for Direct, Backsolve and MALI alike, and it runs
under ``torch.no_grad`` (no ``autograd.grad`` inside the field).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import sympy
import torch
import torch.nn.functional as F

from ..._cnf import CNFRHS
from ..._errors import UnsupportedError
from ..._rhs import MLPRHS, SymbolicRHS

__all__ = ["TORCH_NAMESPACE", "make_field", "make_field_and_params"]


def _unary(torch_fn: Callable, math_fn: Callable) -> Callable:
    # SymPy leaves constant sub-expressions such as sqrt(2) unevaluated, so they reach us as Python numbers.
    def fn(x):
        return torch_fn(x) if isinstance(x, torch.Tensor) else math_fn(x)

    return fn


TORCH_NAMESPACE: dict[str, Callable] = {
    name: _unary(getattr(torch, name), getattr(math, name))
    for name in ("sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log", "sqrt")
}
TORCH_NAMESPACE.update(abs=_unary(torch.abs, abs), Abs=_unary(torch.abs, abs))
"""Function names SymPy's printer emits, mapped to torch (tensors) or math (Python numbers)."""

_ACTIVATIONS: dict[str, Callable] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "identity": lambda z: z,
}


def _sigmoid_and_derivative(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    s = torch.sigmoid(z)
    return s, s * (1.0 - s)


def _tanh_and_derivative(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h = torch.tanh(z)
    return h, 1.0 - h * h


_ACTIVATIONS_AND_DERIVATIVES: dict[str, Callable] = {
    "tanh": _tanh_and_derivative,
    "softplus": lambda z: (F.softplus(z), torch.sigmoid(z)),
    "sigmoid": _sigmoid_and_derivative,
    "identity": lambda z: (z, torch.ones_like(z)),
}
"""``z -> (s(z), s'(z))`` for the CNF activations (:data:`crossode._cnf.CNF_ACTIVATIONS`)."""


def _cnf_field(rhs: CNFRHS, p: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    act = _ACTIVATIONS_AND_DERIVATIVES[rhs.activation]
    d, time_input = rhs.dims, rhs.time_input

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ws = rhs.unflatten(p)
        x = y[..., :d]
        w, b = ws[0]
        wx = w[:, :d]
        if time_input:
            tt = t.to(w.dtype) if isinstance(t, torch.Tensor) else t
            z = F.linear(x, wx, b + tt * w[:, d])
        else:
            z = F.linear(x, wx, b)
        u = wx.T  # dz_1/dx: (d, h_1), row j = direction x_j (the same for every sample)
        for w, b in ws[1:]:
            h, ds = act(z)
            u = F.linear(ds.unsqueeze(-2) * u, w)  # (..., d, out)
            z = F.linear(h, w, b)
        tr = torch.diagonal(u, dim1=-2, dim2=-1).sum(-1).expand(y.shape[:-1])
        return torch.cat([z, -tr.unsqueeze(-1)], dim=-1)

    return f


def make_field_and_params(problem, p: torch.Tensor) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """``(f, params)``: the field and the tensors the solver should differentiate (passed as ``params``).

    Linear fields ``f = A(p) y`` (``SymbolicRHS.linear_matrix``) are evaluated as one matrix product with ``A``
    built once from ``p`` *outside* the solver: the solver differentiates w.r.t. ``A`` and autograd chains
    ``dL/dA`` into ``p``. Per-component symbolic evaluation costs one torch op per term (e.g. ~200 ops per
    evaluation for a 10x10 system); the matrix form is one. Other fields close over ``p`` and return ``(p,)``.
    """
    rhs = problem.rhs
    if isinstance(rhs, SymbolicRHS) and rhs.linear_matrix is not None:
        n = rhs.n_states
        entries = sympy.lambdify((rhs.param_symbols,), list(rhs.linear_matrix), modules=[TORCH_NAMESPACE, "math"])
        vals = entries(p.unbind(0) if len(rhs.params) else ())
        a = torch.stack([
            v.to(p.dtype) if isinstance(v, torch.Tensor) else torch.tensor(float(v), dtype=p.dtype, device=p.device)
            for v in vals
        ]).reshape(n, n)

        def f_linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y @ a.T

        return f_linear, (a,)
    return make_field(problem, p), (p,)


def make_field(problem, p: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(t, y)`` for ``problem.rhs`` with flat parameters ``p`` (a tensor in the problem's layout)."""
    rhs = problem.rhs
    if isinstance(rhs, SymbolicRHS):
        fn = rhs.lambdify(TORCH_NAMESPACE)
        n_p = len(rhs.params)

        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            comps = fn(t, y.unbind(-1), p.unbind(0) if n_p else ())
            shape = y.shape[:-1]
            # Constant components come back as numbers and t-only ones as 0-d float64 tensors: broadcast
            # and cast everything to the state's shape and dtype.
            out = [
                c.to(y.dtype).expand(shape)
                if isinstance(c, torch.Tensor)
                else torch.full(shape, float(c), dtype=y.dtype, device=y.device)
                for c in comps
            ]
            return torch.stack(out, dim=-1)

        return f
    if isinstance(rhs, MLPRHS):
        act = _ACTIVATIONS[rhs.activation]
        layers = rhs.unflatten  # called per evaluation: slicing views of `p`, cheap and graph-correct
        n, time_input, cube = rhs.n_states, rhs.time_input, rhs.features == "cube"

        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            ws = layers(p)
            h = y * y * y if cube else y
            w, b = ws[0]
            if time_input:
                tt = t.to(w.dtype) if isinstance(t, torch.Tensor) else t
                if isinstance(tt, torch.Tensor) and tt.dim():  # per-sample steps: one time per row of y
                    tt = tt.unsqueeze(-1)
                h = F.linear(h, w[:, :n], b + tt * w[:, n])
            else:
                h = F.linear(h, w, b)
            for w, b in ws[1:]:
                h = F.linear(act(h), w, b)
            return h

        return f
    if isinstance(rhs, CNFRHS):
        return _cnf_field(rhs, p)
    raise UnsupportedError(f"the PyTorch backend cannot build a vector field from {type(rhs).__name__}.")

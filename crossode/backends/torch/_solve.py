"""The dispatcher shared by :func:`~crossode.backends.torch.odeint` and the backend: one solve, one gradient method."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..._errors import UnsupportedError
from ..._record import Stats
from ..._sensitivity import AbstractSensitivity, Backsolve, Checkpointed, Direct, Forward
from ..._solvers import Adaptive, Fixed
from ..._tableaux import ButcherTableau
from ._rk import Field, integrate

__all__ = ["SolveSpec", "solve", "add_stat", "grad_or_none"]


@dataclasses.dataclass
class SolveSpec:
    """Everything about one solve except the differentiable inputs ``(y0, *params)``.

    ``func(t, y)`` is the user's vector field; ``params`` the tensors it closes over that receive gradients;
    ``t_save`` the save times (Python floats in integration order, inside ``[t0, t1]``).
    """

    func: Callable
    tab: ButcherTableau
    step: Adaptive | Fixed
    t0: float
    t1: float
    t_save: list
    params: tuple
    stats: Stats | None = None

    def field(self, device: torch.device, *, on_vjp: Callable[[], None] | None = None) -> Field:
        """A fresh counting :class:`Field` around :attr:`func`."""
        return Field(self.func, device, on_vjp=on_vjp)


def add_stat(stats: Stats | None, name: str, value: int) -> None:
    """``stats.name += value``, treating ``None`` as 0 (no-op without ``stats``)."""
    if stats is not None:
        setattr(stats, name, (getattr(stats, name) or 0) + int(value))


def grad_or_none(outputs, inputs, grad_outputs, **kwargs) -> list:
    """``torch.autograd.grad`` over the ``inputs`` that require grad; ``None`` for the others (and unused ones)."""
    live = [i for i, x in enumerate(inputs) if x.requires_grad]
    res = [None] * len(inputs)
    if live:
        grads = torch.autograd.grad(
            outputs, [inputs[i] for i in live], grad_outputs, allow_unused=True, **kwargs
        )
        for i, g in zip(live, grads):
            res[i] = g
    return res


def solve(spec: SolveSpec, y0: torch.Tensor, sensitivity: AbstractSensitivity) -> torch.Tensor:
    """Solve and return the saved states stacked as ``(len(t_save), *y0.shape)``, differentiable w.r.t. ``y0``
    and ``spec.params`` by ``sensitivity``. Fills ``spec.stats`` (forward counts now, ``nfe_backward`` when
    autograd runs the backward pass)."""
    stats = spec.stats
    if isinstance(sensitivity, Direct):
        on_vjp = None
        if stats is not None:
            # Each hook adds one VJP as autograd reaches it; none fires for rejected or dead-end stages.
            stats.nfe_backward = stats.nfe_backward or 0
            on_vjp = lambda: add_stat(stats, "nfe_backward", 1)  # noqa: E731
        field = spec.field(y0.device, on_vjp=on_vjp)
        sol = integrate(field, spec.tab, y0, spec.t0, spec.t1, spec.t_save, spec.step)
        add_stat(stats, "nfe_forward", field.nfe)
        add_stat(stats, "steps_accepted", sol.accepted)
        add_stat(stats, "steps_rejected", sol.rejected)
        return torch.stack(sol.ys)
    if isinstance(sensitivity, Checkpointed):
        from ._checkpoint import checkpointed_solve

        return checkpointed_solve(spec, y0)
    if isinstance(sensitivity, Backsolve):
        from ._adjoint import backsolve_solve

        return backsolve_solve(spec, y0)
    if isinstance(sensitivity, Forward):
        from ._forward import forward_solve

        return forward_solve(spec, y0)
    raise UnsupportedError(
        f"`sensitivity={sensitivity!r}` is not available in the PyTorch backend for explicit RK solvers; use "
        "Direct(), Checkpointed(), Backsolve() or Forward()."
    )

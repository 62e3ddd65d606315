"""Checkpointed gradient (ACA, Zhuang et al. 2020): store accepted steps, recompute each one in reverse.

The forward pass runs under ``no_grad`` and keeps, for every accepted step, its start state ``y_n`` and
``(t_n, h_n)``. The backward pass walks the steps in reverse, recomputes each step with a graph and
backpropagates the adjoint through it alone. Both passes perform the same floating-point operations as
:class:`~crossode.Direct` on the same grid, so the gradient equals Direct's to round-off (only the order of
the gradient sums differs). Memory: one state per accepted step plus one step's graph.

NFE: ``nfe_forward`` as Direct; ``nfe_backward`` counts the evaluations recomputed in reverse, each of which
is differentiated once (``s`` per step, ``s - 1`` for FSAL tableaux, whose last stage is not needed).
"""

from __future__ import annotations

import torch

from ._rk import integrate, rk_step
from ._solve import SolveSpec, add_stat, grad_or_none

__all__ = ["checkpointed_solve"]


class _Checkpointed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        field = spec.field(y0.device)
        with torch.no_grad():
            sol = integrate(field, spec.tab, y0, spec.t0, spec.t1, spec.t_save, spec.step, record=True)
        add_stat(spec.stats, "nfe_forward", field.nfe)
        add_stat(spec.stats, "steps_accepted", sol.accepted)
        add_stat(spec.stats, "steps_rejected", sol.rejected)
        ctx.spec = spec
        ctx.sol = sol
        return torch.stack(sol.ys)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        spec, sol = ctx.spec, ctx.sol
        params = spec.params
        field = spec.field(grad_ys.device)
        adj = torch.zeros_like(grad_ys[0])
        adj_p = [torch.zeros_like(p) for p in params]
        j = len(sol.save_steps) - 1
        # Steps after the last save do not influence the outputs: start from the last save.
        for n in range(sol.save_steps[-1], 0, -1):
            while j >= 0 and sol.save_steps[j] == n:
                adj = adj + grad_ys[j]
                j -= 1
            t, h = sol.steps[n - 1]
            with torch.enable_grad():
                y = sol.states[n - 1].detach().requires_grad_(True)
                y_new, _, _ = rk_step(field, spec.tab, t, y, h, field(t, y), error=False, last_stage=False)
                grads = grad_or_none(y_new, (y, *params), adj)
            adj = grads[0]
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    adj_p[i] = adj_p[i] + g
        while j >= 0:
            adj = adj + grad_ys[j]
            j -= 1
        add_stat(spec.stats, "nfe_backward", field.nfe)
        return (None, adj, *adj_p)


def checkpointed_solve(spec: SolveSpec, y0: torch.Tensor) -> torch.Tensor:
    """Saved states ``(len(t_save), *y0.shape)`` whose backward pass recomputes steps from checkpoints."""
    return _Checkpointed.apply(spec, y0, *spec.params)

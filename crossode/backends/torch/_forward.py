"""Forward sensitivities: the exact derivative of the discrete solve, propagated alongside it.

The state is augmented with the sensitivity matrix ``S = d y / d (y0, p)`` (``N x (N + P)``, ``N`` states,
``P`` parameters) and the *same* RK method is applied to ``y' = f``, ``S' = J_y S + [0 | J_p]``. For explicit
RK with the step sequence held fixed this is exactly the forward-mode derivative of the discrete map (RK
methods commute with differentiation), and error control looks at ``y`` only, so the steps — and hence the
primal — are bitwise those of :class:`~crossode.Direct`: the gradient equals Direct's to round-off.

The Jacobian rows ``[J_y | J_p]`` come from ``N`` VJPs per evaluation, batched with
``torch.autograd.grad(is_grads_batched=True)``: cheap for small systems, quadratic in ``N`` in memory. The
backend reports problems with ``N * (N + P)`` above :data:`MAX_FORWARD_ENTRIES` as unsupported.

NFE: ``nfe_forward`` counts primal evaluations; ``nfe_backward`` counts the derivative evaluations (``N``
VJPs per primal evaluation), although they happen during the forward pass.
"""

from __future__ import annotations

import torch

from ..._solvers import Adaptive
from ._control import initial_step, rms_norm
from ._rk import integrate
from .._capabilities import TORCH_MAX_FORWARD_ENTRIES
from ._solve import SolveSpec, add_stat, grad_or_none

__all__ = ["forward_solve", "MAX_FORWARD_ENTRIES"]

MAX_FORWARD_ENTRIES = TORCH_MAX_FORWARD_ENTRIES
"""Largest ``N * (N + P)`` (entries of the sensitivity matrix) the backend accepts for :class:`Forward`
(declared in :mod:`crossode.backends._capabilities`, which decides support without importing torch)."""


def _jacobian_rows(fy: torch.Tensor, inputs: tuple, n: int) -> list:
    """``d fy / d x`` for every component of ``fy`` and each ``x`` in ``inputs``: ``(n, *x.shape)`` tensors, or
    ``None`` where ``x`` does not require grad or is unused."""
    eye = torch.eye(n, dtype=fy.dtype, device=fy.device).view(n, *fy.shape)
    try:
        return grad_or_none(fy, inputs, eye, is_grads_batched=True, retain_graph=True)
    except RuntimeError:
        # Some operations have no batching rule for their backward: fall back to one VJP per row.
        rows = [grad_or_none(fy, inputs, eye[i], retain_graph=True) for i in range(n)]
        return [None if rows[0][k] is None else torch.stack([r[k] for r in rows]) for k in range(len(inputs))]


class _Forward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        params = spec.params
        shape, dtype, device = y0.shape, y0.dtype, y0.device
        n = y0.numel()
        sizes = [p.numel() for p in params]
        m = n + sum(sizes)
        field = spec.field(device)

        def aug_field(t: float, z: torch.Tensor) -> torch.Tensor:
            y = z[:, 0].reshape(shape)
            sens = z[:, 1:]
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                fy = field(t, y_)
                rows = _jacobian_rows(fy, (y_, *params), n)
            ds = torch.zeros_like(sens) if rows[0] is None else rows[0].reshape(n, n) @ sens
            if sizes:
                jp = torch.cat(
                    [
                        torch.zeros(n, s, dtype=dtype, device=device) if r is None else r.reshape(n, s).to(dtype)
                        for r, s in zip(rows[1:], sizes)
                    ],
                    dim=1,
                )
                ds = torch.cat([ds[:, :n], ds[:, n:] + jp], dim=1)
            return torch.cat([fy.detach().reshape(n, 1), ds], dim=1)

        step = spec.step
        rtol = getattr(step, "rtol", 1.0)
        atol = getattr(step, "atol", 1.0)

        def norm(err, y, y_new):
            # Error control on the primal column only: the step sequence is the primal solve's.
            return rms_norm(err[:, 0].contiguous(), y[:, 0].contiguous(), y_new[:, 0].contiguous(), rtol, atol)

        h0 = None
        with torch.no_grad():
            if isinstance(step, Adaptive) and step.dt0 is None:
                # The primal's own initial step (same arithmetic as Direct), not one for the augmented state.
                f0 = field(spec.t0, y0)
                direction = 1.0 if spec.t1 > spec.t0 else -1.0
                h0 = initial_step(field, spec.t0, y0, f0, spec.tab.error_order, rtol, atol, direction)
            z0 = torch.cat([y0.reshape(n, 1), torch.eye(n, m, dtype=dtype, device=device)], dim=1)
            sol = integrate(aug_field, spec.tab, z0, spec.t0, spec.t1, spec.t_save, step, h0=h0, norm=norm)
        add_stat(spec.stats, "nfe_forward", field.nfe)
        add_stat(spec.stats, "nfe_backward", field.nfe * n)
        add_stat(spec.stats, "steps_accepted", sol.accepted)
        add_stat(spec.stats, "steps_rejected", sol.rejected)
        zs = torch.stack(sol.ys)  # (n_save, n, 1 + m)
        ctx.spec = spec
        ctx.save_for_backward(zs[:, :, 1:])
        return zs[:, :, 0].reshape(len(sol.ys), *shape)

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        (sens,) = ctx.saved_tensors
        n = sens.shape[1]
        g = torch.einsum("kn,knm->m", grad_ys.reshape(grad_ys.shape[0], n).to(sens.dtype), sens)
        out, k = [g[:n].view(grad_ys.shape[1:])], n
        for p in ctx.spec.params:
            out.append(g[k : k + p.numel()].view(p.shape).to(p.dtype))
            k += p.numel()
        return (None, *out)


def forward_solve(spec: SolveSpec, y0: torch.Tensor) -> torch.Tensor:
    """Saved states ``(len(t_save), *y0.shape)`` with forward-mode sensitivities computed alongside."""
    return _Forward.apply(spec, y0, *spec.params)

"""Backsolve: the continuous adjoint of Chen et al. (2018), solved backwards with the forward solver.

Between consecutive save times the augmented state ``[y, a, a_p]`` is integrated backwards with

    y' = f(t, y),   a' = -a^T df/dy,   a_p' = -a^T df/dp,

starting from the forward solution at the later save time (reset at every save time, as torchdiffeq does,
so the reconstruction error of ``y`` does not accumulate across saves), with the saved output's cotangent
added to ``a`` at its time. ``a(t0)`` and ``a_p(t0)`` are the gradients. The same tableau and step control
are used backwards; adaptive error control covers the whole augmented state (Diffrax's default), and
``Fixed`` steps walk the forward grid in reverse. This is optimise-then-discretise: the gradient matches the
discrete one only to the solver tolerance.

NFE: ``nfe_backward`` counts augmented evaluations, each one VJP of ``f`` (which includes its primal).
"""

from __future__ import annotations

import torch

from ..._solvers import Fixed, fixed_grid
from ._rk import integrate
from ._solve import SolveSpec, add_stat, grad_or_none

__all__ = ["backsolve_solve"]


class _Backsolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: SolveSpec, y0: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        field = spec.field(y0.device)
        with torch.no_grad():
            sol = integrate(field, spec.tab, y0, spec.t0, spec.t1, spec.t_save, spec.step)
        add_stat(spec.stats, "nfe_forward", field.nfe)
        add_stat(spec.stats, "steps_accepted", sol.accepted)
        add_stat(spec.stats, "steps_rejected", sol.rejected)
        ys = torch.stack(sol.ys)
        ctx.spec = spec
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    def backward(ctx, grad_ys: torch.Tensor):
        spec = ctx.spec
        (ys,) = ctx.saved_tensors
        params = spec.params
        shape = ys.shape[1:]
        n = ys[0].numel()
        sizes = [p.numel() for p in params]
        field = spec.field(ys.device)

        def aug_field(t: float, z: torch.Tensor) -> torch.Tensor:
            y = z[:n].view(shape)
            a = z[n : 2 * n].view(shape)
            with torch.enable_grad():
                y_ = y.detach().requires_grad_(True)
                fy = field(t, y_)
                # grad_outputs = -a gives the adjoint right-hand sides directly.
                vjps = grad_or_none(fy, (y_, *params), -a)
            zero_y = torch.zeros(n, dtype=z.dtype, device=z.device)
            parts = [fy.detach().reshape(-1), zero_y if vjps[0] is None else vjps[0].reshape(-1)]
            for g, p in zip(vjps[1:], params):
                zero_p = torch.zeros(p.numel(), dtype=z.dtype, device=z.device)
                parts.append(zero_p if g is None else g.reshape(-1).to(z.dtype))
            return torch.cat(parts)

        t_save = spec.t_save
        if isinstance(spec.step, Fixed):
            pts = fixed_grid(spec.t0, spec.t1, spec.step.dt, t_save, max_steps=spec.step.max_steps)
            grid = [float(x) for x in pts]
            index = {t: i for i, t in enumerate(grid)}

        def segment(z: torch.Tensor, t_from: float, t_to: float, h0: float | None):
            kw = {}
            if isinstance(spec.step, Fixed):
                i, k = index[t_from], index[t_to]
                kw["grid"] = grid[k : i + 1][::-1]
            else:
                kw["h0"] = h0
            sol = integrate(aug_field, spec.tab, z, t_from, t_to, [t_to], spec.step, **kw)
            return sol.ys[-1], sol.h_next

        zp = [torch.zeros(s, dtype=ys.dtype, device=ys.device) for s in sizes]
        last = len(t_save) - 1
        z = torch.cat([ys[last].reshape(-1), grad_ys[last].reshape(-1), *zp])
        h = None
        with torch.no_grad():
            for i in range(last, 0, -1):
                z, h = segment(z, t_save[i], t_save[i - 1], h)
                # Restart y from the forward solution; add this output's cotangent.
                z = torch.cat([ys[i - 1].reshape(-1), z[n : 2 * n] + grad_ys[i - 1].reshape(-1), z[2 * n :]])
            if t_save[0] != spec.t0:
                z, h = segment(z, t_save[0], spec.t0, h)
        add_stat(spec.stats, "nfe_backward", field.nfe)
        adj_y0 = z[n : 2 * n].view(shape)
        adj_p, k = [], 2 * n
        for p, s in zip(params, sizes):
            adj_p.append(z[k : k + s].view(p.shape).to(p.dtype))
            k += s
        return (None, adj_y0, *adj_p)


def backsolve_solve(spec: SolveSpec, y0: torch.Tensor) -> torch.Tensor:
    """Saved states ``(len(t_save), *y0.shape)`` whose backward pass solves the continuous adjoint ODE."""
    return _Backsolve.apply(spec, y0, *spec.params)

"""MALI (memory-efficient ALF gradient) and ACA-style checkpointing for PyTorch, as autograd Functions.

MALI (Zhuang et al., ICLR 2021; ``shared/notes/mali.md``) stores only the end state ``(z, v)``, the float64 grid
of accepted step boundaries and the initial ``(z0, v0)`` (inputs, kept for the reconstruction check). The backward
pass walks the steps in reverse; per step it evaluates ``u = f(s + h/2, k)`` once *with* a graph at
``k = z' - (h/2) v'``, uses that single ``u`` both for the exact inverse step (giving the step's input ``(z, v)``)
and for the step's VJP (:func:`~._alf.alf_step_vjp`): one evaluation + one VJP per step, one step's graph alive
at a time. Cotangents of the saved outputs are added to the ``z``-adjoint when the sweep passes their time.

After the sweep the reconstructed ``(z0, v0)`` is compared with the stored one by
:func:`crossode._sensitivity.mali_reconstruction` (the rule the JAX backend uses too: drift relative to the start state,
limit ``MALI.reconstruction_rtol`` or automatic from the dtype, the step count and ``rtol``); above the limit the
backward raises :class:`~crossode.SolverFailure` ``('reconstruction_error')``, which ``loss.backward()``
re-raises unchanged.
This is what catches damped ALF (``eta < 1``, whose inverse amplifies errors by ``1/|1 - 2 eta|`` per step) and
parasitic growth of undamped ALF on decaying modes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch

from ..._errors import InvalidInputError
from ..._record import SolverFailure, Stats
from ..._sensitivity import MALI, Direct, mali_reconstruction, mali_reconstruction_failure
from ._alf import _add_stats, _Counter, _time, _vjp, _vjp_fast_ok, march
from ._persample import add_backward, march_alf, reverse_sweep, uses_per_sample
from ._solve import SaveTimes, StartTime, check_params_declared, count_backward

__all__ = ["solve", "mali_saved_summary"]


@dataclasses.dataclass(eq=False)
class _Config:
    func: Callable
    times: list
    params: tuple
    eta: float
    step: object
    stats: Stats | None
    reconstruction_rtol: float | None = None
    f0: torch.Tensor | None = None  # f(t0, y0) = v0, detached, for dL/dt0
    per_sample: bool = False  # Adaptive(batch_steps="per_sample") on a batched state: see _persample.py


# --------------------------------------------------------------------------------------------- helpers


class _CountVJP(torch.autograd.Function):
    """Identity that adds 1 to ``stats.nfe_backward`` each time autograd backpropagates through it."""

    @staticmethod
    def forward(ctx, x, stats):
        ctx.stats = stats
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _add_stats(ctx.stats, bwd=1)
        return g, None


def _save_map(save_steps) -> dict[int, list[int]]:
    """Grid index -> indices of the outputs saved there."""
    out: dict[int, list[int]] = {}
    for i, n in enumerate(save_steps):
        out.setdefault(int(n), []).append(i)
    return out


def _param_grads(params, needs, acc):
    """Map accumulated gradients of the params that need them back onto every param slot."""
    it = iter(acc)
    out = []
    for p, need in zip(params, needs):
        if not need:
            out.append(None)
            continue
        g = next(it)
        out.append(torch.zeros_like(p) if g is None else g)
    return out


_MID_BLOCK = 256  # steps whose midpoint-time tensors the reverse sweep creates at once


def _reverse_sweep(cfg, needs_params, grid, save_steps, g, z, v, ks=None):
    """Shared reverse loop over the steps; returns adjoints and the reconstructed start state.

    Per step: ``u = f(s + h/2, k)`` once with a graph at the step's midpoint ``k`` (MALI: ``k = z' - (h/2) v'``
    from the reconstructed end state; Checkpointed: the stored ``ks[n]``), the step's VJP through it
    (:func:`~._alf.alf_step_vjp`, inlined here) and, MALI only, the exact inverse from the same ``u``.
    Runs with grad mode on throughout (only ``u`` gets a graph: everything else is built from tensors that do
    not require grad) and calls the autograd engine directly (``_alf._vjp``).
    """
    preq = [p for p, need in zip(cfg.params, needs_params) if need]
    acc = [None] * len(preq)
    a_z, a_v = torch.zeros_like(z), torch.zeros_like(v)
    saves = _save_map(save_steps)
    n_steps = len(grid) - 1
    func, eta = cfg.func, cfg.eta
    fast = _vjp_fast_ok(preq)
    acc_all = False  # every accumulator exists: later steps add with one _foreach_add_

    def all_used(grads):
        return all(x is not None for x in grads[1:])

    unit = eta == 1.0
    two_eta, one_m = 2.0 * eta, 1.0 - 2.0 * eta
    grid = grid.tolist()  # Python floats: the same float64 values, cheaper to index
    device = z.device
    block, mids = -1, ()
    with torch.enable_grad():
        for n in range(n_steps - 1, -1, -1):
            if n // _MID_BLOCK != block:
                # the midpoint times s + h/2 (the forward's float64 expression) of a block of steps as 0-d
                # tensors made in one go: cheaper than one torch.full per step, memory bounded by the block
                block = n // _MID_BLOCK
                lo, hi = block * _MID_BLOCK, min((block + 1) * _MID_BLOCK, n_steps)
                mids = torch.tensor([grid[i] + 0.5 * (grid[i + 1] - grid[i]) for i in range(lo, hi)],
                                    dtype=torch.float64, device=device).unbind()
            for i in saves.get(n + 1, ()):
                a_z = a_z + g[i]
            s = grid[n]
            h = grid[n + 1] - s  # the same float64 expression the forward used
            c = 0.5 * h
            if ks is None:
                k = z - c * v  # a fresh tensor without history: it can be made a leaf in place
                kk = k.requires_grad_(True)
            else:
                k = ks[n]
                kk = k.detach().requires_grad_(True)
            b = a_v + c * a_z  # total cotangent of v'
            u = func(mids[n - lo], kk)
            if u.requires_grad:
                # b + b == 2.0 * b bit for bit
                grads = _vjp(u, (kk, *preq), (b + b) if unit else two_eta * b, fast)
            else:  # f depends on neither the state nor the params
                grads = (None,) * (1 + len(preq))
            a_z = a_z if grads[0] is None else a_z + grads[0]
            # eta = 1: (1 - 2 eta) b + c a_k == c a_k - b bit for bit
            a_v = c * a_z - b if unit else one_m * b + c * a_z
            if ks is None:  # exact inverse step from the same u
                u = u.detach()
                k = k.detach()
                v = (u + u) - v if unit else (v - two_eta * u) / one_m
                z = k - c * v
            if acc_all and all_used(grads):
                torch._foreach_add_(acc, grads[1:])  # one call for every parameter (bit for bit `acc[j] += g`)
                continue
            for j in range(len(acc)):
                gj = grads[j + 1]
                if gj is not None:
                    if acc[j] is None:
                        acc[j] = gj.clone()  # owned: the engine may hand back an alias of the step's cotangent
                    else:
                        acc[j].add_(gj)
            acc_all = len(acc) > 0 and all(a is not None for a in acc)
    _add_stats(cfg.stats, bwd=2 * n_steps)
    return a_z, a_v, acc, z, v


def _check_adjoint(a_z: torch.Tensor, a_v: torch.Tensor) -> None:
    if not bool(torch.isfinite(a_z).all() and torch.isfinite(a_v).all()):
        raise SolverFailure("diverged", "ALF backward: the adjoint became non-finite.")


def _drift_mean_squares(z_rec, z0, z, v_rec, v0, v, a_z, a_v) -> list[float]:
    """The six mean squares :func:`crossode._sensitivity.mali_reconstruction` needs, and :func:`_check_adjoint`.

    ``(z_rec - z0, z0, z, v_rec - v0, v0, v)`` and the two adjoints, squared and averaged in one stacked
    reduction (float64 on CPU: the same numbers as separate means). A finite mean square of an adjoint implies
    finite entries; only when one is not finite does the exact ``isfinite`` check run.
    """
    with torch.no_grad():
        rows = (z_rec - z0, z0, z, v_rec - v0, v0, v, a_z, a_v)
        if all(r.shape == z0.shape and r.dtype == z0.dtype for r in rows):
            m = torch.stack(rows).square_().view(len(rows), -1).mean(1).tolist()
        else:
            m = [float(torch.mean(torch.abs(r.double()) ** 2)) for r in rows]
    if not (math.isfinite(m[6]) and math.isfinite(m[7])):
        _check_adjoint(a_z, a_v)
    return m[:6]


# --------------------------------------------------------------------------------------------- Functions


class _MALIFunction(torch.autograd.Function):
    """Forward: ALF under no_grad, keep the end state only. Backward: inverse steps + one-step VJPs."""

    @staticmethod
    def forward(ctx, cfg, z0, v0, *params):
        if cfg.per_sample:
            traj = march_alf(cfg.func, z0, v0, cfg.times, cfg.eta, cfg.step, cfg.stats)
            ctx.cfg = cfg
            ctx.grids, ctx.save_steps = traj.grids, traj.save_steps
            ctx.grid = np.concatenate(traj.grids)  # what grows with the steps (every sample's float64 grid)
            ctx.n_steps = sum(len(gr) - 1 for gr in traj.grids)
            ctx.save_for_backward(z0, v0, traj.z, traj.v)
            ctx.saved_bytes = sum(x.numel() * x.element_size() for x in (z0, v0, traj.z, traj.v))
            ctx.n_saved = 4
            return torch.stack(traj.saves)
        counter = _Counter()
        try:
            traj = march(cfg.func, z0, v0, cfg.times, cfg.eta, cfg.step, counter)
        finally:
            _add_stats(cfg.stats, fwd=counter.nfe_forward, acc=counter.accepted, rej=counter.rejected)
        ctx.cfg = cfg
        ctx.grid = traj.grid  # float64 NumPy: the only thing that grows with the number of steps
        ctx.save_steps = traj.save_steps
        ctx.save_for_backward(z0, v0, traj.z, traj.v)
        # structural memory hook (see mali_saved_summary)
        ctx.saved_bytes = sum(x.numel() * x.element_size() for x in (z0, v0, traj.z, traj.v))
        ctx.n_saved = 4
        return torch.stack(traj.saves)

    @staticmethod
    def backward(ctx, g):
        cfg = ctx.cfg
        if cfg.per_sample:
            return _per_sample_backward(ctx, g)
        z0, v0, z, v = ctx.saved_tensors
        grid = ctx.grid
        n_steps = len(grid) - 1

        a_z, a_v, acc, z_rec, v_rec = _reverse_sweep(cfg, ctx.needs_input_grad[3:], grid, ctx.save_steps, g, z, v)
        if ctx.needs_input_grad[2]:  # autograd now backpropagates a_v through v0 = f(t0, z0): one VJP
            _add_stats(cfg.stats, bwd=1)
        ms = _drift_mean_squares(z_rec, z0, z, v_rec, v0, v, a_z, a_v)
        drift, limit, rule = mali_reconstruction(ms, n_steps, torch.finfo(z0.dtype).eps, cfg.step,
                                                 cfg.reconstruction_rtol)
        ctx.drift, ctx.drift_limit = drift, limit  # read by mali_saved_summary (after the backward pass)
        if not drift <= limit:
            raise mali_reconstruction_failure(drift, limit, rule, n_steps, cfg.eta)
        return (None, a_z, a_v, *_param_grads(cfg.params, ctx.needs_input_grad[3:], acc))


def _per_sample_backward(ctx, g):
    """:meth:`_MALIFunction.backward` with per-sample grids: one batched reverse sweep, the reconstruction test
    of :func:`crossode._sensitivity.mali_reconstruction` per sample (each with its own step count)."""
    cfg = ctx.cfg
    z0, v0, z, v = ctx.saved_tensors
    needs = ctx.needs_input_grad[3:]
    preq = [p for p, need in zip(cfg.params, needs) if need]
    a_z, a_v, acc, z_rec, v_rec, calls, evals = reverse_sweep(
        cfg.func, cfg.eta, preq, ctx.grids, ctx.save_steps, g, z, v, _vjp, _vjp_fast_ok(preq))
    add_backward(cfg.stats, 2 * calls, 2 * evals)
    if ctx.needs_input_grad[2]:  # autograd now backpropagates a_v through v0 = f(t0, z0): one VJP
        add_backward(cfg.stats, 1, 1.0)
    _check_adjoint(a_z, a_v)
    with torch.no_grad():
        rows = torch.stack([(z_rec - z0), z0, z, (v_rec - v0), v0, v]).double()
        ms = rows.square().reshape(6, rows.shape[1], -1).mean(2).T.tolist()  # (batch, 6)
    eps = torch.finfo(z0.dtype).eps
    worst = None
    for b, msb in enumerate(ms):
        n_b = len(ctx.grids[b]) - 1
        drift, limit, rule = mali_reconstruction(msb, n_b, eps, cfg.step, cfg.reconstruction_rtol)
        ratio = drift / limit if drift <= limit else math.inf
        if worst is None or not ratio <= worst[0]:
            worst = (ratio, drift, limit, rule, n_b, b)
    _, drift, limit, rule, n_b, b = worst
    ctx.drift, ctx.drift_limit = drift, limit
    if not drift <= limit:
        f = mali_reconstruction_failure(drift, limit, rule, n_b, cfg.eta)
        raise SolverFailure(f.status, f"sample {b} (per-sample steps): {f.message}")
    return (None, a_z, a_v, *_param_grads(cfg.params, needs, acc))


class _CheckpointFunction(torch.autograd.Function):
    """ACA-style: the forward stores every step's midpoint ``k``; the backward re-evaluates ``f`` there + VJP."""

    @staticmethod
    def forward(ctx, cfg, z0, v0, *params):
        counter = _Counter()
        ks = []
        try:
            traj = march(cfg.func, z0, v0, cfg.times, cfg.eta, cfg.step, counter, visit=lambda n, k: ks.append(k))
        finally:
            _add_stats(cfg.stats, fwd=counter.nfe_forward, acc=counter.accepted, rej=counter.rejected)
        ctx.cfg = cfg
        ctx.grid = traj.grid
        ctx.save_steps = traj.save_steps
        ctx.save_for_backward(traj.z, traj.v, *ks)
        return torch.stack(traj.saves)

    @staticmethod
    def backward(ctx, g):
        cfg = ctx.cfg
        z, v, *ks = ctx.saved_tensors

        needs = ctx.needs_input_grad[3:]
        a_z, a_v, acc, _, _ = _reverse_sweep(cfg, needs, ctx.grid, ctx.save_steps, g, z, v, ks)
        _check_adjoint(a_z, a_v)
        if ctx.needs_input_grad[2]:  # the VJP of v0 = f(t0, z0) that autograd runs next
            _add_stats(cfg.stats, bwd=1)
        return (None, a_z, a_v, *_param_grads(cfg.params, ctx.needs_input_grad[3:], acc))


# --------------------------------------------------------------------------------------------- driver


def solve(func, y0, t, times, params, eta, sensitivity, step, stats):
    """Backend of :func:`~._alf.odeint_alf` after validation (``len(times) >= 2``)."""
    needs_grad = torch.is_grad_enabled() and (
        y0.requires_grad or t.requires_grad or any(p.requires_grad for p in params)
    )
    time_grad = needs_grad and t.requires_grad
    cfg = _Config(func=func, times=times, params=params, eta=eta, step=step, stats=stats)
    if isinstance(sensitivity, MALI):
        cfg.reconstruction_rtol = sensitivity.reconstruction_rtol
    cfg.per_sample = uses_per_sample(step, y0)

    check = torch.is_grad_enabled() and not isinstance(sensitivity, Direct)
    if time_grad:
        z0 = StartTime.apply(t, y0, cfg)
    elif check and y0.requires_grad:
        z0 = y0.view_as(y0)  # a node of its own: a closure over y0 itself is not mistaken for the state
    else:
        z0 = y0
    # v0 = f(t0, z0) with autograd on: the gradient reaching v0 flows through f into z0 and the params.
    v0 = func(_time(times[0], y0), z0)
    _add_stats(stats, fwd=1)
    if not isinstance(v0, torch.Tensor) or v0.shape != y0.shape or v0.dtype != y0.dtype:
        raise InvalidInputError(
            f"`func(t, y)` must return a tensor like `y0` (shape {tuple(y0.shape)}, {y0.dtype}); got "
            f"{getattr(v0, 'shape', type(v0).__name__)}, {getattr(v0, 'dtype', '')}."
        )
    if check:  # MALI and Checkpointed differentiate w.r.t. y0 and params only: nothing else may need grad
        check_params_declared(v0, params, sensitivity, stop_nodes=(z0.grad_fn,) if z0.grad_fn is not None else ())
    cfg.f0 = v0.detach()
    if needs_grad and v0.requires_grad and stats is not None and isinstance(sensitivity, Direct):
        v0 = _CountVJP.apply(v0, stats)  # MALI and Checkpointed count this VJP in their backward

    if not needs_grad or isinstance(sensitivity, Direct):
        if cfg.per_sample:  # backward NFE counted by hooks on the batched calls (see _persample.py)
            traj = march_alf(func, z0, v0, times, eta, step, stats)
        else:
            counter = _Counter()
            try:
                traj = march(func, z0, v0, times, eta, step, counter)
            finally:
                _add_stats(stats, fwd=counter.nfe_forward, acc=counter.accepted, rej=counter.rejected)
        ys = torch.stack(traj.saves)
        if needs_grad and stats is not None and ys.requires_grad and not cfg.per_sample:
            # one VJP per accepted step up to the last save (its midpoint evaluation), counted by ONE hook
            count_backward(ys, stats, int(traj.save_steps[-1]))
    else:
        fn = _MALIFunction if isinstance(sensitivity, MALI) else _CheckpointFunction
        ys = fn.apply(cfg, z0, v0, *params)
    if time_grad:
        ys = SaveTimes.apply(t, ys, cfg)
    return torch.cat([y0.unsqueeze(0), ys])


def mali_saved_summary(ys: torch.Tensor) -> dict | None:
    """What the MALI Function behind ``ys`` (an :func:`odeint_alf` output) keeps for the backward pass.

    Returns ``{'n_tensors', 'tensor_bytes', 'n_steps', 'grid_bytes', 'drift', 'drift_limit'}`` (tensors saved with
    ``save_for_backward``, the float64 step grid, and the reconstruction test of
    :func:`crossode._sensitivity.mali_reconstruction` once the backward pass has run, else ``None``), or ``None`` if
    ``ys`` was not produced through MALI. A structural check that only the grid grows with the number of steps.
    """
    seen, stack = set(), [ys.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_MALIFunctionBackward":
            return {  # recorded by the forward: saved_tensors is freed once the backward has run
                "n_tensors": node.n_saved,
                "tensor_bytes": node.saved_bytes,
                "n_steps": getattr(node, "n_steps", len(node.grid) - 1),
                "grid_bytes": node.grid.nbytes,
                "drift": getattr(node, "drift", None),
                "drift_limit": getattr(node, "drift_limit", None),
            }
        stack.extend(nxt for nxt, _ in node.next_functions)
    return None

"""The dispatcher shared by :func:`~crossode.backends.torch.odeint` and the backend: one solve, one gradient method."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch

from ..._errors import InvalidInputError, UnsupportedError
from ..._record import Stats
from ..._sensitivity import AbstractSensitivity, Backsolve, Checkpointed, Direct, Forward
from ..._solvers import Adaptive, Fixed
from ..._tableaux import ButcherTableau
from ._persample import integrate_rk, per_sample_reason, uses_per_sample
from ._rk import Field, integrate

__all__ = ["SolveSpec", "solve", "add_stat", "count_backward", "grad_or_none", "resolve_params",
           "check_params_declared", "StartTime", "SaveTimes", "TimeGrad"]


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

    def field(self, device: torch.device) -> Field:
        """A fresh counting :class:`Field` around :attr:`func`."""
        return Field(self.func, device)


def add_stat(stats: Stats | None, name: str, value: int) -> None:
    """``stats.name += value``, treating ``None`` as 0 (no-op without ``stats``)."""
    if stats is not None:
        setattr(stats, name, (getattr(stats, name) or 0) + int(value))


def count_backward(out: torch.Tensor, stats: Stats, n_vjp: int) -> None:
    """Add ``n_vjp`` to ``stats.nfe_backward`` each time autograd backpropagates through ``out``: ONE hook per
    solve, not one per evaluation (Direct knows its VJP count from the forward pass: every stage on the path to
    the saved states of every accepted step up to the last save; rejected attempts and stages that only feed the
    error estimate are not on the graph)."""
    out.register_hook(lambda grad: add_stat(stats, "nfe_backward", n_vjp))


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


# ------------------------------------------------------------------------------------ which tensors get gradients

_FIND_DEPTH = 8  # nesting levels of partial arguments / containers searched for tensors and modules


def _found_in(obj, out: list, depth: int) -> None:
    if depth > _FIND_DEPTH:
        return
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, torch.nn.Module):
        out.extend(obj.parameters())
    elif isinstance(obj, functools.partial):
        _found_in(obj.func, out, depth + 1)
        for a in (*obj.args, *obj.keywords.values()):
            _found_in(a, out, depth + 1)
    elif isinstance(getattr(obj, "__self__", None), torch.nn.Module) and callable(obj):  # bound method
        out.extend(obj.__self__.parameters())
    elif isinstance(obj, (list, tuple)):
        for a in obj:
            _found_in(a, out, depth + 1)
    elif isinstance(obj, dict):
        for a in obj.values():
            _found_in(a, out, depth + 1)


def resolve_params(func: Callable, params) -> tuple:
    """The tensors besides ``y0`` that receive gradients: ``params`` as given, or found in ``func``.

    Without ``params``: the parameters of an ``nn.Module`` ``func`` (or of the module behind a bound method),
    and, for a ``functools.partial``, every tensor and ``nn.Module`` parameter among its arguments (also inside
    lists, tuples, dicts and nested partials); only those that require grad, each once. Tensors an arbitrary
    closure captures cannot be found: :func:`check_params_declared` reports them.
    """
    if params is not None:
        if isinstance(params, torch.Tensor):
            raise InvalidInputError("`params` must be a sequence of tensors (e.g. [W, b]), not a single tensor.")
        try:
            params = tuple(params)
        except TypeError:
            raise InvalidInputError(f"`params` must be a sequence of tensors; got {type(params).__name__}.") from None
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise InvalidInputError(
                    f"`params` must be a sequence of tensors; params[{i}] is {type(p).__name__}."
                )
        return params
    found: list = []
    _found_in(func, found, 0)
    seen, out = set(), []
    for p in found:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return tuple(out)


def _undeclared(out: torch.Tensor, declared, stop_nodes=()) -> list:
    """Tensors that require grad, reach ``out``'s autograd graph and are not ``declared``.

    Walks ``grad_fn.next_functions`` from ``out``, not past the nodes of the declared tensors (a leaf's
    ``AccumulateGrad``, a non-leaf's ``grad_fn``) or ``stop_nodes``; every other leaf reached is undeclared.
    """
    leaves = {id(p) for p in declared if p.grad_fn is None}
    stops = {id(p.grad_fn) for p in declared if p.grad_fn is not None} | {id(n) for n in stop_nodes}
    found, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen or id(node) in stops:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
        if isinstance(var, torch.Tensor):
            if id(var) not in leaves:
                found.append(var)
            continue
        stack.extend(nxt for nxt, _ in node.next_functions)
    return found


def check_params_declared(out, declared, sensitivity, stop_nodes=()) -> None:
    """Raise :class:`InvalidInputError` if ``out`` (an evaluation of ``func``) depends on a tensor that requires
    grad but is neither in ``declared`` (``params``) nor behind ``stop_nodes`` (the state's own node).

    Every sensitivity except Direct differentiates only w.r.t. ``y0`` and ``params``; without this check a tensor
    captured by a closure would get no gradient (or, through ALF's ``v0``, a wrong one) and nobody would know.
    """
    if not isinstance(out, torch.Tensor) or out.grad_fn is None:
        return
    missing = _undeclared(out, declared, stop_nodes)
    if missing:
        shapes = ", ".join(str(tuple(m.shape)) for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
        n = len(missing)
        raise InvalidInputError(
            f"`func` uses {n} tensor{'s' if n > 1 else ''} that require{'' if n > 1 else 's'} grad but "
            f"{'are' if n > 1 else 'is'} not in `params` (shape{'s' if n > 1 else ''} {shapes}): "
            f"sensitivity={type(sensitivity).__name__}() differentiates only w.r.t. `y0` and `params`; pass them "
            f"as params=[...], make func an nn.Module (or a functools.partial) holding them, or use Direct()."
        )


# ----------------------------------------------------------------------------------------------- time gradients


class StartTime(torch.autograd.Function):
    """Identity on ``y0`` that gives ``t[0]`` the gradient ``-<dL/dz0, f(t0, y0)>`` (continuous-flow identity).

    ``cfg`` carries ``f0 = f(t0, y0)`` (detached); ``dL/dz0`` is the gradient reaching the start of the
    integration, so the output row ``y(t0) = y0`` must not pass through this node."""

    @staticmethod
    def forward(ctx, t, y0, cfg):
        ctx.cfg = cfg
        ctx.t_meta = (t.shape, t.dtype, t.device)
        return y0.clone()

    @staticmethod
    def backward(ctx, g):
        gt = None
        if ctx.needs_input_grad[0]:
            shape, dtype, device = ctx.t_meta
            gt = torch.zeros(shape, dtype=dtype, device=device)
            gt[0] = -float(torch.sum(g.double() * ctx.cfg.f0.double()))  # t may live on another device
        return gt, g, None


class SaveTimes(torch.autograd.Function):
    """Identity on the saved states ``y(t[1:])`` that gives ``t[i]``, ``i >= 1``, the gradient
    ``<dL/dy_i, f(t_i, y_i)>``, evaluating ``cfg.func`` at ``cfg.times[i]`` (one evaluation per save time, added
    to ``cfg.stats.nfe_backward``)."""

    @staticmethod
    def forward(ctx, t, ys, cfg):
        ctx.cfg = cfg
        ctx.t_meta = (t.shape, t.dtype, t.device)
        ctx.save_for_backward(ys)
        return ys.clone()

    @staticmethod
    def backward(ctx, g):
        gt = None
        if ctx.needs_input_grad[0]:
            (ys,) = ctx.saved_tensors
            cfg = ctx.cfg
            shape, dtype, device = ctx.t_meta
            gt = torch.zeros(shape, dtype=dtype, device=device)
            with torch.no_grad():
                for i in range(ys.shape[0]):
                    ti = torch.full((), cfg.times[i + 1], dtype=torch.float64, device=ys.device)
                    gt[i + 1] = float(torch.sum(g[i].double() * cfg.func(ti, ys[i]).double()))
            add_stat(cfg.stats, "nfe_backward", ys.shape[0])
        return gt, g, None


@dataclasses.dataclass
class TimeGrad:
    """What :class:`StartTime` and :class:`SaveTimes` need: ``func``, the float ``times``, ``stats``, ``f0``."""

    func: Callable
    times: list
    stats: Stats | None
    f0: torch.Tensor | None = None


def solve(spec: SolveSpec, y0: torch.Tensor, sensitivity: AbstractSensitivity) -> torch.Tensor:
    """Solve and return the saved states stacked as ``(len(t_save), *y0.shape)``, differentiable w.r.t. ``y0``
    and ``spec.params`` by ``sensitivity``. Fills ``spec.stats`` (forward counts now, ``nfe_backward`` when
    autograd runs the backward pass)."""
    stats = spec.stats
    if isinstance(sensitivity, Direct):
        field = spec.field(y0.device)
        if uses_per_sample(spec.step, y0):
            if stats is not None:
                stats.nfe_backward = stats.nfe_backward or 0
            # backward NFE counted by hooks on the batched calls (see _persample.py)
            return torch.stack(integrate_rk(field, spec.tab, y0, spec.t0, spec.t1, spec.t_save, spec.step, stats))
        sol = integrate(field, spec.tab, y0, spec.t0, spec.t1, spec.t_save, spec.step)
        add_stat(stats, "nfe_forward", field.nfe)
        add_stat(stats, "steps_accepted", sol.accepted)
        add_stat(stats, "steps_rejected", sol.rejected)
        ys = torch.stack(sol.ys)
        if stats is not None:
            stats.nfe_backward = stats.nfe_backward or 0
            if field.on_graph and ys.requires_grad:
                count_backward(ys, stats, spec.tab.solution_stages * sol.save_steps[-1])
        return ys
    reason = per_sample_reason(None, sensitivity, spec.step)
    if reason is not None:
        raise UnsupportedError(reason)
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

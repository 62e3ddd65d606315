"""Per-sample step sizes for batched states (``Adaptive(batch_steps="per_sample")``): explicit RK and ALF.

A batched state ``y`` of shape ``(batch, ...)`` is ``batch`` independent trajectories. Every sample (row) keeps
its own time, step size, accept/reject decision, error norm (RMS of its own scaled error), step budget and save
times (each sample lands exactly on every save time and on ``t1``), while the samples still running are evaluated
in ONE batched call of ``f`` per stage: ``f(t, y)`` gets ``t`` as a float64 tensor of shape ``(rows,)``, one time
per row of ``y``. A sample that reaches ``t1`` leaves the batch (the running rows are gathered once when that
happens), so later calls evaluate only the samples still running: that is where the work is saved.

The controller is :class:`._control.StepController`'s rule applied row by row (same safety, factors, landing
rule, Hairer initial step per row); for one sample (``batch = 1``) the steps are those of the shared solve, up to
round-off. Gradients:

- Direct: autograd through this arithmetic (``torch.where`` picks each row's accepted values; an attempt that
  some rows reject stays on the graph, so the backward pass runs its VJPs for the whole batched call, with zero
  cotangents on the rejecting rows: ``nfe_backward`` can exceed the shared count by the partly rejected attempts);
- MALI (ALF): every sample's float64 step grid is kept; :func:`reverse_sweep` walks all samples backwards at
  once, each through its own steps with the exact ALF inverse, and the reconstruction test runs per sample.

Counters (:class:`~crossode.Stats`): ``nfe_forward``/``nfe_backward`` count batched calls of ``f`` (and of its
VJP), as for shared steps; ``steps_accepted``/``steps_rejected`` are those of the sample with the most attempts;
``Stats.per_sample`` has the per-sample distribution (see :func:`per_sample_stats`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ... import _stepping as hairer
from ..._record import SolverFailure, Stats
from ..._solvers import Adaptive
from .._capabilities import torch_per_sample_reason as per_sample_reason

__all__ = ["per_sample_reason", "uses_per_sample", "integrate_rk", "march_alf", "reverse_sweep", "per_sample_stats"]

SAFETY, FACTOR_MIN, FACTOR_MAX = 0.9, 0.2, 10.0  # StepController's defaults


def uses_per_sample(step, y0: torch.Tensor) -> bool:
    """Whether a solve of ``y0`` runs per-sample steps: per-sample ``Adaptive`` and a batch axis (``y0.dim() >= 2``).

    A 1-D state is one sample: its shared solve is the per-sample one.
    """
    return isinstance(step, Adaptive) and step.per_sample and y0.dim() >= 2


# ------------------------------------------------------------------------------------------------ helpers


def _col(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows,)`` tensor as a column broadcasting against ``like`` (rows first), in ``like``'s dtype."""
    return x.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _row_ms(x: torch.Tensor) -> torch.Tensor:
    """Mean of squares of every row of ``x`` (all dimensions but the first), shape ``(rows,)``."""
    return x.square().reshape(x.shape[0], -1).mean(1)


def _propose(h: torch.Tensor, err: torch.Tensor, order: int, accept_factor_min: float):
    """:meth:`._control.StepController.propose` row by row: ``(accept, h_next)`` for float64 ``h`` and ``err``."""
    finite = torch.isfinite(err)
    accept = err <= 1.0  # NaN compares False: rejected
    with torch.no_grad():
        factor = SAFETY * err.clamp_min(0.0).pow(-1.0 / order)  # err = 0 gives inf, clipped to FACTOR_MAX
        f_acc = factor.clamp(accept_factor_min, FACTOR_MAX)
        f_rej = factor.clamp(FACTOR_MIN, SAFETY)
        factor = torch.where(accept, f_acc, torch.where(finite, f_rej, torch.full_like(err, FACTOR_MIN)))
    return accept, h * factor


def _initial_step(f, t0: float, y0: torch.Tensor, f0: torch.Tensor, order: int, rtol: float, atol: float,
                  direction: float) -> torch.Tensor:
    """Hairer's initial step (:mod:`crossode._stepping`) for every row: float64 magnitudes ``(rows,)``.

    The same formula as :func:`._control.initial_step` with the norms taken per row; one batched evaluation.
    """
    with torch.no_grad():
        scale = atol + rtol * y0.abs()
        d0, d1 = _row_ms(y0 / scale).sqrt().tolist(), _row_ms(f0 / scale).sqrt().tolist()
        h0 = [hairer.first_guess(a, b) for a, b in zip(d0, d1)]
        h0t = torch.tensor(h0, dtype=torch.float64, device=y0.device)
        f1 = f(t0 + direction * h0t, y0 + _col(direction * h0t, y0) * f0)
        d2 = _row_ms((f1 - f0) / scale).sqrt().tolist()
        h = [hairer.refine(a, b, c / a, order) for a, b, c in zip(h0, d1, d2)]
    return torch.tensor(h, dtype=torch.float64, device=y0.device)


class _Book:
    """Bookkeeping of a per-sample march: the running rows' sample ids, targets, counters and saved rows.

    ``targets``: the times every sample must land on, in order (the save times after ``t0``, then ``t1``);
    ``is_save[j]``: whether target ``j`` is a save time; saves are written into ``rows[j][sample]``.
    """

    def __init__(self, batch: int, targets: list, is_save: list, device, max_steps: int, grid: bool, t0: float):
        self.batch = batch
        self.ids = np.arange(batch)  # sample id of each running row
        self.tgt = np.zeros(batch, dtype=np.int64)  # index into targets of each running row
        self.targets = targets
        self.targets_dev = torch.tensor(targets, dtype=torch.float64, device=device)
        self.is_save = is_save
        self.save_index = np.cumsum(is_save) - 1  # target index -> save index
        self.rows = [[None] * batch for _ in range(int(sum(is_save)))]
        self.end = [None] * batch  # per sample: what `finish` stored when it reached the last target
        self.accepted = np.zeros(batch, dtype=np.int64)
        self.rejected = np.zeros(batch, dtype=np.int64)
        self.evals = np.zeros(batch, dtype=np.int64)
        self.calls = 0
        self.max_steps = max_steps
        self.device = device
        self._tgt_dev = None
        self.grid = ([np.arange(batch)], [np.full(batch, t0)]) if grid else None  # (ids, times) of accepted steps
        self.save_steps = [[] for _ in range(batch)] if grid else None

    def counted(self, f, stats: Stats | None = None):
        """``f`` that adds one evaluation to every running sample per call; with ``stats``, an output that autograd
        later backpropagates through adds its rows to ``stats.per_sample['nfe_backward_mean']`` (Direct)."""
        batch = self.batch

        def fc(t, y):
            self.calls += 1
            self.evals[self.ids] += 1
            out = f(t, y)
            if stats is not None and isinstance(out, torch.Tensor) and out.requires_grad:
                share = len(self.ids) / batch
                # one hook per batched call (Direct): autograd reaches it once per VJP of that call
                out.register_hook(lambda grad: _add_backward_mean(stats, share, 1))
            return out

        return fc

    def target_times(self) -> torch.Tensor:
        if self._tgt_dev is None:
            self._tgt_dev = self.targets_dev[torch.from_numpy(self.tgt).to(self.device)]
        return self._tgt_dev

    def check_budget(self, t: torch.Tensor) -> None:
        used = self.accepted[self.ids] + self.rejected[self.ids]
        if used.max() >= self.max_steps:
            r = int(np.argmax(used))
            b = int(self.ids[r])
            raise SolverFailure(
                "max_steps",
                f"sample {b} reached max_steps={self.max_steps} ({self.accepted[b]} accepted, {self.rejected[b]} "
                f"rejected) at t={float(t[r]):.6g} (per-sample steps)",
            )

    def record(self, accept: np.ndarray, landed: np.ndarray, t_new: np.ndarray | None, state, finish) -> np.ndarray:
        """Count the attempt of every running row, write saves of the rows that ``landed`` on their target (from
        ``state(r)``), call ``finish(r, b)`` for rows that reached the last target; return the rows that keep
        running (a boolean mask)."""
        ids = self.ids
        self.accepted[ids[accept]] += 1
        self.rejected[ids[~accept]] += 1
        if self.grid is not None:
            self.grid[0].append(ids[accept])
            self.grid[1].append(t_new[accept])
        keep = np.ones(len(ids), dtype=bool)
        if not landed.any():
            return keep
        for r in np.flatnonzero(landed):
            b, j = int(ids[r]), int(self.tgt[r])
            if self.is_save[j]:
                self.rows[self.save_index[j]][b] = state(r)
                if self.save_steps is not None:
                    self.save_steps[b].append(int(self.accepted[b]))
            self.tgt[r] += 1
            if self.tgt[r] == len(self.targets):
                finish(r, b)
                keep[r] = False
        self._tgt_dev = None
        return keep

    def compact(self, keep: np.ndarray, *tensors):
        """Drop the finished rows from the bookkeeping and from ``tensors`` (one gather each)."""
        self.ids, self.tgt = self.ids[keep], self.tgt[keep]
        self._tgt_dev = None
        sel = torch.from_numpy(np.flatnonzero(keep)).to(self.device)
        return [None if x is None else x.index_select(0, sel) for x in tensors]

    def grids(self) -> list[np.ndarray]:
        """Every sample's accepted step boundaries (float64, ``t0`` first)."""
        ids, ts = np.concatenate(self.grid[0]), np.concatenate(self.grid[1])
        order = np.argsort(ids, kind="stable")
        ids, ts = ids[order], ts[order]
        bounds = np.searchsorted(ids, np.arange(self.batch + 1))
        return [ts[bounds[b]:bounds[b + 1]] for b in range(self.batch)]

    def saves(self) -> list[torch.Tensor]:
        return [torch.stack(r) for r in self.rows]


def per_sample_stats(book: _Book) -> dict:
    """``Stats.per_sample``: per-sample distribution of the work of a per-sample solve.

    ``nfe_forward_mean``/``_max``: evaluations of ``f`` each sample received (rows of the batched calls it took
    part in; the mean is the work saved against shared steps, whose every sample receives ``nfe_forward``);
    ``steps_accepted_min``/``_mean``/``_max`` and ``steps_rejected_mean``; ``nfe_backward_mean`` likewise for
    the VJPs of the backward pass (once it has run); ``batch``.
    """
    return {
        "batch": book.batch,
        "nfe_forward_mean": float(book.evals.mean()),
        "nfe_forward_max": int(book.evals.max()),
        "steps_accepted_min": int(book.accepted.min()),
        "steps_accepted_mean": float(book.accepted.mean()),
        "steps_accepted_max": int(book.accepted.max()),
        "steps_rejected_mean": float(book.rejected.mean()),
    }


def _add(stats: Stats | None, book: _Book, extra_calls: int = 0, extra_evals: int = 0) -> None:
    """Fold a per-sample march into ``stats`` (see the module docstring for what each counter means)."""
    if stats is None:
        return
    attempts = book.accepted + book.rejected
    worst = int(np.argmax(attempts))
    stats.nfe_forward = (stats.nfe_forward or 0) + book.calls + extra_calls
    stats.steps_accepted = (stats.steps_accepted or 0) + int(book.accepted[worst])
    stats.steps_rejected = (stats.steps_rejected or 0) + int(book.rejected[worst])
    ps = per_sample_stats(book)
    ps["nfe_forward_mean"] += extra_evals
    ps["nfe_forward_max"] += extra_evals
    stats.per_sample = ps


def _add_backward_mean(stats: Stats, evals_mean: float, calls: int = 0) -> None:
    stats.nfe_backward = (stats.nfe_backward or 0) + calls
    if stats.per_sample is not None:
        stats.per_sample["nfe_backward_mean"] = stats.per_sample.get("nfe_backward_mean", 0.0) + evals_mean


def add_backward(stats: Stats | None, calls: int, evals_mean: float) -> None:
    """Add a backward pass of ``calls`` batched evaluations/VJPs, ``evals_mean`` per sample on average."""
    if stats is not None:
        _add_backward_mean(stats, evals_mean, calls)


def _targets(t0: float, t1: float, t_save) -> tuple[list, list, int]:
    """``(targets, is_save, n_at_t0)``: the landing times after ``t0`` and which are save times."""
    j = 0
    while j < len(t_save) and t_save[j] == t0:
        j += 1
    targets = [float(x) for x in t_save[j:]]
    is_save = [True] * len(targets)
    if not targets or targets[-1] != t1:
        targets.append(float(t1))
        is_save.append(False)
    return targets, is_save, j


def _fail_small(h_next, rejected_rows, hmin, book: _Book, t, rtol, atol, what=""):
    small = rejected_rows & (h_next.abs() < hmin)
    if bool(small.any()):
        r = int(torch.nonzero(small)[0])
        raise SolverFailure(
            "step_size_too_small",
            f"{what}step size {abs(float(h_next[r])):.3g} of sample {int(book.ids[r])} fell below {hmin:.3g} at "
            f"t={float(t[r]):.17g} (rtol={rtol:g}, atol={atol:g}, per-sample steps); the problem may be stiff or "
            f"blow up",
        )


# ------------------------------------------------------------------------------------------------ explicit RK


def integrate_rk(f, tab, y0: torch.Tensor, t0: float, t1: float, t_save, step: Adaptive,
                 stats: Stats | None = None) -> list:
    """Per-sample counterpart of :func:`._rk.integrate` (adaptive only): the states at ``t_save``, a list of
    ``(batch, ...)`` tensors, differentiable by autograd (Direct). Fills ``stats`` with the forward counters.

    **Raises:** :class:`SolverFailure` (``max_steps``, ``step_size_too_small``, ``diverged``) naming the sample.
    """
    from ..._stepping import min_step_size
    from ._rk import rk_step

    if tab.b_err is None:
        raise SolverFailure("solver_error", "this tableau has no error estimate; use Fixed(dt)")
    rtol, atol, q = step.rtol, step.atol, tab.error_order
    direction = 1.0 if t1 > t0 else -1.0
    batch, device = y0.shape[0], y0.device
    targets, is_save, n0 = _targets(t0, t1, t_save)
    book = _Book(batch, targets, is_save, device, step.max_steps, grid=False, t0=t0)
    fc = book.counted(f, stats if torch.is_grad_enabled() else None)
    hmin = min_step_size(t0, t1)
    t = torch.full((batch,), t0, dtype=torch.float64, device=device)
    y = y0
    k1 = fc(t, y)
    if step.dt0 is None:
        if not bool(torch.isfinite(k1).all()):
            raise SolverFailure("diverged", f"the vector field became non-finite at t={t0:.6g}")
        h = direction * _initial_step(fc, t0, y0.detach(), k1.detach(), q, rtol, atol, direction)
    else:
        h = torch.full((batch,), direction * step.dt0, dtype=torch.float64, device=device)

    def finish(r, b):
        pass

    while len(book.ids):
        book.check_budget(t)
        target = book.target_times()
        remaining = target - t
        landing = h.abs() >= remaining.abs() * (1.0 - 1e-10)
        h_try = torch.where(landing, remaining, h)
        y_new, err, k_last = rk_step(fc, tab, t, y, h_try, k1)
        with torch.no_grad():
            scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
            # `0 * sum(y_new)` is NaN iff the row has an inf/NaN (see _control.rms_norm)
            norm = (_row_ms(err / scale).sqrt() + 0.0 * y_new.reshape(y_new.shape[0], -1).sum(1)).double()
        accept, h_next = _propose(h_try, norm, q, 1.0)
        t_new = torch.where(landing, target, t + h_try)
        # a step shortened to land on its target keeps the controller's earlier, larger proposal
        h_next = torch.where(accept & landing, direction * torch.maximum(h_next.abs(), h.abs()), h_next)
        acc_np = accept.cpu().numpy()
        if not acc_np.all():
            rej = ~accept
            bad = rej & ~torch.isfinite(norm)
            if bool(bad.any()):
                rows = torch.nonzero(bad)[:, 0]
                for x, what in ((y, "state"), (k1, "vector field")):
                    fin = torch.isfinite(x[rows].reshape(len(rows), -1)).all(1)
                    if not bool(fin.all()):
                        r = int(rows[int(torch.nonzero(~fin)[0])])
                        raise SolverFailure("diverged", f"the {what} of sample {int(book.ids[r])} became "
                                                        f"non-finite at t={float(t[r]):.6g}")
            _fail_small(h_next, rej, hmin, book, t, rtol, atol)
        # rows that rejected keep their values; an attempt rejected by every row leaves no trace (no graph)
        am = _col(accept, y).bool()
        if acc_np.all():
            y, k1 = y_new, (k_last if tab.fsal else k1)
        elif acc_np.any():
            y = torch.where(am, y_new, y)
            if tab.fsal:
                k1 = torch.where(am, k_last, k1)
        t = torch.where(accept, t_new, t)
        h = h_next
        if not tab.fsal:
            k1 = torch.where(am, fc(t, y), k1) if acc_np.any() else k1
        landed = acc_np & landing.cpu().numpy()
        keep = book.record(acc_np, landed, None, lambda r: y[r], finish)
        if not keep.all():
            y, k1, t, h = book.compact(keep, y, k1, t, h)
    ys = [y0] * n0 + book.saves()
    _add(stats, book)
    return ys


# ------------------------------------------------------------------------------------------------ ALF


@dataclasses.dataclass
class ALFTrajectory:
    """A per-sample ALF march: saved states (one ``(batch, ...)`` tensor per ``times[1:]``), the end ``(z, v)``
    of every sample, its float64 step grid and, per save, the number of steps it had taken."""

    saves: list
    z: torch.Tensor
    v: torch.Tensor
    grids: list
    save_steps: list
    book: _Book


def alf_coeff(h: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``h/2`` of float64 step sizes as a column in ``like``'s dtype: the forward and the reverse sweep use it."""
    return _col(0.5 * h, like)


def march_alf(func, z, v, times, eta: float, step: Adaptive, stats: Stats | None = None) -> ALFTrajectory:
    """Per-sample counterpart of :func:`._alf.march` (adaptive only): every sample steps through ``times`` with
    its own ALF step sizes; autograd records whatever grad mode is active (Direct) or nothing (MALI).

    Failure rules per sample as in :func:`._alf.march` (step-size collapse, 30 consecutive rejections, the
    parasitic-mode detector, ``max_steps``), naming the sample.
    """
    from ._alf import (ACCEPT_FACTOR_MIN, COLLAPSE_RATIO, ERROR_ORDER, MAX_CONSECUTIVE_REJECTIONS, MIN_STEP_REL,
                       PARASITIC_RATIO, PARASITIC_STEPS)

    rtol, atol = step.rtol, step.atol
    t0, t1 = times[0], times[-1]
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    batch, device = z.shape[0], z.device
    book = _Book(batch, [float(x) for x in times[1:]], [True] * (len(times) - 1), device, step.max_steps,
                 grid=True, t0=t0)
    fc = book.counted(func, stats if torch.is_grad_enabled() else None)
    if step.dt0 is None:
        h = _initial_step(fc, t0, z.detach(), v.detach(), ERROR_ORDER, rtol, atol, direction)
    else:
        h = torch.full((batch,), step.dt0, dtype=torch.float64, device=device)
    h = h.clamp_max(span)  # magnitudes
    s = torch.full((batch,), t0, dtype=torch.float64, device=device)
    consecutive = np.zeros(batch, dtype=np.int64)
    parasitic = np.zeros(batch, dtype=np.int64)
    h_max = torch.zeros(batch, dtype=torch.float64, device=device)
    ends_z, ends_v = [None] * batch, [None] * batch

    def finish(r, b):
        ends_z[b], ends_v[b] = z[r], v[r]

    while len(book.ids):
        target = book.target_times()
        remaining = (target - s).abs()
        collapsed = (h < MIN_STEP_REL * torch.maximum(s.abs(), torch.full_like(s, span))) & (h < remaining)
        if bool(collapsed.any()):
            r = int(torch.nonzero(collapsed)[0])
            b = int(book.ids[r])
            raise SolverFailure(
                "step_size_too_small",
                f"ALF: step size of sample {b} collapsed to {float(h[r]):.3g} at t={float(s[r])!r} after "
                f"{book.accepted[b]} accepted and {book.rejected[b]} rejected steps (per-sample steps; undamped "
                f"ALF is unstable on decaying modes; see the ALF docs).",
            )
        book.check_budget(s)
        landing = h >= remaining
        s_new = torch.where(landing, target, s + direction * h)
        hh = s_new - s  # the exact float64 step both passes use
        c = alf_coeff(hh, z)
        k = z + c * v
        u = fc(s + 0.5 * hh, k)
        v1 = (u + u) - v if eta == 1.0 else v + (2.0 * eta) * (u - v)
        z1 = k + c * v1
        with torch.no_grad():
            d = u - v
            scale = torch.maximum(z.abs(), z1.abs()).mul_(rtol).add_(atol)
            err = (_row_ms(d * _col(hh, d) / scale).sqrt()
                   + 0.0 * z1.reshape(z1.shape[0], -1).sum(1)).double()
            d2, u2 = _row_ms(d).double(), _row_ms(u).double()
            rho = torch.where(u2 > 0, (d2 / u2.clamp_min(1e-300)).sqrt(),
                              torch.where(d2 == 0, torch.zeros_like(d2), torch.full_like(d2, math.inf)))
        accept, h_next = _propose(hh.abs(), err, ERROR_ORDER, ACCEPT_FACTOR_MIN)
        acc_np = accept.cpu().numpy()
        ids = book.ids
        if acc_np.any():
            h_max = torch.where(accept, torch.maximum(h_max, hh.abs()), h_max)
            para = (accept & (rho > PARASITIC_RATIO) & (hh.abs() < h_max / COLLAPSE_RATIO)).cpu().numpy()
            parasitic[ids] = np.where(acc_np, np.where(para, parasitic[ids] + 1, 0), parasitic[ids])
            if (parasitic[ids] >= PARASITIC_STEPS).any():
                r = int(np.flatnonzero(parasitic[ids] >= PARASITIC_STEPS)[0])
                raise SolverFailure(
                    "step_size_too_small",
                    f"ALF: step size of sample {int(ids[r])} collapsed to {abs(float(hh[r])):.3g} (largest accepted "
                    f"{float(h_max[r]):.3g}) at t={float(s[r])!r}: the carried velocity is dominated by ALF's "
                    f"parasitic mode (|u - v| = {float(rho[r]):.3g} |u|; per-sample steps). Undamped ALF is "
                    f"unstable on decaying modes; use another solver or a shorter horizon.",
                )
        consecutive[ids] = np.where(acc_np, 0, consecutive[ids] + 1)
        if not acc_np.all():
            nonfinite = (~accept & ~torch.isfinite(err)).cpu().numpy()
            if nonfinite.any():
                rows = torch.from_numpy(np.flatnonzero(nonfinite)).to(device)
                fin = (torch.isfinite(z[rows].reshape(len(rows), -1)).all(1)
                       & torch.isfinite(v[rows].reshape(len(rows), -1)).all(1))
                if not bool(fin.all()):
                    r = int(rows[int(torch.nonzero(~fin)[0])])
                    raise SolverFailure("diverged", f"ALF: the state of sample {int(ids[r])} became non-finite at "
                                                    f"t={float(s[r])!r}.")
            if (consecutive[ids] >= MAX_CONSECUTIVE_REJECTIONS).any():
                r = int(np.flatnonzero(consecutive[ids] >= MAX_CONSECUTIVE_REJECTIONS)[0])
                last_nonfinite = not math.isfinite(float(err[r]))
                raise SolverFailure(
                    "diverged" if last_nonfinite else "step_size_too_small",
                    f"ALF: {consecutive[ids[r]]} consecutive rejected steps of sample {int(ids[r])} at "
                    f"t={float(s[r])!r} (last error norm {float(err[r]):.3g}, step {abs(float(hh[r])):.3g}; "
                    f"per-sample steps).",
                )
        if acc_np.all():
            z, v = z1, v1
        elif acc_np.any():  # an attempt rejected by every row leaves no trace (no graph)
            am = _col(accept, z).bool()
            z, v = torch.where(am, z1, z), torch.where(am, v1, v)
        # a step shortened to land on a save time says nothing against the step proposed before it
        h = torch.where(accept & landing & (hh.abs() < h), torch.maximum(h_next, h), h_next)
        s = torch.where(accept, s_new, s)
        landed = acc_np & landing.cpu().numpy()
        keep = book.record(acc_np, landed, s_new.cpu().numpy(), lambda r: z[r], finish)
        if not keep.all():
            z, v, s, h, h_max = book.compact(keep, z, v, s, h, h_max)
    _add(stats, book, extra_evals=1)  # v0 = f(t0, z0), evaluated (and counted) by the caller
    saves = book.saves()
    return ALFTrajectory(saves, torch.stack(ends_z), torch.stack(ends_v), book.grids(),
                         [np.asarray(x, dtype=np.int64) for x in book.save_steps], book)


def reverse_sweep(func, eta: float, preq: list, grids: list, save_steps: list, g: torch.Tensor, z: torch.Tensor,
                  v: torch.Tensor, vjp, fast: bool):
    """MALI's reverse sweep with per-sample grids: returns ``(a_z, a_v, param_grads, z0_rec, v0_rec, calls)``.

    ``g``: cotangents of the saved states ``(n_saves, batch, ...)``; ``z``, ``v``: every sample's end state.
    The samples are sorted by their number of steps (most first), so the samples still sweeping are a prefix:
    at reverse iteration ``m`` sample ``r`` undoes its step ``n_r - 1 - m`` (one batched evaluation with a graph
    at the midpoints, its VJP, and the exact inverse from the same ``u``, as :func:`._mali._reverse_sweep`).
    """
    batch, device = z.shape[0], z.device
    n = np.array([len(gr) - 1 for gr in grids], dtype=np.int64)
    order = np.argsort(-n, kind="stable")
    n_sorted = n[order]
    m_max = int(n_sorted[0]) if batch else 0
    perm = torch.from_numpy(order).to(device)
    z, v = z.index_select(0, perm), v.index_select(0, perm)
    g = g.index_select(1, perm)
    # start and end time of the step each sorted sample undoes at every reverse iteration (NaN past its start)
    starts = np.full((batch, m_max), np.nan)
    ends = np.full((batch, m_max), np.nan)
    adds: dict[int, list] = {}
    for r, b in enumerate(order):
        gr = grids[b][::-1]
        starts[r, : n[b]] = gr[1:]
        ends[r, : n[b]] = gr[:-1]
        for i, st in enumerate(save_steps[b]):
            adds.setdefault(int(n[b] - st), []).append((r, i))
    active = np.searchsorted(-n_sorted, -np.arange(m_max), side="left")  # number of rows with n_r > m
    adds = {m: (torch.tensor([x[0] for x in a], device=device), torch.tensor([x[1] for x in a], device=device))
            for m, a in adds.items()}
    acc = [None] * len(preq)
    a_z, a_v = torch.zeros_like(z), torch.zeros_like(v)
    out_z, out_v, out_az, out_av = [], [], [], []
    unit = eta == 1.0
    two_eta, one_m = 2.0 * eta, 1.0 - 2.0 * eta
    calls = 0
    evals = 0
    na = batch
    with torch.enable_grad():
        for m in range(m_max):
            na_m = int(active[m])
            if na_m < na:  # samples whose sweep is complete leave (their rows are a suffix)
                out_z.append(z[na_m:na]), out_v.append(v[na_m:na])
                out_az.append(a_z[na_m:na]), out_av.append(a_v[na_m:na])
                z, v, a_z, a_v = z[:na_m], v[:na_m], a_z[:na_m], a_v[:na_m]
                na = na_m
            if m in adds:  # cotangents of the saves each sample passes now (at most one per sample)
                rows, saves = adds[m]
                a_z = a_z.index_put((rows,), g[saves, rows], accumulate=True)
            s = torch.from_numpy(starts[:na, m]).to(device)
            hh = torch.from_numpy(ends[:na, m]).to(device) - s  # the forward's float64 expression
            c = alf_coeff(hh, z)
            k = (z - c * v).detach().requires_grad_(True)
            b = a_v + c * a_z  # total cotangent of v'
            u = func(s + 0.5 * hh, k)
            calls += 1
            evals += na
            if u.requires_grad:
                grads = vjp(u, (k, *preq), (b + b) if unit else two_eta * b, fast)
            else:
                grads = (None,) * (1 + len(preq))
            a_z = a_z if grads[0] is None else a_z + grads[0]
            a_v = c * a_z - b if unit else one_m * b + c * a_z
            u, k = u.detach(), k.detach()
            v = (u + u) - v if unit else (v - two_eta * u) / one_m
            z = k - c * v
            for j in range(len(acc)):
                gj = grads[j + 1]
                if gj is not None:
                    acc[j] = gj.clone() if acc[j] is None else acc[j].add_(gj)
    out_z.append(z), out_v.append(v), out_az.append(a_z), out_av.append(a_v)
    inv = torch.from_numpy(np.argsort(order)).to(device)
    z0, v0 = torch.cat(out_z[::-1]).index_select(0, inv), torch.cat(out_v[::-1]).index_select(0, inv)
    a_z0, a_v0 = torch.cat(out_az[::-1]).index_select(0, inv), torch.cat(out_av[::-1]).index_select(0, inv)
    return a_z0, a_v0, acc, z0, v0, calls, evals / max(batch, 1)

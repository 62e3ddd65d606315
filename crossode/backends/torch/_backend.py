"""``TorchBackend``: the :class:`~crossode._backend.Backend` protocol on crossode's own PyTorch solvers.

Supports explicit RK descriptors (Euler ... Dopri8) with Direct, Checkpointed, Backsolve and Forward, and
ALF with MALI, Direct and Checkpointed (through ``_alf.odeint_alf``), on CPU and CUDA, float64 or float32.
Explicit RK solves run from ``t0`` to ``t1`` with every save time a step boundary (adaptive steps are clipped
onto them); the loss is :meth:`crossode.Loss.apply` on the saved states, in the run's dtype.

Batched problems (``y0`` of shape ``(batch, n_states)``) are one solve of the ``(batch, n_states)`` state: one
step sequence for the whole batch, the error norm the RMS over all its entries (torchdiffeq's default); saved
states are ``(len(saveat), batch, n_states)`` and ``dy0`` comes back with the shape of ``y0``. With
``Adaptive(batch_steps="per_sample")`` every sample takes its own steps instead (Direct with explicit RK, Direct and
MALI with ALF; ``_persample.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..._backend import Prepared
from ..._errors import InvalidInputError, UnsupportedError
from ..._record import GradientOutput, SolveOutput, SolverFailure, Stats
from ..._sensitivity import AbstractSensitivity, Direct
from ..._solvers import ALF, AbstractSolver, AbstractStepControl
from ..._tableaux import TABLEAUX
from .._capabilities import torch_supports
from ._field import make_field_and_params
from ._solve import SolveSpec, solve
from .odeint import odeint

__all__ = ["TorchBackend"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class TorchBackend:
    """crossode's PyTorch backend (own RK, adjoint, checkpointing and MALI implementations)."""

    name = "torch"

    def versions(self) -> dict[str, str]:
        """``{'torch': ..., 'cuda': ...}`` (``cuda`` only when torch was built with it)."""
        out = {"torch": torch.__version__}
        if torch.version.cuda:
            out["cuda"] = torch.version.cuda
        return out

    def devices(self) -> list[str]:
        """``['cpu']`` plus ``'cuda'`` when a GPU is usable."""
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]

    def supports(
        self,
        problem,
        solver: AbstractSolver,
        sensitivity: AbstractSensitivity,
        step: AbstractStepControl,
        device: str = "cpu",
    ) -> str | None:
        """``None`` if supported, else a one-line reason (:func:`crossode.backends._capabilities.torch_supports`)."""
        return torch_supports(problem, solver, sensitivity, step, device, cuda_available=torch.cuda.is_available)

    def prepare(
        self,
        problem,
        solver: AbstractSolver,
        sensitivity: AbstractSensitivity,
        step: AbstractStepControl,
        *,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> Prepared:
        """Move the problem to ``device``/``dtype`` and build the vector field; see :class:`Prepared`."""
        if dtype not in _DTYPES:
            raise InvalidInputError(f"`dtype` must be 'float64' or 'float32'; got {dtype!r}.")
        reason = self.supports(problem, solver, sensitivity, step, device)
        if reason is not None:
            raise UnsupportedError(reason)
        return _TorchPrepared(problem, solver, sensitivity, step, torch.device(device), _DTYPES[dtype])


class _TorchPrepared(Prepared):
    def __init__(self, problem, solver, sensitivity, step, device: torch.device, dtype: torch.dtype):
        self.problem = problem
        self.solver = solver
        self.sensitivity = sensitivity
        self.step = step
        self.device = device
        self.dtype = dtype
        kw = {"dtype": dtype, "device": device}
        # torch.tensor copies: the problem's arrays are read-only.
        self._y0 = torch.tensor(problem.y0, **kw)
        self._p = torch.tensor(problem.params, **kw)
        data = problem.loss_data  # weights / targets, shaped to broadcast against the saved states
        self._loss_data = None if data is None else torch.tensor(np.ascontiguousarray(data), **kw)
        self._saveat = [float(s) for s in problem.saveat]

    def _run(self, y0: torch.Tensor, p: torch.Tensor, stats: Stats, sensitivity=None) -> torch.Tensor:
        """Saved states ``(len(saveat), *y0.shape)``; the solve always runs from ``t0`` to ``t1``."""
        f, params = make_field_and_params(self.problem, p)
        t0, t1 = self.problem.tspan
        if isinstance(self.solver, ALF):
            # odeint's convention: outputs at every t, t[0] = t0 and t[-1] = t1; drop the extra rows.
            ts = self._saveat if self._saveat[0] == t0 else [t0, *self._saveat]
            lo = 0 if self._saveat[0] == t0 else 1
            if ts[-1] != t1:
                ts = [*ts, t1]
            ys = odeint(f, y0, ts, solver=self.solver, sensitivity=self.sensitivity, step=self.step,
                        params=params, stats=stats)
            return ys[lo : lo + len(self._saveat)]
        # Explicit RK: save exactly at `saveat`, so no backward work is spent after the last save time.
        spec = SolveSpec(f, TABLEAUX[type(self.solver)], self.step, t0, t1, self._saveat, params, stats)
        return solve(spec, y0, sensitivity or self.sensitivity)

    def solve(self) -> SolveOutput:
        stats = Stats(nfe_forward=0, steps_accepted=0, steps_rejected=0)
        with torch.no_grad():
            # Every explicit-RK sensitivity has the same forward arithmetic: solve plainly (Direct, no graph).
            ys = self._run(self._y0, self._p, stats, Direct())
        stats.nfe_backward = None
        return SolveOutput(ys=ys.detach().to("cpu", torch.float64).numpy(), stats=stats)

    def gradient(self) -> GradientOutput:
        stats = Stats(nfe_forward=0, nfe_backward=0, steps_accepted=0, steps_rejected=0)
        y0 = self._y0.clone().requires_grad_(True)
        p = self._p.clone().requires_grad_(True)
        ys = self._run(y0, p, stats)
        loss = self.problem.loss.apply(ys, self._loss_data)
        dp, dy0 = torch.autograd.grad(loss, (p, y0), allow_unused=True)
        dp = torch.zeros_like(p) if dp is None else dp
        dy0 = torch.zeros_like(y0) if dy0 is None else dy0
        loss_value = float(loss.detach())
        out = GradientOutput(
            loss=loss_value,
            dparams=dp.detach().to("cpu", torch.float64).numpy(),
            dy0=dy0.detach().to("cpu", torch.float64).numpy(),
            stats=stats,
        )
        if not (np.isfinite(loss_value) and np.all(np.isfinite(out.dparams)) and np.all(np.isfinite(out.dy0))):
            raise SolverFailure("diverged", "the loss or the gradient is non-finite")
        return out

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_memory(self) -> tuple[int, str] | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)), "cuda_allocator"
        return None

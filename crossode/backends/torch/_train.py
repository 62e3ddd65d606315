"""Training on the PyTorch backend: the :class:`crossode._training.Trainer` protocol with ``torch.optim.Adam``.

The parameters are one ``nn.Parameter`` (the problem's flat layout, initialised from ``problem.params``); each step
solves the mini-batch with the run's solver, sensitivity and step control through the backend's own solve (the same
code as :meth:`TorchBackend.prepare`'s gradient), backpropagates the loss (:meth:`crossode.Loss.apply` in torch),
checks it and the gradient, and calls ``torch.optim.Adam(lr, betas=(b1, b2), eps)``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..._record import SolverFailure, Stats
from ..._sensitivity import Direct
from ..._training import Adam, StepOutput, check_batch_size, select_rows
from ._backend import TorchBackend

__all__ = ["TorchTrainer", "make_trainer"]


class TorchTrainer:
    """See :func:`make_trainer`."""

    def __init__(self, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None):
        self.problem = problem
        self.batch_size = check_batch_size(problem, batch_size)
        self._prep = TorchBackend().prepare(problem, solver, sensitivity, step, device=device, dtype=dtype)
        self.device = self._prep.device
        self._p = torch.nn.Parameter(torch.tensor(problem.params, dtype=self._prep.dtype, device=self.device))
        self._opt = None
        if optimizer is not None:
            self._opt = torch.optim.Adam([self._p], lr=optimizer.lr, betas=(optimizer.b1, optimizer.b2),
                                         eps=optimizer.eps, weight_decay=0.0, amsgrad=False)
        self.compile_s = None
        self.versions = TorchBackend().versions()

    def step(self, rows: np.ndarray | None) -> StepOutput:
        if self._opt is None:
            raise RuntimeError("this trainer was built without an optimizer")
        y0, data = select_rows(self.problem, self._prep._y0, self._prep._loss_data,
                               None if rows is None else torch.as_tensor(rows, device=self.device))
        stats = Stats(nfe_forward=0, nfe_backward=0, steps_accepted=0, steps_rejected=0)
        self._opt.zero_grad(set_to_none=True)
        ys = self._prep._run(y0, self._p, stats)
        loss = self.problem.loss.apply(ys, data)
        loss.backward()
        grad = self._p.grad
        if grad is None:  # the loss does not depend on the parameters
            grad = self._p.grad = torch.zeros_like(self._p)
        value = float(loss.detach())
        norm = float(torch.linalg.vector_norm(grad.detach()))
        if not (np.isfinite(value) and np.isfinite(norm)):
            raise SolverFailure("diverged", f"the loss ({value:g}) or the gradient norm ({norm:g}) is non-finite")
        self._opt.step()
        return StepOutput(loss=value, grad_norm=norm, stats=stats)

    def params(self) -> np.ndarray:
        return self._p.detach().to("cpu", torch.float64).numpy().copy()

    def solve(self, params) -> np.ndarray:
        p = torch.tensor(np.asarray(params, dtype=np.float64), dtype=self._prep.dtype, device=self.device)
        with torch.no_grad():  # every explicit-RK sensitivity (and MALI's ALF) has the same forward arithmetic
            ys = self._prep._run(self._prep._y0, p, Stats(nfe_forward=0, steps_accepted=0, steps_rejected=0),
                                 Direct())
        out = ys.detach().to("cpu", torch.float64).numpy()
        if not np.all(np.isfinite(out)):
            raise SolverFailure("diverged", "the saved states are non-finite")
        return out

    def synchronize(self) -> None:
        self._prep.synchronize()

    def reset_peak_memory(self) -> None:
        self._prep.reset_peak_memory()

    def peak_memory(self) -> tuple[int, str] | None:
        return self._prep.peak_memory()


def make_trainer(problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None) -> TorchTrainer:
    """A :class:`crossode._training.Trainer` on crossode's PyTorch solvers with ``torch.optim.Adam`` (see
    :mod:`crossode._training`); raises :class:`~crossode.UnsupportedError` for combinations the backend does
    not run."""
    return TorchTrainer(problem, solver, sensitivity, step, device=device, dtype=dtype, optimizer=optimizer,
                        batch_size=batch_size)

"""Training on the Julia backend: the :class:`crossode._training.Trainer` protocol with Optimisers.jl's ``Adam``.

The trainer builds the run's cell with :meth:`JuliaBackend.prepare` (the same ``CrossODE.build`` as a gradient
cell: solver, sensealg, step control, loss) and a ``CrossODE.Training`` on it (``CrossODE.make_training``: the
parameters, copied from ``problem.params``, and ``Optimisers.setup(Optimisers.Adam(lr, (b1, b2), eps), p)``).
Each step is one ``CrossODE.train_step!``: the cell's gradient (``gradient_cell`` at the current parameters,
the backend's own gradient path) and, only when it is valid, ``Optimisers.update!``. Its result is read with the
backend's :func:`~crossode.backends.julia._marshal.gradient_output`, so a failed solve is the same
:class:`~crossode.SolverFailure` status as in a gradient cell, never a NaN loss.

Optimisers.jl's ``Adam`` (``src/rules.jl``) subtracts ``lr * m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)``: ``eps``
outside the square root of the bias-corrected second moment, the rule of ``torch.optim.Adam`` and
``optax.adam(eps_root=0)``; the operations are ordered differently, so parameters agree to round-off, not bit for
bit. Differences from the PyTorch and JAX trainers: every step uses the whole batch (the generated field and the
loss data are fixed when the cell is built; ``batch_size`` smaller than the batch is unsupported), and the peak
memory is the process's (``peak_memory`` returns ``None``). Not run on this project's CI (no Julia there).
"""

from __future__ import annotations

import numpy as np

from ..._errors import UnsupportedError
from ..._record import SolverFailure
from ..._training import Adam, StepOutput, check_batch_size
from . import _marshal
from ._backend import JuliaBackend, JuliaPrepared, _as_mapping

__all__ = ["JuliaTrainer", "make_trainer"]


class JuliaTrainer:
    """See :func:`make_trainer`."""

    def __init__(self, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None):
        self.problem = problem
        self.batch_size = check_batch_size(problem, batch_size)
        if self.batch_size is not None and self.batch_size != problem.batch:
            raise UnsupportedError(f"the Julia trainer uses the whole batch every step (its field and loss data are "
                                   f"built for {problem.batch} trajectories); got batch_size = {self.batch_size}")
        if problem.params.size == 0:
            raise UnsupportedError("training needs parameters; this problem has none")
        backend = JuliaBackend()
        prep = backend.prepare(problem, solver, sensitivity, step, device=device, dtype=dtype)
        assert isinstance(prep, JuliaPrepared)
        self._prep = prep
        self._module = prep._module
        self.compile_s = None  # Julia compiles on the first step; the worker times it as part of that step
        self._training = None
        if optimizer is not None:
            self._training = prep._invoke(self._module.make_training, "build", prep._cell, lr=optimizer.lr,
                                          b1=optimizer.b1, b2=optimizer.b2, eps=optimizer.eps)
        self.versions = backend.versions()

    def step(self, rows) -> StepOutput:
        if self._training is None:
            raise RuntimeError("this trainer was built without an optimizer")
        if rows is not None and not np.array_equal(np.sort(np.asarray(rows)), np.arange(self.problem.batch)):
            raise UnsupportedError("the Julia trainer uses the whole batch every step")
        prep = self._prep
        # `train_step_b` is `train_step!` (juliacall maps a trailing `_b` to `!`)
        res = prep._invoke(self._module.train_step_b, "gradient", self._training)
        out = _as_mapping(res, _marshal.GRADIENT_FIELDS + ("grad_norm", "updated"))
        grad = _marshal.gradient_output(out, prep.call, vjp=prep.vjp)  # raises SolverFailure for a failed status
        norm = float(out["grad_norm"])
        if not bool(out["updated"]) or not np.isfinite(norm):  # train_step! updates only a valid gradient
            raise SolverFailure("diverged", f"Julia did not update the parameters (gradient norm {norm:g})")
        prep.last_julia = {k: out[k] for k in ("time_forward_s", "time_total_s", "calls_forward", "calls_backward")}
        return StepOutput(loss=float(grad.loss), grad_norm=norm, stats=grad.stats)

    def params(self) -> np.ndarray:
        if self._training is None:
            return np.array(self.problem.params, dtype=np.float64)
        return np.array(self._module.training_params(self._training), dtype=np.float64)

    def solve(self, params) -> np.ndarray:
        prep = self._prep
        p = np.ascontiguousarray(np.asarray(params, dtype=np.float64).ravel())
        if p.size != self.problem.params.size:
            raise ValueError(f"params must have {self.problem.params.size} entries; got {p.size}")
        res = prep._invoke(self._module.solve_cell, "solve", prep._cell, p)  # copied to the cell's type and device
        return _marshal.solve_output(_as_mapping(res, _marshal.SOLVE_FIELDS), prep.call).ys

    def synchronize(self) -> None:
        pass  # every juliacall call returns after Julia has finished (host copies of the results)

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> tuple[int, str] | None:
        return None


def make_trainer(problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None) -> JuliaTrainer:
    """A :class:`crossode._training.Trainer` on the Julia backend (OrdinaryDiffEq + SciMLSensitivity) with
    Optimisers.jl's ``Adam`` (see :mod:`crossode._training` and this module); raises
    :class:`~crossode.UnsupportedError` for combinations the backend does not run and
    :class:`~crossode.BackendUnavailableError` where Julia cannot load."""
    return JuliaTrainer(problem, solver, sensitivity, step, device=device, dtype=dtype, optimizer=optimizer,
                        batch_size=batch_size)

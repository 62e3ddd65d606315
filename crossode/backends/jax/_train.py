"""Training on the JAX backend: the :class:`crossode._training.Trainer` protocol with ``optax.adam``.

One jitted program per trainer does a whole step: the backend's gradient program of the run's solver, sensitivity
and step control (the same ``diffeqsolve`` / ALF / MALI code as :meth:`DiffraxBackend.prepare`), on a mini-batch of
fixed size (``y0`` rows and their loss data are arguments, so every step reuses one compiled program), the gradient
norm, and ``optax.adam(lr, b1, b2, eps)`` (``eps_root = 0``, as ``torch.optim.Adam``). It returns the new parameters
and optimizer state and ONE packed float64 vector ``[loss, grad_norm, code, steps, accepted, rejected, (MALI's six mean squares, ...)]``
(one device-to-host transfer per step). The program is compiled ahead of time in the constructor (``compile_s``);
its XLA temporary size is the step's memory on CPU.

Differences from the PyTorch trainer: adaptive runs start every solve from the first step the backend estimated at
the initial parameters (the backend fixes ``dt0`` when it builds its program; PyTorch re-estimates it per solve), and
backward evaluations without a closed rule (``Backsolve``, more steps than checkpoints) are not counted
(``nfe_backward = None``): counting would add a host callback per evaluation to the timed program.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from ..._errors import UnsupportedError
from ..._record import SolverFailure
from ..._sensitivity import MALI, mali_reconstruction, mali_reconstruction_failure
from ..._training import Adam, StepOutput, check_batch_size, select_rows
from ._backend import DiffraxBackend, _decode_runtime_error

__all__ = ["JaxTrainer", "make_trainer"]


@contextlib.contextmanager
def _loss_data(prep, data):
    """Trace the backend's loss with ``data`` (a traced argument) instead of its constant loss data."""
    old = prep.loss_data
    prep.loss_data = data
    try:
        yield
    finally:
        prep.loss_data = old


class JaxTrainer:
    """See :func:`make_trainer`."""

    def __init__(self, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None):
        self.problem = problem
        self.batch_size = check_batch_size(problem, batch_size)
        backend = DiffraxBackend(aot=False, count_nfe=False)
        self.versions = backend.versions()
        prep = self._prep = backend.prepare(problem, solver, sensitivity, step, device=device, dtype=dtype)
        self._mali = isinstance(sensitivity, MALI)
        self._y0_all = prep.y0
        self._data_all = prep.loss_data
        self._p = prep.params
        self._solve = jax.jit(prep._solve_fn)
        self.compile_s = None
        self._compiled = None
        self._opt = None
        if optimizer is None:
            return
        try:
            import optax  # imported here: JAX cells that do not train never load it
        except ImportError as e:
            raise UnsupportedError(f"JAX training runs need optax: pip install 'crossode[jax]' ({e})") from None
        opt = self._opt = optax.adam(learning_rate=optimizer.lr, b1=optimizer.b1, b2=optimizer.b2,
                                     eps=optimizer.eps, eps_root=0.0)
        # on the parameters' device, committed like the step's outputs: otherwise the second step recompiles
        self._state = jax.device_put(opt.init(self._p), prep.device)

        def step_fn(p, state, y0, data):
            with _loss_data(prep, data):
                out = prep._grad_fn(y0, p)
            loss, dp, info, extra = out[0], out[1], out[3], out[4:]
            norm = jnp.sqrt(jnp.sum(dp * dp))
            updates, state = opt.update(dp, state, p)
            head = jnp.stack([jnp.asarray(loss, jnp.float64), jnp.asarray(norm, jnp.float64)])
            packed = jnp.concatenate([head, jnp.asarray(info, jnp.float64)]
                                     + [jnp.asarray(x, jnp.float64).ravel() for x in extra])
            return optax.apply_updates(p, updates), state, packed

        self._step = jax.jit(step_fn)
        rows = None if self.batch_size is None else np.arange(self.batch_size)
        y0, data = self._batch(rows)
        t = time.perf_counter()
        self._compiled = self._step.lower(self._p, self._state, y0, data).compile()
        self.compile_s = time.perf_counter() - t
        try:  # untimed: fills the jitted function's dispatch cache (the result is discarded: no step is taken)
            jax.block_until_ready(self._step(self._p, self._state, y0, data))
        except jax.errors.JaxRuntimeError as e:  # a backward-solve failure: `step` reports it as a status
            if _decode_runtime_error(e) is None:
                raise

    def _batch(self, rows):
        return select_rows(self.problem, self._y0_all, self._data_all, None if rows is None else jnp.asarray(rows))

    def step(self, rows) -> StepOutput:
        if self._opt is None:
            raise RuntimeError("this trainer was built without an optimizer")
        y0, data = self._batch(rows)
        prep = self._prep
        try:
            p, state, packed = self._step(self._p, self._state, y0, data)
            out = np.asarray(packed)
        except jax.errors.JaxRuntimeError as e:  # Backsolve's backward solve runs with throw=True
            decoded = _decode_runtime_error(e)
            if decoded is None:
                raise
            status, message = decoded
            raise SolverFailure(status, f"diffrax: the backward (adjoint) solve failed: {message.splitlines()[0]} "
                                        f"(max_steps={prep.max_steps} per interval between save times)") from None
        loss, norm, info = float(out[0]), float(out[1]), out[2:6]
        if info[0] != 0:
            prep._fail(int(info[0]))
        if not (np.isfinite(loss) and np.isfinite(norm)):
            raise SolverFailure("diverged", f"the loss ({loss:g}) or the gradient norm ({norm:g}) is non-finite")
        if self._mali:  # the shared rule, as DiffraxBackend.gradient
            n_acc = int(info[2])
            drift = mali_reconstruction(out[6:12], n_acc, float(jnp.finfo(prep.dtype).eps), prep.step,
                                        prep.sensitivity.reconstruction_rtol)
            if not drift[0] <= drift[1]:
                raise mali_reconstruction_failure(*drift, n_acc, prep.solver.eta)
        self._p, self._state = p, state  # only a step whose gradient is valid is taken
        return StepOutput(loss=loss, grad_norm=norm, stats=prep._stats(info, gradient=True))

    def params(self) -> np.ndarray:
        return np.asarray(self._p, dtype=np.float64).copy()

    def solve(self, params) -> np.ndarray:
        prep = self._prep
        p = jax.device_put(jnp.asarray(np.asarray(params, dtype=np.float64), prep.dtype), prep.device)
        ys, info = self._solve(self._y0_all, p)
        info = np.asarray(info)
        if info[0] != 0:
            prep._fail(int(info[0]))
        ys = np.asarray(ys, dtype=np.float64)
        if not np.all(np.isfinite(ys)):
            raise SolverFailure("diverged", "the saved states are non-finite")
        return ys

    def synchronize(self) -> None:
        jax.block_until_ready(self._p)

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> tuple[int, str] | None:
        if self._prep.device_name == "gpu":
            stats = self._prep.device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return int(stats["peak_bytes_in_use"]), "jax_gpu_peak"
            return None
        if self._compiled is None:
            return None
        try:
            return int(self._compiled.memory_analysis().temp_size_in_bytes), "xla_temp"
        except Exception:  # noqa: BLE001 - best effort; the caller falls back to peak RSS
            return None


def make_trainer(problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64",
                 optimizer: Adam | None = None, batch_size: int | None = None) -> JaxTrainer:
    """A :class:`crossode._training.Trainer` on the JAX backend (Diffrax; crossode's ALF/MALI) with ``optax.adam`` (see
    :mod:`crossode._training`); raises :class:`~crossode.UnsupportedError` for combinations the backend does
    not run."""
    return JaxTrainer(problem, solver, sensitivity, step, device=device, dtype=dtype, optimizer=optimizer,
                      batch_size=batch_size)

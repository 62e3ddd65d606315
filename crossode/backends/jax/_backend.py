"""The JAX backend: neutral descriptors -> ``diffrax.diffeqsolve`` (explicit and implicit RK) or crossode's own
ALF loop (ALF, MALI), jitted and compiled ahead of time in :meth:`DiffraxBackend.prepare`.

Mapping (see also the tables in :mod:`crossode._solvers` and :mod:`crossode._sensitivity`):

=================  ===========================================================================================
neutral            JAX
=================  ===========================================================================================
Euler ... Dopri8   ``diffrax.Euler/Heun/Midpoint/Bosh3/Dopri5/Tsit5/Dopri8``; RK4 = an ``AbstractERK`` subclass
                   built from :data:`crossode._tableaux.RK4_TABLEAU` (fixed step only)
ImplicitEuler,     ``diffrax.ImplicitEuler/Kvaerno5`` (default root finder: ``VeryChord`` with the controller's
Kvaerno5           tolerances; with ``Fixed`` steps Newton, :func:`fixed_step_root_finder`)
Adaptive           :class:`._control.LandingController`: the PyTorch backend's I-controller as a Diffrax
                   controller (same norm, exponent, factor limits and landing rule, so both backends take the same
                   steps; it equals ``ClipStepSizeController(PIDController(rtol, atol, error_order=q),
                   step_ts=saveat)`` except after a step shortened to land on a save time, see its docstring);
                   explicit ``dt0`` (Hairer's algorithm in NumPy at prepare time when ``Adaptive.dt0 is None``,
                   not clipped to the span, as PyTorch RK), ``max_steps``
Fixed              ``StepTo(ts=fixed_grid(t0, t1, dt, saveat))``; ``max_steps`` = number of grid steps
saveat             ``SaveAt(ts=problem.saveat)``; every save time is a step end (adaptive: the controller lands on
                   it; fixed: it is on the grid), so the dense-output interpolation is evaluated at a step end and
                   returns that step's solution (to round-off)
Direct             adaptive: ``RecursiveCheckpointAdjoint()``, what a Diffrax user writes (its default
                   ``floor(-1.5 + sqrt(2 max_steps + 0.25)) + 1`` checkpoints, stated explicitly: 446 at the default
                   ``max_steps`` 100000; every step stored while the solve takes no more steps than that, binomial
                   recomputation beyond); fixed: ``checkpoints`` = the grid's steps (every step stored). The old
                   ``checkpoints=max_steps`` gave the same gradient at 13-87x the XLA temporary memory
                   (``comparisons/jax_direct.py``). Each step's stages are recomputed once in the backward pass
                   (Diffrax's ``scan_kind="checkpointed"``). In JAX, adaptive ``Direct`` = ``Checkpointed()``
Checkpointed(c)    ``RecursiveCheckpointAdjoint(checkpoints=c)``; ``c=None`` -> Diffrax's own default (as above)
Backsolve          ``BacksolveAdjoint(throw=True)``: backward solve with the same solver; adaptive:
                   ``PIDController(rtol, atol)``, error control over the whole augmented state (Diffrax's and
                   torchdiffeq's default, as the PyTorch backend); fixed: :class:`._control.GridController`, the
                   forward grid walked in reverse (as PyTorch). A failed backward solve raises inside the program
                   and becomes the failure's status (``max_steps``, ``solver_error``, ...)
Forward            ``ForwardMode`` + ``jax.jacfwd``
ALF + MALI         :mod:`._mali` (``jax.custom_vjp``, constant memory)
ALF + Direct       reverse-mode autodiff through the same ALF steps (Equinox checkpointed while loop with
                   ``checkpoints = max_steps``: every step stored); ALF + Checkpointed(c): ``c`` checkpoints
ALF + Forward      ``jax.jacfwd`` through the ALF ``lax.while_loop``
ALF steps          :mod:`._alf`: the PyTorch ALF controller step for step (first step ``min(Hairer, |t1 - t0|)``
                   with ``f0 = v0``, landing on every save time)
=================  ===========================================================================================

Parameters travel as ONE flat float64 array (``args`` of the vector field), so ``dparams`` is in the neutral
layout. Failures: solves run with ``throw=False``; ``sol.result`` and the ALF failure codes are mapped to
statuses and raised as :class:`~crossode.SolverFailure` (``max_steps``, ``step_size_too_small``,
``solver_error``, ``diverged`` for non-finite outputs, ``reconstruction_error`` for MALI drift).

Batched problems (``y0`` of shape ``(batch, n_states)``): the state of ``diffeqsolve`` (and of the ALF loop) is the
``(batch, n_states)`` array itself: one step sequence for the whole batch, the error norm the RMS over all its
entries (Diffrax's default ``rms_norm`` over the PyTree); saved states are ``(len(saveat), batch, n_states)`` and
``dy0`` comes back with the shape of ``y0``.

NFE (Diffrax reports steps only; these rules are checked against a counting vector field in the tests):

- explicit RK forward: ``c * num_steps + c0`` with ``(c, c0)`` = Euler (1, 0), Midpoint/Heun (2, 0), RK4 (4, 0),
  Bosh3 (3, 1), Dopri5/Tsit5 (6, 1), Dopri8 (13, 1): every attempted step (accepted or rejected) costs ``c``;
  FSAL methods evaluate ``f(t0, y0)`` once at the start (``c0``). ``+2`` when ``dt0`` was chosen automatically
  (Hairer's algorithm: ``f(t0, y0)`` and one probe).
- reverse mode (Direct, Checkpointed) with ``num_steps <= checkpoints``: backward = primal re-evaluations
  ``r * (c * num_steps + c0)`` (``r = 2`` for Diffrax RK solvers: the step is re-run, then its stage scan is
  re-run inside the VJP, and the FSAL start-up evaluation twice too; ``r = 1`` for Euler) plus one VJP per forward
  evaluation: ``nfe_backward = (r + 1) * (c * num_steps + c0)``.
- everything without a closed rule (reverse mode with more steps than checkpoints, where Equinox recomputes
  steps; Backsolve, whose backward steps Diffrax does not report; implicit solvers) is *counted* once per
  prepared cell (``None`` when the backend is built with ``count_nfe=False``) with a
  counting vector field (``jax.debug.callback``) in a separate, untimed program the first time
  :meth:`gradient`/:meth:`solve` needs it; that first call is slower. Backsolve: every backward primal evaluation
  is counted with one VJP (``2 x`` counted backward evaluations).
- Forward mode: ``nfe_backward`` = JVPs = (``n_states + n_params`` tangents) x forward evaluations.
- ALF/MALI: forward = attempted steps + 1 (``v0``) + 1 (automatic ``dt0``, reusing ``v0``); MALI backward =
  2 per accepted step (one evaluation at the step's midpoint, serving both the inverse step and the VJP, + that
  VJP) + 1 (VJP of ``v0``); ALF + Direct backward = 2 per step attempt (re-evaluation, VJP) + 1.

Timing: :meth:`prepare` lowers and compiles the gradient program ahead of time (``jax.jit(f).lower(...).compile()``);
``Prepared.compile_s`` is its lower + compile time. The AOT executable is then reused by the jitted function (JAX's
compilation cache; one untimed call in ``prepare`` fills the C++ dispatch fast path). The forward-solve program is
compiled on the first :meth:`solve` call (``compile_solve_s``), so a cell that times only gradients never compiles
it; the harness makes one untimed warm-up ``solve`` call before timing solves. Each call returns ONE packed float64 vector (loss, gradients, status
and step counts), so a call costs one device-to-host transfer. ``synchronize`` blocks on the last outputs. Memory: ``peak_memory()`` is the compiled gradient program's
``memory_analysis().temp_size_in_bytes`` on CPU (kind ``xla_temp``), ``peak_bytes_in_use`` on GPU
(``jax_gpu_peak``, since process start: run one cell per process).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import ClassVar

import jax

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optimistix as optx  # noqa: E402

from ... import _stepping as hairer  # noqa: E402
from ..._backend import Prepared  # noqa: E402
from ..._errors import UnsupportedError  # noqa: E402
from ..._record import GradientOutput, SolveOutput, SolverFailure, Stats  # noqa: E402
from ..._sensitivity import (  # noqa: E402
    MALI,
    AbstractSensitivity,
    Backsolve,
    Checkpointed,
    Direct,
    Forward,
    mali_reconstruction,
    mali_reconstruction_failure,
)
from ..._solvers import (  # noqa: E402
    ALF,
    RK4,
    AbstractSolver,
    AbstractStepControl,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Heun,
    ImplicitEuler,
    Kvaerno5,
    Midpoint,
    Tsit5,
    fixed_grid,
)
from .._capabilities import jax_supports  # noqa: E402
from ._alf import FAIL_CODES, ALFConfig, alf_loop  # noqa: E402
from ._control import GridController, make_landing_controller  # noqa: E402
from ._field import make_vector_field  # noqa: E402
from ._mali import PROBE_SIZE as MALI_PROBE_SIZE, make_mali_solve  # noqa: E402

__all__ = ["DiffraxBackend", "initial_step", "default_checkpoints", "NFE_RULES"]


# ------------------------------------------------------------------------------------------------ solvers


def _rk4_solver_class():
    from diffrax._local_interpolation import ThirdOrderHermitePolynomialInterpolation
    from diffrax._solver.runge_kutta import AbstractERK, ButcherTableau

    from ..._tableaux import TABLEAUX

    tab = TABLEAUX[RK4]
    s = len(tab.b)
    dtab = ButcherTableau(
        a_lower=tuple(np.asarray(tab.a[i], dtype=np.float64) for i in range(1, s)),
        b_sol=np.asarray(tab.b, dtype=np.float64),
        b_error=np.zeros(s),  # no embedded estimate: fixed steps only
        c=np.asarray(tab.c[1:], dtype=np.float64),
    )

    class _RK4(AbstractERK):
        """Classical RK4 from crossode's neutral tableau (fixed step only; zero error estimate)."""

        tableau: ClassVar[ButcherTableau] = dtab
        interpolation_cls: ClassVar[Callable] = ThirdOrderHermitePolynomialInterpolation.from_k

        def order(self, terms):
            return 4

    return _RK4


_RK4Class = _rk4_solver_class()

_DIFFRAX_SOLVERS: dict[type, Callable[[], diffrax.AbstractSolver]] = {
    Euler: diffrax.Euler,
    Heun: diffrax.Heun,
    Midpoint: diffrax.Midpoint,
    RK4: _RK4Class,
    Bosh3: diffrax.Bosh3,
    Dopri5: diffrax.Dopri5,
    Tsit5: diffrax.Tsit5,
    Dopri8: diffrax.Dopri8,
    ImplicitEuler: diffrax.ImplicitEuler,
    Kvaerno5: diffrax.Kvaerno5,
}

NFE_RULES: dict[type, tuple[int, int, int]] = {
    # descriptor: (evaluations per attempted step c, start-up evaluations c0, backward re-evaluation factor r)
    Euler: (1, 0, 1),
    Midpoint: (2, 0, 2),
    Heun: (2, 0, 2),
    RK4: (4, 0, 2),
    Bosh3: (3, 1, 2),
    Dopri5: (6, 1, 2),
    Tsit5: (6, 1, 2),
    Dopri8: (13, 1, 2),
}
"""Explicit-RK NFE rule per descriptor (see the module docstring); implicit solvers are counted instead."""


_error_order = hairer.error_order
initial_step = hairer.initial_step  # re-exported: the neutral NumPy implementation shared with the Julia backend


def _gradient_of(loss_fn, *, forward: bool):
    """``(y0, p) -> (loss, dparams, dy0, info)`` from ``loss_fn(y0, p) -> (loss, (loss, info))``.

    The loss doubles as auxiliary output so forward mode (``jax.jacfwd``, for ``Forward``) can return it; every
    other sensitivity uses reverse mode.
    """
    if forward:
        def grad_fn(y0, p):
            (dy0, dp), (loss, info) = jax.jacfwd(loss_fn, argnums=(0, 1), has_aux=True)(y0, p)
            return loss, dp, dy0, info
    else:
        def grad_fn(y0, p):
            (loss, (_, info)), (dy0, dp) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(y0, p)
            return loss, dp, dy0, info
    return grad_fn


def fixed_step_root_finder(dtype) -> optx.Newton:
    """The root finder of implicit solvers on ``Fixed`` steps: Newton with Cauchy termination at ``1e-10``
    (``100 eps`` in float32), up to the solver's ``root_find_max_steps`` (10) iterations.

    Not Diffrax's adaptive default ``VeryChord``: it declares divergence when the chord iteration has not met its
    convergence test after two iterations, which an adaptive controller answers by rejecting and shrinking the
    step, but a fixed grid cannot. On ``y' = -a y`` at ``dt = 0.1`` the backward (adjoint) solve of Backsolve, a
    bilinear system, fails that test in its first step with ``VeryChord(rtol=atol=1e-10)`` (also at 1e-8 and
    1e-6), while Newton converges in every step. A root find that does not converge is still a failure
    (``solver_error``), never a silently wrong step.
    """
    tol = max(1e-10, 100.0 * float(jnp.finfo(dtype).eps))
    return optx.Newton(rtol=tol, atol=tol)


def default_checkpoints(max_steps: int) -> int:
    """Diffrax/Equinox's default number of RCA checkpoints for ``max_steps`` (stated explicitly by crossode)."""
    return int(math.floor(-1.5 + math.sqrt(2 * max_steps + 0.25))) + 1


# ---------------------------------------------------------------------------------------------- statuses

def _result_code(result) -> jax.Array:
    """Diffrax result -> its integer index (0 = successful); decoded on the host by :func:`_decode_result`."""
    return jnp.asarray(result._value, jnp.int32)


def _decode_result(code: int) -> tuple[str, str]:
    """``(status, message)`` of a Diffrax result index."""
    R = diffrax.RESULTS
    message = R._index_to_message[code]
    if code == int(R.successful._value):
        return "ok", message
    if code == int(R.max_steps_reached._value):
        return "max_steps", message
    if code == int(R.dt_min_reached._value):
        return "step_size_too_small", message
    return "solver_error", message or f"diffrax result {code}"


def _decode_runtime_error(error: Exception) -> tuple[str, str] | None:
    """``(status, message)`` of a Diffrax failure raised at run time (``throw=True``: the backward solve of
    ``BacksolveAdjoint``), recognised by its ``RESULTS`` message; ``None`` for any other error."""
    text = str(error)
    messages = sorted(enumerate(diffrax.RESULTS._index_to_message), key=lambda im: -len(im[1]))
    for code, message in messages:
        if message and message.splitlines()[0] in text:
            return _decode_result(code)
    return None


class _QuietDiffraxFailures(logging.Filter):
    """Drop JAX's ``jax.pure_callback failed`` log record (a full traceback on stderr) when the failing callback
    is an Equinox runtime error carrying a Diffrax result: :meth:`_Prepared.gradient` turns exactly those into a
    status with a one-line message. Every other callback failure is still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and "EquinoxRuntimeError" in type(exc).__name__
                    and _decode_runtime_error(exc) is not None)


logging.getLogger("jax._src.callback").addFilter(_QuietDiffraxFailures())


# ------------------------------------------------------------------------------------------------ backend


def _gpu_devices() -> list:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


class DiffraxBackend:
    """crossode's JAX backend (Diffrax for Runge-Kutta methods, own ALF/MALI); see the module docstring."""

    name = "jax"

    def __init__(self, aot: bool = True, count_nfe: bool = True):
        #: compile the gradient program in ``prepare`` and the solve program on the first ``solve`` call, ahead of
        #: time (``compile_s``, ``memory_analysis``); ``False`` = plain jit, compiled on first call
        self.aot = aot
        #: run the counting program where no closed NFE rule exists; ``False`` reports ``None`` there instead
        self.count_nfe = count_nfe

    def versions(self) -> dict[str, str]:
        import jaxlib

        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "diffrax": diffrax.__version__,
                "equinox": eqx.__version__}

    def devices(self) -> list[str]:
        return ["cpu"] + (["gpu"] if _gpu_devices() else [])

    def supports(self, problem, solver: AbstractSolver, sensitivity: AbstractSensitivity,
                 step: AbstractStepControl, device: str = "cpu") -> str | None:
        """``None`` if supported, else a one-line reason (:func:`crossode.backends._capabilities.jax_supports`)."""
        return jax_supports(problem, solver, sensitivity, step, device, gpu_devices=_gpu_devices)

    def prepare(self, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64"):
        reason = self.supports(problem, solver, sensitivity, step, device)
        if reason is not None:
            raise UnsupportedError(reason)
        if dtype not in ("float64", "float32"):
            raise UnsupportedError(f"dtype={dtype!r} is not supported (float64 or float32)")
        return _Prepared(problem, solver, sensitivity, step, device, dtype, aot=self.aot, count_nfe=self.count_nfe)


# ----------------------------------------------------------------------------------------------- prepared


class _Prepared(Prepared):
    """One compiled cell. Attributes: ``compile_s`` (gradient program lower + compile seconds),
    ``compile_solve_s`` (the solve program's, set by the first :meth:`solve`), ``dt0`` (first step used, adaptive
    only), ``max_steps``, ``checkpoints``, ``adjoint`` (the Diffrax adjoint object; ``None`` for ALF)."""

    def __init__(self, problem, solver, sensitivity, step, device, dtype, aot=True, count_nfe=True):
        self.count_nfe = count_nfe
        self.aot = aot
        self.adjoint = None
        self.problem, self.solver, self.sensitivity, self.step = problem, solver, sensitivity, step
        self.device_name = "gpu" if device == "cuda" else device
        self.device = (_gpu_devices() if self.device_name == "gpu" else jax.devices("cpu"))[0]
        self.dtype = jnp.float64 if dtype == "float64" else jnp.float32
        self.f = make_vector_field(problem)
        self.t0, self.t1 = problem.tspan
        self.saveat = np.asarray(problem.saveat, dtype=np.float64)
        data = problem.loss_data  # weights / targets, shaped to broadcast against the saved states
        self.loss_data = None if data is None else jnp.asarray(data, self.dtype)
        self.is_alf = isinstance(solver, ALF)
        self.checkpoints = None
        self.dt0 = None
        self.dt0_nfe = 0
        self._count_cache: dict = {}
        self._last = None

        if isinstance(step, Fixed):
            self.grid = fixed_grid(self.t0, self.t1, step.dt, self.saveat, max_steps=step.max_steps)
            self.n_grid_steps = len(self.grid) - 1
            self.max_steps = self.n_grid_steps
        else:
            self.grid = None
            self.n_grid_steps = None
            self.max_steps = step.max_steps
            # As the PyTorch backend: ALF clips the first step to |t1 - t0|; RK keeps the unclipped proposal
            # (the first step lands on the first stop and the proposal survives the landing, see _control.py).
            if step.dt0 is not None:
                self.dt0 = min(step.dt0, abs(self.t1 - self.t0)) if self.is_alf else step.dt0
            elif self.is_alf:
                f0 = problem.rhs.f(self.t0, np.asarray(problem.y0), np.asarray(problem.params))
                self.dt0, self.dt0_nfe = initial_step(problem, 2, step.rtol, step.atol, f0=f0)  # q = 2
            else:
                self.dt0, self.dt0_nfe = initial_step(problem, _error_order(solver), step.rtol, step.atol,
                                                      clip=False)

        if self.is_alf:
            self._build_alf()
        else:
            self._build_diffrax()

        self.y0 = jax.device_put(jnp.asarray(problem.y0, self.dtype), self.device)
        self.params = jax.device_put(jnp.asarray(problem.params, self.dtype), self.device)
        n, m = problem.y0.size, problem.n_params  # a batch travels flattened in the packed output
        self._slices = (slice(1, 1 + m), slice(1 + m, 1 + m + n), slice(1 + m + n, 5 + m + n))
        self._n_save = len(self.saveat)

        def packed_grad(y0, p):
            # one float64 vector [loss, dparams, dy0, code, steps, accepted, rejected, (drift, bwd)]: a single
            # device-to-host transfer per call
            out = self._grad_fn(y0, p)
            parts = [jnp.reshape(out[0], (1,)), out[1], out[2], out[3]] + list(out[4:])
            return jnp.concatenate([jnp.asarray(x, jnp.float64).ravel() for x in parts])

        def packed_solve(y0, p):
            ys, info = self._solve_fn(y0, p)
            return jnp.concatenate([jnp.asarray(ys, jnp.float64).ravel(), jnp.asarray(info, jnp.float64)])

        self._grad_c = jax.jit(packed_grad)
        self._solve_c = jax.jit(packed_solve)
        self._grad_compiled = None
        self.compile_s = self.compile_solve_s = None
        if aot:
            # lower + compile ahead of time (compile_s, memory_analysis); the jitted functions then find the
            # executable in JAX's compilation cache, and one untimed call fills the C++ dispatch fast path
            # (measured: AOT `Compiled.__call__` dispatch is slower than the jitted function's).
            t = time.perf_counter()
            self._grad_compiled = self._grad_c.lower(self.y0, self.params).compile()
            self.compile_s = time.perf_counter() - t
            try:
                jax.block_until_ready(self._grad_c(self.y0, self.params))
            except jax.errors.JaxRuntimeError as e:  # a backward-solve failure: `gradient` reports it as a status
                if _decode_runtime_error(e) is None:
                    raise
            # the forward-solve program is compiled on the first `solve` call: a cell that times only gradients
            # never pays for it

    # -- building ------------------------------------------------------------------------------------------

    def _checkpoints(self) -> int:
        """Stored loop states of reverse mode (``Direct``, ``Checkpointed``; see the module docstring)."""
        sens = self.sensitivity
        if isinstance(sens, Checkpointed) and sens.checkpoints is not None:
            return sens.checkpoints
        if isinstance(sens, Direct) and (self.grid is not None or self.is_alf):
            # a fixed grid: max_steps = its steps, one slot per step taken; ALF (crossode's own loop, no Diffrax
            # default to follow): a slot for every step allowed, as before
            return self.max_steps
        return default_checkpoints(self.max_steps)  # Diffrax's RecursiveCheckpointAdjoint() default

    def _loss(self, ys):
        return self.problem.loss.apply(ys, self.loss_data)

    def _diffrax_parts(self, f):
        solver, step, sens = self.solver, self.step, self.sensitivity
        dsolver = _DIFFRAX_SOLVERS[type(solver)]
        if isinstance(solver, (ImplicitEuler, Kvaerno5)) and isinstance(step, Fixed):
            dsolver_obj = dsolver(root_finder=fixed_step_root_finder(self.dtype))
        else:
            dsolver_obj = dsolver()
        term = diffrax.ODETerm(lambda t, y, args: f(t, y, args))
        if isinstance(step, Fixed):
            controller = diffrax.StepTo(ts=jnp.asarray(self.grid))
            dt0 = None
        else:
            controller = make_landing_controller(step.rtol, step.atol, self.t0, self.t1, self.saveat,
                                                 _error_order(solver))
            dt0 = self.dt0 if self.t1 > self.t0 else -self.dt0
        if isinstance(sens, (Direct, Checkpointed)):
            self.checkpoints = self._checkpoints()
            adjoint = diffrax.RecursiveCheckpointAdjoint(checkpoints=self.checkpoints)
        elif isinstance(sens, Backsolve):
            if isinstance(step, Fixed):
                # the forward grid, in the time variable of the forward solve (Diffrax integrates a backward
                # span t0 > t1 forwards in -t); the backward solve walks it in reverse
                direction = 1.0 if self.t1 > self.t0 else -1.0
                back = dict(stepsize_controller=GridController(jnp.asarray(direction * self.grid)), dt0=None)
            else:
                # error control over the whole augmented state (y, a_y, a_params): Diffrax's and torchdiffeq's
                # default, and the PyTorch backend's; the backward dt0 is Diffrax's default -dt0
                back = dict(stepsize_controller=diffrax.PIDController(rtol=step.rtol, atol=step.atol))
            # throw=True: Diffrax discards the backward solve's result, so a failed backward solve (max_steps, a
            # root find that did not converge) would silently return the adjoint of a partial solve; raised
            # instead and turned into a status by `gradient`
            adjoint = diffrax.BacksolveAdjoint(solver=dsolver_obj, max_steps=self.max_steps, throw=True, **back)
        else:  # Forward
            adjoint = diffrax.ForwardMode()
        return term, dsolver_obj, controller, dt0, adjoint

    def _build_diffrax(self, counting: Callable | None = None):
        f = self.f if counting is None else counting
        term, dsolver, controller, dt0, adjoint = self._diffrax_parts(f)
        if counting is None:
            self.adjoint = adjoint
        saveat = diffrax.SaveAt(ts=jnp.asarray(self.saveat))
        t0, t1, max_steps = self.t0, self.t1, self.max_steps

        def run(y0, p):
            sol = diffrax.diffeqsolve(term, dsolver, t0, t1, dt0, y0, args=p, saveat=saveat,
                                      stepsize_controller=controller, adjoint=adjoint, max_steps=max_steps,
                                      throw=False)
            st = sol.stats
            info = jnp.stack([_result_code(sol.result), st["num_steps"], st["num_accepted_steps"],
                              st["num_rejected_steps"]]).astype(jnp.int64)
            return sol.ys, info

        def loss_fn(y0, p):
            ys, info = run(y0, p)
            loss = self._loss(ys)
            return loss, (loss, info)

        def solve_fn(y0, p):
            return run(y0, p)

        grad_fn = _gradient_of(loss_fn, forward=isinstance(self.sensitivity, Forward))

        if counting is not None:
            return solve_fn, grad_fn
        self._solve_fn, self._grad_fn = solve_fn, grad_fn

    def _alf_config(self) -> ALFConfig:
        step = self.step
        if isinstance(step, Fixed):
            return ALFConfig(self.t0, self.t1, self.saveat, eta=self.solver.eta, max_steps=self.max_steps,
                             adaptive=False, grid=self.grid)
        return ALFConfig(self.t0, self.t1, self.saveat, eta=self.solver.eta, max_steps=self.max_steps,
                         adaptive=True, rtol=step.rtol, atol=step.atol, dt0=self.dt0)

    def _build_alf(self, counting: Callable | None = None):
        f = self.f if counting is None else counting
        cfg = self._alf_config()
        sens = self.sensitivity
        t0 = self.t0

        def info_of(r):
            return jnp.stack([r.code, r.n_acc + r.n_rej, r.n_acc, r.n_rej]).astype(jnp.int64)

        def solve_fn(y0, p):
            r = alf_loop(f, cfg, y0, f(t0, y0, p), p, kind="lax")
            return r.ys, info_of(r)

        if isinstance(sens, MALI):
            mali = make_mali_solve(f, cfg)

            def loss_fn(y0, p, probe):
                ys, info = mali(y0, f(t0, y0, p), p, probe)
                loss = self._loss(ys)
                return loss, (loss, info)

            def grad_fn(y0, p):
                probe = jnp.zeros(MALI_PROBE_SIZE, y0.dtype)
                (loss, (_, info)), (dy0, dp, pr) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)(
                    y0, p, probe)
                code, n_acc, n_rej = info[0], info[1], info[2]
                info = jnp.stack([code, n_acc + n_rej, n_acc, n_rej]).astype(jnp.int64)
                return loss, dp, dy0, info, pr
        else:
            if isinstance(sens, Forward):
                kind, ckpt = "lax", None
            else:
                kind = "checkpointed"
                ckpt = self.checkpoints = self._checkpoints()

            def loss_fn(y0, p):
                r = alf_loop(f, cfg, y0, f(t0, y0, p), p, kind=kind, checkpoints=ckpt)
                loss = self._loss(r.ys)
                return loss, (loss, info_of(r))

            grad_fn = _gradient_of(loss_fn, forward=isinstance(sens, Forward))

        if counting is not None:
            return solve_fn, grad_fn
        self._solve_fn, self._grad_fn = solve_fn, grad_fn

    # -- NFE counting -----------------------------------------------------------------------------------------

    def count_evaluations(self, which: str = "gradient") -> int:
        """Primal evaluations of the vector field in one run of the ``"gradient"`` or ``"solve"`` program,
        counted with ``jax.debug.callback`` in a separately compiled, untimed copy (cached per cell)."""
        if which in self._count_cache:
            return self._count_cache[which]
        counter = [0]

        def bump(_t):
            counter[0] += 1

        def counting(t, y, p):
            jax.debug.callback(bump, t)
            return self.f(t, y, p)

        build = self._build_alf if self.is_alf else self._build_diffrax
        solve_fn, grad_fn = build(counting=counting)
        fn = grad_fn if which == "gradient" else solve_fn
        jax.block_until_ready(jax.jit(fn)(self.y0, self.params))
        jax.effects_barrier()
        self._count_cache[which] = counter[0]
        return counter[0]

    def _counted(self, which: str) -> int | None:
        return self.count_evaluations(which) if self.count_nfe else None

    def _stats(self, info: np.ndarray, gradient: bool) -> Stats:
        _, num_steps, n_acc, n_rej = (int(x) for x in info)
        st = Stats(steps_accepted=n_acc, steps_rejected=n_rej)
        solver, sens = self.solver, self.sensitivity
        if self.is_alf:
            fwd = num_steps + 1 + self.dt0_nfe
            st.nfe_forward = fwd
            if gradient:
                if isinstance(sens, MALI):
                    st.nfe_backward = 2 * n_acc + 1
                elif isinstance(sens, Forward):
                    st.nfe_backward = (num_steps + 1) * (self.problem.y0.size + self.problem.n_params)
                elif self.checkpoints is not None and num_steps <= self.checkpoints:
                    st.nfe_backward = 2 * num_steps + 1
                else:
                    # re-evaluations (total - forward) + one VJP per forward evaluation (num_steps + 1)
                    st.nfe_backward = self._counted("gradient")
            return st
        rule = NFE_RULES.get(type(solver))
        if rule is not None:
            c, c0, r = rule
            fwd_evals = c * num_steps + c0
        else:  # implicit: count
            fwd_evals = self._counted("solve")
        st.nfe_forward = None if fwd_evals is None else fwd_evals + self.dt0_nfe
        if not gradient:
            return st
        if fwd_evals is None:
            return st
        if isinstance(sens, Forward):
            st.nfe_backward = fwd_evals * (self.problem.y0.size + self.problem.n_params)
        elif rule is not None and not isinstance(sens, Backsolve) and num_steps <= self.checkpoints:
            st.nfe_backward = (rule[2] + 1) * fwd_evals
        else:
            total = self._counted("gradient")
            if total is None:
                return st
            if isinstance(sens, Backsolve):
                # the backward solve's steps are not reported by Diffrax (issue #195): count, + one VJP each
                st.nfe_backward = 2 * (total - fwd_evals)
            else:  # re-evaluations + one VJP per forward evaluation
                st.nfe_backward = (total - fwd_evals) + fwd_evals
        return st

    # -- running ----------------------------------------------------------------------------------------------

    def _fail(self, code: int):
        if self.is_alf:
            status = FAIL_CODES[code]
            msg = {
                1: f"ALF: max_steps={self.max_steps} attempted steps before t1={self.t1}",
                2: "ALF: the step size collapsed (undamped ALF is unstable on decaying modes)",
                3: "ALF: non-finite values (the state or the error estimate became non-finite)",
                4: "ALF: the step size collapsed 100x below the largest accepted step while the carried velocity is "
                   "dominated by ALF's parasitic mode (|u - v| > 100 |u|). Undamped ALF is unstable on decaying "
                   "modes; use another solver or a shorter horizon.",
            }[code]
            raise SolverFailure(status, msg)
        status, message = _decode_result(code)
        if status == "ok":
            return
        raise SolverFailure(status, f"diffrax: {message.splitlines()[0]} (max_steps={self.max_steps})")

    def solve(self) -> SolveOutput:
        if self.aot and self.compile_solve_s is None:  # compiled on first use, not in `prepare`
            t = time.perf_counter()
            self._solve_c.lower(self.y0, self.params).compile()
            self.compile_solve_s = time.perf_counter() - t
        out = self._last = self._solve_c(self.y0, self.params)
        out = np.asarray(out)
        info = out[-4:]
        if info[0] != 0:
            self._fail(int(info[0]))
        ys = out[:-4].reshape(self._n_save, *self.problem.y0.shape)
        if not np.all(np.isfinite(ys)):
            raise SolverFailure("diverged", "the saved states are non-finite")
        return SolveOutput(ys=ys, stats=self._stats(info, gradient=False))

    def _backward_failed(self, error: Exception):
        """Raise the status of a run-time Diffrax failure of the gradient program (the backward solve of
        Backsolve, which runs with ``throw=True``); the forward solve's own failure takes precedence."""
        decoded = _decode_runtime_error(error)
        if decoded is None:
            raise error
        info = np.asarray(self._solve_c(self.y0, self.params))[-4:]
        if info[0] != 0:
            self._fail(int(info[0]))
        status, message = decoded
        raise SolverFailure(status, f"diffrax: the backward (adjoint) solve failed: {message.splitlines()[0]} "
                                    f"(max_steps={self.max_steps} per interval between save times)") from None

    def gradient(self) -> GradientOutput:
        self._last = None
        try:
            out = self._grad_c(self.y0, self.params)
            self._last, out = out, np.asarray(out)
        except jax.errors.JaxRuntimeError as e:
            self._backward_failed(e)
        s_dp, s_dy0, s_info = self._slices
        info = out[s_info]
        if info[0] != 0:
            self._fail(int(info[0]))
        if not np.all(np.isfinite(out[: s_info.start])):
            raise SolverFailure("diverged", "the loss or its gradient is non-finite")
        if isinstance(self.sensitivity, MALI):  # the shared rule (crossode._sensitivity.mali_reconstruction)
            n_acc = int(info[2])
            self.mali_drift = mali_reconstruction(out[s_info.stop : s_info.stop + 6], n_acc,
                                                  float(jnp.finfo(self.dtype).eps), self.step,
                                                  self.sensitivity.reconstruction_rtol)
            if not self.mali_drift[0] <= self.mali_drift[1]:
                raise mali_reconstruction_failure(*self.mali_drift, n_acc, self.solver.eta)
        return GradientOutput(
            loss=float(out[0]),
            dparams=out[s_dp].copy(),
            dy0=out[s_dy0].reshape(self.problem.y0.shape),
            stats=self._stats(info, gradient=True),
        )

    def synchronize(self) -> None:
        if self._last is not None:
            jax.block_until_ready(self._last)

    def peak_memory(self) -> tuple[int, str] | None:
        if self.device_name == "gpu":
            stats = self.device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                return int(stats["peak_bytes_in_use"]), "jax_gpu_peak"
            return None
        try:
            compiled = self._grad_compiled
            if compiled is None:
                compiled = self._grad_compiled = self._grad_c.lower(self.y0, self.params).compile()
            return int(compiled.memory_analysis().temp_size_in_bytes), "xla_temp"
        except Exception:  # noqa: BLE001 - best effort; the harness falls back to peak RSS
            return None

"""The JAX side of ``crossode check``: call a pure ``odeint`` on jnp arrays and differentiate it with ``jax.grad``.

``func(t, y)`` closes over the traced flat parameter array (``crossode.backends.jax.make_vector_field``); the
loss is ``Loss.apply`` on the saved rows. Both programs (forward, and ``value_and_grad`` w.r.t. ``(params, y0)``)
are ``jax.jit``-compiled with ``t`` and the step settings closed over as constants. A solver that cannot be traced
(it converts traced values to Python numbers, e.g. ``float(t[1] - t[0])`` on a jnp array) is run eagerly instead,
with a note; that is correct but slow. ``nfe_forward`` is counted with ``jax.debug.callback`` in the forward
program; evaluations during the backward pass are not counted (``None``): callbacks under reverse-mode autodiff do
not count recomputations reliably.
"""

from __future__ import annotations

import jax

from ..backends.jax import make_vector_field  # noqa: E402  (enables float64)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from .._record import SolverFailure  # noqa: E402
from ._contract import GradientResult, check_output_shape, output_times  # noqa: E402

__all__ = ["JaxRunner"]

_TRACE_ERRORS = tuple(
    getattr(jax.errors, n)
    for n in ("ConcretizationTypeError", "TracerBoolConversionError", "TracerIntegerConversionError",
              "TracerArrayConversionError")
    if hasattr(jax.errors, n)
)


class JaxRunner:
    """Runs the user's ``odeint`` on one problem; compiled programs are cached per step setting."""

    framework = "jax"

    def __init__(self, odeint, problem):
        self.odeint = odeint
        self.problem = problem
        self.times, self.offset = output_times(problem)
        self.f = make_vector_field(problem)
        self.t = jnp.asarray(np.array(self.times, dtype=np.float64))
        w = problem.loss.weights
        self.weights = None if w is None else jnp.asarray(w)
        self.p = jnp.asarray(np.array(problem.params, dtype=np.float64))
        self.y0 = jnp.asarray(np.array(problem.y0, dtype=np.float64))
        self.eager = False
        self.note = ""
        self._calls = [0]
        self._programs: dict = {}

    def _bump(self):
        self._calls[0] += 1

    def _saved(self, p, y0, kwargs, counting: bool):
        f = self.f

        if counting:
            def func(t, y):
                jax.debug.callback(self._bump)
                return f(t, y, p)
        else:
            def func(t, y):
                return f(t, y, p)

        ys = self.odeint(func, y0, self.t, **kwargs)
        if not hasattr(ys, "shape") or not hasattr(ys, "dtype"):
            raise SolverFailure("solver_error", f"odeint returned {type(ys).__name__}, expected a jax array")
        check_output_shape(tuple(ys.shape), len(self.times), tuple(y0.shape))
        return jnp.asarray(ys)[self.offset :]

    def _build(self, kwargs: dict):
        key = tuple(sorted(kwargs.items()))
        if key not in self._programs:
            def forward(p, y0):
                ys = self._saved(p, y0, kwargs, counting=True)
                return self.problem.loss.apply(ys, self.weights), ys

            def loss(p, y0):
                return self.problem.loss.apply(self._saved(p, y0, kwargs, counting=False), self.weights)

            grad = jax.value_and_grad(loss, argnums=(0, 1))
            self._programs[key] = (forward, grad, jax.jit(forward), jax.jit(grad))
        forward, grad, jforward, jgrad = self._programs[key]
        return (forward, grad) if self.eager else (jforward, jgrad)

    def _call(self, which: int, kwargs: dict, *args):
        fn = self._build(kwargs)[which]
        try:
            return jax.block_until_ready(fn(*args))
        except _TRACE_ERRORS as e:
            if self.eager:
                raise
            self.eager = True
            first = str(e).strip().splitlines()[0][:160]
            self.note = f"not jit-compilable ({type(e).__name__}: {first}); run eagerly (slow)"
            return jax.block_until_ready(self._build(kwargs)[which](*args))

    def gradient(self, kwargs: dict) -> GradientResult:
        """Loss and ``d loss / d(params, y0)`` (``ys`` and NFE come from :meth:`forward`)."""
        loss, (dp, dy0) = self._call(1, kwargs, self.p, self.y0)
        out = GradientResult(loss=float(loss), dparams=np.asarray(dp, dtype=np.float64).copy(),
                             dy0=np.asarray(dy0, dtype=np.float64).copy())
        if not np.isfinite(out.loss):
            raise SolverFailure("diverged", "the loss is non-finite")
        if not (np.all(np.isfinite(out.dparams)) and np.all(np.isfinite(out.dy0))):
            raise SolverFailure("diverged", "the gradient is non-finite")
        return out

    def forward(self, kwargs: dict, theta: np.ndarray | None = None) -> tuple[float, np.ndarray, int]:
        """``(loss, saved states, nfe)`` of one forward solve (at ``theta = [params, y0]`` if given)."""
        m = self.problem.n_params
        p, y0 = (self.p, self.y0) if theta is None else (jnp.asarray(theta[:m]), jnp.asarray(theta[m:]))
        self._calls[0] = 0
        loss, ys = self._call(0, kwargs, p, y0)
        jax.effects_barrier()
        ys = np.asarray(ys, dtype=np.float64)
        if not np.all(np.isfinite(ys)):
            raise SolverFailure("diverged", "odeint returned non-finite states")
        return float(loss), ys.copy(), self._calls[0]

    def loss_function(self, kwargs: dict):
        """``J(theta)``, ``theta = [params, y0]``: the loss through the user's solver (the forward program)."""
        return lambda theta: self.forward(kwargs, np.asarray(theta, dtype=np.float64))[0]

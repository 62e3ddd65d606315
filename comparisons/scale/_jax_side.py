"""The JAX contenders of the scale benchmark: crossode's JAX backend against hand-written Diffrax.

crossode: ``DiffraxBackend().prepare(problem, solver, sensitivity, Adaptive(rtol, atol, max_steps))`` and
``Prepared.gradient()`` (compiled ahead of time in ``prepare``; one call = the packed gradient program + its copy to
NumPy + status checks). The peer is what a Diffrax user writes for the same batched neural ODE: a vector field with
the flat parameters as ``args`` (``[y, t] @ W1.T + b1``, tanh, ... on the whole ``(batch, n)`` state),
``diffrax.diffeqsolve(ODETerm(f), Dopri5(), t0, T, dt0, y0, args=p, saveat=SaveAt(ts=saveat),
stepsize_controller=PIDController(rtol, atol), adjoint=..., max_steps=4096)`` with Diffrax's defaults otherwise
(``throw=True``), the problem's loss, ``jax.jit(jax.value_and_grad(...))`` and ``np.asarray`` of the gradient.
``dt0`` is the same Hairer step crossode computes (:func:`crossode.backends.jax.initial_step`; Diffrax's own
``dt0=None`` always starts at 0.01, diffrax.md §8 pitfall 1), so both take the same first step.

- ``direct``: crossode ``Dopri5() + Direct()`` (= ``RecursiveCheckpointAdjoint()``) vs ``RecursiveCheckpointAdjoint()``.
- ``backsolve``: crossode ``Dopri5() + Backsolve()`` vs ``BacksolveAdjoint()``.
- ``mali``: crossode ``ALF() + MALI()``. **Diffrax has no peer**: it has no reversible adjoint (0.7.2 and ``main``;
  ``ReversibleHeun`` is a solver whose reverse pass is not exploited), so MALI is timed for reference only.
- ``alf-direct`` (memory cell only): crossode ``ALF() + Direct()``.

Memory of a JAX contender in the scans: the compiled gradient program's XLA temporary buffer
(``memory_analysis().temp_size_in_bytes``, static, CPU and GPU alike; diffrax.md §6 validates it against the
process's peak RSS), for crossode and Diffrax alike.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import time  # noqa: E402

import numpy as np  # noqa: E402

import crossode as co  # noqa: E402
from crossode._stepping import error_order, initial_step  # noqa: E402
from crossode.backends.jax import DiffraxBackend  # noqa: E402  (enables float64)

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

def versions() -> dict:
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "diffrax": diffrax.__version__,
            "jax_device": str(jax.devices()[0])}


def missing(library: str) -> str | None:
    return None  # crossode's JAX backend needs Diffrax itself


def hand_field(shapes, time_input: bool):
    """``f(t, y, p)`` on a ``(batch, n)`` state, ``p`` the flat parameters (crossode's layout: W row-major, b)."""
    def f(t, y, p):
        h = y
        if time_input:
            h = jnp.concatenate([y, jnp.full((y.shape[0], 1), t, y.dtype)], axis=-1)
        k = 0
        for i, (o, n_in) in enumerate(shapes):
            w = p[k : k + o * n_in].reshape(o, n_in)
            k += o * n_in
            b = p[k : k + o]
            k += o
            h = h @ w.T + b
            if i < len(shapes) - 1:
                h = jnp.tanh(h)
        return h

    return f


class Contender:
    """One (library, method) on one problem, compiled at construction (``compile_s``)."""

    def __init__(self, key, library, method, label, problem, dtype, device, rtol, atol, max_steps):
        self.key, self.library, self.method, self.label = key, library, method, label
        self.problem = problem
        self.compile_s = None
        self.temp_bytes = None
        self.device = device
        if library == "crossode":
            solver, sens = {"direct": (co.Dopri5(), co.Direct()), "backsolve": (co.Dopri5(), co.Backsolve()),
                            "mali": (co.ALF(), co.MALI()), "alf-direct": (co.ALF(), co.Direct())}[method]
            self.prepared = DiffraxBackend(count_nfe=False).prepare(
                problem, solver, sens, co.Adaptive(rtol=rtol, atol=atol, max_steps=max_steps), device=device,
                dtype=dtype)
            self.compile_s = self.prepared.compile_s
            compiled = getattr(self.prepared, "_grad_compiled", None)
            if compiled is not None:
                self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
            return
        rhs = problem.rhs
        if rhs.features != "identity" or rhs.activation != "tanh":
            raise ValueError("only tanh MLPs with identity features are wired for Diffrax here")
        jdtype = jnp.float32 if dtype == "float32" else jnp.float64
        dev = (jax.devices("gpu") if device in ("gpu", "cuda") else jax.devices("cpu"))[0]
        self.y0 = jax.device_put(jnp.asarray(problem.y0, jdtype), dev)
        self.p = jax.device_put(jnp.asarray(problem.params, jdtype), dev)
        data = problem.loss_data
        data = None if data is None else jax.device_put(jnp.asarray(data, jdtype), dev)
        t0, t1 = problem.tspan
        dt0, _ = initial_step(problem, error_order(co.Dopri5()), rtol, atol, clip=False)
        self.dt0 = dt0
        term = diffrax.ODETerm(hand_field(rhs.shapes, rhs.time_input))
        adjoint = diffrax.RecursiveCheckpointAdjoint() if method == "direct" else diffrax.BacksolveAdjoint()
        saveat = diffrax.SaveAt(ts=jnp.asarray(problem.saveat))
        loss_of = problem.loss.apply

        def loss(p, y0):
            sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), t0, t1, dt0, y0, args=p, saveat=saveat,
                                      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                      adjoint=adjoint, max_steps=max_steps)
            st = sol.stats
            return loss_of(sol.ys, data), (st["num_accepted_steps"], st["num_rejected_steps"])

        self.fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        t = time.perf_counter()
        compiled = self.fn.lower(self.p, self.y0).compile()
        self.compile_s = time.perf_counter() - t
        self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        jax.block_until_ready(self.fn(self.p, self.y0))  # fills the jitted function's dispatch fast path
        self._steps = None

    def gradient(self):
        if self.library == "crossode":
            out = self.prepared.gradient()
            self._stats = out.stats
            return out.loss, out.dparams, out.dy0
        (loss, steps), (dp, dy0) = self.fn(self.p, self.y0)
        self._steps = steps
        return float(loss), np.asarray(dp, np.float64), np.asarray(dy0, np.float64)

    def counted(self):
        out = self.gradient()
        if self.library == "crossode":
            st = self._stats
            info = {"steps": st.steps_accepted, "steps_rejected": st.steps_rejected, "nfe_forward": st.nfe_forward,
                    "nfe_backward": st.nfe_backward}
        else:
            info = {"steps": int(self._steps[0]), "steps_rejected": int(self._steps[1])}
        return out, info

    def sync(self):
        pass  # both sides copy their outputs to NumPy, which waits for the device


def build(spec, problem, dtype, device, rtol, atol, max_steps) -> Contender:
    return Contender(*spec, problem, dtype, device, rtol, atol, max_steps)

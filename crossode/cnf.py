"""Evaluation helpers for continuous normalizing flows (problems with a :class:`~crossode.CNFRHS` field).

Log-density, held-out negative log-likelihood, the invertibility error and density images of a CNF, evaluated the
same way for every model: each helper builds the flow's problem for the given samples (``problem.remake``: the
field, time span and, unless ``params`` is given, the parameters of ``problem``) and integrates it with one batched
solve per ``chunk`` of samples through a backend's public solve path (:func:`crossode.solve`), or with SciPy.

- ``backend="torch"`` (default): crossode's PyTorch solvers under ``torch.no_grad``; no compilation, so it is the
  cheapest for a one-off evaluation (a 100 x 100 grid is one batched solve of 10,000 samples: the exact trace costs
  ``~(1 + d)`` network evaluations per field evaluation, memory ``~ chunk x d x width`` per layer).
- ``backend="jax"``: Diffrax; every call compiles a new program (seconds), then runs faster per step; worth it for
  large grids, not for repeated small evaluations.
- ``backend="scipy"``: SciPy ``DOP853`` on the exact NumPy field (:meth:`CNFRHS.f`), ``rtol``/``atol`` from
  ``step``; backend-free, for cross-checks, but about 10x slower than torch per evaluation on a batch.

The batch is one solve, so the step sequence is shared (the error norm is the RMS over all samples, as in
training); ``chunk`` bounds the memory and makes the steps of far-apart samples independent. The default step
control :data:`EVAL_STEP` (dopri5, rtol 1e-7, atol 1e-9) is tighter than FFJORD's training tolerances
(rtol 1e-6, atol 1e-8) so that an evaluation does not reward a model for its training discretisation.

Conventions (FFJORD): data ``x`` at ``t0``, base ``z`` at ``t1``, ``logp(t0) = 0``, ``logp' = -tr(dg/dx)``,
``log p_x(x) = log N(z; 0, I) - logp(t1)`` (:class:`~crossode.Loss` ``kind="cnf_nll"`` is ``-mean log p_x``).
"""

from __future__ import annotations

import math

import numpy as np

from ._cnf import CNFRHS
from ._errors import InvalidInputError
from ._limits import MAX_STATE_ENTRIES
from ._problem import Loss, Problem
from ._solvers import AbstractSolver, AbstractStepControl, Adaptive, Dopri5

__all__ = ["EVAL_SOLVER", "EVAL_STEP", "augment", "flow", "log_density", "nll", "invertibility_error",
           "density_grid", "sample"]

EVAL_SOLVER = Dopri5()
"""The default solver of every helper."""

EVAL_STEP = Adaptive(rtol=1e-7, atol=1e-9)
"""The default step control of every helper (tighter than FFJORD's training rtol 1e-6 / atol 1e-8)."""

BACKENDS = ("torch", "jax", "scipy")


def _check(problem) -> CNFRHS:
    if not isinstance(problem, Problem) or not isinstance(problem.rhs, CNFRHS):
        raise InvalidInputError(f"`problem` must be a crossode.Problem with a CNFRHS field; got {problem!r:.80}.")
    return problem.rhs


def _samples(rhs: CNFRHS, x, what: str = "x") -> np.ndarray:
    try:
        x = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{what}` must be a numeric array of samples (n, {rhs.dims}).") from None
    if x.ndim != 2 or x.shape[1] != rhs.dims or x.shape[0] < 1:
        raise InvalidInputError(f"`{what}` must have shape (n, {rhs.dims}) with n >= 1; got {x.shape}.")
    if x.size > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`{what}` has {x.size} entries; at most {MAX_STATE_ENTRIES} are allowed.")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError(f"`{what}` must be finite.")
    return x


def augment(x) -> np.ndarray:
    """Samples ``(n, d)`` -> CNF states ``(n, d + 1)`` with the log-density change ``logp(t0) = 0`` appended."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, np.zeros((*x.shape[:-1], 1))], axis=-1)


def flow(problem: Problem, y, *, reverse: bool = False, params=None, backend: str = "torch",
         solver: AbstractSolver | None = None, step: AbstractStepControl | None = None, device: str = "cpu",
         dtype: str = "float64", chunk: int | None = None) -> np.ndarray:
    """Integrate CNF states ``y`` ``(n, d + 1)`` from ``t0`` to ``t1`` (``reverse``: from ``t1`` to ``t0``).

    Returns the final states ``(n, d + 1)``. ``params``: flat parameters (default ``problem.params``); ``backend``:
    ``"torch"``, ``"jax"`` or ``"scipy"`` (see the module docstring); ``solver``/``step``: default
    :data:`EVAL_SOLVER`/:data:`EVAL_STEP`; ``chunk``: samples per solve (default: all in one). A failed solve raises
    :class:`~crossode.SolverFailure`.
    """
    rhs = _check(problem)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[1] != rhs.n_states:
        raise InvalidInputError(f"`y` must have shape (n, {rhs.n_states}) (samples with their log-density); "
                                f"got {y.shape}.")
    if backend not in BACKENDS:
        raise InvalidInputError(f"`backend` must be one of {', '.join(map(repr, BACKENDS))}; got {backend!r}.")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise InvalidInputError(f"`chunk` must be a positive integer or None; got {chunk!r}.")
    solver = EVAL_SOLVER if solver is None else solver
    step = EVAL_STEP if step is None else step
    t_from, t_to = (problem.t1, problem.t0) if reverse else (problem.t0, problem.t1)
    p = problem.params if params is None else params
    size = y.shape[0] if chunk is None else chunk
    out = []
    for start in range(0, y.shape[0], size):
        part = problem.remake(y0=y[start : start + size], tspan=(t_from, t_to), saveat=[t_to], params=p, loss=Loss(),
                              name=f"{problem.name}-flow")
        out.append(_solve_scipy(part, step) if backend == "scipy" else _solve(part, backend, solver, step, device,
                                                                              dtype))
    return np.concatenate(out, axis=0)


def _solve(problem: Problem, backend, solver, step, device, dtype) -> np.ndarray:
    from ._harness import solve

    return solve(problem, backend, solver, step, device=device, dtype=dtype).ys[-1]


def _solve_scipy(problem: Problem, step) -> np.ndarray:
    import scipy.integrate

    from ._record import SolverFailure

    if not isinstance(step, Adaptive):
        raise InvalidInputError(f"backend 'scipy' runs DOP853 with adaptive steps; got step={step!r}.")
    shape, rhs, p = problem.y0.shape, problem.rhs, problem.params
    sol = scipy.integrate.solve_ivp(lambda t, z: rhs.f(t, z.reshape(shape), p).ravel(), problem.tspan,
                                    problem.y0.ravel(), method="DOP853", rtol=step.rtol, atol=step.atol,
                                    t_eval=[problem.t1])
    if sol.status != 0 or sol.y.shape[1] != 1:
        raise SolverFailure("solver_error", f"SciPy DOP853 failed on the CNF flow: {sol.message}")
    if not np.all(np.isfinite(sol.y)):
        raise SolverFailure("diverged", "SciPy DOP853 produced non-finite values on the CNF flow")
    return sol.y[:, -1].reshape(shape)


def log_density(problem: Problem, x, **kw) -> np.ndarray:
    """``log p_x(x)`` of each sample ``x`` ``(n, d)`` under the flow: ``log N(z(t1)) - logp(t1)``, shape ``(n,)``.

    Keywords as :func:`flow` (``params``, ``backend``, ``solver``, ``step``, ``device``, ``dtype``, ``chunk``).
    """
    rhs = _check(problem)
    x = _samples(rhs, x)
    end = flow(problem, augment(x), **kw)
    z, logp = end[:, : rhs.dims], end[:, rhs.dims]
    return -0.5 * (z * z).sum(axis=1) - 0.5 * rhs.dims * math.log(2.0 * math.pi) - logp


def nll(problem: Problem, x, **kw) -> float:
    """Held-out negative log-likelihood ``-mean log p_x(x)`` (nats per sample) of samples ``x`` ``(n, d)``; the
    ``cnf_nll`` loss evaluated with the helpers' solver. Keywords as :func:`flow`."""
    return float(-np.mean(log_density(problem, x, **kw)))


def invertibility_error(problem: Problem, x, **kw) -> float:
    """Onken & Ruthotto's invertibility error ``||f^-1(f(x)) - x||_F / n`` of samples ``x`` ``(n, d)``: the flow
    from ``t0`` to ``t1`` and back with the same solver and step control. Keywords as :func:`flow` (pass the
    training ``solver``/``step`` to measure the training discretisation)."""
    rhs = _check(problem)
    x = _samples(rhs, x)
    there = flow(problem, augment(x), **kw)
    back = flow(problem, there, reverse=True, **kw)
    return float(np.linalg.norm(back[:, : rhs.dims] - x) / x.shape[0])


def density_grid(problem: Problem, *, xlim=(-4.0, 4.0), ylim=(-4.0, 4.0), n: int = 100, **kw):
    """Log-density of a 2-D flow on an ``n x n`` grid: ``(xs, ys, logp)`` with ``logp[i, j]`` at
    ``(xs[j], ys[i])`` (``plt.imshow(np.exp(logp), origin="lower", extent=(*xlim, *ylim))``). Keywords as
    :func:`flow` (``chunk`` bounds the memory of the ``n * n``-sample solve)."""
    rhs = _check(problem)
    if rhs.dims != 2:
        raise InvalidInputError(f"`density_grid` needs a 2-D flow; this one is {rhs.dims}-D.")
    if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= 2000:
        raise InvalidInputError(f"`n` must be an integer in [2, 2000]; got {n!r}.")
    for name, lim in (("xlim", xlim), ("ylim", ylim)):
        if len(lim) != 2 or not (np.isfinite(lim).all() and lim[0] < lim[1]):
            raise InvalidInputError(f"`{name}` must be (low, high) with low < high; got {lim!r}.")
    xs, ys = np.linspace(*xlim, n), np.linspace(*ylim, n)
    gx, gy = np.meshgrid(xs, ys)
    logp = log_density(problem, np.stack([gx.ravel(), gy.ravel()], axis=1), **kw)
    return xs, ys, logp.reshape(n, n)


def sample(problem: Problem, n: int, *, seed: int = 0, **kw) -> np.ndarray:
    """``n`` samples ``(n, d)`` of the flow's density: ``z ~ N(0, I)`` (``numpy.random.default_rng(seed)``)
    integrated from ``t1`` back to ``t0``. Keywords as :func:`flow`."""
    rhs = _check(problem)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n * rhs.n_states > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`n` must be a positive integer (at most {MAX_STATE_ENTRIES // rhs.n_states}); "
                                f"got {n!r}.")
    z = np.random.default_rng(seed).standard_normal((n, rhs.dims))
    return flow(problem, augment(z), reverse=True, **kw)[:, : rhs.dims]

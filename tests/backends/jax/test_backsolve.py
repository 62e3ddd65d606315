"""JAX Backsolve against Diffrax's own ``BacksolveAdjoint`` called directly on the same problem (issue 15 §1).

- implicit solvers on fixed steps (``y' = -a y``, Diffrax's decay test problem, dt = 0.1): the backward solve used
  to stop after its first step without a status (``dL/dy0 = e^-0.1`` instead of ``e^-1``);
- a ReLU MLP at rtol 1e-6: the backward solve controls the whole augmented state, as Diffrax's default and the
  PyTorch backend do (it used to exclude the parameter adjoint, a seminorm);
- a backward time span on fixed steps (Diffrax's ``test_reverse_time`` problem) used to crash (``dt0`` sign);
- a backward solve that fails (``max_steps``) is a :class:`~crossode.SolverFailure`, never a partial adjoint.
"""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest

jax = pytest.importorskip("jax")
diffrax = pytest.importorskip("diffrax")
optx = pytest.importorskip("optimistix")

import jax.numpy as jnp  # noqa: E402

import crossode as co  # noqa: E402
from crossode import Adaptive, Backsolve, Fixed  # noqa: E402
from crossode._problem import Problem  # noqa: E402
from crossode._rhs import MLPRHS  # noqa: E402
from crossode.backends.jax import DiffraxBackend  # noqa: E402
from crossode.backends.jax._backend import fixed_step_root_finder  # noqa: E402
from crossode._problemfile import problem_from_dict  # noqa: E402

pytestmark = pytest.mark.jax

LAZY = DiffraxBackend(aot=False, count_nfe=False)


def parse_problem_toml(text: str) -> Problem:
    return problem_from_dict(tomllib.loads(text))


def _grad(g) -> np.ndarray:
    return np.r_[g.dparams, g.dy0]


# ------------------------------------------------------------------- implicit solvers, fixed steps (decay)

DECAY = """
name = "diffrax-decay"
states = ["y"]
rhs = ["-a*y"]
y0 = [1.0]
tspan = [0.0, 1.0]
[params]
a = 1.0
[loss]
kind = "linear"
weights = [[1.0]]
"""
EXACT = np.array([-math.exp(-1.0), math.exp(-1.0)])  # [dL/da, dL/dy0] of L = y(1) = y0 exp(-a)


def _decay_diffrax(solver, adjoint):
    """``[dL/da, dL/dy0]`` of ``L = y(1)``, ``y' = -a y``, from plain Diffrax with constant steps 0.1."""
    def loss(y0, a):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, a: -a * y), solver, 0.0, 1.0, 0.1, y0, args=a,
                                  stepsize_controller=diffrax.ConstantStepSize(), adjoint=adjoint, throw=False)
        return sol.ys[-1, 0]

    dy0, da = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.ones(1), jnp.asarray(1.0))
    return np.array([float(da), float(dy0[0])])


@pytest.mark.slow
@pytest.mark.parametrize("solver, name, tol_exact", [(diffrax.Kvaerno5, "kvaerno5", 1e-7),
                                                     (diffrax.ImplicitEuler, "implicit_euler", 0.15)])
def test_fixed_step_implicit_backsolve_matches_diffrax(solver, name, tol_exact):
    problem = parse_problem_toml(DECAY)
    prepared = LAZY.prepare(problem, co.solver_from_name(name), Backsolve(), Fixed(dt=0.1))
    g = prepared.gradient()
    root = solver(root_finder=fixed_step_root_finder(jnp.float64))
    back = diffrax.BacksolveAdjoint(solver=root, stepsize_controller=diffrax.ConstantStepSize(), dt0=-0.1)
    upstream = _decay_diffrax(root, back)
    assert co.relative_error(_grad(g), upstream) < 1e-10
    # Kvaerno5 is order 5: 8e-9 (Diffrax: the same); implicit Euler's continuous adjoint: 0.084
    assert co.relative_error(_grad(g), EXACT) < tol_exact
    assert g.stats.steps_accepted == 10


@pytest.mark.slow
def test_verychord_fails_on_the_fixed_step_backward_solve():
    """Why crossode does not use ``VeryChord`` on fixed steps: plain Diffrax with ``VeryChord(rtol=atol=1e-10)``
    stops the backward solve after its first step ("Nonlinear solve diverged"; silently with ``throw=False``):
    dL/dy0 comes back as e^-0.1, the adjoint of one step."""
    solver = diffrax.Kvaerno5(root_finder=diffrax.VeryChord(rtol=1e-10, atol=1e-10))
    back = diffrax.BacksolveAdjoint(solver=solver, stepsize_controller=diffrax.ConstantStepSize(), dt0=-0.1,
                                    throw=False)
    assert abs(_decay_diffrax(solver, back)[1] - math.exp(-0.1)) < 1e-8


# ------------------------------------------------------------------ ReLU MLP, adaptive: the backward norm


def _relu_mlp() -> Problem:
    rhs = MLPRHS([2, 16, 16, 2], "relu", seed=3)
    return Problem(rhs, y0=np.array([1.0, -0.5]), tspan=(0.0, 1.0), saveat=[1.0], name="relu-mlp")


def _mlp_diffrax(problem, dt0, rtol, atol, adjoint):
    """``[dparams, dy0]`` of ``1/2 |y(1)|^2`` from plain Diffrax: the MLP written out by hand, Tsit5 with
    ``PIDController(rtol, atol)`` (the backward solve of ``BacksolveAdjoint()`` reuses it: full augmented norm)."""
    shapes = problem.rhs.shapes

    def f(t, y, p):
        k, h = 0, y
        for layer, (o, i) in enumerate(shapes):
            w, b = p[k:k + o * i].reshape(o, i), p[k + o * i:k + o * i + o]
            k += o * i + o
            h = w @ h + b
            if layer < len(shapes) - 1:
                h = jnp.maximum(h, 0.0)
        return h

    def loss(y0, p):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(f), diffrax.Tsit5(), 0.0, 1.0, dt0, y0, args=p,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  adjoint=adjoint, max_steps=4096)
        return 0.5 * jnp.sum(sol.ys ** 2)

    dy0, dp = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(problem.y0), jnp.asarray(problem.params))
    return np.r_[np.asarray(dp), np.asarray(dy0)]


@pytest.mark.slow
def test_relu_mlp_backsolve_matches_diffrax_default_norm():
    problem, rtol = _relu_mlp(), 1e-6
    prepared = LAZY.prepare(problem, co.Tsit5(), Backsolve(), Adaptive(rtol=rtol, atol=rtol))
    g = prepared.gradient()
    upstream = _mlp_diffrax(problem, prepared.dt0, rtol, rtol, diffrax.BacksolveAdjoint())
    # one save time at t1: the landing controller and PIDController take the same forward steps, and the backward
    # solves are the same computation (with the old seminorm the two differed by 1.9e-3)
    assert co.relative_error(_grad(g), upstream) < 1e-12
    ref = co.reference(problem)
    assert co.relative_error(_grad(g), ref.grad) < 1e-3  # 2.0e-4 (PyTorch: 4.1e-4; RCA: 4.0e-3)


# ------------------------------------------------------------------------ backward time span, fixed steps

REVERSE = """
name = "diffrax-reverse-time"
states = ["x", "y"]
rhs = ["-k*x", "-k*y"]
y0 = [0.3, -1.2]
tspan = [4.0, {t1}]
[params]
k = 1.0
"""


@pytest.mark.torch
@pytest.mark.parametrize("name", ["tsit5", "euler", "rk4"])
def test_reverse_time_fixed_backsolve_walks_the_forward_grid(name):
    """tspan = [4, 0.3], dt = 0.3 (Diffrax's test_reverse_time: the step does not divide the span): JAX used to
    crash (backward dt0 of the wrong sign); now it walks the forward grid in reverse, as PyTorch does."""
    pytest.importorskip("torch")
    problem = parse_problem_toml(REVERSE.format(t1=0.3))
    solver, step = co.solver_from_name(name), Fixed(dt=0.3)
    j = LAZY.prepare(problem, solver, Backsolve(), step).gradient()
    t = co.gradient(problem, "torch", solver, Backsolve(), step)
    assert j.stats.steps_accepted == t.stats.steps_accepted == 13
    assert co.relative_error(_grad(j), _grad(t)) < 1e-12
    ref = co.reference(problem).grad
    tol = {"tsit5": 1e-5, "euler": 1.0, "rk4": 1e-3}[name]  # 1.3e-6, 0.74, 4.9e-4 (dt = 0.3)
    assert co.relative_error(_grad(j), ref) < tol


@pytest.mark.torch
def test_fixed_backsolve_with_save_times_equals_torch():
    """Several save times (one backward diffeqsolve per interval, the controller state carried across): JAX still
    walks the forward grid in reverse, so it equals the PyTorch backend's Backsolve to round-off."""
    pytest.importorskip("torch")
    problem = co.get_problem("lotka_volterra", t1=2.0).remake(saveat=[0.45, 1.0, 2.0])  # 0.45 is off the 0.1 grid
    step = Fixed(dt=0.1)
    j = LAZY.prepare(problem, co.Dopri5(), Backsolve(), step).gradient()
    t = co.gradient(problem, "torch", co.Dopri5(), Backsolve(), step)
    assert j.stats.steps_accepted == t.stats.steps_accepted == 21
    assert co.relative_error(_grad(j), _grad(t)) < 1e-12
    assert co.relative_error(_grad(j), co.reference(problem).grad) < 1e-5


def test_reverse_time_fixed_backsolve_matches_diffrax():
    """On [4, 0.4] (12 steps of 0.3, so Diffrax's ConstantStepSize takes the same grid): crossode's JAX Backsolve
    equals Diffrax's BacksolveAdjoint with constant steps, dt0 = -0.3."""
    problem = parse_problem_toml(REVERSE.format(t1=0.4))
    g = LAZY.prepare(problem, co.Tsit5(), Backsolve(), Fixed(dt=0.3)).gradient()

    def loss(y0, k):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(lambda t, y, k: -k * y), diffrax.Tsit5(), 4.0, 0.4, -0.3, y0, args=k,
                                  stepsize_controller=diffrax.ConstantStepSize(),
                                  adjoint=diffrax.BacksolveAdjoint())
        return 0.5 * jnp.sum(sol.ys ** 2)

    dy0, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(problem.y0), jnp.asarray(1.0))
    assert g.stats.steps_accepted == 12
    assert co.relative_error(_grad(g), np.r_[float(dk), np.asarray(dy0)]) < 1e-12


# ------------------------------------------------------------------------- a failed backward solve: status


@pytest.mark.slow
def test_failed_backward_solve_is_a_status():
    """max_steps = the forward's steps: the forward finishes, the backward solve (more steps) does not. Before,
    the adjoint of the partial backward solve came back as a gradient 0.72 off, with status ok."""
    problem = _relu_mlp()
    n = LAZY.prepare(problem, co.Tsit5(), Backsolve(), Adaptive(rtol=1e-6, atol=1e-8)).solve().stats
    n = n.steps_accepted + n.steps_rejected
    # ahead of time (the default): the warm-up call in `prepare` fails too and must not raise
    rec = co.measure(problem, DiffraxBackend(count_nfe=False), co.Tsit5(), Backsolve(),
                     Adaptive(rtol=1e-6, atol=1e-8, max_steps=n), repeats=1, with_reference=False)
    assert rec.status == "max_steps" and rec.grad_error is None
    assert "backward" in rec.message and "\n" not in rec.message

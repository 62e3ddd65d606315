"""Codegen parity: the JAX vector field equals the exact NumPy ``problem.rhs.f`` for every zoo problem."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")

from crossode.backends.jax._field import make_vector_field  # noqa: E402  (enables float64)
from crossode.problems import PROBLEMS, get_problem  # noqa: E402

import jax.numpy as jnp  # noqa: E402

pytestmark = pytest.mark.jax


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_field_matches_numpy(name):
    problem = get_problem(name)
    f = make_vector_field(problem)
    rng = np.random.default_rng(0)
    n, m = problem.n_states, problem.n_params
    for _ in range(4):
        t = float(rng.uniform(*sorted(problem.tspan)))
        y = np.asarray(problem.y0) + rng.standard_normal(problem.y0.shape)  # (n,) or (batch, n)
        p = np.asarray(problem.params) * (1 + 0.1 * rng.standard_normal(m))
        got = np.asarray(f(jnp.asarray(t), jnp.asarray(y), jnp.asarray(p)))
        want = problem.rhs.f(t, y, p)
        assert got.shape == y.shape and y.shape[-1] == n and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * (1 + np.abs(want).max()))


def test_constant_component_broadcasts():
    from crossode import Problem, SymbolicRHS

    problem = Problem(SymbolicRHS(["x", "y"], ["a"], ["a*x", "1"]), y0=[1.0, 2.0], params=[0.5], tspan=(0.0, 1.0))
    f = make_vector_field(problem)
    np.testing.assert_array_equal(np.asarray(f(0.0, jnp.asarray([2.0, 3.0]), jnp.asarray([0.5]))), [1.0, 1.0])
    # jit and grad see a pure function of (t, y, p)
    g = jax.grad(lambda p: f(0.0, jnp.asarray([2.0, 3.0]), p).sum())(jnp.asarray([0.5]))
    np.testing.assert_allclose(np.asarray(g), [2.0])


@pytest.mark.parametrize("kw", [*[dict(activation=a) for a in ("tanh", "softplus", "sigmoid", "identity")],
                                dict(time_input=False), dict(widths=[2, 2]), dict(widths=[3, 5, 3])], ids=str)
def test_cnf_variants_and_vjp_match_numpy(kw):
    from crossode import CNFRHS, Problem

    kw = {"widths": [2, 6, 5, 2], **kw}
    rhs = CNFRHS(**kw, seed=2)
    f = make_vector_field(Problem(rhs, y0=np.zeros((4, rhs.n_states)), tspan=(0.0, 1.0)))
    p = rhs.initial_params()
    rng = np.random.default_rng(1)
    for shape in ((4, rhs.n_states), (rhs.n_states,)):
        y, a = rng.standard_normal(shape), rng.standard_normal(shape)
        got, vjp = jax.vjp(lambda y_, p_: f(jnp.asarray(0.6), y_, p_), jnp.asarray(y), jnp.asarray(p))
        want = rhs.f(0.6, y, p)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-13, atol=1e-13 * (1 + np.abs(want).max()))
        gy, gp = vjp(jnp.asarray(a))  # reverse over JAX's forward-mode trace: second derivatives of s
        vy, vp = rhs.vjp(0.6, y, p, a)
        np.testing.assert_allclose(np.asarray(gy), vy, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(np.asarray(gp), vp, rtol=1e-12, atol=1e-13)

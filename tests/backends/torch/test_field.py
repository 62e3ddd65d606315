"""Codegen parity: the PyTorch vector field equals the exact NumPy ``problem.rhs.f`` for every zoo problem, for one
state and for a batch, and every MLP variant (time input, cube features, depth, activations)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossode import MLPRHS, Problem  # noqa: E402
from crossode._rhs import ACTIVATIONS  # noqa: E402
from crossode.backends.torch._field import make_field, make_field_and_params  # noqa: E402
from crossode.problems import PROBLEMS, get_problem  # noqa: E402

pytestmark = pytest.mark.torch


def _check(problem, y, t=0.37):
    p = torch.tensor(problem.params)
    want = problem.rhs.f(t, y, problem.params)
    for f in (make_field(problem, p), make_field_and_params(problem, p)[0]):
        got = f(torch.tensor(t, dtype=torch.float64), torch.tensor(y)).numpy()
        assert got.shape == y.shape
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * (1 + np.abs(want).max()))


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_field_matches_numpy(name):
    problem = get_problem(name)
    rng = np.random.default_rng(0)
    n = problem.n_states
    y_one = (problem.y0 if problem.batch is None else problem.y0[0]) + 0.1 * rng.standard_normal(n)
    _check(problem, y_one)
    _check(problem, y_one + 0.1 * rng.standard_normal((5, n)))  # a batch of 5


@pytest.mark.parametrize("kw", [dict(time_input=True), dict(features="cube"), dict(time_input=True, features="cube"),
                                *[dict(activation=a, widths=[3, 4, 5, 3]) for a in ACTIVATIONS],
                                dict(widths=[3, 3], time_input=True)], ids=str)
def test_mlp_variants_match_numpy(kw):
    kw = {"widths": [3, 6, 3], **kw}
    problem = Problem(MLPRHS(**kw, seed=2), y0=np.ones((4, 3)), tspan=(0.0, 1.0))
    _check(problem, np.random.default_rng(1).standard_normal((4, 3)), t=1.7)


@pytest.mark.parametrize("kw", [*[dict(activation=a) for a in ("tanh", "softplus", "sigmoid", "identity")],
                                dict(time_input=False), dict(widths=[2, 2]), dict(widths=[3, 5, 3])], ids=str)
def test_cnf_variants_match_numpy(kw):
    from crossode import CNFRHS

    kw = {"widths": [2, 6, 5, 2], **kw}
    rhs = CNFRHS(**kw, seed=2)
    problem = Problem(rhs, y0=np.zeros((4, rhs.n_states)), tspan=(0.0, 1.0))
    _check(problem, np.random.default_rng(1).standard_normal((4, rhs.n_states)), t=0.6)
    _check(problem, np.random.default_rng(2).standard_normal(rhs.n_states), t=0.6)  # one state


def test_cnf_trace_under_no_grad_and_its_second_derivatives():
    """The trace is plain tensor code: it runs under no_grad, and autograd through it gives the exact NumPy VJP
    (which needs the activations' second derivatives)."""
    from crossode import CNFRHS

    rhs = CNFRHS([2, 6, 5, 2], "tanh", seed=4)
    y = np.random.default_rng(3).standard_normal((5, 3))
    a = np.random.default_rng(4).standard_normal((5, 3))
    problem = Problem(rhs, y0=np.zeros((5, 3)), tspan=(0.0, 1.0))
    p = torch.tensor(problem.params, requires_grad=True)
    yt = torch.tensor(y, requires_grad=True)
    f = make_field(problem, p)
    with torch.no_grad():
        np.testing.assert_allclose(f(torch.tensor(0.3, dtype=torch.float64), yt).numpy(), rhs.f(0.3, y, problem.params),
                                   rtol=1e-13)
    out = f(torch.tensor(0.3, dtype=torch.float64), yt)
    gy, gp = torch.autograd.grad(out, (yt, p), torch.tensor(a))
    vy, vp = rhs.vjp(0.3, y, problem.params, a)
    np.testing.assert_allclose(gy.numpy(), vy, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(gp.numpy(), vp, rtol=1e-12, atol=1e-13)

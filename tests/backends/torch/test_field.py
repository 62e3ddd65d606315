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

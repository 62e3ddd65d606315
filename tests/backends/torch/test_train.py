"""The PyTorch trainer (``crossode.backends.torch.make_trainer``): torch.optim.Adam on the backend's gradient; a
failed step leaves the parameters alone."""

import numpy as np
import pytest

import crossode
from crossode import RK4, Adaptive, Direct, Dopri5, Fixed, SolverFailure
from crossode._training import Adam

torch = pytest.importorskip("torch")
from crossode.backends.torch import make_trainer  # noqa: E402


def test_a_step_is_adam_on_the_backends_gradient():
    problem = crossode.problems.cubic_spiral()
    opt = Adam(lr=0.01)
    tr = make_trainer(problem, RK4(), Direct(), Fixed(dt=0.1), optimizer=opt)
    g = crossode.gradient(problem, "torch", RK4(), Direct(), Fixed(dt=0.1))
    out = tr.step(None)
    assert out.loss == pytest.approx(g.loss, rel=1e-14)
    assert out.grad_norm == pytest.approx(np.linalg.norm(g.dparams), rel=1e-12)
    # Adam's first step: p - lr * m_hat / (sqrt(v_hat) + eps) = p - lr * g / (|g| + eps)
    expect = problem.params - opt.lr * g.dparams / (np.abs(g.dparams) + opt.eps)
    np.testing.assert_allclose(tr.params(), expect, rtol=1e-12, atol=1e-15)
    assert out.stats.nfe_forward == g.stats.nfe_forward
    assert tr.solve(problem.params).shape == (len(problem.saveat), 2)


def test_a_failed_step_does_not_move_the_parameters():
    problem = crossode.problems.cubic_spiral()
    tr = make_trainer(problem, Dopri5(), Direct(), Adaptive(rtol=1e-9, atol=1e-9, max_steps=3), optimizer=Adam())
    before = tr.params()
    with pytest.raises(SolverFailure) as e:
        tr.step(None)
    assert e.value.status == "max_steps"
    np.testing.assert_array_equal(tr.params(), before)


def test_no_optimizer_means_solve_only():
    tr = make_trainer(crossode.problems.cubic_spiral(), RK4(), Direct(), Fixed(dt=0.1))
    with pytest.raises(RuntimeError, match="without an optimizer"):
        tr.step(None)

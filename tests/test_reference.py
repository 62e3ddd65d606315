"""The independent reference: closed form and forward sensitivities agree; accuracy is stated and checked."""

import numpy as np
import pytest

from crossode import Loss, Problem, SymbolicRHS, load_problem_file, reference, relative_error
from crossode.problems import get_problem


@pytest.mark.parametrize("name", ["linear", "exponential_decay", "decay2", "error_norm_trap"])
def test_closed_form_matches_sensitivities(name):
    p = get_problem(name)
    closed, sens = reference(p, "closed_form"), reference(p, "sensitivity")
    assert closed.method == "closed_form" and sens.method.startswith("sensitivity")
    assert relative_error(sens.grad, closed.grad) < 1e-9
    assert relative_error(sens.ys, closed.ys) < 1e-10
    assert abs(sens.dt0 - closed.dt0) <= 1e-9 * max(1.0, abs(closed.dt0))


def test_damped_linear_file_within_1e8_of_closed_form(data_dir):
    p = load_problem_file(data_dir / "damped_linear.toml")
    assert relative_error(reference(p, "sensitivity").grad, reference(p, "closed_form").grad) < 1e-8


def test_exponential_decay_analytic():
    k, y0, ts = 0.5, 1.0, np.linspace(1.0, 5.0, 5)
    p = get_problem("exponential_decay")
    r = reference(p, "sensitivity")
    ys = y0 * np.exp(-k * ts)
    assert np.allclose(r.ys[:, 0], ys, rtol=1e-11)
    # L = 1/2 sum y0^2 exp(-2 k t):  dL/dk = -sum t y0^2 exp(-2kt), dL/dy0 = sum y0 exp(-2kt)
    assert abs(r.dparams[0] - (-(ts * ys**2).sum())) < 1e-10
    assert abs(r.dy0[0] - (ys**2 / y0).sum()) < 1e-10


def test_error_norm_trap_value():
    # Sapienza et al.: d u1(5) / d u0 = (1 + e^10)/2, -(e^10 - 1)/2 ~ (11013.73, -11012.73)
    r = reference(get_problem("error_norm_trap"))
    e = np.exp(10.0)
    assert np.allclose(r.dy0, [(1 + e) / 2, -(e - 1) / 2], rtol=1e-10)


@pytest.mark.parametrize("name", ["lotka_volterra", "fitzhugh_nagumo", "mlp", "cubic_spiral"])
def test_sensitivity_gradient_vs_central_differences(name):
    p = get_problem(name)
    r = reference(p)
    rng = np.random.default_rng(1)
    v = rng.standard_normal(p.n_params + p.n_states)
    h = 1e-5

    def loss(x):
        q = p.remake(params=x[: p.n_params], y0=x[p.n_params:])
        return reference(q).loss

    x = np.concatenate([p.params, p.y0])
    fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    assert abs(fd - r.grad @ v) <= 1e-6 * max(1.0, abs(fd))


def test_time_gradients_vs_finite_differences():
    p = get_problem("lotka_volterra")
    r = reference(p)
    h = 1e-6
    rhs = p.rhs
    # moving t1 moves the last save (it sits at t1); moving t0 keeps the saves fixed
    def at(t0, t1):
        saveat = p.saveat.copy()
        saveat[-1] = t1
        return reference(Problem(rhs, y0=p.y0, params=p.params, tspan=(t0, t1), saveat=saveat)).loss

    fd1 = (at(0.0, p.t1 + h) - at(0.0, p.t1 - h)) / (2 * h)
    fd0 = (at(h, p.t1) - at(-h, p.t1)) / (2 * h)
    assert abs(fd1 - r.dt1) < 1e-5 * max(1, abs(fd1))
    assert abs(fd0 - r.dt0) < 1e-5 * max(1, abs(fd0))


@pytest.mark.slow
def test_stiff_robertson_reference_vs_differences():
    p = get_problem("robertson", t1=10.0)
    r = reference(p)
    h = 1e-6
    i = 0  # k1
    q = lambda s: reference(p.remake(params=p.params * np.where(np.arange(3) == i, 1 + s, 1))).loss  # noqa: E731
    fd = (q(h) - q(-h)) / (2 * h * p.params[i])
    assert abs(fd - r.dparams[i]) < 1e-5 * abs(fd)


def test_linear_loss_uses_weights():
    rhs = SymbolicRHS(["x"], ["k"], ["-k*x"])
    p = Problem(rhs, y0=[2.0], params=[1.0], tspan=(0, 1), saveat=[0.5, 1.0], loss=Loss("linear", [[1.0], [3.0]]))
    r = reference(p)
    assert np.isclose(r.loss, 2 * np.exp(-0.5) + 6 * np.exp(-1.0), rtol=1e-12)
    assert np.isclose(r.dy0[0], np.exp(-0.5) + 3 * np.exp(-1.0), rtol=1e-12)

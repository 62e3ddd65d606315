"""Continuous normalizing flows: the neutral CNF field's exact NumPy trace, VJP and Jacobians (crossode._cnf) against
central finite differences, the flat layout shared with MLPRHS, the independent reference on CNF problems (against
finite differences of its own loss, forward sensitivities and a closed-form linear flow), and the evaluation helpers
(crossode.cnf) against the analytic log-density of a linear flow."""

import math

import numpy as np
import pytest
import scipy.linalg

from crossode import CNFRHS, MLPRHS, InvalidInputError, Loss, Problem, reference, relative_error
from crossode import cnf
from crossode._cnf import CNF_ACTIVATIONS, activation_derivatives
from crossode.problems import get_problem

H = 1e-6

CNFS = {
    **{f"{a}_time": dict(widths=[2, 5, 4, 2], activation=a, time_input=True) for a in CNF_ACTIVATIONS},
    **{f"{a}": dict(widths=[2, 5, 4, 2], activation=a, time_input=False) for a in CNF_ACTIVATIONS},
    "no_hidden": dict(widths=[2, 2], activation="identity", time_input=True),
    "one_hidden_3d": dict(widths=[3, 6, 3], activation="tanh"),
}


def _states(rhs, n=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, rhs.n_states))


@pytest.mark.parametrize("name", list(CNFS))
def test_vjp_and_jacobians_vs_finite_differences(name):
    rhs = CNFRHS(**CNFS[name], seed=3)
    p, t = rhs.initial_params(), 0.37
    y = _states(rhs)
    a = np.random.default_rng(1).standard_normal(y.shape)
    vy, vp = rhs.vjp(t, y, p, a)
    fd_y = np.zeros_like(y)
    for idx in np.ndindex(*y.shape):
        e = np.zeros_like(y)
        e[idx] = H
        fd_y[idx] = ((rhs.f(t, y + e, p) - rhs.f(t, y - e, p)) * a).sum() / (2 * H)
    fd_p = np.array([((rhs.f(t, y, p + H * e) - rhs.f(t, y, p - H * e)) * a).sum() / (2 * H)
                     for e in np.eye(rhs.n_params)])
    assert vy.shape == y.shape and vp.shape == (rhs.n_params,)
    assert relative_error(vy, fd_y) < 1e-7 and relative_error(vp, fd_p) < 1e-7
    assert np.all(vy[:, -1] == 0.0)  # the field does not depend on logp
    jy, jp = rhs.jac_y(t, y, p), rhs.jac_p(t, y, p)  # per sample: (4, d + 1, d + 1), (4, d + 1, n_params)
    assert jy.shape == (4, rhs.n_states, rhs.n_states) and jp.shape == (4, rhs.n_states, rhs.n_params)
    np.testing.assert_allclose(np.einsum("ni,nij->nj", a, jy), vy, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.einsum("ni,nij->j", a, jp), vp, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(CNFS))
def test_field_is_the_network_and_minus_the_exact_trace(name):
    rhs = CNFRHS(**CNFS[name], seed=5)
    p, t, d = rhs.initial_params(), 0.8, rhs.dims
    y = _states(rhs, seed=2)
    f = rhs.f(t, y, p)
    net = MLPRHS(rhs.widths, rhs.activation, time_input=rhs.time_input, seed=5)  # the same flat layout
    assert rhs.param_names == net.param_names and np.array_equal(rhs.initial_params(), net.initial_params())
    np.testing.assert_allclose(f[:, :d], net.f(t, y[:, :d], p), rtol=1e-14, atol=1e-14)
    jac = np.stack([(net.f(t, y[:, :d] + H * e, p) - net.f(t, y[:, :d] - H * e, p)) / (2 * H) for e in np.eye(d)],
                   axis=-1)  # (4, d, d) by central differences
    np.testing.assert_allclose(-f[:, d], np.trace(jac, axis1=1, axis2=2), rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(rhs.trace(t, y, p), -f[:, d], rtol=1e-14)
    np.testing.assert_allclose(rhs.f(t, y[0], p), f[0], rtol=1e-14)  # one state = one row of a batch


@pytest.mark.parametrize("act", CNF_ACTIVATIONS)
def test_activation_second_derivatives(act):
    z = np.linspace(-3.0, 3.0, 13)
    s, d1, d2 = activation_derivatives(act, z)
    h = 1e-5
    np.testing.assert_allclose(d1, (activation_derivatives(act, z + h)[0] - activation_derivatives(act, z - h)[0])
                               / (2 * h), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(d2, (activation_derivatives(act, z + h)[1] - activation_derivatives(act, z - h)[1])
                               / (2 * h), rtol=1e-8, atol=1e-10)


def test_validation():
    with pytest.raises(InvalidInputError, match="relu"):
        CNFRHS([2, 4, 2], "relu")
    with pytest.raises(InvalidInputError, match="activation"):
        CNFRHS([2, 4, 2], "gelu")
    with pytest.raises(InvalidInputError):
        CNFRHS([2, 4, 3])  # the network maps R^d to R^d
    rhs = CNFRHS([2, 4, 2])
    with pytest.raises(InvalidInputError, match="3 entries"):
        rhs.f(0.0, np.zeros(2), rhs.initial_params())
    assert rhs.n_states == 3 and rhs.dims == 2 and "CNF" in rhs.describe()
    assert rhs.fingerprint() != CNFRHS([2, 4, 2], "tanh").fingerprint() != MLPRHS([2, 4, 2]).fingerprint()
    with pytest.raises(InvalidInputError, match="cnf_nll"):
        Problem(MLPRHS([2, 4, 2]), y0=[1.0, 0.0], tspan=(0.0, 1.0), loss=Loss("cnf_nll"))


# ------------------------------------------------------------------------------------------ the loss


def test_cnf_nll_loss_and_cotangent():
    ys = np.random.default_rng(0).standard_normal((2, 5, 3))  # 2 saves, batch 5, d = 2
    loss = Loss("cnf_nll")
    z, logp = ys[-1, :, :2], ys[-1, :, 2]
    want = -np.mean(-0.5 * (z * z).sum(1) - math.log(2 * math.pi) - logp)  # -mean(log N(z) - logp)
    assert loss.value(ys) == pytest.approx(want, rel=1e-14)
    g = loss.cotangent(ys)
    fd = np.zeros_like(ys)
    for idx in np.ndindex(*ys.shape):
        e = np.zeros_like(ys)
        e[idx] = 1e-6
        fd[idx] = (loss.value(ys + e) - loss.value(ys - e)) / 2e-6
    np.testing.assert_allclose(g, fd, atol=1e-8)
    assert np.all(g[0] == 0.0)  # only the last save enters


# ---------------------------------------------------------------------------- the independent reference


def _small(**kw):
    return get_problem("cnf_moons", **{"batch": 3, "widths": [2, 6, 6, 2], "activation": "tanh", **kw})


@pytest.mark.parametrize("activation", ["tanh", "softplus"])
def test_reference_adjoint_matches_sensitivities(activation):
    p = _small(activation=activation)
    adj, sens = reference(p, "adjoint"), reference(p, "sensitivity")
    assert relative_error(adj.grad, sens.grad) < 1e-8
    assert relative_error(adj.ys, sens.ys) < 1e-10 and adj.loss == pytest.approx(sens.loss, rel=1e-10)
    np.testing.assert_allclose(sens.dy0[:, -1], 1.0 / p.batch, rtol=1e-12)  # dL/dlogp(t0) = 1/B


def test_reference_vs_central_differences_of_its_loss():
    p = _small()
    r = reference(p, "adjoint")
    rng = np.random.default_rng(4)
    x = np.concatenate([p.params, p.y0.ravel()])
    h = 1e-5

    def loss(v):
        q = p.remake(params=v[: p.n_params], y0=v[p.n_params:].reshape(p.y0.shape))
        return reference(q, "sensitivity", cache=False).loss

    for _ in range(2):
        v = rng.standard_normal(x.size)
        fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
        assert abs(fd - r.grad @ v) <= 1e-7 * max(1.0, abs(fd))


def _linear_flow(t1=0.7):
    """x' = W x + b (identity activation, no hidden layer, no time input): z = e^{W T} x + c, logp(T) = -T tr W."""
    w = np.array([[-0.3, 0.8], [-0.5, 0.2]])
    b = np.array([0.4, -0.1])
    rhs = CNFRHS([2, 2], "identity", time_input=False, weights=[w], biases=[b])
    x = np.array([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.9]])
    problem = Problem(rhs, y0=cnf.augment(x), tspan=(0.0, t1), loss=Loss("cnf_nll"), name="linear_flow")
    a = scipy.linalg.expm(w * t1)
    c = np.linalg.solve(w, (a - np.eye(2)) @ b)
    return problem, x, w, b, a, c


def _linear_loss(w, b, x, t1):
    a = scipy.linalg.expm(w * t1)
    z = x @ a.T + np.linalg.solve(w, (a - np.eye(2)) @ b)
    return math.log(2 * math.pi) + np.mean(0.5 * (z * z).sum(1)) - t1 * np.trace(w)


def test_reference_on_a_linear_flow_is_the_closed_form():
    problem, x, w, b, a, c = _linear_flow()
    t1 = problem.t1
    r = reference(problem, "sensitivity")
    assert r.loss == pytest.approx(_linear_loss(w, b, x, t1), rel=1e-12)
    np.testing.assert_allclose(r.ys[-1, :, :2], x @ a.T + c, rtol=1e-11)
    np.testing.assert_allclose(r.ys[-1, :, 2], -t1 * np.trace(w), rtol=1e-11)
    # dL/dW and dL/db by central differences of the closed form (flat layout: W row-major, then b)
    h = 1e-6
    fd = []
    for k in range(6):
        e = np.zeros(6)
        e[k] = h
        wp, bp = w + e[:4].reshape(2, 2), b + e[4:]
        wm, bm = w - e[:4].reshape(2, 2), b - e[4:]
        fd.append((_linear_loss(wp, bp, x, t1) - _linear_loss(wm, bm, x, t1)) / (2 * h))
    np.testing.assert_allclose(r.dparams, fd, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(r.dy0[:, :2], (x @ a.T + c) @ a / len(x), rtol=1e-10)
    assert relative_error(reference(problem, "adjoint").grad, r.grad) < 1e-10


# --------------------------------------------------------------------------- evaluation helpers (crossode.cnf)


def _analytic_log_density(x, w, a, c):
    z = x @ a.T + c
    return -0.5 * (z * z).sum(1) - math.log(2 * math.pi) + np.log(abs(np.linalg.det(a)))


@pytest.mark.parametrize("backend", ["scipy", pytest.param("torch", marks=pytest.mark.torch)])
def test_log_density_nll_and_inverse_of_a_linear_flow(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    problem, x, w, b, a, c = _linear_flow()
    want = _analytic_log_density(x, w, a, c)
    np.testing.assert_allclose(cnf.log_density(problem, x, backend=backend), want, rtol=1e-6)
    assert cnf.nll(problem, x, backend=backend) == pytest.approx(-want.mean(), rel=1e-6)
    assert cnf.nll(problem, x, backend=backend) == pytest.approx(reference(problem).loss, rel=1e-6)
    assert cnf.invertibility_error(problem, x, backend=backend) < 1e-6
    s = cnf.sample(problem, 4, seed=1, backend=backend)  # z ~ N(0, I) mapped back: x = A^-1 (z - c)
    z = np.random.default_rng(1).standard_normal((4, 2))
    np.testing.assert_allclose(s, np.linalg.solve(a, (z - c).T).T, rtol=1e-6, atol=1e-7)


def test_density_grid_integrates_to_one():
    problem, *_ = _linear_flow()
    xs, ys, logp = cnf.density_grid(problem, xlim=(-7.0, 7.0), ylim=(-7.0, 7.0), n=60, backend="scipy")
    assert xs.shape == (60,) and ys.shape == (60,) and logp.shape == (60, 60)
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert np.exp(logp).sum() * cell == pytest.approx(1.0, abs=1e-3)


def test_helper_validation():
    problem, x, *_ = _linear_flow()
    with pytest.raises(InvalidInputError, match="CNFRHS"):
        cnf.nll(get_problem("mlp"), x)
    with pytest.raises(InvalidInputError, match=r"shape \(n, 2\)"):
        cnf.nll(problem, np.zeros((3, 3)))
    with pytest.raises(InvalidInputError, match="finite"):
        cnf.nll(problem, np.full((2, 2), np.nan))
    with pytest.raises(InvalidInputError, match="backend"):
        cnf.nll(problem, x, backend="numba")
    with pytest.raises(InvalidInputError, match="chunk"):
        cnf.nll(problem, x, chunk=0)
    with pytest.raises(InvalidInputError, match="`n`"):
        cnf.density_grid(problem, n=10**6)
    with pytest.raises(InvalidInputError, match="xlim"):
        cnf.density_grid(problem, xlim=(1.0, -1.0))
    with pytest.raises(InvalidInputError, match="`n`"):
        cnf.sample(problem, 0)

"""Gradients of the PyTorch backend: Direct vs a hand-written loop, every method vs the closed form of a linear
ODE, Checkpointed/Forward == Direct to round-off, NFE bookkeeping, failure statuses, and TorchBackend."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

import crossode as cx  # noqa: E402
from crossode import (  # noqa: E402
    MALI,
    RK4,
    Adaptive,
    Backsolve,
    Bosh3,
    Checkpointed,
    Direct,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Forward,
    Heun,
    Kvaerno5,
    SolverFailure,
    Stats,
    Tsit5,
)
from crossode.backends.torch import TorchBackend, odeint  # noqa: E402
from crossode._reference import relative_error  # noqa: E402

pytestmark = pytest.mark.torch

F64 = torch.float64
A_NP = np.array([[-0.3, 1.2, 0.1], [-1.0, -0.2, 0.4], [0.2, -0.5, -0.6]])
Y0_NP = np.array([1.0, -0.5, 0.3])
SAVES = [0.5, 1.0, 2.0]


def linear_closed_form(a: np.ndarray, y0: np.ndarray, saves) -> tuple[float, np.ndarray, np.ndarray]:
    """L = 1/2 sum_k |expm(A t_k) y0|^2 with dL/dA (Frechet derivative of expm) and dL/dy0."""
    n = len(y0)
    loss, da, dy0 = 0.0, np.zeros((n, n)), np.zeros(n)
    for t in saves:
        e = scipy_linalg.expm(a * t)
        y = e @ y0
        loss += 0.5 * y @ y
        dy0 += e.T @ y
        for i in range(n):
            for j in range(n):
                d = np.zeros((n, n))
                d[i, j] = t
                da[i, j] += y @ scipy_linalg.expm_frechet(a * t, d, compute_expm=False) @ y0
    return loss, da, dy0


rel = relative_error  # the project's relative L2 error (the one records use)


def linear_grads(solver, sensitivity, step, saves=SAVES):
    a = torch.tensor(A_NP, requires_grad=True)
    y0 = torch.tensor(Y0_NP, requires_grad=True)
    ys = odeint(lambda t, y: a @ y, y0, [0.0, *saves], solver=solver, sensitivity=sensitivity, step=step, params=[a])
    loss = 0.5 * (ys[1:] ** 2).sum()
    loss.backward()
    return float(loss.detach()), a.grad.numpy(), y0.grad.numpy()


@pytest.mark.parametrize("sensitivity", [Direct(), Checkpointed(), Backsolve(), Forward()], ids=lambda s: s.name)
@pytest.mark.parametrize("solver", [Dopri5(), Tsit5(), Dopri8()], ids=lambda s: s.name)
def test_linear_closed_form(solver, sensitivity):
    loss_ref, da_ref, dy0_ref = linear_closed_form(A_NP, Y0_NP, SAVES)
    loss, da, dy0 = linear_grads(solver, sensitivity, Adaptive(rtol=1e-10, atol=1e-12))
    assert loss == pytest.approx(loss_ref, rel=1e-8)
    assert rel(np.concatenate([da.ravel(), dy0]), np.concatenate([da_ref.ravel(), dy0_ref])) < 1e-6


@pytest.mark.parametrize("sensitivity", [Direct(), Checkpointed(), Backsolve(), Forward()], ids=lambda s: s.name)
def test_linear_closed_form_fixed_step(sensitivity):
    _, da_ref, dy0_ref = linear_closed_form(A_NP, Y0_NP, SAVES)
    _, da, dy0 = linear_grads(RK4(), sensitivity, Fixed(0.01))
    assert rel(np.concatenate([da.ravel(), dy0]), np.concatenate([da_ref.ravel(), dy0_ref])) < 1e-7


def test_linear_save_at_t0_counts():
    # y(t0) = y0 is an output too: its cotangent reaches dy0 directly.
    saves = [0.0, 1.0]
    _, da_ref, dy0_ref = linear_closed_form(A_NP, Y0_NP, saves)
    for sens in (Direct(), Checkpointed(), Backsolve(), Forward()):
        a = torch.tensor(A_NP, requires_grad=True)
        y0 = torch.tensor(Y0_NP, requires_grad=True)
        ys = odeint(lambda t, y: a @ y, y0, saves, sensitivity=sens, step=Adaptive(rtol=1e-10, atol=1e-12), params=[a])
        (0.5 * (ys**2).sum()).backward()
        assert rel(y0.grad.numpy(), dy0_ref) < 1e-6 and rel(a.grad.numpy(), da_ref) < 1e-6, sens


# ------------------------------------------------------------------ Direct == autograd through a hand loop


def lotka_volterra(theta):
    def f(t, y):
        x, z = y[..., 0], y[..., 1]
        return torch.stack([theta[0] * x - theta[1] * x * z, -theta[2] * z + theta[3] * x * z], dim=-1)

    return f


def test_direct_equals_hand_written_rk4_loop():
    theta0 = torch.tensor([1.5, 1.0, 3.0, 1.0], dtype=F64)
    y00 = torch.tensor([1.0, 1.0], dtype=F64)
    ts = [0.0, 0.5, 1.0]

    def hand(theta, y0):
        f = lambda y: lotka_volterra(theta)(None, y)  # noqa: E731
        y, h, out = y0, 0.05, []
        for _ in range(2):
            for _ in range(10):
                k1 = f(y)
                k2 = f(y + h / 2 * k1)
                k3 = f(y + h / 2 * k2)
                k4 = f(y + h * k3)
                y = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            out.append(y)
        return 0.5 * (torch.stack(out) ** 2).sum()

    th1, y1 = theta0.clone().requires_grad_(), y00.clone().requires_grad_()
    ys = odeint(lotka_volterra(th1), y1, ts, solver=RK4(), step=Fixed(0.05))
    (0.5 * (ys[1:] ** 2).sum()).backward()
    th2, y2 = theta0.clone().requires_grad_(), y00.clone().requires_grad_()
    hand(th2, y2).backward()
    np.testing.assert_allclose(th1.grad.numpy(), th2.grad.numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(y1.grad.numpy(), y2.grad.numpy(), rtol=1e-12, atol=0)


# ------------------------------------------------------------------ discrete methods agree to round-off


class MLP(torch.nn.Module):
    def __init__(self, n=3, h=8):
        super().__init__()
        torch.manual_seed(0)
        self.l1 = torch.nn.Linear(n, h).double()
        self.l2 = torch.nn.Linear(h, n).double()

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) - 0.1 * y * torch.cos(t)


def mlp_grads(solver, sensitivity, step, stats=None):
    func = MLP()
    y0 = torch.tensor([0.5, -1.0, 0.25], dtype=F64, requires_grad=True)
    ys = odeint(func, y0, [0.0, 0.7, 1.5, 3.0], solver=solver, sensitivity=sensitivity, step=step, stats=stats)
    w = torch.linspace(-1, 1, ys.numel(), dtype=F64).view_as(ys)
    (w * ys).sum().backward()  # a fixed cotangent on every output, y(t0) included
    return ys.detach(), [y0.grad] + [p.grad for p in func.parameters()]


STEPS = [Adaptive(rtol=1e-6, atol=1e-8), Fixed(0.1)]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: s.label)
@pytest.mark.parametrize("solver", [Heun(), Bosh3(), Dopri5(), Tsit5(), Dopri8()], ids=lambda s: s.name)
@pytest.mark.parametrize("sensitivity", [Checkpointed(), Forward()], ids=lambda s: s.name)
def test_discrete_methods_equal_direct(solver, step, sensitivity):
    if isinstance(step, Adaptive) and solver.order <= 3:
        step = Adaptive(rtol=1e-4, atol=1e-6)  # keeps low-order solvers to a few hundred steps
    st_d, st_o = Stats(), Stats()
    ys_d, g_d = mlp_grads(solver, Direct(), step, st_d)
    ys_o, g_o = mlp_grads(solver, sensitivity, step, st_o)
    assert torch.equal(ys_d, ys_o)  # same grid, same arithmetic: bitwise equal outputs
    assert (st_d.steps_accepted, st_d.steps_rejected) == (st_o.steps_accepted, st_o.steps_rejected)
    for a, b in zip(g_d, g_o):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    "solver,per_step", [(Dopri5(), 6), (Tsit5(), 6), (Bosh3(), 3), (Dopri8(), 13), (Heun(), 2)], ids=lambda x: str(x)
)
def test_backward_nfe_direct_equals_checkpointed(solver, per_step):
    st_d, st_c = Stats(), Stats()
    step = Adaptive(rtol=1e-4, atol=1e-6)
    mlp_grads(solver, Direct(), step, st_d)
    mlp_grads(solver, Checkpointed(), step, st_c)
    # one VJP per stage on the path to the outputs; none for rejected attempts
    assert st_d.nfe_backward == st_c.nfe_backward == per_step * st_d.steps_accepted


def test_backsolve_counts_backward_nfe():
    st = Stats()
    mlp_grads(Dopri5(), Backsolve(), Adaptive(rtol=1e-8, atol=1e-10), st)
    assert st.nfe_backward > st.nfe_forward > 0


def test_backsolve_close_to_direct():
    _, g_d = mlp_grads(Tsit5(), Direct(), Adaptive(rtol=1e-10, atol=1e-12))
    _, g_b = mlp_grads(Tsit5(), Backsolve(), Adaptive(rtol=1e-10, atol=1e-12))
    flat = lambda g: np.concatenate([x.numpy().ravel() for x in g])  # noqa: E731
    assert rel(flat(g_b), flat(g_d)) < 1e-7


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("sensitivity", [Direct(), Checkpointed(), Backsolve(), Forward()], ids=lambda s: s.name)
def test_failures_raise_status(sensitivity):
    y0 = torch.ones(1, dtype=F64, requires_grad=True)
    with pytest.raises(SolverFailure) as e:
        odeint(lambda t, y: y * y, y0, [0.0, 2.0], sensitivity=sensitivity, step=Adaptive(rtol=1e-6, atol=1e-8))
    assert e.value.status in ("step_size_too_small", "diverged", "max_steps")
    with pytest.raises(SolverFailure) as e:
        odeint(lambda t, y: y * y, y0, [0.0, 0.5], sensitivity=sensitivity, step=Adaptive(max_steps=3))
    assert e.value.status == "max_steps"


# ------------------------------------------------------------------ the backend


def linear_problem(loss=None):
    rhs = cx.SymbolicRHS(
        ["x", "y", "z"],
        [f"a{i}{j}" for i in range(3) for j in range(3)],
        [" + ".join(f"a{i}{j}*{s}" for j, s in enumerate("xyz")) for i in range(3)],
    )
    kw = {} if loss is None else {"loss": loss}
    return cx.Problem(rhs, Y0_NP, (0.0, 2.5), params=A_NP.ravel(), saveat=SAVES, name="linear3", **kw)


@pytest.mark.parametrize("sensitivity", [Direct(), Checkpointed(), Backsolve(), Forward()], ids=lambda s: s.name)
def test_backend_linear_closed_form(sensitivity):
    prob = linear_problem()
    backend = TorchBackend()
    assert backend.supports(prob, Tsit5(), sensitivity, Adaptive()) is None
    prep = backend.prepare(prob, Tsit5(), sensitivity, Adaptive(rtol=1e-10, atol=1e-12))
    out = prep.gradient()
    loss_ref, da_ref, dy0_ref = linear_closed_form(A_NP, Y0_NP, SAVES)
    assert out.loss == pytest.approx(loss_ref, rel=1e-8)
    assert out.dparams.shape == (9,) and out.dy0.shape == (3,) and out.dparams.dtype == np.float64
    assert rel(out.dparams, da_ref.ravel()) < 1e-6 and rel(out.dy0, dy0_ref) < 1e-6
    assert out.stats.nfe_forward > 0 and out.stats.nfe_backward > 0 and out.stats.steps_accepted > 0
    sol = prep.solve()
    ref = np.stack([scipy_linalg.expm(A_NP * t) @ Y0_NP for t in SAVES])
    assert sol.ys.shape == (3, 3)
    np.testing.assert_allclose(sol.ys, ref, atol=1e-9)
    assert prep.peak_memory() is None


def test_backend_linear_loss_and_float32():
    w = np.arange(9.0).reshape(3, 3) / 10
    prob = linear_problem(cx.Loss("linear", weights=w))
    out = TorchBackend().prepare(prob, Dopri5(), Direct(), Adaptive(rtol=1e-10, atol=1e-12)).gradient()
    ys = np.stack([scipy_linalg.expm(A_NP * t) @ Y0_NP for t in SAVES])
    assert out.loss == pytest.approx(float((w * ys).sum()), rel=1e-8)
    dy0_ref = sum(scipy_linalg.expm(A_NP * t).T @ w[k] for k, t in enumerate(SAVES))
    assert rel(out.dy0, dy0_ref) < 1e-7
    out32 = TorchBackend().prepare(prob, Dopri5(), Direct(), Adaptive(rtol=1e-5, atol=1e-6), dtype="float32").gradient()
    assert out32.dy0.dtype == np.float64 and rel(out32.dy0, dy0_ref) < 1e-3


def test_backend_mlp_problem():
    rhs = cx.MLPRHS([2, 6, 2], "softplus", seed=3)
    prob = cx.Problem(rhs, [0.4, -0.2], (0.0, 1.0), saveat=[0.25, 0.5, 1.0], name="mlp")
    backend = TorchBackend()
    outs = {
        s.name: backend.prepare(prob, Dopri5(), s, Adaptive(rtol=1e-9, atol=1e-11)).gradient()
        for s in (Direct(), Checkpointed(), Forward(), Backsolve())
    }
    assert outs["direct"].dparams.shape == (prob.n_params,)
    for name in ("checkpointed", "forward"):
        np.testing.assert_allclose(outs[name].dparams, outs["direct"].dparams, rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(outs[name].dy0, outs["direct"].dy0, rtol=1e-11, atol=1e-14)
    assert rel(outs["backsolve"].dparams, outs["direct"].dparams) < 1e-6
    # the numpy field and its exact Jacobians agree with torch's: gradient of the first step by hand
    ys = backend.prepare(prob, RK4(), Direct(), Fixed(0.01)).solve().ys
    f0 = rhs.f(0.0, prob.y0, prob.params)
    np.testing.assert_allclose(ys[0], prob.y0 + 0.25 * f0, atol=0.02)


def test_backend_failure_status():
    rhs = cx.SymbolicRHS(["y"], [], ["y**2"])
    prob = cx.Problem(rhs, [1.0], (0.0, 2.0), name="blowup")
    prep = TorchBackend().prepare(prob, Tsit5(), Direct(), Adaptive(rtol=1e-6, atol=1e-8))
    with pytest.raises(SolverFailure) as e:
        prep.gradient()
    assert e.value.status in ("step_size_too_small", "diverged", "max_steps")


def test_backend_supports_reasons():
    b = TorchBackend()
    prob = linear_problem()
    assert "implicit" in b.supports(prob, Kvaerno5(), Direct(), Adaptive())
    assert "Julia" in b.supports(prob, Tsit5(), cx.InterpolatingAdjoint(), Adaptive())
    assert "ALF" in b.supports(prob, Tsit5(), MALI(), Adaptive())
    assert "Fixed" in b.supports(prob, Euler(), Direct(), Adaptive())
    assert "Fixed" in b.supports(prob, RK4(), Direct(), Adaptive())
    assert b.supports(prob, RK4(), Direct(), Fixed(0.1)) is None
    assert "vjp" in b.supports(prob, Tsit5(), Backsolve(vjp="zygote"), Adaptive())
    big = cx.Problem(cx.MLPRHS([64, 512, 512, 64]), np.zeros(64), (0.0, 1.0), name="big")
    assert "Forward" in b.supports(big, Tsit5(), Forward(), Adaptive())
    if not torch.cuda.is_available():
        assert "CUDA" in b.supports(prob, Tsit5(), Direct(), Adaptive(), device="cuda")
        assert b.devices() == ["cpu"]
    with pytest.raises(cx.UnsupportedError):
        b.prepare(prob, Kvaerno5(), Direct(), Adaptive())
    assert "torch" in b.versions()


# ------------------------------------------------------------------------------------------------ batches

BATCHED = {
    "mlp_time_input": lambda: cx.get_problem("mlp_fit", batch=3, n=2, width=8, depth=1),  # mse, time input
    "spiral_cube": lambda: cx.get_problem("spiral_fit", batch=3, n_save=4, width=8),  # mse, cube features
    "lv_batch_weights": lambda: cx.get_problem("lotka_volterra", t1=2.0).remake(  # symbolic, batch-shaped weights
        y0=[[1.0, 1.0], [0.5, 1.5]], saveat=[1.0, 2.0], loss=cx.Loss("linear", np.arange(8.0).reshape(2, 2, 2))),
    # CNF: state [x, logp], exact trace, cnf_nll loss; the trace's derivatives need s'' (autograd through the field)
    "cnf_moons_small": lambda: cx.get_problem("cnf_moons", batch=8, widths=[2, 16, 16, 2], scale=2.0),
}
BATCHED_METHODS = {
    "dopri5-direct": (Dopri5(), Direct(), Adaptive(rtol=1e-9, atol=1e-11), 1e-7),
    "dopri5-backsolve": (Dopri5(), Backsolve(), Adaptive(rtol=1e-9, atol=1e-11), 1e-7),
    "alf-mali": (cx.ALF(), MALI(), Adaptive(rtol=1e-6, atol=1e-8), 1e-5),
}


# (ALF needs ~10^4 steps on Lotka-Volterra at this tolerance: MALI is checked on the MLP problems)
BATCHED_CELLS = [(n, m) for n in BATCHED for m in BATCHED_METHODS if (n, m) != ("lv_batch_weights", "alf-mali")]


@pytest.mark.parametrize("name, method", BATCHED_CELLS)
def test_batched_gradients_vs_reference(name, method):
    problem = BATCHED[name]()
    solver, sens, step, tol = BATCHED_METHODS[method]
    prepared = TorchBackend().prepare(problem, solver, sens, step)
    g = prepared.gradient()
    ref = cx.reference(problem)
    assert g.dy0.shape == problem.y0.shape and g.dparams.shape == (problem.n_params,)
    assert rel(np.concatenate([g.dparams, g.dy0.ravel()]), ref.grad) < tol
    assert g.loss == pytest.approx(ref.loss, rel=tol)
    ys = prepared.solve().ys
    assert ys.shape == problem.ys_shape
    assert rel(ys, ref.ys) < tol

"""MALI in PyTorch: exactness vs backprop through ALF, accuracy vs closed form, time gradients, memory, failures."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

from crossode._record import SolverFailure, Stats  # noqa: E402
from crossode._sensitivity import MALI, Checkpointed, Direct  # noqa: E402
from crossode._solvers import ALF, Adaptive, Fixed  # noqa: E402
from crossode.backends.torch._alf import odeint_alf  # noqa: E402
from crossode.backends.torch._mali import mali_saved_summary  # noqa: E402
from crossode._reference import relative_error  # noqa: E402

pytestmark = pytest.mark.torch
F64 = torch.float64
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def rand10(dtype=F64):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(10, 10, generator=g, dtype=F64) / math.sqrt(10) - 0.5 * torch.eye(10, dtype=F64)).to(dtype)


OSC2 = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)
DECAY2 = torch.tensor([[-1.0, 0.0], [0.5, -3.0]], dtype=F64)


rel = relative_error  # the project's relative L2 error (the one records use)


def nonlinear_problem(seed=0, n=6, batch=3, dtype=F64, device="cpu"):
    """Non-autonomous tanh field with two parameter tensors; returns (f, params, y0)."""
    g = torch.Generator().manual_seed(seed)
    A = (torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)).to(dtype=dtype, device=device)
    W = (torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)).to(dtype=dtype, device=device)
    b = torch.randn(n, generator=g, dtype=F64).to(dtype=dtype, device=device)
    y0 = torch.randn(batch, n, generator=g, dtype=F64).to(dtype=dtype, device=device)
    A.requires_grad_(), W.requires_grad_(), y0.requires_grad_()

    def f(t, y):
        return torch.tanh(y @ W.T) @ A.T + torch.sin(t) * b - 0.1 * y

    return f, (A, W), y0


def grads(f, params, y0, t, sensitivity, step, cotangent, stats=None):
    ys = odeint_alf(f, y0, t, params=params, solver=ALF(), sensitivity=sensitivity, step=step, stats=stats)
    inputs = (y0, *params) + ((t,) if t.requires_grad else ())
    return ys.detach(), torch.autograd.grad((ys * cotangent).sum(), inputs)


def linear_reference(A, y0, w, T):
    """y(T) = y0 expm(A T)^T, L = sum(w * y(T)); exact dL/dA (Frechet derivative) and dL/dy0."""
    A, y0, w = (x.detach().double().cpu().numpy() for x in (A, y0, w))
    E = scipy_linalg.expm(A * T)
    return y0 @ E.T, T * scipy_linalg.expm_frechet((A * T).T, w.T @ y0)[1], w @ E


# ------------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("step", [Fixed(0.05), Adaptive(rtol=1e-5, atol=1e-5)], ids=["fixed", "adaptive"])
@pytest.mark.parametrize("sensitivity", [MALI(), Checkpointed()], ids=["mali", "checkpointed"])
def test_gradient_equals_backprop_through_same_alf_steps(step, sensitivity):
    """Discretise-then-optimise exactness (mali.md §7), including the gradient path through v0 = f(t0, y0)."""
    f, params, y0 = nonlinear_problem()
    t = torch.tensor([0.0, 0.35, 1.0, 2.0], dtype=F64)
    w = torch.randn(4, *y0.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    ys_d, g_d = grads(f, params, y0, t, Direct(), step, w)
    ys_m, g_m = grads(f, params, y0, t, sensitivity, step, w)
    assert torch.equal(ys_d, ys_m)  # same steps, same arithmetic
    for a, b in zip(g_m, g_d):
        assert rel(a, b) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_mali_nfe_and_batched_states(device):
    f, params, y0 = nonlinear_problem(batch=5, device=device)
    calls = [0]

    def counted(t, y):
        calls[0] += 1
        return f(t, y)

    stats = Stats()
    t = torch.tensor([0.0, 1.0], dtype=F64, device=device)
    ys = odeint_alf(counted, y0, t, params=params, solver=ALF(), sensitivity=MALI(), step=Fixed(0.1), stats=stats)
    assert ys.shape == (2, 5, 6) and ys.device.type == device
    n = stats.steps_accepted
    assert stats.nfe_forward == calls[0] == n + 1
    ys[-1].sum().backward()
    # backward: one evaluation + one VJP per step, plus the VJP of v0 = f(t0, y0)
    assert stats.nfe_backward == 2 * n + 1 and calls[0] == 2 * n + 1


# ------------------------------------------------------------------------------------------ accuracy


@pytest.mark.parametrize("system", ["rand10", "osc2"])
def test_adaptive_gradient_error_tracks_rtol(system):
    A0, T = (rand10(), 2.0) if system == "rand10" else (OSC2, 5.0)
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(4, A0.shape[0], generator=g, dtype=F64)
    w = torch.randn(4, A0.shape[0], generator=g, dtype=F64)
    _, gA_ref, gy_ref = linear_reference(A0, y0, w, T)
    ratios = []
    for rtol in (1e-3, 1e-5):
        A, y = A0.clone().requires_grad_(), y0.clone().requires_grad_()
        ys = odeint_alf(lambda t, x: x @ A.T, y, torch.tensor([0.0, T], dtype=F64), params=(A,), solver=ALF(),
                        sensitivity=MALI(), step=Adaptive(rtol=rtol, atol=rtol))
        (ys[-1] * w).sum().backward()
        err = max(rel(A.grad, gA_ref), rel(y.grad, gy_ref))
        ratios.append(err / rtol)
    # measured: err/rtol = 0.78 (rand10) and 4.9 (osc2), the same at both tolerances
    assert all(0.1 < r < 10 for r in ratios) and max(ratios) / min(ratios) < 2, ratios


def test_saveat_several_times_vs_closed_form():
    A = OSC2.clone().requires_grad_()
    y0 = torch.randn(2, 2, generator=torch.Generator().manual_seed(2), dtype=F64).requires_grad_()
    times = [0.0, 0.5, 1.3, 2.9, 4.0]
    w = torch.randn(len(times), 2, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    ys = odeint_alf(lambda t, x: x @ A.T, y0, torch.tensor(times, dtype=F64), params=(A,), solver=ALF(),
                    sensitivity=MALI(), step=Adaptive(rtol=1e-6, atol=1e-6))
    (ys * w).sum().backward()
    Ys, gA, gy = [], 0.0, w[0].numpy().copy()  # out[0] = y0 contributes its cotangent directly
    for i, s in enumerate(times[1:], start=1):
        Y, gA_i, gy_i = linear_reference(OSC2, y0, w[i], s)
        Ys.append(Y)
        gA, gy = gA + gA_i, gy + gy_i
    assert rel(ys[1:].detach(), np.stack(Ys)) < 1e-4
    assert rel(A.grad, gA) < 1e-4 and rel(y0.grad, gy) < 1e-4


# ------------------------------------------------------------------------------------------ time gradients


@pytest.mark.parametrize("sensitivity", [MALI(), Direct(), Checkpointed()], ids=["mali", "direct", "checkpointed"])
def test_time_gradients_vs_analytic(sensitivity):
    """dL/dt_i = <dL/dy_i, f(t_i, y_i)>, dL/dt0 = -<dL/dz0, f(t0, y0)> (mali.md §8 item 4; TDEP got 270 vs 1.7)."""
    A = rand10()
    y0 = torch.randn(3, 10, generator=torch.Generator().manual_seed(4), dtype=F64)
    times = [0.2, 1.0, 2.2]
    w = torch.randn(3, 3, 10, generator=torch.Generator().manual_seed(5), dtype=F64)
    t = torch.tensor(times, dtype=F64, requires_grad=True)
    ys = odeint_alf(lambda s, x: x @ A.T, y0, t, solver=ALF(), sensitivity=sensitivity,
                    step=Adaptive(rtol=1e-6, atol=1e-6))
    (gt,) = torch.autograd.grad((ys * w).sum(), t)
    An, y0n, wn = A.numpy(), y0.numpy(), w.numpy()
    expected = np.zeros(3)
    for i in (1, 2):
        E = scipy_linalg.expm(An * (times[i] - times[0]))
        yi = y0n @ E.T
        expected[i] = np.sum(wn[i] * (yi @ An.T))
        expected[0] -= np.sum((wn[i] @ E) * (y0n @ An.T))
    np.testing.assert_allclose(gt.numpy(), expected, rtol=1e-4)


def test_time_gradients_vs_finite_differences_nonautonomous():
    f, params, y0 = nonlinear_problem(seed=3)
    w = torch.randn(2, *y0.shape, generator=torch.Generator().manual_seed(6), dtype=F64)
    step = Fixed(0.004)

    def loss(t0, t1):
        with torch.no_grad():
            ys = odeint_alf(f, y0, torch.tensor([t0, t1], dtype=F64), params=params, solver=ALF(),
                            sensitivity=MALI(), step=step)
        return float((ys * w).sum())

    t = torch.tensor([0.3, 1.1], dtype=F64, requires_grad=True)
    ys = odeint_alf(f, y0, t, params=params, solver=ALF(), sensitivity=MALI(), step=step)
    (gt,) = torch.autograd.grad((ys * w).sum(), t)
    d = 1e-5
    fd = [(loss(0.3 + d, 1.1) - loss(0.3 - d, 1.1)) / (2 * d), (loss(0.3, 1.1 + d) - loss(0.3, 1.1 - d)) / (2 * d)]
    # continuous-flow identities vs the discrete map: equal up to the O(h^2) discretisation error
    np.testing.assert_allclose(gt.numpy(), fd, rtol=1e-3)


# ------------------------------------------------------------------------------------------ memory


def test_saved_tensors_do_not_grow_with_steps():
    f, params, y0 = nonlinear_problem()
    summaries = []
    for dt in (0.1, 0.01, 0.001):
        ys = odeint_alf(f, y0, torch.tensor([0.0, 2.0], dtype=F64), params=params, solver=ALF(),
                        sensitivity=MALI(), step=Fixed(dt))
        summaries.append(mali_saved_summary(ys))
    assert [s["n_steps"] for s in summaries] == [20, 200, 2000]
    assert len({(s["n_tensors"], s["tensor_bytes"]) for s in summaries}) == 1
    assert summaries[0]["n_tensors"] == 4  # z0, v0, z(T), v(T)
    assert all(s["grid_bytes"] == 8 * (s["n_steps"] + 1) for s in summaries)  # only the float64 grid grows
    ys = odeint_alf(f, y0, torch.tensor([0.0, 2.0], dtype=F64), params=params, solver=ALF(), sensitivity=Direct(),
                    step=Fixed(0.1))
    assert mali_saved_summary(ys) is None


# ------------------------------------------------------------------------------------------ float32


def test_float32_mali_matches_float64():
    out = {}
    for dtype in (torch.float32, F64):
        f, params, y0 = nonlinear_problem(dtype=dtype)
        w = torch.randn(2, *y0.shape, generator=torch.Generator().manual_seed(7), dtype=F64).to(dtype)
        ys, g = grads(f, params, y0, torch.tensor([0.0, 2.0]), MALI(), Adaptive(rtol=1e-5, atol=1e-5), w)
        assert ys.dtype == dtype and all(x.dtype == dtype for x in g)
        out[dtype] = g
    for a, b in zip(out[torch.float32], out[F64]):
        assert rel(a, b) < 1e-4


# ------------------------------------------------------------------------------------------ failures


def test_reconstruction_error_raised_from_backward_for_damped_alf():
    """eta < 1: forward stable on decay2, but the inverse amplifies errors by 1/|1 - 2 eta| per step.

    A user sees it as SolverFailure('reconstruction_error') raised by ``loss.backward()``.
    """
    A = DECAY2.clone().requires_grad_()
    y0 = torch.tensor([[1.0, -0.5]], dtype=F64, requires_grad=True)
    ys = odeint_alf(lambda t, x: x @ A.T, y0, torch.tensor([0.0, 5.0], dtype=F64), params=(A,),
                    solver=ALF(eta=0.75), sensitivity=MALI(), step=Adaptive(rtol=1e-3, atol=1e-3))
    assert torch.isfinite(ys).all()
    with pytest.raises(SolverFailure) as info:
        ys[-1].sum().backward()
    assert info.value.status == "reconstruction_error"


def test_damped_alf_few_steps_is_still_exact():
    f, params, y0 = nonlinear_problem()
    t = torch.tensor([0.0, 0.5], dtype=F64)
    w = torch.ones(2, *y0.shape, dtype=F64)
    results = []
    for sensitivity in (Direct(), MALI()):
        ys = odeint_alf(f, y0, t, params=params, solver=ALF(eta=0.9), sensitivity=sensitivity, step=Fixed(0.05))
        results.append(torch.autograd.grad((ys * w).sum(), (y0, *params)))
    for a, b in zip(*results):
        assert rel(a, b) < 1e-11  # 10 steps: amplification 1.25**10 ~ 9 on round-off only


def test_decay2_gradient_never_silently_returned():
    A = DECAY2.clone().requires_grad_()
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_()
    with pytest.raises(SolverFailure) as info:
        ys = odeint_alf(lambda t, x: x @ A.T, y0, torch.tensor([0.0, 5.0], dtype=F64), params=(A,), solver=ALF(),
                        sensitivity=MALI(), step=Adaptive(rtol=1e-3, atol=1e-3))
        ys[-1].sum().backward()
    assert info.value.status in ("step_size_too_small", "max_steps", "reconstruction_error")


# ------------------------------------------------------------------------------- the reconstruction limit


def _neural_ode(dtype, batch=256):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.Tanh(), torch.nn.Linear(128, 128), torch.nn.Tanh(),
                              torch.nn.Linear(128, 32)).to(dtype)
    y0 = torch.randn(batch, 32, generator=torch.Generator().manual_seed(1), dtype=F64).to(dtype).requires_grad_()
    target = torch.randn(batch, 32, generator=torch.Generator().manual_seed(2), dtype=F64).to(dtype)
    return net, y0, target


def test_float32_mali_default_settings_neural_ode():
    """Issue 15: a realistic float32 neural ODE (batch 256, state 32, MLP 32-128-128-32 tanh, rtol 1e-3) trains with
    the default MALI(). The old fixed limit max(1e-6, n * eps32) rejected it: drift 1.2e-6 after 8 steps, while the
    gradient matches float64 to 1e-7. The automatic limit (dtype, steps, rtol) is sqrt(eps32) = 3.5e-4 here."""
    grads, drifts = {}, {}
    for dtype in (torch.float32, F64):
        net, y0, target = _neural_ode(dtype)
        params = tuple(net.parameters())
        ys = odeint_alf(lambda t, y: net(y), y0, torch.tensor([0.0, 1.0], dtype=F64), params=params, solver=ALF(),
                        sensitivity=MALI(), step=Adaptive(rtol=1e-3, atol=1e-4))
        loss = ((ys[-1] - target) ** 2).mean()
        grads[dtype] = torch.cat([g.double().ravel() for g in torch.autograd.grad(loss, (y0, *params))])
        summary = mali_saved_summary(ys)
        drifts[dtype] = summary["drift"]
        assert summary["drift"] <= summary["drift_limit"]
    assert rel(grads[torch.float32], grads[F64]) < 1e-3
    assert drifts[F64] < 1e-12 < drifts[torch.float32] < 1e-4  # float32 round-off, far from an amplified drift


def test_dissipative_long_horizon_still_fails_and_would_be_wrong():
    """tanh(y A^T) with the zoo's stable 10x10 A (Re lambda ~ -0.5): undamped ALF's reverse amplifies round-off
    like exp(|Re lambda| t). The default limit rejects the T = 40 gradient, which is 1e8 times less exact than MALI
    normally is (against Checkpointed: the same ALF steps without reconstruction; the T = 64 case of
    ``comparisons/mali`` is 38x off); relaxing the limit shows what it prevented."""
    A0 = rand10()
    y0 = torch.randn(2, 10, generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_()
    t = torch.tensor([0.0, 40.0], dtype=F64)

    def grad(sensitivity):
        A = A0.clone().requires_grad_()
        ys = odeint_alf(lambda s, y: torch.tanh(y @ A.T), y0, t, params=(A,), solver=ALF(), sensitivity=sensitivity,
                        step=Fixed(0.02))
        return ys, torch.autograd.grad(ys[-1].sum(), (A,))[0]

    with pytest.raises(SolverFailure, match=r"reconstruction_rtol=\.\.\.") as info:
        grad(MALI())
    assert info.value.status == "reconstruction_error"
    _, g_ref = grad(Checkpointed())
    ys, g = grad(MALI(reconstruction_rtol=1e3))
    # measured: drift 2.4e-6, gradient 1.6e-3 off, where MALI otherwise equals Checkpointed to ~1e-12
    assert mali_saved_summary(ys)["drift"] > 1e-6 and rel(g, g_ref) > 1e-4

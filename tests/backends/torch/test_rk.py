"""Explicit RK stepping: convergence orders, adaptive accuracy, landing on save times, NFE rules, failures."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossode import (  # noqa: E402
    RK4,
    Adaptive,
    Backsolve,
    Bosh3,
    Direct,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Heun,
    Midpoint,
    SolverFailure,
    Stats,
    Tsit5,
    fixed_grid,
)
from crossode._tableaux import TABLEAUX  # noqa: E402
from crossode.backends.torch import odeint  # noqa: E402
from crossode.backends.torch._control import StepController, initial_step, rms_norm  # noqa: E402
from crossode.backends.torch._rk import Field, integrate  # noqa: E402

pytestmark = pytest.mark.torch

F64 = torch.float64
Y0 = (0.3, 1.0)


def nonlinear(t, y):
    """y1' = cos(y1) (autonomous, all derivatives non-zero), y2' = y2 cos(t) (explicitly time-dependent)."""
    return torch.stack([torch.cos(y[..., 0]), y[..., 1] * torch.cos(t)], dim=-1)


def nonlinear_exact(t: float) -> np.ndarray:
    c = math.asinh(math.tan(Y0[0]))  # inverse Gudermannian of y1(0)
    return np.array([2 * math.atan(math.tanh((t + c) / 2)), Y0[1] * math.exp(math.sin(t))])


# Step sizes per solver: small enough to be asymptotic, large enough that errors stay well above round-off.
# (A linear test problem would overstate Dopri8's order: its stability polynomial matches exp beyond degree 8.)
ORDER_CASES = [
    (Euler(), [0.02, 0.01, 0.005]),
    (Midpoint(), [0.04, 0.02, 0.01]),
    (Heun(), [0.04, 0.02, 0.01]),
    (RK4(), [0.1, 0.05, 0.025]),
    (Bosh3(), [0.1, 0.05, 0.025]),
    (Dopri5(), [0.2, 0.1, 0.05]),
    (Tsit5(), [0.2, 0.1, 0.05]),
    (Dopri8(), [0.5, 0.25, 0.125]),
]


@pytest.mark.parametrize("solver,dts", ORDER_CASES, ids=lambda x: type(x).__name__ if not isinstance(x, list) else "")
def test_convergence_order(solver, dts):
    t1 = 4.0
    y0 = torch.tensor(Y0, dtype=F64)
    exact = nonlinear_exact(t1)
    errs = []
    for dt in dts:
        y1 = odeint(nonlinear, y0, [0.0, t1], solver=solver, step=Fixed(dt))[-1]
        errs.append(float(np.abs(y1.numpy() - exact).max()))
    assert min(errs) > 1e-14, errs  # still above round-off
    slope = math.log(errs[-2] / errs[-1]) / math.log(dts[-2] / dts[-1])
    assert abs(slope - solver.order) < 0.5, (errs, slope)


def test_linear_problem_matches_expm():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a = np.array([[-0.5, 2.0], [-2.0, -0.5]])
    at = torch.tensor(a)
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    ts = [0.0, 0.5, 1.5, 2.0]
    ys = odeint(lambda t, y: at @ y, y0, ts, solver=Dopri8(), step=Adaptive(rtol=1e-12, atol=1e-14))
    ref = np.stack([scipy_linalg.expm(a * t) @ y0.numpy() for t in ts])
    np.testing.assert_allclose(ys.numpy(), ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("solver", [Bosh3(), Dopri5(), Tsit5(), Dopri8(), Heun()], ids=lambda s: type(s).__name__)
def test_adaptive_error_tracks_rtol(solver):
    y0 = torch.tensor(Y0, dtype=F64)
    t1 = 4.0
    errs, nfes = [], []
    rtols = [1e-4, 1e-6, 1e-8] if solver.order >= 3 else [1e-3, 1e-4, 1e-5]
    for rtol in rtols:
        st = Stats()
        y = odeint(nonlinear, y0, [0.0, t1], solver=solver, step=Adaptive(rtol=rtol, atol=rtol * 1e-2), stats=st)
        errs.append(float(np.abs(y[-1].numpy() - nonlinear_exact(t1)).max()))
        nfes.append(st.nfe_forward)
    for rtol, err in zip(rtols, errs):
        assert err < 30 * rtol, (rtols, errs)
    assert errs[0] > errs[1] > errs[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_adaptive_steps_land_on_save_times_and_t1():
    y0 = torch.tensor(Y0, dtype=F64)
    ts = [0.0, 0.123, 1.0, 2.718, 3.0]
    field = Field(nonlinear, torch.device("cpu"))
    sol = integrate(field, TABLEAUX[Dopri5], y0, 0.0, 3.5, ts, Adaptive(rtol=1e-5, atol=1e-7))
    ends = [t + h for t, h in sol.steps]
    starts = [t for t, _ in sol.steps]
    for s in ts[1:]:
        assert s in starts[1:] or s == pytest.approx(ends[-1])  # every save time is a step boundary, exactly
    assert starts[0] == 0.0 and ends[-1] == pytest.approx(3.5, abs=1e-15)
    assert torch.equal(sol.ys[0], y0)  # t0 is saved as y0 itself
    assert [int(i) for i in sol.save_steps] == sorted(sol.save_steps)


def test_backwards_in_time():
    y0 = torch.tensor(nonlinear_exact(2.0), dtype=F64)
    ys = odeint(nonlinear, y0, [2.0, 1.0, 0.0], solver=Tsit5(), step=Adaptive(rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(ys[-1].numpy(), Y0, atol=1e-8)
    ys = odeint(nonlinear, y0, [2.0, 1.0, 0.0], solver=RK4(), step=Fixed(0.01))
    np.testing.assert_allclose(ys[1].numpy(), nonlinear_exact(1.0), atol=1e-8)


def test_fixed_steps_walk_fixed_grid():
    y0 = torch.tensor(Y0, dtype=F64)
    ts = [0.0, 0.25, 0.7, 1.0]
    field = Field(nonlinear, torch.device("cpu"))
    sol = integrate(field, TABLEAUX[RK4], y0, 0.0, 1.0, ts, Fixed(0.1))
    grid = fixed_grid(0.0, 1.0, 0.1, ts)
    assert [t for t, _ in sol.steps] == list(grid[:-1])
    assert [t + h for t, h in sol.steps][-1] == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize(
    "solver,per_step,extra",
    [
        (Euler(), 1, 0),
        (Heun(), 2, 0),
        (RK4(), 4, 0),
        (Bosh3(), 3, 1),
        (Dopri5(), 6, 1),
        (Tsit5(), 6, 1),
        (Dopri8(), 13, 0),
    ],
    ids=lambda x: type(x).__name__ if hasattr(x, "order") else str(x),
)
def test_fixed_step_nfe_rule(solver, per_step, extra):
    st = Stats()
    odeint(nonlinear, torch.tensor(Y0, dtype=F64), [0.0, 1.0], solver=solver, step=Fixed(0.1), stats=st)
    assert st.nfe_forward == per_step * 10 + extra
    assert (st.steps_accepted, st.steps_rejected) == (10, 0)


def test_adaptive_nfe_rule_fsal():
    st = Stats()
    odeint(nonlinear, torch.tensor(Y0, dtype=F64), [0.0, 4.0], solver=Dopri5(), step=Adaptive(rtol=1e-3), stats=st)
    # f0 + one Hairer probe + 6 new stages per attempt (FSAL)
    assert st.nfe_forward == 2 + 6 * (st.steps_accepted + st.steps_rejected)
    st = Stats()
    y0 = torch.tensor(Y0, dtype=F64)
    odeint(nonlinear, y0, [0.0, 4.0], solver=Dopri5(), step=Adaptive(rtol=1e-3, dt0=0.1), stats=st)
    assert st.nfe_forward == 1 + 6 * (st.steps_accepted + st.steps_rejected)


def test_initial_step_and_dt0():
    y0 = torch.tensor(Y0, dtype=F64)
    field = Field(nonlinear, torch.device("cpu"))
    f0 = field(0.0, y0)
    h = initial_step(field, 0.0, y0, f0, 5, 1e-6, 1e-8, 1.0)
    assert 1e-4 < h < 1.0 and field.nfe == 2
    sol = integrate(field, TABLEAUX[Dopri5], y0, 0.0, 1.0, [1.0], Adaptive(rtol=1e-6, dt0=0.0123))
    assert sol.steps[0][1] == 0.0123


def test_controller():
    c = StepController(5, 1e-6, 1e-8, max_steps=3)
    assert c.propose(0.1, 0.5)[0] and 0.1 <= c.propose(0.1, 0.5)[1] <= 1.0  # accepted: never shrinks
    accept, h = c.propose(0.1, 100.0)
    assert not accept and 0.02 - 1e-15 <= h <= 0.09
    assert c.propose(0.1, float("nan")) == (False, 0.1 * 0.2)
    assert c.propose(-0.1, 0.0) == (True, -1.0)
    with pytest.raises(SolverFailure) as e:
        c.check_budget(0.0)
    assert e.value.status == "max_steps"
    y = torch.ones(4, dtype=F64)
    assert float(rms_norm(torch.full((4,), 1e-6, dtype=F64), y, y, 1e-6, 0.0)) == pytest.approx(1.0)
    assert not math.isfinite(float(rms_norm(torch.zeros(4, dtype=F64), y, y * float("inf"), 1e-6, 1e-8)))


def test_max_steps_failure():
    with pytest.raises(SolverFailure) as e:
        odeint(nonlinear, torch.tensor(Y0, dtype=F64), [0.0, 4.0], step=Adaptive(rtol=1e-10, max_steps=5))
    assert e.value.status == "max_steps"
    with pytest.raises(SolverFailure) as e:
        odeint(nonlinear, torch.tensor(Y0, dtype=F64), [0.0, 4.0], solver=RK4(), step=Fixed(0.1, max_steps=5))
    assert e.value.status == "max_steps"


@pytest.mark.parametrize("sensitivity", [Direct(), Backsolve()], ids=["direct", "backsolve"])
def test_fixed_grid_beyond_max_steps_fails_before_allocating(peak_allocation, sensitivity):
    # 4e6 steps of dt=1e-6 with max_steps=5: the grid (32 MB of float64, plus the list) is never built
    y0 = torch.tensor(Y0, dtype=F64)
    err, peak = peak_allocation(lambda: odeint(nonlinear, y0, [0.0, 4.0], solver=RK4(), sensitivity=sensitivity,
                                               step=Fixed(1e-6, max_steps=5)))
    assert isinstance(err, SolverFailure) and err.status == "max_steps", err
    assert peak < 4e6, f"{peak / 1e6:.1f} MB allocated before the max_steps check"
    assert "4,000,000 steps" in err.message and "max_steps=5" in err.message


def blowup(t, y):
    return y * y  # y(t) = 1 / (1 - t) from y0 = 1: infinite at t = 1


@pytest.mark.parametrize("solver", [Dopri5(), Tsit5(), Bosh3()], ids=lambda s: type(s).__name__)
def test_blow_up_is_a_failure_not_nan(solver):
    with pytest.raises(SolverFailure) as e:
        odeint(blowup, torch.ones(1, dtype=F64), [0.0, 2.0], solver=solver, step=Adaptive(rtol=1e-6, atol=1e-8))
    assert e.value.status in ("step_size_too_small", "diverged", "max_steps")


def test_blow_up_fixed_step_is_diverged():
    with pytest.raises(SolverFailure) as e:
        odeint(blowup, torch.ones(1, dtype=F64), [0.0, 2.0], solver=RK4(), step=Fixed(0.1))
    assert e.value.status == "diverged"


def test_float32_keeps_dtype_and_float64_times():
    y0 = torch.tensor(Y0, dtype=torch.float32)
    seen = []

    def f(t, y):
        seen.append(t.dtype)
        return nonlinear(t, y)

    ys = odeint(f, y0, [0.0, 4.0], solver=Tsit5(), step=Adaptive(rtol=1e-5, atol=1e-6))
    assert ys.dtype == torch.float32 and set(seen) == {torch.float64}
    np.testing.assert_allclose(ys[-1].numpy(), nonlinear_exact(4.0), atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda():
    y0 = torch.tensor(Y0, dtype=F64, device="cuda")
    ys = odeint(nonlinear, y0, [0.0, 4.0], solver=Tsit5(), step=Adaptive(rtol=1e-10, atol=1e-12))
    assert ys.device.type == "cuda"
    np.testing.assert_allclose(ys[-1].cpu().numpy(), nonlinear_exact(4.0), atol=1e-8)

"""ALF stepping in PyTorch: inverse step, order, step control, save times, failures, NFE accounting."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
scipy_linalg = pytest.importorskip("scipy.linalg")

from crossode._errors import InvalidInputError, UnsupportedError  # noqa: E402
from crossode._record import SolverFailure, Stats  # noqa: E402
from crossode._sensitivity import MALI, Backsolve, Checkpointed, Direct  # noqa: E402
from crossode._solvers import ALF, Adaptive, Fixed  # noqa: E402
from crossode.backends.torch import _alf  # noqa: E402
from crossode.backends.torch._alf import alf_inverse, alf_step, odeint_alf  # noqa: E402

pytestmark = pytest.mark.torch
F64 = torch.float64


def linear(A):
    return lambda t, y: y @ A.T


def rand10():
    g = torch.Generator().manual_seed(0)
    return torch.randn(10, 10, generator=g, dtype=F64) / math.sqrt(10) - 0.5 * torch.eye(10, dtype=F64)


OSC = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)  # harmonic oscillator: non-dissipative
DECAY2 = torch.tensor([[-1.0, 0.0], [0.5, -3.0]], dtype=F64)


class CountingField:
    """Wraps a field and counts its evaluations independently of crossode's Stats."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def exact_linear(A, y0, times):
    return np.stack([y0.numpy() @ scipy_linalg.expm(A.numpy() * (t - times[0])).T for t in times])


@pytest.mark.parametrize("eta", [1.0, 0.9])
def test_inverse_reconstructs_trajectory_to_roundoff(eta):
    f = linear(OSC)
    z = torch.tensor([[1.0, 0.3], [-0.2, 0.7]], dtype=F64)
    v = f(0.0, z)
    h, n = 0.01, 1000
    traj = [(z, v)]
    for i in range(n):
        z, v, _, _ = alf_step(f, i * h, h, z, v, eta)
        traj.append((z, v))
    worst = 0.0
    for i in range(n - 1, -1, -1):
        z, v = alf_inverse(f, i * h, h, z, v, eta)
        worst = max(worst, float((z - traj[i][0]).abs().max()), float((v - traj[i][1]).abs().max()))
    # undamped: det = -1, errors stay at round-off; eta = 0.9 amplifies by 1/|1 - 2 eta| = 1.25 per step
    assert worst < (1e-13 if eta == 1.0 else 1.25**n * 1e-16 * 10)


def test_fixed_step_is_second_order():
    A = rand10()
    y0 = torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    ref = exact_linear(A, y0, [0.0, 2.0])[-1]
    errs = []
    for dt in (0.08, 0.04, 0.02):
        with torch.no_grad():
            ys = odeint_alf(linear(A), y0, t, solver=ALF(), sensitivity=Direct(), step=Fixed(dt))
        errs.append(np.linalg.norm(ys[-1].numpy() - ref) / np.linalg.norm(ref))
    slopes = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
    assert np.all(np.abs(slopes - 2.0) < 0.2), errs


@pytest.mark.parametrize("direction", [1, -1])
def test_adaptive_lands_exactly_on_save_times(direction):
    times = [0.0, 0.3, 1.7, 2.0]
    if direction < 0:
        times = [2.0, 1.1, 0.0]
    f = linear(OSC - 0.05 * torch.eye(2, dtype=F64))
    y0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    counter = _alf._Counter()
    with torch.no_grad():
        traj = _alf.march(f, y0, f(0.0, y0), times, 1.0, Adaptive(rtol=1e-6, atol=1e-9), counter)
    assert traj.grid.dtype == np.float64
    assert traj.grid[0] == times[0] and traj.grid[-1] == times[-1]  # bit-exact end time
    for i, s in enumerate(times[1:]):
        assert traj.grid[traj.save_steps[i]] == s
    ref = exact_linear(OSC - 0.05 * torch.eye(2, dtype=F64), y0, times)
    np.testing.assert_allclose(torch.stack(traj.saves).numpy(), ref[1:], rtol=0, atol=5e-5)


def test_float32_state_uses_float64_times():
    f = linear(OSC.float())
    y0 = torch.tensor([1.0, 0.0])
    t = torch.tensor([0.0, 1.0, 10.0])
    counter = _alf._Counter()
    with torch.no_grad():
        traj = _alf.march(f, y0, f(0.0, y0), t.double().tolist(), 1.0, Adaptive(rtol=1e-4, atol=1e-4), counter)
        ys = odeint_alf(f, y0, t, solver=ALF(), sensitivity=MALI(), step=Adaptive(rtol=1e-4, atol=1e-4))
    assert traj.grid[-1] == 10.0 and ys.dtype == torch.float32 and ys.shape == (3, 2)
    ref = exact_linear(OSC, y0.double(), [0.0, 1.0, 10.0])
    assert np.abs(ys.double().numpy() - ref).max() < 5e-3


@pytest.mark.parametrize("dt0", [None, 0.01])
def test_forward_nfe_one_per_step(dt0):
    f = CountingField(linear(rand10()))
    y0 = torch.randn(2, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    stats = Stats()
    with torch.no_grad():
        odeint_alf(f, y0, torch.tensor([0.0, 0.5, 2.0], dtype=F64), solver=ALF(), sensitivity=MALI(),
                   step=Adaptive(rtol=1e-5, atol=1e-5, dt0=dt0), stats=stats)
    extra = 1 + (1 if dt0 is None else 0)  # v0, plus one for the initial step (it reuses v0 = f(t0, y0))
    assert stats.nfe_forward == f.n == stats.steps_accepted + stats.steps_rejected + extra


def test_fixed_step_nfe_and_grid():
    f = CountingField(linear(OSC))
    stats = Stats()
    with torch.no_grad():
        ys = odeint_alf(f, torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 0.25, 1.0], dtype=F64),
                        solver=ALF(), sensitivity=Direct(), step=Fixed(0.1), stats=stats)
    # fixed_grid: 0, 0.1, 0.2, 0.25, 0.3, ..., 1.0 -> 11 steps
    assert stats.steps_accepted == 11 and f.n == 12 == stats.nfe_forward and ys.shape == (3, 2)


def test_decay2_long_horizon_fails_loudly():
    """TorchDiffEqPack's silent-garbage case (mali.md §8 item 1) must end with a failure status, fast."""
    y0 = torch.randn(2, generator=torch.Generator().manual_seed(0), dtype=F64)
    stats = Stats()
    with pytest.raises(SolverFailure) as info:
        odeint_alf(linear(DECAY2), y0, torch.tensor([0.0, 5.0], dtype=F64), solver=ALF(), sensitivity=MALI(),
                   step=Adaptive(rtol=1e-3, atol=1e-3), stats=stats)
    assert info.value.status in ("step_size_too_small", "max_steps", "reconstruction_error")
    assert stats.steps_accepted < 20_000  # detected early, not after max_steps


def test_max_steps_is_a_failure_not_a_jump():
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    with pytest.raises(SolverFailure) as info:
        odeint_alf(linear(OSC), y0, torch.tensor([0.0, 10.0], dtype=F64), solver=ALF(), sensitivity=Direct(),
                   step=Adaptive(rtol=1e-8, atol=1e-8, max_steps=50))
    assert info.value.status == "max_steps"
    with pytest.raises(SolverFailure) as info:
        odeint_alf(linear(OSC), y0, torch.tensor([0.0, 10.0], dtype=F64), solver=ALF(), sensitivity=Direct(),
                   step=Fixed(0.1, max_steps=50))
    assert info.value.status == "max_steps"


def test_fixed_grid_beyond_max_steps_fails_before_allocating(peak_allocation):
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    err, peak = peak_allocation(lambda: odeint_alf(linear(OSC), y0, torch.tensor([0.0, 4.0], dtype=F64), solver=ALF(),
                                                   sensitivity=MALI(), step=Fixed(1e-6, max_steps=5)))
    assert isinstance(err, SolverFailure) and err.status == "max_steps", err
    assert peak < 4e6, f"{peak / 1e6:.1f} MB allocated before the max_steps check"
    assert "4,000,000 steps" in err.message and "max_steps=5" in err.message


@pytest.mark.parametrize("step", [Fixed(0.01), Adaptive(rtol=1e-6, atol=1e-6)], ids=["fixed", "adaptive"])
def test_non_finite_is_diverged(step):
    def f(t, y):
        return y * math.nan if float(t) > 0.5 else -y

    with pytest.raises(SolverFailure) as info:
        odeint_alf(f, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), solver=ALF(),
                   sensitivity=Direct(), step=step)
    assert info.value.status == "diverged"


def test_invalid_and_unsupported_inputs():
    y0, f = torch.ones(2, dtype=F64), linear(OSC)
    kw = dict(solver=ALF(), step=Fixed(0.1))
    with pytest.raises(InvalidInputError):
        odeint_alf(f, y0, torch.tensor([0.0, 1.0, 0.5], dtype=F64), sensitivity=MALI(), **kw)
    with pytest.raises(UnsupportedError):
        odeint_alf(f, y0, torch.tensor([0.0, 1.0], dtype=F64), sensitivity=Checkpointed(checkpoints=3), **kw)
    with pytest.raises(UnsupportedError):
        odeint_alf(f, y0, torch.tensor([0.0, 1.0], dtype=F64), sensitivity=Backsolve(), **kw)
    with pytest.raises(InvalidInputError):
        odeint_alf(lambda t, y: y[:1], y0, torch.tensor([0.0, 1.0], dtype=F64), sensitivity=MALI(), **kw)


def test_single_time_returns_initial_state():
    y0 = torch.ones(3, dtype=F64)
    out = odeint_alf(linear(torch.eye(3, dtype=F64)), y0, torch.tensor([0.0], dtype=F64), solver=ALF(),
                     sensitivity=MALI(), step=Fixed(0.1))
    assert out.shape == (1, 3) and torch.equal(out[0], y0)


def test_eta_below_one_forward_is_stable_on_decay2():
    """Damping makes the forward stable where eta = 1 collapses (the reverse is tested in test_mali.py)."""
    y0 = torch.tensor([1.0, -0.5], dtype=F64)
    with torch.no_grad():
        ys = odeint_alf(linear(DECAY2), y0, torch.tensor([0.0, 5.0], dtype=F64), solver=ALF(eta=0.9),
                        sensitivity=Direct(), step=Adaptive(rtol=1e-3, atol=1e-3))
    ref = exact_linear(DECAY2, y0, [0.0, 5.0])[-1]
    assert np.abs(ys[-1].numpy() - ref).max() < 5e-2  # first order: error does not follow rtol


def test_accepted_steps_may_shrink_the_next_one():
    """ALF's controller lets an accepted step shrink the next one (TorchDiffEqPack's rule), RK's does not (Diffrax's).

    Holding h until a rejection and then cutting it feeds ALF's parasitic mode, which then limits the step: on the
    cubic spiral over [0, 5] (rtol 1e-4) the never-shrink rule took 32448 accepted steps, this one 1310, with the
    final state within 1e-3 of the reference either way."""
    from scipy.integrate import solve_ivp

    ctrl = _alf.StepController(2, 1e-3, 1e-3, 10, accept_factor_min=_alf.ACCEPT_FACTOR_MIN)
    assert ctrl.propose(1.0, 0.95) == (True, pytest.approx(0.9 / 0.95**0.5))
    assert _alf.StepController(2, 1e-3, 1e-3, 10).propose(1.0, 0.95) == (True, 1.0)  # RK: never shrinks
    A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    stats = Stats()
    with torch.no_grad():
        ys = odeint_alf(lambda t, y: y**3 @ A, torch.tensor([2.0, 0.0], dtype=F64), torch.tensor([0.0, 5.0], dtype=F64),
                        solver=ALF(), sensitivity=Direct(), step=Adaptive(rtol=1e-4, atol=1e-6), stats=stats)
    ref = solve_ivp(lambda t, y: y**3 @ A.numpy(), (0.0, 5.0), [2.0, 0.0], method="DOP853", rtol=1e-13, atol=1e-14)
    assert stats.steps_accepted < 2000
    assert np.linalg.norm(ys[-1].numpy() - ref.y[:, -1]) < 2e-3 * np.linalg.norm(ref.y[:, -1])

"""The native API: nn.Module fields, loss.backward(), float32, batches, time conventions, validation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from crossode import (  # noqa: E402
    ALF,
    MALI,
    RK4,
    Adaptive,
    Backsolve,
    Checkpointed,
    Direct,
    Dopri5,
    Euler,
    Fixed,
    Forward,
    InvalidInputError,
    Kvaerno5,
    Stats,
    Tsit5,
    UnsupportedError,
)
from crossode.backends.torch import odeint  # noqa: E402

pytestmark = pytest.mark.torch

SENSITIVITIES = [Direct(), Checkpointed(), Backsolve(), Forward()]


class Field(torch.nn.Module):
    def __init__(self, n=2, h=16, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(1)
        self.net = torch.nn.Sequential(torch.nn.Linear(n, h), torch.nn.Tanh(), torch.nn.Linear(h, n)).to(dtype)

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: s.name)
def test_module_loss_backward(sensitivity):
    func = Field()
    y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
    t = torch.linspace(0, 1, 5, dtype=torch.float64)
    ys = odeint(func, y0, t, sensitivity=sensitivity, step=Adaptive(rtol=1e-7, atol=1e-9))
    assert ys.shape == (5, 2)
    assert torch.equal(ys[0], y0.detach())  # y(t[0]) = y0 is the first row
    ys.pow(2).sum().backward()
    assert y0.grad is not None and torch.isfinite(y0.grad).all()
    for p in func.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_sensitivities_agree_on_module():
    grads = {}
    for sens in SENSITIVITIES:
        func = Field()
        y0 = torch.tensor([1.0, -0.5], dtype=torch.float64, requires_grad=True)
        ys = odeint(func, y0, [0.0, 0.5, 1.0], sensitivity=sens, step=Adaptive(rtol=1e-10, atol=1e-12))
        ys.sum().backward()
        grads[sens.name] = torch.cat([y0.grad] + [p.grad.ravel() for p in func.parameters()])
    ref = grads["direct"]
    for name, g in grads.items():
        tol = 1e-7 if name == "backsolve" else 1e-12
        assert float((g - ref).norm() / ref.norm()) < tol, name


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: s.name)
def test_float32(sensitivity):
    func = Field(dtype=torch.float32)
    y0 = torch.tensor([1.0, -0.5], requires_grad=True)
    ys = odeint(func, y0, [0.0, 1.0], sensitivity=sensitivity, step=Adaptive(rtol=1e-5, atol=1e-6))
    assert ys.dtype == torch.float32
    ys.sum().backward()
    assert y0.grad.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in func.parameters())
    func64 = Field()
    y64 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    ref = odeint(func64, y64, [0.0, 1.0], step=Adaptive(rtol=1e-10, atol=1e-12))
    np.testing.assert_allclose(ys.detach().numpy(), ref.detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("sensitivity", SENSITIVITIES, ids=lambda s: s.name)
def test_batched_y0(sensitivity):
    func = Field()
    y0 = torch.tensor([[1.0, -0.5], [0.2, 0.3], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ys = odeint(func, y0, [0.0, 0.5, 1.0], sensitivity=sensitivity, step=Adaptive(rtol=1e-10, atol=1e-12))
    assert ys.shape == (3, 3, 2)
    ys.sum().backward()
    # The batch is one system (torchdiffeq's convention): per-sample solves agree to the tolerance.
    for b in range(3):
        yb = y0[b].detach().clone().requires_grad_(True)
        ysb = odeint(Field(), yb, [0.0, 0.5, 1.0], step=Adaptive(rtol=1e-10, atol=1e-12))
        np.testing.assert_allclose(ys[:, b].detach().numpy(), ysb.detach().numpy(), atol=1e-9)
        ysb.sum().backward()
        np.testing.assert_allclose(y0.grad[b].numpy(), yb.grad.numpy(), atol=1e-8)


def test_explicit_params_and_closure():
    w = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    grads = []
    for sens in (Direct(), Checkpointed()):
        w.grad = None
        odeint(lambda t, y: w @ y, y0, [0.0, 2.0], sensitivity=sens, params=[w]).sum().backward()
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-14)


def test_stats_are_filled():
    st = Stats()
    func = Field()
    ys = odeint(func, torch.ones(2, dtype=torch.float64), [0.0, 1.0], solver=Tsit5(), stats=st)
    assert st.nfe_forward > 0 and st.steps_accepted > 0 and st.steps_rejected is not None
    ys.sum().backward()
    assert st.nfe_backward > 0


def test_time_conventions():
    func = Field()
    y0 = torch.ones(2, dtype=torch.float64)
    fwd = odeint(func, y0, [0.0, 1.0], step=Adaptive(rtol=1e-11, atol=1e-12))
    back = odeint(func, fwd[-1], torch.tensor([1.0, 0.0], dtype=torch.float64), step=Adaptive(rtol=1e-11, atol=1e-12))
    np.testing.assert_allclose(back[-1].detach().numpy(), y0.numpy(), atol=1e-9)
    fixed = odeint(func, y0, np.array([0.0, 0.3, 1.0]), solver=RK4(), step=Fixed(0.1))
    assert fixed.shape == (3, 2)


def test_validation():
    func = Field()
    y0 = torch.ones(2, dtype=torch.float64)
    with pytest.raises(InvalidInputError, match="`t`"):
        odeint(func, y0, [0.0])
    with pytest.raises(InvalidInputError, match="`t`"):
        odeint(func, y0, [0.0, 1.0, 0.5])
    with pytest.raises(InvalidInputError, match="`y0`"):
        odeint(func, torch.ones(2, dtype=torch.int64), [0.0, 1.0])
    with pytest.raises(InvalidInputError, match="`func`"):
        odeint(lambda t, y: y[:1], y0, [0.0, 1.0])
    with pytest.raises(UnsupportedError, match="Fixed"):
        odeint(func, y0, [0.0, 1.0], solver=Euler(), step=Adaptive())
    with pytest.raises(UnsupportedError, match="ALF"):
        odeint(func, y0, [0.0, 1.0], solver=Dopri5(), sensitivity=MALI())
    with pytest.raises(UnsupportedError):
        odeint(func, y0, [0.0, 1.0], solver=Kvaerno5())
    with pytest.raises(UnsupportedError, match="checkpoints"):
        odeint(func, y0, [0.0, 1.0], sensitivity=Checkpointed(checkpoints=4))


def test_alf_dispatches_to_mali_module():
    alf = pytest.importorskip("crossode.backends.torch._alf", reason="ALF/MALI implementation not present yet")
    if not hasattr(alf, "odeint_alf"):
        pytest.skip("ALF/MALI implementation not present yet")
    func = Field()
    y0 = torch.ones(2, dtype=torch.float64)
    ys = odeint(func, y0, [0.0, 1.0], solver=ALF(), sensitivity=MALI(), step=Fixed(0.05))
    assert ys.shape == (2, 2)

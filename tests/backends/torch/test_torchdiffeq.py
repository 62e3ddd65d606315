"""torchdiffeq's keywords on ``crossode.torch.odeint`` / ``odeint_adjoint`` (the mapping in
``crossode.backends.torch._torchdiffeq``), checked against torchdiffeq itself on the same calls."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchdiffeq = pytest.importorskip("torchdiffeq")

import crossode as co  # noqa: E402
from crossode import InvalidInputError, UnsupportedError  # noqa: E402
from crossode.torch import odeint, odeint_adjoint  # noqa: E402

pytestmark = pytest.mark.torch
F64 = torch.float64


class Field(torch.nn.Module):
    """A small time-dependent MLP field (time enters, so t-gradients are not trivial)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


def y0_():
    return torch.tensor([[0.5, -0.3, 0.8], [0.1, 0.2, -0.4]], dtype=F64, requires_grad=True)


def run(fn, func, y0, t, **kw):
    """Solution and gradients (y0, parameters) of sum(ys**2) for one odeint call."""
    ys = fn(func, y0, t, **kw)
    grads = torch.autograd.grad(ys.pow(2).sum(), [y0, *func.parameters()])
    return ys.detach(), [g.detach() for g in grads]


def close(a, b, rtol, atol):
    ys_a, g_a = a
    ys_b, g_b = b
    np.testing.assert_allclose(ys_a.numpy(), ys_b.numpy(), rtol=rtol, atol=atol)
    for x, y in zip(g_a, g_b):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=rtol, atol=atol)


def _flat(res):
    ys, grads = res
    return torch.cat([ys.reshape(-1), *[g.reshape(-1) for g in grads]])


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "adaptive_heun"])
def test_adaptive_methods_match_torchdiffeq(method):
    """The same call in both: solution and gradients agree to the tolerance. crossode lands on every ``t`` where
    torchdiffeq steps past it and interpolates, so compare both with a tight torchdiffeq reference: crossode is
    within ``50 * rtol`` of it and as close as torchdiffeq's own answer (whose interpolation error dominates)."""
    func, y0 = Field(), y0_()
    t = torch.linspace(0.0, 2.0, 6, dtype=F64)
    rtol = 1e-5 if method == "adaptive_heun" else 1e-8
    kw = {"rtol": rtol, "atol": rtol / 100, "method": method}
    ours, theirs = _flat(run(odeint, func, y0, t, **kw)), _flat(run(torchdiffeq.odeint, func, y0, t, **kw))
    ref = _flat(run(torchdiffeq.odeint, func, y0, t, rtol=1e-13, atol=1e-14, method="dopri8"))
    scale = ref.abs().max().item()
    err_ours, err_theirs = (ours - ref).abs().max().item(), (theirs - ref).abs().max().item()
    assert err_ours <= 50 * rtol * scale, (err_ours, err_theirs)
    assert err_ours <= 2 * err_theirs + rtol * scale, (err_ours, err_theirs)
    assert (ours - theirs).abs().max().item() <= err_theirs + 50 * rtol * scale


@pytest.mark.parametrize("method", ["euler", "midpoint", "heun2", "rk4"])
@pytest.mark.parametrize("grid", ["step_size", "t"])
def test_fixed_methods_on_the_same_grid_agree_to_round_off(method, grid):
    """Same grid, same tableau (torchdiffeq's rk4 is Kutta's 3/8 rule): torchdiffeq's numbers to round-off,
    solution and gradients."""
    func, y0 = Field(), y0_()
    if grid == "step_size":
        t = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.5], dtype=F64)  # on the grid k * 0.05
        kw = {"method": method, "options": {"step_size": 0.05}}
    else:
        t = torch.tensor([0.0, 0.1, 0.15, 0.4, 0.45, 0.9], dtype=F64)  # non-uniform: one step per interval
        kw = {"method": method}
    close(run(odeint, func, y0, t, **kw), run(torchdiffeq.odeint, func, y0, t, **kw), rtol=1e-12, atol=1e-14)


def test_rk4_is_torchdiffeqs_and_solver_rk4_the_classical_tableau():
    func, y0 = Field(), y0_()
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    a = odeint(func, y0, t, method="rk4", options={"step_size": 0.1})
    b = odeint(func, y0, t, solver=co.RK4(), step=co.Fixed(0.1))
    d = (a - b).abs().max().item()
    assert 0 < d < 1e-5  # both fourth order, different coefficients


def test_odeint_adjoint_matches_torchdiffeq_with_adjoint_params():
    func, y0 = Field(), y0_()
    t = torch.linspace(0.0, 2.0, 4, dtype=F64)
    params = tuple(func.parameters())
    kw = {"rtol": 1e-9, "atol": 1e-11, "method": "dopri5", "adjoint_params": params}
    ours = run(odeint_adjoint, func, y0, t, **kw)
    theirs = run(torchdiffeq.odeint_adjoint, func, y0, t, **kw)
    close(ours, theirs, rtol=1e-6, atol=1e-8)
    # the same solve through crossode's descriptors, one mapping: identical numbers
    same = run(odeint, func, y0, t, method="dopri5", rtol=1e-9, atol=1e-11, sensitivity=co.Backsolve(),
               params=params)
    close(ours, same, rtol=0, atol=0)


def test_defaults_are_torchdiffeqs():
    func, y0 = Field(), y0_()
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    a = odeint(func, y0, t)
    b = odeint(func, y0, t, method="dopri5", rtol=1e-7, atol=1e-9)
    c = odeint(func, y0, t, solver=co.Dopri5(), step=co.Adaptive(rtol=1e-7, atol=1e-9))
    assert torch.equal(a, b) and torch.equal(a, c)
    np.testing.assert_allclose(a.detach().numpy(), torchdiffeq.odeint(func, y0, t).detach().numpy(), rtol=0, atol=1e-6)


def test_options_first_step_and_max_num_steps():
    func, y0 = Field(), y0_()
    t = torch.linspace(0.0, 1.0, 3, dtype=F64)
    st = co.Stats()
    odeint(func, y0, t, options={"first_step": 1e-3}, stats=st)
    st2 = co.Stats()
    odeint(func, y0, t, step=co.Adaptive(rtol=1e-7, atol=1e-9, dt0=1e-3), stats=st2)
    assert st == st2
    with pytest.raises(co.SolverFailure, match="max_steps"):
        odeint(func, y0, t, options={"max_num_steps": 2})


@pytest.mark.parametrize("how", ["direct", "backsolve", "checkpointed", "forward", "fixed", "alf", "mali"])
def test_time_gradients_match_torchdiffeq_adjoint_and_finite_differences(how):
    """``t.requires_grad`` with every gradient method: dL/dt against torchdiffeq's adjoint and central differences
    (t[0] included, whose gradient must leave out the output row y(t[0]) = y0)."""
    func, y0 = Field(), y0_()
    kw = {"direct": {"rtol": 1e-10, "atol": 1e-12},
          "backsolve": {"rtol": 1e-10, "atol": 1e-12, "sensitivity": co.Backsolve()},
          "checkpointed": {"rtol": 1e-10, "atol": 1e-12, "sensitivity": co.Checkpointed()},
          "fixed": {"method": "rk4", "options": {"step_size": 0.01}},
          "forward": {"rtol": 1e-10, "atol": 1e-12, "sensitivity": co.Forward()},
          "alf": {"method": "alf", "rtol": 1e-7, "atol": 1e-9},
          "mali": {"method": "alf", "rtol": 1e-7, "atol": 1e-9, "sensitivity": co.MALI()}}[how]
    t = torch.tensor([0.2, 0.7, 1.1, 1.6], dtype=F64, requires_grad=True)
    st = co.Stats()
    ys = odeint(func, y0, t, stats=st, **kw)
    (g_t,) = torch.autograd.grad(ys.pow(2).sum(), [t])
    tt = t.detach().clone().requires_grad_(True)
    ref = torchdiffeq.odeint_adjoint(func, y0, tt, rtol=1e-10, atol=1e-12, adjoint_params=tuple(func.parameters()))
    (g_ref,) = torch.autograd.grad(ref.pow(2).sum(), [tt])
    tol = 1e-5 if how in ("fixed", "alf", "mali") else 1e-7
    np.testing.assert_allclose(g_t.numpy(), g_ref.numpy(), rtol=tol, atol=tol)
    # central differences of the loss in each t_i, with crossode itself at a tight tolerance
    eps = 1e-5
    for i in range(len(t)):
        def loss(s):
            ti = t.detach().clone()
            ti[i] += s
            return odeint(func, y0.detach(), ti, rtol=1e-12, atol=1e-13, method="dopri8").pow(2).sum().item()
        fd = (loss(eps) - loss(-eps)) / (2 * eps)
        assert abs(fd - g_t[i].item()) <= 1e-5 * max(1.0, abs(fd)), (i, fd, g_t[i].item())
    assert st.nfe_backward is not None and st.nfe_backward > 0


def test_clear_errors_name_the_argument_and_the_allowed_values():
    func, y0 = Field(), y0_()
    t = [0.0, 1.0]
    with pytest.raises(InvalidInputError, match=r"Unknown `method='rk45'`.*dopri5.*tsit5"):
        odeint(func, y0, t, method="rk45")
    with pytest.raises(UnsupportedError, match=r"`method='fehlberg2'`.*not implemented"):
        odeint(func, y0, t, method="fehlberg2")
    with pytest.raises(InvalidInputError, match=r"options\['step_size'\].*adaptive.*allowed: first_step"):
        odeint(func, y0, t, method="dopri5", options={"step_size": 0.1})
    with pytest.raises(InvalidInputError, match=r"options\['foo'\].*allowed: step_size, perturb, interp"):
        odeint(func, y0, t, method="euler", options={"foo": 1})
    with pytest.raises(UnsupportedError, match=r"options\['safety'\]=0.8.*safety=0.9"):
        odeint(func, y0, t, options={"safety": 0.8})
    with pytest.raises(UnsupportedError, match=r"options\['norm'\]"):
        odeint(func, y0, t, options={"norm": lambda x: x.abs().max()})
    with pytest.raises(InvalidInputError, match=r"give the solver once"):
        odeint(func, y0, t, method="dopri5", solver=co.Tsit5())
    with pytest.raises(InvalidInputError, match=r"give the steps once"):
        odeint(func, y0, t, rtol=1e-5, step=co.Adaptive())
    with pytest.raises(UnsupportedError, match=r"`rtol` must be one number"):
        odeint(func, y0, t, rtol=torch.tensor([1e-6, 1e-7]))
    with pytest.raises(InvalidInputError, match=r"`atol` must be a positive"):
        odeint(func, y0, t, atol=-1.0)
    with pytest.raises(UnsupportedError, match=r"`event_fn`"):
        odeint(func, y0, t, event_fn=lambda t, y: y[0])
    with pytest.raises(InvalidInputError, match=r"`y0`.*tuple"):
        odeint(func, (y0, y0), t)
    with pytest.raises(InvalidInputError, match=r"`method` must be a method name"):
        odeint(func, y0, t, method=co.Dopri5())
    with pytest.raises(UnsupportedError, match=r"`adjoint_rtol=1e-05` differs"):
        odeint_adjoint(func, y0, t, rtol=1e-6, adjoint_rtol=1e-5)
    with pytest.raises(UnsupportedError, match=r"`adjoint_method='euler'` differs"):
        odeint_adjoint(func, y0, t, adjoint_method="euler")
    # equal adjoint settings are accepted
    odeint_adjoint(func, y0, t, rtol=1e-6, adjoint_rtol=1e-6, adjoint_method="dopri5")

"""Per-sample step sizes (``Adaptive(batch_steps="per_sample")``) in the PyTorch backend: gradients against the
independent reference, batch 1 equals shared steps, per-sample counters, refusals and failures naming the sample."""

import numpy as np
import pytest

import crossode as co
from crossode import Problem
from crossode._rhs import MLPRHS, SymbolicRHS

torch = pytest.importorskip("torch")

RTOL, ATOL = 1e-7, 1e-9


def duffing(batch=4, fast=(0,), w_fast=4.0, t1=1.0):
    """Duffing oscillators whose frequency ``w`` is a state: the ``fast`` samples run ``w_fast`` times faster."""
    rng = np.random.default_rng(0)
    y0 = np.concatenate([rng.uniform(-1, 1, size=(batch, 2)), np.ones((batch, 1))], axis=1)
    y0[list(fast), 2] = w_fast
    rhs = SymbolicRHS(["x", "v", "w"], ["a", "c"], ["w*v", "-w*(c*x + a*x**3)", "0"])
    return Problem(rhs, y0=y0, params={"a": 0.5, "c": 1.0}, tspan=(0.0, t1), saveat=[0.5 * t1, t1], name="duffing")


def step(mode="per_sample", rtol=RTOL, atol=ATOL, **kw):
    return co.Adaptive(rtol=rtol, atol=atol, batch_steps=mode, **kw)


CELLS = [(co.Dopri5(), co.Direct()), (co.Tsit5(), co.Direct()), (co.ALF(), co.Direct()), (co.ALF(), co.MALI())]
IDS = ["dopri5-direct", "tsit5-direct", "alf-direct", "alf-mali"]


def test_descriptor_validates_and_labels():
    assert co.Adaptive().batch_steps == "shared" and not co.Adaptive().per_sample
    assert step().per_sample and "per_sample" in step().label
    with pytest.raises(co.InvalidInputError, match="batch_steps"):
        co.Adaptive(batch_steps="each")


@pytest.mark.parametrize("solver,sens", CELLS, ids=IDS)
def test_gradient_matches_reference(solver, sens):
    p = duffing()
    rtol = RTOL if not isinstance(solver, co.ALF) else 1e-4  # ALF is second order: keep the step count small
    rec = co.measure(p, "torch", solver, sens, step(rtol=rtol, atol=rtol * 1e-2), repeats=1)
    assert rec.status == "ok", rec.message
    assert rec.batch_steps == "per_sample"
    assert rec.grad_error < 100 * rtol
    ps = rec.per_sample
    assert ps["batch"] == 4
    # the fast sample takes more steps than the slow ones, and the slow ones fewer than the batch's calls
    assert ps["steps_accepted_min"] < ps["steps_accepted_max"] == rec.steps_accepted
    assert ps["nfe_forward_mean"] < rec.nfe_forward == ps["nfe_forward_max"]
    assert 0 < ps["nfe_backward_mean"] <= rec.nfe_backward


def test_time_dependent_mlp_field_per_sample():
    # f(t, y) = MLP([y, t]): each row gets its own time
    p = Problem(MLPRHS([2, 8, 2], time_input=True), y0=np.random.default_rng(1).normal(size=(3, 2)),
                tspan=(0.0, 1.0), saveat=[0.5, 1.0])
    for solver, sens in ((co.Dopri5(), co.Direct()), (co.ALF(), co.MALI())):
        rtol = 1e-4 if isinstance(solver, co.ALF) else 1e-7
        rec = co.measure(p, "torch", solver, sens, step(rtol=rtol, atol=rtol * 1e-2), repeats=1)
        assert rec.status == "ok" and rec.grad_error < 100 * rtol, (solver, rec.message)


@pytest.mark.parametrize("solver,sens", CELLS, ids=IDS)
def test_batch_one_equals_shared(solver, sens):
    p = duffing(batch=1, fast=())
    rtol = 1e-5 if isinstance(solver, co.ALF) else RTOL
    outs = {m: co.gradient(p, "torch", solver, sens, step(m, rtol=rtol, atol=rtol * 1e-2))
            for m in ("shared", "per_sample")}
    a, b = outs["shared"], outs["per_sample"]
    assert b.stats.per_sample is not None and a.stats.per_sample is None
    assert (a.stats.steps_accepted, a.stats.steps_rejected) == (b.stats.steps_accepted, b.stats.steps_rejected)
    assert a.stats.nfe_forward == b.stats.nfe_forward and a.stats.nfe_backward == b.stats.nfe_backward
    assert b.stats.per_sample["nfe_forward_mean"] == b.stats.nfe_forward
    np.testing.assert_allclose(b.loss, a.loss, rtol=1e-12)
    np.testing.assert_allclose(b.dparams, a.dparams, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(b.dy0, a.dy0, rtol=1e-9, atol=1e-12)


def test_samples_match_their_own_solves():
    # per-sample steps make every sample's solution independent of the rest of the batch: sample 1 solved in the
    # batch equals sample 1 solved alone (same steps, up to round-off)
    p = duffing(batch=3, fast=(0,))
    alone = p.remake(y0=p.y0[1:2])
    for solver, sens in ((co.Dopri5(), co.Direct()), (co.ALF(), co.MALI())):
        batch = co.solve(p, "torch", solver, step(rtol=1e-4, atol=1e-6))
        one = co.solve(alone, "torch", solver, step(rtol=1e-4, atol=1e-6))
        np.testing.assert_allclose(batch.ys[:, 1], one.ys[:, 0], rtol=1e-12, atol=1e-14)
        shared = co.solve(p, "torch", solver, step("shared", rtol=1e-4, atol=1e-6))
        assert not np.allclose(shared.ys[:, 1], one.ys[:, 0], rtol=1e-12, atol=1e-14)


def test_mali_equals_direct_per_sample():
    # MALI reconstructs the same per-sample ALF discretisation Direct differentiates
    p = duffing(batch=3, fast=(2,))
    d = co.gradient(p, "torch", co.ALF(), co.Direct(), step(rtol=1e-4, atol=1e-6))
    m = co.gradient(p, "torch", co.ALF(), co.MALI(), step(rtol=1e-4, atol=1e-6))
    np.testing.assert_allclose(m.dparams, d.dparams, rtol=1e-8)
    np.testing.assert_allclose(m.dy0, d.dy0, rtol=1e-8, atol=1e-12)
    assert m.stats.nfe_forward == d.stats.nfe_forward


def test_float32_and_odeint_time_tensor():
    from crossode.torch import odeint

    seen = []

    def f(t, y):
        seen.append(tuple(t.shape))
        return -y * (1.0 + t.to(y.dtype)[:, None])

    y0 = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float32, requires_grad=True)
    ys = odeint(f, y0, [0.0, 1.0], step=step(rtol=1e-5, atol=1e-7), params=[])
    ys[-1].sum().backward()
    assert ys.dtype == torch.float32 and seen and all(s in ((2,), (1,)) for s in seen)
    exact = torch.exp(torch.tensor(-1.5))  # y' = -(1 + t) y
    torch.testing.assert_close(ys[-1].detach(), y0.detach() * exact, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(y0.grad, torch.full_like(y0, float(exact)), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("sens", [co.Backsolve(), co.Checkpointed(), co.Forward()])
def test_unsupported_sensitivities_refused(sens):
    from crossode.backends.torch import TorchBackend

    reason = TorchBackend().supports(duffing(), co.Dopri5(), sens, step())
    assert reason is not None and "per_sample" in reason
    rec = co.measure(duffing(), "torch", co.Dopri5(), sens, step(), repeats=1)
    assert rec.status == "unsupported"


def test_max_steps_names_the_sample():
    p = duffing(batch=3, fast=(1,), w_fast=50.0)
    with pytest.raises(co.SolverFailure, match="sample 1") as e:
        co.gradient(p, "torch", co.Dopri5(), co.Direct(), step(max_steps=60))
    assert e.value.status == "max_steps"


def test_diverging_sample_is_a_status():
    # y' = y^2 blows up at t = 1/y0: the sample with y0 = 2 diverges inside [0, 1], the other does not
    p = Problem(SymbolicRHS(["y"], [], ["y**2"]), y0=[[0.2], [2.0]], tspan=(0.0, 1.0))
    rec = co.measure(p, "torch", co.Dopri5(), co.Direct(), step(), repeats=1, with_reference=False)
    assert rec.status in ("step_size_too_small", "diverged", "max_steps") and "sample 1" in rec.message

"""``crossode.check`` on JAX solvers: a jnp RK4 passes with order 4, broken ones fail with the reason named; a
solver that cannot be jit-compiled runs eagerly; Diffrax wrapped to the contract passes the adaptive check."""

import pytest

pytest.importorskip("jax")
pytest.importorskip("diffrax")

import crossode as co  # noqa: E402
from crossode.check import check  # noqa: E402
from crossode.testing import check_solver  # noqa: E402

pytestmark = [pytest.mark.jax, pytest.mark.slow]  # each program is compiled: seconds per setting

KS = range(2, 21, 3)
MLP = ["mlp"]                 # two output intervals: the smallest programs to compile
DTS = [0.1, 0.05]


def test_correct_rk4_passes_with_order_4(jax_solvers):
    r = check_solver(jax_solvers.rk4, "jax", order=4, problems=MLP, dts=[0.25, 0.125, 0.0625], taylor_ks=KS)
    (p,) = r.problems
    assert abs(p.gradient.order - 4) < 0.1 and abs(p.taylor.slope - 2) < 0.05, r.table()
    assert [c.nfe_forward for c in p.cells] == [16, 32, 64]   # counted with jax.debug.callback under jit
    assert all(c.nfe_backward is None for c in p.cells) and p.notes == []


def test_broken_solvers_fail_with_reasons(jax_solvers):
    wrong = check(jax_solvers.rk4_wrong_weight, "jax", order=4, problems=MLP, dts=DTS, builtin=False, taylor_ks=KS)
    (p,) = wrong.problems
    assert p.status == "fail" and abs(p.gradient.order - 2) < 0.15 and "lower order" in p.reason
    stopped = check(jax_solvers.rk4_detached_stage, "jax", order=4, problems=MLP, dts=DTS, builtin=False,
                    taylor_ks=KS)
    (p,) = stopped.problems
    assert p.status == "fail" and p.taylor.status == "inconsistent" and "detached stage" in p.reason
    nan = check(jax_solvers.rk4_nan, "jax", order=4, problems=MLP, dts=DTS, builtin=False)
    assert "diverged at dt=0.1: odeint returned non-finite states" in nan.failures()[0]
    zero = check(jax_solvers.rk4_all_stopped, "jax", order=4, problems=MLP, dts=DTS, builtin=False)
    assert "the gradient w.r.t. the parameters is exactly zero" in zero.failures()[0]


def test_not_jittable_solver_runs_eagerly(jax_solvers):
    p = co.get_problem("exponential_decay", t1=1.0)
    r = check(jax_solvers.rk4_python_floats, "jax", order=4, problems=[p], dts=[0.2, 0.1], builtin=False,
              taylor_ks=range(2, 21, 4))
    (pc,) = r.problems
    assert pc.status == "pass" and "not jit-compilable" in pc.notes[0] and "eagerly" in pc.notes[0]


def test_diffrax_adaptive_wrapped_to_the_contract():
    import diffrax
    import jax.numpy as jnp

    def odeint(func, y0, t, *, dt=None, rtol=None, atol=None):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda s, y, args: func(s, y)), diffrax.Dopri5(), t0=t[0], t1=t[-1], dt0=None, y0=y0,
            saveat=diffrax.SaveAt(ts=t), stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            max_steps=10_000)
        return jnp.asarray(sol.ys)

    r = check(odeint, "jax", rtols=[1e-4, 1e-7], problems=["exponential_decay"], builtin=False, taylor_ks=KS)
    (p,) = r.problems
    assert p.status == "pass", r.table()
    assert p.gradient.shrinking and p.cells[0].nfe_forward > 0

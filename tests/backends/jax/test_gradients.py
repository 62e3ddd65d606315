"""Gradients of the JAX backend: closed form of a linear ODE (expm/expm_frechet), the independent reference,
Direct/Forward/Checkpointed agreement, Robertson with Kvaerno5, NFE rules vs a counting field, failures."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")
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
    Euler,
    Fixed,
    Forward,
    GaussAdjoint,
    Kvaerno5,
    SolverFailure,
    Tsit5,
)
from crossode._reference import reference  # noqa: E402
from crossode.backends.jax import DiffraxBackend  # noqa: E402
from crossode.backends.jax._backend import NFE_RULES, default_checkpoints  # noqa: E402
from crossode.problems import get_problem  # noqa: E402
from crossode._reference import relative_error  # noqa: E402

pytestmark = pytest.mark.jax

# compile on first call (tests that only need one program pay for one), no counting programs unless asked
LAZY = DiffraxBackend(aot=False, count_nfe=False)


rel = relative_error  # the project's relative L2 error (the one records use)


# ----------------------------------------------------------------------------------------- linear, closed form


@pytest.fixture(scope="module")
def linear():
    problem = get_problem("linear", n=3, t1=1.0)
    n = problem.n_states
    a = np.asarray(problem.params).reshape(n, n)
    y0 = np.asarray(problem.y0)
    T = problem.t1
    E = scipy_linalg.expm(a * T)
    yT = E @ y0
    dA = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            Eij = np.zeros((n, n))
            Eij[i, j] = T
            dA[i, j] = yT @ scipy_linalg.expm_frechet(a * T, Eij, compute_expm=False) @ y0
    return problem, 0.5 * yT @ yT, dA.ravel(), E.T @ yT


@pytest.fixture(scope="module")
def linear_direct(linear):
    prepared = DiffraxBackend().prepare(linear[0], Dopri5(), Direct(), Adaptive(rtol=1e-10, atol=1e-10))
    return prepared, prepared.gradient()


def test_direct_vs_closed_form(linear, linear_direct):
    _, loss, dA, dy0 = linear
    prepared, g = linear_direct
    assert abs(g.loss - loss) < 1e-9 * abs(loss)
    assert rel(g.dparams, dA) < 1e-8
    assert rel(g.dy0, dy0) < 1e-8
    # ahead-of-time compilation: compile time and XLA temp memory are reported
    assert prepared.compile_s > 0
    nbytes, kind = prepared.peak_memory()
    assert kind == "xla_temp" and nbytes > 0
    # NFE rule: Dopri5 = 6 per attempted step + 1 (FSAL) + 2 (automatic dt0); backward = 3 x forward evaluations
    st = g.stats
    steps = st.steps_accepted + st.steps_rejected
    assert st.nfe_forward == 6 * steps + 1 + 2
    assert st.nfe_backward == 3 * (6 * steps + 1)


def test_forward_mode_equals_direct(linear, linear_direct):
    g = LAZY.prepare(linear[0], Dopri5(), Forward(), Adaptive(rtol=1e-10, atol=1e-10)).gradient()
    d = linear_direct[1]
    assert g.stats.steps_accepted == d.stats.steps_accepted
    np.testing.assert_allclose(g.dparams, d.dparams, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(g.dy0, d.dy0, rtol=1e-11, atol=1e-13)


def test_rk4_fixed_vs_closed_form(linear):
    problem, loss, dA, dy0 = linear
    prepared = LAZY.prepare(problem, RK4(), Direct(), Fixed(dt=0.01))
    g = prepared.gradient()
    assert rel(g.dparams, dA) < 1e-7 and rel(g.dy0, dy0) < 1e-7
    assert g.stats.steps_accepted == 100 and g.stats.nfe_forward == 400 and g.stats.nfe_backward == 1200
    ys = prepared.solve().ys
    assert ys.shape == (1, problem.n_states)


# ------------------------------------------------------------------------------------ vs the reference, NFE


@pytest.fixture(scope="module")
def lv():
    problem = get_problem("lotka_volterra", t1=2.0).remake(saveat=[0.5, 1.0, 2.0])
    return problem, reference(problem)


def test_backsolve_vs_reference(lv):
    problem, ref = lv
    prepared = LAZY.prepare(problem, Dopri5(), Backsolve(), Adaptive(rtol=1e-9, atol=1e-9))
    g = prepared.gradient()
    assert rel(np.r_[g.dparams, g.dy0], ref.grad) < 1e-6
    assert g.stats.nfe_backward is None  # needs the counting program (count_nfe=True)


def test_nfe_rule_matches_counting_field(lv):
    """The closed NFE rule (Bosh3: 3 per step + 1, backward 3x) equals what a counting vector field sees."""
    problem, ref = lv
    prepared = DiffraxBackend(aot=False).prepare(problem, Bosh3(), Direct(), Fixed(dt=0.1))
    g = prepared.gradient()
    c, c0, r = NFE_RULES[Bosh3]
    assert g.stats.steps_accepted == 20
    assert g.stats.nfe_forward == c * 20 + c0 == prepared.count_evaluations("solve")
    # counted primal evaluations during value_and_grad = forward + re-evaluations; backward adds one VJP each
    total = prepared.count_evaluations("gradient")
    assert g.stats.nfe_backward == (total - g.stats.nfe_forward) + g.stats.nfe_forward
    assert rel(np.r_[g.dparams, g.dy0], ref.grad) < 1e-2

    # bounded checkpoints (2 < 20 steps): the same gradient; no closed NFE rule (counted only with count_nfe)
    gc = LAZY.prepare(problem, Bosh3(), Checkpointed(checkpoints=2), Fixed(dt=0.1)).gradient()
    np.testing.assert_allclose(gc.dparams, g.dparams, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(gc.dy0, g.dy0, rtol=1e-13, atol=1e-15)
    assert gc.stats.nfe_forward == g.stats.nfe_forward and gc.stats.nfe_backward is None


@pytest.mark.slow
def test_direct_is_diffrax_default_checkpointing_with_honest_nfe(lv):
    """Adaptive Direct = Diffrax's default ``RecursiveCheckpointAdjoint()`` (checkpoints from ``max_steps``, not
    ``max_steps`` slots). While the solve takes no more steps than checkpoints the closed NFE rule holds and
    equals what a counting field sees; with fewer checkpoints Equinox recomputes steps and the NFE is counted."""
    problem, ref = lv
    prepared = DiffraxBackend(aot=False).prepare(problem, Tsit5(), Direct(), Adaptive(rtol=1e-6, atol=1e-6))
    assert prepared.checkpoints == default_checkpoints(100_000) == 446
    g = prepared.gradient()
    steps = g.stats.steps_accepted + g.stats.steps_rejected
    fwd = 6 * steps + 1
    assert g.stats.nfe_forward == fwd + 2
    assert g.stats.nfe_backward == 3 * fwd == prepared.count_evaluations("gradient")
    assert rel(np.r_[g.dparams, g.dy0], ref.grad) < 1e-4

    few = DiffraxBackend(aot=False).prepare(problem, Tsit5(), Direct(), Adaptive(rtol=1e-6, atol=1e-6, max_steps=40))
    assert few.checkpoints == 8 < steps
    gf = few.gradient()
    assert gf.stats.steps_accepted == g.stats.steps_accepted
    np.testing.assert_allclose(gf.dparams, g.dparams, rtol=1e-13, atol=1e-15)
    assert gf.stats.nfe_backward == few.count_evaluations("gradient") > 3 * fwd  # recomputed steps


def test_prepare_compiles_only_the_gradient_program():
    """The forward-solve program is compiled on the first solve() call, not in prepare()."""
    problem = get_problem("exponential_decay")
    prepared = DiffraxBackend(count_nfe=False).prepare(problem, Euler(), Direct(), Fixed(dt=0.1))
    assert prepared.compile_s > 0 and prepared.compile_solve_s is None
    ys = prepared.solve().ys
    first = prepared.compile_solve_s
    assert first > 0 and np.all(np.isfinite(ys))
    prepared.solve()
    assert prepared.compile_solve_s == first


def test_robertson_kvaerno5_vs_reference():
    problem = get_problem("robertson", t1=1.0)
    ref = reference(problem)
    g = LAZY.prepare(problem, Kvaerno5(), Direct(), Adaptive(rtol=1e-8, atol=1e-10)).gradient()
    assert rel(np.r_[g.dparams, g.dy0], ref.grad) < 1e-4
    assert g.stats.nfe_forward is None  # implicit: only counted with count_nfe=True


# ------------------------------------------------------------------------------------------------- failures


def test_max_steps_is_a_status_not_a_number(lv):
    prepared = LAZY.prepare(lv[0], Bosh3(), Direct(), Adaptive(rtol=1e-8, atol=1e-8, max_steps=5))
    with pytest.raises(SolverFailure) as e:
        prepared.gradient()
    assert e.value.status == "max_steps"
    with pytest.raises(SolverFailure) as e:
        prepared.solve()
    assert e.value.status == "max_steps"


def test_fixed_grid_longer_than_max_steps(lv, peak_allocation):
    with pytest.raises(SolverFailure) as e:
        LAZY.prepare(lv[0], Euler(), Direct(), Fixed(dt=0.1, max_steps=3))
    assert e.value.status == "max_steps"
    # 2e6 steps of dt=1e-6 over [0, 2]: the status comes from prepare before the grid (16 MB) is allocated
    err, peak = peak_allocation(lambda: LAZY.prepare(lv[0], Euler(), Direct(), Fixed(dt=1e-6, max_steps=5)))
    assert isinstance(err, SolverFailure) and err.status == "max_steps", err
    assert peak < 4e6, f"{peak / 1e6:.1f} MB allocated before the max_steps check"
    assert "2,000,000 steps" in err.message and "max_steps=5" in err.message


def test_supports_reasons(lv):
    b, p = DiffraxBackend(), lv[0]
    assert b.supports(p, Tsit5(), Direct(), Adaptive()) is None
    assert b.supports(p, cx.ALF(), MALI(), Adaptive()) is None
    assert "Fixed" in b.supports(p, Euler(), Direct(), Adaptive())
    assert "Fixed" in b.supports(p, RK4(), Direct(), Adaptive())
    assert "Julia" in b.supports(p, Tsit5(), GaussAdjoint(), Adaptive())
    assert "vjp" in b.supports(p, Tsit5(), Backsolve(vjp="zygote"), Adaptive())
    assert "ALF" in b.supports(p, Tsit5(), MALI(), Adaptive())
    assert b.supports(p, cx.ALF(), Backsolve(), Adaptive()) is not None
    if not b.devices()[1:]:
        assert "GPU" in b.supports(p, Tsit5(), Direct(), Adaptive(), device="cuda")
    with pytest.raises(cx.UnsupportedError):
        b.prepare(p, Tsit5(), GaussAdjoint(), Adaptive())


# ------------------------------------------------------------------------------------------------ batches


@pytest.fixture(scope="module")
def batched():
    problem = get_problem("mlp_fit", batch=3, n=2, width=8, depth=1)  # time input, mse targets per trajectory
    return problem, reference(problem)


# Direct and MALI on batches: tests/test_cross_backend.py::test_batched_same_grid_and_gradient (torch == JAX, and
# both against the reference); Backsolve's backward solve differs between the backends, so it is checked here.
@pytest.mark.parametrize("solver, sens, step, tol", [
    (Dopri5(), Backsolve(), Adaptive(rtol=1e-9, atol=1e-11), 1e-7),
], ids=["dopri5-backsolve"])
def test_batched_gradients_vs_reference(batched, solver, sens, step, tol):
    problem, ref = batched
    prepared = LAZY.prepare(problem, solver, sens, step)
    g = prepared.gradient()
    assert g.dy0.shape == problem.y0.shape and g.dparams.shape == (problem.n_params,)
    assert rel(np.concatenate([g.dparams, g.dy0.ravel()]), ref.grad) < tol
    assert g.loss == pytest.approx(ref.loss, rel=tol)


@pytest.mark.slow
def test_cnf_backsolve_vs_reference():
    """A batched CNF (exact trace: reverse over JAX forward mode in the adjoint's VJPs) through Backsolve; Direct and
    MALI: tests/test_cross_backend.py (torch == JAX, both against the reference)."""
    problem = get_problem("cnf_moons", batch=8, widths=[2, 16, 16, 2], scale=2.0)
    g = LAZY.prepare(problem, Dopri5(), Backsolve(), Adaptive(rtol=1e-7, atol=1e-9)).gradient()
    ref = reference(problem)
    assert rel(np.concatenate([g.dparams, g.dy0.ravel()]), ref.grad) < 1e-7  # measured 9.0e-9
    assert g.loss == pytest.approx(ref.loss, rel=1e-7)  # measured 6.6e-9


def test_batched_forward_mode_and_solve_shapes():
    problem = get_problem("spiral_fit", batch=2, n_save=3, width=4)  # cube features
    prepared = LAZY.prepare(problem, Dopri5(), Forward(), Adaptive(rtol=1e-10, atol=1e-12))
    g = prepared.gradient()
    ref = reference(problem)
    assert rel(np.concatenate([g.dparams, g.dy0.ravel()]), ref.grad) < 1e-8
    ys = prepared.solve().ys
    assert ys.shape == problem.ys_shape and rel(ys, ref.ys) < 1e-8


def test_per_sample_steps_refused_with_reason():
    from crossode._registry import get_backend

    p = cx.Problem(cx.SymbolicRHS(["x"], ["k"], ["-k*x"]), y0=[[1.0], [2.0]], params={"k": 1.0}, tspan=(0.0, 1.0))
    backend = get_backend("jax")
    reason = backend.supports(p, cx.Dopri5(), cx.Direct(), Adaptive(batch_steps="per_sample"))
    assert reason is not None and "batch_steps='per_sample'" in reason
    assert backend.supports(p, cx.Dopri5(), cx.Direct(), Adaptive()) is None
    rec = cx.measure(p, "jax", cx.Dopri5(), cx.Direct(), Adaptive(batch_steps="per_sample"), repeats=1)
    assert rec.status == "unsupported"

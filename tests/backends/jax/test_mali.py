"""JAX MALI: exact reversal of ALF (fixed step == autodiff through the same ALF steps), adaptive accuracy tracks
rtol, failure statuses on a decaying system (undamped ALF is unstable there) and on reconstruction drift."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("diffrax")

from crossode import ALF, MALI, Adaptive, Direct, Fixed, Forward, SolverFailure  # noqa: E402
from crossode._reference import reference  # noqa: E402
from crossode.backends.jax import DiffraxBackend  # noqa: E402
from crossode.problems import get_problem  # noqa: E402
from crossode._reference import relative_error  # noqa: E402

pytestmark = pytest.mark.jax

B = DiffraxBackend(aot=False, count_nfe=False)


rel = relative_error  # the project's relative L2 error (the one records use)


@pytest.fixture(scope="module")
def vdp():
    problem = get_problem("van_der_pol", t1=3.0).remake(saveat=[0.7, 1.5, 3.0])
    return problem, reference(problem)


@pytest.mark.parametrize("step", [Fixed(dt=0.01), Adaptive(rtol=1e-6, atol=1e-6)], ids=["fixed", "adaptive"])
def test_mali_equals_autodiff_through_alf(vdp, step):
    """Same ALF steps, same v0 = f(t0, y0): MALI's reconstructed-reverse gradient == reverse-mode autodiff."""
    problem, _ = vdp
    m = B.prepare(problem, ALF(), MALI(), step).gradient()
    d = B.prepare(problem, ALF(), Direct(), step).gradient()
    assert m.stats.steps_accepted == d.stats.steps_accepted and m.stats.steps_rejected == d.stats.steps_rejected
    assert abs(m.loss - d.loss) <= 1e-14 * abs(d.loss)
    assert rel(m.dparams, d.dparams) < 1e-12
    assert rel(m.dy0, d.dy0) < 1e-12
    # NFE: forward = attempts + 1 (v0) [+ 1 automatic dt0]; MALI backward 2 per accepted step + 1, Direct 2 + 1
    attempts = m.stats.steps_accepted + m.stats.steps_rejected
    auto_dt0 = 1 if isinstance(step, Adaptive) else 0
    assert m.stats.nfe_forward == attempts + 1 + auto_dt0
    assert m.stats.nfe_backward == 2 * m.stats.steps_accepted + 1
    assert d.stats.nfe_backward == 2 * attempts + 1


def test_fixed_mali_nfe_matches_counting_field(vdp):
    prepared = DiffraxBackend(aot=False).prepare(vdp[0], ALF(), MALI(), Fixed(dt=0.1))
    g = prepared.gradient()
    assert g.stats.steps_accepted == 30
    assert prepared.count_evaluations("solve") == g.stats.nfe_forward == 31
    # counted primal evaluations = forward 31 + 1 per step in the reverse sweep (one evaluation serves the
    # inverse step and the VJP); + 31 VJPs (30 steps + v0) = nfe_backward
    assert prepared.count_evaluations("gradient") == 31 + 30
    assert g.stats.nfe_backward == 30 + 31


def test_forward_mode_through_alf(vdp):
    problem, _ = vdp
    g = B.prepare(problem, ALF(), Forward(), Fixed(dt=0.01)).gradient()
    m = B.prepare(problem, ALF(), MALI(), Fixed(dt=0.01)).gradient()
    assert rel(g.dparams, m.dparams) < 1e-12 and rel(g.dy0, m.dy0) < 1e-12


def test_adaptive_mali_error_tracks_rtol(vdp):
    problem, ref = vdp
    errs = []
    for rtol in (1e-4, 1e-6):
        g = B.prepare(problem, ALF(), MALI(), Adaptive(rtol=rtol, atol=rtol)).gradient()
        errs.append(rel(np.r_[g.dparams, g.dy0], ref.grad))
    assert errs[0] < 50 * 1e-4 and errs[1] < 50 * 1e-6
    assert errs[1] < errs[0] / 20  # two decades of rtol buy well over one decade of error


def test_decay2_fails_with_a_status():
    """Undamped ALF on eigenvalues -1, -3 over T = 5 at rtol 1e-3: a failure status, never a number."""
    problem = get_problem("decay2", t1=5.0)
    prepared = B.prepare(problem, ALF(), MALI(), Adaptive(rtol=1e-3, atol=1e-3))
    with pytest.raises(SolverFailure) as e:
        prepared.gradient()
    assert e.value.status in ("step_size_too_small", "max_steps", "reconstruction_error")


def test_damped_alf_reconstruction_drift_is_reported():
    """eta < 1 makes the inverse step amplify round-off by 1/|1 - 2 eta| per step: MALI must say so."""
    problem = get_problem("decay2", t1=5.0)
    prepared = B.prepare(problem, ALF(eta=0.75), MALI(reconstruction_rtol=1e-6), Fixed(dt=0.01))
    with pytest.raises(SolverFailure) as e:
        prepared.gradient()
    assert e.value.status in ("reconstruction_error", "diverged")


def _scalar_growth():
    """SciMLSensitivity's scalar test problem (test/Core2/scalar_u.jl): u' = p u, p = 2, over [0, 10], saved only at
    100 times in [0, 0.1], so u grows by e^20 = 5e8 after the last save. ALF's reverse amplifies round-off by about
    that factor relative to u0."""
    from crossode._problem import Problem
    from crossode._rhs import SymbolicRHS

    return Problem(SymbolicRHS(["u"], ["p"], ["p*u"]), y0=[0.5], params={"p": 2.0}, tspan=(0.0, 10.0),
                   saveat=np.linspace(0.0, 0.1, 100), name="scalar_u")


def _drift_of(failure) -> float:
    import re

    return float(re.search(r"drifted by (\S+) ", failure.message).group(1))


@pytest.mark.torch
def test_torch_and_jax_share_one_reconstruction_rule():
    """Before: JAX scaled the drift by |(z0, v0)| (drift 7.0: reconstruction_error), torch by the larger of the start
    and end states (1.6e-8: ok, with dparams 5e-4 off the exact ALF gradient). Now both apply
    crossode._sensitivity.mali_reconstruction: the same verdict, drifts of the same size (each is that backend's
    round-off, amplified 5e8 times by the reverse sweep, so they agree in magnitude, not in digits)."""
    pytest.importorskip("torch")
    import crossode as co

    problem, step = _scalar_growth(), Fixed(dt=0.01)
    failures = {}
    for name, backend in (("torch", "torch"), ("jax", B)):
        with pytest.raises(SolverFailure) as e:
            co.gradient(problem, backend, ALF(), MALI(), step)
        assert e.value.status == "reconstruction_error" and "relative to the start state" in e.value.message
        failures[name] = _drift_of(e.value)
    assert 1e-3 < failures["torch"] / failures["jax"] < 1e3 and min(failures.values()) > 1e-3
    # what the verdict prevents: with the check relaxed, both return dparams far from the exact ALF gradient
    for backend in ("torch", B):
        m = co.gradient(problem, backend, ALF(), MALI(reconstruction_rtol=1e3), step)
        d = co.gradient(problem, backend, ALF(), Direct(), step)
        assert rel(m.dparams, d.dparams) > 1e-5


@pytest.mark.torch
def test_accepted_steps_may_shrink_the_next_one_same_steps_as_torch():
    """The ALF controller change (an accepted step may shrink the next, as in TorchDiffEqPack) in both backends:
    cubic spiral over [0, 5], rtol 1e-4: 32448 accepted steps with the never-shrink rule, ~1300 now, step for step
    the same in JAX and PyTorch, and the gradient agrees with the reference."""
    pytest.importorskip("torch")
    import crossode as co

    problem = get_problem("cubic_spiral", t1=5.0, n_save=2)
    step = Adaptive(rtol=1e-4, atol=1e-6)
    gj = B.prepare(problem, ALF(), MALI(), step).gradient()
    gt = co.gradient(problem, "torch", ALF(), MALI(), step)
    assert gj.stats.steps_accepted < 2000
    assert (gj.stats.steps_accepted, gj.stats.steps_rejected) == (gt.stats.steps_accepted, gt.stats.steps_rejected)
    ref = reference(problem)
    assert rel(np.r_[gj.dparams, gj.dy0], ref.grad) < 1e-2
    assert rel(np.r_[gj.dparams, gj.dy0], np.r_[gt.dparams, gt.dy0]) < 1e-9

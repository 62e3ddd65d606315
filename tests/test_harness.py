"""The harness turns what happens while running into a status; useless gradients never pass as `ok`."""

import numpy as np
import pytest

import crossode
from crossode import Direct, Dopri5, GradientOutput, Stats
from crossode._backend import Prepared
from crossode._harness import peak_rss_delta
from crossode.backends.reference import ReferenceBackend


class _Scaled(Prepared):
    """The reference's gradient times a factor: a stand-in for a solver whose gradient is wrong (harness test only)."""

    def __init__(self, inner, factor):
        self.inner, self.factor = inner, factor

    def solve(self):
        return self.inner.solve()

    def gradient(self):
        g = self.inner.gradient()
        return GradientOutput(g.loss, g.dparams * self.factor, g.dy0 * self.factor, Stats())


class _ScaledBackend(ReferenceBackend):
    name = "scaled-reference"

    def __init__(self, factor):
        self.factor = factor

    def prepare(self, *args, **kwargs):
        return _Scaled(super().prepare(*args, **kwargs), self.factor)


@pytest.mark.parametrize("factor, status", [(1.5, "ok"), (10.0, "inaccurate"), (1e305, "diverged"),
                                            (np.nan, "diverged")])
def test_gradient_quality_statuses(factor, status):
    p = crossode.get_problem("exponential_decay")
    rec = crossode.measure(p, _ScaledBackend(factor), Dopri5(), Direct(), repeats=1)
    assert rec.status == status, rec.message
    if status == "inaccurate":
        assert rec.grad_error == pytest.approx(9.0) and "exceeds" in rec.message


def test_gradient_raises_on_nonfinite():
    p = crossode.get_problem("exponential_decay")
    with pytest.raises(crossode.SolverFailure) as e:
        crossode.gradient(p, _ScaledBackend(np.inf))
    assert e.value.status == "diverged"


def test_peak_rss_delta_sees_an_allocation():
    _, small = peak_rss_delta(lambda: None)
    _, big = peak_rss_delta(lambda: np.ones(50_000_000).sum())  # 400 MB
    if big is None:
        pytest.skip("procfs clear_refs unavailable")
    assert big > 300e6 and small < 50e6


class _SlowFirstSolve(Prepared):
    """The reference, with a first `solve` that is slow (as a JAX solve program compiled on first use)."""

    def __init__(self, inner):
        self.inner, self.solves = inner, 0

    def solve(self):
        import time

        self.solves += 1
        if self.solves == 1:
            time.sleep(0.5)
        return self.inner.solve()

    def gradient(self):
        return self.inner.gradient()


class _SlowFirstSolveBackend(ReferenceBackend):
    name = "slow-first-solve"

    def prepare(self, *args, **kwargs):
        self.prepared = _SlowFirstSolve(super().prepare(*args, **kwargs))
        return self.prepared


def test_first_solve_is_an_untimed_warm_up():
    backend = _SlowFirstSolveBackend()
    rec = crossode.measure(crossode.get_problem("exponential_decay"), backend, Dopri5(), Direct(), repeats=1,
                           with_reference=False)
    assert rec.status == "ok", rec.message
    assert backend.prepared.solves == 2 and rec.time_forward_s < 0.25

"""Solver, step-control and sensitivity descriptors: validation and pair checks."""

import numpy as np
import pytest

from crossode import (
    ALF, MALI, Adaptive, Backsolve, Checkpointed, Direct, Fixed, InvalidInputError, Tsit5, UnsupportedError,
    check_pair, fixed_grid, sensitivity_from_name, solver_from_name,
)
from crossode._sensitivity import SENSITIVITIES
from crossode._solvers import SOLVERS


def test_names_roundtrip():
    for name in SOLVERS:
        assert solver_from_name(name).name == name
    for name in SENSITIVITIES:
        assert sensitivity_from_name(name).name == name


def test_unknown_names_and_options():
    with pytest.raises(InvalidInputError, match="expected one of"):
        solver_from_name("rk45")
    with pytest.raises(InvalidInputError, match="allowed options: eta"):
        solver_from_name("alf", damping=0.9)
    with pytest.raises(InvalidInputError, match="expected one of"):
        sensitivity_from_name("adjoint")


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.5, float("nan"), "1"])
def test_alf_eta(eta):
    with pytest.raises(InvalidInputError, match="eta"):
        ALF(eta=eta)


def test_mali_requires_alf():
    check_pair(ALF(), MALI())
    with pytest.raises(UnsupportedError, match="requires a reversible solver"):
        check_pair(Tsit5(), MALI())


@pytest.mark.parametrize("kw", [dict(rtol=0), dict(atol=-1), dict(dt0=float("inf")), dict(max_steps=0),
                                dict(max_steps=1.5)])
def test_adaptive_validation(kw):
    with pytest.raises(InvalidInputError):
        Adaptive(**kw)


def test_options_validation():
    with pytest.raises(InvalidInputError, match="vjp"):
        Backsolve(vjp="tracker")
    with pytest.raises(InvalidInputError, match="checkpoints"):
        Checkpointed(checkpoints=0)
    with pytest.raises(InvalidInputError, match="dt"):
        Fixed(dt=0)
    assert repr(Direct()) == "Direct()" and repr(ALF()) == "ALF(eta=1.0)"


def test_fixed_grid():
    g = fixed_grid(0.0, 1.0, 0.3, saveat=[0.5, 1.0])
    assert g.tolist() == pytest.approx([0.0, 0.3, 0.5, 0.6, 0.9, 1.0]) and g[-1] == 1.0
    g = fixed_grid(0.0, 1.0, 0.1)
    assert len(g) == 11 and g[-1] == 1.0
    g = fixed_grid(2.0, 0.0, 0.5, saveat=[1.25])
    assert g.tolist() == pytest.approx([2.0, 1.5, 1.25, 1.0, 0.5, 0.0])
    assert np.all(np.diff(fixed_grid(0.0, 2.0, 0.05)) > 0)


# ------------------------------------------------------------------------ MALI's reconstruction test (shared rule)


def test_mali_reconstruction_rule():
    from crossode._sensitivity import mali_reconstruction

    eps64, eps32 = float(np.finfo(np.float64).eps), float(np.finfo(np.float32).eps)
    ad = Adaptive(rtol=1e-3, atol=1e-5)
    # limit: max(min(sqrt(eps), rtol), 10 n eps); sqrt(eps) alone for fixed steps; or the user's value
    assert mali_reconstruction([0] * 6, 8, eps32, ad)[1] == pytest.approx(np.sqrt(eps32))
    assert mali_reconstruction([0] * 6, 8, eps64, Adaptive(rtol=1e-10))[1] == 1e-10
    assert mali_reconstruction([0] * 6, 10**6, eps32, ad)[1] == pytest.approx(10 * 10**6 * eps32)
    assert mali_reconstruction([0] * 6, 8, eps64, Fixed(0.1))[1] == pytest.approx(np.sqrt(eps64))
    assert mali_reconstruction([0] * 6, 8, eps64, ad, reconstruction_rtol=1e-3)[1] == 1e-3
    # the drift is relative to the START state: an error tiny against a grown end state still counts
    drift, limit, _ = mali_reconstruction([1e-8, 1.0, 1e16, 0.0, 4.0, 4e16], 100, eps64, Fixed(0.1))
    assert drift == pytest.approx(1e-4) and not drift <= limit
    # v counts as well as z; both use their own start scale
    assert mali_reconstruction([0.0, 1.0, 1.0, 1e-6, 4.0, 4.0], 100, eps64, Fixed(0.1))[0] == pytest.approx(5e-4)
    # adaptive: below atol/rtol the error is absolute (a zero start state is measurable)
    drift, limit, _ = mali_reconstruction([1e-20, 0.0, 1.0, 0.0, 0.0, 1.0], 10, eps64, ad)
    assert drift == pytest.approx(1e-10 / (1e-5 / 1e-3)) and drift <= limit
    # fixed steps with a zero start: the end state is the scale; a non-finite mean square always fails
    assert mali_reconstruction([1e-20, 0.0, 1e-2, 0.0, 0.0, 1.0], 10, eps64, Fixed(0.1))[0] == pytest.approx(1e-9)
    assert mali_reconstruction([float("nan"), 1.0, 1.0, 0.0, 1.0, 1.0], 10, eps64, ad)[0] == float("inf")


def test_mali_reconstruction_rtol_validation_and_message():
    from crossode._sensitivity import mali_reconstruction, mali_reconstruction_failure

    assert MALI().reconstruction_rtol is None and MALI(reconstruction_rtol=1e-4).reconstruction_rtol == 1e-4
    for bad in (0, -1.0, "1e-3", True):
        with pytest.raises(InvalidInputError, match="reconstruction_rtol"):
            MALI(reconstruction_rtol=bad)
    e = mali_reconstruction_failure(*mali_reconstruction([1.0, 1.0, 1.0, 0, 1, 1], 5, 2.2e-16, Fixed(0.1)), 5, 1.0)
    assert e.status == "reconstruction_error" and "MALI(reconstruction_rtol=...)" in e.message
    assert "\n" not in e.message

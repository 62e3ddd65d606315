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

"""The neutral step-size formulas of crossode/_stepping.py (Hairer's initial step is tested against each backend in
tests/test_cross_backend.py; here: the minimum step rule and that it has one definition)."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import crossode
from crossode._stepping import min_step_size

PACKAGE = pathlib.Path(crossode.__file__).parent


def test_min_step_size_is_ten_spacings_at_the_largest_time():
    assert min_step_size(0.0, 10.0) == 10 * np.spacing(10.0)
    assert min_step_size(-100.0, 1.0) == min_step_size(1.0, -100.0) == 10 * np.spacing(100.0)
    assert min_step_size(0.0, 10.0, "float32") == 10 * float(np.spacing(np.float32(10.0)))
    assert min_step_size(0.0, 10.0, "float32") > 1e8 * min_step_size(0.0, 10.0)


def test_min_step_size_has_one_definition():
    """The rule lives in _stepping.py only: no backend computes its own spacing-based minimum step."""
    hits = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
            if re.search(r"\bspacing\(", re.sub(r"``[^`]*``", "", p.read_text()))]
    assert hits == ["_stepping.py"]
    users = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if re.search(r"\bmin_step_size\(", p.read_text())]
    for backend in ("torch/_rk.py", "jax/_control.py", "julia/_marshal.py"):
        assert f"backends/{backend}" in users


def test_jax_landing_controller_uses_the_shared_minimum_step():
    pytest.importorskip("diffrax")
    from crossode.backends.jax._control import make_landing_controller

    ctrl = make_landing_controller(1e-6, 1e-8, 0.0, 50.0, np.array([1.0, 50.0]), 5)
    assert ctrl.h_min == min_step_size(0.0, 50.0)

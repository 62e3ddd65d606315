"""The Taylor test (crossode._taylor): slope 2 for a consistent gradient, 1 for a wrong one, round-off handled."""

import numpy as np
import pytest

from crossode import InvalidInputError
from crossode._taylor import MIN_SLOPE, taylor_direction, taylor_test

A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])
THETA = np.array([0.3, -1.2, 0.7])


def J(theta):
    """A smooth non-quadratic loss: 1/2 x^T A x + sum sin(x)."""
    return float(0.5 * theta @ A @ theta + np.sin(theta).sum())


def grad(theta):
    return A @ theta + np.cos(theta)


def test_exact_gradient_has_slope_two():
    r = taylor_test(J, THETA, grad(THETA))
    assert r.status == "consistent" and r.consistent
    assert abs(r.slope - 2.0) < 0.05 and abs(r.slope_e0 - 1.0) < 0.05
    assert len(r.used) == 6 and r.inconsistency < 1e-4
    # the fit stops before round-off: every used point is well above its floor
    assert all(r.e1[i] > r.floor[i] for i in r.used)


def test_wrong_gradient_has_slope_one_and_its_size_is_reported():
    v = taylor_direction(3, seed=1)
    delta = 1e-3 * np.array([1.0, -2.0, 0.5])
    r = taylor_test(J, THETA, grad(THETA) + delta, v=v)
    assert r.status == "inconsistent" and not r.consistent
    assert abs(r.slope - 1.0) < 0.1 and r.slope < MIN_SLOPE
    # E1/h -> |v.delta| as h -> 0: the reported bound is that, relative to ||g||
    expected = abs(v @ delta) / np.linalg.norm(grad(THETA) + delta)
    assert expected <= r.inconsistency < 1.5 * expected
    assert "slope" in r.message and "||g||" in r.message


def test_linear_loss_is_unresolved():
    r = taylor_test(lambda th: float(np.array([1.0, 2.0, 3.0]) @ th), THETA, np.array([1.0, 2.0, 3.0]))
    assert r.status == "unresolved" and r.slope is None


def test_failing_large_steps_are_skipped():
    def fragile(theta):
        if np.linalg.norm(theta - THETA) > 0.1:
            raise FloatingPointError("blew up")
        return J(theta)

    r = taylor_test(fragile, THETA, grad(THETA))
    assert np.isnan(r.e1[:3]).all() and r.status == "consistent"


def test_roundoff_floor_excludes_noise():
    rng = np.random.default_rng(0)
    noisy = lambda th: J(th) + 1e-9 * rng.standard_normal()  # noqa: E731  - evaluation noise of 1e-9
    r = taylor_test(noisy, THETA, grad(THETA), roundoff=1e9)  # floor ~ 1e9 ulps ~ 2e-7 |J|
    assert r.status == "consistent" and all(r.e1[i] > r.floor[i] for i in r.used)
    naive = taylor_test(noisy, THETA, grad(THETA), roundoff=1.0)  # floor below the noise: fit on noise
    assert naive.slope < r.slope


def test_direction_and_inputs():
    v = taylor_direction(5, seed=3)
    assert np.isclose(np.linalg.norm(v), 1.0) and np.allclose(v, taylor_direction(5, seed=3))
    with pytest.raises(InvalidInputError, match="theta"):
        taylor_test(J, THETA, np.zeros(2))
    with pytest.raises(InvalidInputError, match="ks"):
        taylor_test(J, THETA, grad(THETA), ks=[1, 2])
    with pytest.raises(InvalidInputError, match="`v`"):
        taylor_test(J, THETA, grad(THETA), v=np.zeros(3))
    with pytest.raises(InvalidInputError, match="not finite"):
        taylor_test(lambda th: float("nan"), THETA, grad(THETA))
    d = taylor_test(J, THETA, grad(THETA)).to_dict()
    assert d["status"] == "consistent" and len(d["h"]) == 20

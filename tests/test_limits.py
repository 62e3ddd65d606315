"""crossode._limits: bounded reads, estimators and the time limit that keep bad input from hanging the process."""

import time

import pytest

from crossode import InvalidInputError
from crossode._limits import check_mlp_size, grid_steps, power_digits, snip, time_limit


def test_time_limit_stops_python_code():
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match="parsing x took longer than 0.2 s"):
        with time_limit(0.2, "parsing x"):
            while True:
                pass
    assert time.perf_counter() - start < 2.0
    with time_limit(1.0, "quick"):  # no alarm left behind
        pass
    time.sleep(1.2)


def test_estimators():
    assert power_digits(10, 1, 300) == pytest.approx(300)
    assert power_digits(1, 1, 10**12) == 1.0 and power_digits(-1, 1, 10**12) == 1.0
    assert grid_steps(0.0, 1.0, 0.1) == 10 and grid_steps(5.0, 0.0, 0.5) == 10
    check_mlp_size([2, 32, 32, 2])
    with pytest.raises(InvalidInputError, match="10,000,000"):
        check_mlp_size([2, 10_000, 2000, 2])
    assert len(snip("x" * 10_000)) < 100

"""Observed convergence orders: pairwise and least squares, the reference's resolution, shrinking."""

import math

from crossode.check import convergence_order


def test_exact_power_law():
    dts = [0.1, 0.05, 0.025, 0.0125]
    r = convergence_order(dts, [3.0 * d**4 for d in dts])
    assert math.isclose(r.order, 4.0, rel_tol=1e-12) and all(math.isclose(p, 4.0) for p in r.pairwise)
    assert r.shrinking and r.used == [0, 1, 2, 3]


def test_floor_and_failed_cells_are_left_out():
    dts = [0.1, 0.05, 0.025, 0.0125]
    errs = [1e-6, 6.25e-8, None, 1e-13]   # the third cell failed, the fourth is at the reference's resolution
    r = convergence_order(dts, errs, floor=1e-10)
    assert r.used == [0, 1] and math.isclose(r.order, 4.0) and len(r.pairwise) == 1


def test_unmeasurable_and_not_shrinking():
    r = convergence_order([0.1, 0.05], [1e-12, 1e-13], floor=1e-10)
    assert r.order is None and "resolution" in r.message and "0.1" in r.message
    r = convergence_order([0.1, 0.05, 0.025], [1e-3, 2e-3, 1e-3])
    assert not r.shrinking and r.order is not None
    r = convergence_order([0.5, 0.5], [1e-3, 2e-3])   # equal steps (e.g. equal NFE): no order
    assert r.order is None and math.isnan(r.pairwise[0])

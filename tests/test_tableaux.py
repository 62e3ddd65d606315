"""Butcher tableaux: structure and order conditions (all rooted trees up to the nominal order)."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest

from crossode import RK4, Bosh3, Dopri5, Dopri8, Euler, Heun, Midpoint, Tsit5
from crossode._tableaux import TABLEAUX, tableau_for

ALL = [Euler, Midpoint, Heun, RK4, Bosh3, Dopri5, Tsit5, Dopri8]


@functools.cache
def rooted_trees(n: int) -> tuple:
    """All rooted trees with ``n`` nodes, each a sorted tuple of child trees (canonical form)."""
    if n == 1:
        return ((),)
    out = set()

    def forests(total: int, max_tree) -> list:
        # multisets of trees with `total` nodes, children in non-increasing canonical order
        if total == 0:
            return [()]
        res = []
        for k in range(1, total + 1):
            for tr in rooted_trees(k):
                key = (k, tr)
                if max_tree is not None and key > max_tree:
                    continue
                for rest in forests(total - k, key):
                    res.append((tr,) + rest)
        return res

    for forest in forests(n - 1, None):
        out.add(tuple(sorted(forest, key=lambda tr: (_size(tr), tr))))
    return tuple(sorted(out))


def _size(tree) -> int:
    return 1 + sum(_size(ch) for ch in tree)


def _gamma(tree) -> int:
    return _size(tree) * math.prod(_gamma(ch) for ch in tree)


def _weights(tree, a: np.ndarray) -> np.ndarray:
    """Stage vector g(tree): elementwise product over children of A @ g(child); g(leaf) = 1."""
    g = np.ones(a.shape[0])
    for ch in tree:
        g = g * (a @ _weights(ch, a))
    return g


def _dense_a(tab) -> np.ndarray:
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return a


def test_tree_counts():
    # OEIS A000081: 1, 1, 2, 4, 9, 20, 48, 115
    assert [len(rooted_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


def test_every_rk_descriptor_has_a_tableau():
    assert set(TABLEAUX) == set(ALL)
    assert tableau_for(Dopri5()) is TABLEAUX[Dopri5]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_structure(cls):
    tab = TABLEAUX[cls]
    assert tab.order == cls.order
    assert tab.adaptive == cls.adaptive
    assert tab.c[0] == 0.0
    a = _dense_a(tab)
    np.testing.assert_allclose(a.sum(axis=1), tab.c, rtol=0, atol=1e-14)  # row-sum condition
    if tab.fsal:
        np.testing.assert_array_equal(a[-1, :-1], tab.b[:-1])


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_order_conditions(cls):
    """b . g(tree) = 1/gamma(tree) for every rooted tree with at most `order` nodes (200 trees for order 8)."""
    tab = TABLEAUX[cls]
    a, b = _dense_a(tab), np.asarray(tab.b)
    for n in range(1, tab.order + 1):
        for tree in rooted_trees(n):
            assert b @ _weights(tree, a) == pytest.approx(1 / _gamma(tree), rel=0, abs=1e-12), (n, tree)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_order_is_sharp(cls):
    """At least one order-(p+1) condition fails: the nominal order is the actual order."""
    tab = TABLEAUX[cls]
    a, b = _dense_a(tab), np.asarray(tab.b)
    residuals = [abs(b @ _weights(t, a) - 1 / _gamma(t)) for t in rooted_trees(tab.order + 1)]
    assert max(residuals) > 1e-8


@pytest.mark.parametrize("cls", [c for c in ALL if c.adaptive], ids=lambda c: c.__name__)
def test_embedded_method(cls):
    """The embedded weights b_hat = b - b_err have order error_order - 1 and consistent error weights."""
    tab = TABLEAUX[cls]
    a, bh = _dense_a(tab), np.asarray(tab.b_hat)
    q = tab.error_order - 1
    assert sum(tab.b_err) == pytest.approx(0.0, abs=1e-14)
    for n in range(1, q + 1):
        for tree in rooted_trees(n):
            assert bh @ _weights(tree, a) == pytest.approx(1 / _gamma(tree), rel=0, abs=1e-12), (n, tree)


def test_kutta_38_rule_is_a_fourth_order_tableau():
    """torchdiffeq's ``rk4`` (used for ``crossode.torch.odeint(method="rk4")``): order 4 exactly, row sums = c."""
    from crossode._tableaux import RK4_38_TABLEAU as tab

    a, b = _dense_a(tab), np.asarray(tab.b)
    np.testing.assert_allclose(a.sum(axis=1), tab.c, rtol=0, atol=1e-15)
    for n in range(1, 5):
        for tree in rooted_trees(n):
            assert b @ _weights(tree, a) == pytest.approx(1 / _gamma(tree), rel=0, abs=1e-14), (n, tree)
    assert max(abs(b @ _weights(t, a) - 1 / _gamma(t)) for t in rooted_trees(5)) > 1e-8


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_solution_stages(cls):
    """Stages the new solution depends on: all but an FSAL tableau's last one (Dopri8's 13 all feed it)."""
    tab = TABLEAUX[cls]
    assert tab.solution_stages == tab.stages - (1 if tab.fsal else 0)

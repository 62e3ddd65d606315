"""Vector fields: exact NumPy Jacobians and VJPs of symbolic and MLP fields (every MLP variant) against central
finite differences, batched evaluation equal to row-by-row evaluation, the flat layout, validation, fingerprints."""

import time

import numpy as np
import pytest

from crossode import MLPRHS, InvalidInputError, SymbolicRHS
from crossode._limits import MAX_PARAMS
from crossode._rhs import ACTIVATIONS

H = 1e-6


def fd_jacobians(rhs, t, y, p):
    """Central differences of f (one state y) w.r.t. y and p."""
    n, m = len(y), len(p)
    jy = np.stack([(rhs.f(t, y + H * e, p) - rhs.f(t, y - H * e, p)) / (2 * H) for e in np.eye(n)], axis=-1)
    jp = np.stack([(rhs.f(t, y, p + H * e) - rhs.f(t, y, p - H * e)) / (2 * H) for e in np.eye(m)], axis=-1)
    return jy, jp.reshape(n, m)


MLPS = {
    "plain": dict(widths=[3, 5, 3]),
    "time_input": dict(widths=[3, 6, 4, 3], time_input=True),
    "cube": dict(widths=[2, 7, 2], features="cube"),
    "time_cube_softplus": dict(widths=[3, 4, 4, 4, 3], time_input=True, features="cube", activation="softplus"),
    "no_hidden": dict(widths=[2, 2], time_input=True),
    **{f"act_{a}": dict(widths=[3, 5, 3], activation=a) for a in ACTIVATIONS},
}


@pytest.mark.parametrize("name", list(MLPS))
def test_mlp_jacobians_and_vjp_vs_finite_differences(name):
    rhs = MLPRHS(**MLPS[name], seed=4)
    p = rhs.initial_params()
    rng = np.random.default_rng(0)
    n, t = rhs.n_states, 0.7
    ys = rng.standard_normal((4, n))  # a batch of 4 states
    jy, jp = rhs.jac_y(t, ys, p), rhs.jac_p(t, ys, p)
    assert jy.shape == (4, n, n) and jp.shape == (4, n, rhs.n_params)
    for b in range(4):
        fy, fp = fd_jacobians(rhs, t, ys[b], p)
        np.testing.assert_allclose(jy[b], fy, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(jp[b], fp, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(rhs.jac_y(t, ys[b], p), jy[b], rtol=1e-14, atol=1e-15)  # single == batched row
    a = rng.standard_normal((4, n))
    vy, vp = rhs.vjp(t, ys, p, a)
    np.testing.assert_allclose(vy, np.einsum("bi,bij->bj", a, jy), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(vp, np.einsum("bi,bik->k", a, jp), rtol=1e-12, atol=1e-13)
    v1y, v1p = rhs.vjp(t, ys[1], p, a[1])  # one state
    assert v1y.shape == (n,) and v1p.shape == (rhs.n_params,)
    np.testing.assert_allclose(v1y, a[1] @ jy[1], rtol=1e-12, atol=1e-14)


def test_mlp_batched_f_equals_rows_and_time_column_is_last():
    rhs = MLPRHS([3, 4, 3], time_input=True, features="cube", seed=1)
    p = rhs.initial_params()
    ys = np.random.default_rng(1).standard_normal((5, 3))
    out = rhs.f(0.4, ys, p)
    assert out.shape == (5, 3)
    for b in range(5):
        np.testing.assert_allclose(out[b], rhs.f(0.4, ys[b], p), rtol=1e-15, atol=1e-15)
    # f = W2 tanh(W1 [y^3, t] + b1) + b2, W1 of shape (4, 4) with the time weights in its last column
    (w1, b1), (w2, b2) = rhs.unflatten(p)
    assert w1.shape == (4, 4) and rhs.param_names[3] == "W1[0,3]"
    y = ys[0]
    np.testing.assert_allclose(rhs.f(0.4, y, p), w2 @ np.tanh(w1 @ np.append(y**3, 0.4) + b1) + b2, rtol=1e-14)


def test_symbolic_vjp_and_batched_jacobians():
    rhs = SymbolicRHS(["x", "y"], ["a", "b"], ["a*x - b*x*y + sin(t)", "2"])  # a constant component
    p = np.array([1.5, 0.7])
    ys = np.random.default_rng(2).standard_normal((6, 2))
    f = rhs.f(0.3, ys, p)
    assert f.shape == (6, 2) and np.all(f[:, 1] == 2.0)
    jy, jp = rhs.jac_y(0.3, ys, p), rhs.jac_p(0.3, ys, p)
    a = np.random.default_rng(3).standard_normal((6, 2))
    vy, vp = rhs.vjp(0.3, ys, p, a)
    np.testing.assert_allclose(vy, np.einsum("bi,bij->bj", a, jy), rtol=1e-14)
    np.testing.assert_allclose(vp, np.einsum("bi,bik->k", a, jp), rtol=1e-14)
    for b in range(6):
        fy, fp = fd_jacobians(rhs, 0.3, ys[b], p)
        np.testing.assert_allclose(jy[b], fy, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(jp[b], fp, rtol=1e-6, atol=1e-8)
    # no parameters: an empty parameter VJP
    free = SymbolicRHS(["x"], [], ["-x"])
    vy, vp = free.vjp(0.0, np.ones((3, 1)), np.zeros(0), np.ones((3, 1)))
    assert vp.shape == (0,) and np.all(vy == -1.0)


@pytest.mark.parametrize("kw, match", [
    (dict(time_input="yes"), "time_input"),
    (dict(features="square"), "features"),
    (dict(widths=[2] * 102), "too deep"),
    (dict(widths=[2, 10**5, 10**5, 2]), "parameters"),
    (dict(scale=float("nan")), "scale"),
])
def test_mlp_validation(kw, match):
    args = dict(widths=[2, 3, 2])
    args.update(kw)
    start = time.perf_counter()
    with pytest.raises(InvalidInputError, match=match):
        MLPRHS(**args)
    assert time.perf_counter() - start < 1.0  # the size is checked before anything is allocated
    assert MAX_PARAMS < 10**10


def test_mlp_fingerprints():
    base = MLPRHS([2, 4, 2])
    assert base.fingerprint() == "mlp|(2, 4, 2)|tanh"  # unchanged: cached references and sweep keys stay valid
    fps = {base.fingerprint(), MLPRHS([2, 4, 2], time_input=True).fingerprint(),
           MLPRHS([2, 4, 2], features="cube").fingerprint(), MLPRHS([2, 4, 2], activation="relu").fingerprint(),
           MLPRHS([2, 5, 2]).fingerprint()}
    assert len(fps) == 5
    assert "time input" in MLPRHS([2, 4, 2], time_input=True).describe()
    assert MLPRHS([2, 4, 2], time_input=True).n_params == 4 * 3 + 4 + 2 * 4 + 2

"""Problem validation: every bad argument raises InvalidInputError naming it."""

import numpy as np
import pytest

from crossode import MLPRHS, InvalidInputError, Loss, Problem, SymbolicRHS, reference
from crossode.problems import PROBLEMS, get_problem

RHS = SymbolicRHS(["x", "y"], ["a"], ["a*y", "-x"])


def make(**kw):
    args = dict(rhs=RHS, y0=[1.0, 0.0], params={"a": 1.0}, tspan=(0.0, 1.0))
    args.update(kw)
    return Problem(**args)


def test_defaults():
    p = make()
    assert p.saveat.tolist() == [1.0]
    assert p.loss.kind == "sum_squares"
    assert p.params.dtype == np.float64 and p.param_names == ("a",)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(y0=[1.0]), "y0"),
        (dict(y0=[1.0, np.nan]), "y0"),
        (dict(y0="ab"), "y0"),
        (dict(params={"b": 1.0}), "params"),
        (dict(params=[1.0, 2.0]), "params"),
        (dict(params=None), "params"),
        (dict(tspan=(1.0, 1.0)), "tspan"),
        (dict(tspan=(0.0, np.inf)), "tspan"),
        (dict(tspan=(0.0,)), "tspan"),
        (dict(saveat=[0.5, 2.0]), "saveat"),
        (dict(saveat=[0.5, 0.25]), "saveat"),
        (dict(saveat=[]), "saveat"),
        (dict(loss=Loss("linear", [[1.0, 2.0, 3.0]])), "loss.weights"),
        (dict(name=""), "name"),
        (dict(rhs="x"), "rhs"),
    ],
)
def test_validation(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        make(**kw)


def test_loss_validation():
    with pytest.raises(InvalidInputError, match="loss.kind"):
        Loss("l1")
    with pytest.raises(InvalidInputError, match="weights"):
        Loss("linear")
    with pytest.raises(InvalidInputError, match="only allowed"):
        Loss("sum_squares", [[1.0]])


def test_backwards_span_and_loss():
    p = make(tspan=(1.0, 0.0), saveat=[0.5, 0.0], loss=Loss("linear", [[1, 0], [0, 1]]))
    ys = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert p.loss.value(ys) == 1.0 + 4.0
    assert make().loss.value(ys) == 0.5 * 30.0


def test_remake_rescales_default_saveat():
    p = make().remake(tspan=(0.0, 4.0))
    assert p.saveat.tolist() == [4.0] and p.fingerprint() != make().fingerprint()


def test_mlp_layout_and_names():
    rhs = MLPRHS([2, 3, 2], "tanh", seed=1)
    p = Problem(rhs, y0=[0.1, 0.2], tspan=(0, 1))
    assert p.n_params == 2 * 3 + 3 + 3 * 2 + 2 == len(p.param_names)
    (w1, b1), (w2, b2) = rhs.unflatten(p.params)
    assert p.param_names[1] == "W1[0,1]" and p.params[1] == w1[0, 1]
    assert p.param_names[6] == "b1[0]" and p.params[6] == b1[0]
    y = np.array([0.1, 0.2])
    assert np.allclose(rhs.f(0, y, p.params), w2 @ np.tanh(w1 @ y + b1) + b2)


@pytest.mark.parametrize("bad", [dict(widths=[2, 3]), dict(widths=[2]), dict(widths=[2, 0, 2]),
                                 dict(widths=[2, 3, 2], activation="gelu")])
def test_mlp_validation(bad):
    args = dict(widths=[2, 3, 2])
    args.update(bad)
    with pytest.raises(InvalidInputError):
        MLPRHS(**args)


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_zoo_jacobians_match_finite_differences(name):
    p = get_problem(name)
    rng = np.random.default_rng(0)
    y = (p.y0 if p.batch is None else p.y0[0]) + 0.1 * rng.standard_normal(p.n_states)  # one state of a batch
    h = 1e-6
    jy = np.stack([(p.rhs.f(0.3, y + h * e, p.params) - p.rhs.f(0.3, y - h * e, p.params)) / (2 * h)
                   for e in np.eye(p.n_states)], axis=1)
    scale = np.abs(p.params) + 1.0
    jp = np.stack([(p.rhs.f(0.3, y, p.params + h * s * e) - p.rhs.f(0.3, y, p.params - h * s * e)) / (2 * h * s)
                   for e, s in zip(np.eye(p.n_params), scale)], axis=1).reshape(p.n_states, p.n_params)
    assert np.allclose(p.rhs.jac_y(0.3, y, p.params), jy, rtol=1e-5, atol=1e-5 * np.abs(jy).max())
    assert np.allclose(p.rhs.jac_p(0.3, y, p.params), jp, rtol=1e-5, atol=1e-5 * max(np.abs(jp).max(), 1))


def test_unknown_problem():
    with pytest.raises(InvalidInputError, match="Unknown problem"):
        get_problem("nope")
    with pytest.raises(InvalidInputError, match="does not accept"):
        get_problem("linear", bogus=1)


def test_linear_structure_detection():
    assert get_problem("linear").rhs.linear_structure() is not None
    assert get_problem("lotka_volterra").rhs.linear_structure() is None
    assert SymbolicRHS(["x"], ["a"], ["a*x + 1"]).linear_structure() is None
    assert SymbolicRHS(["x"], ["a"], ["a*x*t"]).linear_structure() is None


# ------------------------------------------------------------------------------------- batches and data losses


def test_batched_problem_shapes():
    y0 = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    p = make(y0=y0, saveat=[0.5, 1.0])
    assert p.batch == 3 and p.y0.shape == (3, 2) and p.ys_shape == (2, 3, 2) and p.n_states == 2
    assert make().batch is None and make().ys_shape == (1, 2)
    assert "batch=3" in repr(p)


@pytest.mark.parametrize("y0, match", [
    ([[1.0, 0.0, 2.0]], "2 entries per state"),
    ([[[1.0, 0.0]]], "shape"),
    (np.zeros((0, 2)), "at least one"),
    ([[1.0, np.inf]], "finite"),
    ([[1.0, 0.0], [1.0]], "y0"),
    ([[1.0, 0.0], [True, 1.0]], "booleans"),
    (np.array([[True, False]]), "booleans"),
])
def test_batched_y0_validation(y0, match):
    with pytest.raises(InvalidInputError, match=match):
        make(y0=y0)


def test_mse_loss_value_cotangent_and_shapes():
    targets = np.array([[1.0, 2.0], [0.0, -1.0]])
    p = make(y0=[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], saveat=[0.5, 1.0], loss=Loss("mse", targets=targets))
    ys = np.arange(12.0).reshape(2, 3, 2)
    assert p.loss_data.shape == (2, 1, 2)  # shared targets broadcast over the batch
    want = 0.5 * sum(((ys[k, b] - targets[k]) ** 2).sum() for k in range(2) for b in range(3))
    assert p.loss.value(ys) == pytest.approx(want, rel=1e-15)
    assert p.loss.apply(ys, p.loss_data) == pytest.approx(want, rel=1e-15)
    g = p.loss.cotangent(ys)
    h = 1e-6
    e = np.zeros_like(ys)
    e[1, 2, 0] = h
    assert g.shape == ys.shape
    assert g[1, 2, 0] == pytest.approx((p.loss.value(ys + e) - p.loss.value(ys - e)) / (2 * h), rel=1e-8)
    # per-trajectory targets
    per = np.ones((2, 3, 2))
    q = make(y0=[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], saveat=[0.5, 1.0], loss=Loss("mse", targets=per))
    assert q.loss_data.shape == (2, 3, 2) and q.loss.value(ys) == pytest.approx(0.5 * ((ys - 1) ** 2).sum())
    # linear with batch-shaped weights
    w = np.random.default_rng(0).standard_normal((2, 3, 2))
    r = make(y0=[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]], saveat=[0.5, 1.0], loss=Loss("linear", w))
    assert r.loss.value(ys) == pytest.approx((w * ys).sum(), rel=1e-14)
    np.testing.assert_array_equal(r.loss.cotangent(ys), w)


@pytest.mark.parametrize("loss, y0, match", [
    (Loss("mse", targets=[[1.0, 2.0]]), [1.0, 0.0], None),  # fits: (1 save, 2 states)
    (Loss("mse", targets=[[1.0, 2.0, 3.0]]), [1.0, 0.0], "loss.targets"),
    (Loss("mse", targets=np.ones((1, 4, 2))), [[1.0, 0.0]] * 3, "loss.targets"),
    (Loss("linear", np.ones((1, 2, 2))), [[1.0, 0.0]] * 3, "loss.weights"),
    (Loss("mse", targets=np.ones((1, 3, 2))), [1.0, 0.0], "loss.targets"),
])
def test_loss_data_shape_validation(loss, y0, match):
    if match is None:
        make(loss=loss, y0=y0)
        return
    with pytest.raises(InvalidInputError, match=match):
        make(loss=loss, y0=y0)


def test_mse_loss_validation():
    with pytest.raises(InvalidInputError, match="targets.*required"):
        Loss("mse")
    with pytest.raises(InvalidInputError, match="only allowed"):
        Loss("sum_squares", targets=[[1.0]])
    with pytest.raises(InvalidInputError, match="finite"):
        Loss("mse", targets=[[np.nan]])
    with pytest.raises(InvalidInputError, match="booleans"):
        Loss("mse", targets=[[1.0, True]])


# Fingerprints of the zoo problems before batches existed: sweep cell keys and cached references depend on them.
OLD_FINGERPRINTS = {
    "linear": "8279675381755a5e", "exponential_decay": "98fdcb9e9b06c005", "decay2": "bb564205010957ca",
    "lotka_volterra": "540f5427a2f3aa6f", "van_der_pol": "f85ddf45b21e4083", "van_der_pol_stiff": "f1520ec8ed9784f8",
    "robertson": "755be79259c1acae", "fitzhugh_nagumo": "25511640c6689698", "cubic_spiral": "5d89efda9c49c9b3",
    "error_norm_trap": "c75199d917cb6297", "mlp": "4e87e559f4b0c9a1",
}


def test_existing_fingerprints_unchanged():
    assert {name: get_problem(name).fingerprint() for name in OLD_FINGERPRINTS} == OLD_FINGERPRINTS


def test_fingerprint_covers_batch_targets_and_field_options():
    base = make(y0=[[1.0, 0.0]], saveat=[1.0], loss=Loss("mse", targets=[[1.0, 2.0]]))
    variants = [
        make(y0=[1.0, 0.0], saveat=[1.0], loss=Loss("mse", targets=[[1.0, 2.0]])),  # same numbers, no batch
        make(y0=[[1.0, 0.0]], saveat=[1.0], loss=Loss("mse", targets=[[1.0, 2.5]])),
        make(y0=[[1.0, 0.0]], saveat=[1.0], loss=Loss("mse", targets=[[[1.0, 2.0]]])),  # per-trajectory shape
        make(y0=[[1.0, 0.0]], saveat=[1.0], loss=Loss("linear", [[1.0, 2.0]])),
    ]
    fps = {base.fingerprint()} | {v.fingerprint() for v in variants}
    assert len(fps) == 5
    a = get_problem("mlp_fit", batch=2, n=2, width=4, depth=1)
    assert a.fingerprint() == get_problem("mlp_fit", batch=2, n=2, width=4, depth=1).fingerprint()
    for kw in (dict(time_input=False), dict(features="cube"), dict(activation="relu"), dict(batch=3),
               dict(widths=[2, 5, 2])):
        b = get_problem("mlp_fit", **{**dict(batch=2, n=2, width=4, depth=1), **kw})
        assert b.fingerprint() != a.fingerprint(), kw


def test_batched_zoo_problems():
    p = get_problem("mlp_fit")
    assert p.batch == 64 and p.rhs.widths == (8, 64, 64, 8) and p.rhs.time_input and p.loss.kind == "mse"
    assert p.loss.targets.shape == (4, 64, 8)
    q = get_problem("mlp_fit", batch=16, widths=[4, 32, 32, 4], time_input=False)
    assert q.y0.shape == (16, 4) and q.rhs.widths == (4, 32, 32, 4) and not q.rhs.time_input
    s = get_problem("spiral_fit")
    assert s.batch == 20 and s.rhs.features == "cube" and s.rhs.widths == (2, 50, 2) and s.saveat.size == 9
    # the targets are windows of the true spiral y' = A^T y^3 (the zoo's cubic_spiral field) starting at y0
    assert np.allclose(s.saveat, 25 / 999 * np.arange(1, 10), rtol=1e-14)
    spiral = get_problem("cubic_spiral")
    for b in (0, 7):
        window = spiral.remake(y0=s.y0[b], tspan=s.tspan, saveat=s.saveat)
        np.testing.assert_allclose(reference(window).ys, s.loss.targets[:, b], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kw, match", [
    (dict(batch=0), "batch"), (dict(batch=10**9), "batch"), (dict(batch=2.5), "batch"),
    (dict(widths=[2, 10**5, 10**5, 2]), "parameters"), (dict(widths=[2, 3]), "widths"), (dict(width=0), "width"),
])
def test_batched_zoo_overrides_are_validated(kw, match):
    with pytest.raises(InvalidInputError, match=match):
        get_problem("mlp_fit", **kw)

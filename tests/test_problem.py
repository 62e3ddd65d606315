"""Problem validation: every bad argument raises InvalidInputError naming it."""

import numpy as np
import pytest

from crossode import MLPRHS, InvalidInputError, Loss, Problem, SymbolicRHS
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

"""The Julia backend's pure-Python side, without Julia: code generation semantics, argument marshalling, layouts,
result conversion, statuses and support decisions."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import sympy

import crossode
from crossode import (
    ALF,
    MALI,
    MLPRHS,
    RK4,
    Adaptive,
    Backsolve,
    Bosh3,
    Checkpointed,
    Direct,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Forward,
    GaussAdjoint,
    Heun,
    ImplicitEuler,
    InterpolatingAdjoint,
    Kvaerno5,
    Loss,
    Midpoint,
    Problem,
    QuadratureAdjoint,
    SolverFailure,
    SymbolicRHS,
    Tsit5,
    UnsupportedError,
    fixed_grid,
)
from crossode._backend import Backend
from crossode.backends.julia import JuliaBackend, _field, _marshal, _probe

# ------------------------------------------------------------------------------------------ fixtures


def lotka_volterra(**kw) -> Problem:
    rhs = SymbolicRHS(["x", "y"], ["a", "b", "c", "d"], ["a*x - b*x*y", "-c*y + d*x*y"])
    args = dict(y0=[1.0, 1.0], tspan=(0.0, 10.0), params=[1.5, 1.0, 3.0, 1.0], saveat=[2.5, 5.0, 10.0])
    args.update(kw)
    return Problem(rhs, name="lv", **args)


def mlp_problem(widths=(2, 5, 4, 2), activation="tanh") -> Problem:
    return Problem(MLPRHS(list(widths), activation=activation, seed=4), y0=[1.0, -0.5], tspan=(0.0, 1.0),
                   name="mlp")


def symbolic_fields():
    fields = [
        ("lv", lotka_volterra().rhs),
        ("every_function", SymbolicRHS(
            ["x", "y"], ["k", "m"],
            ["sin(x) + cos(y) + tan(k/10) + asin(x/10) + acos(y/10) + atan(m) + sinh(k) + cosh(x) + tanh(y)",
             "exp(-t) + log(1 + k**2) + sqrt(abs(m)) + pi*E*x + abs(x)**(3/2) - 1/(y*k) + 2**(-t) - x**3/3"])),
        ("constant", SymbolicRHS(["a", "b"], ["k"], ["0", "-k*b + 1/3"])),
        ("rational", SymbolicRHS(["x"], ["k"], ["-x/7 + 2*k/3 + x**2/5 - 0.125*t"])),
    ]
    try:
        from crossode.problems import PROBLEMS, get_problem

        fields += [(n, get_problem(n).rhs) for n in PROBLEMS if isinstance(get_problem(n).rhs, SymbolicRHS)]
    except ImportError:  # the zoo is optional for these tests
        pass
    return fields


# ------------------------------------------------------------------------------------------ codegen semantics

_NP = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "abs": np.abs, "pi": np.pi, "zero": lambda x: 0.0, "Float32": float,
}


def julia_scalar_to_python(expr: str) -> str:
    """Translate the generated scalar Julia (1-based u/p, ^) to Python (0-based, **) for evaluation."""
    expr = re.sub(r"\b([up])\[(\d+)\]", lambda m: f"{m.group(1)}[{int(m.group(2)) - 1}]", expr)
    return expr.replace("Base.MathConstants.e", "_e").replace("^", "**")


def eval_generated_symbolic(src: str, form: str, u, p, t):
    if form == "iip":
        exprs = [m.group(2) for m in re.finditer(r"^\s*du\[(\d+)\] = (.*)$", src, re.M)]
    else:
        body = src.split("return [", 1)[1].split("]\n", 1)[0]
        exprs = [ln.strip().rstrip(",") for ln in body.strip().splitlines()]
    env = dict(_NP, u=u, p=p, t=t, _e=np.e)
    return np.array([eval(julia_scalar_to_python(e), {"__builtins__": {}}, env) for e in exprs])  # noqa: S307


@pytest.mark.parametrize("name,rhs", symbolic_fields(), ids=[n for n, _ in symbolic_fields()])
@pytest.mark.parametrize("form", ["iip", "oop"])
def test_generated_symbolic_code_computes_the_field(name, rhs, form):
    src = _field.julia_source(rhs)
    rng = np.random.default_rng(0)
    for _ in range(3):
        u = rng.uniform(0.2, 0.9, rhs.n_states)
        p = rng.uniform(0.2, 0.9, len(rhs.params))
        t = float(rng.uniform(0.1, 2.0))
        np.testing.assert_allclose(eval_generated_symbolic(src, form, u, p, t), rhs.f(t, u, p), rtol=1e-13, atol=1e-13)


def test_generated_symbolic_code_uses_one_based_indices_in_neutral_order():
    rhs = SymbolicRHS(["first", "second"], ["alpha", "beta"], ["beta", "alpha*second"])
    src = _field.julia_source(rhs)
    assert "du[1] = p[2]" in src and "du[2] = p[1] * u[2]" in src
    assert "# states: u[1] = first, u[2] = second" in src


def test_float32_literals():
    rhs = SymbolicRHS(["x"], ["k"], ["-0.04*x + k/3"])
    src32, src64 = _field.julia_source(rhs, "float32"), _field.julia_source(rhs, "float64")
    assert "Float32(0.04)" in src32 and "Float32(0.3333333333333333)" not in src32  # k/3 stays an Int division
    assert "0.04" in src64 and "Float32" not in src64


def test_constant_component_follows_the_element_type_of_u():
    src = _field.julia_source(SymbolicRHS(["a", "b"], ["k"], ["0", "-k*b"]))
    assert "zero(u[1]) + 0," in src and "du[1] = 0" in src


_ACT = {
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softplus": lambda z: np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0),
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "identity": lambda z: z,
}


def eval_generated_mlp(src: str, activation: str, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Run the generated MLP code line by line with Julia's semantics (column-major reshape, 1-based ranges)."""
    env = {"u": u}
    for line in src.split("function rhs_oop(u, p, t)", 1)[1].split("\n    end", 1)[0].strip().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"(W\d+) = permutedims\(reshape\(p\[(\d+):(\d+)\], (\d+), (\d+)\)\)", line):
            a, b, rows, cols = map(int, m.groups()[1:])
            env[m.group(1)] = np.reshape(p[a - 1 : b], (rows, cols), order="F").T  # Julia reshape is column-major
        elif m := re.fullmatch(r"(b\d+) = p\[(\d+):(\d+)\]", line):
            env[m.group(1)] = p[int(m.group(2)) - 1 : int(m.group(3))]
        elif m := re.fullmatch(r"(z\d+) = (W\d+) \* (\w+) \.\+ (b\d+)", line):
            env[m.group(1)] = env[m.group(2)] @ env[m.group(3)] + env[m.group(4)]
        elif m := re.fullmatch(r"(h\d+) = (.*)", line):
            z = re.search(r"z\d+", m.group(2)).group(0)
            assert m.group(2) == _field.ACTIVATION_CODE[activation].format(z=z)
            env[m.group(1)] = _ACT[activation](env[z])
        elif m := re.fullmatch(r"return (W\d+) \* (\w+) \.\+ (b\d+)", line):
            return env[m.group(1)] @ env[m.group(2)] + env[m.group(3)]
        else:
            raise AssertionError(f"unexpected generated line: {line!r}")
    raise AssertionError("no return line")


@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus", "sigmoid", "identity"])
@pytest.mark.parametrize("widths", [(2, 3, 2), (3, 5, 4, 3), (1, 1)])
def test_generated_mlp_code_matches_numpy(widths, activation):
    rhs = MLPRHS(list(widths), activation=activation, seed=7)
    p = rhs.initial_params()
    src = _field.julia_source(rhs)
    rng = np.random.default_rng(1)
    for _ in range(3):
        u = rng.normal(size=rhs.n_states)
        np.testing.assert_allclose(eval_generated_mlp(src, activation, u, p), rhs.f(0.0, u, p), rtol=1e-13, atol=1e-14)


def test_mlp_layout_is_not_the_naive_column_major_one():
    rhs = MLPRHS([2, 3, 2], seed=5)
    p = rhs.initial_params()
    w_ref = rhs.unflatten(p)[0][0]
    naive = np.reshape(p[:6], (3, 2), order="F")  # what `reshape(p[1:6], 3, 2)` alone would give
    assert not np.allclose(naive, w_ref)
    np.testing.assert_array_equal(_field.numpy_mlp_from_layout(rhs, p)[0][0], w_ref)


def test_unknown_dtype_is_rejected():
    with pytest.raises(crossode.InvalidInputError):
        _field.julia_source(lotka_volterra().rhs, "float16")


# ------------------------------------------------------------------------------------------ marshalling


SOLVER_CASES = [
    (Euler(), "Euler"), (Midpoint(), "Midpoint"), (Heun(), "Heun"), (RK4(), "RK4"), (Bosh3(), "BS3"),
    (Dopri5(), "DP5"), (Tsit5(), "Tsit5"), (Dopri8(), "DP8"), (ImplicitEuler(), "ImplicitEuler"),
    (Kvaerno5(), "Kvaerno5"),
]


@pytest.mark.parametrize("solver,alg", SOLVER_CASES, ids=[a for _, a in SOLVER_CASES])
def test_solver_mapping(solver, alg):
    step = Adaptive() if solver.adaptive else Fixed(dt=0.1)
    call = _marshal.build_call(lotka_volterra(), solver, GaussAdjoint(), step)
    assert call.alg == alg
    assert _marshal.ALG_SUBPACKAGE[alg].startswith("OrdinaryDiffEq")


SENSE_CASES = [
    (Direct(), "ReverseDiffAdjoint()", "ReverseDiffAdjoint", "auto", False),
    (Forward(), "ForwardDiffSensitivity()", "ForwardDiffSensitivity", "auto", False),
    (Backsolve(), "BacksolveAdjoint(autojacvec = nothing, checkpointing = false)", "BacksolveAdjoint", "auto", False),
    (Backsolve(vjp="enzyme"), "BacksolveAdjoint(autojacvec = EnzymeVJP(), checkpointing = false)",
     "BacksolveAdjoint", "enzyme", False),
    (Checkpointed(), "InterpolatingAdjoint(autojacvec = nothing, checkpointing = true)", "InterpolatingAdjoint",
     "auto", True),
    (Checkpointed(vjp="reversediff"), "InterpolatingAdjoint(autojacvec = ReverseDiffVJP(true), checkpointing = true)",
     "InterpolatingAdjoint", "reversediff", True),
    (InterpolatingAdjoint(), "InterpolatingAdjoint(autojacvec = nothing, checkpointing = false)",
     "InterpolatingAdjoint", "auto", False),
    (InterpolatingAdjoint(checkpointing=True, vjp="zygote"),
     "InterpolatingAdjoint(autojacvec = ZygoteVJP(), checkpointing = true)", "InterpolatingAdjoint", "zygote", True),
    (QuadratureAdjoint(), "QuadratureAdjoint(autojacvec = nothing)", "QuadratureAdjoint", "auto", False),
    (GaussAdjoint(vjp="zygote"), "GaussAdjoint(autojacvec = ZygoteVJP(), checkpointing = false)", "GaussAdjoint",
     "zygote", False),
]


@pytest.mark.parametrize("sens,julia,kind,vjp,ckpt", SENSE_CASES, ids=[j for _, j, *_ in SENSE_CASES])
def test_sensitivity_mapping(sens, julia, kind, vjp, ckpt):
    spec = _marshal.sensealg_spec(sens)
    assert (spec.kind, spec.vjp, spec.checkpointing, spec.julia) == (kind, vjp, ckpt, julia)
    kwargs = _marshal.build_call(lotka_volterra(), Tsit5(), sens, Adaptive()).build_kwargs()
    assert (kwargs["sensealg"], kwargs["vjp"], kwargs["checkpointing"]) == (kind, vjp, ckpt)


def test_cuda_auto_vjp_is_zygote():
    assert _marshal.sensealg_spec(GaussAdjoint(), device="cuda").vjp == "zygote"
    assert _marshal.sensealg_spec(GaussAdjoint(), device="cpu").vjp == "auto"


def test_inplace_choice():
    lv, nn = lotka_volterra(), mlp_problem()
    assert _marshal.uses_inplace(lv, GaussAdjoint()) is True
    assert _marshal.uses_inplace(lv, Direct()) is True
    assert _marshal.uses_inplace(lv, GaussAdjoint(vjp="zygote")) is False  # Zygote cannot differentiate mutation
    assert _marshal.uses_inplace(nn, GaussAdjoint()) is False
    assert _marshal.uses_inplace(nn, GaussAdjoint(vjp="zygote"), device="cuda") is False


def test_adaptive_arguments():
    prob = lotka_volterra()
    step = Adaptive(rtol=1e-7, atol=1e-9, dt0=0.01, max_steps=1234)
    call = _marshal.build_call(prob, Tsit5(), QuadratureAdjoint(), step)
    kw = call.build_kwargs()
    assert kw["adaptive"] is True and kw["tstops"] is None
    assert (kw["abstol"], kw["reltol"], kw["dt"], kw["maxiters"]) == (1e-9, 1e-7, 0.01, 1234)
    assert (kw["quad_abstol"], kw["quad_reltol"]) == (1e-9, 1e-7)  # quadrature as tight as the solve
    assert (kw["t0"], kw["t1"]) == (0.0, 10.0)
    np.testing.assert_array_equal(kw["saveat"], [2.5, 5.0, 10.0])
    np.testing.assert_array_equal(kw["u0"], prob.y0)
    np.testing.assert_array_equal(kw["p"], prob.params)
    assert kw["u0"].dtype == np.float64 and kw["loss_kind"] == "sum_squares" and kw["weights"] is None
    # dt0=None: the same Hairer first step the PyTorch and JAX backends take
    from crossode._stepping import error_order, initial_step

    auto = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive()).build_kwargs()["dt"]
    assert auto == initial_step(prob, error_order(Tsit5()), Adaptive().rtol, Adaptive().atol)[0] and auto > 0
    info = call.describe()
    assert info["julia_alg"] == "Tsit5()" and info["julia_rhs"] == "in-place"
    assert info["quad_abstol"] == 1e-9


def _emulate_ordinarydiffeq_fixed_steps(t0, dt, tstops, t1):
    """OrdinaryDiffEq with adaptive=false: each step is min(dt, distance to the next tstop)."""
    t, ends = t0, []
    direction = 1.0 if t1 > t0 else -1.0
    stops = [s for s in tstops if (s - t0) * direction > 0]
    while (t1 - t) * direction > 0:
        nxt = stops[0]
        step = min(dt, abs(nxt - t))
        t = nxt if step == abs(nxt - t) else t + direction * step
        if t == nxt:
            stops.pop(0)
        ends.append(t)
        assert len(ends) <= len(tstops)
    return ends


@pytest.mark.parametrize("dt", [0.1, 0.3, 0.07, 1e-3])
@pytest.mark.parametrize("saveat", [[10.0], [0.25, 1.0, 3.3333, 10.0]])
def test_fixed_steps_land_on_the_shared_grid(dt, saveat):
    prob = lotka_volterra(saveat=saveat)
    call = _marshal.build_call(prob, RK4(), Direct(), Fixed(dt=dt, max_steps=50_000))
    kw = call.build_kwargs()
    grid = fixed_grid(0.0, 10.0, dt, prob.saveat)
    np.testing.assert_array_equal(kw["tstops"], grid)
    assert kw["adaptive"] is False and kw["abstol"] is None and kw["maxiters"] == 50_000
    assert kw["dt"] >= np.max(np.diff(grid)) and kw["dt"] <= dt * (1 + 1e-6)
    ends = _emulate_ordinarydiffeq_fixed_steps(0.0, kw["dt"], list(grid), 10.0)
    np.testing.assert_array_equal(ends, grid[1:])  # one step per grid interval, no slivers
    assert call.describe()["tstops"] == grid.size


def test_fixed_steps_backward_in_time():
    prob = lotka_volterra(tspan=(2.0, 0.0), saveat=[0.0])
    kw = _marshal.build_call(prob, RK4(), Direct(), Fixed(dt=0.3)).build_kwargs()
    grid = fixed_grid(2.0, 0.0, 0.3, [0.0])
    np.testing.assert_array_equal(kw["tstops"], grid)
    assert kw["dt"] > 0
    np.testing.assert_array_equal(_emulate_ordinarydiffeq_fixed_steps(2.0, kw["dt"], list(grid), 0.0), grid[1:])


def test_linear_loss_weights_travel_transposed():
    w = np.arange(6.0).reshape(3, 2) + 1  # (n_save, n_state)
    prob = lotka_volterra(loss=Loss("linear", w))
    kw = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive()).build_kwargs()
    assert kw["loss_kind"] == "linear"
    assert kw["weights"].shape == (2, 3)  # (n_state, n_save): the layout of Julia's Array(sol)
    assert kw["weights"].flags.c_contiguous
    for k in range(3):
        for i in range(2):
            assert kw["weights"][i, k] == w[k, i]
    # the Julia loss sum(W .* Y) with Y = ys.T equals the neutral loss
    ys = np.random.default_rng(2).normal(size=(3, 2))
    assert np.isclose(np.sum(kw["weights"] * ys.T), prob.loss.value(ys))


def test_float32_and_source():
    call = _marshal.build_call(lotka_volterra(), Tsit5(), GaussAdjoint(), Adaptive(), dtype="float32")
    assert call.dtype == "float32" and "float32" in call.src.splitlines()[0]
    assert call.build_kwargs()["u0"].dtype == np.float64  # Julia converts to Float32 itself


# ------------------------------------------------------------------------------------------ results


def _call(**kw):
    prob = kw.pop("problem", lotka_volterra())
    return _marshal.build_call(prob, kw.pop("solver", Tsit5()), kw.pop("sens", GaussAdjoint()),
                               kw.pop("step", Adaptive()))


def test_solve_output_transposes_julia_layout():
    call = _call()
    ys_neutral = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # (n_save=3, n_state=2)
    ys_julia = np.asfortranarray(ys_neutral.T)  # what numpy.asarray gives for Julia's Array(sol)
    res = {"status": "ok", "retcode": "Success", "ys": ys_julia, "t": np.array([2.5, 5.0, 10.0]), "nf": 50,
           "naccept": 8, "nreject": 1, "calls": 50, "time_s": 0.001}
    out = _marshal.solve_output(res, call)
    np.testing.assert_array_equal(out.ys, ys_neutral)
    assert out.ys.flags.c_contiguous
    assert (out.stats.nfe_forward, out.stats.steps_accepted, out.stats.steps_rejected) == (50, 8, 1)
    with pytest.raises(SolverFailure) as e:
        _marshal.solve_output(dict(res, ys=ys_neutral), call)  # not transposed: wrong shape, caught
    assert e.value.status == "crashed"


def test_solve_output_square_layout_is_still_transposed():
    prob = lotka_volterra(saveat=[5.0, 10.0])  # n_save == n_state: a missing transpose would not change shape
    call = _call(problem=prob)
    ys_julia = np.array([[1.0, 2.0], [3.0, 4.0]])  # rows = states
    out = _marshal.solve_output({"status": "ok", "retcode": "Success", "ys": ys_julia}, call)
    np.testing.assert_array_equal(out.ys, [[1.0, 3.0], [2.0, 4.0]])


@pytest.mark.parametrize(
    "status,retcode,expected",
    [("max_steps", "MaxIters", "max_steps"), ("step_size_too_small", "DtLessThanMin", "step_size_too_small"),
     ("diverged", "Unstable", "diverged"), ("solver_error", "ConvergenceFailure", "solver_error"),
     ("weird", "MaxIters", "max_steps"), ("weird", "Failure", "solver_error")],
)
def test_failures_raise_with_status(status, retcode, expected):
    call = _call()
    with pytest.raises(SolverFailure) as e:
        _marshal.gradient_output({"status": status, "retcode": retcode}, call)
    assert e.value.status == expected and retcode in e.value.message
    with pytest.raises(SolverFailure) as e:
        _marshal.solve_output({"status": status, "retcode": retcode}, call)
    assert e.value.status == expected


def _grad_res(**kw):
    res = {"status": "ok", "retcode": "Success", "loss": 1.5, "du0": np.array([0.1, 0.2]),
           "dp": np.array([1.0, 2.0, 3.0, 4.0]), "nf": 100, "naccept": 15, "nreject": 2, "calls_forward": 100,
           "calls_backward": 240, "time_forward_s": 0.01, "time_total_s": 0.03}
    res.update(kw)
    return res


def test_gradient_output():
    out = _marshal.gradient_output(_grad_res(), _call())
    assert out.loss == 1.5
    np.testing.assert_array_equal(out.dy0, [0.1, 0.2])
    np.testing.assert_array_equal(out.dparams, [1.0, 2.0, 3.0, 4.0])
    assert (out.stats.nfe_forward, out.stats.nfe_backward) == (100, 240)
    assert (out.stats.steps_accepted, out.stats.steps_rejected) == (15, 2)
    assert out.dy0.dtype == np.float64


def test_gradient_output_counts():
    assert _marshal.gradient_output(_grad_res(), _call(sens=Direct())).stats.nfe_backward == 100  # tape: 1 VJP/eval
    assert _marshal.gradient_output(_grad_res(), _call(sens=GaussAdjoint(vjp="reversediff"))).stats.nfe_backward is None
    assert _marshal.gradient_output(_grad_res(), _call(sens=Forward())).stats.nfe_backward == 240
    none = _marshal.gradient_output(_grad_res(nf=-1, naccept=-1, nreject=-1), _call()).stats
    assert (none.nfe_forward, none.steps_accepted, none.steps_rejected) == (None, None, None)


def test_gradient_output_checks():
    with pytest.raises(SolverFailure) as e:
        _marshal.gradient_output(_grad_res(loss=float("nan")), _call())
    assert e.value.status == "diverged"
    with pytest.raises(SolverFailure) as e:
        _marshal.gradient_output(_grad_res(dp=np.array([1.0, np.inf, 0.0, 0.0])), _call())
    assert e.value.status == "diverged"
    with pytest.raises(SolverFailure) as e:
        _marshal.gradient_output(_grad_res(dp=np.zeros(3)), _call())
    assert e.value.status == "crashed"


# ------------------------------------------------------------------------------------------ support decisions


@pytest.mark.parametrize(
    "solver,sens,step,device,needle",
    [
        (ALF(), Direct(), Adaptive(), "cpu", "ALF"),
        (ALF(), MALI(), Adaptive(), "cpu", "ALF"),
        (Tsit5(), MALI(), Adaptive(), "cpu", "MALI"),
        (Euler(), Direct(), Adaptive(), "cpu", "Fixed(dt"),
        (RK4(), Direct(), Adaptive(), "cpu", "Fixed(dt"),
        (Tsit5(), Checkpointed(checkpoints=4), Adaptive(), "cpu", "checkpoints"),
        (Tsit5(), Direct(), Adaptive(), "tpu", "unknown device"),
        (Tsit5(), GaussAdjoint(), Adaptive(), "cuda", "MLP"),
    ],
)
def test_unsupported_reasons(solver, sens, step, device, needle):
    reason = _marshal.unsupported_reason(lotka_volterra(), solver, sens, step, device)
    assert reason is not None and needle in reason


@pytest.mark.parametrize(
    "solver,sens,needle",
    [
        (Tsit5(), Direct(), "CPU-only"),
        (Tsit5(), Forward(), "CPU-only"),
        (Tsit5(), GaussAdjoint(vjp="enzyme"), "CPU-only"),
        (Tsit5(), Backsolve(vjp="reversediff"), "CPU-only"),
        (Kvaerno5(), GaussAdjoint(), "implicit"),
    ],
)
def test_unsupported_on_cuda(solver, sens, needle):
    reason = _marshal.unsupported_reason(mlp_problem(), solver, sens, Adaptive(), "cuda")
    assert reason is not None and needle in reason


def test_supported_on_cuda():
    for sens in (GaussAdjoint(), Backsolve(vjp="zygote"), Checkpointed(), InterpolatingAdjoint(), QuadratureAdjoint()):
        assert _marshal.unsupported_reason(mlp_problem(), Tsit5(), sens, Adaptive(), "cuda") is None


def test_dtype_and_backward_span_reasons():
    assert "dtype" in _marshal.unsupported_reason(lotka_volterra(), Tsit5(), Direct(), Adaptive(), "cpu", "float16")
    back = lotka_volterra(tspan=(10.0, 0.0), saveat=[5.0, 0.0])
    assert "backward" in _marshal.unsupported_reason(back, Tsit5(), Direct(), Adaptive())
    assert _marshal.unsupported_reason(lotka_volterra(tspan=(10.0, 0.0), saveat=[0.0]), Tsit5(), Direct(),
                                       Adaptive()) is None


def test_every_valid_cpu_combination_is_supported():
    sens = [Direct(), Forward(), Backsolve(), Checkpointed(), InterpolatingAdjoint(), QuadratureAdjoint(),
            GaussAdjoint()]
    for solver, _ in SOLVER_CASES:
        step = Adaptive() if solver.adaptive else Fixed(dt=0.1)
        for s in sens:
            for prob in (lotka_volterra(), mlp_problem()):
                assert _marshal.unsupported_reason(prob, solver, s, step) is None, (solver, s)
                assert _marshal.build_call(prob, solver, s, step).src


@pytest.mark.parametrize("problem, needle", [
    (lambda: crossode.get_problem("mlp_fit", batch=2, n=2, width=4, depth=1), "batched"),
    (lambda: Problem(MLPRHS([2, 4, 2]), y0=[1.0, 0.0], tspan=(0, 1), loss=Loss("mse", targets=[[0.0, 1.0]])), "mse"),
    (lambda: Problem(MLPRHS([2, 4, 2], time_input=True), y0=[1.0, 0.0], tspan=(0, 1)), "time_input"),
    (lambda: Problem(MLPRHS([2, 4, 2], features="cube"), y0=[1.0, 0.0], tspan=(0, 1)), "features='cube'"),
], ids=["batch", "mse", "time_input", "cube"])
def test_new_problem_features_are_refused_with_a_reason(problem, needle):
    # the generated Julia field and the marshalling do not know them yet: refuse instead of computing another problem
    reason = _marshal.unsupported_reason(problem(), Tsit5(), Direct(), Adaptive())
    assert reason is not None and needle in reason and "Julia backend" in reason
    assert JuliaBackend().supports(problem(), Tsit5(), Direct(), Adaptive()) == reason
    with pytest.raises(UnsupportedError, match="not implemented in the Julia backend"):
        JuliaBackend().prepare(problem(), Tsit5(), Direct(), Adaptive())


# ------------------------------------------------------------------------------------------ backend object


def test_backend_protocol_and_lazy_import():
    b = JuliaBackend()
    assert isinstance(b, Backend) and b.name == "julia"
    assert "juliacall" not in sys.modules
    assert "cpu" in b.devices()
    v = b.versions()
    assert isinstance(v, dict) and "julia" not in v  # Julia not loaded: no Julia versions
    assert "juliacall" not in sys.modules


def test_import_order_is_reported_by_prepare_not_supports(monkeypatch):
    b = JuliaBackend()
    args = (lotka_volterra(), Tsit5(), GaussAdjoint(), Adaptive())
    monkeypatch.setitem(sys.modules, "torch", object())
    assert b.supports(*args) is None  # a statement about the combination only
    with pytest.raises(crossode.BackendUnavailableError) as e:
        b.prepare(*args)
    assert "torch was imported before juliacall" in str(e.value)
    assert "juliacall" not in sys.modules


def test_prepare_rejects_unsupported_before_loading_julia():
    with pytest.raises(UnsupportedError, match="ALF"):
        JuliaBackend().prepare(lotka_volterra(), ALF(), MALI(), Adaptive())
    assert "juliacall" not in sys.modules


def test_prepare_without_julia_is_a_clean_error(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    reason = _probe.unavailable_reason()
    if reason is None:
        pytest.skip("Julia is available here")
    with pytest.raises(crossode.BackendUnavailableError) as e:
        JuliaBackend().prepare(lotka_volterra(), Tsit5(), GaussAdjoint(), Adaptive())
    assert str(e.value) == reason
    assert "juliacall" not in sys.modules


def test_sympy_is_the_only_symbolic_dependency():
    # codegen works on plain SymPy expressions handed over by SymbolicRHS
    rhs = SymbolicRHS(["x"], ["k"], [sympy.Symbol("k", real=True) * sympy.Symbol("x", real=True)])
    assert "du[1] = p[1] * u[1]" in _field.julia_source(rhs)

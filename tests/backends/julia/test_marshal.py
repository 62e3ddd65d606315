"""The Julia backend's pure-Python side, without Julia: code generation semantics, argument marshalling, layouts,
result conversion, statuses and support decisions."""

from __future__ import annotations

import re
import sys
import types

import numpy as np
import pytest
import sympy

import crossode
from crossode import (
    ALF,
    CNFRHS,
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
from crossode._stepping import min_step_size
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

_NANMATH = types.SimpleNamespace(  # NaNMath.jl semantics: NaN outside the domain (NumPy returns NaN there too)
    sin=np.sin, cos=np.cos, tan=np.tan, asin=np.arcsin, acos=np.arccos, acosh=np.arccosh, atanh=np.arctanh,
    log=np.log, sqrt=np.sqrt, pow=lambda a, b: np.power(np.float64(a), b),
)
_NP = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos, "atan": np.arctan,
    "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "exp": np.exp, "log": np.log, "sqrt": np.sqrt,
    "abs": np.abs, "pi": np.pi, "zero": lambda x: 0.0, "Float32": float, "NaNMath": _NANMATH,
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
    with np.errstate(invalid="ignore"):
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
    rhs = SymbolicRHS(["x", "y"], ["k"], ["-0.04*x + k/3", "2*y/7"])
    src32, src64 = _field.julia_source(rhs, "float32"), _field.julia_source(rhs, "float64")
    assert "Float32(0.04)" in src32 and "p[1] / 3" in src32  # k/3 stays an Int division
    assert "(Float32(0.2857143)) * u[2]" in src32  # 2/7: the float32 rounding, shortest decimal
    assert "0.04" in src64 and "Float32" not in src64


def _body(src: str) -> str:
    return src.split("\nlet\n", 1)[1]


def test_float32_fields_have_no_float64_constants():
    """sqrt(2), pi, E, 2*pi, exp(1) are Float64 in Julia: each numeric subexpression is folded to one literal in the
    field's precision (issue 12: float32 fields leaked Float64 through `sqrt(2)`)."""
    rhs = SymbolicRHS(["x", "y"], ["k"], ["sqrt(2)*x + pi*y + 2*pi*k", "E*x - exp(1)*y + pi**2 + sqrt(k)*sqrt(3)"])
    src = _body(_field.julia_source(rhs, "float32"))
    for leak in ("sqrt(2)", "sqrt(3)", " pi", "(pi", "MathConstants", "exp(1)"):
        assert leak not in src, (leak, src)
    assert "Float32(1.4142135)" in src and "Float32(3.1415927)" in src and "Float32(6.2831855)" in src
    assert "Float32(9.869604)" in src and "Float32(1.7320508) * NaNMath.sqrt(p[1])" in src
    floats = re.findall(r"(?<![\w.(])\d+\.\d+(?:e[-+]?\d+)?", src)
    assert not floats, floats  # every float literal sits inside Float32(...)
    # the float64 code computes the same numbers
    u, p = np.array([0.3, 0.6]), np.array([0.8])
    for form in ("iip", "oop"):
        np.testing.assert_allclose(eval_generated_symbolic(_field.julia_source(rhs), form, u, p, 0.2), rhs.f(0.2, u, p),
                                   rtol=1e-15)


def test_constants_that_are_not_real_numbers_are_rejected():
    with pytest.raises(crossode.InvalidInputError, match="not a finite real number"):
        _field.julia_source(SymbolicRHS(["x"], [], [sympy.sqrt(-2) * sympy.Symbol("x")]))
    assert _field.fold_constants(sympy.Integer(3)) == 3 and _field.fold_constants(sympy.Rational(1, 3)) == sympy.Rational(1, 3)


GUARDED = {
    "sqrt(x)": "NaNMath.sqrt(u[1])", "log(x)": "NaNMath.log(u[1])", "x**1.5": "NaNMath.pow(u[1], 1.5)",
    "x**(3/2)": "NaNMath.pow(u[1], 1.5)", "asin(x)": "NaNMath.asin(u[1])", "acos(x)": "NaNMath.acos(u[1])",
    "sin(x)": "NaNMath.sin(u[1])", "cos(x)": "NaNMath.cos(u[1])", "tan(x)": "NaNMath.tan(u[1])",
    "x**k": "NaNMath.pow(u[1], p[1])", "2**(-t)": "NaNMath.pow(2, -t)", "1/sqrt(x)": "1 / NaNMath.sqrt(u[1])",
}


@pytest.mark.parametrize("expr,code", list(GUARDED.items()), ids=list(GUARDED))
def test_domain_functions_are_nan_guarded(expr, code):
    """Julia's sqrt/log/asin/x^1.5 throw DomainError where PyTorch/JAX give NaN (and reject the step): the
    generated code calls NaNMath.jl instead (issue 12, lower severity)."""
    src = _field.julia_source(SymbolicRHS(["x"], ["k"], [expr]))
    assert code in src, src
    bare = re.sub(r"NaNMath\.\w+", "", _body(src))
    assert not re.search(r"\b(sqrt|log|asin|acos|sin|cos|tan)\(", bare), src
    assert not re.search(r"\^ (?!\(?-?\d+\)?\b)", bare), src  # `^` only with integer exponents


def test_nan_guarded_code_returns_nan_outside_the_domain():
    rhs = SymbolicRHS(["x", "y"], ["k"], ["sqrt(x) + x**1.5 + log(y)", "asin(y) + k*x**2 + 1/x**2"])
    src = _field.julia_source(rhs)
    assert "u[1] ^ 2" in src and "u[1] ^ (-2)" in src  # integer powers keep `^`
    for form in ("iip", "oop"):
        out = eval_generated_symbolic(src, form, np.array([-0.5, 2.0]), np.array([1.0]), 0.0)
        assert np.isnan(out).all()  # sqrt(-0.5), (-0.5)^1.5 and asin(2): NaN, as NumPy/torch/JAX


def test_mlp_weights_are_lazy_transposes():
    src = _field.julia_source(MLPRHS([2, 3, 2], seed=1))
    assert "W1 = transpose(reshape(p[1:6], 2, 3))" in src and "permutedims" not in src


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
        if m := re.fullmatch(r"(W\d+) = transpose\(reshape\(p\[(\d+):(\d+)\], (\d+), (\d+)\)\)", line):
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


_ACT_DERIVATIVE = {
    "tanh": lambda z: 1.0 - np.tanh(z) ** 2,
    "softplus": lambda z: 1.0 / (1.0 + np.exp(-z)),
    "sigmoid": lambda z: np.exp(-z) / (1.0 + np.exp(-z)) ** 2,
}


def eval_generated_cnf(src: str, activation: str, u: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
    """Run the generated CNF code line by line with Julia's semantics: column-major reshapes, 1-based ranges, a
    Julia vector as an ``(n, 1)`` column (it broadcasts along the columns of a matrix as in Julia)."""
    env = {"u": u, "t": t}

    def col(x):
        return np.asarray(x).reshape(-1, 1)

    def term(text):  # `(W3 * v2_1)`, `W1[:, 2]`, `v1_1`, optionally followed by `[j:j, :]`
        if m := re.fullmatch(r"(.*)\[(\d+):(\d+), :\]", text):
            a, b = int(m.group(2)), int(m.group(3))
            return term(m.group(1))[a - 1 : b, :]
        if m := re.fullmatch(r"\((W\d+) \* (\w+)\)", text):
            return env[m.group(1)] @ env[m.group(2)]
        if m := re.fullmatch(r"(W\d+)\[:, (\d+)\]", text):
            return col(env[m.group(1)][:, int(m.group(2)) - 1])
        return env[text]

    for line in src.split("function rhs_oop(u, p, t)", 1)[1].split("\n    end", 1)[0].strip().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"U = reshape\(u, (\d+), (\d+)\)", line):
            env["U"] = np.reshape(u, (int(m.group(1)), int(m.group(2))), order="F")
        elif m := re.fullmatch(r"X = U\[1:(\d+), :\]", line):
            env["X"] = env["U"][: int(m.group(1)), :]
        elif m := re.fullmatch(r"(R1|W\d+) = (transpose\()?reshape\(p\[(\d+):(\d+)\], (\d+), (\d+)\)\)?", line):
            a, b, rows, cols = map(int, m.groups()[2:])
            w = np.reshape(p[a - 1 : b], (rows, cols), order="F")
            env[m.group(1)] = w.T if m.group(2) else w
        elif m := re.fullmatch(r"W1 = transpose\(R1\[1:(\d+), :\]\)", line):
            env["W1"] = env["R1"][: int(m.group(1)), :].T
        elif m := re.fullmatch(r"w1t = R1\[(\d+), :\]", line):
            env["w1t"] = col(env["R1"][int(m.group(1)) - 1, :])
        elif m := re.fullmatch(r"(b\d+) = p\[(\d+):(\d+)\]", line):
            env[m.group(1)] = col(p[int(m.group(2)) - 1 : int(m.group(3))])
        elif m := re.fullmatch(r"(z\d+) = (W\d+) \* (\w+) \.\+ \((b1) \.\+ t \.\* w1t\)", line):
            env[m.group(1)] = env[m.group(2)] @ env[m.group(3)] + (env["b1"] + t * env["w1t"])
        elif m := re.fullmatch(r"(z\d+) = (W\d+) \* (\w+) \.\+ (b\d+)", line):
            env[m.group(1)] = env[m.group(2)] @ env[m.group(3)] + env[m.group(4)]
        elif m := re.fullmatch(r"(h\d+) = (.*)", line):
            z = "z" + m.group(1)[1:]
            assert m.group(2) == _field.ACTIVATION_CODE[activation].format(z=z)
            env[m.group(1)] = _ACT[activation](env[z])
        elif m := re.fullmatch(r"(s(\d+)) = (.*)", line):
            z, h = f"z{m.group(2)}", f"h{m.group(2)}"
            assert m.group(3) == _field.ACTIVATION_DERIVATIVE_CODE[activation].format(z=z, h=h)
            env[m.group(1)] = _ACT_DERIVATIVE[activation](env[z])
        elif m := re.fullmatch(r"(v\d+_\d+) = (s\d+) \.\* (.*)", line):
            env[m.group(1)] = env[m.group(2)] * term(m.group(3))
        elif m := re.fullmatch(r"(v\d+_\d+) = (.*)", line):
            env[m.group(1)] = term(m.group(2))
        elif m := re.fullmatch(r"tr = zero\(X\[1:1, :\]\) \.\+ (.*)", line):
            env["tr"] = np.zeros_like(env["X"][:1, :]) + sum(term(x) for x in m.group(1).split(" .+ "))
        elif m := re.fullmatch(r"return vec\(vcat\((z\d+), \.-tr\)\)", line):
            return np.vstack([env[m.group(1)], -env["tr"]]).ravel(order="F")
        else:
            raise AssertionError(f"unexpected generated line: {line!r}")
    raise AssertionError("no return line")


@pytest.mark.parametrize("activation", ["tanh", "softplus", "sigmoid", "identity"])
@pytest.mark.parametrize("widths, time_input", [((2, 3, 4, 2), True), ((2, 2), True), ((3, 5, 3), False),
                                                ((2, 2), False)])
def test_generated_cnf_code_matches_numpy(widths, time_input, activation):
    rhs = CNFRHS(list(widths), activation=activation, time_input=time_input, seed=7)
    p = rhs.initial_params()
    rng = np.random.default_rng(1)
    for batch in (None, 4):
        src = _field.julia_source(rhs, batch=batch)
        y = rng.normal(size=(batch or 1, rhs.n_states))  # the neutral (batch, n) layout, flattened row-major
        want = rhs.f(0.3, y, p).ravel()
        np.testing.assert_allclose(eval_generated_cnf(src, activation, y.ravel(), p, 0.3), want, rtol=1e-13,
                                   atol=1e-14)


def test_cnf_loss_travels_with_its_dimension():
    prob = crossode.get_problem("cnf_moons", batch=3, widths=[2, 4, 2])
    call = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive())
    kw = call.build_kwargs()
    assert kw["loss_kind"] == "cnf_nll" and kw["cnf_dims"] == 2 and kw["weights"] is None and kw["targets"] is None
    assert kw["iip"] is False and kw["u0"].shape == (9,)
    assert _marshal.build_call(crossode.get_problem("mlp"), Tsit5(), GaussAdjoint(), Adaptive()).cnf_dims == 0


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
    (InterpolatingAdjoint(checkpointing=True, vjp="reversediff"),
     "InterpolatingAdjoint(autojacvec = ReverseDiffVJP(true), checkpointing = true)", "InterpolatingAdjoint",
     "reversediff", True),
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
    assert kw["adaptive"] is True and kw["dt"] is None and kw["dt0"] == 0.01
    assert (kw["abstol"], kw["reltol"], kw["maxiters"]) == (1e-9, 1e-7, 1234)
    assert (kw["quad_abstol"], kw["quad_reltol"]) == (1e-9, 1e-7)  # quadrature as tight as the solve
    assert (kw["t0"], kw["t1"]) == (0.0, 10.0)
    np.testing.assert_array_equal(kw["saveat"], [2.5, 5.0, 10.0])
    np.testing.assert_array_equal(kw["u0"], prob.y0)
    np.testing.assert_array_equal(kw["p"], prob.params)
    assert kw["u0"].dtype == np.float64 and kw["loss_kind"] == "sum_squares" and kw["weights"] is None
    info = call.describe()
    assert info["julia_alg"] == "Tsit5()" and info["julia_rhs"] == "in-place"
    assert info["quad_abstol"] == 1e-9 and info["dt0"] == 0.01


def test_adaptive_steps_land_on_every_save_time_with_the_torch_jax_controller():
    """Issue 12 item 3: tstops = saveat and the PyTorch/JAX I-controller (CrossODE.CrossODEController)."""
    prob = lotka_volterra()
    kw = _marshal.build_call(prob, Dopri5(), GaussAdjoint(), Adaptive()).solve_keywords()
    np.testing.assert_array_equal(kw["tstops"], prob.saveat)
    assert kw["controller"] == "CrossODEController()"
    assert kw["isoutofdomain"] == "nonfinite_state"  # a NaN/Inf candidate is a rejected step (factor qmin = 0.2)
    assert kw["dtmax"] == float("inf")  # proposals are not capped at |t1 - t0| (they are not in PyTorch/JAX)
    assert kw["dtmin"] == min_step_size(0.0, 10.0) == 10 * np.spacing(10.0)  # PyTorch's/JAX's threshold
    kw32 = _marshal.build_call(prob, Dopri5(), GaussAdjoint(), Adaptive(), dtype="float32").solve_keywords()
    assert kw32["dtmin"] == min_step_size(0.0, 10.0, "float32") == 10 * float(np.spacing(np.float32(10.0)))
    assert "dt" not in kw  # the first step is a problem keyword (next test)


def test_first_step_is_the_jax_one_and_only_for_the_forward_solve():
    """dt0 = crossode's unclipped Hairer estimate (as the JAX backend); passed as a problem keyword, so the
    backward ODEAdjointProblem (a new problem) picks its own first step instead of reusing the forward one."""
    from crossode._stepping import error_order, initial_step

    prob = lotka_volterra(tspan=(0.0, 0.001), saveat=[0.001])  # a span shorter than the Hairer estimate
    call = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive())
    expected = initial_step(prob, error_order(Tsit5()), 1e-6, 1e-8, clip=False)[0]
    assert call.dt0 == expected > 0.001  # not clipped to the span: the first step lands on t1 and the proposal stays
    assert call.problem_keywords() == {"dt": expected}
    assert "dt" not in call.solve_keywords()
    assert _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive(dt0=1e-4)).dt0 == 1e-4


def test_saves_are_exactly_saveat():
    """save_start/save_end explicit (SciMLSensitivity's adjoints default both to true)."""
    kw = _marshal.build_call(lotka_volterra(saveat=[0.0, 5.0]), Tsit5(), Backsolve(), Adaptive()).solve_keywords()
    assert (kw["save_start"], kw["save_end"]) == (True, False)
    kw = _marshal.build_call(lotka_volterra(), Tsit5(), Backsolve(), Fixed(dt=0.1)).solve_keywords()
    assert (kw["save_start"], kw["save_end"]) == (False, True)


KEYWORD_SETS = [
    (Tsit5(), GaussAdjoint(), Adaptive(), "float64",
     {"saveat", "save_start", "save_end", "adaptive", "maxiters", "tstops", "abstol", "reltol", "dtmin", "dtmax",
      "controller", "isoutofdomain"}),
    (Tsit5(), Forward(), Adaptive(), "float64",
     {"saveat", "save_start", "save_end", "adaptive", "maxiters", "tstops", "abstol", "reltol", "dtmin", "dtmax",
      "controller", "isoutofdomain", "internalnorm"}),
    (RK4(), Direct(), Fixed(dt=0.1), "float64", {"saveat", "save_start", "save_end", "adaptive", "maxiters", "dt",
                                                  "tstops"}),
    (RK4(), Forward(), Fixed(dt=0.1), "float32", {"saveat", "save_start", "save_end", "adaptive", "maxiters", "dt",
                                                   "tstops", "internalnorm"}),
    (Kvaerno5(), Direct(), Fixed(dt=0.1), "float64", {"saveat", "save_start", "save_end", "adaptive", "maxiters",
                                                       "dt", "tstops", "abstol", "reltol"}),
    (ImplicitEuler(), InterpolatingAdjoint(checkpointing=True), Adaptive(), "float64",
     {"saveat", "save_start", "save_end", "adaptive", "maxiters", "tstops", "abstol", "reltol", "dtmin", "dtmax",
      "controller", "isoutofdomain"}),
]


@pytest.mark.parametrize("solver,sens,step,dtype,expected", KEYWORD_SETS,
                         ids=[f"{s!r}-{g!r}-{type(c).__name__}-{d}" for s, g, c, d, _ in KEYWORD_SETS])
def test_solve_keyword_set_per_combination(solver, sens, step, dtype, expected):
    call = _marshal.build_call(lotka_volterra(), solver, sens, step, "cpu", dtype)
    assert set(call.solve_keywords()) == expected
    assert set(call.solve_keywords()) <= set(_marshal.SOLVE_KEYWORDS)
    assert set(call.problem_keywords()) == ({"dt"} if isinstance(step, Adaptive) else set())


def test_fixed_implicit_steps_use_tight_newton_tolerances():
    """Issue 12 item 4: Newton converges to abstol = reltol = 1e-10 (JAX: VeryChord(rtol=atol=1e-10))."""
    for solver in (ImplicitEuler(), Kvaerno5()):
        for dtype, tol in (("float64", 1e-10), ("float32", 1e-5)):
            kw = _marshal.build_call(lotka_volterra(), solver, GaussAdjoint(), Fixed(dt=0.1), "cpu", dtype).build_kwargs()
            assert kw["abstol"] == kw["reltol"] == tol == _marshal.FIXED_NEWTON_TOLERANCE[dtype]
    kw = _marshal.build_call(lotka_volterra(), RK4(), GaussAdjoint(), Fixed(dt=0.1)).build_kwargs()
    assert kw["abstol"] is None and kw["reltol"] is None  # explicit fixed steps have no tolerance to pass


def test_direct_with_implicit_solvers_uses_finite_difference_jacobians():
    """Issue 12 item 1: ReverseDiffAdjoint with AutoFiniteDiff and the out-of-place field (the combination
    SciMLSensitivity tests); every other sensitivity keeps ForwardDiff Jacobians."""
    for solver in (ImplicitEuler(), Kvaerno5()):
        for step in (Adaptive(), Fixed(dt=0.1)):
            call = _marshal.build_call(lotka_volterra(), solver, Direct(), step)
            assert call.alg_autodiff == "finite" and call.iip is False
            assert call.describe()["julia_alg"] == f"{call.alg}(autodiff = AutoFiniteDiff())"
            for other in (Forward(), Backsolve(), GaussAdjoint(), InterpolatingAdjoint()):
                assert _marshal.build_call(lotka_volterra(), solver, other, step).alg_autodiff == "default"
    assert _marshal.build_call(lotka_volterra(), Tsit5(), Direct(), Adaptive()).alg_autodiff == "default"


def test_forward_uses_a_primal_value_norm():
    """Issue 12 item 5: ForwardDiffSensitivity's dual solves take the primal's steps."""
    for sens in (Direct(), Forward(), Backsolve(), InterpolatingAdjoint(), QuadratureAdjoint(), GaussAdjoint()):
        for step in (Adaptive(), Fixed(dt=0.1)):
            kw = _marshal.build_call(lotka_volterra(), Tsit5(), sens, step).solve_keywords()
            assert (kw.get("internalnorm") == "primal_norm") == isinstance(sens, Forward)


def test_zero_parameter_problems_pass_null_parameters_to_forward():
    """Issue 12 item 8: ForwardDiffSensitivity divides by zero on an empty parameter vector."""
    prob = Problem(SymbolicRHS(["x"], [], ["-x"]), y0=[1.0], params=[], tspan=(0.0, 1.0))
    for sens in (Direct(), Forward(), Backsolve(), GaussAdjoint()):
        call = _marshal.build_call(prob, Tsit5(), sens, Adaptive())
        assert call.null_parameters is isinstance(sens, Forward)
        assert call.build_kwargs()["p"].shape == (0,)
    assert _marshal.build_call(lotka_volterra(), Tsit5(), Forward(), Adaptive()).null_parameters is False


def test_vjp_auto_is_passed_for_julia_to_resolve_and_counts_follow_the_vjp_that_ran():
    """Issue 12 item 7: CrossODE.build resolves "auto" once; Python reads the result back (Prepared.vjp)."""
    call = _call(sens=GaussAdjoint())
    assert call.build_kwargs()["vjp"] == "auto"
    assert _marshal.gradient_output(_grad_res(), call, vjp="reversediff").stats.nfe_backward is None  # compiled tape
    assert _marshal.gradient_output(_grad_res(), call, vjp="enzyme").stats.nfe_backward == 240
    assert _marshal.gradient_output(_grad_res(), call, vjp="reversediff_uncompiled").stats.nfe_backward == 240
    assert _marshal.gradient_output(_grad_res(), call).stats.nfe_backward == 240  # unresolved: as requested


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


def test_fixed_grid_beyond_max_steps_fails_before_allocating(peak_allocation):
    # 4e6 steps of dt=2.5e-6 over [0, 10]: a max_steps status at marshal time, before tstops (32 MB) is built
    err, peak = peak_allocation(lambda: _marshal.build_call(lotka_volterra(), RK4(), Direct(),
                                                            Fixed(dt=2.5e-6, max_steps=1000)))
    assert isinstance(err, crossode.SolverFailure) and err.status == "max_steps", err
    assert peak < 4e6, f"{peak / 1e6:.1f} MB allocated before the max_steps check"
    assert "4,000,000 steps" in err.message and "max_steps=1,000" in err.message
    # a grid that the save times split into more than max_steps steps fails after the merge, with the same status
    with pytest.raises(crossode.SolverFailure, match="with the save times has 5 steps"):
        _marshal.build_call(lotka_volterra(saveat=[2.5, 5.0, 7.5, 8.0, 10.0]), RK4(), Direct(),
                            Fixed(dt=2.5, max_steps=4))


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
        (Tsit5(), Checkpointed(checkpoints=4), Adaptive(), "cpu", "discretise-then-optimise"),
        (Tsit5(), Checkpointed(), Adaptive(), "cpu", "InterpolatingAdjoint(checkpointing=True)"),
        (RK4(), InterpolatingAdjoint(checkpointing=True), Fixed(dt=0.1), "cpu", "interpolating_adjoint.jl"),
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
    for sens in (GaussAdjoint(), Backsolve(vjp="zygote"), InterpolatingAdjoint(checkpointing=True),
                 InterpolatingAdjoint(), QuadratureAdjoint()):
        assert _marshal.unsupported_reason(mlp_problem(), Tsit5(), sens, Adaptive(), "cuda") is None


def test_dtype_and_backward_span_reasons():
    assert "dtype" in _marshal.unsupported_reason(lotka_volterra(), Tsit5(), Direct(), Adaptive(), "cpu", "float16")
    back = lotka_volterra(tspan=(10.0, 0.0), saveat=[5.0, 0.0])
    assert "backward" in _marshal.unsupported_reason(back, Tsit5(), Direct(), Adaptive())
    assert _marshal.unsupported_reason(lotka_volterra(tspan=(10.0, 0.0), saveat=[0.0]), Tsit5(), Direct(),
                                       Adaptive()) is None


def test_every_valid_cpu_combination_is_supported():
    sens = [Direct(), Forward(), Backsolve(), InterpolatingAdjoint(), QuadratureAdjoint(), GaussAdjoint()]
    for solver, _ in SOLVER_CASES:
        steps = ([Adaptive()] if solver.adaptive else []) + [Fixed(dt=0.1)]
        for step in steps:
            for s in sens + ([InterpolatingAdjoint(checkpointing=True)] if isinstance(step, Adaptive) else []):
                for prob in (lotka_volterra(), mlp_problem()):
                    assert _marshal.unsupported_reason(prob, solver, s, step) is None, (solver, s, step)
                    assert _marshal.build_call(prob, solver, s, step).src


def test_checkpointed_is_rejected_and_points_to_the_continuous_adjoint_it_would_be():
    """Issue 12 item 6: Julia's checkpointed method is a continuous adjoint, so it is offered under the continuous
    name (records: sensitivity 'interpolating', family 'otd', checkpointing=True), never as 'checkpointed'."""
    for solver, _ in SOLVER_CASES:
        step = Adaptive() if solver.adaptive else Fixed(dt=0.1)
        reason = JuliaBackend().supports(lotka_volterra(), solver, Checkpointed(), step)
        assert reason == _marshal.CHECKPOINTED_REASON
    assert Checkpointed.family == "dto" and InterpolatingAdjoint.family == "otd"
    assert JuliaBackend().supports(lotka_volterra(), Tsit5(), InterpolatingAdjoint(checkpointing=True), Adaptive()) is None
    assert Checkpointed not in _marshal.SENSEALG_KINDS


def test_checkpointed_interpolating_adjoint_with_fixed_steps_is_rejected():
    """Issue 12 item 2: its checkpoint re-solves pass no dt/adaptive/tstops (src/interpolating_adjoint.jl)."""
    for solver, _ in SOLVER_CASES:
        reason = JuliaBackend().supports(lotka_volterra(), solver, InterpolatingAdjoint(checkpointing=True),
                                         Fixed(dt=0.1))
        assert reason == _marshal.CHECKPOINTED_FIXED_REASON
        assert JuliaBackend().supports(lotka_volterra(), solver, InterpolatingAdjoint(), Fixed(dt=0.1)) is None


# ------------------------------------------------------------------------------------------ batches, mse, MLP input


def _affine(env, w: str, x: str, bias: str, t: float) -> np.ndarray:
    """``W * x .+ bias`` with the bias ``bK`` or ``(b1 .+ t .* w1t)`` broadcast over the columns of a matrix ``x``."""
    if m := re.fullmatch(r"\((b1) \.\+ t \.\* w1t\)", bias):
        b = env[m.group(1)] + t * env["w1t"]
    else:
        b = env[bias]
    xv = env[x]
    return env[w] @ xv + (b[:, None] if xv.ndim == 2 else b)


def eval_generated_mlp_batched(src: str, activation: str, u: np.ndarray, p: np.ndarray, t: float) -> np.ndarray:
    """Run generated MLP code (batched, time input, cube features) line by line with Julia's semantics."""
    env = {"u": u, "t": t}
    for line in src.split("function rhs_oop(u, p, t)", 1)[1].split("\n    end", 1)[0].strip().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"U = reshape\(u, (\d+), (\d+)\)", line):
            env["U"] = np.reshape(u, (int(m.group(1)), int(m.group(2))), order="F")
        elif m := re.fullmatch(r"X = (\w+) \.\* \1 \.\* \1", line):
            env["X"] = env[m.group(1)] ** 3
        elif m := re.fullmatch(r"R1 = reshape\(p\[(\d+):(\d+)\], (\d+), (\d+)\)", line):
            a, b, rows, cols = map(int, m.groups())
            env["R1"] = np.reshape(p[a - 1 : b], (rows, cols), order="F")
        elif m := re.fullmatch(r"W1 = transpose\(R1\[1:(\d+), :\]\)", line):
            env["W1"] = env["R1"][: int(m.group(1)), :].T
        elif m := re.fullmatch(r"w1t = R1\[(\d+), :\]", line):
            env["w1t"] = env["R1"][int(m.group(1)) - 1, :]
        elif m := re.fullmatch(r"(W\d+) = transpose\(reshape\(p\[(\d+):(\d+)\], (\d+), (\d+)\)\)", line):
            a, b, rows, cols = map(int, m.groups()[1:])
            env[m.group(1)] = np.reshape(p[a - 1 : b], (rows, cols), order="F").T
        elif m := re.fullmatch(r"(b\d+) = p\[(\d+):(\d+)\]", line):
            env[m.group(1)] = p[int(m.group(2)) - 1 : int(m.group(3))]
        elif m := re.fullmatch(r"(z\d+) = (W\d+) \* (\w+) \.\+ (.+)", line):
            env[m.group(1)] = _affine(env, *m.groups()[1:], t)
        elif m := re.fullmatch(r"return vec\((W\d+) \* (\w+) \.\+ (.+)\)", line):
            return _affine(env, *m.groups(), t).ravel(order="F")  # Julia's vec: column-major
        elif m := re.fullmatch(r"return (W\d+) \* (\w+) \.\+ (.+)", line):
            return _affine(env, *m.groups(), t)
        elif m := re.fullmatch(r"(h\d+) = (.*)", line):
            z = re.search(r"z\d+", m.group(2)).group(0)
            assert m.group(2) == _field.ACTIVATION_CODE[activation].format(z=z)
            env[m.group(1)] = _ACT[activation](env[z])
        else:
            raise AssertionError(f"unexpected generated line: {line!r}")
    raise AssertionError("no return line")


@pytest.mark.parametrize("kw", [dict(time_input=True), dict(features="cube"), dict(time_input=True, features="cube"),
                                dict(widths=[3, 3], time_input=True), dict(activation="softplus")], ids=str)
@pytest.mark.parametrize("batch", [None, 4])
def test_generated_mlp_code_with_batches_time_input_and_features(kw, batch):
    kw = {"widths": [3, 5, 4, 3], **kw}
    rhs = MLPRHS(**kw, seed=3)
    p = rhs.initial_params()
    y = np.random.default_rng(2).normal(size=(4, 3) if batch else 3)
    src = _field.julia_source(rhs, batch=batch)
    got = eval_generated_mlp_batched(src, rhs.activation, y.ravel(), p, 0.7)
    np.testing.assert_allclose(got, rhs.f(0.7, y, p).ravel(), rtol=1e-13, atol=1e-14)  # row-major flattening


def eval_generated_symbolic_batched(src: str, form: str, u: np.ndarray, p, t, n: int) -> np.ndarray:
    env = dict(_NP, p=p, t=t, _e=np.e)
    out = []
    if form == "iip":
        exprs = [m.group(2) for m in re.finditer(r"^\s*du\[o \+ (\d+)\] = (.*)$", src, re.M)]
        for b in range(u.size // n):
            env["u"] = u
            code = [re.sub(r"u\[o \+ (\d+)\]", lambda m: f"u[{b * n + int(m.group(1))}]", e) for e in exprs]
            out += [eval(julia_scalar_to_python(c), {"__builtins__": {}}, env) for c in code]  # noqa: S307
    else:
        body = src.split("one_trajectory(v) = [", 1)[1].split("]\n", 1)[0]
        exprs = [ln.strip().rstrip(",") for ln in body.strip().splitlines()]
        for b in range(u.size // n):
            env["v"] = u[b * n : (b + 1) * n]
            out += [eval(re.sub(r"\bv\[(\d+)\]", lambda m: f"v[{int(m.group(1)) - 1}]", julia_scalar_to_python(e)),
                         {"__builtins__": {}}, env) for e in exprs]  # noqa: S307
    return np.array(out, dtype=np.float64)


@pytest.mark.parametrize("form", ["iip", "oop"])
def test_generated_batched_symbolic_code_computes_the_field(form):
    rhs = SymbolicRHS(["x", "y"], ["a", "b"], ["a*x - b*x*y + sin(t)", "2"])
    p, y = np.array([1.5, 0.7]), np.random.default_rng(4).uniform(0.2, 0.9, (3, 2))
    src = _field.julia_source(rhs, batch=3)
    assert "for b in 1:3" in src and "reduce(vcat" in src
    got = eval_generated_symbolic_batched(src, form, y.ravel(), p, 0.3, 2)
    np.testing.assert_allclose(got, rhs.f(0.3, y, p).ravel(), rtol=1e-14)


def test_batched_mse_problem_marshalling():
    prob = crossode.get_problem("mlp_fit", batch=3, n=2, width=4, depth=1)  # time input, per-trajectory targets
    call = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive())
    assert JuliaBackend().supports(prob, Tsit5(), GaussAdjoint(), Adaptive()) is None
    kw = call.build_kwargs()
    np.testing.assert_array_equal(kw["u0"], prob.y0.ravel())  # row-major: trajectory b at u[b*n : (b+1)*n]
    assert kw["loss_kind"] == "mse" and kw["weights"] is None and kw["targets"].flags.c_contiguous
    np.testing.assert_array_equal(kw["targets"], prob.loss.targets.reshape(4, 6).T)  # (batch * n, n_save)
    assert "U = reshape(u, 2, 3)" in kw["src"] and "w1t" in kw["src"]
    assert call.n_states == 6 and call.state_shape == (3, 2) and "state_shape" not in kw
    # shared (n_save, n) targets are broadcast over the batch; batch-shaped linear weights keep their values
    shared = prob.remake(loss=Loss("mse", targets=np.arange(8.0).reshape(4, 2)))
    t = _marshal.build_call(shared, Tsit5(), GaussAdjoint(), Adaptive()).build_kwargs()["targets"]
    np.testing.assert_array_equal(t, np.tile(np.arange(8.0).reshape(4, 2), (1, 3)).T)
    w = np.random.default_rng(0).normal(size=(4, 3, 2))
    lin = prob.remake(loss=Loss("linear", w))
    np.testing.assert_array_equal(_marshal.build_call(lin, Tsit5(), GaussAdjoint(), Adaptive()).weights,
                                  w.reshape(4, 6).T)
    # results come back in the neutral shapes
    g = _marshal.gradient_output({"status": "ok", "retcode": "Success", "loss": 1.0, "du0": np.arange(6.0),
                                  "dp": np.zeros(prob.n_params), "nf": 10}, call)
    np.testing.assert_array_equal(g.dy0, np.arange(6.0).reshape(3, 2))
    ys = np.arange(24.0).reshape(6, 4)  # Julia's (batch * n, n_save)
    s = _marshal.solve_output({"status": "ok", "retcode": "Success", "ys": ys, "nf": 10}, call)
    assert s.ys.shape == (4, 3, 2)
    np.testing.assert_array_equal(s.ys[:, 1, :], ys.T.reshape(4, 3, 2)[:, 1, :])
    np.testing.assert_array_equal(s.ys[2, 1], ys[2:4, 2])


def test_julia_loss_of_the_marshalled_data_is_the_neutral_loss():
    """CrossODE.jl's losses (`sum(abs2, Y .- D) / 2`, `sum(W .* Y)`) on Julia's (batch * n, n_save) layout equal
    Loss.value on the neutral (n_save, batch, n) states."""
    prob = crossode.get_problem("spiral_fit", batch=3, n_save=4, width=4)
    ys = np.random.default_rng(1).normal(size=prob.ys_shape)
    y_julia = ys.reshape(4, -1).T
    d = _marshal.build_call(prob, Tsit5(), GaussAdjoint(), Adaptive()).targets
    assert 0.5 * np.sum((y_julia - d) ** 2) == pytest.approx(prob.loss.value(ys), rel=1e-14)
    w = np.random.default_rng(2).normal(size=prob.ys_shape)
    lin = prob.remake(loss=Loss("linear", w))
    wj = _marshal.build_call(lin, Tsit5(), GaussAdjoint(), Adaptive()).weights
    assert np.sum(wj * y_julia) == pytest.approx(lin.loss.value(ys), rel=1e-13)


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


def test_per_sample_steps_refused_with_reason():
    p = crossode.Problem(crossode.SymbolicRHS(["x"], ["k"], ["-k*x"]), y0=[[1.0], [2.0]], params={"k": 1.0},
                         tspan=(0.0, 1.0))
    reason = _marshal.unsupported_reason(p, crossode.Dopri5(), crossode.Direct(), Adaptive(batch_steps="per_sample"))
    assert reason is not None and "batch_steps='per_sample'" in reason
    assert _marshal.unsupported_reason(p, crossode.Dopri5(), crossode.Direct(), Adaptive()) is None

"""Code generation: a neutral vector field -> Julia source text for ``CrossODE.build`` (pure Python, no Julia).

The generated source is ONE Julia expression, a ``let`` block that evaluates to a ``NamedTuple``
``(oop = rhs_oop, iip = rhs_iip!)`` with both forms of the same field::

    rhs_oop(u, p, t)        -> new vector        (out-of-place: Zygote VJPs, ReverseDiffAdjoint, GPU arrays)
    rhs_iip!(du, u, p, t)   -> writes du; nothing (in-place: ReverseDiff/Enzyme VJPs, no allocation)

``CrossODE.load_rhs`` evaluates it with ``include_string`` in a fresh anonymous module in which the name
``NaNMath`` is bound to the NaNMath.jl module (see ``julia/src/CrossODE.jl``). :func:`_let_block` assembles the
block; each field kind only produces the lines of the two function bodies, so new kinds plug in beside
:func:`symbolic_source` and :func:`mlp_source`.

Symbolic fields (:class:`~crossode.SymbolicRHS`): every state symbol is replaced by ``u[i]`` and every parameter by
``p[j]`` (1-based, in the neutral order) *before* printing, so user names never reach Julia (no clash with Julia
keywords or Base names). Printing uses SymPy's Julia printer with three changes:

- **scalar operators** (``*``, ``/``, ``^`` instead of the broadcasting ``.*``, ``./``, ``.^``: every expression is
  a scalar);
- **constants in the field's precision**: every numeric subexpression that is not an integer (``pi``, ``E``,
  ``sqrt(2)``, ``2*pi``, rationals, floats) is folded to ONE float literal, written ``Float32(...)`` for
  ``dtype="float32"``, so nothing promotes a Float32 state to Float64 (``sqrt(2)`` or ``2*pi`` in Julia are
  Float64); integer literals stay integers (``2 * u[1]``, ``u[1] ^ 3``, ``x / 3`` keep the type of ``u``);
- **NaN instead of DomainError**: Julia's ``sqrt``, ``log``, ``sin`` (at ``Inf``), ``asin``... throw
  ``DomainError`` outside their domain and ``x ^ 1.5`` throws for ``x < 0``, where PyTorch and JAX return NaN and
  the step controller rejects the step. Those calls are written ``NaNMath.sqrt``, ``NaNMath.log``, ...,
  ``NaNMath.pow(x, y)`` for every power whose exponent is not an integer (NaNMath.jl, as Symbolics.jl's
  ``build_function(...; nanmath = true)``; ForwardDiff and ReverseDiff differentiate it through DiffRules, Zygote
  through ChainRules' NaNMath rules). Integer powers keep ``^``.

A constant component ``c`` is written ``zero(u[1]) + c`` in the out-of-place vector so its element type follows
``u`` (Dual numbers, tracked reals).

Neural fields (:class:`~crossode.MLPRHS`): the flat layout is, per layer, ``W`` of shape ``(out, in)`` flattened
row-major, then ``b``. Julia's ``reshape`` is column-major, so ``W = transpose(reshape(p[a:b], in, out))``:
``reshape`` puts the row-major element ``W[i, j]`` (0-based offset ``i*in + j``) at ``R[j+1, i+1]``, and the lazy
``transpose`` reads it back as ``(out, in)`` without a copy (BLAS multiplies by a transposed matrix directly;
ReverseDiff and Zygote have rules for ``transpose``). ``p[a:b]`` (a copy) rather than ``view`` keeps ReverseDiff
and GPU arrays happy. The activation is broadcast on hidden layers only, matching :mod:`crossode._rhs`.
``features = "cube"`` is ``X = u .* u .* u``; ``time_input`` keeps the first layer's ``(in, out)`` reshape ``R1``
and splits it into the state columns ``W1 = transpose(R1[1:n, :])`` and the time column ``w1t = R1[n + 1, :]``:
``z1 = W1 * X .+ (b1 .+ t .* w1t)`` (= ``W_1 [phi(y), t] + b_1``).

CNF fields (:class:`~crossode.CNFRHS`, state ``[x; logp]`` per sample): the network as for an MLP (same layout and
time column) on ``X = U[1:d, :]`` with ``U = reshape(u, d + 1, B)`` (``B = 1`` for one state), its derivative
``s{l} = s'(z{l})`` next to each hidden activation (:data:`ACTIVATION_DERIVATIVE_CODE`), and the exact trace by
forward tangents, one per input direction ``j``: ``v1_j = s1 .* W1[:, j]``, ``v{l}_j = s{l} .* (W{l} * v{l-1}_j)``,
the last layer's ``W{L} * v{L-1}_j`` is column ``j`` of every sample's Jacobian, so
``tr = sum_j (W{L} * v{L-1}_j)[j:j, :]`` (a ``(1, B)`` row); the field returns ``vec(vcat(G, -tr))``. Plain array
code, differentiable by Zygote and ReverseDiff (second derivatives included); out of place only.

Batches (``batch = B``): the state is the neutral ``(batch, n)`` array flattened row-major into ONE vector of length
``B n`` (trajectory ``b`` at ``u[(b-1) n + 1 : b n]``), so OrdinaryDiffEq solves the batch as one system with the
error norm over all its entries, as PyTorch and JAX do. MLPs reshape it to the ``(n, B)`` matrix
``U = reshape(u, n, B)`` (column-major: column ``b`` is trajectory ``b``), apply every layer to all columns at once
and return ``vec(...)``; symbolic fields evaluate their scalar expressions per trajectory (in place: a loop over the
offsets ``o = (b-1) n``; out of place: ``reduce(vcat, ...)`` over the trajectories).
"""

from __future__ import annotations

import numpy as np
import sympy
from sympy.printing.julia import JuliaCodePrinter
from sympy.printing.precedence import precedence

from ..._cnf import CNFRHS
from ..._errors import InvalidInputError
from ..._rhs import MLPRHS, AbstractRHS, SymbolicRHS

__all__ = [
    "julia_source",
    "symbolic_source",
    "mlp_source",
    "cnf_source",
    "mlp_layout",
    "julia_expr",
    "fold_constants",
    "ACTIVATION_CODE",
    "ACTIVATION_DERIVATIVE_CODE",
    "NANMATH_FUNCTIONS",
    "DTYPES",
]

DTYPES = ("float64", "float32")

ACTIVATION_CODE: dict[str, str] = {
    "tanh": "tanh.({z})",
    "relu": "max.({z}, zero(eltype({z})))",
    "softplus": "log1p.(exp.(-abs.({z}))) .+ max.({z}, zero(eltype({z})))",  # = logaddexp(0, z), stable
    "sigmoid": "inv.(one(eltype({z})) .+ exp.(-{z}))",
    "identity": "{z}",
}
"""Julia code of each :data:`crossode._rhs.ACTIVATIONS` entry, broadcast over the vector ``{z}``."""

ACTIVATION_DERIVATIVE_CODE: dict[str, str] = {
    "tanh": "one(eltype({h})) .- {h} .* {h}",  # from h = tanh(z)
    "softplus": "inv.(one(eltype({z})) .+ exp.(-{z}))",  # sigmoid(z)
    "sigmoid": "{h} .* (one(eltype({h})) .- {h})",  # from h = sigmoid(z)
}
"""Julia code of ``s'(z)`` for the CNF activations (from ``{z}`` or from the activation's value ``{h}``); identity's
``s' = 1`` is left out of the products."""

NANMATH_FUNCTIONS: dict[str, str] = {
    name: f"NaNMath.{name}" for name in ("sin", "cos", "tan", "asin", "acos", "acosh", "atanh", "log")
}
"""SymPy functions printed as their NaNMath.jl versions (Base's throw ``DomainError`` where NaNMath returns NaN:
``sin``/``cos``/``tan`` at ``Inf``, ``asin``/``acos``/``atanh`` outside ``[-1, 1]``, ``acosh`` below 1, ``log``
below 0; NaNMath 1.1 ``src/NaNMath.jl``). Square roots and non-integer powers are handled in ``_print_Pow``."""


def _float_literal(value: float, dtype: str) -> str:
    """A float literal of ``dtype``: the shortest decimal of the float64 value, or of the float32 rounding of it
    wrapped in ``Float32(...)`` (what PyTorch and JAX use when a Python float meets a float32 tensor)."""
    if not np.isfinite(value):
        raise InvalidInputError(f"non-finite constant {value!r} in a vector field")
    if dtype == "float32":
        single = np.float32(value)
        if not np.isfinite(single):
            raise InvalidInputError(f"the constant {value!r} overflows float32")
        return f"Float32({str(single)})"  # NumPy prints the shortest decimal that round-trips in float32
    return repr(float(value))


def _number(expr: sympy.Expr) -> sympy.Float:
    value = sympy.N(expr, 30)
    if not value.is_real or not value.is_finite:
        raise InvalidInputError(f"the constant {expr} in a vector field is not a finite real number")
    return sympy.Float(value, 30)


def fold_constants(expr: sympy.Expr) -> sympy.Expr:
    """Replace every maximal numeric subexpression that is not an integer or a rational by one SymPy Float.

    ``pi``, ``E``, ``sqrt(2)``, ``2*pi``, ``exp(1)``... become floats (printed in the field's precision); integers and
    rationals are left for the printer (integers stay Julia ``Int`` literals, rationals become float literals).
    Raises :class:`~crossode.InvalidInputError` for a constant that is not a finite real number (``sqrt(-2)``).
    """
    if expr.is_Integer or expr.is_Rational or expr.is_Float:
        return expr
    if expr.is_number:
        return _number(expr)
    if expr.is_Atom or not expr.args:
        return expr
    return expr.func(*[fold_constants(a) for a in expr.args])


class _ScalarJuliaPrinter(JuliaCodePrinter):
    """SymPy's Julia printer for scalar code in one precision: float literals, NaN-returning domain functions."""

    def __init__(self, dtype: str):
        super().__init__({"inline": True, "user_functions": dict(NANMATH_FUNCTIONS)})
        self._dtype = dtype

    def _print_Float(self, expr):
        return _float_literal(float(expr), self._dtype)

    def _print_Rational(self, expr):
        if expr.q == 1:
            return str(expr.p)
        return _float_literal(expr.p / expr.q, self._dtype)

    def _print_Half(self, expr):
        return _float_literal(0.5, self._dtype)

    def _print_Exp1(self, expr):  # only reached if folding was skipped; folded constants are floats
        return "Base.MathConstants.e"

    def _print_Pi(self, expr):
        return "pi"

    def _print_Pow(self, expr):
        base, exp = expr.base, expr.exp
        prec = precedence(expr)
        if exp.is_Integer:
            if exp == -1:
                return f"1 / {self.parenthesize(base, prec)}"
            return f"{self.parenthesize(base, prec)} ^ {self.parenthesize(exp, prec)}"
        if exp == sympy.Rational(1, 2):
            return f"NaNMath.sqrt({self._print(base)})"
        if exp == sympy.Rational(-1, 2):
            return f"1 / NaNMath.sqrt({self._print(base)})"
        return f"NaNMath.pow({self._print(base)}, {self._print(exp)})"


_DOTTED = ((" .* ", " * "), (" ./ ", " / "), (" .^ ", " ^ "))


def julia_expr(expr: sympy.Expr, dtype: str = "float64") -> str:
    """One SymPy expression (already written in ``u[i]``, ``p[j]``, ``t``) as scalar Julia code in ``dtype``."""
    text = _ScalarJuliaPrinter(dtype).doprint(fold_constants(sympy.sympify(expr)))
    for dotted, plain in _DOTTED:  # every operand is a scalar, so broadcasting and plain operators agree
        text = text.replace(dotted, plain)
    return text


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InvalidInputError(f"`dtype` must be 'float64' or 'float32'; got {dtype!r}.")


def _let_block(header: list[str], oop_body: list[str], iip_body: list[str]) -> str:
    """The generated expression: comment header, then ``let`` defining ``rhs_oop``/``rhs_iip!`` with these bodies
    (lines indented for the function body) and evaluating to ``(oop = rhs_oop, iip = rhs_iip!)``."""
    lines = [
        *[f"# {h}" for h in header],
        "let",
        "    function rhs_oop(u, p, t)",
        *oop_body,
        "    end",
        "    function rhs_iip!(du, u, p, t)",
        *iip_body,
        "        return nothing",
        "    end",
        "    (oop = rhs_oop, iip = rhs_iip!)",
        "end",
        "",
    ]
    return "\n".join(lines)


def symbolic_source(rhs: SymbolicRHS, dtype: str = "float64", batch: int | None = None) -> str:
    """Julia source of a symbolic field (see the module docstring); ``batch``: the number of trajectories of a
    batched problem (state vector of length ``batch * n_states``), ``None`` for one state."""
    _check_dtype(dtype)
    n = rhs.n_states

    def code_with(state: str):
        subs = {s: sympy.Symbol(state.format(i=i)) for i, s in enumerate(rhs.state_symbols, start=1)}
        subs.update({s: sympy.Symbol(f"p[{j}]") for j, s in enumerate(rhs.param_symbols, start=1)})
        subs[rhs.t_symbol] = sympy.Symbol("t")
        exprs = [sympy.sympify(e).xreplace(subs) for e in rhs.exprs]
        return exprs, [julia_expr(e, dtype) for e in exprs]

    states = ", ".join(f"u[{i}] = {s}" for i, s in enumerate(rhs.states, start=1))
    params = ", ".join(f"p[{j}] = {s}" for j, s in enumerate(rhs.params, start=1)) or "none"
    header = [
        f"crossode generated vector field: symbolic, {n} states, {len(rhs.params)} parameters, {dtype}"
        + (f", batch of {batch} (state vector of length {batch * n})" if batch is not None else ""),
        f"states: {states}",
        f"parameters: {params}",
    ]
    if batch is None:
        exprs, code = code_with("u[{i}]")
        oop_items = [f"zero(u[1]) + {c}" if e.is_number else c for e, c in zip(exprs, code)]
        oop = ["        return [", *[f"            {c}," for c in oop_items], "        ]"]
        iip = [f"        du[{i}] = {c}" for i, c in enumerate(code, start=1)]
        return _let_block(header, oop, iip)
    exprs, code = code_with("v[{i}]")  # out of place: one trajectory v = u[(b-1) n + 1 : b n]
    oop_items = [f"zero(v[1]) + {c}" if e.is_number else c for e, c in zip(exprs, code)]
    oop = [
        "        one_trajectory(v) = [",
        *[f"            {c}," for c in oop_items],
        "        ]",
        f"        return reduce(vcat, [one_trajectory(u[((b - 1) * {n} + 1):(b * {n})]) for b in 1:{batch}])",
    ]
    _, code = code_with("u[o + {i}]")  # in place: offset o = (b-1) n
    iip = [f"        for b in 1:{batch}", f"            o = (b - 1) * {n}",
           *[f"            du[o + {i}] = {c}" for i, c in enumerate(code, start=1)], "        end"]
    return _let_block(header, oop, iip)


def mlp_layout(rhs: MLPRHS) -> list[tuple[tuple[int, int], tuple[int, int], int, int]]:
    """Per layer: ``((w_start, w_stop), (b_start, b_stop), out, in)`` as 1-based inclusive Julia ranges."""
    layout, k = [], 0
    for out, inp in rhs.shapes:
        w = (k + 1, k + out * inp)
        k += out * inp
        b = (k + 1, k + out)
        k += out
        layout.append((w, b, out, inp))
    return layout


def mlp_source(rhs: MLPRHS, dtype: str = "float64", batch: int | None = None) -> str:
    """Julia source of an MLP field (see the module docstring for the layout, the input map and batches)."""
    _check_dtype(dtype)
    act = ACTIVATION_CODE[rhs.activation]
    layout = mlp_layout(rhs)
    n = rhs.n_states
    body, h = [], "u"
    if batch is not None:
        body.append(f"        U = reshape(u, {n}, {batch})  # column b = trajectory b")
        h = "U"
    if rhs.features == "cube":
        body.append(f"        X = {h} .* {h} .* {h}  # features: y^3")
        h = "X"
    out_wrap = "vec({})" if batch is not None else "{}"
    for layer, ((w0, w1), (b0, b1), out, inp) in enumerate(layout, start=1):
        if layer == 1 and rhs.time_input:
            body.append(f"        R1 = reshape(p[{w0}:{w1}], {inp}, {out})  # column i = row i of W1 ({out}, {inp})")
            body.append(f"        W1 = transpose(R1[1:{n}, :])  # ({out}, {n}): the state columns")
            body.append(f"        w1t = R1[{n + 1}, :]  # ({out},): the time column")
            bias = f"(b{layer} .+ t .* w1t)"
        else:
            body.append(f"        W{layer} = transpose(reshape(p[{w0}:{w1}], {inp}, {out}))  # ({out}, {inp}) row-major")
            bias = f"b{layer}"
        body.append(f"        b{layer} = p[{b0}:{b1}]")
        if layer < len(layout):
            body.append(f"        z{layer} = W{layer} * {h} .+ {bias}")
            body.append(f"        h{layer} = {act.format(z=f'z{layer}')}")
            h = f"h{layer}"
        else:
            body.append(f"        return {out_wrap.format(f'W{layer} * {h} .+ {bias}')}")
    extras = (", time input" if rhs.time_input else "") + (f", {rhs.features} features" if rhs.features != "identity"
                                                           else "")
    header = [
        f"crossode generated vector field: MLP {'-'.join(map(str, rhs.widths))} {rhs.activation}{extras}, "
        f"{rhs.n_params} parameters, {dtype}" + (f", batch of {batch}" if batch is not None else ""),
        "flat layout per layer: W (out, in) row-major, then b; Julia reshape is column-major, hence transpose",
    ]
    return _let_block(header, body, ["        du .= rhs_oop(u, p, t)"])


def cnf_source(rhs: CNFRHS, dtype: str = "float64", batch: int | None = None) -> str:
    """Julia source of a CNF field (see the module docstring: network, tangents, trace; out of place)."""
    _check_dtype(dtype)
    layout = mlp_layout(rhs.net)
    d, m, n_layers = rhs.dims, rhs.n_states, len(layout)
    act = ACTIVATION_CODE[rhs.activation]
    deriv = ACTIVATION_DERIVATIVE_CODE.get(rhs.activation)
    body = [f"        U = reshape(u, {m}, {batch or 1})  # column b = sample b: [x; logp]",
            f"        X = U[1:{d}, :]"]
    h = "X"
    for layer, ((w0, w1), (b0, b1), out, inp) in enumerate(layout, start=1):
        if layer == 1 and rhs.time_input:
            body.append(f"        R1 = reshape(p[{w0}:{w1}], {inp}, {out})  # column i = row i of W1 ({out}, {inp})")
            body.append(f"        W1 = transpose(R1[1:{d}, :])  # ({out}, {d}): the state columns")
            body.append(f"        w1t = R1[{d + 1}, :]  # ({out},): the time column")
            bias = f"(b{layer} .+ t .* w1t)"
        else:
            body.append(f"        W{layer} = transpose(reshape(p[{w0}:{w1}], {inp}, {out}))  "
                        f"# ({out}, {inp}) row-major")
            bias = f"b{layer}"
        body.append(f"        b{layer} = p[{b0}:{b1}]")
        body.append(f"        z{layer} = W{layer} * {h} .+ {bias}")
        if layer < n_layers:
            body.append(f"        h{layer} = {act.format(z=f'z{layer}')}")
            if deriv is not None:
                body.append(f"        s{layer} = {deriv.format(z=f'z{layer}', h=f'h{layer}')}  # s'(z{layer})")
            h = f"h{layer}"
    # forward tangents d z_l / d x_j, one per direction j (identity activation: no s' factor)
    cols = []
    for j in range(1, d + 1):
        prev = f"W1[:, {j}]"
        for layer in range(1, n_layers):
            pre = prev if layer == 1 else f"(W{layer} * {prev})"
            body.append(f"        v{layer}_{j} = " + (f"s{layer} .* {pre}" if deriv is not None else pre))
            prev = f"v{layer}_{j}"
        col = prev if n_layers == 1 else f"(W{n_layers} * {prev})"
        cols.append(f"{col}[{j}:{j}, :]")  # row j of a (d, B) matrix, or of a d-vector (then 1 x 1)
    body.append(f"        tr = zero(X[1:1, :]) .+ " + " .+ ".join(cols) + "  # tr(dg/dx) per sample, (1, B)")
    body.append(f"        return vec(vcat(z{n_layers}, .-tr))")
    extra = ", time input" if rhs.time_input else ""
    header = [
        f"crossode generated vector field: CNF in R^{d}, state [x; logp], MLP {'-'.join(map(str, rhs.widths))} "
        f"{rhs.activation}{extra}, {rhs.n_params} parameters, {dtype}" + (f", batch of {batch}" if batch else ""),
        "dx/dt = g(t, x), dlogp/dt = -tr(dg/dx) by forward tangents; layout per layer: W (out, in) row-major, then b",
    ]
    return _let_block(header, body, ["        du .= rhs_oop(u, p, t)"])


def julia_source(rhs: AbstractRHS, dtype: str = "float64", batch: int | None = None) -> str:
    """Julia source text for ``rhs`` (symbolic, MLP or CNF) in precision ``dtype``, for one state or a ``batch``."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise InvalidInputError(f"`batch` must be a positive integer or None; got {batch!r}.")
    if isinstance(rhs, SymbolicRHS):
        return symbolic_source(rhs, dtype, batch)
    if isinstance(rhs, MLPRHS):
        return mlp_source(rhs, dtype, batch)
    if isinstance(rhs, CNFRHS):
        return cnf_source(rhs, dtype, batch)
    raise InvalidInputError(f"the Julia backend cannot generate code for {type(rhs).__name__}")


def numpy_mlp_from_layout(rhs: MLPRHS, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the generated Julia code computes for the weights, emulated in NumPy (column-major reshape).

    Used by the tests to check the Julia layout against :meth:`MLPRHS.unflatten` without Julia.
    """
    out = []
    for (w0, w1), (b0, b1), o, i in mlp_layout(rhs):
        r = np.reshape(np.asarray(p)[w0 - 1 : w1], (i, o), order="F")  # Julia reshape(p[w0:w1], in, out)
        out.append((r.T.copy(), np.asarray(p)[b0 - 1 : b1].copy()))  # transpose
    return out

"""Code generation: a neutral vector field -> Julia source text for ``CrossODE.build`` (pure Python, no Julia).

The generated source is ONE Julia expression, a ``let`` block that evaluates to a ``NamedTuple``
``(oop = rhs_oop, iip = rhs_iip!)`` with both forms of the same field::

    rhs_oop(u, p, t)        -> new vector        (out-of-place: Zygote VJPs, GPU arrays)
    rhs_iip!(du, u, p, t)   -> writes du; nothing (in-place: ReverseDiff/Enzyme VJPs, no allocation)

``CrossODE.build`` evaluates it with ``include_string`` in a fresh anonymous module (see ``julia/src/CrossODE.jl``).

Symbolic fields (:class:`~crossode.SymbolicRHS`): every state symbol is replaced by ``u[i]`` and every parameter by
``p[j]`` (1-based, in the neutral order) *before* printing, so user names never reach Julia (no clash with Julia
keywords or Base names). Printing uses SymPy's Julia printer with scalar operators (``*``, ``/``, ``^`` instead of
the broadcasting ``.*``, ``./``, ``.^``: every expression is a scalar), rationals and floats as float literals
(``Float32(...)`` literals for ``dtype="float32"`` so nothing promotes to Float64), ``pi`` and
``Base.MathConstants.e`` for the constants. A constant component ``c`` is written ``zero(u[1]) + c`` in the
out-of-place vector so its element type follows ``u`` (Dual numbers, tracked reals).

Neural fields (:class:`~crossode.MLPRHS`): the flat layout is, per layer, ``W`` of shape ``(out, in)`` flattened
row-major, then ``b``. Julia's ``reshape`` is column-major, so ``W = permutedims(reshape(p[a:b], in, out))``:
``reshape`` puts the row-major element ``W[i, j]`` (0-based offset ``i*in + j``) at ``R[j+1, i+1]``, and
``permutedims`` transposes it back to ``(out, in)``. ``p[a:b]`` (a copy) rather than ``view`` keeps ReverseDiff and
GPU arrays happy. The activation is broadcast on hidden layers only, matching :mod:`crossode._rhs`.
"""

from __future__ import annotations

import numpy as np
import sympy
from sympy.printing.julia import JuliaCodePrinter

from ..._errors import InvalidInputError
from ..._rhs import MLPRHS, AbstractRHS, SymbolicRHS

__all__ = ["julia_source", "symbolic_source", "mlp_source", "julia_expr", "ACTIVATION_CODE", "DTYPES"]

DTYPES = ("float64", "float32")

ACTIVATION_CODE: dict[str, str] = {
    "tanh": "tanh.({z})",
    "relu": "max.({z}, zero(eltype({z})))",
    "softplus": "log1p.(exp.(-abs.({z}))) .+ max.({z}, zero(eltype({z})))",  # = logaddexp(0, z), stable
    "sigmoid": "inv.(one(eltype({z})) .+ exp.(-{z}))",
    "identity": "{z}",
}
"""Julia code of each :data:`crossode._rhs.ACTIVATIONS` entry, broadcast over the vector ``{z}``."""


def _float_literal(value: float, dtype: str) -> str:
    text = repr(float(value))
    if "inf" in text or "nan" in text:
        raise InvalidInputError(f"non-finite constant {value!r} in a vector field")
    return f"Float32({text})" if dtype == "float32" else text


class _ScalarJuliaPrinter(JuliaCodePrinter):
    """SymPy's Julia printer for scalar code: float literals for rationals/floats, ``Base.MathConstants.e``."""

    def __init__(self, dtype: str):
        super().__init__({"inline": True})
        self._dtype = dtype

    def _print_Float(self, expr):
        return _float_literal(float(expr), self._dtype)

    def _print_Rational(self, expr):
        if expr.q == 1:
            return str(expr.p)
        return _float_literal(expr.p / expr.q, self._dtype)

    def _print_Half(self, expr):
        return _float_literal(0.5, self._dtype)

    def _print_Exp1(self, expr):
        return "Base.MathConstants.e"

    def _print_Pi(self, expr):
        return "pi"


_DOTTED = ((" .* ", " * "), (" ./ ", " / "), (" .^ ", " ^ "))


def julia_expr(expr: sympy.Expr, dtype: str = "float64") -> str:
    """One SymPy expression (already written in ``u[i]``, ``p[j]``, ``t``) as scalar Julia code."""
    text = _ScalarJuliaPrinter(dtype).doprint(expr)
    for dotted, plain in _DOTTED:  # every operand is a scalar, so broadcasting and plain operators agree
        text = text.replace(dotted, plain)
    return text


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise InvalidInputError(f"`dtype` must be 'float64' or 'float32'; got {dtype!r}.")


def symbolic_source(rhs: SymbolicRHS, dtype: str = "float64") -> str:
    """Julia source of a symbolic field (see the module docstring)."""
    _check_dtype(dtype)
    subs = {s: sympy.Symbol(f"u[{i}]") for i, s in enumerate(rhs.state_symbols, start=1)}
    subs.update({s: sympy.Symbol(f"p[{j}]") for j, s in enumerate(rhs.param_symbols, start=1)})
    subs[rhs.t_symbol] = sympy.Symbol("t")
    exprs = [sympy.sympify(e).xreplace(subs) for e in rhs.exprs]
    code = [julia_expr(e, dtype) for e in exprs]
    oop_items = [f"zero(u[1]) + {c}" if e.is_number else c for e, c in zip(exprs, code)]
    states = ", ".join(f"u[{i}] = {s}" for i, s in enumerate(rhs.states, start=1))
    params = ", ".join(f"p[{j}] = {s}" for j, s in enumerate(rhs.params, start=1)) or "none"
    lines = [
        f"# crossode generated vector field: symbolic, {rhs.n_states} states, {len(rhs.params)} parameters, {dtype}",
        f"# states: {states}",
        f"# parameters: {params}",
        "let",
        "    function rhs_oop(u, p, t)",
        "        return [",
        *[f"            {c}," for c in oop_items],
        "        ]",
        "    end",
        "    function rhs_iip!(du, u, p, t)",
        *[f"        du[{i}] = {c}" for i, c in enumerate(code, start=1)],
        "        return nothing",
        "    end",
        "    (oop = rhs_oop, iip = rhs_iip!)",
        "end",
        "",
    ]
    return "\n".join(lines)


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


def mlp_source(rhs: MLPRHS, dtype: str = "float64") -> str:
    """Julia source of an MLP field (see the module docstring for the layout)."""
    _check_dtype(dtype)
    act = ACTIVATION_CODE[rhs.activation]
    layout = mlp_layout(rhs)
    body, h = [], "u"
    for layer, ((w0, w1), (b0, b1), out, inp) in enumerate(layout, start=1):
        body.append(f"        W{layer} = permutedims(reshape(p[{w0}:{w1}], {inp}, {out}))  # ({out}, {inp}) row-major")
        body.append(f"        b{layer} = p[{b0}:{b1}]")
        if layer < len(layout):
            body.append(f"        z{layer} = W{layer} * {h} .+ b{layer}")
            body.append(f"        h{layer} = {act.format(z=f'z{layer}')}")
            h = f"h{layer}"
        else:
            body.append(f"        return W{layer} * {h} .+ b{layer}")
    lines = [
        f"# crossode generated vector field: MLP {'-'.join(map(str, rhs.widths))} {rhs.activation}, "
        f"{rhs.n_params} parameters, {dtype}",
        "# flat layout per layer: W (out, in) row-major, then b; Julia reshape is column-major, hence permutedims",
        "let",
        "    function rhs_oop(u, p, t)",
        *body,
        "    end",
        "    function rhs_iip!(du, u, p, t)",
        "        du .= rhs_oop(u, p, t)",
        "        return nothing",
        "    end",
        "    (oop = rhs_oop, iip = rhs_iip!)",
        "end",
        "",
    ]
    return "\n".join(lines)


def julia_source(rhs: AbstractRHS, dtype: str = "float64") -> str:
    """Julia source text for ``rhs`` (symbolic or MLP) in precision ``dtype``."""
    if isinstance(rhs, SymbolicRHS):
        return symbolic_source(rhs, dtype)
    if isinstance(rhs, MLPRHS):
        return mlp_source(rhs, dtype)
    raise InvalidInputError(f"the Julia backend cannot generate code for {type(rhs).__name__}")


def numpy_mlp_from_layout(rhs: MLPRHS, p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the generated Julia code computes for the weights, emulated in NumPy (column-major reshape).

    Used by the tests to check the Julia layout against :meth:`MLPRHS.unflatten` without Julia.
    """
    out = []
    for (w0, w1), (b0, b1), o, i in mlp_layout(rhs):
        r = np.reshape(np.asarray(p)[w0 - 1 : w1], (i, o), order="F")  # Julia reshape(p[w0:w1], in, out)
        out.append((r.T.copy(), np.asarray(p)[b0 - 1 : b1].copy()))  # permutedims
    return out

"""Problem -> JAX vector field ``f(t, y, p) -> dy/dt`` (``y`` shape ``(n,)``, ``p`` the flat float64 parameters).

- linear :class:`~crossode.SymbolicRHS` (``rhs.linear_matrix``): ``A(p) @ y``, one matrix product;
- other :class:`~crossode.SymbolicRHS`: SymPy ``lambdify`` against a ``jax.numpy`` namespace; the components are
  broadcast (constants come back as Python numbers) and stacked with ``jnp.stack``.
- :class:`~crossode.MLPRHS`: ``W_L s(... s(W_1 y + b_1) ...) + b_L`` computed from the flat parameter vector in the
  documented layout (``MLPRHS.unflatten``), so ``dparams`` comes back in the neutral layout.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from ..._rhs import MLPRHS, SymbolicRHS

__all__ = ["make_vector_field", "JNP_NAMESPACE"]

_UNARY = (
    "sin", "cos", "tan", "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "arcsinh", "arccosh", "arctanh",
    "exp", "expm1", "log", "log1p", "log2", "log10", "sqrt", "cbrt", "abs", "sign", "floor", "ceil",
)

JNP_NAMESPACE: dict[str, Callable] = {name: getattr(jnp, name) for name in _UNARY}
"""Function names SymPy's printers emit, mapped to ``jax.numpy`` (the ``math`` module is the fallback)."""
JNP_NAMESPACE.update(
    {
        "Abs": jnp.abs,
        "asin": jnp.arcsin, "acos": jnp.arccos, "atan": jnp.arctan, "atan2": jnp.arctan2,
        "asinh": jnp.arcsinh, "acosh": jnp.arccosh, "atanh": jnp.arctanh,
        "Heaviside": lambda x, h0=0.5: jnp.heaviside(x, h0),
        "Min": jnp.minimum, "Max": jnp.maximum, "min": jnp.minimum, "max": jnp.maximum,
        "pow": jnp.power, "power": jnp.power, "arctan2": jnp.arctan2,
        "select": jnp.select, "where": jnp.where, "logical_and": jnp.logical_and, "logical_or": jnp.logical_or,
        "exp2": jnp.exp2, "hypot": jnp.hypot, "erf": jax.scipy.special.erf, "gamma": lambda x: jnp.exp(
            jax.scipy.special.gammaln(x)),
        "pi": jnp.pi, "e": jnp.e, "E": jnp.e,
    }
)

_ACTIVATIONS: dict[str, Callable] = {
    "tanh": jnp.tanh,
    "relu": lambda z: jnp.maximum(z, 0.0),
    "softplus": lambda z: jnp.logaddexp(0.0, z),
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda z: z,
}


def make_vector_field(problem) -> Callable:
    """The problem's vector field as a pure JAX function ``f(t, y, p)`` (``y``: ``(n,)``; ``p``: flat params)."""
    rhs = problem.rhs
    n = rhs.n_states
    if isinstance(rhs, SymbolicRHS) and rhs.linear_matrix is not None:
        # f = A(p) y: one matrix product instead of n*n scalar products (XLA does not re-fuse them well).
        flat = list(rhs.linear_matrix)
        pos = {sym: i for i, sym in enumerate(rhs.param_symbols)}
        if all(e in pos or e.is_number for e in flat):
            # Every entry is one parameter or a constant (e.g. the zoo's `linear`): A is one gather from p.
            idx = np.array([pos.get(e, 0) for e in flat]).reshape(n, n)
            is_param = np.array([e in pos for e in flat]).reshape(n, n)
            const = np.array([0.0 if e in pos else float(e) for e in flat]).reshape(n, n)

            def f_gather(t, y, p):
                return jnp.where(is_param, p[idx], const).astype(y.dtype) @ y

            return f_gather
        entries = sympy.lambdify((rhs.param_symbols,), flat, modules=[JNP_NAMESPACE, "math"])
        n_p = len(rhs.param_names)

        def f_linear(t, y, p):
            vals = entries([p[i] for i in range(n_p)])
            a = jnp.stack([jnp.asarray(v, dtype=y.dtype) for v in vals]).reshape(n, n)
            return a @ y

        return f_linear
    if isinstance(rhs, SymbolicRHS):
        fn = rhs.lambdify(JNP_NAMESPACE)

        def f(t, y, p):
            ys = [y[i] for i in range(n)]
            ps = [p[i] for i in range(len(rhs.param_names))]
            comps = fn(t, ys, ps)
            comps = [jnp.asarray(c, dtype=y.dtype) for c in comps]
            return jnp.stack(jnp.broadcast_arrays(*comps))

        return f
    if isinstance(rhs, MLPRHS):
        act = _ACTIVATIONS[rhs.activation]

        def f(t, y, p):
            layers = rhs.unflatten(p)
            h = y
            for w, b in layers[:-1]:
                h = act(w @ h + b)
            w, b = layers[-1]
            return w @ h + b

        return f
    raise TypeError(f"unsupported rhs type {type(rhs).__name__}")

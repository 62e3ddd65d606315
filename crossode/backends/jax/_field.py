"""Problem -> JAX vector field ``f(t, y, p) -> dy/dt`` (``y``: one state ``(n,)`` or a batch ``(batch, n)``; ``p``
the flat parameters).

- linear :class:`~crossode.SymbolicRHS` (``rhs.linear_matrix``): ``A(p) @ y`` (batch: ``y @ A(p)^T``), one matrix
  product;
- other :class:`~crossode.SymbolicRHS`: SymPy ``lambdify`` against a ``jax.numpy`` namespace on the components
  ``y[..., i]``; the components are broadcast to the batch (constants come back as Python numbers) and stacked on
  the last axis.
- :class:`~crossode.MLPRHS`: ``W_L s(... s(W_1 u + b_1) ...) + b_L`` with ``u = phi(y)`` (``cube``: ``y*y*y``) or,
  with ``time_input``, ``W_1 u + b_1`` computed as ``W1[:, :n] phi(y) + (b_1 + t W1[:, n])`` (= ``W_1 [phi(y), t]``),
  from the flat parameter vector in the documented layout (``MLPRHS.unflatten``), so ``dparams`` comes back in the
  neutral layout. A batch is one matrix product per layer (``h @ W^T``).
- :class:`~crossode.CNFRHS` (state ``[x, logp]``): the network ``g`` as above on ``x = y[..., :d]`` and
  ``-tr(dg/dx)`` from JAX's own forward mode: ``jax.linearize`` of the batched network at ``x``, applied to the ``d``
  unit tangents ``e_j`` (each sample's Jacobian column ``j``; samples are independent), ``tr = sum_j col_j[..., j]``.
  Differentiating it (Direct, Backsolve, MALI) is reverse-over-forward mode; no hand-written derivative is shared
  with the NumPy reference.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import sympy

from ..._cnf import CNFRHS
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
    """The problem's vector field as a pure JAX function ``f(t, y, p)`` (``y``: ``(n,)`` or ``(batch, n)``; ``p``:
    flat params)."""
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
                a = jnp.where(is_param, p[idx], const).astype(y.dtype)
                return a @ y if y.ndim == 1 else y @ a.T

            return f_gather
        entries = sympy.lambdify((rhs.param_symbols,), flat, modules=[JNP_NAMESPACE, "math"])
        n_p = len(rhs.param_names)

        def f_linear(t, y, p):
            vals = entries([p[i] for i in range(n_p)])
            a = jnp.stack([jnp.asarray(v, dtype=y.dtype) for v in vals]).reshape(n, n)
            return a @ y if y.ndim == 1 else y @ a.T

        return f_linear
    if isinstance(rhs, SymbolicRHS):
        fn = rhs.lambdify(JNP_NAMESPACE)

        def f(t, y, p):
            ys = [y[..., i] for i in range(n)]
            ps = [p[i] for i in range(len(rhs.param_names))]
            comps = fn(t, ys, ps)
            lead = y.shape[:-1]
            return jnp.stack([jnp.broadcast_to(jnp.asarray(c, dtype=y.dtype), lead) for c in comps], axis=-1)

        return f
    if isinstance(rhs, MLPRHS):
        act = _ACTIVATIONS[rhs.activation]
        time_input, cube = rhs.time_input, rhs.features == "cube"

        def linear(w, h, b):
            return w @ h + b if h.ndim == 1 else h @ w.T + b

        def f(t, y, p):
            layers = rhs.unflatten(p)
            h = y * y * y if cube else y
            w, b = layers[0]
            if time_input:
                h = linear(w[:, :n], h, b + jnp.asarray(t, w.dtype) * w[:, n])
            else:
                h = linear(w, h, b)
            for w, b in layers[1:]:
                h = linear(w, act(h), b)
            return h

        return f
    if isinstance(rhs, CNFRHS):
        return _cnf_field(rhs)
    raise TypeError(f"unsupported rhs type {type(rhs).__name__}")


def _cnf_field(rhs: CNFRHS) -> Callable:
    act = _ACTIVATIONS[rhs.activation]
    d, time_input = rhs.dims, rhs.time_input

    def net(t, x, p):
        layers = rhs.unflatten(p)
        w, b = layers[0]
        bias = b + jnp.asarray(t, w.dtype) * w[:, d] if time_input else b
        h = x @ w[:, :d].T + bias
        for w, b in layers[1:]:
            h = act(h) @ w.T + b
        return h

    def f(t, y, p):
        x = y[..., :d]
        g, lin = jax.linearize(lambda x_: net(t, x_, p), x)
        tr = sum(lin(jnp.zeros_like(x).at[..., j].set(1.0))[..., j] for j in range(d))
        return jnp.concatenate([g, -tr[..., None]], axis=-1)

    return f

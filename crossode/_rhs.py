"""Vector fields defined once: :class:`SymbolicRHS` (SymPy) and :class:`MLPRHS` (an MLP spec with NumPy weights).

Both give exact, float64 NumPy evaluations used by the independent reference: ``f``, ``df/dy``, ``df/dp`` and the
vector-Jacobian product ``vjp`` (``a^T df/dy``, ``a^T df/dp``), and enough structure for each backend to build the
same function natively.

Shapes: ``y`` is one state ``(n_states,)`` or a batch ``(batch, n_states)`` of independent states sharing the
parameters (any leading dimensions work); ``f`` returns the shape of ``y``, ``jac_y`` ``(..., n_states, n_states)``,
``jac_p`` ``(..., n_states, n_params)``, and ``vjp(t, y, p, a)`` returns ``(a^T df/dy`` with the shape of ``y``,
``a^T df/dp`` summed over the batch, shape ``(n_params,))``. Every batched evaluation is vectorised (one matrix
product per layer for MLPs, one array expression per component for symbolic fields).

MLP field: ``f(t, y) = W_L s(... s(W_1 u + b_1) ...) + b_L`` with the activation ``s`` on hidden layers only and the
input ``u = phi(y)`` (``features``: ``"identity"`` or ``"cube"``, ``phi(y) = y**3`` elementwise, the Onken &
Ruthotto / torchdiffeq spiral model), or ``u = [phi(y), t]`` with ``time_input=True`` (``t`` is not passed through
``phi``). ``widths = [n_states, h_1, ..., n_states]`` either way; with ``time_input`` the first layer's ``W_1`` has
``n_states + 1`` columns, the last one multiplying ``t``.

MLP flat parameter layout (the ``params`` vector of a neural problem, and the ``dparams`` every backend returns):
for each layer ``l = 1..L`` in order, the weight matrix ``W_l`` of shape ``(out_l, in_l)`` flattened row-major
(C order), then the bias ``b_l`` of shape ``(out_l,)``. Names are ``W{l}[i,j]`` and ``b{l}[i]`` with 1-based layer
numbers and 0-based indices (``W1[i,n_states]`` is the time weight of hidden unit ``i`` when ``time_input``).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._expr import check_name, parse_expression
from ._limits import MAX_PARAMS, check_mlp_size, check_symbolic_size

if TYPE_CHECKING:  # SymPy is imported where a symbolic field is built or compiled, not by `import crossode`
    import sympy

__all__ = ["AbstractRHS", "SymbolicRHS", "MLPRHS", "ACTIVATIONS", "FEATURES"]


def _stack(values, lead: tuple[int, ...]) -> np.ndarray:
    """Stack lambdified components (numbers or arrays) along a new last axis, broadcast to ``lead``."""
    if len(values) == 0:
        return np.zeros((*lead, 0))
    return np.stack([np.broadcast_to(np.asarray(v, dtype=np.float64), lead) for v in values], axis=-1)


class AbstractRHS(abc.ABC):
    """A vector field ``f(t, y, p)`` with ``n_states`` states and ``n_params`` flat parameters."""

    @property
    @abc.abstractmethod
    def n_states(self) -> int:
        """Number of states."""

    @property
    @abc.abstractmethod
    def param_names(self) -> tuple[str, ...]:
        """Names of the flat parameters, in layout order."""

    @abc.abstractmethod
    def f(self, t: float, y: np.ndarray, p: np.ndarray) -> np.ndarray:
        """``dy/dt`` as float64 NumPy, the shape of ``y`` (``(n_states,)`` or ``(batch, n_states)``)."""

    @abc.abstractmethod
    def jac_y(self, t: float, y: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Exact ``df/dy`` per state, shape ``(..., n_states, n_states)``."""

    @abc.abstractmethod
    def jac_p(self, t: float, y: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Exact ``df/dp`` per state, shape ``(..., n_states, n_params)``."""

    @abc.abstractmethod
    def vjp(self, t: float, y: np.ndarray, p: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``(a^T df/dy, a^T df/dp)`` for a cotangent ``a`` shaped like ``y``: the first shaped like ``y``,
        the second ``(n_params,)``, summed over the batch."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for tables and ``crossode list``."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the function changes (for caching references)."""


# ------------------------------------------------------------------------------------------------ symbolic


class SymbolicRHS(AbstractRHS):
    """A vector field given by SymPy expressions over named states, named parameters and ``t``.

    **Arguments:**
    - ``states``: state names (identifiers, unique).
    - ``params``: parameter names (identifiers, unique, distinct from states); their order is the flat layout.
    - ``rhs``: one expression per state, as SymPy expressions or strings. Strings are parsed without ``eval``
      (see :mod:`crossode._expr`); e.g. ``["a*x - b*x*y", "-c*y + d*x*y"]``.
    """

    def __init__(self, states: Sequence[str], params: Sequence[str], rhs: Sequence[str | sympy.Expr]):
        if isinstance(states, str) or not isinstance(states, Sequence) or len(states) == 0:
            raise InvalidInputError(f"`states` must be a non-empty list of names; got {states!r}.")
        if isinstance(params, str) or not isinstance(params, Sequence):
            raise InvalidInputError(f"`params` must be a list of names; got {params!r}.")
        states = tuple(check_name(s, "states") for s in states)
        params = tuple(check_name(s, "params") for s in params)
        for what, names in (("states", states), ("params", params)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise InvalidInputError(f"`{what}` names must be unique; repeated: {', '.join(dup)}.")
        clash = sorted(set(states) & set(params))
        if clash:
            raise InvalidInputError(f"names used both as state and parameter: {', '.join(clash)}.")
        check_symbolic_size(len(states), len(params))
        if isinstance(rhs, str) or not isinstance(rhs, Sequence) or len(rhs) != len(states):
            raise InvalidInputError(
                f"`rhs` must be a list with one expression per state ({len(states)}); got {rhs!r}."
            )
        import sympy

        # Internal symbol names (_t, _y0.., _p0..) can clash neither with user names (no leading underscore allowed)
        # nor with any code-generation namespace, so lambdify needs no (slow) dummification.
        self.t_symbol = sympy.Symbol("_t", real=True)
        self.state_symbols = tuple(sympy.Symbol(f"_y{i}", real=True) for i in range(len(states)))
        self.param_symbols = tuple(sympy.Symbol(f"_p{i}", real=True) for i in range(len(params)))
        table = {"t": self.t_symbol, **dict(zip(states, self.state_symbols)), **dict(zip(params, self.param_symbols))}
        self._display = {v: sympy.Symbol(k, real=True) for k, v in table.items()}
        exprs = []
        for i, e in enumerate(rhs):
            where = f"rhs[{i}] (d{states[i]}/dt)"
            if isinstance(e, sympy.Basic):
                unknown = sorted(str(s) for s in e.free_symbols if str(s) not in table)
                if unknown:
                    raise InvalidInputError(f"`{where}` uses undeclared symbols {unknown}.")
                e = e.xreplace({s: table[str(s)] for s in e.free_symbols})
            else:
                e = parse_expression(e, table, where=where)
            exprs.append(sympy.sympify(e))
        self.states = states
        self.params = params
        self.exprs = tuple(exprs)

    # -- structure ---------------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return len(self.states)

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.params

    @property
    def time_dependent(self) -> bool:
        """Whether any component depends explicitly on ``t``."""
        return any(e.has(self.t_symbol) for e in self.exprs)

    def display_exprs(self) -> tuple[sympy.Expr, ...]:
        """The expressions written with the user's names (the internal ones are ``_t``, ``_y<i>``, ``_p<i>``)."""
        return tuple(e.xreplace(self._display) for e in self.exprs)

    def describe(self) -> str:
        return "; ".join(f"d{s}/dt = {e}" for s, e in zip(self.states, self.display_exprs()))

    def fingerprint(self) -> str:
        import sympy

        return f"symbolic|{self.states}|{self.params}|" + "|".join(sympy.srepr(e) for e in self.exprs)

    def __repr__(self) -> str:
        return f"SymbolicRHS(states={list(self.states)}, params={list(self.params)}, rhs={[str(e) for e in self.display_exprs()]})"

    # -- code generation ---------------------------------------------------------------------------------

    def lambdify(self, namespace: dict[str, Callable]) -> Callable:
        """Compile the expressions against a framework's functions.

        ``namespace`` maps function names used by SymPy's printer (``sin``, ``exp``, ``tanh``, ``Abs``/``abs``,
        ``sqrt``, ``log``, ...) to framework functions. Returns ``fn(t, ys, ps) -> list`` where ``ys``/``ps`` are
        sequences of per-component arrays; a constant component comes back as a Python number (broadcast it).
        The printed code comes from the whitelisted expression tree, never from user text.
        """
        import sympy

        fn = sympy.lambdify(
            (self.t_symbol, self.state_symbols, self.param_symbols), list(self.exprs),
            modules=[namespace, "math"],
        )
        return fn

    @functools.cached_property
    def _numpy(self):
        import sympy

        args = (self.t_symbol, self.state_symbols, self.param_symbols)
        f = sympy.lambdify(args, list(self.exprs), modules="numpy")
        m = sympy.Matrix(self.exprs)
        jac_y = m.jacobian(self.state_symbols)
        jac_p = m.jacobian(self.param_symbols) if self.params else sympy.zeros(self.n_states, 0)
        jy = sympy.lambdify(args, list(jac_y), modules="numpy")
        jp = sympy.lambdify(args, list(jac_p), modules="numpy") if self.params else None
        # VJP: a^T J as one expression per output component (exact; zero Jacobian entries drop out)
        cot = tuple(sympy.Symbol(f"_a{i}", real=True) for i in range(self.n_states))
        row = sympy.Matrix([cot])
        vjp_exprs = list(row * jac_y) + (list(row * jac_p) if self.params else [])
        vjp = sympy.lambdify(args + (cot,), vjp_exprs, modules="numpy")
        return f, jy, jp, vjp

    @staticmethod
    def _components(y: np.ndarray):
        """``y[..., i]`` for each state (NumPy scalars for one state, arrays for a batch)."""
        return tuple(np.moveaxis(y, -1, 0))

    def f(self, t, y, p):
        y = np.asarray(y, dtype=np.float64)
        return _stack(self._numpy[0](t, self._components(y), tuple(p)), y.shape[:-1])

    def jac_y(self, t, y, p):
        y = np.asarray(y, dtype=np.float64)
        lead, n = y.shape[:-1], self.n_states
        return _stack(self._numpy[1](t, self._components(y), tuple(p)), lead).reshape(*lead, n, n)

    def jac_p(self, t, y, p):
        y = np.asarray(y, dtype=np.float64)
        lead, n = y.shape[:-1], self.n_states
        if self._numpy[2] is None:
            return np.zeros((*lead, n, 0))
        return _stack(self._numpy[2](t, self._components(y), tuple(p)), lead).reshape(*lead, n, len(self.params))

    def vjp(self, t, y, p, a):
        y = np.asarray(y, dtype=np.float64)
        a = np.broadcast_to(np.asarray(a, dtype=np.float64), y.shape)
        lead, n = y.shape[:-1], self.n_states
        out = _stack(self._numpy[3](t, self._components(y), tuple(p), self._components(a)), lead)
        vy = out[..., :n]
        vp = out[..., n:].reshape(-1, len(self.params)).sum(axis=0) if self.params else np.zeros(0)
        return vy, vp

    @functools.cached_property
    def linear_matrix(self) -> sympy.Matrix | None:
        """``A(p)`` as a SymPy matrix over the parameter symbols if ``f = A(p) y`` (linear, homogeneous,
        autonomous), else ``None``. Backends may evaluate such fields as a matrix product."""
        import sympy

        if self.time_dependent:
            return None
        y = self.state_symbols
        m = sympy.Matrix(self.exprs)
        a = m.jacobian(y)
        if any(entry.has(*y) for entry in a):
            return None
        if any(sympy.expand(e) != 0 for e in (m - a * sympy.Matrix(y))):
            return None
        return a

    def linear_structure(self):
        """If :attr:`linear_matrix` exists, NumPy ``(A_fn, dA_fn)``, else ``None``.

        ``A_fn(p)`` gives ``A`` of shape ``(n, n)``; ``dA_fn(p)`` gives ``dA/dp`` of shape ``(n, n, n_params)``.
        Used by the reference for its closed form (matrix exponential).
        """
        import sympy

        a = self.linear_matrix
        if a is None:
            return None
        ps = self.param_symbols
        n, k = self.n_states, len(ps)
        a_fn = sympy.lambdify((ps,), list(a), modules="numpy")
        da_fn = sympy.lambdify((ps,), [a[i].diff(q) for i in range(n * n) for q in ps], modules="numpy")

        def A_fn(p):
            return np.asarray(a_fn(tuple(p)), dtype=np.float64).reshape(n, n)

        def dA_fn(p):
            return np.asarray(da_fn(tuple(p)), dtype=np.float64).reshape(n, n, k)

        return A_fn, dA_fn


# ------------------------------------------------------------------------------------------------------ MLP

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "identity")
"""Activations an :class:`MLPRHS` may use on its hidden layers."""

FEATURES = ("identity", "cube")
"""Elementwise input feature maps of an :class:`MLPRHS` (``cube``: ``y -> y**3``)."""

def _act(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activation value and derivative."""
    if name == "tanh":
        h = np.tanh(z)
        return h, 1.0 - h * h
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(np.float64)
    if name == "softplus":
        return np.logaddexp(0.0, z), 1.0 / (1.0 + np.exp(-z))
    if name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s, s * (1.0 - s)
    return z, np.ones_like(z)


def _feature(name: str, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature map value and (elementwise) derivative."""
    if name == "cube":
        return y * y * y, 3.0 * y * y
    return y, np.ones_like(y)


def _flat(x: np.ndarray) -> np.ndarray:
    """``x`` with every leading dimension folded into one batch dimension."""
    return x.reshape(-1, x.shape[-1])


class MLPRHS(AbstractRHS):
    """An MLP vector field (see the module docstring for the input map and the flat layout).

    **Arguments:**
    - ``widths``: layer widths ``[n_states, h_1, ..., n_states]`` (at least two entries, first == last; any depth
      within :data:`crossode._limits.MAX_MLP_LAYERS` layers and :data:`~crossode._limits.MAX_PARAMS` parameters).
    - ``activation``: one of :data:`ACTIVATIONS`, applied on hidden layers.
    - ``time_input``: ``f(t, y) = MLP([phi(y), t])`` (the first layer gets ``n_states + 1`` input columns).
    - ``features``: the elementwise input map ``phi``, one of :data:`FEATURES` (``"cube"``: ``y -> y**3``).
    - ``weights``/``biases``: optional initial values (lists of arrays, shapes ``(out, in)`` / ``(out,)``);
      if omitted, seeded initialisation: ``W ~ U(-s, s)`` with ``s = scale/sqrt(in)``, ``b ~ U(-s, s)``, from
      ``numpy.random.default_rng(seed)``, layer by layer (W then b).
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "tanh",
        *,
        time_input: bool = False,
        features: str = "identity",
        weights: Sequence[np.ndarray] | None = None,
        biases: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        scale: float = 1.0,
    ):
        if (
            isinstance(widths, (str, bytes))
            or not isinstance(widths, Sequence)
            or len(widths) < 2
            or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 for w in widths)
        ):
            raise InvalidInputError(f"`widths` must be a list of >= 2 positive integers; got {widths!r}.")
        widths = tuple(int(w) for w in widths)
        check_mlp_size(widths)
        if widths[0] != widths[-1]:
            raise InvalidInputError(
                f"`widths` must start and end with the number of states (a vector field maps R^n to R^n); got {widths}."
            )
        if activation not in ACTIVATIONS:
            raise InvalidInputError(f"`activation` must be one of {fmt_choices(ACTIVATIONS)}; got {activation!r}.")
        if not isinstance(time_input, (bool, np.bool_)):
            raise InvalidInputError(f"`time_input` must be true or false; got {time_input!r}.")
        if features not in FEATURES:
            raise InvalidInputError(f"`features` must be one of {fmt_choices(FEATURES)}; got {features!r}.")
        time_input = bool(time_input)
        shapes = [(widths[i + 1], widths[i] + (1 if time_input and i == 0 else 0)) for i in range(len(widths) - 1)]
        n_params = sum(o * i + o for o, i in shapes)
        if n_params > MAX_PARAMS:  # check_mlp_size counted without the time column
            raise InvalidInputError(f"an MLP with widths {list(widths)} and a time input has {n_params:,} parameters; "
                                    f"at most {MAX_PARAMS:,} are allowed.")
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not np.isfinite(scale):
            raise InvalidInputError(f"`scale` must be a finite number; got {scale!r}.")
        if weights is None and biases is None:
            rng = np.random.default_rng(seed)
            weights, biases = [], []
            for out, inp in shapes:
                s = float(scale) / np.sqrt(inp)
                weights.append(rng.uniform(-s, s, size=(out, inp)))
                biases.append(rng.uniform(-s, s, size=(out,)))
        elif weights is None or biases is None:
            raise InvalidInputError("give both `weights` and `biases`, or neither (seeded initialisation).")
        if len(weights) != len(shapes) or len(biases) != len(shapes):
            raise InvalidInputError(f"`weights`/`biases` must have {len(shapes)} entries each for widths {widths}.")
        ws, bs = [], []
        for i, ((out, inp), w, b) in enumerate(zip(shapes, weights, biases)):
            try:
                w = np.asarray(w, dtype=np.float64)
                b = np.asarray(b, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInputError(f"layer {i + 1}: weights and biases must be numeric arrays.") from None
            if w.shape != (out, inp) or b.shape != (out,):
                raise InvalidInputError(
                    f"layer {i + 1}: expected weights {(out, inp)} and bias {(out,)}; got {w.shape} and {b.shape}."
                )
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise InvalidInputError(f"layer {i + 1}: weights and biases must be finite.")
            ws.append(w)
            bs.append(b)
        self.widths = widths
        self.activation = activation
        self.time_input = time_input
        self.features = features
        self.shapes = tuple(shapes)
        self._init = np.concatenate([np.concatenate([w.ravel(), b]) for w, b in zip(ws, bs)])

    @property
    def n_states(self) -> int:
        return self.widths[0]

    @property
    def n_params(self) -> int:
        return sum(o * i + o for o, i in self.shapes)

    @property
    def time_dependent(self) -> bool:
        """Whether ``f`` depends explicitly on ``t`` (``time_input``)."""
        return self.time_input

    @functools.cached_property
    def param_names(self) -> tuple[str, ...]:
        names = []
        for layer, (out, inp) in enumerate(self.shapes, start=1):
            names += [f"W{layer}[{i},{j}]" for i in range(out) for j in range(inp)]
            names += [f"b{layer}[{i}]" for i in range(out)]
        return tuple(names)

    def initial_params(self) -> np.ndarray:
        """The flat parameter vector of the initial weights (a copy)."""
        return self._init.copy()

    def unflatten(self, p):
        """Split a flat parameter vector (any array type supporting slicing and ``reshape``) into ``[(W, b), ...]``."""
        out, k = [], 0
        for o, i in self.shapes:
            w = p[k : k + o * i].reshape(o, i)
            k += o * i
            b = p[k : k + o]
            k += o
            out.append((w, b))
        return out

    def _extras(self) -> str:
        extra = ", time input" if self.time_input else ""
        return extra + (f", {self.features} features" if self.features != "identity" else "")

    def describe(self) -> str:
        return f"MLP {'-'.join(map(str, self.widths))} {self.activation}{self._extras()} ({self.n_params} params)"

    def fingerprint(self) -> str:
        # the defaults add nothing, so fingerprints (and cached references, sweep cell keys) of older problems stay
        fp = f"mlp|{self.widths}|{self.activation}"
        if self.time_input:
            fp += "|time_input"
        if self.features != "identity":
            fp += f"|features={self.features}"
        return fp

    def __repr__(self) -> str:
        extra = ", time_input=True" if self.time_input else ""
        extra += f", features={self.features!r}" if self.features != "identity" else ""
        return f"MLPRHS(widths={list(self.widths)}, activation={self.activation!r}{extra})"

    # -- exact NumPy evaluation ----------------------------------------------------------------------------

    def _forward(self, t, y, p):
        """``(layers, inputs, act', out, phi')``: ``inputs[l]`` is layer ``l``'s input, ``act'[l]`` the activation
        derivative at layer ``l``'s output (hidden layers), ``phi'`` the feature map's derivative."""
        layers = self.unflatten(np.asarray(p, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64)
        x, dx = _feature(self.features, y)
        w, b = layers[0]
        n = self.n_states
        if self.time_input:
            u0 = np.concatenate([x, np.full((*y.shape[:-1], 1), float(t))], axis=-1)
            z = x @ w[:, :n].T + (b + float(t) * w[:, n])
        else:
            u0 = x
            z = x @ w.T + b
        inputs, ds = [u0], []
        for w, b in layers[1:]:
            h, d = _act(self.activation, z)
            inputs.append(h)
            ds.append(d)
            z = h @ w.T + b
        return layers, inputs, ds, z, dx

    def f(self, t, y, p):
        return self._forward(t, y, p)[3]

    def jac_y(self, t, y, p):
        layers, _, ds, _, dx = self._forward(t, y, p)
        j = layers[-1][0]
        for layer in range(len(layers) - 2, -1, -1):
            j = (j * ds[layer][..., None, :]) @ layers[layer][0]
        return j[..., : self.n_states] * dx[..., None, :]

    def jac_p(self, t, y, p):
        layers, inputs, ds, _, _ = self._forward(t, y, p)
        n = self.n_states
        lead = np.shape(y)[:-1]
        back = np.broadcast_to(np.eye(n), (*lead, n, n))  # d out / d z_l, starting at the output layer
        blocks = []
        for layer in range(len(layers) - 1, -1, -1):
            u = inputs[layer]
            dw = (back[..., :, :, None] * u[..., None, None, :]).reshape(*lead, n, -1)
            blocks.append(np.concatenate([dw, back], axis=-1))
            if layer > 0:
                back = (back @ layers[layer][0]) * ds[layer - 1][..., None, :]
        return np.concatenate(blocks[::-1], axis=-1)

    def vjp(self, t, y, p, a):
        layers, inputs, ds, _, dx = self._forward(t, y, p)
        shape = np.shape(y)
        delta = _flat(np.broadcast_to(np.asarray(a, dtype=np.float64), shape))
        grads = [None] * len(layers)
        for layer in range(len(layers) - 1, -1, -1):
            w = layers[layer][0]
            grads[layer] = ((delta.T @ _flat(inputs[layer])).ravel(), delta.sum(axis=0))
            if layer > 0:
                delta = (delta @ w) * _flat(ds[layer - 1])
            else:
                delta = delta @ w
        vy = (delta[:, : self.n_states] * _flat(dx)).reshape(shape)
        return vy, np.concatenate([np.concatenate(g) for g in grads])

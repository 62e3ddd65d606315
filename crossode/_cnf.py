"""Continuous normalizing flows as a neutral vector field: :class:`CNFRHS` (FFJORD's augmented ODE, exact trace).

A CNF moves a sample ``x`` of ``R^d`` with ``dx/dt = g(t, x)`` (an MLP, by default with a time input) and carries
the change of its log-density along, ``d(logp)/dt = -tr(dg/dx)`` (Chen et al. 2018's instantaneous change of
variables; FFJORD, Grathwohl et al. 2019). The state is ``y = [x, logp]`` (``n_states = d + 1``), a batch of
samples is ``y`` of shape ``(batch, d + 1)``. The trace is the exact one: the sum of the diagonal of the MLP's
Jacobian, computed by forward tangents ``dz_l/dx_j`` through the network (``d`` tangents; meant for small ``d``
such as FFJORD's 2-D toy densities, where it costs ``~(1 + d)`` network evaluations).

The network ``g`` is an :class:`~crossode.MLPRHS` with ``widths = [d, h_1, ..., d]`` (``features`` identity) and
the **same flat parameter layout** (per layer ``W`` row-major ``(out, in)``, then ``b``; with ``time_input`` the
first layer's last column multiplies ``t``): :attr:`CNFRHS.net` is that MLP, and ``CNFRHS.param_names`` /
``unflatten`` are its own.

Exact NumPy derivatives (the independent reference uses them): with pre-activations ``z_1 = W_1 [x, t] + b_1``,
``z_{l+1} = W_{l+1} s(z_l) + b_{l+1}``, ``g = z_L``, the tangents are ``U_1 = W_1[:, :d]`` and
``U_{l+1} = W_{l+1} (s'(z_l) * U_l)``, so ``dg/dx = U_L`` and ``tr = sum_j U_L[j, j]``. The VJP backpropagates
through both the primal and the tangent recursion; the tangent recursion depends on ``x`` and the weights through
``s'(z_l)``, so it needs the activations' **second derivatives** ``s''`` (tanh: ``-2 s (1 - s^2)``; softplus:
``sigma (1 - sigma)``; sigmoid: ``sigma (1 - sigma)(1 - 2 sigma)``; identity: 0). ``relu`` is refused: its ``s'`` is
a step, so ``-tr(dg/dx)`` is piecewise constant in ``x`` and jumps across every kink (``s'' = 0`` almost
everywhere, a Dirac measure in the sense of distributions); neither an adaptive solver nor a reference converges on
such a log-density. ``jac_y`` and ``jac_p`` are VJPs with unit cotangents (``d + 1`` of them, per sample).

The loss that goes with it is :class:`~crossode.Loss` ``kind="cnf_nll"`` (see :mod:`crossode._problem`); data
sets are in :mod:`crossode.datasets`, the evaluation helpers (log-density on a grid, held-out NLL, invertibility
error) in :mod:`crossode.cnf`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._rhs import MLPRHS, AbstractRHS

__all__ = ["CNFRHS", "CNF_ACTIVATIONS", "activation_derivatives"]

CNF_ACTIVATIONS = ("tanh", "softplus", "sigmoid", "identity")
"""Activations a :class:`CNFRHS` may use (twice differentiable; ``relu`` is refused, see the module docstring)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + exp(-z)) without overflow


def activation_derivatives(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(s(z), s'(z), s''(z))`` of the activation ``name`` (one of :data:`CNF_ACTIVATIONS`), float64 NumPy."""
    if name == "tanh":
        h = np.tanh(z)
        d1 = 1.0 - h * h
        return h, d1, -2.0 * h * d1
    if name == "softplus":
        s = _sigmoid(z)
        return np.logaddexp(0.0, z), s, s * (1.0 - s)
    if name == "sigmoid":
        s = _sigmoid(z)
        d1 = s * (1.0 - s)
        return s, d1, d1 * (1.0 - 2.0 * s)
    if name == "identity":
        return z, np.ones_like(z), np.zeros_like(z)
    raise InvalidInputError(f"`activation` must be one of {fmt_choices(CNF_ACTIVATIONS)}; got {name!r}.")


class CNFRHS(AbstractRHS):
    """FFJORD's augmented field ``d[x, logp]/dt = [g(t, x), -tr(dg/dx)]`` with an MLP ``g`` and the exact trace.

    **Arguments:**
    - ``widths``: the network's widths ``[d, h_1, ..., d]`` (``d`` = data dimension; the state has ``d + 1``
      entries, the last one the log-density change).
    - ``activation``: one of :data:`CNF_ACTIVATIONS` (default ``"softplus"``, FFJORD's toy-density choice).
    - ``time_input``: ``g(t, x) = MLP([x, t])`` (default ``True``; FFJORD's ``concat`` layers feed ``t`` to every
      layer, crossode to the first one).
    - ``weights``/``biases``/``seed``/``scale``: initial values as for :class:`~crossode.MLPRHS`.

    The flat parameter layout is the network's (:class:`~crossode.MLPRHS`); see the module docstring for the
    formulas. ``y`` is ``(d + 1,)`` or ``(..., d + 1)``; ``f`` returns the shape of ``y``.
    """

    is_cnf = True
    """Marks the CNF kind (the ``cnf_nll`` loss requires it)."""

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "softplus",
        *,
        time_input: bool = True,
        weights: Sequence[np.ndarray] | None = None,
        biases: Sequence[np.ndarray] | None = None,
        seed: int = 0,
        scale: float = 1.0,
    ):
        if activation == "relu":
            raise InvalidInputError(
                "`activation` 'relu' is not allowed for a CNF: its derivative is a step, so d(logp)/dt = -tr(dg/dx) "
                f"jumps across every kink and no solver or reference converges on it; use one of "
                f"{fmt_choices(CNF_ACTIVATIONS)}."
            )
        if activation not in CNF_ACTIVATIONS:
            raise InvalidInputError(f"`activation` must be one of {fmt_choices(CNF_ACTIVATIONS)}; got {activation!r}.")
        self.net = MLPRHS(widths, activation, time_input=time_input, weights=weights, biases=biases, seed=seed,
                          scale=scale)
        self.widths = self.net.widths
        self.activation = activation
        self.time_input = self.net.time_input
        self.shapes = self.net.shapes
        self.dims = self.net.n_states

    # -- structure ---------------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        return self.dims + 1

    @property
    def n_params(self) -> int:
        return self.net.n_params

    @property
    def param_names(self) -> tuple[str, ...]:
        return self.net.param_names

    @property
    def time_dependent(self) -> bool:
        """Whether the field depends explicitly on ``t`` (``time_input``)."""
        return self.time_input

    def initial_params(self) -> np.ndarray:
        """The flat parameter vector of the initial weights (a copy)."""
        return self.net.initial_params()

    def unflatten(self, p):
        """Split a flat parameter vector into ``[(W, b), ...]`` (:meth:`MLPRHS.unflatten`)."""
        return self.net.unflatten(p)

    def describe(self) -> str:
        extra = ", time input" if self.time_input else ""
        return (f"CNF in R^{self.dims}: dx/dt = MLP {'-'.join(map(str, self.widths))} {self.activation}{extra}, "
                f"dlogp/dt = -tr(dg/dx) exact ({self.n_params} params)")

    def fingerprint(self) -> str:
        return f"cnf|{self.widths}|{self.activation}|time_input={self.time_input}"

    def __repr__(self) -> str:
        return f"CNFRHS(widths={list(self.widths)}, activation={self.activation!r}, time_input={self.time_input})"

    # -- exact NumPy evaluation ----------------------------------------------------------------------------

    def _split(self, y) -> tuple[np.ndarray, tuple[int, ...]]:
        y = np.asarray(y, dtype=np.float64)
        if y.shape[-1:] != (self.n_states,):
            raise InvalidInputError(f"a CNF state has {self.n_states} entries (x, logp); got shape {y.shape}.")
        return y.reshape(-1, self.n_states)[:, : self.dims], y.shape

    def _forward(self, t: float, x: np.ndarray, p):
        """Primal and tangent passes for ``x`` of shape ``(N, d)``.

        Returns ``(layers, inputs, d1, d2, tangents, g)``: ``inputs[k]`` the input of layer ``k`` (``x`` for the
        first), ``d1[k]``/``d2[k]`` ``s'``/``s''`` at layer ``k``'s pre-activation (hidden layers), ``tangents[k]``
        ``dz_k/dx`` as ``(N, d, out_k)`` (row ``j``: direction ``x_j``; the first one ``(1, d, out_0)``), ``g``
        ``(N, d)``.
        """
        layers = self.unflatten(np.asarray(p, dtype=np.float64))
        d = self.dims
        w, b = layers[0]
        z = x @ w[:, :d].T + (b + float(t) * w[:, d] if self.time_input else b)
        u = w[:, :d].T[None]  # dz_0/dx: (1, d, out_0), the same for every sample
        inputs, d1s, d2s, tangents = [x], [], [], [u]
        for w, b in layers[1:]:
            h, d1, d2 = activation_derivatives(self.activation, z)
            inputs.append(h)
            d1s.append(d1)
            d2s.append(d2)
            u = (d1[:, None, :] * u) @ w.T
            tangents.append(u)
            z = h @ w.T + b
        return layers, inputs, d1s, d2s, tangents, z

    def trace(self, t: float, y, p) -> np.ndarray:
        """``tr(dg/dx)`` per sample, shape ``y.shape[:-1]`` (the log-density rate is its negative)."""
        x, shape = self._split(y)
        u = self._forward(t, x, p)[4][-1]
        return np.broadcast_to(np.einsum("njj->n", u), (x.shape[0],)).reshape(shape[:-1])

    def f(self, t, y, p):
        x, shape = self._split(y)
        *_, tangents, g = self._forward(t, x, p)
        tr = np.broadcast_to(np.einsum("njj->n", tangents[-1]), (x.shape[0],))
        return np.concatenate([g, -tr[:, None]], axis=-1).reshape(shape)

    def _backprop(self, t, x, p, a, *, params: bool, per_sample: bool = False):
        """``(a^T df/dx, a^T df/dp)`` for cotangents ``a`` of shape ``(N, d + 1)``.

        ``params=False`` skips the parameter gradient (``None``); ``per_sample=True`` keeps it per sample,
        ``(N, n_params)``, instead of summed over the batch.
        """
        layers, inputs, d1s, d2s, tangents, _ = self._forward(t, x, p)
        d, n = self.dims, x.shape[0]
        eye = np.eye(d)
        ubar = -a[:, d][:, None, None] * eye[None]  # d L / d U_last, (N, d, d)
        zbar = a[:, :d]  # d L / d z_last, (N, d)
        grads = [None] * len(layers)
        red = "nja,njb->nab" if per_sample else "nja,njb->ab"
        for k in range(len(layers) - 1, 0, -1):
            w = layers[k][0]
            v = d1s[k - 1][:, None, :] * tangents[k - 1]  # the tangent before W_k: (N, d, in_k)
            vbar = ubar @ w  # (N, d, in_k)
            hbar = zbar @ w  # (N, in_k)
            if params:
                if per_sample:
                    dw = np.einsum(red, ubar, v) + zbar[:, :, None] * inputs[k][:, None, :]
                    grads[k] = np.concatenate([dw.reshape(n, -1), zbar], axis=1)
                else:
                    dw = np.einsum(red, ubar, v) + zbar.T @ inputs[k]
                    grads[k] = np.concatenate([dw.ravel(), zbar.sum(axis=0)])
            u_prev = np.broadcast_to(tangents[k - 1], vbar.shape)
            zbar = d1s[k - 1] * hbar + d2s[k - 1] * np.einsum("nja,nja->na", u_prev, vbar)
            ubar = d1s[k - 1][:, None, :] * vbar
        w = layers[0][0]
        xbar = zbar @ w[:, :d]
        if params:
            # z_0 = W_x x + (b + t w_t); the tangent U_0 = W_x^T, so W_x also collects sum_j ubar[:, j, :]
            if per_sample:
                dwx = zbar[:, :, None] * x[:, None, :] + np.swapaxes(ubar, 1, 2)
                cols = [dwx, zbar[:, :, None] * float(t)] if self.time_input else [dwx]
                dw = np.concatenate(cols, axis=2).reshape(n, -1)
                grads[0] = np.concatenate([dw, zbar], axis=1)
            else:
                dwx = zbar.T @ x + ubar.sum(axis=0).T
                cols = [dwx, zbar.sum(axis=0)[:, None] * float(t)] if self.time_input else [dwx]
                grads[0] = np.concatenate([np.concatenate(cols, axis=1).ravel(), zbar.sum(axis=0)])
            gp = np.concatenate(grads, axis=-1)
        else:
            gp = None
        return xbar, gp

    def vjp(self, t, y, p, a):
        x, shape = self._split(y)
        a = np.broadcast_to(np.asarray(a, dtype=np.float64), shape).reshape(-1, self.n_states)
        xbar, gp = self._backprop(t, x, p, a, params=True)
        vy = np.concatenate([xbar, np.zeros((x.shape[0], 1))], axis=1).reshape(shape)
        return vy, gp

    @functools.cached_property
    def _unit_cotangents(self) -> np.ndarray:
        return np.eye(self.n_states)

    def jac_y(self, t, y, p):
        x, shape = self._split(y)
        n, m = x.shape[0], self.n_states
        rows = []
        for e in self._unit_cotangents:
            xbar, _ = self._backprop(t, x, p, np.broadcast_to(e, (n, m)), params=False)
            rows.append(np.concatenate([xbar, np.zeros((n, 1))], axis=1))
        return np.stack(rows, axis=1).reshape(*shape[:-1], m, m)

    def jac_p(self, t, y, p):
        x, shape = self._split(y)
        n, m = x.shape[0], self.n_states
        rows = [self._backprop(t, x, p, np.broadcast_to(e, (n, m)), params=True, per_sample=True)[1]
                for e in self._unit_cotangents]
        return np.stack(rows, axis=1).reshape(*shape[:-1], m, self.n_params)

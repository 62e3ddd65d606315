"""The neutral ODE problem: a vector field defined once, initial state, flat parameters, time span, saves, loss."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._rhs import AbstractRHS, MLPRHS, SymbolicRHS

__all__ = ["Loss", "Problem"]

LOSS_KINDS = ("sum_squares", "linear")


class Loss:
    """A scalar loss on the saved trajectory ``ys`` of shape ``(len(saveat), n_states)``.

    - ``kind="sum_squares"`` (default): ``L = 1/2 * sum_k ||y(t_k)||^2``;
    - ``kind="linear"``: ``L = sum_k w_k . y(t_k)`` with ``weights`` of shape ``(len(saveat), n_states)``
      (a fixed cotangent, as torchdiffeq's gradient tests use).

    :meth:`apply` is the single implementation every backend calls on its own arrays, so the loss is the same
    arithmetic everywhere.
    """

    def __init__(self, kind: str = "sum_squares", weights=None):
        if kind not in LOSS_KINDS:
            raise InvalidInputError(f"`loss.kind` must be one of {fmt_choices(LOSS_KINDS)}; got {kind!r}.")
        if kind == "linear":
            if weights is None:
                raise InvalidInputError("`loss.weights` is required for kind='linear' (shape (len(saveat), n_states)).")
            try:
                weights = np.array(weights, dtype=np.float64)
            except (TypeError, ValueError):
                raise InvalidInputError(f"`loss.weights` must be a numeric array; got {weights!r}.") from None
            if not np.all(np.isfinite(weights)):
                raise InvalidInputError("`loss.weights` must be finite.")
            weights.setflags(write=False)
        elif weights is not None:
            raise InvalidInputError("`loss.weights` is only allowed with kind='linear'.")
        self.kind = kind
        self.weights = weights

    def apply(self, ys, weights=None):
        """The loss of ``ys`` using only ``*`` and ``.sum()`` (NumPy, torch and JAX arrays alike).

        ``weights`` is :attr:`weights` converted to the caller's framework (required for ``linear``).
        """
        if self.kind == "sum_squares":
            return 0.5 * (ys * ys).sum()
        return (weights * ys).sum()

    def value(self, ys: np.ndarray) -> float:
        """The loss of NumPy ``ys``."""
        return float(self.apply(np.asarray(ys, dtype=np.float64), self.weights))

    def cotangent(self, ys: np.ndarray) -> np.ndarray:
        """``dL/dys`` for NumPy ``ys``."""
        ys = np.asarray(ys, dtype=np.float64)
        return ys.copy() if self.kind == "sum_squares" else np.array(self.weights)

    def to_dict(self) -> dict:
        """TOML/JSON-friendly form."""
        d = {"kind": self.kind}
        if self.weights is not None:
            d["weights"] = self.weights.tolist()
        return d

    def __repr__(self) -> str:
        return f"Loss(kind={self.kind!r})" if self.weights is None else f"Loss(kind={self.kind!r}, weights=...)"


def _as_vector(name: str, value, n: int | None = None) -> np.ndarray:
    if isinstance(value, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in value):  # [True] is not 1.0
        raise InvalidInputError(f"`{name}` must be a list of numbers; got booleans in {str(value)[:60]}.")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{name}` must be a list of numbers; got {value!r}.") from None
    if arr.ndim != 1:
        raise InvalidInputError(f"`{name}` must be one-dimensional; got shape {arr.shape}.")
    if n is not None and arr.shape[0] != n:
        raise InvalidInputError(f"`{name}` must have {n} entries; got {arr.shape[0]}.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"`{name}` must be finite; got {value!r}.")
    arr.setflags(write=False)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """An ODE problem defined once, for every backend.

    **Arguments:**
    - ``rhs``: :class:`SymbolicRHS` or :class:`MLPRHS`.
    - ``y0``: initial state, ``n_states`` finite numbers.
    - ``params``: flat parameters in ``rhs.param_names`` order: an array, or a mapping name -> value for symbolic
      fields (every name required). Defaults to the MLP's initial weights for neural fields.
    - ``tspan``: ``(t0, t1)`` with ``t0 != t1`` (``t1 < t0`` integrates backwards).
    - ``saveat``: times at which the trajectory is saved and the loss applied; inside ``[t0, t1]``, strictly
      ordered in the direction of integration; default ``[t1]``.
    - ``loss``: a :class:`Loss` (default sum of squares).
    - ``name``, ``description``; ``stiff``: hint for default solver choice and the reference method.
    """

    rhs: AbstractRHS
    y0: np.ndarray
    tspan: tuple[float, float]
    params: np.ndarray | Mapping | None = None
    saveat: np.ndarray | None = None
    loss: Loss = dataclasses.field(default_factory=Loss)
    name: str = "problem"
    description: str = ""
    stiff: bool = False

    def __post_init__(self):
        if not isinstance(self.rhs, AbstractRHS):
            raise InvalidInputError(f"`rhs` must be a SymbolicRHS or MLPRHS; got {type(self.rhs).__name__}.")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"`name` must be a non-empty string; got {self.name!r}.")
        n = self.rhs.n_states
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("y0", _as_vector("y0", self.y0, n))
        # parameters
        names = self.rhs.param_names
        p = self.params
        if p is None:
            if isinstance(self.rhs, MLPRHS):
                p = self.rhs.initial_params()
            elif names:
                raise InvalidInputError(f"`params` is required: values for {', '.join(names)}.")
            else:
                p = []
        if isinstance(p, Mapping):
            missing = [k for k in names if k not in p]
            extra = [k for k in p if k not in names]
            if missing or extra:
                raise InvalidInputError(
                    f"`params` must give exactly the declared parameters {list(names)}; "
                    f"missing {missing}, unknown {extra}."
                )
            p = [p[k] for k in names]
        set_("params", _as_vector("params", p, len(names)))
        # time span
        if isinstance(self.tspan, (str, bytes)) or not isinstance(self.tspan, Sequence) or len(self.tspan) != 2:
            raise InvalidInputError(f"`tspan` must be a pair (t0, t1); got {self.tspan!r}.")
        try:
            t0, t1 = float(self.tspan[0]), float(self.tspan[1])
        except (TypeError, ValueError):
            raise InvalidInputError(f"`tspan` must hold two numbers; got {self.tspan!r}.") from None
        if not (math.isfinite(t0) and math.isfinite(t1)):
            raise InvalidInputError(f"`tspan` must be finite; got {self.tspan!r}.")
        if t0 == t1:
            raise InvalidInputError(f"`tspan` needs t0 != t1; got ({t0}, {t1}).")
        set_("tspan", (t0, t1))
        # saves
        s = _as_vector("saveat", [t1] if self.saveat is None else self.saveat)
        if s.size == 0:
            raise InvalidInputError("`saveat` must contain at least one time.")
        lo, hi = min(t0, t1), max(t0, t1)
        if np.any(s < lo) or np.any(s > hi):
            raise InvalidInputError(f"`saveat` times must lie inside tspan [{lo}, {hi}]; got {s.tolist()}.")
        direction = 1.0 if t1 > t0 else -1.0
        if s.size > 1 and np.any(np.diff(s) * direction <= 0):
            raise InvalidInputError(
                f"`saveat` must be strictly {'increasing' if direction > 0 else 'decreasing'} (the direction of "
                f"integration); got {s.tolist()}."
            )
        set_("saveat", s)
        # loss
        if not isinstance(self.loss, Loss):
            raise InvalidInputError(f"`loss` must be a Loss; got {self.loss!r}.")
        if self.loss.kind == "linear" and self.loss.weights.shape != (s.size, n):
            raise InvalidInputError(
                f"`loss.weights` must have shape (len(saveat), n_states) = ({s.size}, {n}); "
                f"got {self.loss.weights.shape}."
            )

    # -- convenience -------------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        """Number of states."""
        return self.rhs.n_states

    @property
    def n_params(self) -> int:
        """Number of flat parameters."""
        return self.params.size

    @property
    def param_names(self) -> tuple[str, ...]:
        """Flat parameter names, in layout order."""
        return self.rhs.param_names

    @property
    def t0(self) -> float:
        """Start time."""
        return self.tspan[0]

    @property
    def t1(self) -> float:
        """End time."""
        return self.tspan[1]

    @property
    def is_symbolic(self) -> bool:
        """Whether the vector field is a :class:`SymbolicRHS`."""
        return isinstance(self.rhs, SymbolicRHS)

    def remake(self, **changes) -> Problem:
        """A copy with some fields replaced and re-validated (SciML's ``remake``).

        Changing ``tspan`` alone rescales the default ``saveat`` ``[t1]`` to the new end time; other ``saveat``
        values must be given again if they no longer fit.
        """
        if "tspan" in changes and "saveat" not in changes and self.saveat.size == 1 and self.saveat[0] == self.t1:
            changes["saveat"] = None
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> str:
        """A short hash of everything that determines the solution and the loss (cache key for references)."""
        h = hashlib.sha256()
        h.update(self.rhs.fingerprint().encode())
        for arr in (self.y0, self.params, np.asarray(self.tspan), self.saveat):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        h.update(self.loss.kind.encode())
        if self.loss.weights is not None:
            h.update(np.ascontiguousarray(self.loss.weights).tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"Problem(name={self.name!r}, rhs={self.rhs.describe()!r}, n_params={self.n_params}, "
            f"tspan={self.tspan}, saveat={len(self.saveat)} times, loss={self.loss!r})"
        )

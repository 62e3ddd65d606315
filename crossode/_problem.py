"""The neutral ODE problem: a vector field defined once, initial state, flat parameters, time span, saves, loss."""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._limits import MAX_STATE_ENTRIES
from ._rhs import AbstractRHS, SymbolicRHS

__all__ = ["Loss", "Problem"]

LOSS_KINDS = ("sum_squares", "linear", "mse", "cnf_nll")



def _booleans(value) -> bool:
    """Whether a (nested) list holds booleans, or an array is boolean: ``[True]`` is not the number 1.0."""
    if isinstance(value, np.ndarray):
        return value.dtype == np.bool_
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, (bool, np.bool_)):
            return True
        if isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


def _as_data(name: str, value) -> np.ndarray:
    if _booleans(value):
        raise InvalidInputError(f"`{name}` must hold numbers; got booleans.")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{name}` must be a numeric array; got {_short(value)}.") from None
    if arr.size > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`{name}` has {arr.size} entries; at most {MAX_STATE_ENTRIES} are allowed.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"`{name}` must be finite.")
    arr.setflags(write=False)
    return arr


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Loss:
    """A scalar loss on the saved trajectory ``ys``, shape ``(len(saveat), n_states)`` for a single initial state
    and ``(len(saveat), batch, n_states)`` for a batch:

    - ``kind="sum_squares"`` (default): ``L = 1/2 * sum_k ||y(t_k)||^2``;
    - ``kind="linear"``: ``L = sum_k w_k . y(t_k)`` with ``weights`` (a fixed cotangent, as torchdiffeq's gradient
      tests use);
    - ``kind="mse"``: ``L = 1/2 * sum_k ||y(t_k) - d_k||^2`` with data ``targets`` (a sum over saves, batch and
      states, not a mean);
    - ``kind="cnf_nll"``: the negative log-likelihood of a continuous normalizing flow (:class:`~crossode.CNFRHS`,
      state ``[x, logp]``, ``d = n_states - 1``) under a standard normal base, averaged over the batch ``B``, on
      the last saved state ``[z, logp(t1)]``:
      ``L = d/2 log(2 pi) + 1/B sum_b (1/2 ||z_b||^2 + logp_b(t1))``. With ``logp' = -tr(dg/dx)`` and FFJORD's
      ``logp(t0) = 0``, ``logp(t1) = -int tr`` and ``log p_x(x) = log N(z(t1)) - logp(t1)`` (FFJORD's
      ``logpx = logpz - delta_logp``), so ``L = -mean_b log p_x(x_b)``. A nonzero ``logp(t0) = c_b`` only adds
      ``mean_b c_b`` (so ``dL/dlogp_b(t0) = 1/B`` and finite differences in ``y0`` stay valid). No data.

    ``weights``/``targets`` have the shape of ``ys``, or ``(len(saveat), n_states)`` for a batch (the same data for
    every trajectory); the :class:`Problem` checks the shape. :meth:`apply` is the single implementation every backend
    calls on its own arrays (only ``*``, ``-``, ``+``, ``.sum()``, basic indexing and constants), so the loss is the
    same arithmetic everywhere.
    """

    def __init__(self, kind: str = "sum_squares", weights=None, targets=None):
        if kind not in LOSS_KINDS:
            raise InvalidInputError(f"`loss.kind` must be one of {fmt_choices(LOSS_KINDS)}; got {kind!r}.")
        if kind == "linear":
            if weights is None:
                raise InvalidInputError("`loss.weights` is required for kind='linear' (shape (len(saveat), n_states)).")
            weights = _as_data("loss.weights", weights)
        elif weights is not None:
            raise InvalidInputError("`loss.weights` is only allowed with kind='linear'.")
        if kind == "mse":
            if targets is None:
                raise InvalidInputError("`loss.targets` is required for kind='mse' (shape (len(saveat), n_states) or "
                                        "(len(saveat), batch, n_states)).")
            targets = _as_data("loss.targets", targets)
        elif targets is not None:
            raise InvalidInputError("`loss.targets` is only allowed with kind='mse'.")
        self.kind = kind
        self.weights = weights
        self.targets = targets

    @property
    def data(self) -> np.ndarray | None:
        """The loss's data array as given: ``weights`` (linear), ``targets`` (mse) or ``None``."""
        return self.weights if self.kind == "linear" else self.targets

    def data_for(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """:attr:`data` shaped to broadcast against ``ys`` of ``shape`` (a view; ``None`` for sum_squares).

        Raises :class:`InvalidInputError` when the data does not fit ``shape``.
        """
        d = self.data
        if d is None:
            return None
        shape = tuple(shape)
        if d.shape == shape:
            return d
        if len(shape) == 3 and d.shape == (shape[0], shape[2]):
            return d[:, None, :]
        name = "loss.weights" if self.kind == "linear" else "loss.targets"
        allowed = f"({shape[0]}, {shape[-1]})" + (f" or {shape}" if len(shape) == 3 else "")
        raise InvalidInputError(
            f"`{name}` must have shape (len(saveat), n_states) or (len(saveat), batch, n_states), here {allowed}; "
            f"got {d.shape}."
        )

    def apply(self, ys, data=None):
        """The loss of ``ys`` using only ``*``, ``-``, ``+``, ``.sum()``, basic indexing and Python constants (NumPy,
        torch and JAX arrays alike).

        ``data`` is :meth:`data_for` ``(ys.shape)`` converted to the caller's framework (required for ``linear``
        and ``mse``; :attr:`Problem.loss_data` has it in NumPy).
        """
        if self.kind == "sum_squares":
            return 0.5 * (ys * ys).sum()
        if self.kind == "linear":
            return (data * ys).sum()
        if self.kind == "cnf_nll":
            d = ys.shape[-1] - 1
            batch = ys.shape[1] if len(ys.shape) == 3 else 1
            z, logp = ys[-1, ..., :d], ys[-1, ..., d]
            return (0.5 * (z * z).sum() + logp.sum()) * (1.0 / batch) + 0.5 * d * math.log(2.0 * math.pi)
        r = ys - data
        return 0.5 * (r * r).sum()

    def value(self, ys: np.ndarray) -> float:
        """The loss of NumPy ``ys``."""
        ys = np.asarray(ys, dtype=np.float64)
        return float(self.apply(ys, self.data_for(ys.shape)))

    def cotangent(self, ys: np.ndarray) -> np.ndarray:
        """``dL/dys`` for NumPy ``ys`` (the shape of ``ys``)."""
        ys = np.asarray(ys, dtype=np.float64)
        if self.kind == "sum_squares":
            return ys.copy()
        if self.kind == "linear":
            return np.array(np.broadcast_to(self.data_for(ys.shape), ys.shape))
        if self.kind == "cnf_nll":
            d, batch = ys.shape[-1] - 1, (ys.shape[1] if ys.ndim == 3 else 1)
            g = np.zeros_like(ys)
            g[-1, ..., :d] = ys[-1, ..., :d] / batch
            g[-1, ..., d] = 1.0 / batch
            return g
        return ys - self.data_for(ys.shape)

    def to_dict(self) -> dict:
        """TOML/JSON-friendly form."""
        d = {"kind": self.kind}
        if self.weights is not None:
            d["weights"] = self.weights.tolist()
        if self.targets is not None:
            d["targets"] = self.targets.tolist()
        return d

    def __repr__(self) -> str:
        if self.data is None:
            return f"Loss(kind={self.kind!r})"
        return f"Loss(kind={self.kind!r}, {'weights' if self.kind == 'linear' else 'targets'}=...)"


def _as_state(value, n: int) -> np.ndarray:
    """``y0``: ``(n,)`` or ``(batch, n)``, finite, bounded."""
    if _booleans(value):
        raise InvalidInputError(f"`y0` must hold numbers; got booleans in {_short(value)}.")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`y0` must be a list of numbers or a (batch, n_states) nested list; got "
                                f"{_short(value)}.") from None
    if arr.ndim not in (1, 2):
        raise InvalidInputError(f"`y0` must have shape (n_states,) or (batch, n_states); got shape {arr.shape}.")
    if arr.shape[-1] != n:
        raise InvalidInputError(f"`y0` must have {n} entries per state (n_states); got shape {arr.shape}.")
    if arr.ndim == 2 and arr.shape[0] < 1:
        raise InvalidInputError("`y0` must hold at least one state (batch >= 1).")
    if arr.size > MAX_STATE_ENTRIES:
        raise InvalidInputError(f"`y0` has {arr.size} entries; at most {MAX_STATE_ENTRIES} are allowed.")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("`y0` must be finite.")
    arr.setflags(write=False)
    return arr


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
    - ``rhs``: :class:`SymbolicRHS`, :class:`MLPRHS` or :class:`~crossode.CNFRHS`.
    - ``y0``: initial state, ``n_states`` finite numbers, or a batch ``(batch, n_states)`` of independent initial
      states sharing the parameters. A batch is ONE batched solve on every backend (one step sequence for the whole
      batch, the error norm taken over all ``batch * n_states`` entries, as torchdiffeq and Diffrax do by default);
      ``dy0`` has the shape of ``y0`` and saved states are ``(len(saveat), batch, n_states)``.
    - ``params``: flat parameters in ``rhs.param_names`` order: an array, or a mapping name -> value for symbolic
      fields (every name required). Defaults to the MLP's initial weights for neural (MLP and CNF) fields.
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
            raise InvalidInputError(f"`rhs` must be a SymbolicRHS, MLPRHS or CNFRHS; got {type(self.rhs).__name__}.")
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInputError(f"`name` must be a non-empty string; got {self.name!r}.")
        n = self.rhs.n_states
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("y0", _as_state(self.y0, n))
        # parameters
        names = self.rhs.param_names
        p = self.params
        if p is None:
            if hasattr(self.rhs, "initial_params"):  # neural fields (MLPRHS, CNFRHS)
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
        self.loss.data_for(self.ys_shape)  # raises when the loss data does not fit the saved states
        if self.loss.kind == "cnf_nll":
            if not getattr(self.rhs, "is_cnf", False):
                raise InvalidInputError("`loss.kind = 'cnf_nll'` needs a CNF field (CNFRHS, a [cnf] table): its last "
                                        f"state is the log-density change; got {type(self.rhs).__name__}.")

    # -- convenience -------------------------------------------------------------------------------------

    @property
    def n_states(self) -> int:
        """Number of states."""
        return self.rhs.n_states

    @property
    def batch(self) -> int | None:
        """Number of trajectories of a batched problem (``y0`` of shape ``(batch, n_states)``), else ``None``."""
        return self.y0.shape[0] if self.y0.ndim == 2 else None

    @property
    def ys_shape(self) -> tuple[int, ...]:
        """Shape of the saved states: ``(len(saveat), *y0.shape)``."""
        return (self.saveat.size, *self.y0.shape)

    @property
    def loss_data(self) -> np.ndarray | None:
        """The loss's weights/targets as NumPy, shaped to broadcast against the saved states (what backends pass to
        :meth:`Loss.apply` after converting it to their arrays); ``None`` for ``sum_squares``."""
        return self.loss.data_for(self.ys_shape)

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

    def digest(self) -> str:
        """Full SHA-256 hex digest of everything that determines the solution, the loss and its gradient: the
        field (its :meth:`~AbstractRHS.fingerprint`: expressions, or widths, activation, time input, features),
        ``y0`` (and its batch shape), parameters, time span, save times, loss kind and weights/targets."""
        h = hashlib.sha256()
        h.update(self.rhs.fingerprint().encode())
        for arr in (self.y0, self.params, np.asarray(self.tspan), self.saveat):
            h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
        if self.y0.ndim == 2:  # a (1, n) batch is not the same problem as a single (n,) state
            h.update(f"|batch{self.y0.shape}".encode())
        h.update(self.loss.kind.encode())
        data = self.loss.data
        if data is not None:
            h.update(np.ascontiguousarray(data).tobytes())
            if self.loss.kind != "linear" or data.ndim != 2:
                h.update(f"|shape{data.shape}".encode())
        return h.hexdigest()

    def fingerprint(self) -> str:
        """A short hash (16 hex digits) of :meth:`digest`'s inputs (cell keys, reference cache keys)."""
        return self.digest()[:16]

    def __repr__(self) -> str:
        return (
            f"Problem(name={self.name!r}, rhs={self.rhs.describe()!r}, n_params={self.n_params}, "
            + (f"batch={self.batch}, " if self.batch is not None else "")
            + f"tspan={self.tspan}, saveat={len(self.saveat)} times, loss={self.loss!r})"
        )

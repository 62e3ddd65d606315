"""Backend-neutral solver and step-control descriptors (configuration only, no numerics).

A solver descriptor names a method; each backend maps it to its own implementation
(PyTorch: crossode's own steppers; JAX: ``diffrax``; Julia: ``OrdinaryDiffEq``). Step control is a separate
descriptor, as in Diffrax: :class:`Adaptive` (error-controlled) or :class:`Fixed` (a fixed step ``dt``).

=============  =====  ========  ====================  ====================  ==================
descriptor     order  adaptive  PyTorch (crossode)    JAX (diffrax)         Julia
=============  =====  ========  ====================  ====================  ==================
Euler          1      no        own RK                Euler                 Euler
Midpoint       2      yes       own RK (Euler est.)   Midpoint              Midpoint
Heun           2      yes       own RK (Euler est.)   Heun                  Heun
RK4            4      no        own RK                RK4 tableau           RK4
Bosh3          3      yes       own RK                Bosh3                 BS3
Dopri5         5      yes       own RK                Dopri5                DP5
Tsit5          5      yes       own RK                Tsit5                 Tsit5
Dopri8         8      yes       own RK (8(7))         Dopri8                DP8 (8(5,3))
ALF            2      yes       own ALF (MALI)        own ALF (JAX MALI)    unsupported
ImplicitEuler  1      yes       unsupported           ImplicitEuler         ImplicitEuler
Kvaerno5       5      yes       unsupported           Kvaerno5              Kvaerno5
=============  =====  ========  ====================  ====================  ==================
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

import numpy as np

from ._errors import InvalidInputError, fmt_choices
from ._limits import MAX_GRID_STEPS, grid_steps
from ._record import SolverFailure

__all__ = [
    "AbstractSolver",
    "AbstractExplicitRK",
    "AbstractImplicitSolver",
    "AbstractReversibleSolver",
    "Euler",
    "Midpoint",
    "Heun",
    "RK4",
    "Bosh3",
    "Dopri5",
    "Tsit5",
    "Dopri8",
    "ALF",
    "ImplicitEuler",
    "Kvaerno5",
    "AbstractStepControl",
    "Adaptive",
    "Fixed",
    "BATCH_STEPS",
    "SOLVERS",
    "solver_from_name",
    "fixed_grid",
]


class AbstractSolver(abc.ABC):
    """Base of all solver descriptors.

    Class attributes: ``name`` (CLI/record name), ``order`` (global order), ``adaptive`` (has an embedded
    error estimate, so it can be used with :class:`Adaptive`), ``stiff`` (suited to stiff problems).
    """

    name: ClassVar[str]
    order: ClassVar[int]
    adaptive: ClassVar[bool]
    stiff: ClassVar[bool] = False

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


class AbstractExplicitRK(AbstractSolver):
    """Explicit Runge-Kutta method; ``stages`` is the number of stages (FSAL methods reuse the last one)."""

    stages: ClassVar[int]
    fsal: ClassVar[bool] = False


class AbstractImplicitSolver(AbstractSolver):
    """Implicit (stiffly accurate) method for stiff problems."""

    stiff: ClassVar[bool] = True


class AbstractReversibleSolver(AbstractSolver):
    """Algebraically reversible method: each step can be inverted in closed form (needed by MALI)."""


@dataclasses.dataclass(frozen=True, repr=False)
class Euler(AbstractExplicitRK):
    """Explicit Euler, order 1, fixed step only (no error estimate)."""

    name: ClassVar[str] = "euler"
    order: ClassVar[int] = 1
    adaptive: ClassVar[bool] = False
    stages: ClassVar[int] = 1


@dataclasses.dataclass(frozen=True, repr=False)
class Midpoint(AbstractExplicitRK):
    """Explicit midpoint, order 2, with an embedded Euler error estimate."""

    name: ClassVar[str] = "midpoint"
    order: ClassVar[int] = 2
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True, repr=False)
class Heun(AbstractExplicitRK):
    """Heun's method (explicit trapezoid), order 2, with an embedded Euler error estimate."""

    name: ClassVar[str] = "heun"
    order: ClassVar[int] = 2
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 2


@dataclasses.dataclass(frozen=True, repr=False)
class RK4(AbstractExplicitRK):
    """Classical fourth-order Runge-Kutta, fixed step only."""

    name: ClassVar[str] = "rk4"
    order: ClassVar[int] = 4
    adaptive: ClassVar[bool] = False
    stages: ClassVar[int] = 4


@dataclasses.dataclass(frozen=True, repr=False)
class Bosh3(AbstractExplicitRK):
    """Bogacki-Shampine 3(2), FSAL."""

    name: ClassVar[str] = "bosh3"
    order: ClassVar[int] = 3
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 4
    fsal: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True, repr=False)
class Dopri5(AbstractExplicitRK):
    """Dormand-Prince 5(4), FSAL (torchdiffeq ``dopri5``, SciPy ``RK45``)."""

    name: ClassVar[str] = "dopri5"
    order: ClassVar[int] = 5
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 7
    fsal: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True, repr=False)
class Tsit5(AbstractExplicitRK):
    """Tsitouras 5(4), FSAL."""

    name: ClassVar[str] = "tsit5"
    order: ClassVar[int] = 5
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 7
    fsal: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True, repr=False)
class Dopri8(AbstractExplicitRK):
    """Prince-Dormand 8(7), 13 stages (Diffrax's ``Dopri8`` tableau; OrdinaryDiffEq's ``DP8`` is the 8(5,3) pair)."""

    name: ClassVar[str] = "dopri8"
    order: ClassVar[int] = 8
    adaptive: ClassVar[bool] = True
    stages: ClassVar[int] = 13


@dataclasses.dataclass(frozen=True, repr=False)
class ALF(AbstractReversibleSolver):
    """Asynchronous leapfrog (Zhuang et al., ICLR 2021), the forward method of MALI.

    State is ``(z, v)`` with ``v0 = f(t0, z0)``; one evaluation of ``f`` per step; order 2 for ``eta = 1``.

    **Arguments:**
    - ``eta``: damping in ``(0, 1]``, default 1. ``eta = 1`` is exactly invertible but *not stable on decaying
      modes* (the parasitic root has modulus > 1 whenever Re(h*lambda) < 0): use MALI on oscillatory or short
      horizons. ``eta < 1`` damps the forward pass but the inverse divides by ``1 - 2*eta``, so reconstruction
      errors grow geometrically with the number of steps, and the scheme drops to first order.
      ``eta = 0.5`` is not invertible and is rejected.
    """

    name: ClassVar[str] = "alf"
    order: ClassVar[int] = 2
    adaptive: ClassVar[bool] = True
    eta: float = 1.0

    def __post_init__(self):
        eta = self.eta
        if not isinstance(eta, (int, float)) or not math.isfinite(eta) or not (0.0 < eta <= 1.0):
            raise InvalidInputError(f"`eta` must be a number in (0, 1]; got eta={eta!r}.")
        if eta == 0.5:
            raise InvalidInputError("`eta=0.5` makes the ALF step non-invertible (it divides by 1 - 2*eta).")
        object.__setattr__(self, "eta", float(eta))


@dataclasses.dataclass(frozen=True, repr=False)
class ImplicitEuler(AbstractImplicitSolver):
    """Backward Euler (L-stable, order 1)."""

    name: ClassVar[str] = "implicit_euler"
    order: ClassVar[int] = 1
    adaptive: ClassVar[bool] = True


@dataclasses.dataclass(frozen=True, repr=False)
class Kvaerno5(AbstractImplicitSolver):
    """Kvaerno's ESDIRK 5(4), L-stable: the higher-order stiff method (Diffrax and OrdinaryDiffEq)."""

    name: ClassVar[str] = "kvaerno5"
    order: ClassVar[int] = 5
    adaptive: ClassVar[bool] = True


SOLVERS: dict[str, type[AbstractSolver]] = {
    cls.name: cls for cls in (Euler, Midpoint, Heun, RK4, Bosh3, Dopri5, Tsit5, Dopri8, ALF, ImplicitEuler, Kvaerno5)
}


def solver_from_name(name: str, **options) -> AbstractSolver:
    """Build a solver descriptor from its name (case-insensitive), e.g. ``solver_from_name("tsit5")``."""
    cls = SOLVERS.get(str(name).lower())
    if cls is None:
        raise InvalidInputError(f"Unknown solver {name!r}; expected one of {fmt_choices(SOLVERS)}.")
    try:
        return cls(**options)
    except TypeError:
        allowed = [f.name for f in dataclasses.fields(cls)] or ["(none)"]
        raise InvalidInputError(
            f"Solver {name!r} got options {sorted(options)}; allowed options: {', '.join(allowed)}."
        ) from None


# --------------------------------------------------------------------------------------------- step control


BATCH_STEPS = ("shared", "per_sample")
"""Choices of :attr:`Adaptive.batch_steps`."""


class AbstractStepControl(abc.ABC):
    """How step sizes are chosen: :class:`Adaptive` or :class:`Fixed`."""

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """Short human-readable description for tables."""


def _positive(name: str, value, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"`{name}` must be a positive number; got {name}={value!r}.") from None
    if not math.isfinite(v) or v <= 0:
        raise InvalidInputError(f"`{name}` must be a positive finite number; got {name}={value!r}.")
    return v


def _max_steps(value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"`max_steps` must be a positive integer; got max_steps={value!r}.")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Adaptive(AbstractStepControl):
    """Error-controlled steps: accept a step when RMS(err / (atol + rtol*max(|y|, |y_new|))) <= 1.

    **Arguments:**
    - ``rtol``, ``atol``: relative and absolute tolerances.
    - ``dt0``: first step; ``None`` = automatic (Hairer's initial-step algorithm: one evaluation beyond
      ``f(t0, y0)``). Backends without a working automatic choice (Diffrax, see ``diffrax.md`` pitfall 1) get the
      value crossode computes with the same algorithm, so the first step is the same everywhere.
    - ``max_steps``: accepted + rejected steps allowed before the solve stops with status ``max_steps`` (with
      per-sample steps: per sample).
    - ``batch_steps``: how a batched problem (``y0`` of shape ``(batch, ...)``) is stepped. ``"shared"``
      (default; torchdiffeq's and Diffrax's behaviour): one step sequence for the whole batch, the error norm the
      RMS over every entry. ``"per_sample"``: every sample keeps its own time, step size, accept/reject decision and
      error norm (RMS over its own entries) while ``f`` is still evaluated in one batched call per stage on the
      samples still running; a fast or stiff sample no longer forces the others onto its small steps. Which
      backends and gradient methods offer it is each backend's ``supports()`` (``crossode list``); a state without
      a batch axis (1-D ``y0``) is one sample, so both choices are the same there.
    """

    rtol: float = 1e-6
    atol: float = 1e-8
    dt0: float | None = None
    max_steps: int = 100_000
    batch_steps: str = "shared"

    def __post_init__(self):
        object.__setattr__(self, "rtol", _positive("rtol", self.rtol))
        object.__setattr__(self, "atol", _positive("atol", self.atol))
        object.__setattr__(self, "dt0", _positive("dt0", self.dt0, allow_none=True))
        object.__setattr__(self, "max_steps", _max_steps(self.max_steps))
        if self.batch_steps not in BATCH_STEPS:
            raise InvalidInputError(
                f"`batch_steps` must be one of {fmt_choices(BATCH_STEPS)}; got batch_steps={self.batch_steps!r}."
            )

    @property
    def per_sample(self) -> bool:
        """Whether every sample of a batch takes its own steps (``batch_steps == "per_sample"``)."""
        return self.batch_steps == "per_sample"

    @property
    def label(self) -> str:
        return f"rtol={self.rtol:g} atol={self.atol:g}" + (" per_sample" if self.per_sample else "")


@dataclasses.dataclass(frozen=True)
class Fixed(AbstractStepControl):
    """Fixed steps of size ``dt`` on the grid :func:`fixed_grid` (the same grid in every backend)."""

    dt: float
    max_steps: int = 1_000_000

    def __post_init__(self):
        object.__setattr__(self, "dt", _positive("dt", self.dt))
        object.__setattr__(self, "max_steps", _max_steps(self.max_steps))

    @property
    def label(self) -> str:
        return f"dt={self.dt:g}"


def fixed_grid(t0: float, t1: float, dt: float, saveat=(), max_steps: int | None = None) -> np.ndarray:
    """The time grid a :class:`Fixed` solve steps on, shared by every backend.

    Points ``t0 + k*dt*sign(t1 - t0)`` up to ``t1`` (``t1`` always included) merged with the ``saveat`` times, so
    every saved time is a step boundary; points closer than ``1e-10*dt`` to a kept point are dropped.
    Returned in integration order, float64.

    The number of steps is checked *before* the grid is allocated: more than ``max_steps`` (default
    :data:`crossode._limits.MAX_GRID_STEPS`; backends pass ``Fixed.max_steps``) raises
    :class:`~crossode.SolverFailure` with status ``max_steps``, as does a grid that the save times split into more
    than ``max_steps`` steps (checked again after the merge).
    """
    limit = MAX_GRID_STEPS if max_steps is None else int(max_steps)
    needed = grid_steps(t0, t1, dt)
    if needed > limit:
        raise SolverFailure("max_steps", f"the fixed grid needs {needed:,} steps of dt={dt:g} over [{t0:g}, {t1:g}], "
                                         f"more than max_steps={limit:,}")
    span = t1 - t0
    direction = 1.0 if span > 0 else -1.0
    n = int(math.floor(abs(span) / dt + 1e-9))
    pts = t0 + direction * dt * np.arange(n + 1, dtype=np.float64)
    pts = np.concatenate([pts, np.asarray(saveat, dtype=np.float64).ravel(), [t1]])
    pts = np.unique(pts)  # sorted ascending
    if direction < 0:
        pts = pts[::-1]
    keep = [pts[0]]
    for p in pts[1:]:
        if abs(p - keep[-1]) > 1e-10 * dt:
            keep.append(p)
    # make sure the exact endpoints and save times survive the de-duplication
    grid = np.asarray(keep)
    for s in list(np.asarray(saveat, dtype=np.float64).ravel()) + [t1]:
        grid[np.argmin(np.abs(grid - s))] = s
    grid[0] = t0
    if len(grid) - 1 > limit:
        raise SolverFailure("max_steps", f"the fixed grid of dt={dt:g} over [{t0:g}, {t1:g}] with the save times has "
                                         f"{len(grid) - 1:,} steps, more than max_steps={limit:,}")
    return grid

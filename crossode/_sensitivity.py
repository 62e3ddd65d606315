"""Backend-neutral sensitivity (gradient-method) descriptors.

Two families (Onken & Ruthotto's vocabulary):

- *discretise-then-optimise* (DTO): the exact gradient of the discrete solver's output
  (:class:`Direct`, :class:`Checkpointed`, :class:`MALI`, :class:`Forward`);
- *optimise-then-discretise* (OTD): solve the continuous adjoint ODE backwards (:class:`Backsolve`, and the
  Julia-only :class:`InterpolatingAdjoint`, :class:`QuadratureAdjoint`, :class:`GaussAdjoint`).

====================  ===============================  ===============================  ===============================
descriptor            PyTorch (crossode)               JAX (diffrax)                    Julia (SciMLSensitivity)
====================  ===============================  ===============================  ===============================
Direct                autograd through every step      RecursiveCheckpointAdjoint()     ReverseDiffAdjoint
                                                       (Diffrax's default checkpoints;
                                                       fixed steps: one per grid step)
Checkpointed          store accepted steps, recompute  RecursiveCheckpointAdjoint       unsupported (no checkpointed
                      each step with a graph (ACA)     (bounded checkpoints)            discrete adjoint exists)
Backsolve             augmented adjoint ODE backwards  BacksolveAdjoint                 BacksolveAdjoint(checkpointing=
                                                                                        false)
MALI                  ALF inverse steps, O(1) memory   own custom_vjp (ALF)             unsupported
Forward               forward-mode (torch.func.jvp)    ForwardMode                      ForwardDiffSensitivity
InterpolatingAdjoint  unsupported                      unsupported                      InterpolatingAdjoint (also
                                                                                        checkpointing=True)
QuadratureAdjoint     unsupported                      unsupported                      QuadratureAdjoint
GaussAdjoint          unsupported                      unsupported                      GaussAdjoint
====================  ===============================  ===============================  ===============================
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar

from ._errors import InvalidInputError, UnsupportedError, fmt_choices
from ._record import SolverFailure
from ._solvers import AbstractReversibleSolver, AbstractSolver

__all__ = [
    "AbstractSensitivity",
    "AbstractContinuousAdjoint",
    "Direct",
    "Checkpointed",
    "Backsolve",
    "MALI",
    "mali_reconstruction",
    "mali_reconstruction_failure",
    "Forward",
    "InterpolatingAdjoint",
    "QuadratureAdjoint",
    "GaussAdjoint",
    "SENSITIVITIES",
    "VJP_CHOICES",
    "sensitivity_from_name",
    "check_pair",
]

VJP_CHOICES = ("auto", "zygote", "reversediff", "enzyme")
"""Vector-Jacobian product engines of continuous adjoints (used by the Julia backend; others accept 'auto')."""


class AbstractSensitivity(abc.ABC):
    """Base of gradient-method descriptors: ``name`` (CLI/record name) and ``family`` ('dto' or 'otd')."""

    name: ClassVar[str]
    family: ClassVar[str]

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"


class AbstractContinuousAdjoint(AbstractSensitivity):
    """Optimise-then-discretise: the continuous adjoint ODE solved backwards in time."""

    family: ClassVar[str] = "otd"


def _check_vjp(self) -> None:
    if self.vjp not in VJP_CHOICES:
        raise InvalidInputError(f"`vjp` must be one of {fmt_choices(VJP_CHOICES)}; got vjp={self.vjp!r}.")


@dataclasses.dataclass(frozen=True, repr=False)
class Direct(AbstractSensitivity):
    """Backpropagation through the solver's arithmetic, storing every step (memory grows with steps)."""

    name: ClassVar[str] = "direct"
    family: ClassVar[str] = "dto"


@dataclasses.dataclass(frozen=True, repr=False)
class Checkpointed(AbstractSensitivity):
    """Discrete gradient that stores accepted states (or ``checkpoints`` of them) and recomputes steps backwards.

    PyTorch: every accepted state is stored (ACA; only ``checkpoints=None``). JAX: Diffrax binomial checkpointing
    with ``checkpoints`` stored states; ``None`` means Diffrax's own default,
    ``floor(-1.5 + sqrt(2*max_steps + 0.25)) + 1`` (bounded, independent of the steps taken). Julia: unsupported,
    since SciMLSensitivity has no checkpointed *discrete* adjoint; its checkpointed continuous adjoint is
    :class:`InterpolatingAdjoint` ``(checkpointing=True)`` (OTD, a different gradient), recorded under that name.
    """

    name: ClassVar[str] = "checkpointed"
    family: ClassVar[str] = "dto"
    checkpoints: int | None = None
    vjp: str = "auto"

    def __post_init__(self):
        c = self.checkpoints
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise InvalidInputError(f"`checkpoints` must be None or a positive integer; got checkpoints={c!r}.")
        _check_vjp(self)


@dataclasses.dataclass(frozen=True, repr=False)
class Backsolve(AbstractContinuousAdjoint):
    """Continuous adjoint (Chen et al. 2018): re-integrate ``y`` backwards with the adjoint and parameter integral.

    Least memory; inaccurate or unstable when the backward reconstruction of ``y`` is (stiff, chaotic, long).

    The backward solve uses the forward solver; between consecutive save times it restarts ``y`` from the forward
    solution. Adaptive steps: the error norm covers the **whole augmented state** ``(y, a_y, a_params)`` in every
    backend (the default of Diffrax's ``BacksolveAdjoint`` and of torchdiffeq's ``odeint_adjoint``; no seminorm),
    with the forward ``rtol``/``atol``. Fixed steps: the forward grid walked in reverse. A backward solve that
    fails (``max_steps``, a root find that does not converge) is the result's status, never a partial gradient.
    """

    name: ClassVar[str] = "backsolve"
    vjp: str = "auto"

    def __post_init__(self):
        _check_vjp(self)


@dataclasses.dataclass(frozen=True, repr=False)
class MALI(AbstractSensitivity):
    """Memory-efficient ALF integrator gradient: exact reversal of :class:`~crossode.ALF` steps.

    Stores only the end state and the accepted step sizes; reconstructs each step with the inverse ALF step.
    Requires a reversible solver (``ALF``). After the reverse sweep the reconstructed start ``(z0, v0)`` is
    compared with the true one (:func:`mali_reconstruction`, the same rule in every backend); a drift above the
    limit ends as status ``reconstruction_error`` instead of a silently wrong gradient.

    ``reconstruction_rtol``: the drift limit (RMS of the error relative to the start state, per part ``z``,
    ``v``). ``None`` (default): automatic, ``max(min(sqrt(eps), rtol), 10 * n_steps * eps)`` with ``eps`` the
    state dtype's machine epsilon and ``rtol`` the adaptive tolerance (``sqrt(eps)`` alone for fixed steps):
    the reconstruction must be as accurate as the solve asked for, never lose more than half the working
    digits, and may always carry the round-off a non-amplifying reversible sweep accumulates (measured at most
    ~1.2 n eps on oscillatory, tanh and MLP fields). Raise it to accept more drift.
    """

    name: ClassVar[str] = "mali"
    family: ClassVar[str] = "dto"
    reconstruction_rtol: float | None = None

    def __post_init__(self):
        r = self.reconstruction_rtol
        if r is not None and (isinstance(r, bool) or not isinstance(r, (int, float)) or not r > 0):
            raise InvalidInputError(f"`reconstruction_rtol` must be None (automatic) or a positive number; got {r!r}.")


MALI_ROUNDOFF_FACTOR = 10.0
"""Round-off allowance of the automatic MALI drift limit, in units of ``n_steps * eps`` (see :class:`MALI`)."""


def mali_reconstruction(mean_squares, n_steps: int, eps: float, step, reconstruction_rtol: float | None = None):
    """MALI's reconstruction test, one rule for every backend: returns ``(drift, limit, rule)``; fail if
    ``not drift <= limit``.

    ``mean_squares``: the six means over all elements of ``(z0_rec - z0)**2, z0**2, z_N**2, (v0_rec - v0)**2,
    v0**2, v_N**2`` (``_rec``: reconstructed by the reverse sweep; ``_N``: the stored end state). ``eps``: machine
    epsilon of the state dtype; ``step``: the solve's :class:`~crossode.Adaptive` or :class:`~crossode.Fixed`.

    ``drift = max over x in (z, v) of RMS(x0_rec - x0) / scale_x`` with ``scale_x = max(RMS(x0), atol / rtol)``
    for adaptive steps (the tolerances' own switch from relative to absolute error, so a zero start state is
    measured absolutely) and ``RMS(x0)`` for fixed steps (``RMS(x_N)`` if the whole start is zero). The start state
    is the scale because the gradient needs the states near ``t0`` right: an error small against a grown end state (``u' = 2u``
    over ``[0, 10]``, ``u(10) = 5e8 u0``) can still be large against ``u0``. ``limit``: ``reconstruction_rtol``,
    or automatic as in :class:`MALI`. ``rule`` says which (for messages). NumPy/float arithmetic only.
    """
    dz2, z02, zn2, dv2, v02, vn2 = (float(x) for x in mean_squares)
    rtol = getattr(step, "rtol", None)
    atol = getattr(step, "atol", 0.0) if rtol is not None else 0.0
    if reconstruction_rtol is not None:
        limit, rule = float(reconstruction_rtol), f"reconstruction_rtol={reconstruction_rtol:g}"
    else:
        digits = math.sqrt(eps) if rtol is None else min(math.sqrt(eps), rtol)
        roundoff = MALI_ROUNDOFF_FACTOR * n_steps * eps
        limit = max(digits, roundoff)
        rule = (f"automatic limit max(min(sqrt(eps), rtol), {MALI_ROUNDOFF_FACTOR:g}*n*eps) = {limit:.3g}"
                if rtol is not None else
                f"automatic limit max(sqrt(eps), {MALI_ROUNDOFF_FACTOR:g}*n*eps) = {limit:.3g} for fixed steps")
    drift = 0.0
    for d2, s2, e2 in ((dz2, z02, zn2), (dv2, v02, vn2)):
        scale = math.sqrt(s2)
        if rtol is not None:
            scale = max(scale, atol / rtol)
        elif scale == 0.0:
            scale = math.sqrt(e2)
        d = math.sqrt(d2)
        drift = max(drift, d / scale if scale > 0 else (0.0 if d == 0 else math.inf))
        if not math.isfinite(d2):
            drift = math.inf
    return drift, limit, rule


def mali_reconstruction_failure(drift: float, limit: float, rule: str, n_steps: int, eta: float):
    """The :class:`~crossode.SolverFailure` for a failed :func:`mali_reconstruction` test (same text everywhere)."""
    return SolverFailure(
        "reconstruction_error",
        f"MALI: the reconstructed initial state drifted by {drift:.3g} (RMS, relative to the start state) after "
        f"{n_steps} inverse steps, above the {rule} (eta={eta:g}); the gradient would be wrong. Undamped ALF is "
        f"unstable on decaying modes and damped ALF (eta < 1) amplifies errors in reverse: use a shorter horizon, "
        f"Direct() or Checkpointed(), or accept the drift with MALI(reconstruction_rtol=...).",
    )


@dataclasses.dataclass(frozen=True, repr=False)
class Forward(AbstractSensitivity):
    """Forward-mode sensitivities through the solver (one tangent per input; cheap for few parameters)."""

    name: ClassVar[str] = "forward"
    family: ClassVar[str] = "dto"


@dataclasses.dataclass(frozen=True, repr=False)
class InterpolatingAdjoint(AbstractContinuousAdjoint):
    """Julia only: continuous adjoint using the forward dense interpolant (SciMLSensitivity)."""

    name: ClassVar[str] = "interpolating"
    checkpointing: bool = False
    vjp: str = "auto"

    def __post_init__(self):
        _check_vjp(self)


@dataclasses.dataclass(frozen=True, repr=False)
class QuadratureAdjoint(AbstractContinuousAdjoint):
    """Julia only: continuous adjoint with the parameter integral computed by quadrature (SciMLSensitivity)."""

    name: ClassVar[str] = "quadrature"
    vjp: str = "auto"

    def __post_init__(self):
        _check_vjp(self)


@dataclasses.dataclass(frozen=True, repr=False)
class GaussAdjoint(AbstractContinuousAdjoint):
    """Julia only: continuous adjoint with Gauss quadrature accumulated during the reverse solve."""

    name: ClassVar[str] = "gauss"
    vjp: str = "auto"

    def __post_init__(self):
        _check_vjp(self)


SENSITIVITIES: dict[str, type[AbstractSensitivity]] = {
    cls.name: cls
    for cls in (Direct, Checkpointed, Backsolve, MALI, Forward, InterpolatingAdjoint, QuadratureAdjoint, GaussAdjoint)
}


def sensitivity_from_name(name: str, **options) -> AbstractSensitivity:
    """Build a sensitivity descriptor from its name (case-insensitive), e.g. ``sensitivity_from_name("mali")``."""
    cls = SENSITIVITIES.get(str(name).lower())
    if cls is None:
        raise InvalidInputError(f"Unknown sensitivity {name!r}; expected one of {fmt_choices(SENSITIVITIES)}.")
    try:
        return cls(**options)
    except TypeError:
        allowed = [f.name for f in dataclasses.fields(cls)] or ["(none)"]
        raise InvalidInputError(
            f"Sensitivity {name!r} got options {sorted(options)}; allowed options: {', '.join(allowed)}."
        ) from None


def check_pair(solver: AbstractSolver, sensitivity: AbstractSensitivity) -> None:
    """Raise :class:`UnsupportedError` for solver/sensitivity pairs that make no sense in any backend."""
    if not isinstance(solver, AbstractSolver):
        raise InvalidInputError(f"`solver` must be a solver descriptor such as Tsit5(); got {solver!r}.")
    if not isinstance(sensitivity, AbstractSensitivity):
        raise InvalidInputError(f"`sensitivity` must be a sensitivity descriptor such as Direct(); got {sensitivity!r}.")
    if isinstance(sensitivity, MALI) and not isinstance(solver, AbstractReversibleSolver):
        raise UnsupportedError(
            f"`sensitivity=MALI()` requires a reversible solver such as `ALF()`; got `solver={solver!r}`."
        )

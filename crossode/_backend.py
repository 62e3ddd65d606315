"""The backend protocol every ecosystem adapter implements (PyTorch, JAX, Julia, and the reference).

A backend is stateless configuration plus two entry points. ``supports`` answers *whether* (with a reason when
not) and ``prepare`` builds a :class:`Prepared` computation for one cell: everything expensive that is not part of
a gradient call (code generation, moving data to the device, building closures) happens there, and the harness
(:func:`crossode.measure`) times ``Prepared.gradient``/``Prepared.solve`` with a warm-up call first.

Conventions every backend follows:

- inputs and outputs at this boundary are float64 NumPy in the neutral layouts (``dparams`` in the problem's flat
  parameter layout, ``dy0`` like ``y0``, ``ys`` as ``(len(saveat), n_states)``);
- the loss is :meth:`crossode.Loss` applied to the saved states: the same arithmetic everywhere;
- a solver failure raises :class:`~crossode.SolverFailure` with a status, never returns NaN;
- ``Fixed`` step control steps on :func:`crossode.fixed_grid`; adaptive solves end steps on the save times or
  interpolate, as documented per backend.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._problem import Problem
    from ._record import GradientOutput, SolveOutput
    from ._sensitivity import AbstractSensitivity
    from ._solvers import AbstractSolver, AbstractStepControl

__all__ = ["Backend", "Prepared"]


class Prepared(abc.ABC):
    """One prepared cell: call :meth:`gradient` (and :meth:`solve`) repeatedly; each call recomputes everything."""

    @abc.abstractmethod
    def solve(self) -> SolveOutput:
        """Forward solve only (no gradient bookkeeping)."""

    @abc.abstractmethod
    def gradient(self) -> GradientOutput:
        """Loss and gradients w.r.t. parameters and ``y0`` with the prepared sensitivity method."""

    def synchronize(self) -> None:
        """Block until queued device work is done (CUDA, JAX async dispatch). Default: nothing to wait for."""

    def reset_peak_memory(self) -> None:
        """Reset the device allocator's peak counter before a memory measurement (GPU only)."""

    def peak_memory(self) -> tuple[int, str] | None:
        """``(bytes, kind)`` of the device allocator's peak since the last reset, or ``None`` to use peak RSS."""
        return None


@runtime_checkable
class Backend(Protocol):
    """What the registry expects of a backend class (see :mod:`crossode._registry`)."""

    name: str

    def versions(self) -> dict[str, str]:
        """Versions of the libraries this backend drives (recorded in every result)."""
        ...

    def devices(self) -> list[str]:
        """Devices usable here, e.g. ``['cpu']`` or ``['cpu', 'cuda']``."""
        ...

    def supports(
        self,
        problem: Problem,
        solver: AbstractSolver,
        sensitivity: AbstractSensitivity,
        step: AbstractStepControl,
        device: str = "cpu",
    ) -> str | None:
        """``None`` if this combination is supported, else a one-line reason (reused by errors and test skips)."""
        ...

    def prepare(
        self,
        problem: Problem,
        solver: AbstractSolver,
        sensitivity: AbstractSensitivity,
        step: AbstractStepControl,
        *,
        device: str = "cpu",
        dtype: str = "float64",
    ) -> Prepared:
        """Build the computation for one cell; raises :class:`~crossode.UnsupportedError` if ``supports`` fails."""
        ...

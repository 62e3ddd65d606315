"""``reference`` backend: the SciPy closed-form / forward-sensitivity / adjoint reference as a backend.

It ignores the requested solver, sensitivity and step control (the reference always runs at its own tight
tolerance, see :mod:`crossode._reference`) and only runs on the CPU; its records carry the reference's time, so a
sweep shows what an independent check costs.
"""

from __future__ import annotations

import numpy as np
import scipy

from ..._backend import Prepared
from ..._errors import UnsupportedError
from ..._record import GradientOutput, SolveOutput, Stats
from ..._reference import reference
from .._capabilities import reference_devices


class _PreparedReference(Prepared):
    def __init__(self, problem):
        self.problem = problem

    def _run(self):
        return reference(self.problem, cache=False)  # a timed call really computes the reference (no cache)

    def solve(self) -> SolveOutput:
        return SolveOutput(np.array(self._run().ys), Stats())

    def gradient(self) -> GradientOutput:
        r = self._run()
        return GradientOutput(r.loss, np.array(r.dparams), np.array(r.dy0), Stats(), dt0=r.dt0, dt1=r.dt1)


class ReferenceBackend:
    """Backend protocol implementation for the independent reference."""

    name = "reference"

    def versions(self) -> dict[str, str]:
        return {"numpy": np.__version__, "scipy": scipy.__version__}

    def devices(self) -> list[str]:
        return reference_devices()

    def supports(self, problem, solver, sensitivity, step, device="cpu") -> str | None:
        if device != "cpu":
            return f"the reference runs on the CPU only; got device={device!r}"
        return None

    def prepare(self, problem, solver, sensitivity, step, *, device="cpu", dtype="float64") -> Prepared:
        reason = self.supports(problem, solver, sensitivity, step, device)
        if reason:
            raise UnsupportedError(reason)
        return _PreparedReference(problem)

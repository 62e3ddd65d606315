"""Result types: solver statistics, backend outputs, failure statuses and the flat result :class:`Record`.

The record schema is stable: sweeps append one JSON object per record (one line of a JSONL file) and reports
read them back with :func:`Record.from_dict`, ignoring unknown keys.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._errors import CrossODEError

__all__ = ["STATUSES", "INACCURATE_FACTOR", "INACCURATE_CAP", "ERROR_RESOLUTION", "error_limit", "one_line",
           "SolverFailure", "Stats", "SolveOutput", "GradientOutput", "Record"]

STATUSES: dict[str, str] = {
    "ok": "finished; every number in the record is valid",
    "inaccurate": "finished, but the gradient is further from the independent reference than the step control "
    "promises: relative L2 error above min(0.1, 1000 x max(rtol, 1e-10 in float64 | 1e-6 in float32)) for adaptive "
    "steps, above 0.1 for fixed steps (see crossode.error_limit); its numbers are kept for inspection",
    "max_steps": "the solver used max_steps steps before reaching t1",
    "step_size_too_small": "the step size collapsed (adaptive controller could not meet the tolerance)",
    "diverged": "a state, loss or gradient became non-finite",
    "reconstruction_error": "MALI's backward reconstruction drifted from the forward trajectory beyond tolerance",
    "solver_error": "the backend's solver reported another failure (message has its return code)",
    "unsupported": "the backend does not support this (problem, solver, sensitivity, device) combination",
    "unavailable": "the backend cannot be loaded on this machine (message says why)",
    "crashed": "an unexpected exception, or the worker process died (message has the tail of its error output)",
    "timeout": "the cell ran longer than its time limit",
}
"""Every status a record can carry, with its meaning. Only ``ok`` and ``inaccurate`` records carry numbers."""

INACCURATE_FACTOR = 1000.0
"""How far above ``rtol`` an adaptive cell's ``grad_error`` may be and still count as ``ok``.

Global errors of adaptive solvers are ``rtol`` times a problem-dependent amplification: in the committed comparisons
(``comparisons/*/report/tables/records.csv``) every gradient that is right up to that amplification has
``grad_error / rtol <= 168`` (Kvaerno5 on stiff Van der Pol at rtol 1e-7; Backsolve on ``decay2``: 137), while the
error-norm trap (Sapienza et al.), where the step controller never sees the error that matters, gives 6e5-1e6."""

INACCURATE_CAP = 0.1
"""``grad_error`` (10%) above which a finished cell is ``inaccurate`` whatever the tolerance; also the limit of
fixed-step cells, which promise no accuracy of their own (the user chose ``dt``)."""

ERROR_RESOLUTION: dict[str, float] = {"float64": 1e-10, "float32": 1e-6}
"""Smallest relative error that counts as resolved, per dtype: ``rtol`` below it is treated as it (the reference is
accurate to ~1e-10; float32 arithmetic to ~1e-6), so tight tolerances do not make rounding ``inaccurate``."""


def error_limit(rtol: float | None, dtype: str = "float64") -> float:
    """The largest ``grad_error`` a finished cell may have and still be ``ok``.

    ``min(INACCURATE_CAP, INACCURATE_FACTOR * max(rtol, ERROR_RESOLUTION[dtype]))`` for adaptive cells (``rtol``
    given), :data:`INACCURATE_CAP` for fixed-step cells (``rtol=None``).
    """
    if rtol is None:
        return INACCURATE_CAP
    floor = ERROR_RESOLUTION.get(dtype, ERROR_RESOLUTION["float64"])
    return min(INACCURATE_CAP, INACCURATE_FACTOR * max(float(rtol), floor))


def one_line(text, limit: int = 300) -> str:
    """A message as one line of at most ``limit`` characters: its first non-empty line, followed by the last
    non-empty one when the first ends with a colon (``"...; stderr tail:"``); the rest belongs in ``details``."""
    lines = [ln.strip() for ln in str(text or "").splitlines() if ln.strip()]
    if not lines:
        return ""
    out = lines[0]
    if len(lines) > 1 and out.endswith(":"):
        out = f"{out} {lines[-1]}"
    return out if len(out) <= limit else out[: limit - 3] + "..."


class SolverFailure(CrossODEError):
    """Raised inside a backend when a solve fails; ``status`` is one of :data:`STATUSES`."""

    def __init__(self, status: str, message: str):
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass
class Stats:
    """Work counters of one forward solve or one gradient computation.

    ``nfe_forward``/``nfe_backward``: vector-field evaluations in the forward and backward passes (a VJP or JVP
    of the vector field counts as one evaluation); ``steps_accepted``/``steps_rejected``: forward steps.
    ``None`` means the backend cannot count it.

    With per-sample steps (``Adaptive(batch_steps="per_sample")``) the NFE count *batched* calls (each evaluates
    every sample still running, so they bound the time), the step counts are those of the sample with the most
    attempts, and ``per_sample`` holds the distribution over samples (the evaluations each sample received on
    average, ``nfe_forward_mean``/``nfe_backward_mean``, and its steps; see
    ``crossode/backends/torch/_persample.py``); ``None`` for shared steps.
    """

    nfe_forward: int | None = None
    nfe_backward: int | None = None
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    per_sample: dict | None = None


@dataclasses.dataclass
class SolveOutput:
    """Forward-only result: saved states ``ys`` of shape ``(len(saveat), *y0.shape)`` as float64 NumPy
    (``(len(saveat), batch, n_states)`` for a batched problem)."""

    ys: np.ndarray
    stats: Stats


@dataclasses.dataclass
class GradientOutput:
    """Loss and its gradient w.r.t. the flat parameters and ``y0`` (float64 NumPy, neutral layouts; ``dy0`` has
    the shape of ``y0``).

    ``dt0``/``dt1`` are the gradients w.r.t. the start and end times where the backend provides them.
    """

    loss: float
    dparams: np.ndarray
    dy0: np.ndarray
    stats: Stats
    dt0: float | None = None
    dt1: float | None = None


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else x
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


@dataclasses.dataclass
class Record:
    """One measurement: a (problem, backend, solver, sensitivity, step control, device) cell.

    Errors are relative L2 errors against the independent reference (:mod:`crossode.reference`):
    ``grad_error`` over the concatenation ``[dparams, dy0]``, ``dparams_error`` and ``dy0_error`` separately;
    ``loss_error`` for the loss. Times are medians over repeats after a warm-up call; ``compile_s`` is the extra
    time of the first call (tracing, compilation, JIT warm-up). ``memory_kind`` says what
    ``peak_memory_bytes`` measured (e.g. ``cpu_rss``: peak resident set above the pre-call baseline;
    ``cuda_allocator``: ``torch.cuda.max_memory_allocated``; ``xla_temp``: compiled program temp size);
    ``cpu_rss`` is only recorded for the first cell measured in a process (later in-process cells share its heap,
    so their deltas are meaningless): both fields are ``None`` there. ``message`` is one line; ``details`` keeps
    what did not fit (a traceback, a worker's stderr tail). ``host`` is the machine that ran a sweep cell (``None``
    when nothing ran); timings compare only between records of one host. ``taylor_*`` (only with
    ``measure(..., taylor=True)``): the Taylor test of ``dparams`` against the loss the solver computes
    (:mod:`crossode._taylor`): the fitted ``E1`` slope (2: the gradient is the exact derivative of the computed loss),
    the status (``consistent``, ``inconsistent``, ``unresolved``, or ``not_run`` with the reason in ``taylor``),
    the inconsistency bound, and ``taylor`` (the whole :meth:`~crossode.check.TaylorResult.to_dict`).
    ``batch_steps``: the adaptive step control's ``batch_steps`` (``None`` for fixed steps); ``per_sample``:
    :attr:`Stats.per_sample` of a per-sample cell.
    """

    problem: str
    backend: str
    solver: str
    sensitivity: str
    rtol: float | None = None
    atol: float | None = None
    dt: float | None = None
    device: str = "cpu"
    dtype: str = "float64"
    status: str = "ok"
    message: str = ""
    loss: float | None = None
    loss_error: float | None = None
    grad_error: float | None = None
    dparams_error: float | None = None
    dy0_error: float | None = None
    dt0_error: float | None = None
    dt1_error: float | None = None
    reference: str | None = None
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    steps_accepted: int | None = None
    steps_rejected: int | None = None
    time_forward_s: float | None = None
    time_gradient_s: float | None = None
    compile_s: float | None = None
    repeats: int | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    threads: int | None = None
    batch_steps: str | None = None
    per_sample: dict | None = None
    solver_options: dict = dataclasses.field(default_factory=dict)
    sensitivity_options: dict = dataclasses.field(default_factory=dict)
    versions: dict = dataclasses.field(default_factory=dict)
    tags: dict = dataclasses.field(default_factory=dict)
    details: str = ""
    dparams: list | None = None
    dy0: list | None = None
    host: str | None = None
    taylor_slope: float | None = None
    taylor_status: str | None = None
    taylor_inconsistency: float | None = None
    taylor: dict | None = None

    @property
    def ok(self) -> bool:
        """True when the cell finished and its numbers are valid."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (non-finite floats become ``None``)."""
        return {k: _clean(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """Rebuild a record from :meth:`to_dict` output; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

"""Pure-Python marshalling between crossode's neutral objects and ``CrossODE.build``/``gradient_cell``/``solve_cell``.

Nothing here imports juliacall: the tests check every rule without Julia.

Python -> Julia (:func:`build_call`): a :class:`JuliaCall` holding exactly the keyword arguments of
``CrossODE.build`` (``julia/src/CrossODE.jl``): generated source, in-place or not, ``u0``/``p``, time span, save
times, algorithm name, sensealg name + VJP + checkpointing, tolerances or the fixed grid, loss kind and weights.
Layout: the neutral loss weights are ``(n_save, n_state)``; Julia's ``Array(sol)`` is ``(n_state, n_save)``, so
the weights travel transposed (C-contiguous ``(n_state, n_save)``, which juliacall shows to Julia with the same
logical indices).

Julia -> Python (:func:`gradient_output`, :func:`solve_output`): the fields of the returned ``NamedTuple`` as a
plain mapping; ``ys`` comes back ``(n_state, n_save)`` and is transposed to the neutral ``(n_save, n_state)``;
``status`` other than ``ok`` raises :class:`~crossode.SolverFailure`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._stepping import error_order, initial_step
from ..._problem import Problem
from ..._record import STATUSES, GradientOutput, SolveOutput, SolverFailure, Stats
from ..._rhs import MLPRHS, SymbolicRHS
from ..._sensitivity import (
    MALI,
    AbstractSensitivity,
    Backsolve,
    Checkpointed,
    Direct,
    Forward,
    GaussAdjoint,
    InterpolatingAdjoint,
    QuadratureAdjoint,
)
from ..._solvers import (
    ALF,
    RK4,
    AbstractImplicitSolver,
    AbstractSolver,
    AbstractStepControl,
    Adaptive,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    Fixed,
    Heun,
    ImplicitEuler,
    Kvaerno5,
    Midpoint,
    Tsit5,
    fixed_grid,
)
from ._field import julia_source

__all__ = [
    "SOLVER_ALGS",
    "ALG_SUBPACKAGE",
    "SENSEALG_KINDS",
    "VJP_JULIA",
    "RETCODE_STATUS",
    "DEVICES",
    "FIXED_QUAD_TOLERANCES",
    "SensealgSpec",
    "JuliaCall",
    "sensealg_spec",
    "unsupported_reason",
    "uses_inplace",
    "build_call",
    "status_from",
    "gradient_output",
    "solve_output",
    "GRADIENT_FIELDS",
    "SOLVE_FIELDS",
]

SOLVER_ALGS: dict[type, str] = {
    Euler: "Euler",
    Midpoint: "Midpoint",
    Heun: "Heun",
    RK4: "RK4",
    Bosh3: "BS3",
    Dopri5: "DP5",
    Tsit5: "Tsit5",
    Dopri8: "DP8",
    ImplicitEuler: "ImplicitEuler",
    Kvaerno5: "Kvaerno5",
}
"""crossode solver descriptor -> OrdinaryDiffEq algorithm (``CrossODE.make_alg``)."""

ALG_SUBPACKAGE: dict[str, str] = {
    "Euler": "OrdinaryDiffEqLowOrderRK",
    "Midpoint": "OrdinaryDiffEqLowOrderRK",
    "Heun": "OrdinaryDiffEqLowOrderRK",
    "RK4": "OrdinaryDiffEqLowOrderRK",
    "BS3": "OrdinaryDiffEqLowOrderRK",
    "DP5": "OrdinaryDiffEqLowOrderRK",
    "Tsit5": "OrdinaryDiffEqTsit5",
    "DP8": "OrdinaryDiffEqHighOrderRK",
    "ImplicitEuler": "OrdinaryDiffEqSDIRK",
    "Kvaerno5": "OrdinaryDiffEqSDIRK",
}
"""OrdinaryDiffEq v7 subpackage that defines and exports each algorithm (checked against ode_algorithms.txt)."""

SENSEALG_KINDS: dict[type, str] = {
    Direct: "ReverseDiffAdjoint",
    Forward: "ForwardDiffSensitivity",
    Backsolve: "BacksolveAdjoint",
    Checkpointed: "InterpolatingAdjoint",
    InterpolatingAdjoint: "InterpolatingAdjoint",
    QuadratureAdjoint: "QuadratureAdjoint",
    GaussAdjoint: "GaussAdjoint",
}
"""crossode sensitivity descriptor -> SciMLSensitivity algorithm (``CrossODE.make_sensealg``)."""

VJP_JULIA: dict[str, str] = {
    "auto": "nothing",
    "zygote": "ZygoteVJP()",
    "reversediff": "ReverseDiffVJP(true)",
    "enzyme": "EnzymeVJP()",
}
"""crossode ``vjp`` option -> the ``autojacvec`` passed to the continuous adjoints (``CrossODE.make_vjp``)."""

RETCODE_STATUS: dict[str, str] = {
    "MaxIters": "max_steps",
    "DtLessThanMin": "step_size_too_small",
    "Unstable": "diverged",
    "DtNaN": "diverged",
}
"""Failed return codes with their own status (mirror of ``CrossODE.status_of``); other failures: ``solver_error``."""

DEVICES = ("cpu", "cuda")
DTYPES = ("float64", "float32")

FIXED_QUAD_TOLERANCES = (1e-10, 1e-8)
"""``QuadratureAdjoint``'s (abstol, reltol) for fixed-step solves (adaptive solves pass the solve's tolerances)."""

GRADIENT_FIELDS = (
    "status", "retcode", "loss", "du0", "dp", "nf", "naccept", "nreject",
    "calls_forward", "calls_backward", "time_forward_s", "time_total_s",
)
"""Fields of ``CrossODE.gradient_cell``'s result."""

SOLVE_FIELDS = ("status", "retcode", "ys", "t", "nf", "naccept", "nreject", "calls", "time_s")
"""Fields of ``CrossODE.solve_cell``'s result."""

_SUPPORTED_SOLVERS = ", ".join(c.__name__ for c in SOLVER_ALGS)


@dataclasses.dataclass(frozen=True)
class SensealgSpec:
    """A SciMLSensitivity algorithm as ``CrossODE.make_sensealg`` arguments."""

    kind: str
    vjp: str = "auto"
    checkpointing: bool = False

    @property
    def julia(self) -> str:
        """The Julia expression this spec builds (for records and messages)."""
        if self.kind in ("ReverseDiffAdjoint", "ForwardDiffSensitivity"):
            return f"{self.kind}()"
        args = [f"autojacvec = {VJP_JULIA[self.vjp]}"]
        if self.kind != "QuadratureAdjoint":
            args.append(f"checkpointing = {str(self.checkpointing).lower()}")
        return f"{self.kind}({', '.join(args)})"

    @property
    def continuous(self) -> bool:
        """Whether this is a continuous adjoint (uses a VJP of the vector field)."""
        return self.kind not in ("ReverseDiffAdjoint", "ForwardDiffSensitivity")


def sensealg_spec(sensitivity: AbstractSensitivity, device: str = "cpu") -> SensealgSpec:
    """The SciMLSensitivity algorithm for a crossode sensitivity (``vjp='auto'`` becomes Zygote on CUDA)."""
    kind = SENSEALG_KINDS.get(type(sensitivity))
    if kind is None:
        raise KeyError(type(sensitivity).__name__)
    if kind in ("ReverseDiffAdjoint", "ForwardDiffSensitivity"):
        return SensealgSpec(kind)
    vjp = getattr(sensitivity, "vjp", "auto")
    if device == "cuda" and vjp == "auto":
        vjp = "zygote"
    if isinstance(sensitivity, Checkpointed):
        checkpointing = True
    elif isinstance(sensitivity, InterpolatingAdjoint):
        checkpointing = bool(sensitivity.checkpointing)
    else:  # Backsolve: pure backsolve (SciMLSensitivity's default would checkpoint at the saves); Gauss: none
        checkpointing = False
    return SensealgSpec(kind, vjp, checkpointing)


def unsupported_reason(
    problem: Problem,
    solver: AbstractSolver,
    sensitivity: AbstractSensitivity,
    step: AbstractStepControl,
    device: str = "cpu",
    dtype: str = "float64",
) -> str | None:
    """``None`` if the Julia backend can run this cell, else a one-line reason (no Julia needed to decide)."""
    if device not in DEVICES:
        return f"unknown device {device!r}; the Julia backend knows 'cpu' and 'cuda' (CUDA.jl)"
    if dtype not in DTYPES:
        return f"dtype {dtype!r} is not supported; use 'float64' or 'float32'"
    if not isinstance(problem.rhs, (SymbolicRHS, MLPRHS)):
        return f"the Julia backend cannot generate code for {type(problem.rhs).__name__}"
    reason = _neutral_features_reason(problem)
    if reason is not None:
        return reason
    if isinstance(solver, ALF):
        return (
            "ALF (asynchronous leapfrog) has no OrdinaryDiffEq implementation; the Julia backend supports "
            f"{_SUPPORTED_SOLVERS}"
        )
    if type(solver) not in SOLVER_ALGS:
        return f"solver {type(solver).__name__} has no Julia mapping; supported: {_SUPPORTED_SOLVERS}"
    if isinstance(sensitivity, MALI):
        return "MALI needs the ALF solver, which neither OrdinaryDiffEq nor SciMLSensitivity provides"
    if type(sensitivity) not in SENSEALG_KINDS:
        return f"sensitivity {type(sensitivity).__name__} has no SciMLSensitivity mapping"
    if isinstance(step, Adaptive):
        if not solver.adaptive:
            return f"{type(solver).__name__} has no error estimate in crossode; use Fixed(dt=...)"
    elif not isinstance(step, Fixed):
        return f"unknown step control {step!r}"
    if isinstance(sensitivity, Checkpointed) and sensitivity.checkpoints is not None:
        return (
            "Checkpointed(checkpoints=N): SciMLSensitivity's InterpolatingAdjoint(checkpointing=true) checkpoints at "
            "the save times and cannot bound their number; use Checkpointed() (checkpoints=None)"
        )
    if problem.t1 < problem.t0 and problem.saveat.size > 1:
        return (
            "backward-in-time spans (t1 < t0) with several save times are not supported (SciMLSensitivity sorts "
            "saveat ascending inside its adjoints)"
        )
    if device == "cuda":
        if not isinstance(problem.rhs, MLPRHS):
            return "device='cuda' needs a vectorised (MLP) field: generated symbolic code indexes scalars of u"
        if isinstance(solver, AbstractImplicitSolver):
            return "device='cuda' with implicit solvers is not supported by crossode's Julia backend"
        if isinstance(sensitivity, Direct):
            return "Direct maps to ReverseDiffAdjoint, which is CPU-only; use an adjoint with vjp='zygote' on CUDA"
        if isinstance(sensitivity, Forward):
            return "Forward (ForwardDiffSensitivity) is CPU-only in crossode's Julia backend; use an adjoint on CUDA"
        vjp = getattr(sensitivity, "vjp", "auto")
        if vjp not in ("auto", "zygote"):
            return f"vjp={vjp!r} is CPU-only (ReverseDiffVJP/EnzymeVJP); use vjp='zygote' on CUDA"
    return None


def _neutral_features_reason(problem: Problem) -> str | None:
    """Problem features of the neutral layer the Julia code generation and marshalling do not handle yet."""
    if problem.y0.ndim != 1:
        return f"batched problems (y0 of shape {problem.y0.shape}) are not implemented in the Julia backend yet"
    if problem.loss.kind not in ("sum_squares", "linear"):
        return f"loss kind {problem.loss.kind!r} is not implemented in the Julia backend yet"
    rhs = problem.rhs
    if isinstance(rhs, MLPRHS) and rhs.time_input:
        return "MLP fields with time_input are not implemented in the Julia backend yet"
    if isinstance(rhs, MLPRHS) and rhs.features != "identity":
        return f"MLP fields with features={rhs.features!r} are not implemented in the Julia backend yet"
    return None


def uses_inplace(problem: Problem, sensitivity: AbstractSensitivity, device: str = "cpu") -> bool:
    """In-place ``f!(du, u, p, t)`` for scalar symbolic fields on CPU, except with ``vjp='zygote'`` (Zygote cannot
    differentiate mutation); out-of-place for MLPs (vectorised) and on CUDA."""
    if device == "cuda" or isinstance(problem.rhs, MLPRHS):
        return False
    return getattr(sensitivity, "vjp", "auto") != "zygote"


@dataclasses.dataclass(frozen=True)
class JuliaCall:
    """The arguments of one ``CrossODE.build`` call, plus what Python needs to read the results back."""

    src: str
    iip: bool
    u0: np.ndarray
    p: np.ndarray
    t0: float
    t1: float
    saveat: np.ndarray
    alg: str
    sensealg: SensealgSpec
    abstol: float | None
    reltol: float | None
    quad_abstol: float
    quad_reltol: float
    dt: float | None
    adaptive: bool
    tstops: np.ndarray | None
    maxiters: int
    loss_kind: str
    weights: np.ndarray | None  # (n_state, n_save), C-contiguous
    device: str
    dtype: str
    n_states: int
    n_params: int

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``CrossODE.build`` (NumPy arrays, Python scalars, ``None`` -> ``nothing``)."""
        return {
            "src": self.src,
            "iip": self.iip,
            "u0": self.u0,
            "p": self.p,
            "t0": self.t0,
            "t1": self.t1,
            "saveat": self.saveat,
            "alg": self.alg,
            "sensealg": self.sensealg.kind,
            "vjp": self.sensealg.vjp,
            "checkpointing": self.sensealg.checkpointing,
            "abstol": self.abstol,
            "reltol": self.reltol,
            "quad_abstol": self.quad_abstol,
            "quad_reltol": self.quad_reltol,
            "dt": self.dt,
            "adaptive": self.adaptive,
            "tstops": self.tstops,
            "maxiters": self.maxiters,
            "loss_kind": self.loss_kind,
            "weights": self.weights,
            "device": self.device,
            "dtype": self.dtype,
        }

    def describe(self) -> dict[str, Any]:
        """What runs in Julia, for records: algorithm, sensealg expression, field form, step keywords."""
        d: dict[str, Any] = {
            "julia_alg": f"{self.alg}()",
            "julia_sensealg": self.sensealg.julia,
            "julia_rhs": "in-place" if self.iip else "out-of-place",
        }
        if self.adaptive:
            d.update(abstol=self.abstol, reltol=self.reltol, dt=self.dt, maxiters=self.maxiters)
        else:
            d.update(dt=self.dt, adaptive=False, tstops=int(self.tstops.size), maxiters=self.maxiters)
        if self.sensealg.kind == "QuadratureAdjoint":
            d.update(quad_abstol=self.quad_abstol, quad_reltol=self.quad_reltol)
        return d


def build_call(
    problem: Problem,
    solver: AbstractSolver,
    sensitivity: AbstractSensitivity,
    step: AbstractStepControl,
    device: str = "cpu",
    dtype: str = "float64",
) -> JuliaCall:
    """Marshal one cell; call :func:`unsupported_reason` first (this assumes the combination is supported).

    Fixed steps: ``tstops`` is :func:`crossode.fixed_grid` and ``dt`` is the largest grid interval times
    ``1 + 1e-9``, so OrdinaryDiffEq's step (``min(dt, distance to the next tstop)``) always ends exactly on the next
    grid point and no sliver steps appear from rounding.
    """
    spec = sensealg_spec(sensitivity, device)
    t0, t1 = problem.tspan
    if isinstance(step, Fixed):
        grid = fixed_grid(t0, t1, step.dt, problem.saveat)
        dt = float(np.max(np.abs(np.diff(grid)))) * (1.0 + 1e-9)
        adaptive, tstops, abstol, reltol = False, np.ascontiguousarray(grid, dtype=np.float64), None, None
        quad_abstol, quad_reltol = FIXED_QUAD_TOLERANCES
    else:
        # Same first step as the other backends (crossode's Hairer estimate) unless the user gave one.
        dt = step.dt0 if step.dt0 is not None else initial_step(problem, error_order(solver), step.rtol, step.atol)[0]
        adaptive, tstops, abstol, reltol = True, None, step.atol, step.rtol
        quad_abstol, quad_reltol = step.atol, step.rtol
    weights = None
    if problem.loss.kind == "linear":
        weights = np.ascontiguousarray(np.asarray(problem.loss.weights, dtype=np.float64).T)
    return JuliaCall(
        src=julia_source(problem.rhs, dtype),
        iip=uses_inplace(problem, sensitivity, device),
        u0=np.array(problem.y0, dtype=np.float64),
        p=np.array(problem.params, dtype=np.float64),
        t0=float(t0),
        t1=float(t1),
        saveat=np.array(problem.saveat, dtype=np.float64),
        alg=SOLVER_ALGS[type(solver)],
        sensealg=spec,
        abstol=abstol,
        reltol=reltol,
        quad_abstol=float(quad_abstol),
        quad_reltol=float(quad_reltol),
        dt=None if dt is None else float(dt),
        adaptive=adaptive,
        tstops=tstops,
        maxiters=int(step.max_steps),
        loss_kind=problem.loss.kind,
        weights=weights,
        device=device,
        dtype=dtype,
        n_states=problem.n_states,
        n_params=problem.n_params,
    )


# ------------------------------------------------------------------------------------------ results


def status_from(status: str, retcode: str) -> str:
    """Validate the status ``CrossODE.status_of`` computed; an unknown one reads as ``solver_error``."""
    status = str(status)
    if status in STATUSES:
        return status
    return RETCODE_STATUS.get(str(retcode), "solver_error")


def _count(value) -> int | None:
    if value is None:
        return None
    v = int(value)
    return v if v >= 0 else None


def _failure(status: str, retcode: str, what: str) -> SolverFailure:
    return SolverFailure(status, f"Julia {what} failed: ReturnCode.{retcode} ({STATUSES.get(status, status)})")


def _vector(value, n: int, name: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise SolverFailure("crashed", f"Julia returned {name} with {arr.size} entries; expected {n}")
    return arr


def gradient_output(res: Mapping[str, Any], call: JuliaCall) -> GradientOutput:
    """``CrossODE.gradient_cell``'s result (as a mapping) -> :class:`GradientOutput`, or raise SolverFailure.

    Backward NFE: counted RHS calls during the pullback (VJPs, dual re-solves, adjoint re-solves), except
    ``ReverseDiffAdjoint``, whose tape reverses each forward evaluation once without calling Julia code
    (reported as the forward count), and ``ReverseDiffVJP(true)``, whose compiled tape replays without calling
    the field (reported as unknown, ``None``).
    """
    retcode = str(res.get("retcode", "?"))
    status = status_from(res.get("status", "solver_error"), retcode)
    if status != "ok":
        raise _failure(status, retcode, "gradient solve")
    loss = float(res["loss"])
    dy0 = _vector(res["du0"], call.n_states, "du0")
    dparams = _vector(res["dp"], call.n_params, "dp")
    if not (np.isfinite(loss) and np.all(np.isfinite(dy0)) and np.all(np.isfinite(dparams))):
        raise SolverFailure("diverged", "Julia returned a non-finite loss or gradient")
    nf = _count(res.get("nf"))
    if call.sensealg.kind == "ReverseDiffAdjoint":
        nfe_backward = nf
    elif call.sensealg.continuous and call.sensealg.vjp == "reversediff":
        nfe_backward = None
    else:
        nfe_backward = _count(res.get("calls_backward"))
    stats = Stats(
        nfe_forward=nf,
        nfe_backward=nfe_backward,
        steps_accepted=_count(res.get("naccept")),
        steps_rejected=_count(res.get("nreject")),
    )
    return GradientOutput(loss=loss, dparams=dparams, dy0=dy0, stats=stats)


def solve_output(res: Mapping[str, Any], call: JuliaCall) -> SolveOutput:
    """``CrossODE.solve_cell``'s result -> :class:`SolveOutput` with ``ys`` transposed to ``(n_save, n_state)``."""
    retcode = str(res.get("retcode", "?"))
    status = status_from(res.get("status", "solver_error"), retcode)
    if status != "ok":
        raise _failure(status, retcode, "solve")
    ys_julia = np.array(res["ys"], dtype=np.float64)  # (n_state, n_save), Julia's Array(sol)
    n_save = call.saveat.size
    if ys_julia.shape != (call.n_states, n_save):
        raise SolverFailure(
            "crashed",
            f"Julia returned ys of shape {ys_julia.shape}; expected (n_state, n_save) = {(call.n_states, n_save)}",
        )
    ys = np.ascontiguousarray(ys_julia.T)
    if not np.all(np.isfinite(ys)):
        raise SolverFailure("diverged", "Julia returned non-finite states")
    stats = Stats(
        nfe_forward=_count(res.get("nf")),
        nfe_backward=None,
        steps_accepted=_count(res.get("naccept")),
        steps_rejected=_count(res.get("nreject")),
    )
    return SolveOutput(ys=ys, stats=stats)

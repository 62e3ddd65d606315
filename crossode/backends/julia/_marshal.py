"""Pure-Python marshalling between crossode's neutral objects and ``CrossODE.build``/``gradient_cell``/``solve_cell``.

Nothing here imports juliacall: the tests check every rule without Julia.

Python -> Julia (:func:`build_call`): a :class:`JuliaCall` holding exactly the keyword arguments of
``CrossODE.build`` (``julia/src/CrossODE.jl``). Every decision about what a cell means is taken here, in Python,
and each ``solve`` keyword comes from one ``build`` keyword (:meth:`JuliaCall.solve_keywords` mirrors
``CrossODE._solve_kwargs``), so the keyword set of every combination is checked without Julia:

=========================  ===========================================================================================
what                       keywords
=========================  ===========================================================================================
every solve                ``saveat``; ``save_start = (saveat[0] == t0)``, ``save_end = (saveat[-1] == t1)``
                           (SciMLSensitivity's adjoints default both to ``true``, ``src/concrete_solve.jl``);
                           ``maxiters = max_steps``; ``adaptive``
``Adaptive``               ``abstol = atol``, ``reltol = rtol``; ``tstops = saveat`` (steps end exactly on every save
                           time, as in PyTorch and JAX); ``controller = CrossODEController()`` (the PyTorch/JAX
                           I-controller: factors in ``[1, 10]`` after acceptance, ``[0.2, 0.9]`` after rejection);
                           ``isoutofdomain = nonfinite_state`` (a non-finite state is a rejected step, factor 0.2);
                           ``dtmin = min_step_size(t0, t1, dtype)`` (:mod:`crossode._stepping`, the PyTorch and JAX
                           ``step_size_too_small`` bound); ``dtmax = Inf`` (no cap on proposals); first step ``dt0`` (the given one, else crossode's unclipped
                           Hairer estimate, as JAX) as a *problem* keyword: the forward solve uses it, the backward
                           adjoint solve picks its own
``Fixed(dt)``              ``dt`` (largest grid interval), ``adaptive = false``, ``tstops = fixed_grid(...)``; implicit
                           solvers ``abstol = reltol`` = :data:`FIXED_NEWTON_TOLERANCE` (Newton's convergence test
                           scales by them; JAX uses ``VeryChord(rtol=atol=1e-10)``)
``Forward``                ``internalnorm = primal_norm`` (dual-number solves take the primal's steps);
                           ``p = NullParameters()`` when there are no parameters
``Direct`` + implicit      ``autodiff = AutoFiniteDiff()`` and the out-of-place field (the combination SciMLSensitivity
                           tests with ``ReverseDiffAdjoint``)
=========================  ===========================================================================================

Layout: the neutral loss weights and mse targets are ``(n_save, n_state)``; Julia's ``Array(sol)`` is
``(n_state, n_save)``, so they travel transposed (C-contiguous ``(n_state, n_save)``, which juliacall shows to Julia
with the same logical indices). Batches: the neutral ``(batch, n)`` state travels flattened row-major as ONE state
vector of length ``batch * n`` (``u0 = y0.ravel()``; the generated field knows the batch, see
:mod:`._field`), weights/targets as ``(batch * n, n_save)`` (shared ``(n_save, n)`` data broadcast over the batch
first), and ``du0``/``ys`` are reshaped back to ``y0``'s shape / ``(n_save, batch, n)``.

Julia -> Python (:func:`gradient_output`, :func:`solve_output`): the fields of the returned ``NamedTuple`` as a
plain mapping; ``ys`` comes back ``(n_state, n_save)`` and is transposed to the neutral ``(n_save, n_state)``;
``status`` other than ``ok`` raises :class:`~crossode.SolverFailure`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..._problem import Problem
from ..._record import STATUSES, GradientOutput, SolveOutput, SolverFailure, Stats
from ..._cnf import CNFRHS
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
from ..._stepping import error_order, initial_step, min_step_size

__all__ = [
    "SOLVER_ALGS",
    "ALG_SUBPACKAGE",
    "SENSEALG_KINDS",
    "VJP_JULIA",
    "RETCODE_STATUS",
    "DEVICES",
    "FIXED_QUAD_TOLERANCES",
    "FIXED_NEWTON_TOLERANCE",
    "SOLVE_KEYWORDS",
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
    "CELL_INFO_FIELDS",
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
"""crossode solver descriptor -> OrdinaryDiffEq algorithm (``CrossODE.make_alg``). ``Dopri8`` -> ``DP8`` is Hairer's
DOP853 (8th order, error from embedded 5th- and 3rd-order solutions), not the Prince-Dormand RK8(7)13M tableau of
the PyTorch and JAX backends: same order, different steps and errors."""

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
    InterpolatingAdjoint: "InterpolatingAdjoint",
    QuadratureAdjoint: "QuadratureAdjoint",
    GaussAdjoint: "GaussAdjoint",
}
"""crossode sensitivity descriptor -> SciMLSensitivity algorithm (``CrossODE.make_sensealg``). ``Checkpointed`` has
no counterpart (see :func:`unsupported_reason`)."""

VJP_JULIA: dict[str, str] = {
    "auto": "nothing",
    "zygote": "ZygoteVJP()",
    "reversediff": "ReverseDiffVJP(true)",
    "enzyme": "EnzymeVJP()",
}
"""crossode ``vjp`` option -> the ``autojacvec`` passed to the continuous adjoints (``CrossODE.make_vjp``);
``"auto"`` is resolved once per cell by ``CrossODE.resolve_vjp`` (the resolved name is in ``Prepared.info``)."""

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

FIXED_NEWTON_TOLERANCE: dict[str, float] = {"float64": 1e-10, "float32": 1e-5}
"""``abstol = reltol`` of fixed-step implicit solves, i.e. of their Newton iterations (OrdinaryDiffEq's Newton stops
when the update, scaled by ``abstol + reltol*|u|``, is small; its defaults 1e-6/1e-3 would leave a Newton error far
above the JAX backend's ``VeryChord(rtol=atol=1e-10)``). Float32 cannot resolve 1e-10: ~100 float32 epsilons."""

SOLVE_KEYWORDS = (
    "saveat", "save_start", "save_end", "adaptive", "maxiters", "dt", "tstops", "abstol", "reltol", "dtmin",
    "dtmax", "controller", "internalnorm", "isoutofdomain",
)
"""Every keyword ``CrossODE._solve_kwargs`` can pass to ``solve`` (a test parses the Julia function for them)."""

GRADIENT_FIELDS = (
    "status", "retcode", "loss", "du0", "dp", "nf", "naccept", "nreject",
    "calls_forward", "calls_backward", "time_forward_s", "time_total_s",
)
"""Fields of ``CrossODE.gradient_cell``'s result."""

SOLVE_FIELDS = ("status", "retcode", "ys", "t", "nf", "naccept", "nreject", "calls", "time_s")
"""Fields of ``CrossODE.solve_cell``'s result."""

CELL_INFO_FIELDS = ("vjp", "sensealg", "solve_keywords", "problem_keywords")
"""Fields of ``CrossODE.cell_info``'s result."""

_SUPPORTED_SOLVERS = ", ".join(c.__name__ for c in SOLVER_ALGS)


@dataclasses.dataclass(frozen=True)
class SensealgSpec:
    """A SciMLSensitivity algorithm as ``CrossODE.make_sensealg`` arguments."""

    kind: str
    vjp: str = "auto"
    checkpointing: bool = False

    @property
    def julia(self) -> str:
        """The Julia expression this spec builds (for records and messages; ``vjp='auto'`` shows as ``nothing``,
        which ``CrossODE.build`` resolves)."""
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
    if isinstance(sensitivity, InterpolatingAdjoint):
        checkpointing = bool(sensitivity.checkpointing)
    else:  # Backsolve: pure backsolve (SciMLSensitivity's default would checkpoint at the saves); Gauss: none
        checkpointing = False
    return SensealgSpec(kind, vjp, checkpointing)


CHECKPOINTED_REASON = (
    "Checkpointed is a discretise-then-optimise gradient and SciMLSensitivity has no checkpointed discrete adjoint "
    "(ReverseDiffAdjoint, = Direct, tapes every step; InterpolatingAdjoint(checkpointing=true) is a continuous "
    "adjoint): use InterpolatingAdjoint(checkpointing=True) for Julia's checkpointed continuous adjoint"
)
CHECKPOINTED_FIXED_REASON = (
    "InterpolatingAdjoint(checkpointing=True) with Fixed(dt): SciMLSensitivity re-solves each checkpoint interval "
    "with only reltol/abstol (src/interpolating_adjoint.jl), never dt, adaptive=false or tstops, so Euler fails and "
    "the other fixed-step solvers re-solve adaptively at the default tolerances; use checkpointing=False or "
    "Adaptive()"
)


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
    if not isinstance(problem.rhs, (SymbolicRHS, MLPRHS, CNFRHS)):
        return f"the Julia backend cannot generate code for {type(problem.rhs).__name__}"
    if getattr(step, "per_sample", False):
        return ("`batch_steps='per_sample'` is not implemented in the Julia backend: a batched problem is one "
                "ODEProblem with one step sequence (an EnsembleProblem would step each sample alone, without the "
                "batched evaluation of f); use batch_steps='shared' or the PyTorch backend")
    if isinstance(solver, ALF):
        return (
            "ALF (asynchronous leapfrog) has no OrdinaryDiffEq implementation; the Julia backend supports "
            f"{_SUPPORTED_SOLVERS}"
        )
    if type(solver) not in SOLVER_ALGS:
        return f"solver {type(solver).__name__} has no Julia mapping; supported: {_SUPPORTED_SOLVERS}"
    if isinstance(sensitivity, MALI):
        return "MALI needs the ALF solver, which neither OrdinaryDiffEq nor SciMLSensitivity provides"
    if isinstance(sensitivity, Checkpointed):
        return CHECKPOINTED_REASON
    if type(sensitivity) not in SENSEALG_KINDS:
        return f"sensitivity {type(sensitivity).__name__} has no SciMLSensitivity mapping"
    if isinstance(step, Adaptive):
        if not solver.adaptive:
            return f"{type(solver).__name__} has no error estimate in crossode; use Fixed(dt=...)"
    elif not isinstance(step, Fixed):
        return f"unknown step control {step!r}"
    if isinstance(step, Fixed) and isinstance(sensitivity, InterpolatingAdjoint) and sensitivity.checkpointing:
        return CHECKPOINTED_FIXED_REASON
    if problem.t1 < problem.t0 and problem.saveat.size > 1:
        return (
            "backward-in-time spans (t1 < t0) with several save times are not supported (SciMLSensitivity sorts "
            "saveat ascending inside its adjoints)"
        )
    if device == "cuda":
        if not isinstance(problem.rhs, (MLPRHS, CNFRHS)):
            return "device='cuda' needs a vectorised (MLP or CNF) field: generated symbolic code indexes scalars of u"
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


def uses_inplace(
    problem: Problem, sensitivity: AbstractSensitivity, device: str = "cpu", solver: AbstractSolver | None = None
) -> bool:
    """In-place ``f!(du, u, p, t)`` for scalar symbolic fields on CPU; out-of-place for MLP and CNF fields
    (vectorised), on CUDA, with ``vjp='zygote'`` (Zygote cannot differentiate mutation) and for ``Direct`` with an
    implicit solver (``ReverseDiffAdjoint`` tracks an out-of-place field as a ``TrackedArray``; the in-place form
    would run the finite-difference Jacobian and the linear solves on arrays of ``TrackedReal``, a path
    SciMLSensitivity's tests do not take)."""
    if device == "cuda" or isinstance(problem.rhs, (MLPRHS, CNFRHS)):
        return False
    if isinstance(sensitivity, Direct) and isinstance(solver, AbstractImplicitSolver):
        return False
    return getattr(sensitivity, "vjp", "auto") != "zygote"


@dataclasses.dataclass(frozen=True)
class JuliaCall:
    """The arguments of one ``CrossODE.build`` call, plus what Python needs to read the results back.

    ``None`` means "not passed" (OrdinaryDiffEq's default). See the module docstring for what each keyword is for.
    """

    src: str
    iip: bool
    u0: np.ndarray
    p: np.ndarray
    t0: float
    t1: float
    saveat: np.ndarray
    alg: str
    alg_autodiff: str  # "default" (ForwardDiff Jacobians) or "finite" (AutoFiniteDiff), implicit solvers only
    sensealg: SensealgSpec
    adaptive: bool
    abstol: float | None
    reltol: float | None
    dt: float | None  # fixed step
    dt0: float | None  # first adaptive step (a problem keyword)
    dtmin: float | None
    dtmax: float | None
    tstops: np.ndarray | None
    maxiters: int
    save_start: bool
    save_end: bool
    controller: str  # "crossode" or "default"
    internalnorm: str  # "primal" or "default"
    isoutofdomain: str  # "nonfinite" or "default"
    null_parameters: bool
    quad_abstol: float
    quad_reltol: float
    loss_kind: str
    weights: np.ndarray | None  # (n_state, n_save), C-contiguous (linear loss)
    targets: np.ndarray | None  # (n_state, n_save), C-contiguous (mse loss)
    cnf_dims: int  # the sample dimension d of a cnf_nll loss (0 otherwise)
    device: str
    dtype: str
    n_states: int  # length of Julia's state vector: batch * n_states for a batched problem
    n_params: int
    state_shape: tuple[int, ...] = ()  # the neutral y0 shape ((n,) or (batch, n)); () = (n_states,)

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``CrossODE.build`` (NumPy arrays, Python scalars, ``None`` -> ``nothing``)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_BUILD_ARGS}
        out.update(sensealg=self.sensealg.kind, vjp=self.sensealg.vjp, checkpointing=self.sensealg.checkpointing)
        return out

    def solve_keywords(self) -> dict[str, Any]:
        """The keywords ``CrossODE._solve_kwargs`` passes to every ``solve`` of this cell: values for scalars and
        arrays, the Julia object's name for the tagged ones (mirror of the Julia function)."""
        kw: dict[str, Any] = {
            "saveat": self.saveat, "save_start": self.save_start, "save_end": self.save_end,
            "adaptive": self.adaptive, "maxiters": self.maxiters,
        }
        for name in ("dt", "tstops", "abstol", "reltol", "dtmin", "dtmax"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.controller == "crossode":
            kw["controller"] = "CrossODEController()"
        if self.internalnorm == "primal":
            kw["internalnorm"] = "primal_norm"
        if self.isoutofdomain == "nonfinite":
            kw["isoutofdomain"] = "nonfinite_state"
        return kw

    def problem_keywords(self) -> dict[str, Any]:
        """Keywords stored in the ``ODEProblem`` (forward solves only): the first adaptive step."""
        return {} if self.dt0 is None else {"dt": self.dt0}

    def describe(self) -> dict[str, Any]:
        """What runs in Julia, for records: algorithm, sensealg expression, field form, solve keywords."""
        alg = f"{self.alg}(autodiff = AutoFiniteDiff())" if self.alg_autodiff == "finite" else f"{self.alg}()"
        d: dict[str, Any] = {
            "julia_alg": alg,
            "julia_sensealg": self.sensealg.julia,
            "julia_rhs": "in-place" if self.iip else "out-of-place",
            "julia_parameters": "NullParameters()" if self.null_parameters else f"Vector (length {self.n_params})",
        }
        for name, value in self.solve_keywords().items():
            d[name] = int(value.size) if isinstance(value, np.ndarray) else value
        if self.dt0 is not None:
            d["dt0"] = self.dt0
        if self.sensealg.kind == "QuadratureAdjoint":
            d.update(quad_abstol=self.quad_abstol, quad_reltol=self.quad_reltol)
        return d


_NOT_BUILD_ARGS = frozenset({"sensealg", "n_states", "n_params", "state_shape"})


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
    saveat = np.array(problem.saveat, dtype=np.float64)
    implicit = isinstance(solver, AbstractImplicitSolver)
    if isinstance(step, Fixed):
        grid = fixed_grid(t0, t1, step.dt, problem.saveat, max_steps=step.max_steps)
        dt, dt0 = float(np.max(np.abs(np.diff(grid)))) * (1.0 + 1e-9), None
        adaptive, tstops = False, np.ascontiguousarray(grid, dtype=np.float64)
        abstol = reltol = FIXED_NEWTON_TOLERANCE[dtype] if implicit else None
        dtmin = dtmax = None
        controller, isoutofdomain = "default", "default"
        quad_abstol, quad_reltol = FIXED_QUAD_TOLERANCES
    else:
        # The first step of the PyTorch and JAX backends: the given dt0, else crossode's Hairer estimate, not clipped
        # to the span (the first step lands on the first save time and the proposal survives the landing).
        dt = None
        if step.dt0 is not None:
            dt0 = float(step.dt0)
        else:
            dt0 = float(initial_step(problem, error_order(solver), step.rtol, step.atol, clip=False)[0])
        adaptive, tstops = True, saveat.copy()
        abstol, reltol = float(step.atol), float(step.rtol)
        dtmin, dtmax = min_step_size(t0, t1, dtype), float("inf")
        controller, isoutofdomain = "crossode", "nonfinite"
        quad_abstol, quad_reltol = step.atol, step.rtol
    forward = spec.kind == "ForwardDiffSensitivity"
    data = None
    if problem.loss_data is not None:  # (n_save, [batch,] n) -> Julia's (batch * n, n_save)
        full = np.broadcast_to(problem.loss_data, problem.ys_shape).reshape(problem.saveat.size, -1)
        data = np.ascontiguousarray(full.T, dtype=np.float64)
    from ._field import julia_source  # SymPy's Julia printer: imported when a cell is built, not by `crossode info`

    return JuliaCall(
        src=julia_source(problem.rhs, dtype, batch=problem.batch),
        iip=uses_inplace(problem, sensitivity, device, solver),
        u0=np.array(problem.y0, dtype=np.float64).ravel(),
        p=np.array(problem.params, dtype=np.float64),
        t0=float(t0),
        t1=float(t1),
        saveat=saveat,
        alg=SOLVER_ALGS[type(solver)],
        alg_autodiff="finite" if implicit and isinstance(sensitivity, Direct) else "default",
        sensealg=spec,
        adaptive=adaptive,
        abstol=abstol,
        reltol=reltol,
        dt=dt,
        dt0=dt0,
        dtmin=dtmin,
        dtmax=dtmax,
        tstops=tstops,
        maxiters=int(step.max_steps),
        save_start=bool(saveat[0] == t0),
        save_end=bool(saveat[-1] == t1),
        controller=controller,
        internalnorm="primal" if forward else "default",
        isoutofdomain=isoutofdomain,
        null_parameters=forward and problem.n_params == 0,
        quad_abstol=float(quad_abstol),
        quad_reltol=float(quad_reltol),
        loss_kind=problem.loss.kind,
        weights=data if problem.loss.kind == "linear" else None,
        targets=data if problem.loss.kind == "mse" else None,
        cnf_dims=problem.n_states - 1 if problem.loss.kind == "cnf_nll" else 0,
        device=device,
        dtype=dtype,
        n_states=int(problem.y0.size),
        n_params=problem.n_params,
        state_shape=tuple(problem.y0.shape),
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


def gradient_output(res: Mapping[str, Any], call: JuliaCall, vjp: str | None = None) -> GradientOutput:
    """``CrossODE.gradient_cell``'s result (as a mapping) -> :class:`GradientOutput`, or raise SolverFailure.

    ``vjp`` is the VJP that ran (``CrossODE.cell_info(cell).vjp``, ``"auto"`` resolved); default: the requested one.
    Backward NFE: counted RHS calls during the pullback (VJPs, dual re-solves, adjoint re-solves), except
    ``ReverseDiffAdjoint``, whose tape reverses each forward evaluation once without calling Julia code
    (reported as the forward count), and a compiled ``ReverseDiffVJP(true)`` tape, which replays without calling
    the field (reported as unknown, ``None``).
    """
    retcode = str(res.get("retcode", "?"))
    status = status_from(res.get("status", "solver_error"), retcode)
    if status != "ok":
        raise _failure(status, retcode, "gradient solve")
    loss = float(res["loss"])
    dy0 = _vector(res["du0"], call.n_states, "du0").reshape(call.state_shape or (call.n_states,))
    dparams = _vector(res["dp"], call.n_params, "dp")
    if not (np.isfinite(loss) and np.all(np.isfinite(dy0)) and np.all(np.isfinite(dparams))):
        raise SolverFailure("diverged", "Julia returned a non-finite loss or gradient")
    nf = _count(res.get("nf"))
    ran = call.sensealg.vjp if vjp is None else str(vjp)
    if call.sensealg.kind == "ReverseDiffAdjoint":
        nfe_backward = nf
    elif call.sensealg.continuous and ran == "reversediff":
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
    """``CrossODE.solve_cell``'s result -> :class:`SolveOutput` with ``ys`` transposed to ``(n_save, n_state)``
    (``(n_save, batch, n)`` for a batched problem)."""
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
    ys = np.ascontiguousarray(ys_julia.T).reshape(n_save, *(call.state_shape or (call.n_states,)))
    if not np.all(np.isfinite(ys)):
        raise SolverFailure("diverged", "Julia returned non-finite states")
    stats = Stats(
        nfe_forward=_count(res.get("nf")),
        nfe_backward=None,
        steps_accepted=_count(res.get("naccept")),
        steps_rejected=_count(res.get("nreject")),
    )
    return SolveOutput(ys=ys, stats=stats)

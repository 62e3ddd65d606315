"""The Julia backend: OrdinaryDiffEq + SciMLSensitivity through juliacall.

Importing this module imports neither juliacall nor Julia. :meth:`JuliaBackend.prepare` does, on first use:
it sets ``PYTHON_JULIACALL_HANDLE_SIGNALS=yes`` and ``PYTHON_JULIAPKG_OFFLINE=yes`` (unless already set: preparing
a cell never installs anything; ``crossode julia-setup`` does), imports juliacall, and loads
``julia/src/CrossODE.jl`` with ``include`` into a fresh module. Each cell then costs one ``CrossODE.build``
(code generation, evaluation of the generated field) and each measured call one ``gradient_cell``/``solve_cell``.

**Import order.** juliacall must be imported *before* torch in a process (both load LLVM; torch first can corrupt
the heap and segfault, PythonCall.jl #215). If torch is already in ``sys.modules`` when the backend is first
used, :meth:`~JuliaBackend.prepare` raises :class:`~crossode.BackendUnavailableError` with that reason (the
harness records ``unavailable``); :meth:`~JuliaBackend.supports` stays a pure statement about the combination, so
support tables do not depend on import history. Run Julia cells in their own process (the sweep engine does), or
call :func:`load_julia` before importing torch. JAX/jaxlib also bundle LLVM:
importing juliacall first is the safe order there too. Call Julia from the main thread only.

Mapping (see ``julia/README.md``; the solve keywords of each case are listed in :mod:`._marshal`):

=====================  =====================================================================================
crossode               Julia
=====================  =====================================================================================
Euler ... Dopri8       ``Euler, Midpoint, Heun, RK4, BS3, DP5`` (OrdinaryDiffEqLowOrderRK), ``Tsit5``
                       (OrdinaryDiffEqTsit5), ``DP8`` (OrdinaryDiffEqHighOrderRK: Hairer's DOP853, not the
                       RK8(7)13M tableau of the PyTorch/JAX ``Dopri8``)
ImplicitEuler,         ``ImplicitEuler, Kvaerno5`` (OrdinaryDiffEqSDIRK; ForwardDiff Jacobians, finite-difference
Kvaerno5               Jacobians with ``Direct``)
ALF, MALI              unsupported
Adaptive               ``abstol, reltol, maxiters = max_steps``, first step ``dt0`` (else crossode's Hairer
                       estimate) for the forward solve only; ``tstops = saveat`` and ``CrossODE.CrossODEController``,
                       the PyTorch/JAX I-controller, so steps end exactly on every save time as in those backends
Fixed                  ``dt, adaptive = false, tstops = fixed_grid(...)``; implicit solvers: Newton tolerance 1e-10
Direct                 ``ReverseDiffAdjoint()`` (CPU only): discretise-then-optimise
Checkpointed           unsupported (SciMLSensitivity has no checkpointed discrete adjoint)
Backsolve              ``BacksolveAdjoint(autojacvec = vjp, checkpointing = false)`` (pure backsolve)
InterpolatingAdjoint   ``InterpolatingAdjoint(autojacvec = vjp, checkpointing = ...)`` (``checkpointing=True``: not
                       with ``Fixed``)
QuadratureAdjoint      ``QuadratureAdjoint(autojacvec = vjp, abstol = atol, reltol = rtol)``
GaussAdjoint           ``GaussAdjoint(autojacvec = vjp)``
Forward                ``ForwardDiffSensitivity()`` with a primal-value ``internalnorm``: discretise-then-optimise
vjp                    ``auto`` -> resolved once in ``CrossODE.build`` as SciMLSensitivity would (``Prepared.info
                       ["julia_vjp"]`` says which), ``zygote`` -> ``ZygoteVJP()``, ``reversediff`` ->
                       ``ReverseDiffVJP(true)``, ``enzyme`` -> ``EnzymeVJP()``
=====================  =====================================================================================

GPU: ``device="cuda"`` puts ``u0``/``p`` on the GPU as ``CUDA.CuArray`` (CUDA.jl must be added to the juliacall
environment: ``crossode julia-setup --cuda``); MLP fields, explicit solvers and Zygote-VJP adjoints only.
Timing: the first ``gradient``/``solve`` of a prepared cell compiles Julia code (tens of seconds); the harness
times it separately (``compile_s``). Julia's own timings of the last call are in ``Prepared.last_julia``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..._backend import Prepared
from ..._errors import BackendUnavailableError, UnsupportedError
from ..._record import GradientOutput, SolveOutput, SolverFailure
from . import _marshal, _probe

__all__ = ["JuliaBackend", "JuliaPrepared", "load_julia", "julia_loaded"]

_STATE: dict[str, Any] = {}


def julia_loaded() -> bool:
    """Whether :func:`load_julia` has already loaded ``CrossODE`` in this process."""
    return "module" in _STATE


def load_julia():
    """Import juliacall (first use only) and load ``julia/src/CrossODE.jl``; returns the Julia module ``CrossODE``.

    Raises :class:`~crossode.BackendUnavailableError` if Julia is not usable here (reason from :mod:`._probe`) or
    if torch was imported first in this process (an environment condition, so the harness records the cell as
    ``unavailable`` with that reason).
    """
    if "module" in _STATE:
        return _STATE["module"]
    reason = _probe.import_order_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    reason = _probe.unavailable_reason()
    if reason is not None:
        raise BackendUnavailableError(reason)
    path = _probe.crossode_jl_path()
    if '"' in str(path):
        raise BackendUnavailableError(f"cannot load {path}: the path contains a double quote")
    os.environ.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    os.environ.setdefault("PYTHON_JULIAPKG_OFFLINE", "yes")  # preparing never installs: `crossode julia-setup` does
    t = time.perf_counter()
    try:
        import juliacall
    except Exception as e:  # noqa: BLE001 - juliapkg/juliacall raise plain Exceptions
        msg = f"importing juliacall failed: {type(e).__name__}: {e}; {_probe.SETUP_HINT}"
        raise BackendUnavailableError(msg) from e
    host = juliacall.newmodule("CrossODEHost")
    host.seval(f'include(raw"{path}")')
    module = host.seval("CrossODE")
    _STATE.update(module=module, juliacall=juliacall, load_s=time.perf_counter() - t)
    return module


def _julia_error_type():
    jc = _STATE.get("juliacall")
    return getattr(jc, "JuliaError", None) if jc is not None else None


def _message(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:500] if text else type(err).__name__


def _as_mapping(res, fields) -> dict[str, Any]:
    out = {}
    for name in fields:
        value = getattr(res, name)
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[name] = value
        else:
            out[name] = np.array(value, dtype=np.float64)  # juliacall ArrayValue -> NumPy copy
    return out


class JuliaPrepared(Prepared):
    """One built ``CrossODE.Cell``. Attributes: ``call`` (the marshalled arguments), ``info`` (what runs in Julia,
    including the resolved VJP and the solve keywords Julia passes), ``vjp`` (the VJP that runs), ``build_s``
    (code generation + ``build`` seconds, including resolving ``vjp='auto'``), ``first_gradient_s``/
    ``first_solve_s`` (first calls, including Julia compilation), ``last_julia`` (Julia-side timings and counts of
    the last call)."""

    def __init__(self, module, call: _marshal.JuliaCall):
        self._module = module
        self.call = call
        self.info = call.describe()
        self.first_gradient_s: float | None = None
        self.first_solve_s: float | None = None
        self.last_julia: dict[str, Any] = {}
        t = time.perf_counter()
        self._cell = self._invoke(module.build, "build", **call.build_kwargs())
        self.build_s = time.perf_counter() - t
        cell = _as_mapping(module.cell_info(self._cell), _marshal.CELL_INFO_FIELDS)
        self.vjp = str(cell["vjp"])  # the VJP that runs ("auto" resolved by CrossODE.build)
        self.info.update(julia_vjp=self.vjp, julia_sensealg_resolved=str(cell["sensealg"]),
                         julia_solve_keywords=str(cell["solve_keywords"]),
                         julia_problem_keywords=str(cell["problem_keywords"]))

    @staticmethod
    def _invoke(fn, what: str, *args, **kwargs):
        """Call into Julia; a Julia exception becomes SolverFailure (``crashed`` for ``build``, else
        ``solver_error``: SciML solvers and adjoints report some failures by throwing)."""
        err_type = _julia_error_type()
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if err_type is not None and isinstance(e, err_type):
                status = "crashed" if what == "build" else "solver_error"
                raise SolverFailure(status, f"Julia {what} raised: {_message(e)}") from e
            raise

    def gradient(self) -> GradientOutput:
        t = time.perf_counter()
        res = _as_mapping(self._invoke(self._module.gradient_cell, "gradient", self._cell), _marshal.GRADIENT_FIELDS)
        if self.first_gradient_s is None:
            self.first_gradient_s = time.perf_counter() - t
        self.last_julia = {k: res[k] for k in ("time_forward_s", "time_total_s", "calls_forward", "calls_backward")}
        return _marshal.gradient_output(res, self.call, vjp=self.vjp)

    def solve(self) -> SolveOutput:
        t = time.perf_counter()
        res = _as_mapping(self._invoke(self._module.solve_cell, "solve", self._cell), _marshal.SOLVE_FIELDS)
        if self.first_solve_s is None:
            self.first_solve_s = time.perf_counter() - t
        self.last_julia = {k: res[k] for k in ("time_s", "calls")}
        return _marshal.solve_output(res, self.call)


class JuliaBackend:
    """OrdinaryDiffEq + SciMLSensitivity (through juliacall) behind crossode's :class:`~crossode.Backend` protocol."""

    name = "julia"

    def versions(self) -> dict[str, str]:
        from importlib.metadata import PackageNotFoundError, version

        out: dict[str, str] = {}
        for dist in ("juliacall", "juliapkg"):
            try:
                out[dist] = version(dist)
            except PackageNotFoundError:
                pass
        module = _STATE.get("module")
        if module is not None:
            try:
                out.update({str(k): str(v) for k, v in module.versions().items()})
            except Exception:  # noqa: BLE001 - versions are informative only
                pass
        return out

    def devices(self) -> list[str]:
        return _probe.devices()

    def supports(self, problem, solver, sensitivity, step, device: str = "cpu") -> str | None:
        reason = _marshal.unsupported_reason(problem, solver, sensitivity, step, device)
        if reason is not None:
            return reason
        if device == "cuda":
            reason = _probe.cuda_reason()
            if reason is not None:
                return f"device='cuda': {reason}"
        return None

    def prepare(self, problem, solver, sensitivity, step, *, device: str = "cpu", dtype: str = "float64") -> Prepared:
        reason = _marshal.unsupported_reason(problem, solver, sensitivity, step, device, dtype)
        if reason is not None:
            raise UnsupportedError(reason)
        module = load_julia()
        return JuliaPrepared(module, _marshal.build_call(problem, solver, sensitivity, step, device, dtype))


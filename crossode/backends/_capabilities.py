"""What the built-in PyTorch and JAX backends support and which devices they use, told without importing either
framework.

``TorchBackend.supports`` and ``DiffraxBackend.supports`` are the functions here (their only framework-dependent
question, whether a GPU is usable, is asked of the framework, and only when a GPU device is requested), so
``crossode list``, the README support matrix and sweeps that skip unsupported cells answer without loading torch
or JAX. The registry names them (:attr:`crossode._registry.BackendSpec.supports` and ``.devices``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .._sensitivity import (
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
from .._solvers import (
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
)
from .._tableaux import TABLEAUX

__all__ = ["torch_supports", "torch_check_config", "torch_per_sample_reason", "jax_supports", "JAX_SOLVERS", "TORCH_MAX_FORWARD_ENTRIES",
           "gpu_driver_visible", "cpu_only_devices", "reference_devices"]

TORCH_MAX_FORWARD_ENTRIES = 4_000_000
"""Largest ``N * (N + P)`` sensitivity matrix the PyTorch backend's ``Forward()`` propagates (float64: 32 MB per
copy); bigger problems are reported as unsupported."""

_TORCH_RK_SENSITIVITIES = (Direct, Checkpointed, Backsolve, Forward)

JAX_SOLVERS: tuple[type, ...] = (Euler, Heun, Midpoint, RK4, Bosh3, Dopri5, Tsit5, Dopri8, ImplicitEuler, Kvaerno5)
"""The Runge-Kutta descriptors the JAX backend implements (each mapped to a Diffrax solver in its ``_backend``);
ALF is its own loop."""


def torch_per_sample_reason(solver, sensitivity, step) -> str | None:
    """``None`` if the PyTorch backend runs this configuration with ``batch_steps="per_sample"`` (or the step
    control does not ask for it), else the reason: Direct with explicit RK, Direct and MALI with ALF
    (``crossode/backends/torch/_persample.py``)."""
    if not (isinstance(step, Adaptive) and step.per_sample):
        return None
    ok = (Direct, MALI) if isinstance(solver, ALF) else (Direct,)
    if isinstance(sensitivity, ok):
        return None
    return (f"`batch_steps='per_sample'` is implemented in PyTorch for Direct() with explicit RK solvers and for "
            f"Direct() and MALI() with ALF(); got solver={solver!r}, sensitivity={sensitivity!r}.")


def torch_check_config(solver: AbstractSolver, sensitivity: AbstractSensitivity,
                       step: AbstractStepControl) -> str | None:
    """``None`` if ``crossode.torch.odeint`` supports the (explicit RK) configuration, else the reason."""
    if type(solver) not in TABLEAUX:
        return f"`solver={solver!r}` is not available in the PyTorch backend (explicit RK methods and ALF only)."
    if isinstance(step, Adaptive) and not solver.adaptive:
        return f"`solver={solver!r}` has no error estimate, so it needs `step=Fixed(dt)`, not `Adaptive(...)`."
    if isinstance(sensitivity, MALI):
        return f"`sensitivity=MALI()` requires `solver=ALF()`; got `solver={solver!r}`."
    if not isinstance(sensitivity, _TORCH_RK_SENSITIVITIES):
        return (
            f"`sensitivity={sensitivity!r}` is not available in the PyTorch backend; use Direct(), Checkpointed(), "
            "Backsolve() or Forward()."
        )
    if isinstance(sensitivity, Checkpointed) and sensitivity.checkpoints is not None:
        return "`Checkpointed(checkpoints=k)` is not available in PyTorch: it stores every accepted step (ACA)."
    if getattr(sensitivity, "vjp", "auto") != "auto":
        return f"`vjp={sensitivity.vjp!r}` is a Julia option; PyTorch uses autograd ('auto')."
    return torch_per_sample_reason(solver, sensitivity, step)


def torch_supports(problem, solver: AbstractSolver, sensitivity: AbstractSensitivity, step: AbstractStepControl,
                   device: str = "cpu", *, cuda_available: Callable[[], bool] | None = None) -> str | None:
    """The PyTorch backend's ``supports()``: ``None`` if supported, else a one-line reason. ``cuda_available``
    answers whether torch sees a GPU (default: ask torch, imported only for ``device='cuda'``)."""
    if not isinstance(step, (Adaptive, Fixed)):
        return f"unknown step control {step!r}; use Adaptive(...) or Fixed(dt)."
    if device not in ("cpu", "cuda"):
        return f"unknown device {device!r}; the PyTorch backend runs on 'cpu' or 'cuda'."
    if device == "cuda":
        if cuda_available is None:
            import torch

            cuda_available = torch.cuda.is_available
        if not cuda_available():
            return "no CUDA device is available to PyTorch here."
    if isinstance(solver, AbstractImplicitSolver):
        return f"implicit solvers such as {type(solver).__name__} are not implemented in the PyTorch backend."
    if isinstance(sensitivity, (InterpolatingAdjoint, QuadratureAdjoint, GaussAdjoint)):
        return f"`{type(sensitivity).__name__}` is a Julia-only sensitivity (SciMLSensitivity)."
    reason = torch_per_sample_reason(solver, sensitivity, step)
    if reason is not None:
        return reason
    if isinstance(solver, ALF):
        if not isinstance(sensitivity, (MALI, Direct, Checkpointed)):
            return f"`solver=ALF()` supports MALI(), Direct() and Checkpointed() in PyTorch; got `{sensitivity!r}`."
        if isinstance(sensitivity, Checkpointed) and (sensitivity.checkpoints, sensitivity.vjp) != (None, "auto"):
            return f"PyTorch ALF supports only `Checkpointed()` (every step, vjp='auto'); got `{sensitivity!r}`."
        return None
    if isinstance(sensitivity, MALI):
        return f"`sensitivity=MALI()` requires `solver=ALF()`; got `solver={solver!r}`."
    reason = torch_check_config(solver, sensitivity, step)
    if reason is not None:
        return reason
    if isinstance(sensitivity, Forward):
        n, p = problem.y0.size, problem.n_params  # a batch is one state of batch * n_states entries
        if n * (n + p) > TORCH_MAX_FORWARD_ENTRIES:
            return (
                f"`Forward()` propagates a {n} x {n + p} sensitivity matrix, above the PyTorch backend's limit "
                f"of {TORCH_MAX_FORWARD_ENTRIES} entries; use Direct() or Checkpointed()."
            )
    return None


def jax_supports(problem, solver: AbstractSolver, sensitivity: AbstractSensitivity, step: AbstractStepControl,
                 device: str = "cpu", *, gpu_devices: Callable[[], list] | None = None) -> str | None:
    """The JAX backend's ``supports()``: ``None`` if supported, else a one-line reason. ``gpu_devices`` lists the
    GPUs JAX sees (default: ask JAX, imported only for ``device='gpu'``/``'cuda'``)."""
    dev = "gpu" if device == "cuda" else device
    if dev not in ("cpu", "gpu"):
        return f"unknown device {device!r}; the JAX backend knows 'cpu' and 'gpu' (alias 'cuda')"
    if dev == "gpu":
        from .jax._backend import _gpu_devices

        if not (gpu_devices or _gpu_devices)():
            import jax

            return f"device={device!r} requested but JAX sees no GPU here (devices: {jax.devices()})"
    if not isinstance(step, (Adaptive, Fixed)):
        return f"unknown step control {step!r}"
    if isinstance(step, Adaptive) and step.per_sample:
        return ("`batch_steps='per_sample'` is not implemented in the JAX backend: a Diffrax solve of a batch is one "
                "solve with one step sequence (Diffrax #500; jax.vmap of the solve would give per-sample steps but "
                "runs every sample until the slowest finishes); use batch_steps='shared' or the PyTorch backend")
    if isinstance(solver, ALF):
        if isinstance(sensitivity, (MALI, Direct, Forward)):
            return None
        if isinstance(sensitivity, Checkpointed):
            return None if sensitivity.vjp == "auto" else "the JAX backend only has vjp='auto' (JAX autodiff)"
        return f"`sensitivity={sensitivity!r}` is not implemented for ALF in the JAX backend (use MALI, Direct, " \
               "Checkpointed or Forward)"
    if type(solver) not in JAX_SOLVERS:
        return f"`solver={solver!r}` has no JAX implementation"
    if isinstance(sensitivity, MALI):
        return f"`sensitivity=MALI()` requires `solver=ALF()`; got `solver={solver!r}`"
    if isinstance(step, Adaptive) and not solver.adaptive:
        return f"`solver={solver!r}` has no error estimate, so it needs `step=Fixed(dt=...)`"
    if not isinstance(sensitivity, (Direct, Checkpointed, Backsolve, Forward)):
        return f"`sensitivity={sensitivity!r}` is Julia-only (SciMLSensitivity); Diffrax has no equivalent"
    if getattr(sensitivity, "vjp", "auto") != "auto":
        return f"`vjp={sensitivity.vjp!r}` selects a Julia AD engine; the JAX backend only has vjp='auto'"
    return None


_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")
"""Device nodes of a GPU driver: NVIDIA, AMD ROCm (``kfd``), WSL2's GPU paravirtualisation (``dxg``)."""


def gpu_driver_visible() -> bool | None:
    """Whether this machine shows a GPU driver to processes (:data:`_GPU_NODES`); ``None`` where that cannot be
    told from files (neither Linux nor macOS, whose Metal GPUs neither backend uses)."""
    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return None
    return any(os.path.exists(p) for p in _GPU_NODES)


def cpu_only_devices() -> list[str] | None:
    """The PyTorch and JAX backends' ``devices()`` when it can be told without importing the framework:
    ``['cpu']`` where no GPU driver is visible (neither torch nor JAX can then use a GPU); ``None``: ask it."""
    return ["cpu"] if gpu_driver_visible() is False else None


def reference_devices() -> list[str]:
    """The reference backend's ``devices()``: the SciPy reference runs on the CPU only."""
    return ["cpu"]

"""crossode's PyTorch backend: explicit RK and ALF solvers with Direct, Checkpointed, Backsolve, Forward and MALI
gradients. :func:`odeint` is the native API for training code; :class:`TorchBackend` the harness adapter."""

from ._backend import TorchBackend as TorchBackend
from .odeint import odeint as odeint

__all__ = ["TorchBackend", "odeint"]

"""Native PyTorch API for training code (imports torch).

``odeint(func, y0, t, *, rtol=, atol=, method=, options=)`` and ``odeint_adjoint(..., adjoint_params=)`` take
torchdiffeq's keywords, and crossode's descriptors alongside (``solver=``, ``sensitivity=``, ``step=``,
``params=``, ``stats=``; one mapping: :mod:`crossode.backends.torch._torchdiffeq`). They integrate
``dy/dt = func(t, y)`` and return ``ys`` of shape ``(len(t), *y0.shape)`` inside torch autograd, so
``loss.backward()`` reaches ``y0``, the parameters (``func.parameters()`` for an ``nn.Module``) and ``t`` if it
requires grad. With ``solver=ALF(), sensitivity=MALI()`` the backward pass reconstructs the trajectory instead of
storing it.
"""

from .backends.torch import odeint as odeint, odeint_adjoint as odeint_adjoint

__all__ = ["odeint", "odeint_adjoint"]

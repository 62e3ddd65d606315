"""Native PyTorch API for training code (imports torch).

``odeint(func, y0, t, *, solver=Dopri5(), sensitivity=Direct(), step=Adaptive(), params=None, stats=None)``
integrates ``dy/dt = func(t, y)`` and returns ``ys`` of shape ``(len(t), *y0.shape)`` inside torch autograd, so
``loss.backward()`` reaches ``y0`` and the parameters (``func.parameters()`` for an ``nn.Module``). With
``solver=ALF(), sensitivity=MALI()`` the backward pass reconstructs the trajectory instead of storing it.
"""

from .backends.torch import odeint as odeint

__all__ = ["odeint"]

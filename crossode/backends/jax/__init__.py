"""The JAX backend (Diffrax for Runge-Kutta methods, crossode's own ALF and MALI); importing it enables float64.

:func:`make_vector_field` gives a neutral problem's field as a pure function ``f(t, y, p)`` of the flat parameters
``p`` (the problem's layout), for any JAX solver; :func:`make_trainer` is the backend's side of ``crossode train``
(``optax.adam``)."""

from ._backend import DiffraxBackend as DiffraxBackend
from ._field import make_vector_field as make_vector_field
from ._train import make_trainer as make_trainer

__all__ = ["DiffraxBackend", "make_vector_field", "make_trainer"]

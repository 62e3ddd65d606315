"""The JAX backend (Diffrax for Runge-Kutta methods, crossode's own ALF and MALI); importing it enables float64.

:func:`make_vector_field` gives a neutral problem's field as a pure function ``f(t, y, p)`` of the flat parameters
``p`` (the problem's layout), for any JAX solver."""

from ._backend import DiffraxBackend as DiffraxBackend
from ._field import make_vector_field as make_vector_field

__all__ = ["DiffraxBackend", "make_vector_field"]

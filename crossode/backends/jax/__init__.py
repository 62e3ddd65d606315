"""The JAX backend (Diffrax for Runge-Kutta methods, crossode's own ALF and MALI); importing it enables float64."""

from ._backend import DiffraxBackend as DiffraxBackend

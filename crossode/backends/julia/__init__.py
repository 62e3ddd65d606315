"""The Julia backend (OrdinaryDiffEq + SciMLSensitivity through juliacall).

Importing this package imports neither juliacall nor Julia: that happens on first use (``JuliaBackend.prepare``).
juliacall must be imported before torch in a process; see :mod:`._backend`.
"""

from ._backend import JuliaBackend as JuliaBackend

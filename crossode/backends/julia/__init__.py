"""The Julia backend (OrdinaryDiffEq + SciMLSensitivity through juliacall).

Importing this package imports neither juliacall nor Julia: that happens on first use (``JuliaBackend.prepare``).
juliacall must be imported before torch in a process; see :mod:`._backend`. :func:`make_trainer`: training runs
(``crossode train``) with Optimisers.jl's Adam (:mod:`._train`).
"""

from ._backend import JuliaBackend as JuliaBackend
from ._train import make_trainer as make_trainer

"""The independent SciPy reference, run through the same harness as a backend (see :mod:`crossode._reference`)."""

from ._backend import ReferenceBackend as ReferenceBackend

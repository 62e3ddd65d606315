"""Backend registry: name -> implementation, loaded lazily on first use.

Availability is decided without importing the framework (``importlib.util.find_spec`` plus, for Julia, a probe that
never downloads and never hangs), so ``crossode info`` and test skips are fast and ``import crossode`` stays light.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util

from ._backend import Backend
from ._errors import BackendUnavailableError, InvalidInputError, fmt_choices

__all__ = ["BACKENDS", "BackendSpec", "backend_names", "unavailable_reason", "get_backend"]


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """How to load one backend: ``target`` is ``"module:Class"``; ``requires`` modules must be importable;
    ``probe`` (``"module:function"``) returns an extra reason string or ``None``; ``extra`` is the pip extra."""

    target: str
    requires: tuple[str, ...]
    extra: str | None
    probe: str | None = None


BACKENDS: dict[str, BackendSpec] = {
    "reference": BackendSpec("crossode.backends.reference:ReferenceBackend", ("scipy",), None),
    "torch": BackendSpec("crossode.backends.torch:TorchBackend", ("torch",), "torch"),
    "jax": BackendSpec("crossode.backends.jax:DiffraxBackend", ("jax", "diffrax", "equinox"), "jax"),
    "julia": BackendSpec(
        "crossode.backends.julia:JuliaBackend", ("juliacall",), "julia", "crossode.backends.julia._probe:unavailable_reason"
    ),
}
"""Known backends. ``reference`` runs the independent SciPy reference through the same harness."""


def backend_names(include_reference: bool = False) -> list[str]:
    """Names of the solver backends (``reference`` only if asked)."""
    return [n for n in BACKENDS if include_reference or n != "reference"]


def _spec(name: str) -> BackendSpec:
    spec = BACKENDS.get(name)
    if spec is None:
        raise InvalidInputError(f"Unknown backend {name!r}; expected one of {fmt_choices(BACKENDS)}.")
    return spec


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """``None`` if backend ``name`` can be loaded here, else a one-line reason. Never imports the framework."""
    spec = _spec(name)
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        hint = f"; install with `pip install 'crossode[{spec.extra}]'`" if spec.extra else ""
        return f"the {name!r} backend requires {', '.join(missing)}, which is not installed{hint}"
    if spec.probe:
        module, func = spec.probe.split(":")
        try:
            return getattr(importlib.import_module(module), func)()
        except Exception as e:  # noqa: BLE001 - a broken probe must read as "unavailable", not a traceback
            return f"the availability probe failed: {type(e).__name__}: {e}"
    return None


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend instance for ``name``, importing its framework now; raises :class:`BackendUnavailableError`."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"The {name!r} backend is unavailable: {reason}.")
    module, cls = _spec(name).target.split(":")
    return getattr(importlib.import_module(module), cls)()

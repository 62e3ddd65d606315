"""Backend registry: name -> implementation, loaded lazily on first use; third-party backends via entry points.

Availability is decided without importing the framework (``importlib.util.find_spec`` plus, for Julia, a probe that
never downloads and never hangs), so ``crossode info`` and test skips are fast and ``import crossode`` stays light.

Third-party backends register in the entry-point group :data:`ENTRY_POINT_GROUP` (``crossode.backends``), e.g. in
their ``pyproject.toml``::

    [project.entry-points."crossode.backends"]
    mybackend = "mypackage.crossode_backend:MyBackend"

The entry point names a class (or any zero-argument callable) returning an object that implements
:class:`crossode._backend.Backend` with ``name == "mybackend"``. Discovery reads distribution metadata only, the
first time the table of backends is listed (never at ``import crossode``); the plugin's module is imported the
first time the backend is used (:func:`get_backend`). A plugin that cannot be used stays listed as unavailable
with its reason: a name that clashes with a built-in backend or another plugin (listed as ``name@distribution``),
a malformed entry point, a module that is not installed, or (after the first attempt to load it) an import error or
an object that does not implement the protocol.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import re
from collections.abc import Iterator, MutableMapping

from ._backend import Backend
from ._errors import BackendUnavailableError, InvalidInputError, fmt_choices

__all__ = [
    "BACKENDS", "ENTRY_POINT_GROUP", "BackendSpec", "backend_names", "unavailable_reason", "get_backend",
    "discover_plugins",
]

ENTRY_POINT_GROUP = "crossode.backends"
"""Entry-point group through which installed distributions add backends."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,63}$")


@dataclasses.dataclass(frozen=True)
class BackendSpec:
    """How to load one backend: ``target`` is ``"module:Class"``; ``requires`` modules must be importable;
    ``probe`` (``"module:function"``) returns an extra reason string or ``None``; ``extra`` is the pip extra;
    ``supports`` (``"module:function"``) is the backend's ``supports(problem, solver, sensitivity, step, device)``
    importable without its framework (``crossode list`` uses it; ``None``: instantiate the backend to ask);
    ``devices`` (``"module:function"``) returns the backend's ``devices()`` without importing the framework, or
    ``None`` when only the framework can tell (``crossode info --devices`` then asks it in a subprocess).

    Plugins (third-party backends) also carry ``plugin`` (``"distribution version"``), ``packages`` (the
    distributions whose versions ``crossode info`` shows) and ``error`` (why the entry point cannot be used)."""

    target: str
    requires: tuple[str, ...]
    extra: str | None
    probe: str | None = None
    packages: tuple[str, ...] = ()
    plugin: str | None = None
    error: str | None = None
    supports: str | None = None
    devices: str | None = None


_BUILTIN: dict[str, BackendSpec] = {
    "reference": BackendSpec("crossode.backends.reference:ReferenceBackend", ("scipy",), None,
                             devices="crossode.backends._capabilities:reference_devices"),
    "torch": BackendSpec("crossode.backends.torch:TorchBackend", ("torch",), "torch",
                         supports="crossode.backends._capabilities:torch_supports",
                         devices="crossode.backends._capabilities:cpu_only_devices"),
    "jax": BackendSpec("crossode.backends.jax:DiffraxBackend", ("jax", "diffrax", "equinox"), "jax",
                       supports="crossode.backends._capabilities:jax_supports",
                       devices="crossode.backends._capabilities:cpu_only_devices"),
    "julia": BackendSpec(
        "crossode.backends.julia:JuliaBackend", ("juliacall",), "julia", "crossode.backends.julia._probe:unavailable_reason",
        devices="crossode.backends.julia._probe:devices",
    ),
}


def discover_plugins() -> dict[str, BackendSpec]:
    """Backends registered by installed distributions under :data:`ENTRY_POINT_GROUP` (metadata only, no imports).

    Unusable entry points are included with ``error`` set; clashing names are keyed ``name@distribution``."""
    import importlib.metadata  # 17 ms of email/zipfile imports: paid when plugins are listed, not by `import crossode`

    try:
        eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as e:  # noqa: BLE001 - broken metadata elsewhere must not break crossode
        return {f"plugins@{ENTRY_POINT_GROUP}": BackendSpec(
            "", (), None, plugin="?", error=f"reading entry points failed: {type(e).__name__}: {e}")}
    by_name: dict[str, list] = {}
    for ep in eps:
        by_name.setdefault(ep.name, []).append(ep)
    found: dict[str, BackendSpec] = {}
    for name, group in by_name.items():
        for ep in group:
            dist = getattr(ep, "dist", None)
            dist_name = getattr(dist, "name", None) or "unknown-distribution"
            origin = f"{dist_name} {getattr(dist, 'version', '') or ''}".strip()
            module, _, attr = ep.value.partition(":")
            error = None
            if not _NAME.match(name):
                error = f"entry point name {name!r} is not a valid backend name (letters, digits, '_', '-')"
            elif name in _BUILTIN:
                error = f"its name {name!r} clashes with the built-in backend; the plugin from {origin} is ignored"
            elif len(group) > 1:
                others = ", ".join(sorted(str(getattr(e.dist, "name", "?")) for e in group if e is not ep))
                error = f"{name!r} is registered by {origin} and by {others}; both are ignored until one is renamed"
            elif not module or not attr or not all(p.isidentifier() for p in module.split(".") + attr.split(".")):
                error = f"entry point value {ep.value!r} must be 'module:attribute'"
            key = name if error is None or not (name in _BUILTIN or len(group) > 1) else f"{name}@{dist_name}"
            top = module.split(".")[0] if module else ""
            found[key] = BackendSpec(ep.value, (top,) if top.isidentifier() else (), None,
                                     packages=(dist_name,), plugin=origin, error=error)
    return found


class _BackendTable(MutableMapping):
    """The built-in backends plus the discovered plugins (discovered on first listing or unknown-name lookup)."""

    def __init__(self, builtin: dict[str, BackendSpec]):
        self._data = dict(builtin)
        self._discovered = False

    def _discover(self) -> None:
        if not self._discovered:
            self._discovered = True
            for key, spec in discover_plugins().items():
                self._data.setdefault(key, spec)

    def __getitem__(self, key: str) -> BackendSpec:
        if key not in self._data:
            self._discover()
        return self._data[key]

    def __contains__(self, key) -> bool:
        if key not in self._data:
            self._discover()
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._data))

    def __len__(self) -> int:
        self._discover()
        return len(self._data)

    def __setitem__(self, key: str, spec: BackendSpec) -> None:
        self._data[key] = spec

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __repr__(self) -> str:
        return f"BACKENDS({list(self)})"


BACKENDS: MutableMapping[str, BackendSpec] = _BackendTable(_BUILTIN)
"""Known backends: the built-in ones, then plugins from the ``crossode.backends`` entry-point group (discovered on
first listing). ``reference`` runs the independent SciPy reference through the same harness."""

_LOAD_ERRORS: dict[str, str] = {}


def backend_names(include_reference: bool = False) -> list[str]:
    """Names of the solver backends, built-in first, then plugins (``reference`` only if asked)."""
    return [n for n in BACKENDS if include_reference or n != "reference"]


def _spec(name: str) -> BackendSpec:
    if not isinstance(name, str) or name not in BACKENDS:
        raise InvalidInputError(f"Unknown backend {name!r}; expected one of {fmt_choices(BACKENDS)}.")
    return BACKENDS[name]


@functools.cache
def unavailable_reason(name: str) -> str | None:
    """``None`` if backend ``name`` can be loaded here, else a one-line reason. Never imports the framework
    (nor a plugin's module: a plugin that fails to import is reported after the first :func:`get_backend`)."""
    spec = _spec(name)
    if spec.error:
        return spec.error
    if name in _LOAD_ERRORS:
        return _LOAD_ERRORS[name]
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if spec.plugin and (missing or not spec.requires):
        return f"the plugin module {spec.target.split(':')[0]!r} (from {spec.plugin}) is not importable"
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


def _load_plugin(name: str, spec: BackendSpec) -> Backend:
    module, attr = spec.target.split(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        backend = obj()
    except Exception as e:  # noqa: BLE001 - a broken plugin is an unavailable backend, not a traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise _PluginError(f"the plugin from {spec.plugin} failed to load: {type(e).__name__}: {first}") from None
    missing = [m for m in ("name", "versions", "devices", "supports", "prepare") if not hasattr(backend, m)]
    if missing:
        raise _PluginError(f"the plugin from {spec.plugin} does not implement the Backend protocol "
                           f"(missing {', '.join(missing)})")
    if backend.name != name:
        raise _PluginError(f"the plugin from {spec.plugin} is registered as {name!r} but its backend says "
                           f"name = {backend.name!r}")
    return backend


class _PluginError(Exception):
    pass


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend instance for ``name``, importing its framework now; raises :class:`BackendUnavailableError`."""
    reason = unavailable_reason(name)
    if reason is not None:
        raise BackendUnavailableError(f"The {name!r} backend is unavailable: {reason}.")
    spec = _spec(name)
    if spec.plugin:
        try:
            return _load_plugin(name, spec)
        except _PluginError as e:
            _LOAD_ERRORS[name] = str(e)
            unavailable_reason.cache_clear()
            raise BackendUnavailableError(f"The {name!r} backend is unavailable: {e}.") from None
    module, cls = spec.target.split(":")
    return getattr(importlib.import_module(module), cls)()

"""Availability probe of the Julia backend: never imports juliacall here, never downloads, never hangs.

:func:`unavailable_reason` answers in three stages, cached per process:

1. ``importlib.util.find_spec("juliacall")`` (no import);
2. a Julia executable: ``PYTHON_JULIACALL_EXE`` (with ``PYTHON_JULIACALL_PROJECT``), ``PYTHON_JULIAPKG_EXE``,
   ``julia`` or ``juliaup`` on ``PATH``, or an environment juliapkg already resolved (its ``meta.json`` names an
   executable that exists; read directly, without juliapkg's lock, which can wait forever);
3. (``deep``, the default) a subprocess with ``PYTHON_JULIAPKG_OFFLINE=yes`` and a time limit that imports juliacall
   and ``include``s ``julia/src/CrossODE.jl`` (which loads every Julia package the backend uses). A crash, hang or
   missing package there becomes a reason string instead of taking the caller down.

Without Julia this returns in well under a second. ``CROSSODE_JULIA_PROBE=quick`` skips stage 3 (e.g. in sweep
workers once the parent process has probed deeply); ``CROSSODE_JULIA_PROBE_TIMEOUT`` (seconds, default 300) bounds
it. :func:`crossode_jl_path` locates the Julia sources (checkout or installed wheel).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

__all__ = [
    "unavailable_reason",
    "find_julia",
    "crossode_jl_path",
    "julia_dir",
    "import_order_reason",
    "cuda_reason",
    "devices",
    "clear_cache",
    "SETUP_HINT",
]

SETUP_HINT = (
    "set PYTHON_JULIACALL_EXE (+ PYTHON_JULIACALL_PROJECT) or PYTHON_JULIAPKG_EXE, or run `crossode julia-setup`"
)
DEFAULT_TIMEOUT_S = 300.0

_CACHE: dict[tuple, str | None] = {}

_DEEP_CODE = r"""
import sys
import juliacall
jl = juliacall.newmodule("CrossODEProbe")
jl.seval('include(raw"' + sys.argv[1] + '")')
print("CROSSODE_JULIA_OK", jl.seval("string(VERSION)"))
"""


def julia_dir() -> Path:
    """The directory holding ``Project.toml``, ``src/CrossODE.jl`` and ``test/runtests.jl``.

    Order: ``$CROSSODE_JULIA_DIR``; ``crossode/_julia`` inside an installed wheel (shipped there by the build
    configuration, see ``julia/README.md``); ``julia/`` next to the ``crossode`` package in a source checkout.
    """
    env = os.environ.get("CROSSODE_JULIA_DIR")
    if env:
        return Path(env).resolve()
    package = Path(__file__).resolve().parents[2]  # .../crossode
    wheel = package / "_julia"
    if (wheel / "src" / "CrossODE.jl").is_file():
        return wheel
    return package.parent / "julia"


def crossode_jl_path() -> Path:
    """Absolute path of ``CrossODE.jl`` (may not exist: :func:`unavailable_reason` says so)."""
    return julia_dir() / "src" / "CrossODE.jl"


def juliapkg_state() -> dict | None:
    """juliapkg's ``STATE`` (the paths of its environment, from environment variables), or ``None`` without juliapkg.

    Read from ``juliapkg/state.py`` alone (os/sys only): ``import juliapkg.state`` would run the package's
    ``__init__``, which imports its Julia installer (urllib, ssl, tarfile: ~0.4 s of ``crossode info``). Once juliapkg
    itself is imported, its own ``STATE`` is returned.
    """
    loaded = sys.modules.get("juliapkg.state")
    if loaded is not None:
        return loaded.STATE
    try:
        spec = importlib.util.find_spec("juliapkg")
        if spec is None or not spec.submodule_search_locations:
            return None
        path = os.path.join(list(spec.submodule_search_locations)[0], "state.py")
        state_spec = importlib.util.spec_from_file_location("_crossode_juliapkg_state", path)
        module = importlib.util.module_from_spec(state_spec)
        state_spec.loader.exec_module(module)  # not entered in sys.modules: juliapkg keeps its own on import
        return dict(module.STATE)
    except Exception:  # noqa: BLE001 - a broken or changed juliapkg: no resolved environment to report
        return None


def _resolved_executable() -> str | None:
    """The Julia executable of an environment juliapkg resolved before (``meta.json``), read without locking."""
    state = juliapkg_state()
    meta = state.get("meta") if state else None
    if not meta or not os.path.isfile(meta):
        return None
    try:
        with open(meta, encoding="utf-8") as fh:
            exe = json.load(fh).get("executable")
    except (OSError, ValueError, AttributeError):
        return None
    return exe if exe and os.path.isfile(exe) else None


def find_julia() -> tuple[str | None, str]:
    """``(executable or None, where it came from)`` without starting anything."""
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE"):
        value = os.environ.get(var)
        if value:
            exe = shutil.which(value) or (value if os.path.isfile(value) else None)
            return exe, var
    for name in ("julia", "juliaup"):
        exe = shutil.which(name)
        if exe:
            return exe, f"`{name}` on PATH"
    exe = _resolved_executable()
    if exe:
        return exe, "juliapkg's resolved environment"
    return None, ""


def import_order_reason() -> str | None:
    """A reason when juliacall would be imported after torch in this process (segfault risk)."""
    if "torch" in sys.modules and "juliacall" not in sys.modules:
        return (
            "torch was imported before juliacall in this process (Julia and torch both load LLVM; this order can "
            "crash): import juliacall first or run the Julia backend in its own process"
        )
    return None


def devices() -> list[str]:
    """The Julia backend's devices: ``['cpu']``, plus ``'cuda'`` when :func:`cuda_reason` finds nothing missing."""
    return ["cpu"] + (["cuda"] if cuda_reason() is None else [])


def cuda_reason() -> str | None:
    """``None`` if CUDA.jl is declared in juliapkg's environment and an NVIDIA driver is visible, else why not."""
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA driver found (nvidia-smi is not on PATH)"
    try:
        text = Path(juliapkg_state()["project"], "Project.toml").read_text(encoding="utf-8")
    except Exception:  # noqa: BLE001
        text = ""
    if "052768ef-5323-5732-b1bb-66c8b64840ba" not in text:
        return "CUDA.jl is not in the juliacall environment; run `crossode julia-setup --cuda`"
    return None


def _deep_check(exe: str, timeout: float) -> str | None:
    path = crossode_jl_path()
    env = dict(os.environ, PYTHON_JULIAPKG_OFFLINE="yes")
    env.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    try:
        r = subprocess.run(
            [sys.executable, "-c", _DEEP_CODE, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return (
            f"Julia was found ({exe}) but loading the Julia backend took longer than {timeout:g} s "
            "(precompiling?); run `crossode julia-setup` once, or raise CROSSODE_JULIA_PROBE_TIMEOUT"
        )
    except OSError as e:
        return f"could not start the Julia probe subprocess: {e}"
    if r.returncode == 0 and "CROSSODE_JULIA_OK" in r.stdout:
        return None
    tail = [ln.strip() for ln in (r.stderr or r.stdout or "").splitlines() if ln.strip()]
    detail = tail[-1] if tail else f"exit status {r.returncode}"
    for ln in reversed(tail):  # prefer the Julia/Python error line over a stack frame
        if "Error" in ln or "error" in ln or "not found" in ln:
            detail = ln
            break
    return f"Julia was found ({exe}) but loading the Julia backend failed: {detail[:300]}; {SETUP_HINT}"


def unavailable_reason(deep: bool | None = None, timeout: float | None = None) -> str | None:
    """``None`` if the Julia backend can be loaded here, else a one-line reason. Cached per process.

    ``deep=None`` means deep unless ``CROSSODE_JULIA_PROBE=quick``.
    """
    if deep is None:
        deep = os.environ.get("CROSSODE_JULIA_PROBE", "").lower() != "quick"
    if timeout is None:
        try:
            timeout = float(os.environ.get("CROSSODE_JULIA_PROBE_TIMEOUT", DEFAULT_TIMEOUT_S))
        except ValueError:
            timeout = DEFAULT_TIMEOUT_S
    key = (
        deep,
        timeout,
        *(os.environ.get(v) for v in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE",
                                       "PYTHON_JULIAPKG_PROJECT", "CROSSODE_JULIA_DIR", "PATH")),
    )
    if key not in _CACHE:
        _CACHE[key] = _probe(deep, timeout)
    return _CACHE[key]


def _probe(deep: bool, timeout: float) -> str | None:
    if importlib.util.find_spec("juliacall") is None:
        return "juliacall is not installed; install it with `pip install 'crossode[julia]'`"
    if os.environ.get("PYTHON_JULIACALL_EXE") and not os.environ.get("PYTHON_JULIACALL_PROJECT"):
        return "PYTHON_JULIACALL_EXE is set but PYTHON_JULIACALL_PROJECT is not (juliacall needs both)"
    exe, origin = find_julia()
    if exe is None:
        if origin:
            return f"{origin} does not name an existing Julia executable; {SETUP_HINT}"
        return f"no Julia executable found; {SETUP_HINT}"
    if not crossode_jl_path().is_file():
        return f"the Julia sources of crossode are missing ({crossode_jl_path()}); reinstall crossode"
    if not deep:
        return None
    return _deep_check(exe, timeout)


def clear_cache() -> None:
    """Forget cached probe results (after ``crossode julia-setup``)."""
    _CACHE.clear()

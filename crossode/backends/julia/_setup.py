"""``crossode julia-setup``: install Julia and the backend's Julia packages, then load and precompile them.

This is the ONLY place that lets juliapkg download anything (Julia itself if none is found, and the packages
declared in ``crossode/juliapkg.json``). Needs internet; takes minutes (tens of minutes for a first SciML
precompile). Run it in a process that has not imported torch.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import TextIO

from . import _probe

__all__ = ["julia_setup", "setup", "CUDA_UUID"]

CUDA_UUID = "052768ef-5323-5732-b1bb-66c8b64840ba"


def _say(out: TextIO, msg: str) -> None:
    print(f"[crossode julia-setup] {msg}", file=out, flush=True)


def julia_setup(*, cuda: bool = False, warmup: bool = True, out: TextIO | None = None) -> int:
    """Resolve, install, load and (optionally) warm up the Julia backend. Returns a process exit status.

    ``cuda=True`` also adds CUDA.jl to the juliacall environment (``device='cuda'``). ``warmup`` runs
    ``CrossODE.warmup()`` (one small gradient per sensealg) so later first calls compile less.
    """
    out = out or sys.stdout
    start = time.perf_counter()
    if importlib.util.find_spec("juliacall") is None:
        _say(out, "juliacall is not installed: `pip install 'crossode[julia]'` first.")
        return 2
    reason = _probe.import_order_reason()
    if reason is not None:
        _say(out, reason)
        return 2
    if os.environ.get("PYTHON_JULIAPKG_OFFLINE", "").lower() == "yes":
        _say(out, "PYTHON_JULIAPKG_OFFLINE=yes is set: nothing can be installed; unset it and retry.")
        return 2
    path = _probe.crossode_jl_path()
    if not path.is_file():
        _say(out, f"the Julia sources are missing: {path}")
        return 2
    import juliapkg

    try:
        if cuda:
            _say(out, "adding CUDA.jl to the juliacall environment")
            juliapkg.add("CUDA", CUDA_UUID, version="5")
        _say(out, "resolving Julia and packages with juliapkg (downloads Julia if needed; this can take minutes)")
        juliapkg.resolve()
        _say(out, f"Julia: {juliapkg.executable()}; environment: {juliapkg.project()}")
    except Exception as e:  # noqa: BLE001 - juliapkg raises plain Exceptions, URLError, CalledProcessError
        _say(out, f"juliapkg failed: {type(e).__name__}: {e}")
        return 1
    os.environ.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    _say(out, "importing juliacall and loading CrossODE.jl (first load precompiles the SciML stack)")
    try:
        import juliacall

        host = juliacall.newmodule("CrossODESetup")
        t = time.perf_counter()
        host.seval(f'include(raw"{path}")')
        _say(out, f"loaded CrossODE.jl in {time.perf_counter() - t:.1f} s (Julia {host.seval('string(VERSION)')})")
        if cuda:
            host.seval("using CUDA")
            _say(out, f"CUDA.jl functional: {host.seval('CUDA.functional()')}")
        if warmup:
            _say(out, "warming up (compiling one small gradient per sensitivity method)")
            failures = int(host.seval("CrossODE.warmup()"))
            if failures:
                _say(out, f"{failures} warm-up combination(s) failed (see above)")
    except Exception as e:  # noqa: BLE001
        _say(out, f"loading the Julia backend failed: {type(e).__name__}: {e}")
        return 1
    _probe.clear_cache()
    _say(out, f"done in {time.perf_counter() - start:.0f} s")
    return 0


setup = julia_setup
"""Alias used by ``crossode julia-setup`` (``crossode.cli.cmd_julia_setup``)."""

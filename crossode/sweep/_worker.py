"""Run sweep cells in fresh processes: the worker (one interpreter per cell) and the fork template.

Two ways a cell gets its own address space (the executor picks, :data:`FORK_BACKENDS`):

- **spawn**: ``python -m crossode.sweep._worker [--runner MOD:FUNC] [CELL_JSON | -]``, a fresh interpreter that
  imports the backend's framework, then runs the cell. The record JSON is printed on stdout as one line and nothing
  else is (anything the backends print goes to stderr); exit status 0 whenever a record was printed.
- **fork**: ``python -m crossode.sweep._worker --template BACKEND`` is a long-lived template that imports crossode
  and the backend's framework once (threads already pinned through its environment, :func:`thread_env`) and then
  forks one child per cell on request. The child gets its own session, dies with the template (``PDEATHSIG``),
  re-maps the library pages the template had resident and returns the template's free heap pages (so that its
  memory baseline is a fresh interpreter's), resets its peak-RSS counter, sends its output to the cell's stderr
  file, writes the record to the cell's output file and ``_exit`` s. The template refuses to fork (the executor
  then spawns) when importing the backend started threads beyond NumPy's BLAS pool (whose fork handlers make it
  fork-safe), or when JAX/XLA is initialised: forking after XLA has started its thread pools deadlocks the child
  (measured: a ``jit`` in the child hangs).

Either way the cell marks the moment its own work starts (the ``started`` file) so that the time limit counts the
cell, not the interpreter start-up and the framework import. Order matters for fair measurement: thread limits are
in the environment before Python starts; nothing framework-related is imported until the cell's backend is loaded
(a Julia cell never has torch in its process); then ``torch.set_num_threads`` pins torch too and
:func:`crossode.measure` runs the cell.

Streaming: a cell may send JSON lines to the executor while it runs with :func:`emit` (training runs send one record
per iteration); they go to the cell's ``stream`` file (``CROSSODE_CELL_STREAM``), which the executor reads as the
cell runs and hands to its ``on_output`` callback, so they reach the results file before the cell ends.

Template protocol (JSON lines): the template prints ``{"ready": true, "forkable": bool, "why": str}`` once; then
for each request ``{"id", "cell", "out", "err", "started", "stream", "runner"}`` on stdin it answers ``{"id", "pid"}`` right
after the fork (or ``{"id", "error"}``) and ``{"id", "exit": returncode}`` when the child ends (negative: killed by
that signal). End of stdin (the executor closed it, or died) kills the remaining children and ends the template.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import resource
import select
import signal
import sys

__all__ = ["thread_env", "run_cell", "main", "emit", "FORK_BACKENDS", "DEFAULT_RUNNER", "STREAM_ENV",
           "STREAM_LINE_MAX"]

_PR_SET_PDEATHSIG = 1

FORK_BACKENDS: frozenset[str] = frozenset({"reference", "torch", "jax"})
"""Backends whose cells are forked from a pre-imported template. ``julia`` cells are spawned: juliacall starts the
Julia runtime (and its threads) on import, so nothing Julia-related may live in a template, Julia's compile times
dwarf the ~1 s a template would save, and Julia cells must never share an address space with torch."""

DEFAULT_RUNNER = "crossode.sweep._worker:run_cell"
"""``module:function`` that measures one cell dict and returns its record (tests substitute misbehaving ones)."""


STREAM_LINE_MAX = 1 << 20
"""Bytes one streamed line may have (the executor reads a cell's stream in chunks of four times this)."""

STREAM_ENV = "CROSSODE_CELL_STREAM"
"""Environment variable naming the file a running cell's :func:`emit` lines go to (set by the executor)."""

_STREAM: dict = {"fd": None, "path": None, "sink": None}


def set_stream_sink(sink) -> None:
    """In-process cells (:class:`~crossode.sweep.InlineExecutor`): :func:`emit` calls ``sink(obj)`` instead of
    writing a file (``None`` restores the file)."""
    _STREAM["sink"] = sink


def emit(obj: dict) -> bool:
    """Send one JSON-able dict to the executor while the cell runs; returns whether anyone listens.

    The line is appended to the cell's stream file with one ``write`` (no partial lines are read: the executor
    only takes complete lines); outside a worker (no ``CROSSODE_CELL_STREAM``) it is dropped. Raises
    :class:`ValueError` for a line over :data:`STREAM_LINE_MAX` bytes (send large data in the cell's record)."""
    line = _line(obj)
    if len(line) > STREAM_LINE_MAX:
        raise ValueError(f"a streamed line has {len(line)} bytes, more than the {STREAM_LINE_MAX} allowed")
    if _STREAM["sink"] is not None:
        _STREAM["sink"](obj)
        return True
    path = os.environ.get(STREAM_ENV)
    if not path:
        return False
    if _STREAM["path"] != path:
        if _STREAM["fd"] is not None:
            os.close(_STREAM["fd"])
        _STREAM["fd"] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        _STREAM["path"] = path
    _write_all(_STREAM["fd"], line)
    return True


def thread_env(threads: int, device: str = "cpu", base: dict | None = None) -> dict[str, str]:
    """The environment of a worker pinned to ``threads`` threads (OpenMP, MKL, OpenBLAS, XLA; torch reads these)."""
    env = dict(os.environ if base is None else base)
    n = str(int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        env[var] = n
    xla = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(
        ("--xla_cpu_multi_thread_eigen", "intra_op_parallelism_threads", "--intra_op_parallelism_threads"))]
    env["XLA_FLAGS"] = " ".join(xla + ["--xla_cpu_multi_thread_eigen=false", f"intra_op_parallelism_threads={n}"])
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX peak memory is meaningless with a preallocated pool
    if device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")  # no GPU client (and no GPU memory) for a CPU cell
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent(parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a killed sweep leaves no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if parent is None:
        text = os.environ.get("CROSSODE_SWEEP_PARENT", "")
        parent = int(text) if text.isdigit() else None
    if parent is not None and os.getppid() != parent:
        os._exit(3)  # the parent died before prctl took effect


def _pin_torch(threads: int) -> None:
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass  # only settable before any inter-op work; the env var already covers it


def run_cell(data: dict):
    """Measure one cell (a :meth:`Cell.to_json` dict) and return its :class:`~crossode.Record`."""
    from .._errors import CrossODEError
    from .._harness import measure
    from .._registry import get_backend
    from .._sensitivity import sensitivity_from_name
    from .._solvers import solver_from_name
    from ._config import Cell, build_problem, build_step

    cell = Cell.from_json(data)
    try:
        problem = build_problem(cell.problem)
        solver = solver_from_name(cell.solver["name"], **cell.solver["options"])
        sens = sensitivity_from_name(cell.sensitivity["name"], **cell.sensitivity["options"])
        step = build_step(cell.step)
    except CrossODEError as e:
        return cell.blank_record("crashed", f"invalid cell: {e}")
    try:
        get_backend(cell.backend)  # imports the framework now, after the env pinned its threads
    except CrossODEError:
        pass  # measure() turns it into status "unavailable"
    _pin_torch(cell.threads)
    rec = measure(problem, cell.backend, solver, sens, step, device=cell.device, dtype=cell.dtype,
                  repeats=cell.repeats, save_gradients=cell.save_gradients, with_reference=cell.with_reference,
                  tags=cell.record_tags(), taylor=cell.taylor)
    rec.threads = cell.threads
    rec.tags["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rec


def _preload(backend: str) -> None:
    """Import what every cell of ``backend`` needs (crossode's harness and the framework), failing quietly."""
    from .._errors import CrossODEError
    from .._harness import measure  # noqa: F401 - the import is the point
    from .._registry import get_backend
    from ._config import build_problem  # noqa: F401

    try:
        get_backend(backend)
    except CrossODEError:
        pass  # unavailable: the cell records why


def _answer(data: dict, runner: str, started: str | None) -> dict:
    """The record dict of one cell: load its backend, mark the start, run ``runner`` on it (never raises)."""
    from ._config import Cell

    try:
        cell = Cell.from_json(data)
        _preload(cell.backend)
        if started:
            with open(started, "w"):
                pass
        module, func = runner.split(":")
        return getattr(importlib.import_module(module), func)(data).to_dict()
    except Exception as e:  # noqa: BLE001 - a worker must always answer with a record when it can
        import traceback

        traceback.print_exc()
        try:
            return Cell.from_json(data).blank_record("crashed", f"worker error: {type(e).__name__}: {e}").to_dict()
        except Exception:  # noqa: BLE001 - the cell itself is malformed
            return {"problem": "?", "backend": "?", "solver": "?", "sensitivity": "?", "status": "crashed",
                    "message": f"worker error: {type(e).__name__}: {e}", "tags": {}}


def _line(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m crossode.sweep._worker`` (see the module docstring); a cell worker ends with
    ``os._exit`` once its record is written, a template returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--template"] and len(argv) == 2:
        return template_main(argv[1])
    runner = DEFAULT_RUNNER
    if argv[:1] == ["--runner"] and len(argv) >= 2:
        runner, argv = argv[1], argv[2:]
    _die_with_parent()
    # Keep stdout for the record alone: whatever the backends print goes to stderr.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    text = argv[0] if argv and argv[0] != "-" else sys.stdin.read()
    out = _answer(json.loads(text), runner, os.environ.get("CROSSODE_CELL_STARTED"))
    os.write(real_stdout, _line(out))
    os.close(real_stdout)
    sys.stderr.flush()
    os._exit(0)  # the record is out: skip the interpreter's teardown (seconds with a framework loaded)


# ------------------------------------------------------------------------------------------- fork template


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _fork_hazard(baseline: int) -> str | None:
    """Why forking this process now would be unsafe, or ``None``."""
    jax_bridge = sys.modules.get("jax._src.xla_bridge")
    if jax_bridge is not None and getattr(jax_bridge, "_backends", None):
        return "JAX/XLA is initialised in the template (a child forked after XLA starts its threads deadlocks)"
    n = _thread_count()
    if n > baseline:
        return (f"the template runs {n - baseline} thread(s) beyond NumPy's BLAS pool; a forked child would inherit "
                "their locks but not the threads")
    return None


_MADV_POPULATE_READ = 22


def _resident_file_pages() -> list[tuple[int, int]]:
    """``(address, length)`` runs of file-backed pages resident in this process (``/proc/self/pagemap``).

    A forked child shares these pages but not their page-table entries: they are not in its RSS until touched
    again, so its first call would count library code the template had already loaded. The child re-maps them
    (:func:`_populate`) so that its baseline matches a fresh interpreter's after the same imports."""
    import numpy as np

    page = os.sysconf("SC_PAGE_SIZE")
    runs = []
    try:
        with open("/proc/self/maps") as maps, open("/proc/self/pagemap", "rb") as pm:
            for line in maps:
                parts = line.split(maxsplit=5)
                if len(parts) < 6 or not parts[5].startswith("/") or "r" not in parts[1]:
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                pm.seek(lo // page * 8)
                present = (np.frombuffer(pm.read((hi - lo) // page * 8), dtype=np.uint64) >> np.uint64(63)) == 1
                if not present.any():
                    continue
                edges = np.flatnonzero(np.diff(np.concatenate(([0], present.view(np.int8), [0]))))
                for a, b in zip(edges[::2], edges[1::2]):
                    runs.append((lo + int(a) * page, int(b - a) * page))
    except (OSError, ValueError):
        return []
    return runs


def _populate(runs: list[tuple[int, int]]) -> None:
    """Map ``runs`` (from :func:`_resident_file_pages`) into this process's page tables again."""
    if not runs:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return
    page = os.sysconf("SC_PAGE_SIZE")
    for addr, length in runs:
        if libc.madvise(addr, length, _MADV_POPULATE_READ) != 0:  # kernels before 5.14: touch each page
            for a in range(addr, addr + length, page):
                ctypes.string_at(a, 1)


def _trim_heap() -> None:
    """Give the heap's free pages back (glibc ``malloc_trim``): the template's freed memory would otherwise let the
    cell allocate without new RSS, measuring up to 6 % less peak memory than a fresh interpreter does."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _child(req: dict, close_fds: list[int], resident: list[tuple[int, int]]) -> None:
    """In the forked child: isolate, run the cell, write its record, ``_exit`` (never returns)."""
    code = 1
    try:
        os.setsid()  # its own session and process group: the executor kills it with everything it starts
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        for fd in close_fds:  # the template's pipes: only the template may hold them
            os.close(fd)
        _die_with_parent(parent=req["template_pid"])
        _populate(resident)
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # peak RSS starts from this process's own RSS, not the template's history
        except OSError:
            pass
        if req.get("stream"):
            os.environ[STREAM_ENV] = req["stream"]
        err = os.open(req["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 1)
        os.dup2(err, 2)
        os.close(err)
        out = _answer(req["cell"], req.get("runner") or DEFAULT_RUNNER, req.get("started"))
        with open(req["out"], "wb") as fh:
            fh.write(_line(out))
        code = 0
    except BaseException:  # noqa: BLE001 - whatever happens, the child must not return into the template loop
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        try:
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(code)


def template_main(backend: str) -> int:
    """Run a fork template for ``backend`` (see the module docstring); returns when stdin closes."""
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything imported code prints goes to the template's log, not into the replies
    sys.stdout = sys.stderr
    req_fd = sys.stdin.fileno()
    import numpy  # noqa: F401 - starts NumPy's BLAS thread pool (fork-safe) before the baseline is taken

    baseline = _thread_count()
    _preload(backend)
    why = _fork_hazard(baseline)
    resident = _resident_file_pages()
    try:
        _write_all(reply_fd, _line({"ready": True, "forkable": why is None, "why": why, "pid": os.getpid()}))
    except OSError:
        return 1
    if why is not None:
        return 0
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *a: None)
    children: dict[int, object] = {}
    buf = b""
    eof = False
    try:
        while not eof:
            readable, _, _ = select.select([req_fd, wake_r], [], [], 1.0)
            if wake_r in readable:
                os.read(wake_r, 4096)
            while children:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                rid = children.pop(pid, None)
                if rid is not None:
                    _write_all(reply_fd, _line({"id": rid, "exit": os.waitstatus_to_exitcode(status)}))
            if req_fd not in readable:
                continue
            chunk = os.read(req_fd, 1 << 20)
            if not chunk:
                eof = True
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for text in lines:
                if not text.strip():
                    continue
                req = json.loads(text)
                hazard = _fork_hazard(baseline)
                if hazard is not None:
                    _write_all(reply_fd, _line({"id": req["id"], "error": hazard}))
                    continue
                req["template_pid"] = os.getpid()
                pid = os.fork()
                if pid == 0:
                    _child(req, [req_fd, reply_fd, wake_r, wake_w], resident)
                children[pid] = req["id"]
                _write_all(reply_fd, _line({"id": req["id"], "pid": pid}))
    except OSError:
        pass  # the executor went away (broken pipe): clean up below
    finally:
        for pid in list(children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        for pid in list(children):
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

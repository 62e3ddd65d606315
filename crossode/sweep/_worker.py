"""Run ONE sweep cell in this (fresh) process: ``python -m crossode.sweep._worker [CELL_JSON | -]``.

The cell (:meth:`Cell.to_json`) comes as the first argument or on stdin; the record JSON is printed on stdout as
one line, and nothing else is (anything the backends print goes to stderr). Exit status 0 whenever a record was
printed, whatever its status.

Order matters for fair measurement: thread limits are in the environment before Python starts (the executor sets
them, :func:`thread_env`); this module imports nothing framework-related until the cell's backend is loaded, so a
Julia cell never has torch in its process and the harness's peak-memory baseline is the backend alone; then
``torch.set_num_threads`` pins torch too, and :func:`crossode.measure` runs the cell.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys

__all__ = ["thread_env", "run_cell", "main"]

_PR_SET_PDEATHSIG = 1


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


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the sweep process dies (a killed sweep leaves no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = os.environ.get("CROSSODE_SWEEP_PARENT")
    if parent and parent.isdigit() and os.getppid() != int(parent):
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
                  tags=cell.record_tags())
    rec.threads = cell.threads
    rec.tags["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return rec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    # Keep stdout for the record alone: whatever the backends print goes to stderr.
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    text = argv[0] if argv and argv[0] != "-" else sys.stdin.read()
    data = json.loads(text)
    try:
        rec = run_cell(data)
        out = rec.to_dict()
    except Exception as e:  # noqa: BLE001 - a worker must always answer with a record when it can
        import traceback

        traceback.print_exc()
        from ._config import Cell

        out = Cell.from_json(data).blank_record("crashed", f"worker error: {type(e).__name__}: {e}").to_dict()
    os.write(real_stdout, (json.dumps(out, separators=(",", ":")) + "\n").encode())
    os.close(real_stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

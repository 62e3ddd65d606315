"""The ``crossode`` command line: ``info``, ``list``, ``compare`` (one cell, or a sweep with ``--config``),
``report``, ``check`` (reference-check your own solver; :mod:`crossode.check`), ``train`` (training runs;
:mod:`crossode.train`) and ``julia-setup``.

Exit status of ``compare``: 0 when at least one cell finished ``ok``; 1 when cells ran but none is ``ok``; 2 for bad
input (unknown names, malformed or hostile problem files, an unusable ``--out``, unavailable backends that were
asked for by name, and combinations that are *all* unsupported: a comma-list product where some cells are
supported runs those and lists the rest) with one line on stderr; 130 when interrupted. Nothing from the input is
executed. Output to a closed pipe (``| head``) is dropped; the comparison keeps running and writing its records.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import sys
import time
import warnings

from ._errors import CrossODEError, InvalidInputError, UnsupportedError, fmt_choices
from ._limits import grid_steps
from ._sensitivity import SENSITIVITIES, check_pair, sensitivity_from_name
from ._solvers import BATCH_STEPS, SOLVERS, Adaptive, Fixed, solver_from_name

__all__ = ["main", "DEFAULT_PROBLEM", "DEFAULT_CELLS"]

DEFAULT_PROBLEM = "mlp"
"""Problem of the built-in default comparison: a small neural ODE (2-32-2 tanh MLP, T = 1), the use case crossode
is for, on which every default method (MALI included) runs in seconds."""

DEFAULT_CELLS = (
    ("dopri5", "direct"),
    ("dopri5", "checkpointed"),
    ("dopri5", "backsolve"),
    ("tsit5", "direct"),
    ("alf", "mali"),
)
"""(solver, sensitivity) pairs of the built-in default comparison (each on every available backend)."""

_PACKAGES = {"reference": ("numpy", "scipy"), "torch": ("torch",), "jax": ("jax", "diffrax", "equinox"),
             "julia": ("juliacall",)}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints usage too)
        self.exit(2, f"crossode: error: {message}\n")


def _usage_error(msg: str) -> int:
    print(f"crossode: error: {msg}", file=sys.stderr)
    return 2


def _csv(text: str, flag: str | None = None) -> list[str]:
    """A comma list, each entry once (a repeated entry would run the same cells twice): duplicates are dropped
    with a note naming ``flag``."""
    items = [x.strip() for x in text.split(",") if x.strip()]
    unique = list(dict.fromkeys(items))
    if flag and len(unique) < len(items):
        dups = sorted({x for x in items if items.count(x) > 1})
        print(f"note: {flag} lists {', '.join(map(repr, dups))} more than once; each cell runs once.", file=sys.stderr)
    return unique


# ------------------------------------------------------------------------------------------------------ info


def _pkg_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


DEVICE_PROBE_TIMEOUT_S = 60.0
"""How long ``crossode info --devices`` waits for a backend's own device query (its framework's import and GPU
initialisation, in a subprocess) before it reports the devices as unknown."""

_DEVICE_PROBE = ("import json, sys\nfrom crossode._registry import get_backend\n"
                 "print(json.dumps(list(get_backend(sys.argv[1]).devices())))")


def backend_devices(names, timeout: float = DEVICE_PROBE_TIMEOUT_S) -> dict[str, str]:
    """``{backend: 'cpu, cuda' | 'unknown (why)'}``: each backend's ``devices()``.

    Told without importing a framework where the registry can (``BackendSpec.devices``: e.g. no GPU driver on the
    machine, so torch and JAX can only use the CPU); otherwise each backend answers in its own subprocess, all at
    once, each bounded by ``timeout``: the frameworks import in parallel, a slow or crashing GPU initialisation
    cannot hang or take down ``crossode info``, and Julia's import-order rule (juliacall before torch) cannot bite.
    """
    import importlib
    import subprocess

    from ._registry import BACKENDS

    out, procs = {}, {}
    for name in names:
        spec = BACKENDS[name]
        if spec.devices:
            try:
                module, func = spec.devices.split(":")
                found = getattr(importlib.import_module(module), func)()
            except Exception as e:  # noqa: BLE001 - info must never traceback
                found, out[name] = None, f"unknown ({type(e).__name__}: {e})"
            if found is not None:
                out[name] = ", ".join(found)
            if name in out:
                continue
        procs[name] = subprocess.Popen([sys.executable, "-c", _DEVICE_PROBE, name], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            out[name] = f"unknown (asking {name} took longer than {timeout:g} s)"
            continue
        try:
            found = json.loads(stdout.strip().splitlines()[-1])
            out[name] = ", ".join(map(str, found))
        except (ValueError, IndexError):
            last = (stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            out[name] = f"unknown ({last[:200]})"
    return out


def cmd_info(args) -> int:
    """Each backend: available or not (with the reason), versions, devices (:func:`backend_devices`)."""
    from ._registry import BACKENDS, unavailable_reason

    print(f"crossode {_pkg_version('crossode') or 'dev'}  python {sys.version.split()[0]}")
    reasons = {name: unavailable_reason(name) for name in BACKENDS}
    devices = backend_devices([n for n, r in reasons.items() if r is None]) if args.devices else {}
    for name, reason in reasons.items():
        packages = _PACKAGES.get(name, BACKENDS[name].packages)  # plugins: their distribution
        versions = ", ".join(f"{p} {v}" for p in packages if (v := _pkg_version(p)))
        if reason is None:
            shown = f"  devices: {devices[name]}" if name in devices else ""
            print(f"  {name:10s} available    {versions}{shown}")
        else:
            print(f"  {name:10s} unavailable  {reason}")
    return 0


# ------------------------------------------------------------------------------------------------------ list


def _supporters() -> dict:
    """``{backend: supports(problem, solver, sensitivity, step, device)}`` for every backend that can say.

    Built-in backends answer through their framework-free ``supports`` (``BackendSpec.supports``, whether or not
    the framework is installed: the matrix is what crossode implements) or, for Julia, an instance that imports
    nothing; plugins are loaded (unusable ones are left out)."""
    import importlib

    from ._registry import BACKENDS, get_backend, unavailable_reason

    out = {}
    for name, spec in BACKENDS.items():
        if name == "reference":
            continue
        try:
            if spec.supports:
                module, func = spec.supports.split(":")
                out[name] = getattr(importlib.import_module(module), func)
            elif spec.plugin:  # third-party: loaded (and validated) by the registry, unusable ones are left out
                if unavailable_reason(name) is not None:
                    continue
                out[name] = get_backend(name).supports
            else:
                module, cls = spec.target.split(":")
                out[name] = getattr(importlib.import_module(module), cls)().supports
        except Exception:  # noqa: BLE001
            continue
    return out


def _feature_problems() -> dict:
    """One small problem per neutral feature beyond the basic single-state problem (for ``crossode list``)."""
    import numpy as np

    from ._cnf import CNFRHS
    from ._problem import Loss, Problem
    from ._rhs import MLPRHS

    base = dict(tspan=(0.0, 1.0), saveat=[1.0])
    return {
        "batch (y0 of shape (batch, n))": Problem(MLPRHS([2, 4, 2]), y0=np.ones((3, 2)), **base),
        "mse loss (data targets)": Problem(MLPRHS([2, 4, 2]), y0=[1.0, 0.0], loss=Loss("mse", targets=[[0.0, 1.0]]),
                                           **base),
        "MLP time input": Problem(MLPRHS([2, 4, 2], time_input=True), y0=[1.0, 0.0], **base),
        "MLP cube features": Problem(MLPRHS([2, 4, 2], features="cube"), y0=[1.0, 0.0], **base),
        "CNF field + cnf_nll loss": Problem(CNFRHS([2, 4, 2]), y0=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                             loss=Loss("cnf_nll"), **base),
    }


def feature_support() -> dict[str, dict[str, str | None]]:
    """``{feature: {backend: None | reason}}``: each backend's ``supports()`` on a small problem with the feature
    (``dopri5`` + ``direct``, adaptive, CPU)."""
    from ._sensitivity import Direct
    from ._solvers import Dopri5

    supporters = _supporters()
    out = {}
    for feature, problem in _feature_problems().items():
        row = {}
        for name, supports in supporters.items():
            try:
                row[name] = supports(problem, Dopri5(), Direct(), Adaptive(), "cpu")
            except Exception as e:  # noqa: BLE001
                row[name] = f"{type(e).__name__}: {e}"
        out[feature] = row
    return out


def support_matrix(problem=None) -> dict[str, dict[tuple[str, str], str | None]]:
    """``{backend: {(solver, sensitivity): None | reason}}`` from each backend's own ``supports()`` (on a CPU;
    adaptive steps where the solver has an error estimate, else ``Fixed(dt=0.1)``), without importing torch or
    JAX (see :func:`_supporters`)."""
    from . import problems

    problem = problem or problems.get_problem(DEFAULT_PROBLEM)
    out = {}
    for name, supports in _supporters().items():
        table = {}
        for s_name, s_cls in SOLVERS.items():
            for g_name, g_cls in SENSITIVITIES.items():
                solver, sens = s_cls(), g_cls()
                try:
                    check_pair(solver, sens)
                except UnsupportedError as e:
                    table[(s_name, g_name)] = str(e)
                    continue
                step = Adaptive() if solver.adaptive else Fixed(dt=0.1)
                try:
                    table[(s_name, g_name)] = supports(problem, solver, sens, step, "cpu")
                except Exception as e:  # noqa: BLE001
                    table[(s_name, g_name)] = f"{type(e).__name__}: {e}"
        out[name] = table
    return out


def support_matrix_markdown(matrix=None) -> str:
    """The support matrix as a markdown table: one row per solver, one column per sensitivity, each cell the
    backends that support the pair (from their own ``supports()``). The README embeds exactly this text; a test
    keeps the two equal."""
    matrix = support_matrix() if matrix is None else matrix
    backends = list(matrix)
    lines = ["| solver | " + " | ".join(SENSITIVITIES) + " |", "|---|" + "---|" * len(SENSITIVITIES)]
    for s_name in SOLVERS:
        cells = []
        for g_name in SENSITIVITIES:
            ok = [b for b in backends if matrix[b].get((s_name, g_name)) is None]
            cells.append(", ".join(ok) if ok else "-")
        lines.append(f"| {s_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_list(args) -> int:
    """Problems, solvers, sensitivities, and the backend support matrix."""
    from . import problems

    print("problems:")
    for name, factory in problems.PROBLEMS.items():
        print(f"  {name:20s} {(factory.__doc__ or '').strip().splitlines()[0]}")
    print("solvers:")
    for name, cls in SOLVERS.items():
        kind = "adaptive" if cls.adaptive else "fixed step only"
        print(f"  {name:15s} order {cls.order}, {kind}{', stiff' if cls.stiff else ''}")
    print("sensitivities:")
    for name, cls in SENSITIVITIES.items():
        print(f"  {name:15s} {cls.family.upper()}  {(cls.__doc__ or '').strip().splitlines()[0]}")
    print("support matrix (each cell: the backends whose supports() accepts the pair on a CPU, float64):")
    print(support_matrix_markdown())
    print("problem features (backends whose supports() accepts a dopri5 + direct cell of such a problem):")
    for feature, row in feature_support().items():
        ok = [b for b, reason in row.items() if reason is None]
        missing = "; ".join(f"not {b}: {reason}" for b, reason in row.items() if reason is not None)
        print(f"  {feature:32s} {', '.join(ok) or '-'}" + (f"  ({missing})" if missing else ""))
    print("per-sample steps (Adaptive(batch_steps='per_sample'), --batch-steps per_sample; the (solver, sensitivity) "
          "pairs whose supports() accepts it on a batched problem):")
    for backend, row in per_sample_support().items():
        ok = [f"{s}+{g}" for (s, g), reason in row.items() if reason is None]
        if ok:
            print(f"  {backend:8s} {', '.join(ok)}")
        else:
            reasons = list(dict.fromkeys(r for r in row.values() if r is not None))
            print(f"  {backend:8s} -  ({reasons[0] if len(reasons) == 1 else 'see supports()'})")
    return 0


def per_sample_support() -> dict[str, dict[tuple[str, str], str | None]]:
    """``{backend: {(solver, sensitivity): None | reason}}`` for ``Adaptive(batch_steps="per_sample")`` on a
    batched problem: every adaptive solver x sensitivity pair that makes sense, asked of each backend's
    ``supports()``."""
    problem = _feature_problems()["batch (y0 of shape (batch, n))"]
    step = Adaptive(batch_steps="per_sample")
    out = {}
    for name, supports in _supporters().items():
        table = {}
        for s_name, s_cls in SOLVERS.items():
            if not s_cls.adaptive:
                continue
            for g_name, g_cls in SENSITIVITIES.items():
                solver, sens = s_cls(), g_cls()
                try:
                    check_pair(solver, sens)
                except UnsupportedError:
                    continue
                try:
                    table[(s_name, g_name)] = supports(problem, solver, sens, step, "cpu")
                except Exception as e:  # noqa: BLE001
                    table[(s_name, g_name)] = f"{type(e).__name__}: {e}"
        out[name] = table
    return out


# --------------------------------------------------------------------------------------------------- compare


def _load_problem(args):
    from ._problemfile import load_problem_file
    from .problems import get_problem

    if args.problem and args.problem_file:
        raise InvalidInputError("give --problem or --problem-file, not both.")
    if args.problem_file:
        return load_problem_file(args.problem_file)
    return get_problem(args.problem or DEFAULT_PROBLEM)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


MEMORY_KINDS = {
    "cpu_rss": "peak resident set above the pre-call baseline (first cell of this process only)",
    "cuda_allocator": "torch CUDA allocator peak",
    "xla_temp": "temporary memory of the compiled XLA program",
}


def _taylor_cell(r) -> str:
    if r.taylor_status is None:
        return "-"
    if r.taylor_slope is None:
        return r.taylor_status
    mark = "" if r.taylor_status == "consistent" else f" (incons. {_fmt(r.taylor_inconsistency, '.1e')})"
    return f"{r.taylor_slope:.2f}{mark}"


def _print_table(records, problem, skipped, show_details=False):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)  # pipes/CI: do not squeeze columns to 80
    table = Table(title=f"crossode compare: {problem.name} ({problem.rhs.describe()[:60]})", show_lines=False)
    taylor = any(r.taylor_status is not None for r in records)
    for col in ("backend", "solver", "sensitivity", "step", "status", "loss", "grad err", "dy0 err", "NFE f/b",
                "steps a/r", "grad ms", "compile s", "peak MB") + (("Taylor slope",) if taylor else ()):
        table.add_column(col, justify="right" if col not in ("backend", "solver", "sensitivity", "status") else "left")
    for r in records:
        step = f"dt={r.dt:g}" if r.dt is not None else f"rtol={r.rtol:g}"
        if getattr(r, "batch_steps", None) == "per_sample":
            step += " per-sample"
        nfe = f"{_fmt(r.nfe_forward, 'd')}/{_fmt(r.nfe_backward, 'd')}"
        steps = f"{_fmt(r.steps_accepted, 'd')}/{_fmt(r.steps_rejected, 'd')}"
        ms = None if r.time_gradient_s is None else 1e3 * r.time_gradient_s
        mb = None if r.peak_memory_bytes is None else r.peak_memory_bytes / 1e6
        status = r.status if r.ok else f"[red]{r.status}[/red]"
        table.add_row(r.backend, r.solver, r.sensitivity, step, status, _fmt(r.loss, ".6g"), _fmt(r.grad_error, ".2e"),
                      _fmt(r.dy0_error, ".2e"), nfe, steps, _fmt(ms, ".2f"), _fmt(r.compile_s, ".2f"),
                      _fmt(mb, ".1f"), *((_taylor_cell(r),) if taylor else ()))
    console.print(table)
    if taylor:
        console.print("Taylor slope: of E1(h) = |J(p + h v) - J(p) - h v.dJ/dp| for h = 2^-k (2: the gradient is the "
                      "exact derivative of the loss the solver computed; 1: it is off by about `incons.` x ||g||).",
                      markup=False, highlight=False)
    for r in records:
        if not r.ok:
            console.print(f"[red]{r.backend}/{r.solver}/{r.sensitivity}: {r.status}[/red]: {escape(r.message)}")
            if show_details and r.details:
                console.print(r.details, markup=False, highlight=False)
    refs = list(dict.fromkeys(r.reference for r in records if r.reference))
    if refs:
        console.print(f"errors are relative L2 against the independent reference ({'; '.join(refs)}).")
    kinds = list(dict.fromkeys(r.memory_kind for r in records if r.memory_kind))
    finished = [r for r in records if r.status in ("ok", "inaccurate")]
    blank = [r for r in finished if r.peak_memory_bytes is None]
    if kinds or blank:
        note = "; ".join(f"{k}: {MEMORY_KINDS.get(k, k)}" for k in kinds)
        if blank:
            note += ("; " if note else "") + (
                "blank: not measured cleanly (CPU memory of a cell that runs after another in one process is "
                "mixed with the earlier cell's heap; run a sweep with --config for one fresh process per cell)")
        console.print(f"peak MB: {note}.", markup=False, highlight=False)
    for name, reason in skipped:
        console.print(f"left out backend {name!r}: {reason}")


def cmd_compare(args) -> int:
    """Run a comparison (the built-in default with no flags) and print a table; ``--config``: a sweep."""
    from .sweep import _cli as sweep_cli

    if args.config:
        return sweep_cli.compare_config(args)
    sweep_cli.check_sweep_flags(args)
    from ._harness import measure
    from ._registry import backend_names, unavailable_reason

    problem = _load_problem(args)
    explicit_backends = args.backend is not None
    backends = _csv(args.backend, "--backend") if explicit_backends else backend_names()
    for b in backends:
        if b not in backend_names(include_reference=True):
            raise InvalidInputError(f"Unknown backend {b!r}; expected one of {fmt_choices(backend_names(True))}.")
    skipped, usable = [], []
    for b in backends:
        reason = unavailable_reason(b)
        if reason is None:
            usable.append(b)
        elif explicit_backends:
            raise InvalidInputError(f"backend {b!r} is unavailable: {reason}")
        else:
            skipped.append((b, reason))
    if args.solver or args.sensitivity:
        solvers = _csv(args.solver or "dopri5", "--solver")
        sens = _csv(args.sensitivity or "direct", "--sensitivity")
        pairs = [(s, g) for s in solvers for g in sens]
        defaults = False
    else:
        pairs, defaults = list(DEFAULT_CELLS), True
    if args.dt is not None and (args.rtol is not None or args.atol is not None):
        raise InvalidInputError("give --dt (fixed step) or --rtol/--atol (adaptive), not both.")
    if args.dt is not None and args.batch_steps is not None:
        raise InvalidInputError("--batch-steps chooses how adaptive steps are shared; it does not apply to --dt.")
    if args.dt is not None:
        fixed = Fixed(dt=args.dt)
        needed = grid_steps(problem.t0, problem.t1, fixed.dt)
        if needed > fixed.max_steps:  # before any backend allocates the grid
            raise InvalidInputError(f"--dt {args.dt:g} needs {needed:,} steps over tspan [{problem.t0:g}, "
                                    f"{problem.t1:g}]; at most max_steps={fixed.max_steps:,} are allowed.")
    cells, invalid = [], []
    for s_name, g_name in pairs:
        solver, sens = solver_from_name(s_name), sensitivity_from_name(g_name)
        if args.dt is not None:
            step = fixed
        else:
            step = Adaptive(rtol=args.rtol if args.rtol is not None else 1e-6,
                            atol=args.atol if args.atol is not None else 1e-8,
                            batch_steps=args.batch_steps or "shared")
            if not solver.adaptive:
                if defaults:
                    continue
                raise InvalidInputError(f"solver {s_name!r} has no error estimate; pass --dt for fixed steps.")
        try:
            check_pair(solver, sens)
        except UnsupportedError as e:
            invalid.append(e)  # a product of comma lists may contain pairs that make no sense: skip, say so
            continue
        for b in usable:
            cells.append((b, solver, sens, step))
    if invalid and not cells:
        raise invalid[0]
    if not cells:
        raise InvalidInputError("nothing to run: no available backend for the requested cells.")
    for e in invalid:
        print(f"skipped: {e}", file=sys.stderr)
    records = []
    store = None
    if args.out:
        from .sweep._store import ResultStore

        store = ResultStore(args.out)  # the sweep's lock, and a usable regular file, before any cell runs
        store.open()
    unsaved = None
    try:
        for b, solver, sens, step in cells:
            rec = measure(problem, b, solver, sens, step, device=args.device, dtype=args.dtype,
                          repeats=args.repeats, save_gradients=args.save_gradients, taylor=args.taylor)
            records.append(rec)
            if store is not None:
                try:
                    store.append(rec)
                except CrossODEError as e:  # e.g. disk full: keep the record, stop, say so
                    unsaved = (rec, e)
                    break
    except KeyboardInterrupt:
        print(f"crossode: interrupted after {len(records)} of {len(cells)} cells"
              + (f"; their records are in {args.out}." if args.out and records else "."), file=sys.stderr)
        return 130
    finally:
        if store is not None:
            store.close()
    # every cell unsupported or unavailable (e.g. --device cuda without a GPU): the reasons, exit 2, no empty table
    if records and all(r.status in ("unsupported", "unavailable") for r in records):
        by_reason: dict[str, list[str]] = {}
        for r in records:
            by_reason.setdefault(r.message, []).append(f"{r.backend}/{r.solver}/{r.sensitivity}")
        for reason, names in by_reason.items():  # one line per distinct reason
            print(f"crossode: error: {reason} (cells: {', '.join(names)})", file=sys.stderr)
        return 2
    if defaults:  # the built-in default shows only what each backend supports
        records = [r for r in records if r.status != "unsupported"]
    _print_table(records, problem, skipped, show_details=args.traceback)
    if args.save_gradients:
        for r in records:
            if r.ok:
                print(json.dumps({"backend": r.backend, "solver": r.solver, "sensitivity": r.sensitivity,
                                  "grad_error": r.grad_error, "reference": r.reference,
                                  "dparams": r.dparams, "dy0": r.dy0}))
    if unsaved is not None:
        rec, e = unsaved
        print(json.dumps(rec.to_dict()))  # the record that could not be saved, so that nothing is lost
        left = len(cells) - len(records)
        return _usage_error(f"{e}. The record of {rec.backend}/{rec.solver}/{rec.sensitivity} was NOT saved (printed "
                            f"above as JSON); {left} cell(s) not run.")
    if records and not any(r.ok for r in records):
        print("crossode: no cell finished ok (exit status 1).", file=sys.stderr)
        return 1
    return 0


def cmd_report(args) -> int:
    """``crossode report``: the sweep report, or the training report for ``crossode train`` results."""
    from .sweep import _cli as sweep_cli
    from .train._report import is_training_file, write_training_report

    sweep_cli.check_results(args.results)
    return sweep_cli.cmd_report(args, write=write_training_report if is_training_file(args.results) else None)


def cmd_julia_setup(args) -> int:
    """Install Julia and the Julia packages through juliapkg (needs internet) and precompile."""
    try:
        from .backends.julia._setup import setup
    except ImportError as e:
        return _usage_error(f"the Julia backend needs juliacall: pip install 'crossode[julia]' ({e})")
    return setup(cuda=args.cuda)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    p = _Parser(prog="crossode", description="Compare ODE gradient methods across PyTorch, JAX and Julia.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    info = sub.add_parser("info", help="backends available here, with reasons and versions")
    info.add_argument("--devices", action="store_true", help="also list devices (imports the frameworks)")
    info.set_defaults(func=cmd_info)
    sub.add_parser("list", help="problems, solvers, sensitivities and the support matrix").set_defaults(func=cmd_list)
    c = sub.add_parser(
        "compare", help="run a comparison (default: built-in comparison on a small zoo problem)",
        epilog="Comma lists run every combination; pairs that make no sense (e.g. rk4 + mali) are skipped with a note, "
               "and only when every cell is unsupported or unavailable does compare exit 2. Exit status: 0 if some "
               "cell is ok, 1 if none is, 2 for bad input, 130 when interrupted.")
    c.add_argument("--problem", help="zoo problem name (see `crossode list`)")
    c.add_argument("--problem-file", help="TOML problem file (schema in the README)")
    c.add_argument("--backend", help="comma list of backends (default: every available one)")
    c.add_argument("--solver", help="comma list of solvers")
    c.add_argument("--sensitivity", help="comma list of sensitivities")
    c.add_argument("--rtol", type=float)
    c.add_argument("--atol", type=float)
    c.add_argument("--dt", type=float, help="fixed step size (instead of rtol/atol)")
    c.add_argument("--batch-steps", choices=BATCH_STEPS,
                   help="adaptive steps of a batched problem: one step sequence for the batch (shared, default) or "
                        "each sample its own (per_sample; torch Direct/MALI only)")
    c.add_argument("--device", default="cpu", help="cpu or cuda/gpu")
    c.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    c.add_argument("--repeats", type=int, default=3, help="timed repeats after the warm-up call (median reported)")
    c.add_argument("--out", help="append one JSON record per cell to this JSONL file")
    c.add_argument("--save-gradients", action="store_true", help="include dparams and dy0 in records and output")
    c.add_argument("--taylor", action="store_true",
                   help="also run Onken & Ruthotto's Taylor test of each gradient against the loss its solver computes "
                        "(fitted E1 slope: 2 = consistent; about 21 extra solves per cell; with --config: every cell)")
    c.add_argument("--traceback", action="store_true",
                   help="print the full details (traceback, worker stderr) of failed cells, not just one line")
    from .sweep import _cli as sweep_cli

    sweep_cli.add_sweep_arguments(c)
    c.set_defaults(func=cmd_compare)
    sweep_cli.add_report_parser(sub, cmd_report)
    from .check import _cli as check_cli

    check_cli.add_check_parser(sub)
    from .train import _cli as train_cli

    train_cli.add_train_parser(sub)
    js = sub.add_parser("julia-setup", help="install Julia + packages via juliapkg (needs internet) and precompile")
    js.add_argument("--cuda", action="store_true", help="also install CUDA.jl for device='cuda'")
    js.set_defaults(func=cmd_julia_setup)
    return p


_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _join_negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--rtol -1e-3`` -> ``--rtol=-1e-3``: argparse takes ``-1e-3`` for an option ("expected one argument"); joined,
    the value reaches the option's own check, which names what is allowed."""
    takes_value = set()
    for action in parser._actions:  # the options of every subcommand that take a value
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                takes_value.update(o for a in sub._actions if a.nargs != 0 for o in a.option_strings)
    out, i = [], 0
    while i < len(argv):
        if argv[i] in takes_value and i + 1 < len(argv) and _NUMBER.match(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


class _PipeSafe:
    """A text stream that drops output once its reader has gone (``| head -1``): the command keeps computing and
    writing its results file instead of dying of a broken pipe."""

    def __init__(self, stream):
        self._stream, self.broken = stream, False

    def write(self, text):
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._break()
        return len(text)

    def flush(self):
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._break()

    def _break(self):
        self.broken = True
        try:  # later writes (and the interpreter's final flush) go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _one_line_warnings(default):
    """``warnings.showwarning`` that prints crossode's own warnings (skipped results-file lines) as one line."""
    from .sweep._store import SkippedLineWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, SkippedLineWarning):
            print(f"crossode: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crossode`` console script."""
    parser = build_parser()
    argv = _join_negative_values(parser, list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    streams = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, _PipeSafe):
        sys.stdout, sys.stderr = _PipeSafe(sys.stdout), _PipeSafe(sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            code = args.func(args)
    except CrossODEError as e:
        return _usage_error(str(e))
    except KeyboardInterrupt:
        print("crossode: interrupted.", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = streams
    if os.environ.get("CROSSODE_TIMING"):
        print(f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())

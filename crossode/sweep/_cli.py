"""Command-line glue for sweeps: ``crossode compare --config`` and ``crossode report`` (called from ``cli.py``)."""

from __future__ import annotations

import os
import sys

from .._errors import InvalidInputError

__all__ = ["compare_config", "check_sweep_flags", "cmd_report", "add_sweep_arguments", "add_report_parser",
           "make_executor"]

# one-cell flags of `compare` that a config replaces, with their parser defaults
_ONE_CELL = {"problem": None, "problem_file": None, "backend": None, "solver": None, "sensitivity": None,
             "rtol": None, "atol": None, "dt": None, "device": "cpu", "dtype": "float64", "repeats": 3,
             "save_gradients": False}


def add_sweep_arguments(c) -> None:
    """Add ``--config``, ``--resume``, ``--jobs``, ``--timeout``, ``--executor``, ``--scheduler``, ``--workers`` to
    the ``compare`` parser."""
    c.add_argument("--config", help="TOML sweep config (problems x backends x solvers x ...); see crossode.sweep")
    c.add_argument("--resume", action="store_true", help="with --config: skip cells already in the results file")
    c.add_argument("--jobs", type=int, help="with --config: cells run in parallel (default: the config's, else 1)")
    c.add_argument("--timeout", type=float, help="with --config: per-cell time limit in seconds")
    c.add_argument("--executor", choices=("local", "dask"),
                   help="with --config: run cells on this machine (default) or on a Dask cluster")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: an existing cluster's scheduler, e.g. tcp://head:8786")
    c.add_argument("--workers", type=int, metavar="N",
                   help="with --executor dask: start a local Dask cluster of N worker processes")


def check_sweep_flags(args) -> None:
    """Sweep-only flags without ``--config`` are an error (they would silently do nothing)."""
    used = [f"--{n}" for n in ("resume", "jobs", "timeout", "executor", "scheduler", "workers")
            if getattr(args, n, None) not in (None, False)]
    if used and not getattr(args, "config", None):
        raise InvalidInputError(f"{', '.join(used)} only apply with --config.")


def compare_config(args) -> int:
    """``crossode compare --config sweep.toml``: run the sweep, append records to its results file."""
    from ._config import load_config
    from ._sweep import run_sweep

    clash = [f"--{k.replace('_', '-')}" for k, d in _ONE_CELL.items() if getattr(args, k, d) != d]
    if clash:
        raise InvalidInputError(f"--config cannot be combined with {', '.join(clash)}; put them in the config.")
    if args.jobs is not None and args.jobs < 1:
        raise InvalidInputError(f"--jobs must be a positive integer; got {args.jobs}.")
    if args.timeout is not None and not args.timeout > 0:
        raise InvalidInputError(f"--timeout must be positive; got {args.timeout}.")
    config = load_config(args.config)
    out = args.out or config.output
    if not out:
        raise InvalidInputError("no results file: set `output` in the config or pass --out.")
    executor = make_executor(args, config)
    run_sweep(config.cells, out, resume=args.resume, executor=executor, timeout=args.timeout)
    print(f"results: {out}  (tables and figures: crossode report {out})")
    return 0


def make_executor(args, config):
    """The executor the flags and the config's ``[executor]`` table ask for (flags win)."""
    from ._executor import LocalExecutor

    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers must be a positive integer; got {args.workers}.")
    table = config.executor or {"kind": "local", "start": "auto"}
    start = table.get("start", "auto")
    kind = args.executor or ("dask" if args.scheduler or args.workers else None) or table["kind"]
    if kind == "local":
        if args.scheduler or args.workers:
            raise InvalidInputError("--scheduler and --workers need --executor dask.")
        return LocalExecutor(jobs=args.jobs or config.jobs, start=start)
    if args.jobs is not None:
        raise InvalidInputError("--jobs applies to the local executor; with --executor dask the cluster's worker "
                                "threads decide how many cells run at once (--workers N for a local cluster).")
    if args.scheduler is not None and args.workers is not None:
        raise InvalidInputError("give --scheduler (an existing cluster) or --workers (a local cluster), not both.")
    if args.scheduler is not None and not args.scheduler.strip():
        raise InvalidInputError("--scheduler must be a scheduler address such as tcp://head:8786.")
    address, workers = args.scheduler, args.workers
    if address is None and workers is None:
        address, workers = table.get("address"), table.get("workers")
    from ._dask import DaskExecutor, _distributed

    _distributed()  # a clear error now if distributed is missing
    return DaskExecutor(address=address, workers=workers, start=start)


def add_report_parser(sub, func) -> None:
    """Add the ``report`` subcommand."""
    r = sub.add_parser("report", help="tables, figures and a one-page report from a results JSONL file")
    r.add_argument("results", nargs="+", help="results JSONL file(s) (from compare --config or compare --out)")
    r.add_argument("--out", help="output directory (default: <first results file's stem>_report/)")
    r.add_argument("--title", help="report title")
    r.set_defaults(func=func)


def cmd_report(args) -> int:
    """``crossode report results.jsonl [--out DIR]``."""
    from ._report import write_report

    for path in args.results:
        if not os.path.isfile(path):
            raise InvalidInputError(f"results file {path!r} does not exist.")
    report = write_report(args.results, args.out, title=args.title)
    directory = os.path.dirname(report)
    print(f"report: {report}  (also report.html, tables/*.md|csv, figures/*.png in {directory})", file=sys.stdout)
    return 0

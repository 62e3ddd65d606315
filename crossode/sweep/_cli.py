"""Command-line glue for sweeps: ``crossode compare --config`` and ``crossode report`` (called from ``cli.py``)."""

from __future__ import annotations

import os
import sys

from .._errors import InvalidInputError

__all__ = ["compare_config", "check_sweep_flags", "cmd_report", "add_sweep_arguments", "add_report_parser"]

# one-cell flags of `compare` that a config replaces, with their parser defaults
_ONE_CELL = {"problem": None, "problem_file": None, "backend": None, "solver": None, "sensitivity": None,
             "rtol": None, "atol": None, "dt": None, "device": "cpu", "dtype": "float64", "repeats": 3,
             "save_gradients": False}


def add_sweep_arguments(c) -> None:
    """Add ``--config``, ``--resume``, ``--jobs``, ``--timeout`` to the ``compare`` parser."""
    c.add_argument("--config", help="TOML sweep config (problems x backends x solvers x ...); see crossode.sweep")
    c.add_argument("--resume", action="store_true", help="with --config: skip cells already in the results file")
    c.add_argument("--jobs", type=int, help="with --config: cells run in parallel (default: the config's, else 1)")
    c.add_argument("--timeout", type=float, help="with --config: per-cell time limit in seconds")


def check_sweep_flags(args) -> None:
    """Sweep-only flags without ``--config`` are an error (they would silently do nothing)."""
    used = [f"--{n}" for n in ("resume", "jobs", "timeout") if getattr(args, n, None) not in (None, False)]
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
    jobs = args.jobs or config.jobs
    run_sweep(config.cells, out, resume=args.resume, jobs=jobs, timeout=args.timeout)
    print(f"results: {out}  (tables and figures: crossode report {out})")
    return 0


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

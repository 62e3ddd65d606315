"""Command-line glue for sweeps: ``crossode compare --config`` and ``crossode report`` (called from ``cli.py``)."""

from __future__ import annotations

import json
import os
import sys

from .._errors import InvalidInputError

__all__ = ["compare_config", "check_sweep_flags", "cmd_report", "check_results", "add_sweep_arguments", "add_report_parser",
           "make_executor"]

# one-cell flags of `compare` that a config replaces, with their parser defaults
_ONE_CELL = {"problem": None, "problem_file": None, "backend": None, "solver": None, "sensitivity": None,
             "rtol": None, "atol": None, "dt": None, "device": "cpu", "dtype": "float64", "repeats": 3,
             "save_gradients": False, "batch_steps": None}


def add_sweep_arguments(c) -> None:
    """Add ``--config``, ``--resume``, ``--retry-failed``, ``--jobs``, ``--timeout``, ``--max-cells``,
    ``--executor``, ``--scheduler``, ``--workers`` to ``compare``."""
    from ._sweep import RETRY_DEFAULT

    c.add_argument("--config", help="TOML sweep config (problems x backends x solvers x ...); see crossode.sweep")
    c.add_argument("--resume", action="store_true", help="with --config: skip cells already in the results file")
    c.add_argument("--retry-failed", nargs="?", const=",".join(RETRY_DEFAULT), metavar="STATUSES",
                   help="with --config: like --resume, but run again the cells whose latest record has one of these "
                        f"statuses (comma list; default: {','.join(RETRY_DEFAULT)})")
    c.add_argument("--jobs", type=int, help="with --config: cells run in parallel (default: the config's, else 1)")
    c.add_argument("--timeout", type=float, help="with --config: per-cell time limit in seconds")
    c.add_argument("--max-cells", type=int, help="with --config: refuse a sweep of more cells (default: the "
                                                 "config's max_cells, else 100000)")
    c.add_argument("--executor", choices=("local", "dask"),
                   help="with --config: run cells on this machine (default) or on a Dask cluster")
    c.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --executor dask: an existing cluster's scheduler, e.g. tcp://head:8786")
    c.add_argument("--workers", type=int, metavar="N",
                   help="with --executor dask: start a local Dask cluster of N worker processes")


def check_sweep_flags(args) -> None:
    """Sweep-only flags without ``--config`` are an error (they would silently do nothing)."""
    used = [f"--{n.replace('_', '-')}" for n in ("resume", "retry_failed", "jobs", "timeout", "max_cells", "executor",
                                                 "scheduler", "workers")
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
    if args.max_cells is not None and args.max_cells < 1:
        raise InvalidInputError(f"--max-cells must be a positive integer; got {args.max_cells}.")
    retry = retry_statuses(args.retry_failed)
    config = load_config(args.config, max_cells=args.max_cells)
    out = args.out or config.output
    if not out:
        raise InvalidInputError("no results file: set `output` in the config or pass --out.")
    executor = make_executor(args, config)
    if getattr(args, "taylor", False):
        import dataclasses

        config.cells = [dataclasses.replace(c, taylor=True) for c in config.cells]
    if config.dropped:
        shown = "; ".join(config.dropped[:3]) + (f"; ... ({len(config.dropped) - 3} more)" if len(config.dropped) > 3
                                                 else "")
        print(f"left out {len(config.dropped)} solver x sensitivity combination(s): {shown}", file=sys.stderr)
    from ._store import StoreWriteError

    try:
        records = run_sweep(config.cells, out, resume=args.resume, retry=retry, executor=executor,
                            timeout=args.timeout, details=getattr(args, "traceback", False))
    except KeyboardInterrupt:
        print(f"crossode: interrupted; every finished cell's record is in {out}. Run the same command with --resume "
              "to run the rest.", file=sys.stderr)
        return 130
    except StoreWriteError as e:
        for rec in getattr(e, "records", []):  # what could not be saved, so that nothing is lost
            print(json.dumps(rec.to_dict()))
        raise
    print(f"results: {out}  (tables and figures: crossode report {out})")
    if records and not any(r.ok for r in records):
        print("crossode: no cell finished ok (exit status 1).", file=sys.stderr)
        return 1
    return 0


def make_executor(args, config, runner: str | None = None):
    """The executor the flags and the config's ``[executor]`` table ask for (flags win); ``runner``: the workers'
    ``module:function`` (default: the sweep's measurement; ``crossode train`` passes its training runner)."""
    from ._executor import LocalExecutor

    if args.workers is not None and args.workers < 1:
        raise InvalidInputError(f"--workers must be a positive integer; got {args.workers}.")
    table = config.executor or {"kind": "local", "start": "auto"}
    start = table.get("start", "auto")
    kind = args.executor or ("dask" if args.scheduler or args.workers else None) or table["kind"]
    if kind == "local":
        if args.scheduler or args.workers:
            raise InvalidInputError("--scheduler and --workers need --executor dask.")
        return LocalExecutor(jobs=args.jobs or config.jobs, start=start, runner=runner)
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
    return DaskExecutor(address=address, workers=workers, start=start, runner=runner)


def retry_statuses(text: str | None) -> tuple[str, ...]:
    """The statuses of ``--retry-failed`` (validated against :data:`crossode.STATUSES`)."""
    from .._record import STATUSES

    if text is None:
        return ()
    statuses = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in statuses if x not in STATUSES]
    if bad or not statuses:
        raise InvalidInputError(f"--retry-failed: unknown status(es) {bad or [text]}; allowed: {', '.join(STATUSES)}.")
    return statuses


def add_report_parser(sub, func) -> None:
    """Add the ``report`` subcommand."""
    r = sub.add_parser("report", help="tables, figures and a one-page report from a results JSONL file")
    r.add_argument("results", nargs="+", help="results JSONL file(s) (from compare --config or compare --out)")
    r.add_argument("--out", help="output directory (default: <first results file's stem>_report/)")
    r.add_argument("--title", help="report title")
    r.set_defaults(func=func)


def check_results(paths) -> None:
    """Each results file exists and is a regular file; raises :class:`InvalidInputError` naming it."""
    for path in paths:
        if os.path.isdir(path):
            raise InvalidInputError(f"results file {path!r} is a directory; give the JSONL file(s) in it.")
        if not os.path.exists(path):
            raise InvalidInputError(f"results file {path!r} does not exist.")
        if not os.path.isfile(path):
            raise InvalidInputError(f"results file {path!r} is not a regular file.")


def cmd_report(args, write=None) -> int:
    """``crossode report results.jsonl [--out DIR]``; ``write``: the report writer (default: the sweep report's
    :func:`~crossode.sweep.write_report`; the command line passes the training report's for training results)."""
    check_results(args.results)
    if write is None:
        from ._report import write_report as write
    report = write(args.results, args.out, title=args.title)
    directory = os.path.dirname(report)
    print(f"report: {report}  (also report.html, tables/*.md|csv, figures/*.png in {directory})", file=sys.stdout)
    return 0

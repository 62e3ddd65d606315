"""Command-line glue for ``crossode train CONFIG.toml`` (registered in :mod:`crossode.cli`)."""

from __future__ import annotations

import json
import sys

from .._errors import InvalidInputError

__all__ = ["add_train_parser", "cmd_train"]


def add_train_parser(sub) -> None:
    """Add the ``train`` subcommand."""
    from ..sweep._sweep import RETRY_DEFAULT

    t = sub.add_parser("train", help="training runs (one workload, many gradient methods) from a TOML config",
                       epilog="Each run trains in a fresh worker process; its iteration records are appended to the "
                              "results file as it trains. Exit status: 0 if some run finished ok, 1 if none did, 2 for "
                              "bad input, 130 when interrupted (records so far are kept; --resume goes on).")
    t.add_argument("config", help="training TOML config (schema: crossode.train._config)")
    t.add_argument("--out", help="results JSONL file (default: the config's `output`)")
    t.add_argument("--iterations", type=int, help="optimizer steps per run (overrides [training] iterations)")
    t.add_argument("--resume", action="store_true",
                   help="skip runs that finished; runs killed mid-way run again from iteration 0")
    t.add_argument("--retry-failed", nargs="?", const=",".join(RETRY_DEFAULT), metavar="STATUSES",
                   help="like --resume, but also run again the runs whose status is one of these (comma list; default: "
                        f"{','.join(RETRY_DEFAULT)})")
    t.add_argument("--jobs", type=int, help="runs in parallel (default: the config's, else 1)")
    t.add_argument("--timeout", type=float, help="per-run time limit in seconds")
    t.add_argument("--executor", choices=("local", "dask"), help="run on this machine (default) or on a Dask cluster")
    t.add_argument("--scheduler", metavar="ADDRESS", help="with --executor dask: an existing cluster's scheduler")
    t.add_argument("--workers", type=int, metavar="N", help="with --executor dask: a local cluster of N workers")
    t.add_argument("--traceback", action="store_true", help="print the full details of failed runs")
    t.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """``crossode train CONFIG.toml``: run the config's training runs."""
    from ..sweep._cli import make_executor, retry_statuses
    from ..sweep._store import StoreWriteError
    from ._config import load_train_config
    from ._run import train
    from ._worker import RUNNER

    if args.iterations is not None and args.iterations < 1:
        raise InvalidInputError(f"--iterations must be a positive integer; got {args.iterations}.")
    if args.jobs is not None and args.jobs < 1:
        raise InvalidInputError(f"--jobs must be a positive integer; got {args.jobs}.")
    if args.timeout is not None and not args.timeout > 0:
        raise InvalidInputError(f"--timeout must be positive; got {args.timeout}.")
    retry = retry_statuses(args.retry_failed)
    config = load_train_config(args.config, iterations=args.iterations)
    out = args.out or config.output
    if not out:
        raise InvalidInputError("no results file: set `output` in the config or pass --out.")
    executor = make_executor(args, config, runner=RUNNER)
    if config.dropped:
        print(f"left out {len(config.dropped)} solver x sensitivity combination(s): {'; '.join(config.dropped[:3])}",
              file=sys.stderr)
    try:
        rows = train(config, out, resume=args.resume, retry=retry, executor=executor, timeout=args.timeout,
                     details=args.traceback)
    except KeyboardInterrupt:
        print(f"crossode: interrupted; the records so far are in {out}. Run the same command with --resume to run the "
              "rest.", file=sys.stderr)
        return 130
    except StoreWriteError as e:
        for rec in getattr(e, "records", []):
            print(json.dumps(rec))
        raise
    print(f"results: {out}  (figures and tables: crossode report {out})")
    if rows and not any(r["status"] == "ok" for r in rows):
        print("crossode: no run finished ok (exit status 1).", file=sys.stderr)
        return 1
    return 0

"""``crossode check FILE.py:NAME ...``: parser and command (registered by ``crossode/cli.py``).

Exit status: 0 when every problem passes, 1 when any fails (each failure with a one-line reason), 2 on bad input
(malformed arguments, missing file, no such function, an exception while importing the file).
"""

from __future__ import annotations

import math
import sys

from .._errors import InvalidInputError

__all__ = ["add_check_parser", "cmd_check"]


def _floats(text: str, flag: str) -> list[float]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items or len(items) > 12:
        raise InvalidInputError(f"{flag} must be a comma list of 1 to 12 numbers; got {text!r}.")
    try:
        values = [float(x) for x in items]
    except ValueError:
        raise InvalidInputError(f"{flag} must be a comma list of numbers; got {text!r}.") from None
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInputError(f"{flag} values must be positive and finite; got {text!r}.")
    return values


def add_check_parser(sub) -> None:
    """Add the ``check`` subcommand to the ``crossode`` parser."""
    c = sub.add_parser("check", help="reference-check your own solver (orders, gradient errors, Taylor test)",
                       description="Reference-check a torchdiffeq-shaped odeint(func, y0, t, *, dt, rtol, atol): "
                       "errors against the independent reference, observed orders, Taylor test, built-in rows. "
                       "FILE.py is imported in this process (its code runs). Exit status: 0 pass, 1 fail, "
                       "2 bad input.")
    c.add_argument("target", metavar="FILE.py:NAME", help="the solver: a Python file and the function in it")
    c.add_argument("--framework", default="torch", choices=("torch", "jax"), help="the solver's framework")
    c.add_argument("--order", type=float, help="declared order (fixed step: the gradient's order must match)")
    c.add_argument("--order-tolerance", type=float, default=0.3,
                   help="accepted distance of the gradient's order from the expected one (default 0.3)")
    c.add_argument("--dt", help="comma list of fixed step sizes (default 0.1,0.05,0.025)")
    c.add_argument("--rtol", help="comma list of tolerances (adaptive), e.g. 1e-3,1e-5,1e-7")
    c.add_argument("--atol", help="with --rtol: one value or one per rtol (default: atol = rtol)")
    c.add_argument("--problems", help="comma list of zoo problems (default: the non-stiff zoo problems)")
    c.add_argument("--problem-file", action="append", help="TOML problem file (repeatable)")
    c.add_argument("--out", help="directory for check.json, records.jsonl and check.png")
    c.add_argument("--repeats", type=int, default=1, help="timed gradient calls per setting after the first (median)")
    c.add_argument("--no-builtin", action="store_true", help="skip the built-in comparison rows")
    c.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    """Run the check and print the tables; 0 pass, 1 fail (bad input raises InvalidInputError -> exit 2)."""
    from .._problemfile import load_problem_file
    from ._check import check
    from ._load import load_solver

    if args.dt and args.rtol:
        raise InvalidInputError("give --dt (fixed step) or --rtol (adaptive), not both.")
    if args.atol and not args.rtol:
        raise InvalidInputError("--atol needs --rtol.")
    if args.problems and args.problem_file:
        raise InvalidInputError("give --problems or --problem-file, not both.")
    dts = _floats(args.dt, "--dt") if args.dt else None
    rtols = _floats(args.rtol, "--rtol") if args.rtol else None
    atols = _floats(args.atol, "--atol") if args.atol else None
    problems = None
    if args.problems:
        problems = [x.strip() for x in args.problems.split(",") if x.strip()]
    elif args.problem_file:
        problems = [load_problem_file(f) for f in args.problem_file]
    # validate everything cheap before importing the user's file (which runs their code)
    from ._check import _parse_problems, _parse_steps, _runner

    steps = _parse_steps(dts, rtols, atols)
    _parse_problems(problems, steps)
    _runner(args.framework)
    odeint, label = load_solver(args.target)
    report = check(odeint, args.framework, order=args.order, problems=problems, dts=dts, rtols=rtols, atols=atols,
                   builtin=not args.no_builtin, repeats=args.repeats, label=label,
                   order_tolerance=args.order_tolerance,
                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    print(report.table(width=200), end="")
    if args.out:
        try:
            paths = report.write(args.out)
        except OSError as e:
            print(f"crossode: error: --out {args.out!r}: {e.strerror or e}", file=sys.stderr)
            return 2
        figure = paths["figure"] or "no figure (matplotlib is not installed: pip install 'crossode[plot]')"
        print(f"wrote {paths['json']}, {paths['records']}, {figure}")
    return 0 if report.passed else 1

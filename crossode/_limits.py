"""Limits on what crossode reads, parses, expands and allocates, with the estimators that enforce them up front.

Every limit is checked *before* the work it bounds (a read, a constant fold, a build, an allocation), so hostile or
mistaken input ends in one :class:`~crossode.InvalidInputError` line within seconds instead of a hang, a
``MemoryError`` or a ``RecursionError`` later in a cell. The values are documented in the README ("Limits").

=============================  ============  ==========================================================
limit                          value         bounds
=============================  ============  ==========================================================
``MAX_FILE_BYTES``             1,000,000     problem files and sweep configs (any file kind: at most
                                             this + 1 bytes are read; devices, FIFOs, sockets refused)
``MAX_EXPRESSION_CHARS``       20,000        one right-hand-side expression string
``MAX_SYNTAX_DEPTH``           200           nesting of an expression's syntax tree (``ast``)
``MAX_EXPRESSION_DEPTH``       64            nesting of the parsed SymPy tree (functions in functions;
                                             Jacobians and code generation recurse over it)
``MAX_INTEGER_DIGITS``         300           exact integers/rationals made by constant folding
                                             (``10**10**10`` is refused before it is computed)
``MAX_SYMBOLIC_JACOBIAN``      200,000       ``n_states * (n_states + n_params)`` of a symbolic field
                                             (SymPy differentiates and compiles every Jacobian entry)
``MAX_MLP_LAYERS``             100           layers of an MLP field
``MAX_PARAMS``                 10,000,000    flat parameters of a field (80 MB per float64 copy)
``MAX_SAVES``                  100,000       save times of a problem
``MAX_STATE_ENTRIES``          10,000,000    entries of ``y0`` (``batch * n_states``) and of loss data
                                             (weights, targets)
``MAX_ARRAY_FILE_BYTES``       268,435,456   an ``.npz`` array file of a problem file (on disk, and its
                                             entry uncompressed)
``MAX_GRID_STEPS``             100,000,000   a fixed-step grid when no ``max_steps`` is given
``MAX_CELLS``                  100,000       cells of one sweep (config key ``max_cells``, ``--max-cells``)
``PARSE_SECONDS``              120           reading and expanding a sweep config in the sweep process
=============================  ============  ==========================================================
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import stat
import threading

from ._errors import InvalidInputError

__all__ = [
    "MAX_FILE_BYTES", "MAX_EXPRESSION_CHARS", "MAX_SYNTAX_DEPTH", "MAX_EXPRESSION_DEPTH", "MAX_INTEGER_DIGITS",
    "MAX_SYMBOLIC_JACOBIAN", "MAX_MLP_LAYERS", "MAX_PARAMS", "MAX_SAVES", "MAX_STATE_ENTRIES",
    "MAX_ARRAY_FILE_BYTES", "MAX_GRID_STEPS", "MAX_CELLS",
    "PARSE_SECONDS", "read_bounded", "power_digits", "check_symbolic_size", "check_mlp_size", "check_count",
    "grid_steps", "time_limit", "snip",
]

MAX_FILE_BYTES = 1_000_000
MAX_EXPRESSION_CHARS = 20_000
MAX_SYNTAX_DEPTH = 200
MAX_EXPRESSION_DEPTH = 64
MAX_INTEGER_DIGITS = 300
MAX_SYMBOLIC_JACOBIAN = 200_000
MAX_MLP_LAYERS = 100
MAX_PARAMS = 10_000_000
MAX_SAVES = 100_000
MAX_STATE_ENTRIES = 10_000_000
MAX_ARRAY_FILE_BYTES = 256 * 1024 * 1024
MAX_GRID_STEPS = 100_000_000
MAX_CELLS = 100_000
PARSE_SECONDS = 120.0


def snip(text, n: int = 60) -> str:
    """``repr(text)`` cut to about ``n`` characters (error messages never echo a 10 KB input)."""
    r = repr(text)
    return r if len(r) <= n else f"{r[:n]}... ({len(str(text))} characters)"


def read_bounded(path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``, reading at most ``limit + 1`` bytes whatever the file kind.

    Directories, devices (``/dev/zero``), FIFOs and sockets are refused without blocking (the file is opened
    non-blocking and checked with ``fstat`` on the open descriptor). Every failure is one
    :class:`InvalidInputError` naming ``what`` and the path.
    """
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {path!r} does not exist.") from None
    except IsADirectoryError:
        raise InvalidInputError(f"{what} {path!r} is a directory; give a file.") from None
    except OSError as e:
        raise InvalidInputError(f"{what} {path!r} cannot be read ({e.strerror or e}).") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InvalidInputError(f"{what} {path!r} is a directory; give a file.")
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{what} {path!r} is not a regular file (a device, FIFO or socket); give a file.")
        if st.st_size > limit:
            raise InvalidInputError(f"{what} {path!r} is {st.st_size} bytes; at most {limit} are allowed.")
        chunks, total = [], 0
        while total <= limit:
            try:
                chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as e:
                raise InvalidInputError(f"{what} {path!r} cannot be read ({e.strerror or e}).") from None
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise InvalidInputError(f"{what} {path!r} is more than {limit} bytes; at most {limit} are allowed.")
        return b"".join(chunks)
    finally:
        os.close(fd)


def power_digits(base_num: int, base_den: int, exponent: float) -> float:
    """Decimal digits of the exact rational ``(base_num/base_den) ** exponent`` (its numerator or denominator),
    estimated from logarithms without computing the power."""
    big = max(abs(int(base_num)), abs(int(base_den)))
    if big <= 1:  # base 0, 1 or -1: the result stays small whatever the exponent
        return 1.0
    return abs(float(exponent)) * math.log10(big)


def check_count(name: str, value, limit: int, hint: str = "") -> None:
    """Refuse ``value`` (a count: states, saves, cells, ...) above ``limit`` with one line naming ``name``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
        shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
        raise InvalidInputError(f"`{name}` is {shown}; at most {limit:,} are allowed{hint}.")


def check_symbolic_size(n_states: int, n_params: int) -> None:
    """Refuse a symbolic field whose Jacobians ``df/dy``, ``df/dp`` have more than ``MAX_SYMBOLIC_JACOBIAN``
    entries: SymPy differentiates and compiles each one (about a minute at the limit)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n_states, n_params)):
        return  # not counts: the caller's own validation reports it
    entries = n_states * (n_states + n_params)
    if entries > MAX_SYMBOLIC_JACOBIAN:
        raise InvalidInputError(
            f"a symbolic field with {n_states:,} states and {n_params:,} parameters has {entries:,} Jacobian "
            f"entries; at most {MAX_SYMBOLIC_JACOBIAN:,} are allowed (n_states * (n_states + n_params)); "
            "use an [mlp] field or fewer states."
        )


def check_mlp_size(widths) -> None:
    """Refuse an MLP with more than ``MAX_MLP_LAYERS`` layers or ``MAX_PARAMS`` parameters, before allocating it.

    ``widths`` must already be a sequence of positive integers.
    """
    layers = len(widths) - 1
    if layers > MAX_MLP_LAYERS:
        raise InvalidInputError(f"an MLP with {layers:,} layers is too deep; at most {MAX_MLP_LAYERS} are allowed.")
    n_params = sum(int(widths[i + 1]) * (int(widths[i]) + 1) for i in range(layers))
    if n_params > MAX_PARAMS:
        raise InvalidInputError(
            f"an MLP with widths {_short_list(widths)} has {n_params:,} parameters; at most {MAX_PARAMS:,} are "
            "allowed."
        )


def _short_list(xs) -> str:
    xs = list(xs)
    return str(xs) if len(xs) <= 8 else f"[{', '.join(map(str, xs[:3]))}, ..., {xs[-1]}] ({len(xs)} entries)"


def grid_steps(t0: float, t1: float, dt: float) -> int:
    """Number of uniform steps of size ``dt`` in ``[t0, t1]`` (what :func:`crossode.fixed_grid` will allocate)."""
    ratio = abs(float(t1) - float(t0)) / float(dt)
    return int(math.floor(ratio + 1e-9)) if math.isfinite(ratio) else MAX_GRID_STEPS * 10


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise :class:`InvalidInputError` naming ``what`` if the block runs longer than ``seconds``.

    Uses ``SIGALRM``, so it works in the main thread of a process only (elsewhere it is a no-op); it interrupts
    Python code, not one long C call, which is why the size limits above are checked first.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread() or not hasattr(signal,
                                                                                                   "setitimer"):
        yield
        return

    def _alarm(signum, frame):
        raise InvalidInputError(f"{what} took longer than {seconds:g} s; stopped.")

    old = signal.signal(signal.SIGALRM, _alarm)
    previous = signal.setitimer(signal.ITIMER_REAL, seconds)[0]
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if previous:
            signal.setitimer(signal.ITIMER_REAL, previous)

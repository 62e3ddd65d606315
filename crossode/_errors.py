"""Exception types raised by crossode.

Every error a user can trigger derives from :class:`CrossODEError`, so a caller (and the CLI, which turns
them into one line and exit status 2) can catch them all without catching framework tracebacks.
"""

from __future__ import annotations


class CrossODEError(Exception):
    """Base class of every error crossode raises on purpose."""


class InvalidInputError(CrossODEError, ValueError):
    """An argument has the wrong value, shape or type; the message names it and what is allowed."""


class UnsafeExpressionError(InvalidInputError):
    """An expression string used syntax or names outside the whitelist; nothing was executed."""


class UnsupportedError(CrossODEError, NotImplementedError):
    """A (problem, solver, sensitivity, device) combination a backend does not support."""


class BackendUnavailableError(CrossODEError, ImportError):
    """A backend cannot be loaded here (package missing, no Julia, no GPU); the message says why."""


def fmt_choices(choices) -> str:
    """Format allowed values for an error message: ``'a', 'b' or 'c'``."""
    items = [repr(c) for c in choices]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " or " + items[-1]

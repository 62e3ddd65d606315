"""Problem files: a user's own problem as TOML (read with :mod:`tomllib`; expressions parsed without ``eval``).

Schema (see the README for examples)::

    name = "damped-linear"            # optional, default: the file name
    description = "..."               # optional
    states = ["x", "y"]               # symbolic fields: state names ...
    rhs = ["a*x + b*y", "c*x + d*y"]  # ... and one expression per state
    y0 = [1.0, 0.0]
    tspan = [0.0, 2.0]
    saveat = [0.5, 1.0, 2.0]          # optional, default [t1]
    stiff = false                     # optional hint (reference uses Radau when true)

    [params]                          # symbolic fields: name = value, in layout order
    a = -0.5

    [mlp]                             # neural fields instead of states/rhs/params
    widths = [2, 16, 2]
    activation = "tanh"               # tanh, relu, softplus, sigmoid, identity
    seed = 0                          # seeded initialisation (or give weights/biases)
    scale = 1.0
    weights = [[[...]], ...]          # optional: one (out, in) matrix per layer
    biases = [[...], ...]             # optional: one (out,) vector per layer

    [loss]
    kind = "sum_squares"              # or "linear" with weights = [[...], ...] (len(saveat) x n_states)

Unknown keys are errors (typos must not silently change an experiment).
"""

from __future__ import annotations

import os
import tomllib

from ._errors import InvalidInputError
from ._limits import read_bounded
from ._problem import Loss, Problem
from ._rhs import MLPRHS, SymbolicRHS

__all__ = ["load_problem_file", "problem_from_dict", "read_toml"]

_TOP = {"name", "description", "states", "rhs", "y0", "tspan", "saveat", "stiff", "params", "mlp", "loss"}
_MLP = {"widths", "activation", "seed", "scale", "weights", "biases"}
_LOSS = {"kind", "weights"}


def read_toml(path: str | os.PathLike, what: str = "problem file") -> dict:
    """Parse a TOML file of at most :data:`~crossode._limits.MAX_FILE_BYTES` (a regular file: devices, FIFOs and
    directories are refused without blocking); every failure is an :class:`InvalidInputError` naming ``what``."""
    path = os.fspath(path)
    data = read_bounded(path, what)
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidInputError(
            f"{what} {path!r} is not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})."
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{what} {path!r} is not valid TOML: {e}.") from None
    except RecursionError:
        raise InvalidInputError(f"{what} {path!r} is not valid TOML: nested too deeply.") from None


def load_problem_file(path: str | os.PathLike) -> Problem:
    """Read a TOML problem file; raises :class:`InvalidInputError` naming the file and the bad entry."""
    path = os.fspath(path)
    data = read_toml(path)
    default_name = os.path.splitext(os.path.basename(path))[0]
    try:
        return problem_from_dict(data, default_name=default_name)
    except InvalidInputError as e:
        raise type(e)(f"problem file {path!r}: {e}") from None


def _table(data, key, allowed):
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InvalidInputError(f"`{key}` must be a table ([{key}]); got {type(value).__name__}.")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise InvalidInputError(f"unknown keys in [{key}]: {unknown}; allowed: {sorted(allowed)}.")
    return value


def _no_booleans(value, where: str) -> None:
    """TOML ``true``/``false`` are not numbers: refuse them wherever a number is expected (``y0 = [true]``)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"`{where}` must hold numbers; got the boolean {str(value).lower()}.")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_booleans(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_booleans(v, f"{where}[{i}]")


def problem_from_dict(data: dict, *, default_name: str = "problem") -> Problem:
    """Build a :class:`Problem` from the parsed TOML mapping (schema in the module docstring)."""
    if not isinstance(data, dict):
        raise InvalidInputError("a problem definition must be a table.")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise InvalidInputError(f"unknown keys {unknown}; allowed: {sorted(_TOP)}.")
    for key in ("y0", "tspan"):
        if key not in data:
            raise InvalidInputError(f"`{key}` is required.")
    for key in ("y0", "tspan", "saveat", "params", "mlp", "loss"):
        _no_booleans(data.get(key), key)
    loss_t = _table(data, "loss", _LOSS)
    loss = Loss(loss_t.get("kind", "sum_squares"), loss_t.get("weights"))
    if "mlp" in data:
        clash = sorted({"states", "rhs", "params"} & set(data))
        if clash:
            raise InvalidInputError(f"give either [mlp] or states/rhs/params, not both; found {clash} with [mlp].")
        m = _table(data, "mlp", _MLP)
        if "widths" not in m:
            raise InvalidInputError("`mlp.widths` is required.")
        seed = m.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"`mlp.seed` must be an integer; got {seed!r}.")
        rhs = MLPRHS(m["widths"], m.get("activation", "tanh"), weights=m.get("weights"), biases=m.get("biases"),
                     seed=seed, scale=m.get("scale", 1.0))
        params = None
    else:
        for key in ("states", "rhs"):
            if key not in data:
                raise InvalidInputError(f"`{key}` is required (or an [mlp] table for a neural field).")
        params_t = data.get("params", {})
        if not isinstance(params_t, dict):
            raise InvalidInputError(f"`params` must be a table ([params]); got {type(params_t).__name__}.")
        rhs = SymbolicRHS(data["states"], list(params_t), data["rhs"])
        params = params_t
    stiff = data.get("stiff", False)
    if not isinstance(stiff, bool):
        raise InvalidInputError(f"`stiff` must be true or false; got {stiff!r}.")
    name = data.get("name", default_name)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InvalidInputError(f"`description` must be a string; got {description!r}.")
    return Problem(rhs, y0=data["y0"], params=params, tspan=data["tspan"], saveat=data.get("saveat"), loss=loss,
                   name=name, description=description, stiff=stiff)

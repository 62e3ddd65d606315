"""Load the solver named by ``FILE.py:NAME``: import the file (running its code, which is the point) in-process."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

from .._errors import InvalidInputError

__all__ = ["load_solver", "MAX_SOURCE_BYTES"]

MAX_SOURCE_BYTES = 5_000_000
"""Largest solver file accepted (a source file, not data)."""


def load_solver(target: str):
    """``(function, label)`` for ``"path/to/file.py:NAME"`` (``NAME`` may be dotted: ``module_attr.func``).

    The file's directory is put first on ``sys.path`` so it can import its neighbours. Everything that goes wrong
    (malformed target, missing file, an exception while importing, no such name, not callable) raises
    :class:`~crossode.InvalidInputError` with one line."""
    if not isinstance(target, str) or ":" not in target:
        raise InvalidInputError(f"the solver must be given as FILE.py:NAME; got {target!r}.")
    path, _, name = target.rpartition(":")
    if not path or not name or not all(part.isidentifier() for part in name.split(".")):
        raise InvalidInputError(f"the solver must be given as FILE.py:NAME with NAME a Python name; got {target!r}.")
    if not os.path.isfile(path):
        raise InvalidInputError(f"solver file {path!r} does not exist.")
    size = os.path.getsize(path)
    if size > MAX_SOURCE_BYTES:
        raise InvalidInputError(f"solver file {path!r} is {size} bytes; the limit is {MAX_SOURCE_BYTES}.")
    path = os.path.abspath(path)
    module_name = "crossode_check_" + hashlib.sha256(path.encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidInputError(f"cannot import {path!r} as a Python module (is it a .py file?).")
    module = importlib.util.module_from_spec(spec)
    directory = os.path.dirname(path)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(module_name, None)
        raise InvalidInputError(f"importing {os.path.basename(path)} failed: SyntaxError: {e.msg} (line "
                                f"{e.lineno}).") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module may raise anything on import
        sys.modules.pop(module_name, None)
        line = ""
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == path:
                line = f" (line {tb.tb_lineno})"
            tb = tb.tb_next
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        name_ = os.path.basename(path)
        raise InvalidInputError(f"importing {name_} raised {type(e).__name__}: {text}{line}.") from None
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
            raise InvalidInputError(f"{os.path.basename(path)} has no {name!r}; its functions: "
                                    f"{', '.join(public) or '(none)'}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidInputError(f"{os.path.basename(path)}:{name} is a {type(obj).__name__}, not a function.")
    return obj, f"{os.path.basename(path)}:{name}"

"""Safe parsing of vector-field strings into SymPy, without ``eval``.

The string is parsed with :func:`ast.parse` (which only builds a syntax tree and executes nothing) and the tree is
walked against a whitelist: numbers, names that are declared states/parameters/``t``, the constants ``pi`` and
``E``, the arithmetic operators ``+ - * / **`` and unary ``+ -``, and calls of the functions in
:data:`FUNCTIONS` with positional arguments. Anything else (attributes, subscripts, lambdas, comprehensions,
keywords, strings, comparisons, walrus, f-strings, dunder names...) is rejected with
:class:`~crossode.UnsafeExpressionError` before any SymPy object is built.

Size is bounded before work is done (limits in :mod:`crossode._limits`): the string's length, the syntax tree's
nesting, every exact number that constant folding would make (``10**10**10`` is refused from the digit count of
the result, before SymPy computes it), and the nesting of the resulting SymPy tree (deep trees make later Jacobians
and code generation overflow the interpreter stack). Error messages quote at most a short piece of the input.
"""

from __future__ import annotations

import ast
import functools
import keyword
import math

from typing import TYPE_CHECKING

from ._errors import InvalidInputError, UnsafeExpressionError
from ._limits import (MAX_EXPRESSION_CHARS, MAX_EXPRESSION_DEPTH, MAX_INTEGER_DIGITS, MAX_SYNTAX_DEPTH, power_digits,
                      snip)

if TYPE_CHECKING:  # SymPy is imported when an expression is parsed, not by `import crossode`
    import sympy

__all__ = ["FUNCTIONS", "CONSTANTS", "RESERVED", "parse_expression", "check_name"]

_FUNCTION_NAMES = {"sin": "sin", "cos": "cos", "tan": "tan", "asin": "asin", "acos": "acos", "atan": "atan",
                   "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "exp": "exp", "log": "log", "sqrt": "sqrt",
                   "abs": "Abs"}
"""Functions an expression string may call (one positional argument each) -> the SymPy function's name."""

_CONSTANT_NAMES = {"pi": "pi", "E": "E"}
"""Named constants an expression string may use -> the SymPy constant's name."""

RESERVED = frozenset(_FUNCTION_NAMES) | frozenset(_CONSTANT_NAMES) | {"t"}
"""Names that states and parameters may not use (``t`` is the time variable)."""


@functools.cache
def _tables() -> tuple[dict, dict]:
    """(name -> SymPy function, name -> SymPy constant), built on first use."""
    import sympy

    return ({k: getattr(sympy, v) for k, v in _FUNCTION_NAMES.items()},
            {k: getattr(sympy, v) for k, v in _CONSTANT_NAMES.items()})


def __getattr__(name: str):
    """``FUNCTIONS`` (name -> SymPy function) and ``CONSTANTS`` (name -> SymPy constant), built on first access."""
    if name == "FUNCTIONS":
        return _tables()[0]
    if name == "CONSTANTS":
        return _tables()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MAX_LENGTH = MAX_EXPRESSION_CHARS
MAX_DEPTH = MAX_SYNTAX_DEPTH

_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


def check_name(name, what: str) -> str:
    """Validate a state/parameter name: a plain identifier, not a keyword, not reserved, no leading underscore."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
        raise InvalidInputError(
            f"`{what}` names must be plain identifiers (letters, digits, underscores; not starting with an "
            f"underscore or digit, not a Python keyword); got {name!r}."
        )
    if name in RESERVED:
        raise InvalidInputError(f"`{what}` name {name!r} is reserved (reserved: {', '.join(sorted(RESERVED))}).")
    return name


def parse_expression(text: str, symbols: dict[str, sympy.Symbol], *, where: str = "rhs") -> sympy.Expr:
    """Parse ``text`` into a SymPy expression over ``symbols`` (name -> Symbol), executing nothing.

    Raises :class:`UnsafeExpressionError` naming ``where`` and the offending construct.
    """
    import sympy

    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return sympy.Float(text) if isinstance(text, float) else sympy.Integer(text)
    if not isinstance(text, str):
        raise InvalidInputError(f"`{where}` must be a string expression; got {type(text).__name__} {snip(text, 40)}.")
    if len(text) > MAX_LENGTH:
        raise UnsafeExpressionError(f"`{where}` is {len(text)} characters long; at most {MAX_LENGTH} are allowed.")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise UnsafeExpressionError(
            f"`{where}` is not a valid expression: {snip(text)} ({type(e).__name__})."
        ) from None
    try:
        expr = _build(tree.body, symbols, where, text, 0)
    except RecursionError:
        raise UnsafeExpressionError(f"`{where}` is nested too deeply.") from None
    check_depth(expr, where)
    return expr


def check_depth(expr: sympy.Basic, where: str = "rhs") -> None:
    """Refuse a SymPy tree nested more than :data:`~crossode._limits.MAX_EXPRESSION_DEPTH` levels (walked without
    recursion): Jacobians, printers and code generators recurse over the tree and would overflow later."""
    stack = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise UnsafeExpressionError(
                f"`{where}` is nested more than {MAX_EXPRESSION_DEPTH} levels deep (functions inside functions); "
                "simplify it or split it with more states."
            )
        stack.extend((a, depth + 1) for a in node.args)


def _number(where: str, value):
    """Refuse an exact number with more than ``MAX_INTEGER_DIGITS`` digits and a non-finite float."""
    import sympy

    if isinstance(value, sympy.Rational):
        digits = power_digits(value.p, value.q, 1)
        if digits > MAX_INTEGER_DIGITS:
            raise UnsafeExpressionError(
                f"`{where}` makes an exact number of about {digits:.0f} digits; at most {MAX_INTEGER_DIGITS} are "
                "allowed (write large constants as floats, e.g. 1e30)."
            )
    elif value in (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan):
        raise UnsafeExpressionError(f"`{where}` contains a non-finite constant ({value}).")
    return value


def _power(where: str, a, b):
    """``a**b``, refusing a constant power whose exact value would be too large to compute (``10**10**10``)."""
    import sympy

    if isinstance(a, sympy.Rational) and isinstance(b, sympy.Rational):
        digits = power_digits(a.p, a.q, b)
        if digits > MAX_INTEGER_DIGITS:
            raise UnsafeExpressionError(
                f"`{where}` raises {snip(str(a), 30)} to the power {snip(str(b), 30)}: an exact number of about "
                f"{digits:.3g} digits; at most {MAX_INTEGER_DIGITS} are allowed."
            )
    return _number(where, a**b)


def _reject(where: str, text: str, what: str) -> UnsafeExpressionError:
    allowed = (
        "numbers, declared states/parameters, t, pi, E, + - * / **, and calls of "
        + ", ".join(sorted(_FUNCTION_NAMES))
    )
    return UnsafeExpressionError(f"`{where}` uses {what}, which is not allowed in {snip(text)}. Allowed: {allowed}.")


def _build(node: ast.AST, symbols: dict, where: str, text: str, depth: int) -> sympy.Expr:
    import sympy

    functions, constants = _tables()
    if depth > MAX_DEPTH:
        raise UnsafeExpressionError(f"`{where}` is nested more than {MAX_DEPTH} levels deep.")
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _reject(where, text, f"the literal {snip(v, 40)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise UnsafeExpressionError(f"`{where}` contains a number that overflows float64 in {snip(text)}.")
        return _number(where, sympy.Integer(v) if isinstance(v, int) else sympy.Float(v))
    if isinstance(node, ast.Name):
        if node.id in symbols:
            return symbols[node.id]
        if node.id in constants:
            return constants[node.id]
        if node.id in functions:
            raise _reject(where, text, f"the function name {node.id!r} without a call")
        raise UnsafeExpressionError(
            f"`{where}` uses the undeclared name {snip(node.id, 40)} in {snip(text)}; declared names: "
            f"{', '.join(sorted(symbols)) or '(none)'}."
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _build(node.left, symbols, where, text, depth + 1)
        b = _build(node.right, symbols, where, text, depth + 1)
        op = type(node.op)
        if op is ast.Pow:
            return _power(where, a, b)
        if op is ast.Add:
            return _number(where, a + b)
        if op is ast.Sub:
            return _number(where, a - b)
        if op is ast.Mult:
            return _number(where, a * b)
        return _number(where, a / b)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a = _build(node.operand, symbols, where, text, depth + 1)
        return -a if isinstance(node.op, ast.USub) else a
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in functions:
            what = (f"a call of {snip(node.func.id, 40)}" if isinstance(node.func, ast.Name)
                    else "a call of a computed function")
            raise _reject(where, text, what)
        if node.keywords or len(node.args) != 1 or any(isinstance(a, ast.Starred) for a in node.args):
            raise _reject(where, text, f"{node.func.id}() with other than one positional argument")
        return functions[node.func.id](_build(node.args[0], symbols, where, text, depth + 1))
    raise _reject(where, text, f"the construct {type(node).__name__}")

"""Safe parsing of vector-field strings into SymPy, without ``eval``.

The string is parsed with :func:`ast.parse` (which only builds a syntax tree and executes nothing) and the tree is
walked against a whitelist: numbers, names that are declared states/parameters/``t``, the constants ``pi`` and
``E``, the arithmetic operators ``+ - * / **`` and unary ``+ -``, and calls of the functions in
:data:`FUNCTIONS` with positional arguments. Anything else (attributes, subscripts, lambdas, comprehensions,
keywords, strings, comparisons, walrus, f-strings, dunder names...) is rejected with
:class:`~crossode.UnsafeExpressionError` before any SymPy object is built.
"""

from __future__ import annotations

import ast
import keyword

import sympy

from ._errors import InvalidInputError, UnsafeExpressionError

__all__ = ["FUNCTIONS", "CONSTANTS", "RESERVED", "parse_expression", "check_name"]

FUNCTIONS: dict[str, object] = {
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "exp": sympy.exp,
    "log": sympy.log,
    "sqrt": sympy.sqrt,
    "abs": sympy.Abs,
}
"""Functions an expression string may call (one positional argument each)."""

CONSTANTS: dict[str, sympy.Expr] = {"pi": sympy.pi, "E": sympy.E}
"""Named constants an expression string may use."""

RESERVED = frozenset(FUNCTIONS) | frozenset(CONSTANTS) | {"t"}
"""Names that states and parameters may not use (``t`` is the time variable)."""

MAX_LENGTH = 20_000
MAX_DEPTH = 200

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
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return sympy.Float(text) if isinstance(text, float) else sympy.Integer(text)
    if not isinstance(text, str):
        raise InvalidInputError(f"`{where}` must be a string expression; got {type(text).__name__} {text!r}.")
    if len(text) > MAX_LENGTH:
        raise UnsafeExpressionError(f"`{where}` is {len(text)} characters long; at most {MAX_LENGTH} are allowed.")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise UnsafeExpressionError(f"`{where}` is not a valid expression: {text!r} ({type(e).__name__}).") from None
    try:
        return _build(tree.body, symbols, where, text, 0)
    except RecursionError:
        raise UnsafeExpressionError(f"`{where}` is nested too deeply.") from None


def _reject(where: str, text: str, what: str) -> UnsafeExpressionError:
    allowed = (
        "numbers, declared states/parameters, t, pi, E, + - * / **, and calls of "
        + ", ".join(sorted(FUNCTIONS))
    )
    return UnsafeExpressionError(f"`{where}` uses {what}, which is not allowed in {text!r}. Allowed: {allowed}.")


def _build(node: ast.AST, symbols: dict, where: str, text: str, depth: int) -> sympy.Expr:
    if depth > MAX_DEPTH:
        raise UnsafeExpressionError(f"`{where}` is nested more than {MAX_DEPTH} levels deep.")
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _reject(where, text, f"the literal {v!r}")
        return sympy.Integer(v) if isinstance(v, int) else sympy.Float(v)
    if isinstance(node, ast.Name):
        if node.id in symbols:
            return symbols[node.id]
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        if node.id in FUNCTIONS:
            raise _reject(where, text, f"the function name {node.id!r} without a call")
        raise UnsafeExpressionError(
            f"`{where}` uses the undeclared name {node.id!r} in {text!r}; declared names: "
            f"{', '.join(sorted(symbols)) or '(none)'}."
        )
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _build(node.left, symbols, where, text, depth + 1)
        b = _build(node.right, symbols, where, text, depth + 1)
        op = type(node.op)
        if op is ast.Add:
            return a + b
        if op is ast.Sub:
            return a - b
        if op is ast.Mult:
            return a * b
        if op is ast.Div:
            return a / b
        return a**b
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        a = _build(node.operand, symbols, where, text, depth + 1)
        return -a if isinstance(node.op, ast.USub) else a
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            what = f"a call of {node.func.id!r}" if isinstance(node.func, ast.Name) else "a call of a computed function"
            raise _reject(where, text, what)
        if node.keywords or len(node.args) != 1 or any(isinstance(a, ast.Starred) for a in node.args):
            raise _reject(where, text, f"{node.func.id}() with other than one positional argument")
        return FUNCTIONS[node.func.id](_build(node.args[0], symbols, where, text, depth + 1))
    raise _reject(where, text, f"the construct {type(node).__name__}")

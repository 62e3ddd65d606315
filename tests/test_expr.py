"""The expression parser accepts arithmetic over declared names and rejects everything else without executing it."""

import pytest
import sympy

from crossode import InvalidInputError, SymbolicRHS, UnsafeExpressionError
from crossode._expr import parse_expression

X, Y, A = sympy.symbols("x y a")
TABLE = {"x": X, "y": Y, "a": A}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a*x - x*y", A * X - X * Y),
        ("-x**2 + 3.5", -(X**2) + 3.5),
        ("sin(x) + exp(-y)/2", sympy.sin(X) + sympy.exp(-Y) / 2),
        ("sqrt(abs(x))*pi", sympy.sqrt(sympy.Abs(X)) * sympy.pi),
        ("+x", X),
        ("tanh(a*x)", sympy.tanh(A * X)),
    ],
)
def test_valid_expressions(text, expected):
    assert sympy.simplify(parse_expression(text, TABLE) - expected) == 0


HOSTILE = [
    "__import__('os').system('touch PWNED')",
    "().__class__.__bases__[0].__subclasses__()",
    "open('/etc/passwd').read()",
    "eval('1+1')",
    "exec('x=1')",
    "lambda: 1",
    "x if y else a",
    "[x for x in (1, 2)]",
    "x.real",
    "x[0]",
    "'text'",
    "f'{x}'",
    "(z := 3)",
    "x < y",
    "x and y",
    "sin(x, y)",
    "sin(x=y)",
    "sin(*x)",
    "getattr(x, 'real')",
    "unknown_name + x",
    "sin",
    "x; y",
    "import os",
    "True",
    "x @ y",
    "x // y",
    "x % y",
    "~x",
    "(" * 300 + "x" + ")" * 300,
    "x+" * 30000 + "x",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_expressions_rejected(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnsafeExpressionError):
        parse_expression(text, TABLE)
    assert not (tmp_path / "PWNED").exists()


def test_error_names_the_argument():
    with pytest.raises(UnsafeExpressionError, match=r"rhs\[1\]"):
        SymbolicRHS(["x", "y"], ["a"], ["a*x", "open('f')"])


@pytest.mark.parametrize("bad", ["t", "sin", "pi", "_x", "1x", "lambda", "x-y", "", 3])
def test_bad_names_rejected(bad):
    with pytest.raises(InvalidInputError):
        SymbolicRHS([bad], [], ["1"])


def test_duplicate_and_clashing_names():
    with pytest.raises(InvalidInputError, match="unique"):
        SymbolicRHS(["x", "x"], [], ["1", "1"])
    with pytest.raises(InvalidInputError, match="both as state and parameter"):
        SymbolicRHS(["x"], ["x"], ["x"])

"""Static checks of the Julia backend's Julia code, without Julia.

- every ``.jl`` file under ``julia/`` and the generated source of every zoo problem parse with tree-sitter-julia;
- every name taken from OrdinaryDiffEq (and subpackages), SciMLSensitivity, SciMLBase, Zygote, ForwardDiff,
  ReverseDiff and Optimisers exists in the name lists of ``tests/data/julia-api`` (exported or public);
- ``sensealg`` constructor keywords, ``sol.stats.<f>``, ``ReturnCode.<v>`` and solver names are valid, and every
  solver's OrdinaryDiffEq v7 subpackage is imported;
- the uuids in ``crossode/juliapkg.json`` and ``julia/Project.toml`` match the lists, and both declare the same deps;
- the Python mapping tables (``_marshal``) agree with the lists and with ``CrossODE.jl``.
"""

from __future__ import annotations

import json
import re
import tomllib
import uuid
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import sympy

tree_sitter = pytest.importorskip("tree_sitter")
tree_sitter_julia = pytest.importorskip("tree_sitter_julia")

from crossode import CNFRHS, MLPRHS, SymbolicRHS  # noqa: E402
from crossode.backends.julia import _field, _marshal  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
JULIA_DIR = REPO / "julia"
SRC = JULIA_DIR / "src" / "CrossODE.jl"
API = Path(__file__).resolve().parents[2] / "data" / "julia-api"

LISTED = (
    "SciMLSensitivity", "SciMLBase", "Zygote", "ForwardDiff", "ReverseDiff", "OrdinaryDiffEq",
    "OrdinaryDiffEqCore", "OrdinaryDiffEqDefault", "OrdinaryDiffEqTsit5", "OrdinaryDiffEqVerner",
    "OrdinaryDiffEqLowOrderRK", "OrdinaryDiffEqHighOrderRK", "OrdinaryDiffEqRosenbrock", "OrdinaryDiffEqSDIRK",
    "OrdinaryDiffEqBDF", "Optimisers",
)
"""Packages with name lists in tests/data/julia-api."""

UNLISTED_UUIDS = {
    "ChainRulesCore": "d360d2e6-b24c-11e9-a2a3-2a2ae2dbcce4",
    "ADTypes": "47edcb42-4c32-4615-8424-f2b9edc5f35b",  # OrdinaryDiffEqSDIRK's and SciMLSensitivity's Project.toml
    "NaNMath": "77ba4419-2d1f-58cd-9bb1-8ffee604a2e3",  # NaNMath.jl 1.1.3 Project.toml
}
"""Direct dependencies without name lists (uuid from the package's Project.toml)."""

UNLISTED_NAMES = {
    # ADTypes' exports that the listed packages re-export (OrdinaryDiffEq.txt: `using OrdinaryDiffEq` exports them)
    "ADTypes": {n for n in ("AutoFiniteDiff", "AutoForwardDiff")},
    "ChainRulesCore": {"ignore_derivatives"},
}
"""Names CrossODE.jl may take from the unlisted packages (checked for ADTypes against OrdinaryDiffEq's exports)."""

NANMATH_FUNCTIONS = frozenset({
    "sin", "cos", "tan", "asin", "acos", "acosh", "atanh", "log", "log2", "log10", "log1p", "lgamma", "sqrt", "pow",
    "max", "min",
})
"""Scalar functions of NaNMath.jl 1.1.3 (`src/NaNMath.jl`), which the generated code may call as ``NaNMath.f``."""

DOCUMENTED_INTERNAL = {
    ("SciMLSensitivity", "inplace_vjp"):
        "resolving vjp='auto' once exactly as SciMLSensitivity does on every call (src/concrete_solve.jl, "
        "called from src/sensitivity_interface.jl::adjoint_sensitivities)",
    ("ForwardDiff", "gradient"): "ForwardDiff's documented API; ForwardDiff declares nothing public",
    ("ForwardDiff", "jacobian"): "ForwardDiff's documented API",
    ("ForwardDiff", "Dual"): "ForwardDiff's documented API",
}
"""Qualified names that are neither exported nor declared public but are used on purpose (they must still exist)."""

STDLIB_UUIDS = {"Test": "8dfed614-e22c-5e08-85e1-65c5234f0b40", "LinearAlgebra": "37e2e46d-f89d-539d-b4ee-838fcccc9c8e"}


# ------------------------------------------------------------------------------------------ list loading


def _lines(name: str) -> list[str]:
    return (API / name).read_text(encoding="utf-8").splitlines()


@cache
def exported(pkg: str) -> frozenset[str]:
    return frozenset(ln.strip() for ln in _lines(f"{pkg}.txt") if ln.strip() and not ln.startswith("#"))


@cache
def header(pkg: str) -> dict[str, str]:
    out = {}
    for ln in _lines(f"{pkg}.txt"):
        m = re.match(r"#\s*(\w+):\s*(.*)$", ln)
        if m:
            out.setdefault(m.group(1), m.group(2).strip())
    return out


@cache
def qualified(pkg: str) -> dict[str, frozenset[str]]:
    out = {}
    for ln in _lines(f"{pkg}.qualified.txt"):
        if ln.startswith("#") or not ln.strip():
            continue
        name, _, kinds = ln.partition("\t")
        out[name] = frozenset(kinds.split(","))
    return out


@cache
def sensealgs() -> dict[str, tuple[str, frozenset[str]]]:
    out = {}
    for ln in _lines("sensealgs.txt"):
        if ln.startswith("#") or not ln.strip():
            continue
        name, kind, _exp, kws, _ctor = ln.split("\t")
        out[name] = (kind, frozenset() if kws == "-" else frozenset(kws.split(",")))
    return out


@cache
def ode_algorithms() -> tuple[dict[str, dict], dict[str, str]]:
    algs, uuids = {}, {}
    for ln in _lines("ode_algorithms.txt"):
        m = re.match(r"#\s+(OrdinaryDiffEq\w+)\t([0-9a-f-]{36})\t", ln)
        if m:
            uuids[m.group(1)] = m.group(2)
            continue
        if ln.startswith("#") or not ln.strip():
            continue
        name, sub, version, kind, v7, v6 = ln.split("\t")
        algs[name] = {"subpackage": sub, "version": version, "kind": kind, "v7": v7 == "yes"}
    return algs, uuids


@cache
def sections() -> dict[str, dict[str, str]]:
    out, current = {}, None
    for ln in _lines("stats_and_retcodes.txt"):
        m = re.match(r"\[(\w+)\]", ln)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        if current is None or ln.startswith("#") or not ln.strip():
            continue
        name, _, rest = ln.partition("\t")
        current[name] = rest
    return out


def known_uuid(pkg: str) -> str | None:
    if pkg in LISTED:
        return header(pkg)["uuid"]
    return ode_algorithms()[1].get(pkg) or UNLISTED_UUIDS.get(pkg) or STDLIB_UUIDS.get(pkg)


# ------------------------------------------------------------------------------------------ parsing


@cache
def parser():
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_julia.language()))


def parse(source: str):
    return parser().parse(source.encode("utf-8"))


def syntax_errors(source: str) -> list[str]:
    errs = []

    def walk(n):
        if n.type == "ERROR" or n.is_missing:
            row, col = n.start_point
            errs.append(f"line {row + 1}, column {col + 1}: {n.type} near {n.text[:60]!r}")
        for c in n.children:
            walk(c)

    walk(parse(source).root_node)
    return errs


def nodes(root, type_: str):
    stack = [root]
    while stack:
        n = stack.pop()
        if n.type == type_:
            yield n
        stack.extend(reversed(n.children))


def text(n) -> str:
    return n.text.decode("utf-8")


def imports(source: str) -> dict[str, set[str] | None]:
    """package -> selected names (``None`` for a plain ``using X``/``import X``)."""
    out: dict[str, set[str] | None] = {}
    root = parse(source).root_node
    for stmt in [*nodes(root, "using_statement"), *nodes(root, "import_statement")]:
        for child in stmt.children:
            if child.type == "selected_import":
                ids = [c for c in child.children if c.type == "identifier"]
                pkg, names = text(ids[0]), {text(c) for c in ids[1:]}
                prev = out.get(pkg, set())
                out[pkg] = names | (prev or set())
            elif child.type == "identifier":
                out.setdefault(text(child), None)
    return out


def field_chains(source: str) -> list[list[str]]:
    """Every maximal ``a.b.c`` chain of identifiers (outermost field expressions only)."""
    chains = []
    root = parse(source).root_node
    for fe in nodes(root, "field_expression"):
        if fe.parent is not None and fe.parent.type == "field_expression" and fe.parent.children[0] == fe:
            continue  # inner part of a longer chain
        parts, n = [], fe
        while n.type == "field_expression":
            parts.append(text(n.children[-1]))
            n = n.children[0]
        if n.type != "identifier":
            continue
        parts.append(text(n))
        chains.append(parts[::-1])
    return chains


def calls(source: str) -> list[tuple[str, list[str]]]:
    """``(callee identifier, keyword argument names)`` of every call with a plain identifier callee."""
    out = []
    for c in nodes(parse(source).root_node, "call_expression"):
        callee = c.children[0]
        if callee.type != "identifier":
            continue
        kws = []
        for arg in c.children[1].children if len(c.children) > 1 else []:
            if arg.type == "named_argument":
                kws.append(text(arg.children[0]))
        out.append((text(callee), kws))
    return out


def bare_identifiers(source: str) -> set[str]:
    """Identifiers that are not a field name, a keyword-argument name or part of an import statement."""
    out = set()

    def walk(n, skip=False):
        if n.type in ("using_statement", "import_statement"):
            return
        if n.type == "identifier" and not skip:
            out.add(text(n))
        for i, c in enumerate(n.children):
            field_name = n.type == "field_expression" and i == len(n.children) - 1
            kw_name = n.type == "named_argument" and i == 0
            walk(c, field_name or kw_name)

    walk(parse(source).root_node)
    return out


def julia_files() -> list[Path]:
    return sorted(JULIA_DIR.rglob("*.jl"))


def zoo_problems():
    problems = pytest.importorskip("crossode.problems")
    return [(name, problems.get_problem(name)) for name in problems.PROBLEMS]


def extra_fields():
    x, y = sympy.symbols("x y", real=True)
    every_function = SymbolicRHS(
        ["end", "u"], ["function", "p", "du"],
        ["sin(end) + cos(u) + tan(p) + asin(end/10) + acos(u/10) + atan(du) + sinh(p) + cosh(end) + tanh(u)",
         "exp(-t) + log(1 + p**2) + sqrt(abs(du)) + pi*E*function + end**(3/2) - 1/(u*p) + 2**(-t)"],
    )
    constant = SymbolicRHS(["a", "b"], ["k"], ["0", "-k*b + 1/3"])
    mlps = [MLPRHS([2, 3, 2], activation=a, seed=1) for a in ("tanh", "relu", "softplus", "sigmoid", "identity")]
    mlps += [MLPRHS([2, 3, 2], time_input=True, seed=1), MLPRHS([2, 3, 2], features="cube", seed=1),
             MLPRHS([3, 3], time_input=True, features="cube", seed=1)]
    cnfs = [CNFRHS([2, 3, 4, 2], activation=a, seed=1) for a in ("tanh", "softplus", "sigmoid", "identity")]
    cnfs += [CNFRHS([3, 3], time_input=False, seed=1), CNFRHS([2, 2], activation="identity", seed=1)]
    return [("every_function", every_function), ("constant_component", constant)] + [
        (f"mlp_{m.activation}{'_time' if m.time_input else ''}{'_cube' if m.features == 'cube' else ''}", m)
        for m in mlps
    ] + [("mlp_deep", MLPRHS([3, 4, 5, 3], seed=2))] + [
        (f"cnf_{c.activation}_{'-'.join(map(str, c.widths))}{'_time' if c.time_input else ''}", c) for c in cnfs]


# ------------------------------------------------------------------------------------------ syntax


@pytest.mark.parametrize("path", julia_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_julia_files_parse(path):
    assert not syntax_errors(path.read_text(encoding="utf-8")), syntax_errors(path.read_text(encoding="utf-8"))


def test_julia_tree_has_the_expected_files():
    assert {p.relative_to(JULIA_DIR).as_posix() for p in julia_files()} >= {"src/CrossODE.jl", "test/runtests.jl"}
    assert (JULIA_DIR / "Project.toml").is_file()


GENERATED_NAMES = {
    "u", "p", "t", "du", "rhs_oop", "rhs_iip!", "oop", "iip", "Float32", "NaNMath", "zero", "one", "eltype",
    "transpose", "reshape", "max", "abs", "log1p", "exp", "inv", "tanh", "atan", "sinh", "cosh", "nothing",
    "vec", "reduce", "vcat",
    # locals of batched, time-input and cube-feature fields
    "U", "X", "R1", "w1t", "one_trajectory", "v", "b", "o",
    # locals of CNF fields: derivatives s<l>, tangents v<l>_<j>, the trace
    "tr",
}
"""Identifiers generated code may use (Base functions that never throw a DomainError, NaNMath, and locals)."""


def _check_generated(src: str):
    assert not syntax_errors(src), (syntax_errors(src), src)
    assert "rhs_oop" in src and "rhs_iip!" in src and "(oop = rhs_oop, iip = rhs_iip!)" in src
    names = bare_identifiers(src)
    unknown = {n for n in names if n not in GENERATED_NAMES and not re.fullmatch(r"[Wbzhs]\d+|v\d+_\d+", n)}
    assert not unknown, (unknown, src)
    used = {c[1] for c in field_chains(src) if c[0] == "NaNMath"}
    assert used <= NANMATH_FUNCTIONS, used
    if "symbolic" in src.splitlines()[0]:  # scalar code: no broadcasting operators
        assert " .* " not in src and " ./ " not in src and " .^ " not in src, src


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_source_of_every_zoo_problem_parses(dtype):
    for name, problem in zoo_problems():
        _check_generated(_field.julia_source(problem.rhs, dtype))
        _check_generated(_field.julia_source(problem.rhs, dtype, batch=problem.batch or 3))  # batched code too


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,rhs", extra_fields(), ids=[n for n, _ in extra_fields()])
def test_generated_source_of_extra_fields_parses(name, rhs, dtype):
    src = _field.julia_source(rhs, dtype)
    _check_generated(src)
    if dtype == "float32" and isinstance(rhs, SymbolicRHS):
        floats = re.findall(r"(?<![\w.])\d+\.\d+(?:e[-+]?\d+)?", src.split("let", 1)[1])
        assert all(f"Float32({f})" in src for f in floats), src


def test_generated_source_never_contains_user_names():
    rhs = SymbolicRHS(["begin", "quote"], ["module"], ["module*begin", "-quote"])
    body = _field.julia_source(rhs).split("\nlet\n", 1)[1]
    assert "begin" not in body and "quote" not in body and "module" not in body


# ------------------------------------------------------------------------------------------ names


def src_text() -> str:
    return SRC.read_text(encoding="utf-8")


def all_sources() -> list[tuple[str, str]]:
    return [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8")) for p in julia_files()]


def test_src_imports_only_known_packages_with_explicit_names():
    imp = imports(src_text())
    for pkg, names in imp.items():
        assert pkg in LISTED or pkg in UNLISTED_UUIDS, f"CrossODE.jl uses unknown package {pkg}"
        if pkg in LISTED and names is None:
            # `import X` (qualified use only) is fine; `using X` would bring every export into scope unchecked
            assert re.search(rf"^\s*import {pkg}\s*$", src_text(), re.M), f"use `using {pkg}: names` in CrossODE.jl"


def name_problems(where: str, source: str) -> list[str]:
    """Every problem the list-based checks find in one Julia source (empty = clean)."""
    errs = []
    imp = imports(source)
    algs, _ = ode_algorithms()
    sa = sensealgs()
    destats, retcodes = set(sections()["DEStats"]), set(sections()["ReturnCode"])
    # `using X: a, b` and `X.a`: a must be exported or public
    for pkg, names in imp.items():
        if pkg in UNLISTED_NAMES:
            bad = sorted((names or set()) - UNLISTED_NAMES[pkg] - {pkg})
            if bad:
                errs.append(f"{where}: `using {pkg}: {', '.join(bad)}`: not among the names checked for {pkg}")
        if pkg not in LISTED:
            continue
        q = qualified(pkg)
        for name in sorted(names or ()):
            if name == pkg:
                continue
            if name not in q:
                errs.append(f"{where}: `using {pkg}: {name}`: {pkg} defines no {name}")
            elif not q[name] & {"exported", "public"}:
                errs.append(f"{where}: {pkg}.{name} is neither exported nor public")
    for chain in field_chains(source):
        root = chain[0]
        if root in LISTED and root in imp and len(chain) > 1:
            q = qualified(root)
            if chain[1] not in q:
                errs.append(f"{where}: {'.'.join(chain)}: {root} has no {chain[1]}")
            elif not q[chain[1]] & {"exported", "public"} and (root, chain[1]) not in DOCUMENTED_INTERNAL:
                errs.append(f"{where}: {root}.{chain[1]} is neither exported nor public")
        if root == "NaNMath" and len(chain) > 1 and chain[1] not in NANMATH_FUNCTIONS:
            errs.append(f"{where}: {'.'.join(chain)}: NaNMath has no {chain[1]}")
        for i, part in enumerate(chain[:-1]):
            if part == "stats" and i > 0 and chain[i + 1] not in destats:
                errs.append(f"{where}: {'.'.join(chain)}: SciMLBase.DEStats has no field {chain[i + 1]}")
            if part == "ReturnCode" and chain[i + 1] not in retcodes:
                errs.append(f"{where}: {'.'.join(chain)}: unknown ReturnCode")
    # bare names exported by a listed package must be imported (else UndefVarError)
    union = set().union(*(exported(p) for p in LISTED))
    imported = set(imp) | {n for names in imp.values() if names for n in names}
    for pkg, names in imp.items():
        if names is None and pkg in LISTED and not re.search(rf"^\s*import {pkg}\s*$", source, re.M):
            imported |= exported(pkg)  # `using X` brings all of X's exports
    missing = (bare_identifiers(source) & union) - imported
    if missing:
        errs.append(f"{where}: names used without importing them: {sorted(missing)}")
    # sensealg keywords; solvers need their v7 subpackage
    for callee, kws in calls(source):
        if callee in sa:
            bad = set(kws) - sa[callee][1]
            if bad:
                errs.append(f"{where}: {callee} has no keyword(s) {sorted(bad)}; allowed: {sorted(sa[callee][1])}")
        if callee in algs:
            info = algs[callee]
            sub = info["subpackage"]
            ok = callee in (imp.get(sub) or set()) or (sub in imp and imp[sub] is None)
            umbrella = imp.get("OrdinaryDiffEq", ()) if "OrdinaryDiffEq" in imp else ()
            ok = ok or (info["v7"] and callee in (umbrella if umbrella is not None else exported("OrdinaryDiffEq")))
            if not ok:
                errs.append(f"{where}: {callee}() needs `using {sub}: {callee}` (OrdinaryDiffEq v7)")
    return errs


@pytest.mark.parametrize("where,source", all_sources(), ids=[w for w, _ in all_sources()])
def test_julia_names_exist_in_the_api_lists(where, source):
    assert name_problems(where, source) == []


BAD_SNIPPET = """
module Bad
using SciMLBase: SciMLBase, ReturnCode, solve, not_a_name
using OrdinaryDiffEqTsit5: Tsit5
using SciMLSensitivity: BacksolveAdjoint
import Zygote
a = BacksolveAdjoint(autojacvec = nothing, chekpointing = false)
b = sol.stats.nfe
c = ReturnCode.MaxIter
d = SciMLBase.not_public_thing
e = DP8()
f = Zygote.pullbak
g = GaussAdjoint()
end
"""


def test_name_checker_catches_mistakes():
    errs = "\n".join(name_problems("bad", BAD_SNIPPET))
    for needle in ("not_a_name", "chekpointing", "nfe", "MaxIter", "not_public_thing", "DP8()", "pullbak",
                   "GaussAdjoint"):
        assert needle in errs, (needle, errs)


def test_src_imports_sensealgs_and_solvers_explicitly():
    imp = imports(src_text())
    assert imp["SciMLSensitivity"] and imp["OrdinaryDiffEqSDIRK"]


def test_src_constructs_every_sensealg_the_python_side_names():
    src = src_text()
    for kind in set(_marshal.SENSEALG_KINDS.values()):
        assert re.search(rf'kind == "{kind}" &&', src), f"make_sensealg does not handle {kind}"
        assert kind in sensealgs() and sensealgs()[kind][0] in ("adjoint", "forward")
    for vjp, expr in _marshal.VJP_JULIA.items():
        assert re.search(rf'name == "{vjp}" && return {re.escape(expr)}', src), f"make_vjp does not map {vjp}"
        if expr != "nothing":
            assert sensealgs()[expr.split("(")[0]][0] == "vjp"


def test_src_constructs_every_solver_the_python_side_names():
    algs, _ = ode_algorithms()
    src = src_text()
    for name in set(_marshal.SOLVER_ALGS.values()):
        assert name in algs, f"{name} is not an OrdinaryDiffEq solver"
        assert algs[name]["subpackage"] == _marshal.ALG_SUBPACKAGE[name]
        assert re.search(rf'name == "{name}" && return .*\b{name}\(', src), f"make_alg does not handle {name}"
        assert name in (imports(src).get(_marshal.ALG_SUBPACKAGE[name]) or set())


def test_status_mapping_agrees_between_julia_and_python():
    src = src_text()
    body = src[src.index("function status_of") :].split("\nend\n", 1)[0]
    julia_map = dict(re.findall(r'retcode == ReturnCode\.(\w+) && return "(\w+)"', body))
    assert julia_map == _marshal.RETCODE_STATUS
    retcodes = sections()["ReturnCode"]
    for code in julia_map:
        assert retcodes[code] == "false", f"{code} is a successful return code"
    assert "SciMLBase.successful_retcode(retcode)" in body


def test_result_fields_agree_between_julia_and_python():
    src = src_text()
    grad = src[src.index("function _gradient(") :].split("\nend\n", 1)[0]
    solve = src[src.index("function _solve(") :].split("\nend\n", 1)[0]
    for field in _marshal.GRADIENT_FIELDS:
        assert re.search(rf"\b{field}\b", grad.split("return (;", 1)[1]), f"gradient_cell does not return {field}"
    for field in _marshal.SOLVE_FIELDS:
        assert re.search(rf"\b{field}\b", solve.split("return (;", 1)[1]), f"solve_cell does not return {field}"


def test_build_keywords_agree_between_julia_and_python():
    src = src_text()
    sig = src[src.index("function build(;") :].split(")\n", 1)[0]
    params = sig.split(";", 1)[1].split(",")  # keyword defaults contain no commas
    julia_kws = {re.match(r"\s*([A-Za-z_]\w*)", piece).group(1) for piece in params if piece.strip()}
    dummy = dict.fromkeys(_marshal.JuliaCall.__dataclass_fields__)
    dummy["sensealg"] = _marshal.SensealgSpec("GaussAdjoint")
    kwargs = set(_marshal.JuliaCall(**dummy).build_kwargs())
    assert kwargs == julia_kws, (kwargs ^ julia_kws)


# ------------------------------------------------------------------------------------------ package files


def project() -> dict:
    return tomllib.loads((JULIA_DIR / "Project.toml").read_text(encoding="utf-8"))


def juliapkg_json() -> dict:
    return json.loads((REPO / "crossode" / "juliapkg.json").read_text(encoding="utf-8"))


def test_project_toml():
    proj = project()
    assert proj["name"] == "CrossODE"
    uuid.UUID(proj["uuid"])
    deps = proj["deps"]
    for pkg, u in {**deps, **proj.get("extras", {})}.items():
        assert known_uuid(pkg) == u, f"Project.toml: {pkg} uuid {u} != {known_uuid(pkg)}"
    for pkg in deps:
        assert pkg in proj["compat"], f"Project.toml: no [compat] entry for {pkg}"
    assert set(proj["targets"]["test"]) <= set(proj.get("extras", {}))


def test_juliapkg_json():
    data = juliapkg_json()
    for pkg, spec in data["packages"].items():
        assert known_uuid(pkg) == spec["uuid"], f"juliapkg.json: {pkg} uuid {spec['uuid']} != {known_uuid(pkg)}"
        assert spec.get("version"), f"juliapkg.json: {pkg} has no version bound"


def test_deps_agree_and_cover_every_import():
    proj, data = project(), juliapkg_json()
    assert set(proj["deps"]) == set(data["packages"])
    for pkg in proj["deps"]:
        assert proj["compat"][pkg] == data["packages"][pkg]["version"]
    assert set(imports(src_text())) <= set(proj["deps"]), "a package used by CrossODE.jl is not a dependency"
    assert set(proj["deps"]) <= set(imports(src_text())), "a dependency is never used by CrossODE.jl"


def test_julia_compat_excludes_112():
    from juliapkg.compat import Compat, Version

    proj, data = project(), juliapkg_json()
    assert proj["compat"]["julia"] == data["julia"]
    compat = Compat.parse(data["julia"])
    assert Version.parse("1.10.3") in compat and Version.parse("1.11.7") in compat
    assert Version.parse("1.12.0") not in compat, "Zygote segfaults on Julia 1.12 (SciMLSensitivity #1325)"


def test_api_lists_are_complete():
    for pkg in LISTED:
        assert (API / f"{pkg}.txt").is_file() and (API / f"{pkg}.qualified.txt").is_file(), pkg
        assert re.fullmatch(r"[0-9a-f-]{36}", header(pkg)["uuid"])
    for name in ("sensealgs.txt", "ode_algorithms.txt", "stats_and_retcodes.txt", "README.md"):
        assert (API / name).is_file(), name


def test_numpy_emulation_helper_matches_layout_doc():
    rhs = MLPRHS([2, 3, 2], seed=3)
    p = rhs.initial_params()
    for (w, b), (w_ref, b_ref) in zip(_field.numpy_mlp_from_layout(rhs, p), rhs.unflatten(p)):
        np.testing.assert_array_equal(w, w_ref)
        np.testing.assert_array_equal(b, b_ref)


def test_syntax_checker_catches_errors():
    assert syntax_errors("function f(x)\n    x +\nend\n")
    assert syntax_errors("let\n    f(u) = [u[1], u[2]\nend\n")
    assert not syntax_errors("f(x) = x ^ 2\n")


# ------------------------------------------------------------------------------------------ issue 12 fixes


def _function_body(name: str) -> str:
    src = src_text()
    return src[src.index(f"function {name}(") :].split("\nend\n", 1)[0]


def test_solve_keywords_agree_between_julia_and_python():
    """Every keyword `_solve_kwargs` can pass is one `JuliaCall.solve_keywords` knows (and the reverse)."""
    body = _function_body("_solve_kwargs")
    julia = set(re.findall(r"[(;,]\s*(\w+) = (?!=)", body)) - {"kw"}  # NamedTuple entries (not `(kw = merge(...))`)
    assert julia == set(_marshal.SOLVE_KEYWORDS), julia ^ set(_marshal.SOLVE_KEYWORDS)
    assert "dt0" not in re.findall(r"\(; (\w+) =", body)  # the first adaptive step is a problem keyword
    assemble = _function_body("_assemble")
    assert "pkw = o.dt0 === nothing ? (;) : (; dt = T(o.dt0))" in assemble
    assert re.search(r"ODEProblem\{o\.iip, SciMLBase\.FullSpecialize\}\(f, u0, \(T\(o\.t0\), T\(o\.t1\)\), p; pkw\.\.\.\)",
                     assemble)


# OrdinaryDiffEqCore 4.15 src/integrators/controllers.jl: the methods a new controller implements (IController's)
CONTROLLER_METHODS = (
    "function setup_controller_cache(alg, cache, controller::CrossODEController, ::Type{E}, disco_probs) where {E}",
    "function stepsize_controller!(integrator, cache::CrossODEControllerCache, alg)",
    "function step_accept_controller!(integrator, cache::CrossODEControllerCache, alg, q)",
    "function step_reject_controller!(integrator, cache::CrossODEControllerCache, alg)",
)


def test_controller_implements_ordinarydiffeqcore_interface():
    src = src_text()
    for signature in CONTROLLER_METHODS:
        assert signature in src, signature
    imp = imports(src)["OrdinaryDiffEqCore"]
    assert {"setup_controller_cache", "stepsize_controller!", "step_accept_controller!", "step_reject_controller!",
            "AbstractController", "AbstractControllerCache"} <= imp
    assert re.search(r"struct CrossODEController\{B\} <: AbstractController", src)
    assert re.search(r"mutable struct CrossODEControllerCache\{B, E\} <: AbstractControllerCache", src)
    # the cache's `controller.basic` must be a CommonControllerOptions (OrdinaryDiffEqCore's get_qmin etc. read it)
    assert "basic = resolve_basic(controller.basic, alg, Float64; disco_probs)" in src


def test_controller_limits_are_the_torch_and_jax_ones():
    _control = pytest.importorskip("crossode.backends.jax._control")
    src = src_text()
    m = re.search(r"function CrossODEController\(; qmin::Real = ([\d.]+), qmax::Real = ([\d.]+), "
                  r"gamma::Real = ([\d.]+), failfactor::Real = ([\d.]+)\)", src)
    qmin, qmax, gamma, failfactor = map(float, m.groups())
    assert (qmin, qmax, gamma) == (_control.FACTOR_MIN, _control.FACTOR_MAX, _control.SAFETY)
    assert failfactor == 1 / qmin
    body = _function_body("stepsize_controller!")
    assert "EEst <= 1 ? clamp(raw, 1.0, qmax) : clamp(raw, qmin, gamma)" in body  # [1, 10] / [0.2, 0.9]
    assert "raw = gamma * EEst^(-1 / k)" in body  # exact power (IController: FastPower.fastpower)
    assert "h = max(cache.h_try * cache.factor, abs(Float64(SciMLBase.value(integrator.dt))))" in src  # landing rule


def test_error_order_matches_ordinarydiffeq_adaptive_order():
    """CrossODEController's exponent is 1/(alg_adaptive_order + 1) (OrdinaryDiffEqCore: alg_order - 1 unless a
    subpackage overrides it; ImplicitEuler overrides it to 0); crossode's controllers use error_order."""
    from crossode._stepping import error_order

    adaptive_order = {"Midpoint": 1, "Heun": 1, "BS3": 2, "DP5": 4, "Tsit5": 4, "DP8": 7, "ImplicitEuler": 0,
                      "Kvaerno5": 4}  # lib/*/src/alg_utils.jl of OrdinaryDiffEq 7.7
    for solver_cls, alg in _marshal.SOLVER_ALGS.items():
        if alg in adaptive_order:
            assert error_order(solver_cls()) == adaptive_order[alg] + 1, alg


# OrdinaryDiffEqSDIRK 2.9 src/algorithms.jl: keyword arguments of the implicit solvers crossode constructs
ALG_KEYWORDS = {
    "ImplicitEuler": {"autodiff", "concrete_jac", "linsolve", "nlsolve", "predictor", "extrapolant", "step_limiter!"},
    "Kvaerno5": {"autodiff", "concrete_jac", "linsolve", "nlsolve", "smooth_est", "predictor", "extrapolant",
                 "step_limiter!"},
}


def test_implicit_solvers_are_built_with_valid_keywords_and_finite_differences_on_request():
    src = src_text()
    for callee, kws in calls(src):
        if callee in ALG_KEYWORDS:
            assert set(kws) <= ALG_KEYWORDS[callee], (callee, kws)
    body = _function_body("make_alg")
    for name in ("ImplicitEuler", "Kvaerno5"):
        assert f'name == "{name}" && return finite ? {name}(autodiff = AutoFiniteDiff()) : {name}()' in body
    assert "AutoFiniteDiff" in (imports(src).get("ADTypes") or set())


def test_vjp_auto_is_resolved_once_in_build():
    assemble = _function_body("_assemble")
    assert "vjp = _is_adjoint(o.sensealg) ? resolve_vjp(o.vjp, prob) : nothing" in assemble
    body = _function_body("resolve_vjp")
    assert "SciMLBase.isinplace(prob) || return ZygoteVJP()" in body
    assert "SciMLSensitivity.inplace_vjp(prob, prob.u0, prob.p, false, identity)" in body
    assert "inplace_vjp\tfunction" in (API / "SciMLSensitivity.qualified.txt").read_text()
    assert "resolve_vjp" not in _function_body("_gradient")


def test_generated_code_sees_nanmath():
    assert "Core.eval(mod, :(const NaNMath = $NaNMath))" in _function_body("load_rhs")
    assert re.search(r"^import NaNMath$", src_text(), re.M)


def test_forward_and_zero_parameters_in_julia():
    src = src_text()
    assert "(; internalnorm = primal_norm)" in _function_body("_solve_kwargs")
    assert "return SciMLBase.NullParameters()" in _function_body("_parameters")
    norm = src[src.index("function primal_norm(") :].split("\nprimal_norm(u::Number", 1)[0]
    assert "SciMLBase.value(x)" in norm


def test_training_uses_optimisers_adam_through_its_public_api():
    chains = {tuple(c[:2]) for c in field_chains(src_text()) if c[0] == "Optimisers"}
    assert {("Optimisers", "Adam"), ("Optimisers", "setup"), ("Optimisers", "update!")} <= chains
    q = qualified("Optimisers")
    assert {"exported"} <= q["Adam"] and {"public"} <= q["setup"] and {"public"} <= q["update!"]
    # every hyperparameter is passed explicitly, positionally: Adam(eta, beta, epsilon) (src/rules.jl, @def struct)
    body = _function_body("make_training")
    assert re.search(r"Optimisers\.Adam\(Float64\(lr\), \(Float64\(b1\), Float64\(b2\)\), Float64\(eps\)\)", body)
    bad = "module B\nimport Optimisers\na = Optimisers.updat!(s, p, g)\nb = Optimisers.Leaf(1)\nend\n"
    errs = "\n".join(name_problems("bad", bad))
    assert "Optimisers has no updat!" in errs and "Optimisers.Leaf is neither exported nor public" in errs


def test_train_step_result_has_the_gradient_fields():
    body = _function_body("_train_step!")
    assert "_gradient(tr.cell, tr.p)" in body and "merge(res, (; status, grad_norm, updated))" in body
    assert re.search(r'if status == "ok"\n\s+g = .*\n\s+tr\.state, tr\.p = Optimisers\.update!', body), body

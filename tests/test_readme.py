"""The README's support matrix is exactly what the backends' supports() say (needs torch and jax for their columns)."""

import pathlib
import re

import pytest

from crossode.cli import support_matrix_markdown

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.torch
@pytest.mark.jax
def test_readme_support_matrix_is_current():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    text = README.read_text()
    m = re.search(r"<!-- support-matrix:begin -->\n(.*?)\n<!-- support-matrix:end -->", text, re.S)
    assert m, "support-matrix markers missing from README.md"
    assert m.group(1) == support_matrix_markdown(), "README support matrix is stale: paste `crossode list`'s table"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_compare_examples_make_only_valid_cells():
    """Every `crossode compare` line of "Using it" parses, and each (solver, sensitivity, step) it asks for makes
    sense: the old `--solver rk4 --dt 0.05 --sensitivity direct,mali` example half-failed (issue 15)."""
    import shlex

    from crossode import check_pair, sensitivity_from_name, solver_from_name
    from crossode.cli import build_parser

    block = re.search(r"```bash\n(.*?)```", _section("Using it"), re.S).group(1).replace("\\\n", " ")
    lines = [ln.split("#")[0].strip() for ln in block.splitlines() if ln.strip().startswith("crossode compare")]
    assert len(lines) >= 3
    for line in lines:
        args = build_parser().parse_args(shlex.split(line)[1:])
        if not (args.solver or args.sensitivity):
            continue
        for s in (args.solver or "dopri5").split(","):
            for g in (args.sensitivity or "direct").split(","):
                solver = solver_from_name(s)
                check_pair(solver, sensitivity_from_name(g))  # raises for a pair that makes no sense
                assert solver.adaptive or args.dt is not None, line


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.slow  # ~20 s: torch and a JAX compile
def test_readme_python_snippets_run(tmp_path):
    """The Python snippets of "Using it" run as written (the odeint one did not: no func, y0 or t)."""
    import subprocess
    import sys

    pytest.importorskip("torch")
    pytest.importorskip("jax")
    blocks = re.findall(r"```python\n(.*?)```", _section("Using it"), re.S)
    assert len(blocks) >= 2
    for code in blocks:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert out.returncode == 0, f"README snippet failed:\n{code}\n{out.stderr[-3000:]}"


def test_readme_repository_layout_names_every_module_and_sub_package():
    """"Repository layout" lists every top-level module and sub-package of crossode/ (it missed check/, sweep/,
    testing.py, _taylor.py, _limits.py, the Dask executor, ...)."""
    section = _section("Repository layout")
    package = README.parent / "crossode"
    names = [p.name for p in package.iterdir() if p.suffix in (".py", ".json")]
    names += [f"{p.name}/" for p in package.iterdir() if (p / "__init__.py").exists() and p.name != "backends"]
    names.append("_dask.py")  # the Dask executor of sweep/
    missing = [n for n in sorted(names) if f"`{n}`" not in section]
    listed = set()
    for group in re.findall(r"`backends/(?:\{([a-z,]+)\}|([a-z]+))/`", section):
        listed.update(x for x in ",".join(group).split(",") if x)
    missing += [f"backends/{p.name}/" for p in sorted((package / "backends").iterdir())
                if (p / "__init__.py").exists() and p.name not in listed]
    assert not missing, f"README 'Repository layout' does not mention {missing}"

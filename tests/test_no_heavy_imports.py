"""`import crossode` (and building problems, descriptors, references, CNF data and SciPy evaluations) imports no
framework (checked in a subprocess)."""

import subprocess
import sys

CODE = """
import sys
import crossode
from crossode import problems, Tsit5, ALF, MALI, Direct, Adaptive, check_pair
p = problems.get_problem("lotka_volterra")
check_pair(ALF(), MALI())
crossode.reference(p)
from crossode import cnf, datasets
q = problems.get_problem("cnf_moons", batch=2, widths=[2, 4, 2])
crossode.reference(q)
cnf.nll(q, datasets.sample("checkerboard", 3), backend="scipy")
from crossode import cli
cli.build_parser()
heavy = [m for m in ("torch", "jax", "jaxlib", "diffrax", "equinox", "juliacall", "juliapkg", "pandas", "matplotlib")
         if m in sys.modules]
print(",".join(heavy))
"""


def test_import_crossode_imports_no_framework():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


LIGHT = ("sympy", "scipy.integrate", "torch", "jax", "juliacall", "juliapkg", "pandas", "matplotlib")
"""Not imported by ``import crossode``, ``crossode --help``, ``info`` or ``list``: SymPy (0.5 s) and
scipy.integrate (0.8 s) load on first use (a symbolic field is built / a reference is computed), juliapkg (0.4 s, its
installer) only when Julia is set up or run, issue 13."""

RUN = """
import runpy, sys
sys.argv = ["crossode", *sys.argv[1:]]
try:
    runpy.run_module("crossode", run_name="__main__")
except SystemExit as e:
    assert e.code in (0, None), e.code
print(",".join(m for m in {light!r} if m in sys.modules), file=sys.stderr)
"""


def _loaded(*args) -> str:
    code = "import sys, crossode\nprint(','.join(m for m in %r if m in sys.modules), file=sys.stderr)" % (LIGHT,) \
        if not args else RUN.format(light=LIGHT)
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""


def test_import_crossode_loads_neither_sympy_nor_scipy_integrate():
    assert _loaded() == ""


def test_help_info_and_list_load_neither_sympy_nor_scipy_integrate():
    from crossode.backends._capabilities import gpu_driver_visible

    for args in [["--help"], ["info"], ["list"]] + ([["info", "--devices"]] if gpu_driver_visible() is False else []):
        assert _loaded(*args) == "", args


def test_symbolic_fields_and_references_still_load_them_on_use():
    code = ("import sys, crossode\np = crossode.get_problem('lotka_volterra')\nassert 'sympy' in sys.modules\n"
            "assert 'scipy.integrate' not in sys.modules\ncrossode.reference(p, cache=False)\n"
            "assert 'scipy.integrate' in sys.modules\nprint(p.rhs.describe())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dx/dt = a*x - b*x*y" in out.stdout

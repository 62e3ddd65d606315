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

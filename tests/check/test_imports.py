"""Importing crossode.check and crossode.testing (and building the CLI) imports no framework and no plotting."""

import subprocess
import sys

CODE = """
import sys
import crossode.check, crossode.testing
from crossode.check import check, convergence_order, taylor_test, default_problems
default_problems([0.1, 0.05])
from crossode import cli
cli.build_parser().parse_args(["check", "x.py:f"])
print(",".join(m for m in ("torch", "jax", "matplotlib", "pandas") if m in sys.modules))
"""


def test_check_imports_no_framework():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""

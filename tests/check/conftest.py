"""Fixtures for the ``crossode check`` tests: the test solvers and the example solvers for users."""

import importlib.util
import os
import pathlib

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = pathlib.Path(__file__).parent / "data"
EXAMPLES = ROOT / "comparisons" / "check"


def load(path: pathlib.Path):
    """Import a solver file as a module (as ``crossode check`` does)."""
    spec = importlib.util.spec_from_file_location(f"_check_test_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def torch_solvers():
    pytest.importorskip("torch")
    return load(DATA / "torch_solvers.py")


@pytest.fixture(scope="session")
def jax_solvers():
    pytest.importorskip("jax")
    return load(DATA / "jax_solvers.py")

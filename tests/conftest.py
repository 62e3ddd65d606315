"""Shared pytest configuration: float64 everywhere, fixtures for the neutral layer."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("JAX_ENABLE_X64", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture
def data_dir() -> pathlib.Path:
    """The directory of test data files."""
    return DATA


@pytest.fixture
def boom_backend():
    """A backend whose solves raise a multi-line RuntimeError: an unexpected backend crash, for harness/CLI tests of
    how crashes are reported (one-line message, details kept)."""
    from crossode._backend import Prepared
    from crossode.backends.reference import ReferenceBackend

    class Boom(Prepared):
        def solve(self):
            raise RuntimeError("first line of the error\nsecond line\nthird line")

        gradient = solve

    class BoomBackend(ReferenceBackend):
        name = "boom"

        def prepare(self, *args, **kwargs):
            return Boom()

    return BoomBackend()

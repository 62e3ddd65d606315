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


@pytest.fixture(autouse=True, scope="session")
def _reference_cache(tmp_path_factory):
    """References are cached on disk in a fresh directory per test session (never the user's ~/.cache); the
    environment variable reaches subprocesses (CLI, sweep workers) too."""
    old = os.environ.get("CROSSODE_CACHE")
    os.environ["CROSSODE_CACHE"] = str(tmp_path_factory.mktemp("crossode-cache"))
    yield
    if old is None:
        os.environ.pop("CROSSODE_CACHE", None)
    else:
        os.environ["CROSSODE_CACHE"] = old


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


@pytest.fixture
def peak_allocation():
    """``peak_allocation(fn)`` runs ``fn()`` and returns ``(exception or None, peak bytes traced by tracemalloc)``:
    NumPy arrays and Python objects count, so a test can check that a limit was enforced *before* a big grid was
    allocated."""
    import tracemalloc

    def run(fn):
        tracemalloc.start()
        try:
            fn()
            err = None
        except Exception as e:  # noqa: BLE001 - returned for the test to check
            err = e
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return err, peak

    return run

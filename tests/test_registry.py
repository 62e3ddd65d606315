"""Registry: unknown names list the valid ones; unavailable backends give reasons; reference runs as a backend."""

import numpy as np
import pytest

import crossode
from crossode import BackendUnavailableError, Direct, Dopri5, InvalidInputError, get_backend, unavailable_reason
from crossode._backend import Backend
from crossode._registry import BACKENDS, BackendSpec, backend_names


def test_unknown_backend():
    with pytest.raises(InvalidInputError, match="expected one of"):
        unavailable_reason("tensorflow")


def test_missing_module_reason(monkeypatch):
    monkeypatch.setitem(BACKENDS, "fake", BackendSpec("nowhere:Nothing", ("no_such_module_xyz",), "fake"))
    unavailable_reason.cache_clear()
    get_backend.cache_clear()
    try:
        assert "no_such_module_xyz" in unavailable_reason("fake")
        with pytest.raises(BackendUnavailableError, match="crossode\\[fake\\]"):
            get_backend("fake")
    finally:
        unavailable_reason.cache_clear()
        get_backend.cache_clear()


def test_backend_names():
    assert "reference" not in backend_names() and "reference" in backend_names(True)
    assert set(backend_names()) == {"torch", "jax", "julia"}


def test_reference_backend_conforms_and_runs():
    b = get_backend("reference")
    assert isinstance(b, Backend)
    p = crossode.get_problem("exponential_decay")
    out = crossode.gradient(p, "reference", Dopri5(), Direct())
    assert np.allclose(out.dy0, crossode.reference(p).dy0)


def test_measure_statuses_never_raise():
    p = crossode.get_problem("exponential_decay")
    rec = crossode.measure(p, "reference", repeats=1)
    assert rec.ok and rec.grad_error == 0.0 and rec.reference == "closed_form"
    rec = crossode.measure(p, "reference", device="cuda", repeats=1)
    assert rec.status == "unsupported" and "CPU" in rec.message
    assert crossode.measure(p, "reference", crossode.Tsit5(), crossode.MALI()).status == "unsupported"
    with pytest.raises(InvalidInputError, match="repeats"):
        crossode.measure(p, "reference", repeats=0)


def test_records_roundtrip():
    p = crossode.get_problem("exponential_decay")
    rec = crossode.measure(p, "reference", repeats=1, save_gradients=True)
    d = rec.to_dict()
    assert crossode.Record.from_dict({**d, "future_field": 1}) == rec
    assert set(crossode.STATUSES) >= {"ok", "max_steps", "diverged", "unsupported", "crashed", "timeout"}

"""The Julia backend's trainer (``crossode.backends.julia.make_trainer``, Optimisers.jl's Adam).

Without Julia (this project's CI): ``crossode train`` finds the Julia trainer through the registry, a Julia run is
recorded ``unavailable`` with the backend's own reason (no traceback), and combinations the trainer cannot run are
refused before Julia would load. With Julia: a few steps match Adam computed in NumPy from the backend's own
gradients (``JuliaBackend.prepare(...).gradient()``, no Optimisers.jl), to round-off.
"""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest

from crossode import ALF, MALI, RK4, BackendUnavailableError, Direct, Fixed, UnsupportedError, _registry
from crossode._training import Adam, trainer_factory
from crossode.backends import julia as julia_backend
from crossode.backends.julia import _train
from crossode.train import train_config_from_dict
from crossode.train._worker import run_training
from crossode.train._workloads import build_workload

REASON = _registry.unavailable_reason("julia")
needs_julia = pytest.mark.skipif(REASON is not None, reason=f"Julia is unavailable here: {REASON}")
without_julia = pytest.mark.skipif(REASON is None, reason="Julia is available here")


def spiral():
    return build_workload({"kind": "spiral"}).problem


def test_the_registry_module_of_julia_exports_the_julia_make_trainer():
    module = importlib.import_module(_registry.BACKENDS["julia"].target.split(":")[0])
    assert module is julia_backend and module.make_trainer is _train.make_trainer


@needs_julia
def test_trainer_factory_selects_the_julia_trainer():
    assert trainer_factory("julia") is _train.make_trainer


@without_julia
def test_trainer_factory_without_julia_raises_the_backends_reason():
    with pytest.raises(BackendUnavailableError, match="'julia' backend is unavailable") as e:
        trainer_factory("julia")
    assert REASON in str(e.value)


@without_julia
def test_make_trainer_without_julia_is_unavailable_not_a_traceback():
    with pytest.raises(BackendUnavailableError):
        _train.make_trainer(spiral(), RK4(), Direct(), Fixed(dt=0.05), optimizer=Adam(lr=0.1))


@without_julia
def test_a_julia_run_in_its_worker_is_recorded_unavailable_with_the_reason():
    cfg = train_config_from_dict({"workload": {"kind": "spiral"}, "training": {"iterations": 2},
                                  "runs": [{"backends": ["julia"], "methods": [["rk4", "direct"]], "dt": 0.1}]})
    (cell,) = cfg.runs
    rec = run_training(cell.to_json())  # the worker's code path, past the runner's in-process shortcut
    assert rec.status == "unavailable", (rec.status, rec.message)
    assert REASON.split(";")[0] in rec.message
    assert "Traceback" not in (rec.details or "") and "\n" not in rec.message


def test_julia_trainer_refuses_mini_batches_and_unsupported_methods_before_loading_julia(monkeypatch):
    def no_julia():
        raise AssertionError("Julia must not load for a refused combination")

    monkeypatch.setattr("crossode.backends.julia._backend.load_julia", no_julia)
    problem = dataclasses.replace(spiral(), y0=np.tile(spiral().y0, (4, 1)))
    with pytest.raises(UnsupportedError, match="whole batch"):
        _train.make_trainer(problem, RK4(), Direct(), Fixed(dt=0.05), optimizer=Adam(), batch_size=2)
    with pytest.raises(UnsupportedError):
        _train.make_trainer(spiral(), ALF(), MALI(), Fixed(dt=0.05), optimizer=Adam())


@needs_julia
@pytest.mark.slow  # Julia compiles the gradient (tens of seconds)
def test_julia_adam_steps_match_numpy_adam_on_the_backends_gradients():
    from crossode.backends.julia import JuliaBackend

    problem, opt, step = spiral(), Adam(lr=0.05), Fixed(dt=0.05)
    trainer = _train.make_trainer(problem, RK4(), Direct(), step, optimizer=opt)
    np.testing.assert_array_equal(trainer.params(), problem.params)
    p = problem.params.astype(np.float64).copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t in range(1, 4):
        ref = JuliaBackend().prepare(dataclasses.replace(problem, params=p), RK4(), Direct(), step).gradient()
        out = trainer.step(None)
        np.testing.assert_allclose(out.loss, ref.loss, rtol=1e-10)  # at the parameters before the update
        np.testing.assert_allclose(out.grad_norm, np.linalg.norm(ref.dparams), rtol=1e-10)
        g = ref.dparams
        m = opt.b1 * m + (1 - opt.b1) * g
        v = opt.b2 * v + (1 - opt.b2) * g * g
        p = p - opt.lr * (m / (1 - opt.b1**t)) / (np.sqrt(v / (1 - opt.b2**t)) + opt.eps)
        np.testing.assert_allclose(trainer.params(), p, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(trainer.solve(p), JuliaBackend().prepare(
        dataclasses.replace(problem, params=p), RK4(), Direct(), step).solve().ys, rtol=1e-12)

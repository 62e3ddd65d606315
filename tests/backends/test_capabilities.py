"""Framework-free capabilities: the JAX solver list matches the Diffrax mapping, the support answers match the
backends' own, and a GPU is only looked for when one is asked for."""

import pytest

from crossode import Adaptive, Fixed
from crossode._sensitivity import SENSITIVITIES
from crossode._solvers import SOLVERS
from crossode.backends import _capabilities as caps
from crossode.problems import get_problem


def _cells():
    for s_cls in SOLVERS.values():
        for g_cls in SENSITIVITIES.values():
            for step in (Adaptive(), Fixed(dt=0.1)):
                yield s_cls(), g_cls(), step


@pytest.mark.jax
def test_jax_solvers_are_the_diffrax_mapping():
    pytest.importorskip("diffrax")
    from crossode.backends.jax._backend import _DIFFRAX_SOLVERS

    assert set(caps.JAX_SOLVERS) == set(_DIFFRAX_SOLVERS)


@pytest.mark.torch
@pytest.mark.jax
def test_light_supports_answer_as_the_backends_do():
    pytest.importorskip("torch")
    pytest.importorskip("diffrax")
    from crossode.backends.jax import DiffraxBackend
    from crossode.backends.torch import TorchBackend

    problem = get_problem("lotka_volterra")
    for solver, sens, step in _cells():
        for light, backend in ((caps.torch_supports, TorchBackend()), (caps.jax_supports, DiffraxBackend())):
            for device in ("cpu", "tpu"):
                assert light(problem, solver, sens, step, device) == backend.supports(problem, solver, sens, step,
                                                                                      device)


def test_gpu_is_asked_only_for_a_gpu_device():
    asked = []
    problem = get_problem("exponential_decay")
    solver, sens, step = SOLVERS["dopri5"](), SENSITIVITIES["direct"](), Adaptive()
    no_gpu = lambda: asked.append(1) or False  # noqa: E731
    assert caps.torch_supports(problem, solver, sens, step, "cpu", cuda_available=no_gpu) is None and not asked
    assert "no CUDA device" in caps.torch_supports(problem, solver, sens, step, "cuda", cuda_available=no_gpu)
    assert caps.jax_supports(problem, solver, sens, step, "cpu", gpu_devices=lambda: asked.append(1) or []) is None
    assert len(asked) == 1


def test_cpu_only_devices_follow_the_driver(monkeypatch):
    monkeypatch.setattr(caps, "gpu_driver_visible", lambda: False)
    assert caps.cpu_only_devices() == ["cpu"]
    monkeypatch.setattr(caps, "gpu_driver_visible", lambda: True)
    assert caps.cpu_only_devices() is None

"""The Julia availability probe: fast, clear, never imports juliacall, never downloads; Julia-only tests skip with
its reason. The end-to-end tests at the bottom (marker ``julia``) run only where Julia and the packages exist."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from crossode.backends.julia import _probe, _setup

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _fresh_cache():
    _probe.clear_cache()
    yield
    _probe.clear_cache()


def _no_julia_env(monkeypatch):
    for var in ("PYTHON_JULIACALL_EXE", "PYTHON_JULIACALL_PROJECT", "PYTHON_JULIAPKG_EXE", "CROSSODE_JULIA_PROBE"):
        monkeypatch.delenv(var, raising=False)


def test_probe_is_fast_and_clear_here():
    t = time.perf_counter()
    reason = _probe.unavailable_reason()
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0
    if reason is not None:
        assert isinstance(reason, str) and len(reason) < 400 and "\n" not in reason
        assert "julia" in reason.lower()
        assert "julia-setup" in reason or "pip install" in reason or "PYTHON_JULIA" in reason


def test_probe_is_cached():
    first = _probe.unavailable_reason()
    t = time.perf_counter()
    assert _probe.unavailable_reason() == first
    assert time.perf_counter() - t < 0.05


def test_probe_in_a_fresh_process_imports_no_juliacall():
    code = (
        "import sys, time\n"
        "t = time.perf_counter()\n"
        "import crossode\n"
        "from crossode.backends.julia import JuliaBackend\n"
        "from crossode.backends.julia._probe import unavailable_reason\n"
        "r = unavailable_reason()\n"
        "assert 'juliacall' not in sys.modules, 'juliacall was imported'\n"
        "print(repr(r)); print(time.perf_counter() - t)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.strip().splitlines()[-1]) < 5.0


def test_registry_uses_the_probe():
    registry = pytest.importorskip("crossode._registry")
    if "julia" not in getattr(registry, "BACKENDS", {}):
        pytest.skip("the registry has no julia entry yet")
    registry.unavailable_reason.cache_clear()
    try:
        assert registry.unavailable_reason("julia") == _probe.unavailable_reason()
    finally:
        registry.unavailable_reason.cache_clear()


def test_no_juliacall(monkeypatch):
    real = _probe.importlib.util.find_spec
    monkeypatch.setattr(_probe.importlib.util, "find_spec", lambda n, *a: None if n == "juliacall" else real(n, *a))
    reason = _probe.unavailable_reason()
    assert "juliacall is not installed" in reason and "crossode[julia]" in reason


def test_no_julia_executable(monkeypatch):
    if _probe.importlib.util.find_spec("juliacall") is None:
        pytest.skip("juliacall not installed: covered by test_no_juliacall")
    _no_julia_env(monkeypatch)
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(_probe, "_resolved_executable", lambda: None)
    reason = _probe.unavailable_reason()
    assert reason.startswith("no Julia executable found")
    assert "PYTHON_JULIACALL_EXE" in reason and "crossode julia-setup" in reason


def test_env_var_problems(monkeypatch, tmp_path):
    if _probe.importlib.util.find_spec("juliacall") is None:
        pytest.skip("juliacall not installed")
    _no_julia_env(monkeypatch)
    monkeypatch.setenv("PYTHON_JULIACALL_EXE", str(tmp_path / "julia"))
    assert "PYTHON_JULIACALL_PROJECT" in _probe.unavailable_reason()
    _probe.clear_cache()
    _no_julia_env(monkeypatch)
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(tmp_path / "missing-julia"))
    reason = _probe.unavailable_reason()
    assert "PYTHON_JULIAPKG_EXE does not name an existing Julia executable" in reason


def _fake_julia(tmp_path) -> Path:
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    return exe


def test_quick_probe_accepts_an_executable_without_starting_it(monkeypatch, tmp_path):
    if _probe.importlib.util.find_spec("juliacall") is None:
        pytest.skip("juliacall not installed")
    _no_julia_env(monkeypatch)
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(_fake_julia(tmp_path)))
    monkeypatch.setattr(_probe, "_deep_check", lambda exe, timeout: pytest.fail("deep check must not run"))
    assert _probe.unavailable_reason(deep=False) is None
    _probe.clear_cache()
    monkeypatch.setenv("CROSSODE_JULIA_PROBE", "quick")
    assert _probe.unavailable_reason() is None


def test_deep_probe_runs_when_an_executable_exists(monkeypatch, tmp_path):
    if _probe.importlib.util.find_spec("juliacall") is None:
        pytest.skip("juliacall not installed")
    _no_julia_env(monkeypatch)
    exe = _fake_julia(tmp_path)
    monkeypatch.setenv("PYTHON_JULIAPKG_EXE", str(exe))
    seen = {}

    def fake_deep(exe_, timeout):
        seen.update(exe=exe_, timeout=timeout)
        return "loading failed: reason from the subprocess"

    monkeypatch.setattr(_probe, "_deep_check", fake_deep)
    monkeypatch.setenv("CROSSODE_JULIA_PROBE_TIMEOUT", "12")
    assert _probe.unavailable_reason() == "loading failed: reason from the subprocess"
    assert seen == {"exe": str(exe), "timeout": 12.0}


@pytest.mark.parametrize(
    "code,expect",
    [
        ("print('CROSSODE_JULIA_OK 1.11.5')", None),
        ("import sys; sys.stderr.write('Traceback\\nERROR: ArgumentError: Package SciMLSensitivity not found\\n');"
         " sys.exit(1)", "Package SciMLSensitivity not found"),
        ("import time; time.sleep(30)", "longer than 1 s"),
    ],
    ids=["ok", "fails", "hangs"],
)
def test_deep_check_subprocess_outcomes(monkeypatch, code, expect):
    """The subprocess machinery with stand-in code (no juliacall is imported by this test)."""
    monkeypatch.setattr(_probe, "_DEEP_CODE", code)
    t = time.perf_counter()
    reason = _probe._deep_check("/opt/julia/bin/julia", timeout=1.0)
    assert time.perf_counter() - t < 10
    if expect is None:
        assert reason is None
    else:
        assert expect in reason and "/opt/julia/bin/julia" in reason


def test_deep_check_forbids_downloads(monkeypatch):
    monkeypatch.setattr(_probe, "_DEEP_CODE", "import os; assert os.environ['PYTHON_JULIAPKG_OFFLINE'] == 'yes'; "
                                              "print('CROSSODE_JULIA_OK')")
    monkeypatch.delenv("PYTHON_JULIAPKG_OFFLINE", raising=False)
    assert _probe._deep_check("julia", timeout=20) is None


def test_julia_sources_are_located(monkeypatch, tmp_path):
    monkeypatch.delenv("CROSSODE_JULIA_DIR", raising=False)
    assert _probe.crossode_jl_path() == REPO / "julia" / "src" / "CrossODE.jl"
    assert _probe.crossode_jl_path().is_file()
    # installed wheel: crossode/_julia/src/CrossODE.jl next to the package
    fake_pkg = tmp_path / "site-packages" / "crossode"
    (fake_pkg / "_julia" / "src").mkdir(parents=True)
    (fake_pkg / "_julia" / "src" / "CrossODE.jl").write_text("module CrossODE end\n")
    monkeypatch.setattr(_probe, "__file__", str(fake_pkg / "backends" / "julia" / "_probe.py"))
    assert _probe.julia_dir() == fake_pkg / "_julia"
    monkeypatch.setenv("CROSSODE_JULIA_DIR", str(tmp_path / "elsewhere"))
    assert _probe.julia_dir() == (tmp_path / "elsewhere").resolve()


def test_import_order_reason(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delitem(sys.modules, "juliacall", raising=False)
    assert _probe.import_order_reason() is None
    monkeypatch.setitem(sys.modules, "torch", object())
    assert "torch was imported before juliacall" in _probe.import_order_reason()
    monkeypatch.setitem(sys.modules, "juliacall", object())
    assert _probe.import_order_reason() is None


def test_cuda_reason_is_a_reason_or_none():
    r = _probe.cuda_reason()
    assert r is None or isinstance(r, str)


def test_setup_refuses_without_side_effects(monkeypatch):
    out = io.StringIO()
    monkeypatch.setenv("PYTHON_JULIAPKG_OFFLINE", "yes")
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    if _probe.importlib.util.find_spec("juliacall") is None:
        assert _setup.julia_setup(out=out) == 2 and "pip install" in out.getvalue()
        return
    assert _setup.julia_setup(out=out) == 2
    assert "PYTHON_JULIAPKG_OFFLINE=yes" in out.getvalue()
    out = io.StringIO()
    monkeypatch.setitem(sys.modules, "torch", object())
    assert _setup.julia_setup(out=out) == 2 and "torch" in out.getvalue()
    assert "juliacall" not in sys.modules


# ------------------------------------------------------------------------------------------ needs Julia

JULIA_REASON = _probe.unavailable_reason()
_probe.clear_cache()


def _julia_ready():
    reason = _probe.import_order_reason()
    if reason is not None and "juliacall" not in sys.modules:
        pytest.skip(reason)


def _linear_problem(saveat=(1.0,), loss=None):
    from crossode import Loss, Problem, SymbolicRHS

    rhs = SymbolicRHS(["x", "y"], ["a11", "a12", "a21", "a22"], ["a11*x + a12*y", "a21*x + a22*y"])
    return Problem(rhs, y0=[1.0, 0.5], tspan=(0.0, 1.0), params=[-0.5, 1.0, -1.0, -0.3], saveat=list(saveat),
                   loss=loss or Loss())


def _closed_form(problem):
    expm = pytest.importorskip("scipy.linalg").expm
    a = problem.params.reshape(2, 2)
    y0 = problem.y0
    loss, dy0, dp = 0.0, np.zeros(2), np.zeros(4)
    for k, t in enumerate(problem.saveat):
        phi = expm(a * t)
        y = phi @ y0
        c = y if problem.loss.kind == "sum_squares" else problem.loss.weights[k]
        loss += 0.5 * y @ y if problem.loss.kind == "sum_squares" else c @ y
        dy0 += phi.T @ c
        for j in range(4):
            e = np.zeros((2, 2))
            e.flat[j] = t
            block = expm(np.block([[a * t, e], [np.zeros((2, 2)), a * t]]))
            dp[j] += c @ block[:2, 2:] @ y0
    return loss, dy0, dp


SENS_OPTIONS = [("direct", {}), ("forward", {}), ("backsolve", {}), ("interpolating", {}),
                ("interpolating", {"checkpointing": True}), ("quadrature", {}), ("gauss", {})]


@pytest.mark.parametrize("sens_name,options", SENS_OPTIONS, ids=[f"{n}{o or ''}" for n, o in SENS_OPTIONS])
@pytest.mark.julia
@pytest.mark.skipif(JULIA_REASON is not None, reason=f"Julia backend unavailable: {JULIA_REASON}")
def test_julia_gradient_matches_closed_form(sens_name, options):
    _julia_ready()
    from crossode import Adaptive, Tsit5, sensitivity_from_name
    from crossode.backends.julia import JuliaBackend

    prob = _linear_problem()
    prepared = JuliaBackend().prepare(prob, Tsit5(), sensitivity_from_name(sens_name, **options),
                                      Adaptive(rtol=1e-10, atol=1e-12))
    out = prepared.gradient()
    loss, dy0, dp = _closed_form(prob)
    assert out.loss == pytest.approx(loss, rel=1e-8)
    np.testing.assert_allclose(out.dy0, dy0, rtol=1e-6)
    np.testing.assert_allclose(out.dparams, dp, rtol=1e-6)
    assert out.stats.nfe_forward and out.stats.steps_accepted
    # what Julia passes to solve is what Python says it passes (JuliaCall.solve_keywords mirrors _solve_kwargs)
    assert prepared.info["julia_solve_keywords"] == ",".join(sorted(prepared.call.solve_keywords()))
    assert prepared.info["julia_problem_keywords"] == ",".join(sorted(prepared.call.problem_keywords()))
    if prepared.call.sensealg.continuous:
        assert prepared.vjp != "auto"  # resolved once by CrossODE.build


@pytest.mark.julia
@pytest.mark.skipif(JULIA_REASON is not None, reason=f"Julia backend unavailable: {JULIA_REASON}")
def test_julia_layouts_round_trip():
    _julia_ready()
    from crossode import Adaptive, GaussAdjoint, Loss, Tsit5
    from crossode.backends.julia import JuliaBackend

    ts = [0.2, 0.5, 1.0]
    w = np.array([[1.0, -2.0], [0.5, 3.0], [0.25, 1.5]])  # (n_save, n_state)
    prob = _linear_problem(ts, Loss("linear", w))
    prepared = JuliaBackend().prepare(prob, Tsit5(), GaussAdjoint(), Adaptive(rtol=1e-10, atol=1e-12))
    sol = prepared.solve()
    expm = pytest.importorskip("scipy.linalg").expm
    expected = np.stack([expm(prob.params.reshape(2, 2) * t) @ prob.y0 for t in ts])
    np.testing.assert_allclose(sol.ys, expected, rtol=1e-8)
    loss, dy0, dp = _closed_form(prob)
    out = prepared.gradient()
    assert out.loss == pytest.approx(loss, rel=1e-8)
    np.testing.assert_allclose(out.dparams, dp, rtol=1e-6)
    np.testing.assert_allclose(out.dy0, dy0, rtol=1e-6)


def test_juliapkg_state_read_without_importing_juliapkg(tmp_path):
    """``crossode info`` reads juliapkg's environment paths without running juliapkg's ``__init__`` (which imports
    its installer: ~0.4 s), and gets juliapkg's own answer: a resolved executable named in ``meta.json`` is found."""
    if _probe.importlib.util.find_spec("juliapkg") is None:
        pytest.skip("juliapkg not installed")
    exe = tmp_path / "julia"
    exe.write_text("#!/bin/sh\n")
    (tmp_path / "pyjuliapkg").mkdir()
    (tmp_path / "pyjuliapkg" / "meta.json").write_text('{"executable": "%s"}' % exe)
    code = ("import sys\nfrom crossode.backends.julia import _probe\nmine = _probe.juliapkg_state()\n"
            "assert 'juliapkg' not in sys.modules, 'juliapkg imported'\nprint(_probe._resolved_executable())\n"
            "import juliapkg.state\nassert mine == juliapkg.state.STATE, (mine, juliapkg.state.STATE)\n"
            "assert _probe.juliapkg_state() is juliapkg.state.STATE")
    env = {**os.environ, "PYTHON_JULIAPKG_PROJECT": str(tmp_path), "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(exe)

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


# ------------------------------------------------------------------------------------- third-party backends
# A real entry point: a *.dist-info directory with entry_points.txt on sys.path of a fresh interpreter, and a backend
# module (tests/data/plugins/toyplug.py) that is only ever loaded through it.

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "data" / "plugins"


def _dist(root: pathlib.Path, name: str, version: str, entry_points: dict[str, str]) -> None:
    d = root / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (d / "entry_points.txt").write_text(f"[crossode.backends]\n{lines}")


@pytest.fixture
def plugin_env(tmp_path):
    """Environment of a subprocess that sees the toy plugin distributions."""
    _dist(tmp_path, "toyplug-dist", "0.1", {
        "toy": "toyplug:ToyBackend",
        "torch": "toyplug:ToyBackend",          # clashes with the built-in backend
        "broken": "brokenplug:ToyBackend",      # module raises on import
        "missing": "no_such_plugin_module:X",   # module not installed
        "malformed": "toyplug",                 # no ':attribute'
        "wrongname": "toyplug:WrongName",       # declares another name
        "dup": "toyplug:ToyBackend",
    })
    _dist(tmp_path, "other-dist", "2.0", {"dup": "toyplug:ToyBackend"})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _py(code: str, env, timeout=240):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cli(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "crossode", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


PLUGIN_CODE = """
import json, sys
import crossode
from crossode import Direct, Euler, Fixed, RK4
p = crossode.get_problem("exponential_decay")
crossode.reference(p)
out = {"imported_at_import": "toyplug" in sys.modules}
from crossode._registry import BACKENDS, backend_names, unavailable_reason
names = backend_names()
out["names"] = names
out["reasons"] = {n: unavailable_reason(n) for n in names if n not in ("jax", "julia")}
out["imported_at_listing"] = "toyplug" in sys.modules
out["builtin_torch"] = BACKENDS["torch"].target
recs = {dt: crossode.measure(p, "toy", Euler(), Direct(), Fixed(dt=dt), repeats=1) for dt in (0.1, 0.05)}
out["toy"] = {str(dt): [r.status, r.grad_error, r.backend, r.nfe_forward] for dt, r in recs.items()}
out["toy_unsupported"] = [crossode.measure(p, "toy", RK4(), Direct(), Fixed(dt=0.1)).status]
for name in ("broken", "wrongname"):
    r = crossode.measure(p, name, Euler(), Direct(), Fixed(dt=0.1), repeats=1)
    out[name] = [r.status, r.message, unavailable_reason(name)]
print(json.dumps(out))
"""


def test_plugin_backend_through_entry_point(plugin_env):
    out = _py(PLUGIN_CODE, plugin_env)
    assert not out["imported_at_import"] and not out["imported_at_listing"]   # lazy: metadata only
    names, reasons = out["names"], out["reasons"]
    assert names[:3] == ["torch", "jax", "julia"] and "toy" in names
    assert out["builtin_torch"] == "crossode.backends.torch:TorchBackend"     # a plugin cannot take a built-in name
    assert reasons["toy"] is None
    assert "clashes with the built-in backend" in reasons["torch@toyplug-dist"]
    assert "registered by" in reasons["dup@toyplug-dist"] and "registered by" in reasons["dup@other-dist"]
    assert "no_such_plugin_module" in reasons["missing"] and "not importable" in reasons["missing"]
    assert "module:attribute" in reasons["malformed"]
    # the plugin runs through the harness like a built-in backend: first-order Euler gradient
    (s1, e1, b1, n1), (s2, e2, _, _) = out["toy"]["0.1"], out["toy"]["0.05"]
    assert (s1, s2, b1, n1) == ("ok", "ok", "toy", 50)
    assert 1e-3 < e1 < 0.1 and 1.8 < e1 / e2 < 2.2
    assert out["toy_unsupported"] == ["unsupported"]
    # broken plugins are `unavailable` with a reason, at first use, and stay so
    status, message, reason = out["broken"]
    assert status == "unavailable" and "failed to load: ModuleNotFoundError" in message and reason in message
    status, message, _ = out["wrongname"]
    assert status == "unavailable" and "something_else" in message


@pytest.mark.torch
@pytest.mark.slow
def test_plugin_backend_in_cli_and_sweeps(plugin_env, tmp_path):
    info = _cli(["info"], plugin_env)
    assert info.returncode == 0, info.stderr
    lines = {ln.split()[0]: ln for ln in info.stdout.splitlines()[1:]}
    assert "available" in lines["toy"] and "toyplug-dist 0.1" in lines["toy"]
    assert "unavailable" in lines["torch@toyplug-dist"] and "clashes" in lines["torch@toyplug-dist"]
    assert "unavailable" in lines["missing"] and "Traceback" not in info.stdout + info.stderr
    listing = _cli(["list"], plugin_env)
    assert listing.returncode == 0, listing.stderr
    euler_row = next(ln for ln in listing.stdout.splitlines() if ln.startswith("| euler |"))
    assert euler_row.split("|")[2].strip().endswith("toy")   # the direct column lists the plugin too
    res = tmp_path / "one.jsonl"
    cmp_ = _cli(["compare", "--backend", "toy", "--problem", "exponential_decay", "--solver", "euler", "--dt", "0.05",
                 "--repeats", "1", "--out", str(res)], plugin_env)
    assert cmp_.returncode == 0, cmp_.stderr
    rec = json.loads(res.read_text().splitlines()[0])
    assert rec["backend"] == "toy" and rec["status"] == "ok" and rec["grad_error"] < 0.05
    bad = _cli(["compare", "--backend", "broken", "--problem", "exponential_decay", "--solver", "euler", "--dt", "0.1",
                "--repeats", "1"], plugin_env)
    assert bad.returncode == 2 and "failed to load" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    cfg = tmp_path / "sweep.toml"
    grid = 'problems = ["exponential_decay"]\nsolvers = ["euler"]\nsensitivities = ["direct"]\n'
    cfg.write_text(f'name = "toy"\noutput = "toy.jsonl"\nrepeats = 1\n[[grid]]\n{grid}backends = ["toy"]\n'
                   f'dt = [0.1, 0.05]\n[[grid]]\n{grid}backends = ["torch"]\ndt = [0.05]\n')
    sweep = _cli(["compare", "--config", str(cfg)], plugin_env, timeout=400)
    assert sweep.returncode == 0, sweep.stderr
    recs = [json.loads(x) for x in (tmp_path / "toy.jsonl").read_text().splitlines()]
    by = {(r["backend"], r["dt"]): r for r in recs}
    assert len(recs) == 3 and all(r["status"] == "ok" for r in recs)
    # the toy Euler and crossode's torch Euler take the same steps: the same discrete gradient
    assert abs(by[("toy", 0.05)]["grad_error"] - by[("torch", 0.05)]["grad_error"]) < 1e-9


@pytest.mark.slow  # waits out a 15 s limit
def test_info_devices_asks_plugins_in_parallel_subprocesses_with_a_time_limit(tmp_path):
    """Devices no registry function can tell are asked of the backend in a subprocess per backend, all at once and
    bounded: a plugin whose ``devices()`` hangs reads "unknown (... took longer than ...)" instead of hanging
    ``crossode info --devices`` (issue 13: asking in-process imported every framework, one after the other)."""
    _dist(tmp_path, "devplug-dist", "0.1", {"toy": "toyplug:ToyBackend", "slowdev": "toyplug:SlowDevices"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(PLUGINS), str(ROOT)]))
    start = time.perf_counter()
    got = _py("import json\nfrom crossode.cli import backend_devices\n"
              "print(json.dumps(backend_devices(['reference', 'toy', 'slowdev'], timeout=15)))", env)
    assert time.perf_counter() - start < 60
    assert got["reference"] == "cpu" and got["toy"] == "cpu"
    assert got["slowdev"] == "unknown (asking slowdev took longer than 15 s)"

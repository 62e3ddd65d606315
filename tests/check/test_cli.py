"""``crossode check FILE.py:NAME``: exit 0 on pass, 1 on fail with one-line reasons, 2 on bad input (one line)."""

import json
import subprocess
import sys

import pytest

from crossode.cli import main

from .conftest import DATA, EXAMPLES, ROOT


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "crossode", "check", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.torch
@pytest.mark.slow
def test_example_rk4_passes_and_writes_outputs(tmp_path):
    pytest.importorskip("torch")
    out = run(f"{EXAMPLES / 'rk4_torch.py'}:odeint", "--framework", "torch", "--order", "4", "--dt", "0.1,0.05,0.025",
              "--problems", "exponential_decay,linear", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: 2 pass" in out.stdout and "Traceback" not in out.stderr
    data = json.loads((tmp_path / "check.json").read_text())
    assert data["passed"] and data["label"] == "rk4_torch.py:odeint"
    for p in data["problems"]:
        assert abs(p["gradient_order"]["order"] - 4) < 0.1 and p["builtin_solver"] == "rk4"
        assert all(b["status"] == "ok" for b in p["builtin"])   # the work-precision rows ran
    assert (tmp_path / "check.png").stat().st_size > 10_000 and (tmp_path / "records.jsonl").exists()


@pytest.mark.torch
def test_broken_rk4_exits_1_with_a_reason():
    pytest.importorskip("torch")
    out = run(f"{DATA / 'torch_solvers.py'}:rk4_wrong_weight", "--order", "4", "--dt", "0.1,0.05",
              "--problems", "exponential_decay", "--no-builtin")
    assert out.returncode == 1, out.stdout + out.stderr
    fail = [ln for ln in out.stdout.splitlines() if ln.startswith("FAIL exponential_decay:")]
    assert fail and "gradient order 2.0" in fail[0] and "expected 4.00" in fail[0]


@pytest.mark.jax
@pytest.mark.slow
def test_jax_example_passes_and_broken_fails():
    pytest.importorskip("jax")
    ok = run(f"{EXAMPLES / 'rk4_jax.py'}:odeint", "--framework", "jax", "--order", "4", "--dt", "0.25,0.125",
             "--problems", "mlp", "--no-builtin")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = run(f"{DATA / 'jax_solvers.py'}:rk4_detached_stage", "--framework", "jax", "--order", "4",
              "--dt", "0.25,0.125", "--problems", "mlp", "--no-builtin")
    assert bad.returncode == 1 and "FAIL mlp:" in bad.stdout and "Taylor test" in bad.stdout


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "raises.py").write_text("import math\n\nraise ValueError('no solver today')\n")
    (tmp_path / "syntax.py").write_text("def odeint(:\n    pass\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "ok.py").write_text("SOLVER = 3\n\ndef odeint(func, y0, t, **kw):\n    return None\n")
    return tmp_path


@pytest.mark.parametrize("target, extra, match", [
    ("missing.py:odeint", [], "does not exist"),
    ("ok.py", [], "FILE.py:NAME"),
    ("ok.py:", [], "FILE.py:NAME"),
    ("ok.py:1x", [], "FILE.py:NAME"),
    ("ok.py:nothing", [], "has no 'nothing'; its functions: odeint"),
    ("ok.py:SOLVER", [], "not a function"),
    ("raises.py:odeint", [], "importing raises.py raised ValueError: no solver today (line 3)"),
    ("syntax.py:odeint", [], "SyntaxError"),
    ("exits.py:odeint", [], "raised SystemExit"),
    ("ok.py:odeint", ["--dt", "0.1", "--rtol", "1e-3"], "not both"),
    ("ok.py:odeint", ["--dt", "0.1,abc"], "--dt must be a comma list of numbers"),
    ("ok.py:odeint", ["--dt", "0.1,-1"], "positive"),
    ("ok.py:odeint", ["--dt", "0.1"], "2 to 12 values"),
    ("ok.py:odeint", ["--atol", "1e-6"], "--atol needs --rtol"),
    ("ok.py:odeint", ["--problems", "nope"], "Unknown problem"),
    ("ok.py:odeint", ["--problem-file", "/nonexistent.toml"], "does not exist"),
    ("ok.py:odeint", ["--framework", "tensorflow"], "invalid choice"),
    ("ok.py:odeint", ["--order", "-2"], "order"),
])
def test_bad_input_exits_2_with_one_line(bad_files, target, extra, match, capsys, monkeypatch):
    monkeypatch.chdir(bad_files)
    try:
        code = main(["check", target, *extra])
    except SystemExit as e:   # argparse errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.torch
def test_contract_violation_is_exit_1_not_2(bad_files, capsys, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(bad_files)   # ok.py:odeint returns None: the solver's failure, reported as a status
    code = main(["check", "ok.py:odeint", "--problems", "exponential_decay", "--dt", "0.1,0.05", "--no-builtin"])
    text = capsys.readouterr().out
    assert code == 1 and "odeint returned NoneType, expected a torch.Tensor" in text


@pytest.mark.torch
def test_problem_file(data_dir):
    pytest.importorskip("torch")
    out = run(f"{EXAMPLES / 'rk4_torch.py'}:odeint", "--order", "4", "--problem-file", str(data_dir / "damped_linear.toml"),
              "--no-builtin")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "damped-linear" in out.stdout and "PASS: 1 pass" in out.stdout

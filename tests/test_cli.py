"""The command line: info/list work, bad input exits 2 with one line, the README's examples work."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from crossode import load_problem_file, reference, relative_error
from crossode.cli import main


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "crossode", *args], capture_output=True, text=True, timeout=timeout)


def test_info_is_fast_and_clean():
    start = time.perf_counter()
    out = run("info")
    assert out.returncode == 0, out.stderr
    assert time.perf_counter() - start < 5.0
    assert "reference" in out.stdout and "julia" in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_list_shows_support_matrix(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "support matrix" in text and "lotka_volterra" in text and "mali" in text
    assert "mlp_fit" in text and "spiral_fit" in text
    features = text[text.index("problem features"):]
    from crossode.cli import feature_support

    table = feature_support()
    assert set(table) == {"batch (y0 of shape (batch, n))", "mse loss (data targets)", "MLP time input",
                          "MLP cube features"}
    for feature, row in table.items():
        assert feature in features and "julia" in row  # Julia's supports() is pure Python: always listed
        for backend, reason in row.items():
            assert reason is None, (feature, backend, reason)


@pytest.mark.parametrize(
    "args, match",
    [
        (["compare", "--problem", "nope"], "Unknown problem"),
        (["compare", "--backend", "tensorflow"], "Unknown backend"),
        (["compare", "--solver", "rk45", "--backend", "reference"], "Unknown solver"),
        (["compare", "--solver", "tsit5", "--sensitivity", "mali", "--backend", "reference"], "reversible solver"),
        (["compare", "--problem", "linear", "--problem-file", "x.toml"], "not both"),
        (["compare", "--problem-file", "/nonexistent.toml"], "does not exist"),
        (["compare", "--rtol", "1e-3", "--dt", "0.1", "--backend", "reference"], "not both"),
        (["compare", "--rtol", "-1", "--backend", "reference"], "rtol"),
        (["compare", "--bogus"], "unrecognized"),
        ([], "required"),
    ],
)
def test_bad_input_exits_2(args, match, capsys):
    with pytest.raises(SystemExit) if args in (["compare", "--bogus"], []) else _noop() as exc:
        code = main(args)
    if exc is not None and hasattr(exc, "value"):
        code = exc.value.code
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


class _noop:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def test_hostile_problem_file_exits_2_and_executes_nothing(data_dir, tmp_path):
    out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--problem-file",
                          str(data_dir / "hostile_import.toml")], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120)
    assert out.returncode == 2 and "not allowed" in out.stderr
    assert not (tmp_path / "CROSSODE_PWNED").exists()


def test_julia_backend_requested_explicitly_exits_2_with_reason():
    out = run("compare", "--backend", "julia", timeout=60)
    if out.returncode == 0:
        pytest.skip("a working Julia is installed here")
    assert out.returncode == 2 and "julia" in out.stderr.lower() and "Traceback" not in out.stderr


def test_reference_backend_jsonl(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--out", str(path),
                 "--repeats", "1"]) == 0
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["status"] == "ok" and rec["grad_error"] == 0.0 and rec["backend"] == "reference"


@pytest.mark.torch
def test_damped_linear_done_when(data_dir, capsys):
    """Issue 2: torch dopri5 direct at 1e-8/1e-10 within 1e-5 of the closed form; the reference within 1e-8."""
    pytest.importorskip("torch")
    f = data_dir / "damped_linear.toml"
    assert main(["compare", "--problem-file", str(f), "--backend", "torch", "--solver", "dopri5", "--sensitivity",
                 "direct", "--rtol", "1e-8", "--atol", "1e-10", "--save-gradients", "--repeats", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    grad = np.concatenate([lines[0]["dparams"], lines[0]["dy0"]])
    assert lines[0]["reference"] == "closed_form" and lines[0]["grad_error"] < 1e-5  # printed with its error
    p = load_problem_file(f)
    closed = reference(p, "closed_form")
    assert relative_error(grad, closed.grad) < 1e-5
    assert relative_error(reference(p, "sensitivity").grad, closed.grad) < 1e-8

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
    assert time.perf_counter() - start < 20.0  # a hang, not a slow machine (comparisons/startup)
    assert "reference" in out.stdout and "julia" in out.stdout and "Traceback" not in out.stdout + out.stderr


def test_list_shows_support_matrix(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "support matrix" in text and "lotka_volterra" in text and "mali" in text
    assert "mlp_fit" in text and "spiral_fit" in text and "cnf_moons" in text and "cnf_checkerboard" in text
    features = text[text.index("problem features"):]
    from crossode.cli import feature_support

    table = feature_support()
    assert set(table) == {"batch (y0 of shape (batch, n))", "mse loss (data targets)", "MLP time input",
                          "MLP cube features", "CNF field + cnf_nll loss"}
    for feature, row in table.items():
        assert feature in features and "julia" in row  # Julia's supports() is pure Python: always listed
        for backend, reason in row.items():
            assert reason is None, (feature, backend, reason)


def test_list_and_info_devices_load_no_framework():
    """`crossode list` took 9.7 s and `info --devices` 15 s importing torch and JAX one after the other (issue 13):
    the support matrix comes from the backends' framework-free supports (crossode.backends._capabilities), and
    without a GPU driver the devices are told without asking the frameworks."""
    from crossode.backends._capabilities import gpu_driver_visible

    code = ("import json, sys\nfrom crossode.cli import main\nmain(['list'])\n"
            + ("main(['info', '--devices'])\n" if gpu_driver_visible() is False else "")
            + "print(json.dumps(sorted(m for m in ('torch', 'jax', 'jaxlib', 'diffrax', 'juliacall') "
              "if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert "| dopri5 | torch, jax" in out.stdout
    if gpu_driver_visible() is False:
        assert "torch      available" in out.stdout and "devices: cpu" in out.stdout


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
        (["compare", "--dt", "0.1", "--batch-steps", "per_sample", "--backend", "reference"], "--batch-steps"),
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


def test_taylor_flag_adds_the_slope_to_records_and_table(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    assert main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--out", str(path),
                 "--repeats", "1", "--taylor"]) == 0
    rec = json.loads(path.read_text().splitlines()[0])
    assert rec["taylor_status"] in ("consistent", "unresolved") and "h" in rec["taylor"]
    out = capsys.readouterr().out
    assert "Taylor slope" in out
    assert main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--repeats", "1"]) == 0
    assert "Taylor" not in capsys.readouterr().out


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


def _without_root_override():
    """In the child before exec: drop CAP_DAC_OVERRIDE from the bounding set, so that a process run as root obeys
    file modes like an ordinary user's (a no-op for non-root users, who obey them anyway)."""
    import ctypes
    import os

    if os.geteuid() == 0:
        pr_capbset_drop, cap_dac_override = 24, 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_capbset_drop, cap_dac_override, 0, 0, 0)


def one_line_exit_2(out, match):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert match in out.stderr and "Traceback" not in out.stderr + out.stdout, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("case", ["dev_zero", "power_tower", "replicates", "tiny_dt"])
def test_done_when_hostile_inputs_end_fast_with_one_line(case, tmp_path):
    """Issue 15 "done when": each ends in under 10 s with one line and exit 2 (they hung, or ate GBs, before)."""
    if case == "dev_zero":
        args, match = ["compare", "--problem-file", "/dev/zero"], "not a regular file"
    elif case == "power_tower":
        f = tmp_path / "p.toml"
        f.write_text('states = ["x"]\nrhs = ["10**10**10*x"]\ny0 = [1.0]\ntspan = [0.0, 1.0]\n')
        args, match = ["compare", "--problem-file", str(f), "--backend", "reference"], "digits"
    elif case == "replicates":
        f = tmp_path / "sweep.toml"
        f.write_text('problems = ["exponential_decay"]\nbackends = ["reference"]\nreplicates = 100000000\n'
                     'output = "r.jsonl"\n')
        args, match = ["compare", "--config", str(f)], "max_cells"
    else:
        args, match = ["compare", "--problem", "exponential_decay", "--backend", "reference", "--solver", "rk4",
                       "--dt", "1e-9"], "max_steps"
    start = time.perf_counter()
    out = run(*args, timeout=60)
    assert time.perf_counter() - start < 10.0
    one_line_exit_2(out, match)


@pytest.mark.parametrize("flag, value, match", [("--rtol", "-1e-3", "`rtol` must be a positive"),
                                                ("--atol", "-1e-12", "`atol` must be a positive"),
                                                ("--dt", "-.5", "`dt` must be a positive")])
def test_negative_scientific_values_reach_the_value_check(flag, value, match, capsys):
    """`--rtol -1e-3` gave argparse's "expected one argument" (issue 15)."""
    code = main(["compare", "--backend", "reference", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "expected one argument" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("where", ["missing_dir", "under_a_file", "proc", "directory", "dev_full", "read_only"])
def test_unusable_out_is_one_line_before_any_cell_runs(where, tmp_path):
    """--out /dev/full failed only after every cell ran; other paths gave tracebacks (issue 15)."""
    import os
    import tempfile

    preexec = None
    if where == "missing_dir":  # created, like a sweep's output directory (nothing to refuse)
        path = tmp_path / "nonexistent" / "dir" / "x.jsonl"
    elif where == "under_a_file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "x.jsonl"
    elif where == "proc":
        path = "/proc/crossode-test/x.jsonl"
    elif where == "directory":
        path = tmp_path
    elif where == "dev_full":
        path = "/dev/full"
    else:
        shared = tempfile.mkdtemp(dir="/tmp", prefix="crossode-ro-")
        os.chmod(shared, 0o777)
        path = os.path.join(shared, "r.jsonl")
        with open(path, "w") as fh:
            fh.write("")
        os.chmod(path, 0o444)
        preexec = _without_root_override
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--problem", "exponential_decay", "--backend",
                          "reference", "--repeats", "1", "--out", str(path)], capture_output=True, text=True,
                         timeout=120, preexec_fn=preexec, cwd="/")
    if where == "missing_dir":
        assert out.returncode == 0, out.stderr
        assert json.loads(path.read_text().splitlines()[0])["status"] == "ok"
        return
    one_line_exit_2(out, {"directory": "is a directory", "dev_full": "not a regular file"}.get(
        where, "cannot be written"))
    assert "cells" not in out.stdout  # no table: nothing ran
    assert time.perf_counter() - start < 30.0


def test_compare_takes_the_sweeps_lock(tmp_path, capsys):
    """Plain `compare --out F` appended to a running sweep's file (issue 15): now it takes the same lock."""
    from crossode.sweep import ResultStore

    path = tmp_path / "r.jsonl"
    with ResultStore(path):
        code = main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--out", str(path)])
        assert code == 2 and "in use by another sweep" in capsys.readouterr().err
    assert not path.read_text()


def test_exit_1_when_no_cell_is_ok(tmp_path, capsys):
    """`compare` exited 0 when every cell failed (issue 15); now 1, and 0 when some cell is ok."""
    assert main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--repeats", "1"]) == 0
    f = tmp_path / "p.toml"  # the field overflows float64 at once: every cell fails
    f.write_text('states = ["x"]\nrhs = ["exp(1000*x)"]\ny0 = [1.0]\ntspan = [0.0, 1.0]\n')
    capsys.readouterr()
    assert main(["compare", "--problem-file", str(f), "--backend", "reference", "--repeats", "1"]) == 1
    assert "no cell finished ok" in capsys.readouterr().err


def test_duplicate_list_entries_run_once(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    assert main(["compare", "--problem", "exponential_decay", "--backend", "reference,reference", "--solver",
                 "dopri5,tsit5,dopri5", "--repeats", "1", "--out", str(path)]) == 0
    err = capsys.readouterr().err
    assert "--solver lists 'dopri5' more than once" in err and "--backend lists 'reference'" in err
    assert len(path.read_text().splitlines()) == 2


def test_memory_column_is_blank_where_not_measured_cleanly(capsys):
    """In-process RSS deltas after the first cell are meaningless (10.5 MB alone, 0.0 after another cell): the
    second cell's memory is blank and the table says why."""
    code = subprocess.run([sys.executable, "-m", "crossode", "compare", "--problem", "exponential_decay",
                           "--backend", "reference", "--solver", "dopri5,tsit5", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert code.returncode == 0, code.stderr
    assert "blank: not measured cleanly" in code.stdout and "--config" in code.stdout


def test_crashed_message_is_one_line_and_traceback_is_a_flag(capsys, boom_backend):
    """A crashed cell printed a screen of traceback before the table (issue 15): one line; the traceback only with
    --traceback. The record comes from measure() on a backend whose gradient raises a multi-line error."""
    from crossode import Direct, Dopri5, get_problem, measure
    from crossode.cli import _print_table

    p = get_problem("exponential_decay")
    rec = measure(p, boom_backend, Dopri5(), Direct(), repeats=1)
    _print_table([rec], p, [])
    plain = capsys.readouterr().out
    assert "boom/dopri5/direct: crashed: RuntimeError: first line of the error" in plain
    assert "third line" not in plain and "Traceback" not in plain
    _print_table([rec], p, [], show_details=True)
    assert "third line" in capsys.readouterr().out


def test_partly_unsupported_products_run_the_rest(capsys):
    """"Unsupported combinations exit 2" holds only when every cell is unsupported (issue 15): a product with some
    sensible pairs runs them, notes the skipped ones and exits by the cells' statuses; --help says so."""
    code = main(["compare", "--problem", "exponential_decay", "--backend", "reference", "--solver", "dopri5,alf",
                 "--sensitivity", "mali", "--repeats", "1"])
    out = capsys.readouterr()
    assert code == 0 and "skipped:" in out.err and "reversible solver" in out.err
    assert "alf" in out.out and "mali" in out.out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "only when every cell is unsupported" in " ".join(capsys.readouterr().out.split())


def test_compare_on_cuda_without_a_gpu_says_why_and_exits_2(capsys):
    """Issue 14 §6: the built-in default with ``--device cuda`` on a CPU machine gives the reasons, not an empty
    table with exit 0."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present here")
    assert main(["compare", "--device", "cuda", "--repeats", "1"]) == 2
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("crossode: error:")]
    assert any("CUDA" in ln and "torch/" in ln for ln in lines), cap.err
    assert any("GPU" in ln and "jax/" in ln for ln in lines), cap.err
    assert "grad err" not in cap.out and "Traceback" not in cap.err


def test_batch_steps_per_sample_runs_and_is_listed(tmp_path, capsys):
    pytest.importorskip("torch")
    problem = tmp_path / "batch.toml"
    problem.write_text('states = ["x"]\nrhs = ["-k*x"]\ny0 = [[1.0], [2.0]]\ntspan = [0.0, 1.0]\n\n[params]\nk = 1.0\n')
    out = tmp_path / "r.jsonl"
    code = main(["compare", "--problem-file", str(problem), "--backend", "torch", "--solver", "dopri5",
                 "--sensitivity", "direct", "--batch-steps", "per_sample", "--repeats", "1", "--out", str(out)])
    assert code == 0 and "per-sample" in capsys.readouterr().out
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["status"] == "ok" and rec["batch_steps"] == "per_sample" and rec["per_sample"]["batch"] == 2
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    listed = text[text.index("per-sample steps"):]
    assert "torch" in listed and "dopri5+direct" in listed and "alf+mali" in listed and "not implemented" in listed

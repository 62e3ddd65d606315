"""Executors: a fresh worker per cell; crashes, hangs and garbage become records; threads pinned; jobs in parallel."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from crossode.sweep import InlineExecutor, LocalExecutor, config_from_dict, run_sweep
from crossode.sweep._worker import thread_env

HEAVY = ("torch", "jax", "jaxlib", "diffrax", "juliacall", "pandas", "matplotlib")


def one_cell(**kw):
    data = {"problems": ["exponential_decay"], "backends": ["reference"], "repeats": 1, "rtol": [1e-6], **kw}
    return config_from_dict(data).cells[0]


def fake_worker(tmp_path, body: str) -> list[str]:
    path = tmp_path / "fake_worker.py"
    path.write_text("import os, sys, time, json, signal\n" + textwrap.dedent(body))
    return [sys.executable, str(path)]


def test_real_worker_runs_a_cell_in_a_fresh_process():
    cell = one_cell(threads=1)
    [(c, rec)] = list(LocalExecutor().run([cell]))
    assert c is cell
    assert rec.status == "ok", rec.message
    assert rec.threads == 1
    assert rec.tags["cell"] == cell.key and rec.tags["label"] == cell.label
    assert rec.tags["worker_wall_s"] > 0 and rec.tags["process_max_rss_bytes"] > 0
    assert rec.grad_error is not None and rec.time_gradient_s is not None


def test_worker_stdout_is_only_the_record():
    cell = one_cell()
    out = subprocess.run([sys.executable, "-m", "crossode.sweep._worker", "-"], input=json.dumps(cell.to_json()),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["tags"]["cell"] == cell.key


def test_worker_imports_no_framework_for_the_reference_backend():
    cell = one_cell()
    code = ("import json, sys\nfrom crossode.sweep._worker import run_cell\n"
            f"r = run_cell(json.loads({json.dumps(json.dumps(cell.to_json()))}))\n"
            f"print(r.status, [m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok []", out.stderr


@pytest.mark.parametrize("body, status, match", [
    ("sys.stderr.write('about to crash\\n'); sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)\n",
     "crashed", "SIGSEGV"),
    ("sys.stderr.write('Traceback: boom\\n'); sys.exit(1)\n", "crashed", "exited with status 1"),
    ("print('not json')\n", "crashed", "printed no record"),
    ("sys.stderr.write('hanging\\n'); sys.stderr.flush(); time.sleep(60)\n", "timeout", "limit"),
])
def test_failures_become_records_with_stderr_tail(tmp_path, body, status, match):
    cell = one_cell(timeout=1.5)
    start = time.monotonic()
    [(_, rec)] = list(LocalExecutor(worker=fake_worker(tmp_path, body)).run([cell]))
    assert time.monotonic() - start < 10
    assert rec.status == status
    assert match in rec.message
    assert rec.tags["cell"] == cell.key and rec.problem == "exponential_decay" and rec.rtol == 1e-6
    if "stderr.write" in body:
        assert "stderr tail" in rec.message


def test_jobs_run_in_parallel_and_threads_are_pinned(tmp_path):
    body = """
        time.sleep(1.0)
        cell = json.loads(sys.argv[-1])
        print(json.dumps({"problem": "p", "backend": "b", "solver": "s", "sensitivity": "g",
                          "tags": {"cell": "x", "omp": os.environ["OMP_NUM_THREADS"],
                                   "xla": os.environ["XLA_FLAGS"]}}))
    """
    cells = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-3, 1e-4, 1e-5], "threads": 2}).cells
    start = time.monotonic()
    out = list(LocalExecutor(jobs=3, worker=fake_worker(tmp_path, body)).run(cells))
    assert time.monotonic() - start < 2.6  # three 1 s cells at once, not 3 s in a row
    assert len(out) == 3
    assert all(r.tags["omp"] == "2" and "intra_op_parallelism_threads=2" in r.tags["xla"] for _, r in out)


def test_thread_env():
    env = thread_env(3, "cpu", base={"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true --foo"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["XLA_FLAGS"] == "--foo --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=3"
    assert env["JAX_PLATFORMS"] == "cpu" and env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"


def test_abandoned_run_kills_running_workers(tmp_path):
    pids = tmp_path / "pids"
    body = f"""
        cell = json.loads(sys.argv[-1])
        if cell["step"]["rtol"] < 1e-3:
            open({str(pids)!r}, "a").write(str(os.getpid()) + "\\n")
            time.sleep(60)
        print(json.dumps({{"problem": "p", "backend": "b", "solver": "s", "sensitivity": "g"}}))
    """
    cells = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-4, 1e-2]}).cells
    gen = LocalExecutor(jobs=2, worker=fake_worker(tmp_path, body)).run(cells)
    cell, rec = next(gen)  # the quick cell; the slow one is still running
    assert cell.step["rtol"] == 1e-2
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:  # the slow worker is up (its startup may lag)
        time.sleep(0.05)
    gen.close()
    [pid] = pids.read_text().split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


def test_unavailable_backend_needs_no_process(tmp_path, monkeypatch):
    from crossode import _registry

    cells = config_from_dict({"problems": ["exponential_decay"], "backends": ["julia"]}).cells
    monkeypatch.setattr(_registry, "unavailable_reason", lambda name: "no Julia here")
    monkeypatch.setattr("crossode.sweep._sweep.unavailable_reason", lambda name: "no Julia here")
    [rec] = run_sweep(cells, tmp_path / "r.jsonl", executor=InlineExecutor(), progress=False, summary=False)
    assert rec.status == "unavailable" and "no Julia here" in rec.message and rec.backend == "julia"


def test_inline_executor_and_run_sweep(tmp_path):
    cfg = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-4, 1e-6], "repeats": 1})
    recs = run_sweep(cfg.cells, tmp_path / "r.jsonl", executor=InlineExecutor(), progress=False, summary=False)
    assert [r.tags["cell"] for r in recs] == [c.key for c in cfg.cells]
    assert all(r.ok for r in recs)
    assert all("machine" in r.tags and "git_commit" in r.tags for r in recs)


def test_sweep_stores_crash_messages_as_one_line_with_details(tmp_path):
    """A crashed worker's message carried its whole stderr tail (a screen of traceback in tables and logs, issue
    15): the stored message is one line, the tail is in `details`."""
    body = ("sys.stderr.write('Traceback (most recent call last):\\n  File x\\nRuntimeError: deep failure\\n'); "
            "sys.stderr.flush(); os.kill(os.getpid(), signal.SIGSEGV)\n")
    cell = one_cell()
    [rec] = run_sweep([cell], tmp_path / "r.jsonl", executor=LocalExecutor(worker=fake_worker(tmp_path, body)),
                      progress=False, summary=False)
    assert rec.status == "crashed" and "\n" not in rec.message
    assert "SIGSEGV" in rec.message and "RuntimeError: deep failure" in rec.message
    assert "Traceback (most recent call last)" in rec.details
    stored = json.loads((tmp_path / "r.jsonl").read_text())
    assert stored["message"] == rec.message and "File x" in stored["details"]

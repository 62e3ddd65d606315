"""Executors: a fresh worker per cell; crashes, hangs and garbage become records; threads pinned; jobs in parallel."""

import dataclasses
import json
import os
import signal
import socket
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


@pytest.mark.parametrize("start, method", [("auto", "fork"), ("spawn", "spawn")])
def test_real_worker_runs_a_cell_in_a_fresh_process(start, method):
    cell = one_cell(threads=1)
    [(c, rec)] = list(LocalExecutor(start=start).run([cell]))
    assert c is cell
    assert rec.status == "ok", rec.message
    assert rec.threads == 1
    assert rec.tags["cell"] == cell.key and rec.tags["label"] == cell.label
    assert rec.tags["start_method"] == method and "start_note" not in rec.tags
    assert rec.tags["worker_wall_s"] > 0 and rec.tags["process_max_rss_bytes"] > 0
    assert 0 <= rec.tags["startup_s"] <= rec.tags["worker_wall_s"]
    assert rec.host == socket.gethostname()
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
    ("open(os.environ['CROSSODE_CELL_STARTED'], 'w').close(); sys.stderr.write('hanging\\n'); sys.stderr.flush();"
     " time.sleep(60)\n", "timeout", "1.5 s limit"),
    ("sys.stderr.write('importing forever\\n'); sys.stderr.flush(); time.sleep(60)\n", "timeout", "did not start"),
])
def test_failures_become_records_with_stderr_tail(tmp_path, body, status, match):
    cell = one_cell(timeout=1.5)
    start = time.monotonic()
    [(_, rec)] = list(LocalExecutor(worker=fake_worker(tmp_path, body), startup_limit=1.0).run([cell]))
    assert time.monotonic() - start < 10
    assert rec.tags["start_method"] == "spawn"
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


# ---- forked cells: the same guarantees as spawned ones -------------------------------------------------------


def tagged_cells(rtols, **tags):
    return config_from_dict({"problems": ["exponential_decay"], "rtol": list(rtols), "repeats": 1,
                             "with_reference": False, "tags": tags}).cells


@pytest.mark.parametrize("start, act, status, match", [
    ("auto", "segfault", "crashed", "killed by SIGSEGV"),
    ("spawn", "segfault", "crashed", "killed by SIGSEGV"),
    ("auto", "exit1", "crashed", "exited with status 1"),
    ("auto", "raise", "crashed", "worker error: RuntimeError: the runner failed"),
])
def test_a_failing_cell_fails_alone(runners, start, act, status, match):
    cells = tagged_cells([1e-3, 1e-4, 1e-5], act=act, at=1e-4)
    out = list(LocalExecutor(start=start, runner=runners).run(cells))
    assert [c.key for c, _ in out] == [c.key for c in cells]
    recs = [r for _, r in out]
    assert [r.status for r in recs] == ["ok", status, "ok"], [r.message for r in recs]
    assert match in recs[1].message
    if act != "raise":
        assert "stderr tail" in recs[1].message
    method = "fork" if start == "auto" else "spawn"
    assert all(r.tags["start_method"] == method and "start_note" not in r.tags for r in recs)
    if start == "auto":  # the template survived the crash: the cells before and after came from the same one
        assert recs[0].tags["at_start"]["ppid"] == recs[2].tags["at_start"]["ppid"] != os.getpid()
    pids = {r.tags["at_start"]["pid"] for r in (recs[0], recs[2])}
    assert len(pids) == 2 and os.getpid() not in pids  # a fresh process per cell


@pytest.mark.parametrize("start, backend", [("auto", "reference"), ("spawn", "torch")])
def test_time_limit_counts_the_cell_not_the_startup(runners, start, backend):
    """A 2 s limit: a quick cell passes although a fresh interpreter importing torch takes longer than that on a
    loaded machine; a cell that sleeps 5 s is killed at its limit, forked or spawned."""
    if backend == "torch":
        pytest.importorskip("torch")
    cells = config_from_dict({"problems": ["exponential_decay"], "backends": [backend], "rtol": [1e-3],
                              "repeats": 1, "with_reference": False}).cells
    cells += tagged_cells([1e-4], act="sleep", seconds=5)
    cells = [dataclasses.replace(c, timeout=2.0) for c in cells]
    out = dict((c.key, r) for c, r in LocalExecutor(start=start, runner=runners).run(cells))
    quick, slow = (out[c.key] for c in cells)
    assert quick.status == "ok", quick.message
    assert slow.status == "timeout" and "2 s limit" in slow.message
    assert slow.tags["worker_wall_s"] < 30 and slow.tags["start_method"] == ("fork" if start == "auto" else "spawn")


def test_forked_cell_starts_clean(runners):
    """A forked child has its own address space with the template's pages mapped as a fresh interpreter would have
    them after the same imports: peak RSS starts at its RSS, the file pages are in it, no threads beyond NumPy's."""
    cells = tagged_cells([1e-3, 1e-4])
    recs = [r for _, r in LocalExecutor(runner=runners).run(cells)]
    for rec in recs:
        assert rec.tags["start_method"] == "fork"
        mem = rec.tags["at_start"]["memory"]
        assert mem["VmHWM"] - mem["VmRSS"] < 8 << 20  # not the template's (or an earlier cell's) peak
        # the template's resident library pages re-mapped (without: a few MB, re-faulted during the call)
        assert mem["RssFile"] > 0.8 * rec.tags["at_start"]["parent_memory"]["RssFile"]
        assert rec.tags["at_start"]["threads"] == 1  # threads=1: no BLAS pool either


@pytest.mark.slow  # two torch templates
def test_forked_cells_are_pinned_to_their_threads(runners):
    pytest.importorskip("torch")
    cells = config_from_dict({"problems": ["exponential_decay"], "backends": ["torch"], "rtol": [1e-3, 1e-4],
                              "repeats": 1, "with_reference": False, "threads": 2}).cells
    cells[1] = dataclasses.replace(cells[1], threads=1)
    recs = [r for _, r in LocalExecutor(runner=runners).run(cells)]
    assert [r.status for r in recs] == ["ok", "ok"], [r.message for r in recs]
    assert all(r.tags["start_method"] == "fork" for r in recs)
    assert [r.tags["torch_threads"] for r in recs] == [2, 1]  # what torch uses in the forked child
    assert [r.tags["omp_threads"] for r in recs] == ["2", "1"]  # one template per thread count


def test_a_dead_template_loses_only_its_cell(runners):
    cells = tagged_cells([1e-3, 1e-4, 1e-5], act="kill_parent", at=1e-4)
    recs = [r for _, r in LocalExecutor(runner=runners).run(cells)]
    assert [r.status for r in recs] == ["ok", "crashed", "ok"]
    assert "fork template died" in recs[1].message
    assert recs[0].tags["at_start"]["ppid"] != recs[2].tags["at_start"]["ppid"]  # a new template for the rest


def test_abandoned_run_kills_forked_cells(runners, tmp_path):
    pids = tmp_path / "pids"
    cells = tagged_cells([1e-4, 1e-2], act="pid_hang", at=1e-4, pidfile=str(pids))
    gen = LocalExecutor(jobs=2, runner=runners).run(cells)
    cell, rec = next(gen)
    assert cell.step["rtol"] == 1e-2 and rec.tags["start_method"] == "fork"
    deadline = time.monotonic() + 30
    while not pids.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    gen.close()
    [pid] = pids.read_text().split()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)


@pytest.mark.slow  # imports jax and starts XLA
def test_template_refuses_to_fork_after_xla_starts():
    """Forking after XLA has started its threads deadlocks the child; after `import jax` alone it is safe."""
    pytest.importorskip("jax")
    code = ("import numpy\nfrom crossode.sweep._worker import _fork_hazard, _thread_count, _preload\n"
            "base = _thread_count()\n_preload('jax')\nprint(_fork_hazard(base))\n"
            "import jax.numpy as jnp\njnp.ones(3).block_until_ready()\nprint(_fork_hazard(base))\n")
    env = thread_env(1, "cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    after_import, after_init = out.stdout.strip().splitlines()
    assert after_import == "None", out.stderr
    assert "XLA is initialised" in after_init


@pytest.mark.slow  # a JAX template and one jit compile
def test_jax_cells_are_forked():
    pytest.importorskip("jax")
    cells = config_from_dict({"problems": ["exponential_decay"], "backends": ["jax"], "rtol": [1e-3],
                              "repeats": 1, "with_reference": False}).cells
    [(_, rec)] = list(LocalExecutor().run(cells))
    assert rec.status == "ok", rec.message
    assert rec.tags["start_method"] == "fork" and "start_note" not in rec.tags


def test_config_start_method_reaches_the_executor(write_config):
    from crossode.cli import build_parser
    from crossode.sweep import load_config
    from crossode.sweep._cli import make_executor

    config = write_config('problems = ["exponential_decay"]\njobs = 2\n[executor]\nstart = "spawn"\n')
    args = build_parser().parse_args(["compare", "--config", str(config)])
    ex = make_executor(args, load_config(config))
    assert isinstance(ex, LocalExecutor) and ex.start == "spawn" and ex.jobs == 2
    args = build_parser().parse_args(["compare", "--config", str(config), "--executor", "dask", "--workers", "3"])
    ex = make_executor(args, load_config(config))
    assert ex.workers == 3 and ex.start == "spawn" and ex.address is None


def test_idle_templates_beyond_the_cap_are_closed(runners):
    cells = tagged_cells([1e-3, 1e-4, 1e-5])
    cells[1] = dataclasses.replace(cells[1], threads=2)  # another template
    recs = [r for _, r in LocalExecutor(runner=runners, max_templates=1).run(cells)]
    assert [r.status for r in recs] == ["ok", "ok", "ok"]
    assert all(r.tags["start_method"] == "fork" for r in recs)
    parents = [r.tags["at_start"]["ppid"] for r in recs]
    assert len(set(parents)) == 3  # the first template was closed for the second, then started again


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


# ---- streamed lines (``emit``): training runs send one record per iteration while they run -------------------


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_streamed_lines_arrive_while_the_cell_runs_and_before_its_record(runners, start):
    cells = tagged_cells([1e-3, 1e-4], act="emit", lines=6, gap=0.25)
    seen, order = [], []

    def on_output(cell, obj):
        seen.append((cell.key, obj["i"], time.monotonic()))
        order.append(("line", cell.key))

    out = []
    for cell, rec in LocalExecutor(start=start, runner=runners).run(cells, on_output=on_output):
        out.append((cell.key, rec.status, time.monotonic()))
        order.append(("record", cell.key))
    assert [s for _, s, _ in out] == ["ok", "ok"]
    for cell, (_, _, done) in zip(cells, out):
        mine = [(i, t) for k, i, t in seen if k == cell.key]
        assert [i for i, _ in mine] == list(range(6))  # each line once, in order
        assert mine[0][1] < done - 0.6  # the first line came while the cell still ran (5 x 0.25 s after it)
        assert order.index(("record", cell.key)) > max(j for j, x in enumerate(order) if x == ("line", cell.key))


def test_lines_streamed_before_a_crash_are_kept(runners):
    cells = tagged_cells([1e-3], act="emit_crash", lines=3)
    seen = []
    out = list(LocalExecutor(runner=runners).run(cells, on_output=lambda c, obj: seen.append(obj["i"])))
    assert out[0][1].status == "crashed" and "SIGSEGV" in out[0][1].message
    assert seen == [0, 1, 2]


def test_an_oversized_streamed_line_is_refused_in_the_cell(runners):
    from crossode.sweep._worker import STREAM_LINE_MAX

    cells = tagged_cells([1e-3], act="emit", lines=1, pad=STREAM_LINE_MAX)
    seen = []
    out = list(LocalExecutor(runner=runners).run(cells, on_output=lambda c, obj: seen.append(obj)))
    assert out[0][1].status == "crashed" and "more than the" in out[0][1].message
    assert seen == []


def test_inline_executor_streams_too(runners, monkeypatch):
    import sys as _sys

    monkeypatch.syspath_prepend(os.path.dirname(os.path.abspath(__file__)))
    cells = tagged_cells([1e-3], act="emit", lines=2)
    seen = []
    out = list(InlineExecutor(runner=runners).run(cells, on_output=lambda c, obj: seen.append((c.key, obj["i"]))))
    assert out[0][1].status == "ok" and seen == [(cells[0].key, 0), (cells[0].key, 1)]
    assert "_runners" in _sys.modules


def test_taylor_cells_carry_the_metric_through_a_worker_and_the_report(tmp_path):
    from crossode.sweep import write_report

    cfg = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-6], "repeats": 1,
                            "grid": [{"taylor": True}, {"solvers": ["tsit5"]}]})
    recs = run_sweep(cfg.cells, tmp_path / "r.jsonl", executor=LocalExecutor(), progress=False, summary=False)
    assert [r.taylor_status for r in recs] == ["consistent", None]
    assert recs[0].taylor_slope > 1.7 and recs[0].taylor["used"]
    md = open(write_report(tmp_path / "r.jsonl", tmp_path / "rep")).read()
    assert "Taylor slope" in md and f"{recs[0].taylor_slope:.2f}" in md

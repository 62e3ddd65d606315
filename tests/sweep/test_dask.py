"""The Dask executor on a real distributed.LocalCluster: same records as a local sweep, a worker killed mid-cell is
retried once, a killed client resumes with every cell exactly once, a segfaulting cell leaves its worker alive,
cells go only to workers with the resources they need."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from crossode.sweep import DaskExecutor, config_from_dict, run_sweep
from crossode.sweep._config import cell_resources
from crossode.sweep._dask import comparable

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")


def crossode(*args, **kw):
    return subprocess.run([sys.executable, "-m", "crossode", *args], capture_output=True, text=True, timeout=300,
                          **kw)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@contextlib.contextmanager
def cluster(n=2, allowed_failures=1, **kw):
    """A real LocalCluster (worker processes with nannies) and a client on it."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}), \
            distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                     silence_logs=50, **kw) as c, distributed.Client(c) as client:
        client.wait_for_workers(n, timeout=60)
        yield c, client


def cells(rtols, **tags):
    return config_from_dict({"problems": ["exponential_decay"], "rtol": list(rtols), "repeats": 1,
                             "with_reference": False, "tags": tags}).cells


@pytest.mark.slow  # ~20-40 s: a local sweep, then a 2-worker cluster, each with torch templates
def test_twelve_cells_on_two_workers_give_the_records_of_jobs_1(write_config, tmp_path):
    pytest.importorskip("torch")
    config = write_config("""
        problems = ["exponential_decay", "decay2"]
        backends = ["reference", "torch"]
        rtol = [1e-3, 1e-5, 1e-7]
        repeats = 1
        save_gradients = true
    """)
    local, dask_ = tmp_path / "local.jsonl", tmp_path / "dask.jsonl"
    a = crossode("compare", "--config", str(config), "--out", str(local), "--jobs", "1")
    assert a.returncode == 0, a.stderr
    b = crossode("compare", "--config", str(config), "--out", str(dask_), "--executor", "dask", "--workers", "2")
    assert b.returncode == 0, b.stderr
    assert "dask LocalCluster of 2 workers" in b.stderr and "[12/12]" in b.stderr
    ra, rb = lines(local), lines(dask_)
    assert len(ra) == len(rb) == 12 and all(r["status"] == "ok" for r in ra + rb)
    by_cell = {r["tags"]["cell"]: r for r in rb}
    assert [comparable(r) for r in ra] == [comparable(by_cell[r["tags"]["cell"]]) for r in ra]
    assert all(r["dparams"] is not None for r in rb)  # the gradients themselves are equal, not only the errors
    assert len({r["tags"]["dask_worker"] for r in rb}) == 2  # both workers ran cells
    assert all(r["host"] and r["tags"]["attempts"] == 1 and r["tags"]["start_method"] == "fork" for r in rb)
    assert all(r["tags"]["machine"]["cores"] for r in rb)


@pytest.mark.slow  # ~15 s: a worker is killed and restarted by its nanny
def test_worker_killed_mid_cell_is_retried_once(runners, tmp_path):
    todo = cells([1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8], act="sleep", seconds=2.0)
    out = tmp_path / "r.jsonl"
    with cluster(2) as (c, client):
        killed = {}

        def kill_a_busy_worker():
            deadline = time.monotonic() + 120
            while len(lines(out)) < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.7)  # both workers are now 0.7 s into their next 2 s cell
            busy = client.run(lambda dask_worker: (os.getpid(), len(dask_worker.state.executing)))
            addr, (pid, _) = next((a, v) for a, v in busy.items() if v[1])
            killed.update(address=addr, pid=pid, records_before=len(lines(out)))
            os.kill(pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        recs = run_sweep(todo, out, executor=DaskExecutor(c.scheduler_address, runner=runners), progress=False,
                         summary=False)
        killer.join()
    keys = [r["tags"]["cell"] for r in lines(out)]
    assert sorted(keys) == sorted(x.key for x in todo)  # every cell exactly once
    assert all(r.status == "ok" for r in recs), [r.message for r in recs]
    retried = [r for r in recs if r.tags["attempts"] == 2]
    assert len(retried) == 1 and killed["records_before"] < len(todo)
    assert retried[0].tags["dask_worker"] != killed["address"]  # it ran again elsewhere


@pytest.mark.slow  # ~15 s: two workers die
def test_a_cell_that_kills_every_worker_is_recorded_crashed(runners, tmp_path):
    todo = cells([1e-3, 1e-4, 1e-5], act="kill_worker", at=1e-4)
    out = tmp_path / "r.jsonl"
    with cluster(2) as (c, _):
        recs = run_sweep(todo, out, executor=DaskExecutor(c.scheduler_address, runner=runners), progress=False,
                         summary=False)
    assert sorted(r["tags"]["cell"] for r in lines(out)) == sorted(x.key for x in todo)
    assert [r.status for r in recs] == ["ok", "crashed", "ok"]
    assert "died" in recs[1].message and "retried once" in recs[1].message
    assert recs[1].tags["attempts"] == 2


@pytest.mark.slow  # ~15-25 s: a client with its local cluster is killed, then a second run resumes
def test_client_killed_mid_sweep_then_resume_gives_every_cell_exactly_once(write_config, tmp_path):
    config = write_config("""
        output = "results.jsonl"
        problems = ["exponential_decay", "decay2"]
        rtol = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7]
        repeats = 1
        [executor]
        kind = "dask"
        workers = 2
    """)
    results = tmp_path / "results.jsonl"
    every = [x.key for x in config_from_dict({"problems": ["exponential_decay", "decay2"],
                                              "rtol": [1e-3, 1e-4, 1e-5, 1e-6, 1e-7], "repeats": 1}).cells]
    proc = subprocess.Popen([sys.executable, "-m", "crossode", "compare", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(lines(results)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r["tags"]["cell"] for r in lines(results)]
    assert 2 <= len(before) < len(every)
    gone, alive = psutil.wait_procs(family, timeout=30)  # workers, templates and cells die with the client
    assert not alive, [p.cmdline()[:4] for p in alive]

    resumed = crossode("compare", "--config", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = [r["tags"]["cell"] for r in lines(results)]
    assert sorted(after) == sorted(every) and after[:len(before)] == before
    assert all(r["status"] == "ok" for r in lines(results))


@pytest.fixture(scope="module")
def one_worker():
    """A one-worker cluster shared by the tests that leave it intact; its worker imports ``_runners``."""
    here = os.path.dirname(os.path.abspath(__file__))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", here + os.pathsep + os.environ.get("PYTHONPATH", ""))
        with cluster(1) as (c, client):
            yield c, client


def test_a_segfaulting_cell_does_not_kill_its_worker(one_worker, tmp_path):
    c, client = one_worker
    todo = cells([1e-3, 1e-4, 1e-5], act="segfault", at=1e-4)
    before = client.run(os.getpid)
    recs = run_sweep(todo, tmp_path / "r.jsonl", executor=DaskExecutor(c.scheduler_address, runner="_runners:act"),
                     progress=False, summary=False)
    after = client.run(os.getpid)
    assert [r.status for r in recs] == ["ok", "crashed", "ok"]
    assert "SIGSEGV" in recs[1].message and "about to crash" in recs[1].message
    assert before == after  # the same single worker process ran all three cells
    assert all(r.tags["attempts"] == 1 for r in recs)


def test_streamed_lines_reach_the_client_in_order_before_the_record(one_worker):
    """Training runs stream one record per iteration: on a Dask worker the lines come to the client as events while
    the cell runs, each once and in order, all before the cell's record (a crashed cell's lines too)."""
    c, _ = one_worker
    todo = cells([1e-3], act="emit", lines=8, gap=0.2) + cells([1e-4], act="emit_crash", lines=3)
    seen, order = [], []

    def on_output(cell, obj):
        seen.append((cell.key, obj["i"], time.monotonic()))
        order.append(("line", cell.key))

    out = []
    for cell, rec in DaskExecutor(c.scheduler_address, runner="_runners:act").run(todo, on_output=on_output):
        out.append((cell.key, rec, time.monotonic()))
        order.append(("record", cell.key))
    assert [r.status for _, r, _ in out] == ["ok", "crashed"]
    assert "_stream" not in out[0][1].tags
    for cell, n, (_, _, done) in zip(todo, (8, 3), out):
        mine = [(i, t) for k, i, t in seen if k == cell.key]
        assert [i for i, _ in mine] == list(range(n))
        assert order.index(("record", cell.key)) > max(j for j, x in enumerate(order) if x == ("line", cell.key))
    first = [t for k, i, t in seen if k == todo[0].key][0]
    assert first < out[0][2] - 0.5  # streamed while the cell ran (7 x 0.2 s after its first line)


def test_a_task_failing_outside_its_cell_stops_the_sweep(one_worker, tmp_path):
    """A failure in the worker's environment (here: a cell the worker cannot launch) is not the cell's: the sweep
    stops with a clear error instead of filling the results with `crashed` records; what finished is kept."""
    import dataclasses

    from crossode.sweep import ClusterError

    c, _ = one_worker
    good, bad = cells([1e-3, 1e-4])
    out = tmp_path / "r.jsonl"
    with pytest.raises(ClusterError, match="failed on its worker: ValueError.*crossode of this client"):
        run_sweep([good, dataclasses.replace(bad, threads="many")], out, executor=DaskExecutor(c.scheduler_address),
                  progress=False, summary=False)
    assert [r["tags"]["cell"] for r in lines(out)] in ([], [good.key])


@pytest.mark.slow  # ~10-20 s: a two-worker SpecCluster
def test_cells_go_only_to_workers_with_their_resources(tmp_path):
    from distributed import Nanny, Scheduler, SpecCluster

    spec = {"plain": {"cls": Nanny, "options": {"nthreads": 1}},
            "special": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"special": 1}}}}
    todo = config_from_dict({"problems": ["exponential_decay"], "rtol": [1e-3, 1e-4, 1e-5, 1e-6], "repeats": 1,
                             "with_reference": False, "grid": [{}, {"resources": {"special": 1}, "dt": [0.1, 0.05]},
                                                               {"devices": ["cuda"], "dt": [0.1]}]}).cells
    with SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
                     silence_logs=50) as c, distributed.Client(c) as client:
        client.wait_for_workers(2, timeout=60)
        special = next(a for a, w in client.scheduler_info()["workers"].items() if w["resources"])
        recs = run_sweep(todo, tmp_path / "r.jsonl", executor=DaskExecutor(c.scheduler_address), progress=False,
                         summary=False)
    by = {(r.dt, r.device): r for r in recs}
    assert all(by[(dt, "cpu")].tags["dask_worker"] == special for dt in (0.1, 0.05))
    assert all(r.status == "ok" for r in recs if r.device == "cpu")
    gpu = by[(0.1, "cuda")]  # no worker offers `gpu`: recorded at once instead of waiting forever
    assert gpu.status == "unavailable" and "gpu" in gpu.message and "special" in gpu.message


def test_cell_resources_derive_from_device_and_backend():
    assert cell_resources("torch", "cpu") == {}
    assert cell_resources("torch", "cuda") == {"gpu": 1.0}
    assert cell_resources("julia", "gpu") == {"gpu": 1.0, "julia": 1.0}
    assert cell_resources("julia", "cpu", {"julia": False, "memory": 4e9}) == {"memory": 4e9}
    cell = config_from_dict({"problems": ["exponential_decay"], "backends": ["julia"], "devices": ["cuda"],
                             "resources": {"gpu": 2}}).cells[0]
    assert cell.resources == {"gpu": 2.0, "julia": 1.0}


@pytest.mark.parametrize("args, match", [
    (["--scheduler", "tcp://x:1", "--workers", "2"], "not both"),
    (["--executor", "local", "--workers", "2"], "need --executor dask"),
    (["--executor", "dask", "--workers", "0"], "--workers must be a positive integer"),
    (["--executor", "dask", "--workers", "2", "--jobs", "2"], "--jobs applies to the local executor"),
])
def test_bad_executor_flags_are_one_line_errors(write_config, capsys, args, match):
    from crossode.cli import main

    config = write_config('problems = ["exponential_decay"]\noutput = "r.jsonl"\n')
    assert main(["compare", "--config", str(config), *args]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1, err


def test_sweep_flags_need_a_config(capsys):
    from crossode.cli import main

    assert main(["compare", "--executor", "dask", "--workers", "2"]) == 2
    assert "only apply with --config" in capsys.readouterr().err


@pytest.mark.parametrize("table, match", [
    ('kind = "slurm"', "`kind` must be one of"),
    ('kind = "local"\nworkers = 2', 'need kind = "dask"'),
    ('address = "tcp://x:1"\nworkers = 2', "not both"),
    ("workers = 0", "`workers` must be a positive integer"),
    ('adress = "tcp://x:1"', "unknown key(s) ['adress']"),
    ('start = "fork"', '`start` must be "auto" or "spawn"'),
])
def test_bad_executor_table_is_an_error(table, match):
    from crossode import InvalidInputError
    import tomllib

    with pytest.raises(InvalidInputError, match=None) as e:
        config_from_dict({"problems": ["exponential_decay"], "executor": tomllib.loads(table)})
    assert match in str(e.value)


def test_executor_table_is_read():
    cfg = config_from_dict({"problems": ["exponential_decay"], "executor": {"address": "tcp://head:8786"}})
    assert cfg.executor == {"kind": "dask", "address": "tcp://head:8786", "start": "auto"}
    assert config_from_dict({"problems": ["exponential_decay"]}).executor == {"kind": "local", "start": "auto"}


def test_unreachable_scheduler_is_a_clear_error(write_config):
    config = write_config('problems = ["exponential_decay"]\noutput = "r.jsonl"\n')
    t = time.monotonic()
    out = crossode("compare", "--config", str(config), "--scheduler", "tcp://127.0.0.1:9", env={
        **os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    assert out.returncode == 2 and "cannot reach the Dask scheduler" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2  # the sweep's first line, then the error
    assert time.monotonic() - t < 120

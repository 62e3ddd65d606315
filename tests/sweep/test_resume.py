"""A sweep killed with SIGKILL mid-way and resumed ends with every cell exactly once; two sweeps on one file don't mix."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from crossode.sweep import load_config

CONFIG = """
    output = "results.jsonl"
    problems = ["exponential_decay"]
    backends = ["reference"]
    rtol = [1e-3, 1e-4, 1e-5, 1e-6]
    repeats = 1
    with_reference = false
"""


def crossode(*args, **kw):
    return subprocess.run([sys.executable, "-m", "crossode", *args], capture_output=True, text=True, timeout=120, **kw)


def start(config):
    return subprocess.Popen([sys.executable, "-m", "crossode", "compare", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def wait_for_lines(path, n, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never reached {n} lines")


def keys_in(path):
    return [json.loads(line)["tags"]["cell"] for line in path.read_text().splitlines()]


@pytest.mark.slow  # ~10-20 s: several fresh worker processes
def test_sigkill_then_resume_gives_every_cell_exactly_once(write_config, tmp_path):
    config = write_config(CONFIG)
    results = tmp_path / "results.jsonl"
    cells = [c.key for c in load_config(config).cells]
    proc = start(config)
    wait_for_lines(results, 2)
    os.kill(proc.pid, signal.SIGKILL)  # mid-sweep: a worker is running, later cells have not started
    proc.wait()
    before = keys_in(results)
    assert 2 <= len(before) < len(cells)
    with open(results, "a") as fh:  # and a record torn by a kill in the middle of a write
        fh.write('{"problem": "exponential_decay", "tags": {"cell": "' + cells[-1][:8])

    again = crossode("compare", "--config", str(config))
    assert again.returncode == 2 and "--resume" in again.stderr  # never silently duplicates

    resumed = crossode("compare", "--config", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = keys_in(results)
    assert sorted(after) == sorted(cells)  # every cell, exactly once
    assert after[:len(before)] == before  # nothing earlier was rewritten
    assert all(json.loads(x)["status"] == "ok" for x in results.read_text().splitlines())

    done = crossode("compare", "--config", str(config), "--resume")  # nothing left: a no-op
    assert done.returncode == 0 and keys_in(results) == after


@pytest.mark.slow
def test_second_sweep_on_the_same_file_is_refused(write_config, tmp_path):
    config = write_config(CONFIG.replace("rtol = [1e-3, 1e-4, 1e-5, 1e-6]", "rtol = [1e-3, 1e-4]"))
    results = tmp_path / "results.jsonl"
    proc = start(config)
    try:
        wait_for_lines(tmp_path / "results.jsonl.lock", 1)
        other = crossode("compare", "--config", str(config), "--resume")
        assert other.returncode == 2
        assert "in use by another sweep" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    finally:
        proc.wait(timeout=120)
    assert proc.returncode == 0
    keys = keys_in(results)
    assert len(keys) == len(set(keys)) == 2

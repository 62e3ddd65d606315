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


@pytest.mark.slow
def test_disk_full_mid_sweep_keeps_the_record_and_says_so(write_config, tmp_path):
    """ENOSPC mid-sweep gave a traceback and lost that cell's record (issue 15). The kernel refuses the write here
    through RLIMIT_FSIZE (EFBIG, the same failed write() as a full disk): the record is printed, nothing torn is
    left, the sweep stops with one error line, and --resume completes it."""
    import resource

    config = write_config(CONFIG.replace("rtol = [1e-3, 1e-4, 1e-5, 1e-6]", "rtol = [1e-3, 1e-4]"))
    results = tmp_path / "results.jsonl"
    first = crossode("compare", "--config", str(config))
    assert first.returncode == 0, first.stderr
    line = results.read_text().splitlines()[0] + "\n"
    results.write_text(line)  # one of the two records on disk; the limit leaves room for about half the other

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(1.5 * len(line)), resource.RLIM_INFINITY))

    full = subprocess.run([sys.executable, "-m", "crossode", "compare", "--config", str(config), "--resume"],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert full.returncode == 2, full.stderr
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("crossode: error:")]
    assert len(errors) == 1 and "NOT saved" in errors[0] and "--resume" in errors[0] and "Traceback" not in full.stderr
    unsaved = [json.loads(x) for x in full.stdout.splitlines() if x.startswith("{")]
    assert len(unsaved) == 1 and unsaved[0]["status"] == "ok"  # the lost cell's record, printed in full
    assert results.read_text() == line  # no torn line
    resumed = crossode("compare", "--config", str(config), "--resume")
    assert resumed.returncode == 0 and len(keys_in(results)) == 2


@pytest.mark.slow
def test_retry_failed_reruns_timeouts(write_config, tmp_path):
    """--resume never retried crashed/timeout cells (issue 15); --retry-failed does (statuses configurable), and the
    report shows each cell's latest record."""
    config = write_config(CONFIG.replace("rtol = [1e-3, 1e-4, 1e-5, 1e-6]", "rtol = [1e-3, 1e-4]")
                          + "timeout = 0.05\n")  # no worker starts that fast: every cell times out
    results = tmp_path / "results.jsonl"
    first = crossode("compare", "--config", str(config))
    assert first.returncode == 1  # no cell ok
    assert {json.loads(x)["status"] for x in results.read_text().splitlines()} == {"timeout"}
    same = crossode("compare", "--config", str(config), "--resume", "--timeout", "60")
    assert same.returncode == 1 and len(keys_in(results)) == 2  # --resume keeps them
    bad = crossode("compare", "--config", str(config), "--retry-failed", "timout")
    assert bad.returncode == 2 and "unknown status" in bad.stderr
    again = crossode("compare", "--config", str(config), "--retry-failed", "--timeout", "60")
    assert again.returncode == 0, again.stderr
    assert "2 to retry (crashed, timeout)" in again.stderr
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert [r["status"] for r in lines] == ["timeout", "timeout", "ok", "ok"]  # appended; nothing rewritten
    from crossode.sweep import load_records

    pytest.importorskip("pandas")
    assert sorted(load_records(results)["status"]) == ["ok", "ok"]


@pytest.mark.slow
def test_sigint_says_how_to_resume(write_config, tmp_path):
    """SIGINT printed nothing (issue 15)."""
    config = write_config(CONFIG)
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "crossode", "compare", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_lines(results, 1)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err


@pytest.mark.slow
def test_closed_output_pipe_does_not_kill_the_sweep(write_config, tmp_path):
    """`crossode compare --config ... 2>&1 | head -1` killed the sweep at its second line (issue 15)."""
    config = write_config(CONFIG.replace("rtol = [1e-3, 1e-4, 1e-5, 1e-6]", "rtol = [1e-3, 1e-4, 1e-5]"))
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "crossode", "compare", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    proc.stdout.readline()  # what `head -1` does: read one line, then go away
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    assert len(keys_in(results)) == 3 and all(json.loads(x)["status"] == "ok" for x in
                                              results.read_text().splitlines())


def test_resume_warns_about_garbage_lines(write_config, tmp_path):
    config = write_config(CONFIG.replace("rtol = [1e-3, 1e-4, 1e-5, 1e-6]", "rtol = [1e-3]"))
    results = tmp_path / "results.jsonl"
    results.write_text("this is not a record\n")
    out = crossode("compare", "--config", str(config), "--resume")
    assert out.returncode == 0, out.stderr
    assert "crossode: warning: " in out.stderr and "results.jsonl:1: not a JSON record; line skipped" in out.stderr


def test_resume_on_a_read_only_results_file_is_one_line(write_config, tmp_path):
    """--resume on a read-only results file gave a PermissionError traceback (issue 15)."""
    import ctypes

    config = write_config(CONFIG)
    results = tmp_path / "results.jsonl"
    results.write_text("")
    results.chmod(0o444)

    def as_ordinary_user():  # root ignores file modes: drop CAP_DAC_OVERRIDE for the child
        if os.geteuid() == 0:
            ctypes.CDLL(None, use_errno=True).prctl(24, 1, 0, 0, 0)  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE

    out = subprocess.run([sys.executable, "-m", "crossode", "compare", "--config", str(config), "--resume"],
                         capture_output=True, text=True, timeout=120, preexec_fn=as_ordinary_user)
    assert out.returncode == 2 and "cannot be written (Permission denied" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

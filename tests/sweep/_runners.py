"""Cell runners for the executor tests, imported by real worker processes: the real measurement, preceded by a
misbehaviour chosen through the cell's tags (``act``; only for the cell whose rtol equals the tag ``at``, if set)."""

import os
import signal
import sys
import time

from crossode.sweep._worker import run_cell


def _memory(pid="self") -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            if key in ("VmHWM", "VmRSS", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def act(data):
    tags = data.get("tags") or {}
    what = tags.get("act", "")
    if "at" in tags and data["step"].get("rtol") != tags["at"]:
        what = ""
    at_start = {"memory": _memory(), "threads": len(os.listdir("/proc/self/task")), "pid": os.getpid(),
                "ppid": os.getppid(), "parent_memory": _memory(os.getppid())}
    if what == "segfault":
        sys.stderr.write("about to crash\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)
    elif what == "exit1":
        sys.stderr.write("Traceback: boom\n")
        sys.stderr.flush()
        os._exit(1)
    elif what == "raise":
        raise RuntimeError("the runner failed")
    elif what == "hang":
        sys.stderr.write("hanging\n")
        sys.stderr.flush()
        time.sleep(600)
    elif what == "pid_hang":
        with open(tags["pidfile"], "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(600)
    elif what == "kill_parent":
        os.kill(os.getppid(), signal.SIGKILL)
        time.sleep(600)
    elif what == "kill_worker":  # the process that runs the executor: a Dask worker
        os.kill(int(os.environ["CROSSODE_SWEEP_PARENT"]), signal.SIGKILL)
        time.sleep(600)
    elif what == "sleep":
        time.sleep(float(tags["seconds"]))
    elif what in ("emit", "emit_crash"):  # stream lines (one every `gap` seconds), then finish or segfault
        from crossode.sweep._worker import emit

        for i in range(int(tags["lines"])):
            emit({"i": i, "pid": os.getpid(), "pad": "x" * int(tags.get("pad", 0))})
            time.sleep(float(tags.get("gap", 0)))
        if what == "emit_crash":
            os.kill(os.getpid(), signal.SIGSEGV)
    rec = run_cell(data)
    rec.tags["at_start"] = at_start
    rec.tags["omp_threads"] = os.environ.get("OMP_NUM_THREADS")
    if "torch" in sys.modules:
        rec.tags["torch_threads"] = sys.modules["torch"].get_num_threads()
    return rec

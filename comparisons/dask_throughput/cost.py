"""Cells of known cost for the throughput study (the workers' runner, this folder on PYTHONPATH):

- ``cost:busy`` spins the CPU for ``tags.cost_s`` seconds of process time (compute-bound: shares cores);
- ``cost:idle`` sleeps ``tags.cost_s`` seconds of wall time (isolates what the executor itself adds per cell);

then each measures its (millisecond) cell as usual."""

import time

from crossode.sweep._worker import run_cell


def busy(data):
    end = time.process_time() + float(data["tags"]["cost_s"])
    x = 0
    while time.process_time() < end:
        for i in range(10000):
            x += i * i
    return _measure(data)


def idle(data):
    time.sleep(float(data["tags"]["cost_s"]))
    return _measure(data)


def _measure(data):
    rec = run_cell(data)
    rec.tags["cost_s"] = float(data["tags"]["cost_s"])
    return rec

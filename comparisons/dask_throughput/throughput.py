"""Sweep throughput on Dask: 1 vs 2 workers on this machine with cells of known cost, and what it predicts for N.

Cells: ``--cells`` copies (replicates) of a millisecond cell (exponential decay, reference backend) that first
*sleep* (``cost:idle``: what the executor adds per cell, unaffected by other load) or *spin the CPU* (``cost:busy``:
compute-bound, shares the cores) for ``--cost`` seconds (``cost.py``). Contenders, one after the other: the local
executor with 1 and 2 jobs and Dask ``LocalCluster`` s of 1 and 2 worker processes (``DaskExecutor(workers=n)``).
For each: the wall time to the first finished cell (cluster start, worker imports, fork templates) and the steady
rate after it. Then the two client-side costs that bound any cluster: appending one record to the fsynced JSONL,
and one Dask task (submit -> result on the client, no-op tasks). Model: a worker finishes a cell every
``t_cell = cost + o`` (``o``: the per-cell overhead measured with sleeping cells on one Dask worker), so N workers
give ``N / t_cell`` cells/s until the client's per-cell cost ``r`` caps it at ``1 / r``.

    python comparisons/dask_throughput/throughput.py [--cells 16 --cost 1.0]   # writes results.json, throughput.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["PYTHONPATH"] = str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")  # workers import cost.py


def cells(n: int, cost: float, kind: str = ""):
    from crossode.sweep import config_from_dict

    return config_from_dict({"problems": ["exponential_decay"], "backends": ["reference"], "rtol": [1e-6],
                             "repeats": 1, "with_reference": False, "replicates": n,
                             "tags": {"cost_s": cost, "kind": kind}}).cells


def timed(executor, todo) -> dict:
    start = time.perf_counter()
    done = []
    overhead = []
    for _, rec in executor.run(todo):
        assert rec.status == "ok", rec.message
        done.append(time.perf_counter() - start)
        overhead.append(rec.tags["worker_wall_s"] - rec.tags["cost_s"])
    first, last = done[0], done[-1]
    return {"wall_s": round(last, 3), "first_done_s": round(first, 3),
            "steady_cells_per_s": round((len(done) - 1) / (last - first), 4),
            "steady_s_per_cell_per_worker": round(executor.jobs * (last - first) / (len(done) - 1), 4),
            "median_worker_overhead_s": round(sorted(overhead)[len(overhead) // 2], 4), "cells": len(done)}


def client_costs(tmp: pathlib.Path, n_records: int = 300, n_tasks: int = 300) -> dict:
    import distributed

    from crossode.sweep import ResultStore
    from crossode.sweep._worker import run_cell

    rec = run_cell(cells(1, 0.0)[0].to_json())
    with ResultStore(tmp / "append.jsonl") as store:
        t = time.perf_counter()
        for _ in range(n_records):
            store.append(rec)
        append = (time.perf_counter() - t) / n_records
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as c, distributed.Client(c) as client:
        client.wait_for_workers(2)
        client.submit(abs, -1).result()  # warm
        t = time.perf_counter()
        futs = [client.submit(abs, -i, pure=False) for i in range(n_tasks)]
        for _ in distributed.as_completed(futs):
            pass
        task = (time.perf_counter() - t) / n_tasks
    return {"append_fsync_s": round(append, 5), "dask_task_s": round(task, 5)}


def figure(res: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cost = res["cost_s"]
    t_cell = cost + res["worker_overhead_s"]
    r = res["client_cost_per_cell_s"]
    import numpy as np
    from matplotlib.ticker import FuncFormatter

    ns = [2 ** k for k in range(0, 11)]
    dense = np.logspace(0, 10, 400, base=2)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    ax.plot(dense, np.minimum(dense / t_cell, 1 / r), "-", color="0.35",
            label=f"model: min(N / {t_cell:.2f} s, 1 / {1e3 * r:.1f} ms)")
    ax.axhline(1 / r, color="0.6", ls=":", lw=1)
    ax.annotate(f"client bound 1/r = {1 / r:.0f} cells/s (fsync append + Dask task)",
                (ns[0], 1 / r), xytext=(0, 5), textcoords="offset points", fontsize=9, color="0.35")
    styles = {"dask": ("o", "Dask LocalCluster"), "local": ("s", "local executor (--jobs N)")}
    kinds = {"idle": ("C0", "sleeping"), "busy": ("C3", "CPU-bound")}
    for kind, (marker, label) in styles.items():
        for cost_kind, (color, what) in kinds.items():
            pts = sorted((int(k.split("_")[1]), v["steady_cells_per_s"]) for k, v in res["runs"].items()
                         if k.startswith(kind) and k.endswith(cost_kind))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, color=color, ms=8,
                    mfc=color if kind == "dask" else "none", label=f"{label}, {what} cells")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("workers N (one cell at a time each)")
    ax.set_ylabel("steady throughput (cells / s)")
    ax.set_title(f"Sweep throughput with cells of {cost:g} s: measured at N = 1, 2 on a shared {res['cpus']}-core VM\n"
                 f"(load average {res['loadavg_at_start'].split()[0]}), the model beyond", fontsize=10)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.savefig(path, dpi=130)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=16)
    p.add_argument("--cost", type=float, default=1.0, help="seconds each cell sleeps / spins the CPU")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--figure", default=str(HERE / "throughput.png"))
    p.add_argument("--plot-only", action="store_true", help="redraw the figure from --out")
    args = p.parse_args(argv)
    if args.plot_only:  # re-derive the model from the stored measurements and redraw
        res = json.loads(pathlib.Path(args.out).read_text())
        predict(res)
        pathlib.Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
        figure(res, pathlib.Path(args.figure))
        return 0
    res = run(args, "python comparisons/dask_throughput/throughput.py " + " ".join(sys.argv[1:] if argv is None
                                                                                   else argv))
    pathlib.Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    figure(res, pathlib.Path(args.figure))
    print(json.dumps(res, indent=2))
    return 0


def predict(res: dict) -> None:
    """Fill in the model's predictions from the measured overheads (see the module docstring)."""
    cost = res["cost_s"]
    one = res["runs"]["dask_1_idle"]
    res["worker_overhead_s"] = round(one["steady_s_per_cell_per_worker"] - cost, 4)  # launch + cell + scheduling
    res["client_cost_per_cell_s"] = round(res["client"]["append_fsync_s"] + res["client"]["dask_task_s"], 5)
    t_cell = cost + res["worker_overhead_s"]
    r = res["client_cost_per_cell_s"]
    res["prediction"] = {str(n): {"cells_per_s": round(min(n / t_cell, 1 / r), 2),
                                  "sweep_of_1000_cells_s": round(max(math.ceil(1000 / n) * t_cell, 1000 * r), 1)}
                         for n in (1, 2, 8, 32, 128, 512)}
    res["saturation_workers"] = round(t_cell / r)


def run(args, command: str) -> dict:
    from crossode.sweep import DaskExecutor, LocalExecutor

    res = {"command": command,
           "cells": args.cells, "cost_s": args.cost, "cpus": os.cpu_count(), "runs": {}}
    with open("/proc/loadavg") as fh:
        res["loadavg_at_start"] = " ".join(fh.read().split()[:3])
    for kind in ("idle", "busy"):
        todo = cells(args.cells, args.cost, kind)
        runner = f"cost:{kind}"
        for name, make in [("local_1", lambda: LocalExecutor(jobs=1, runner=runner)),
                           ("dask_1", lambda: DaskExecutor(workers=1, runner=runner)),
                           ("local_2", lambda: LocalExecutor(jobs=2, runner=runner)),
                           ("dask_2", lambda: DaskExecutor(workers=2, runner=runner))]:
            res["runs"][f"{name}_{kind}"] = timed(make(), todo)
            print(name, kind, res["runs"][f"{name}_{kind}"], file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res["client"] = client_costs(pathlib.Path(tmp))
    with open("/proc/loadavg") as fh:
        res["loadavg_at_end"] = " ".join(fh.read().split()[:3])
    predict(res)
    return res


if __name__ == "__main__":
    sys.exit(main())

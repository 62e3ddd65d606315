"""Sweep start-up overhead before and after the fork templates (issue 13): one 18-cell sweep of millisecond cells.

Contenders, run one after the other in one session (never in parallel), in the order given by ``--rounds``:

- ``before``: the ``crossode`` of another checkout (``--before-tree DIR``, e.g. ``git archive <commit> | tar -x -C
  DIR``): a fresh interpreter per cell, the time limit counted from the process start;
- ``spawn``: this tree with ``[executor] start = "spawn"`` (a fresh interpreter per cell, no interpreter teardown,
  the limit counted from the cell's start);
- ``fork``: this tree's default (cells forked from a pre-imported torch / JAX template).

Each runs ``crossode compare --config sweep.toml`` (``--jobs 1``) as a subprocess; we record the sweep's wall time,
the per-cell worker wall time (``tags.worker_wall_s``) and, for this tree, the start-up (``tags.startup_s``: launch to
the cell's own start). A second pass runs ``before`` and ``fork`` with ``--timeout 4`` and counts the cells killed.

    python comparisons/sweep_startup/measure.py --before-tree /tmp/before [--out comparisons/sweep_startup/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
TREE = HERE.parents[1]


def run(tree: pathlib.Path, config: pathlib.Path, out: pathlib.Path, extra=()) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # and cwd=tree: `python -m` puts the cwd first on sys.path
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "crossode", "compare", "--config", str(config), "--out", str(out),
                           "--jobs", "1", *extra], env=env, cwd=tree, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: crossode compare failed:\n{proc.stderr[-2000:]}")
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    cells = [r["tags"].get("worker_wall_s") for r in recs]
    startup = [r["tags"]["startup_s"] for r in recs if "startup_s" in r["tags"]]
    statuses: dict[str, int] = {}
    for r in recs:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    by_backend = {}
    for b in sorted({r["backend"] for r in recs}):
        walls = [r["tags"]["worker_wall_s"] for r in recs if r["backend"] == b]
        by_backend[b] = {"median_cell_wall_s": round(statistics.median(walls), 3)}
        st = [r["tags"]["startup_s"] for r in recs if r["backend"] == b and "startup_s" in r["tags"]]
        if st:
            by_backend[b]["median_startup_s"] = round(statistics.median(st), 3)
        peak = [r["peak_memory_bytes"] for r in recs if r["backend"] == b and r["peak_memory_bytes"] is not None]
        if peak:
            by_backend[b]["median_peak_memory_mb"] = round(statistics.median(peak) / 1e6, 3)
        comp = [r["compile_s"] for r in recs if r["backend"] == b and r["compile_s"] is not None]
        if comp:
            by_backend[b]["median_compile_s"] = round(statistics.median(comp), 3)
    return {"sweep_wall_s": round(wall, 2), "cells": len(recs), "wall_per_cell_s": round(wall / len(recs), 3),
            "sum_cell_wall_s": round(sum(cells), 2), "median_startup_s": round(statistics.median(startup), 3)
            if startup else None, "statuses": statuses, "by_backend": by_backend,
            "start_methods": sorted({r["tags"].get("start_method", "spawn (before)") for r in recs})}


def load() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before-tree", required=True, help="checkout of the code to compare with")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--order", default="before,spawn,fork", help="contenders in the order they run")
    p.add_argument("--skip-timeout-pass", action="store_true")
    args = p.parse_args(argv)
    before = pathlib.Path(args.before_tree).resolve()
    trees = {"before": before, "spawn": TREE, "fork": TREE}
    result = {"command": "python comparisons/sweep_startup/measure.py " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpus": os.cpu_count()}, "runs": [], "timeout_4s": []}
    with tempfile.TemporaryDirectory(prefix="sweep-startup-") as tmp:
        tmp = pathlib.Path(tmp)
        base = (HERE / "sweep.toml").read_text()
        configs = {"before": HERE / "sweep.toml", "fork": HERE / "sweep.toml"}
        configs["spawn"] = tmp / "spawn.toml"
        configs["spawn"].write_text(base + '\n[executor]\nstart = "spawn"\n')
        for i, name in enumerate(args.order.split(",")):
            at_start = load()
            print(f"[{name}] load {at_start} ...", file=sys.stderr, flush=True)
            res = run(trees[name], configs[name], tmp / f"{i}-{name}.jsonl")
            res.update(contender=name, load_at_start=at_start, load_after=load())
            print(json.dumps(res), file=sys.stderr, flush=True)
            result["runs"].append(res)
        if not args.skip_timeout_pass:
            for name in ("before", "fork"):
                at_start = load()
                print(f"[{name} --timeout 4] load {at_start} ...", file=sys.stderr, flush=True)
                res = run(trees[name], configs[name], tmp / f"t4-{name}.jsonl", ["--timeout", "4"])
                res.update(contender=name, load_at_start=at_start, load_after=load())
                print(json.dumps(res), file=sys.stderr, flush=True)
                result["timeout_4s"].append(res)
    pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

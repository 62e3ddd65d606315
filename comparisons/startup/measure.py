"""Start-up latency of ``import crossode`` and the light CLI commands against ``import numpy`` (issue 13 §1).

Every contender is a fresh interpreter (``subprocess``), run from an empty folder so only ``PYTHONPATH`` decides
which crossode is imported. Contenders are interleaved: each repeat runs every contender once, in an order rotated
from repeat to repeat, so machine load hits all of them alike. Reports min and median wall seconds and the ratios
of each contender to ``import numpy`` (the issue's target: ``import crossode`` within 1.5x).

    python comparisons/startup/measure.py [--repeats 15] [--before-tree DIR] [--out results.json]

``--before-tree`` adds ``import crossode`` from another checkout (e.g. ``git archive <commit> | tar -x -C DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
TREE = HERE.parents[1]


def contenders(before: str | None) -> dict[str, tuple[list[str], str]]:
    """name -> (argv, PYTHONPATH)."""
    py, tree = sys.executable, str(TREE)
    out = {
        "python -c pass": ([py, "-c", "pass"], tree),
        "import numpy": ([py, "-c", "import numpy"], tree),
        "import crossode": ([py, "-c", "import crossode"], tree),
        "crossode --help": ([py, "-m", "crossode", "--help"], tree),
        "crossode info": ([py, "-m", "crossode", "info"], tree),
    }
    if before:
        out["import crossode (before)"] = ([py, "-c", "import crossode"], str(pathlib.Path(before).resolve()))
    return out


def run_once(argv: list[str], pythonpath: str, cwd: str) -> float:
    # Bytecode as an installed package has it: written once by the untimed warm-up run into a private cache
    # (PYTHONPYCACHEPREFIX, for numpy's and crossode's modules alike), never recompiled from source per run.
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONPYCACHEPREFIX": os.path.join(cwd, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--before-tree", default=None)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    cs = contenders(args.before_tree)
    names = list(cs)
    times: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as cwd:
        for n in names:  # warm the file cache once, not timed
            run_once(*cs[n], cwd)
        for r in range(args.repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                times[n].append(run_once(*cs[n], cwd))
    base_min, base_med = min(times["import numpy"]), statistics.median(times["import numpy"])
    rows = {n: {"min_s": min(v), "median_s": statistics.median(v), "ratio_min_to_numpy": min(v) / base_min,
                "ratio_median_to_numpy": statistics.median(v) / base_med, "runs_s": v} for n, v in times.items()}
    result = {"command": " ".join(["python", "comparisons/startup/measure.py", *sys.argv[1:]]),
              "repeats": args.repeats, "python": platform.python_version(), "machine": platform.machine(),
              "load_average": os.getloadavg(), "contenders": rows}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'contender':28s} {'min s':>7s} {'median s':>9s} {'min/numpy':>10s} {'median/numpy':>13s}")
    for n, row in rows.items():
        print(f"{n:28s} {row['min_s']:7.3f} {row['median_s']:9.3f} {row['ratio_min_to_numpy']:10.2f} "
              f"{row['ratio_median_to_numpy']:13.2f}")


if __name__ == "__main__":
    main()

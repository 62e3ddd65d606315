"""Time the independent reference on the scale problem: batch 256, MLP 32-128-128-32 tanh (24,864 parameters).

    python comparisons/reference/time_reference.py [--threads 1,2] [--repeats 2] [--t1 1,16] [--out results.json]

Each (threads, t1) cell runs in a fresh process with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS`` set before NumPy
is imported (BLAS threads), computing ``crossode.reference(problem, cache=False)`` (method ``auto`` = ``adjoint`` at
this size) ``repeats`` times, interleaved over the cells; min and median are reported with the number of field
evaluations. One directional central finite difference of the reference loss checks each gradient (``fd_rel``:
|g.v - FD| / |FD|, limited by the difference step, ~1e-7).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import crossode as co
t1 = float(sys.argv[1]); check = sys.argv[2] == "1"
p = co.get_problem("mlp_fit", batch=256, widths=[32, 128, 128, 32], time_input=False, t1=t1)
start = time.perf_counter()
r = co.reference(p, cache=False)
out = dict(time_s=time.perf_counter() - start, method=r.method, nfe=r.nfe, n_params=p.n_params, loss=r.loss)
if check:
    rng = np.random.default_rng(0)
    v = rng.standard_normal(p.n_params + p.y0.size)
    v /= np.linalg.norm(v)
    h = 1e-4 * float(np.linalg.norm(np.concatenate([p.params, p.y0.ravel()]))) / np.sqrt(v.size)
    x = np.concatenate([p.params, p.y0.ravel()])
    def loss(z):
        q = p.remake(params=z[: p.n_params], y0=z[p.n_params:].reshape(p.y0.shape))
        return co.reference(q, cache=False).loss  # the adjoint method's forward solve gives the loss
    fd = (loss(x + h * v) - loss(x - h * v)) / (2 * h)
    out["fd_rel"] = abs(float(r.grad @ v) - fd) / abs(fd)
print(json.dumps(out))
"""


def run_cell(threads: int, t1: float, check: bool) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), CROSSODE_CACHE="off")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", CHILD, str(t1), "1" if check else "0"], env=env, capture_output=True,
                         text=True, timeout=1800, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--t1", default="1")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cells = [(int(th), float(t)) for t in args.t1.split(",") for th in args.threads.split(",")]
    runs: dict = {c: [] for c in cells}
    for rep in range(args.repeats):
        for c in cells:  # interleaved
            runs[c].append(run_cell(*c, check=(rep == 0)))
    rows = []
    print("| BLAS threads | t1 | method | field evaluations (fwd + bwd) | min s | median s | FD check |")
    print("|---|---|---|---|---|---|---|")
    for (th, t1), rs in runs.items():
        times = [r["time_s"] for r in rs]
        row = dict(threads=th, t1=t1, method=rs[0]["method"], nfe=rs[0]["nfe"], min_s=min(times),
                   median_s=statistics.median(times), fd_rel=rs[0].get("fd_rel"), n_params=rs[0]["n_params"],
                   times_s=times)
        rows.append(row)
        print(f"| {th} | {t1:g} | {row['method']} | {row['nfe']} | {row['min_s']:.2f} | {row['median_s']:.2f} | "
              f"{row['fd_rel']:.1e} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(dict(rows=rows, cpus=os.cpu_count(), load=os.getloadavg()), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

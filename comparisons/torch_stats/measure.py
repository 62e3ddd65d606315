"""What ``stats=`` costs ``crossode.torch.odeint`` with ``Direct`` (issue 13 §2): forward + backward time with a
``Stats`` to fill over the time without, before (one autograd hook per evaluation) and after (one hook per solve).

    python comparisons/torch_stats/measure.py --before-tree DIR [--rounds 5] [--repeats 15]

``DIR`` is a checkout of the code before the change (``git archive <commit> | tar -x -C DIR``). Each round runs
one worker process per tree, alternating which tree goes first; inside a worker, calls with and without ``stats``
alternate (``--repeats`` of each, after warm-up) and the worker reports the median of each. The overhead of a
round is median(with stats) / median(without); the table gives, per case and tree, the median over rounds. One
thread (``torch.set_num_threads(1)``), CPU, float64.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
TREE = HERE.parents[1]

WORKER = r"""
import json, statistics, sys, time
import torch
import crossode as co
from crossode.torch import odeint

torch.set_num_threads(1)
repeats = int(sys.argv[1])


def mlp(width, batch):
    torch.manual_seed(0)  # the same weights in every worker
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 4)).double()
    y0 = torch.randn(batch, 4, generator=g, dtype=torch.float64, requires_grad=True)
    return (lambda t, y: net(y)), y0


def decay():
    k = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
    return (lambda t, y: -k * y), torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)


CASES = {
    "decay (n=2), dopri5 rtol 1e-8": (decay, co.Dopri5(), co.Adaptive(rtol=1e-8, atol=1e-10)),
    "MLP 4-16-4 x8, dopri5 rtol 1e-6": (lambda: mlp(16, 8), co.Dopri5(), co.Adaptive(rtol=1e-6, atol=1e-8)),
    "MLP 4-64-4 x64, dopri5 rtol 1e-6": (lambda: mlp(64, 64), co.Dopri5(), co.Adaptive(rtol=1e-6, atol=1e-8)),
    "MLP 4-16-4 x8, rk4 dt 0.01": (lambda: mlp(16, 8), co.RK4(), co.Fixed(0.01)),
    "MLP 4-16-4 x8, ALF rtol 1e-4": (lambda: mlp(16, 8), co.ALF(), co.Adaptive(rtol=1e-4, atol=1e-6)),
}
t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
out = {}
for name, (make, solver, step) in CASES.items():
    func, y0 = make()

    def once(with_stats):
        st = co.Stats() if with_stats else None
        t0 = time.perf_counter()
        ys = odeint(func, y0, t, solver=solver, step=step, stats=st)
        ys.pow(2).sum().backward()
        dt = time.perf_counter() - t0
        return dt, st

    for _ in range(3):
        once(True), once(False)
    with_s, without = [], []
    for _ in range(repeats):
        with_s.append(once(True)[0])
        without.append(once(False)[0])
    st = once(True)[1]
    out[name] = {"with_stats_s": statistics.median(with_s), "without_s": statistics.median(without),
                 "nfe_forward": st.nfe_forward, "nfe_backward": st.nfe_backward}
print(json.dumps(out))
"""


def worker(tree: str, repeats: int) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", WORKER, str(repeats)], env=env, capture_output=True, text=True,
                         check=True, timeout=1800, cwd="/")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before-tree", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()
    trees = {"before": str(pathlib.Path(args.before_tree).resolve()), "after": str(TREE)}
    rounds: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(args.rounds):
        order = list(trees) if r % 2 == 0 else list(trees)[::-1]
        for k in order:
            rounds[k].append(worker(trees[k], args.repeats))
            print(f"round {r + 1}/{args.rounds}: {k} done", file=sys.stderr)
    table = {}
    for case in rounds["after"][0]:
        row = {}
        for k in trees:
            ratios = [rd[case]["with_stats_s"] / rd[case]["without_s"] for rd in rounds[k]]
            row[k] = {"overhead_median": statistics.median(ratios), "overhead_rounds": ratios,
                      "without_s_median": statistics.median(rd[case]["without_s"] for rd in rounds[k]),
                      "nfe_forward": rounds[k][0][case]["nfe_forward"],
                      "nfe_backward": rounds[k][0][case]["nfe_backward"]}
        table[case] = row
    result = {"command": " ".join(["python", "comparisons/torch_stats/measure.py", *sys.argv[1:]]),
              "rounds": args.rounds, "repeats": args.repeats, "load_average": os.getloadavg(), "cases": table}
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'case':36s} {'before: stats/none':>19s} {'after: stats/none':>18s} {'NFE fwd/bwd (before | after)':>30s}")
    for case, row in table.items():
        b, a = row["before"], row["after"]
        print(f"{case:36s} {b['overhead_median']:19.3f} {a['overhead_median']:18.3f} "
              f"{b['nfe_forward']:>8}/{b['nfe_backward']:<6} | {a['nfe_forward']}/{a['nfe_backward']}")


if __name__ == "__main__":
    main()

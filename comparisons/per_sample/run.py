"""What per-sample step sizes save on a batch with mixed time scales (issue 14 §5).

Two workloads, each run with ``Adaptive(batch_steps="shared")`` and ``Adaptive(batch_steps="per_sample")``
interleaved in one process (rounds alternate the order), so the time ratios compare like with like:

A. ``duffing``: the neutral problem ``mixed_oscillators.toml`` (Duffing oscillators whose frequency ``w`` is a
   state, ``w' = 0``) at batch 64, 4 fast samples (``w = 25``) and 60 slow ones (``w = 1``), through
   ``crossode.measure``: every cell's gradient error against the independent reference, NFE, steps, time per
   gradient (median of the cell's repeats). Methods: dopri5 + Direct, ALF + Direct, ALF + MALI.
B. ``neural``: a neural ODE ``f(t, [x, w]) = w * MLP(x)`` (MLP 16-128-128-16, tanh; ``w`` per sample, 8 of 256
   samples fast) through ``crossode.torch.odeint``, dopri5 + Direct and ALF + MALI: time per gradient
   (``loss.backward()`` included), NFE; the per-sample gradient is compared with the shared one (both
   approximate the same exact gradient; no independent reference for this field).

NFE columns: ``nfe_f`` = batched calls of f in the forward pass (for shared steps every call evaluates the whole
batch); ``evals_per_sample`` = the evaluations one sample received on average (``Stats.per_sample
['nfe_forward_mean']``; equal to ``nfe_f`` for shared steps): the arithmetic saved. Ratios are per_sample / shared.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python comparisons/per_sample/run.py [--quick]   (about 5 minutes on 1 core)
Writes results/per_sample.csv, results/per_sample.json, results/per_sample.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import crossode as co  # noqa: E402
from crossode._problemfile import load_problem_file  # noqa: E402

RESULTS = os.path.join(HERE, "results")
MODES = ("shared", "per_sample")


def duffing_problem(batch: int, fast: int, w_fast: float = 25.0, seed: int = 0):
    """The problem file's field with a ``batch`` of random ``(x, v)``, ``fast`` samples at ``w_fast``, others 1."""
    base = load_problem_file(os.path.join(HERE, "mixed_oscillators.toml"))
    rng = np.random.default_rng(seed)
    y0 = np.concatenate([rng.uniform(-1, 1, size=(batch, 2)), np.ones((batch, 1))], axis=1)
    y0[rng.choice(batch, size=fast, replace=False), 2] = w_fast
    return base.remake(y0=y0, name=f"duffing_b{batch}_fast{fast}")


def run_duffing(rounds: int, repeats: int, batch: int, fast: int) -> list[dict]:
    problem = duffing_problem(batch, fast)
    cells = [("dopri5", "direct", 1e-6, 1e-8), ("alf", "direct", 1e-4, 1e-6), ("alf", "mali", 1e-4, 1e-6)]
    rows = []
    for solver, sens, rtol, atol in cells:
        times = {m: [] for m in MODES}
        recs = {}
        for r in range(rounds):
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                step = co.Adaptive(rtol=rtol, atol=atol, batch_steps=mode)
                rec = co.measure(problem, "torch", co.solver_from_name(solver), co.sensitivity_from_name(sens),
                                 step, repeats=repeats, with_reference=(r == 0))
                if rec.status not in ("ok", "inaccurate"):
                    raise SystemExit(f"{solver}+{sens} {mode}: {rec.status}: {rec.message}")
                times[mode].append(rec.time_gradient_s)
                recs.setdefault(mode, rec)
        for mode in MODES:
            rec = recs[mode]
            ps = rec.per_sample or {}
            rows.append({
                "workload": "duffing", "batch": batch, "fast": fast, "method": f"{solver}+{sens}", "rtol": rtol,
                "batch_steps": mode, "status": rec.status, "grad_error": rec.grad_error,
                "nfe_f": rec.nfe_forward, "nfe_b": rec.nfe_backward,
                "evals_per_sample": ps.get("nfe_forward_mean", rec.nfe_forward),
                "steps_max": rec.steps_accepted, "steps_min": ps.get("steps_accepted_min", rec.steps_accepted),
                "grad_s_min": min(times[mode]), "grad_s_median": statistics.median(times[mode]),
            })
    return rows


def neural_field(n: int, width: int, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(n, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                              torch.nn.Tanh(), torch.nn.Linear(width, n)).double()

    class Field(torch.nn.Module):
        """``f(t, [x, w]) = [w * MLP(x), 0]``: a per-sample time scale ``w`` (the last column)."""

        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, t, y):
            x, w = y[:, :-1], y[:, -1:]
            return torch.cat([w * self.mlp(x), torch.zeros_like(w)], dim=1)

    return Field()


def run_neural(rounds: int, batch: int, fast: int, n: int = 16, width: int = 128) -> list[dict]:
    import torch

    from crossode.torch import odeint

    field = neural_field(n, width)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(batch, n, generator=g, dtype=torch.float64)
    w = torch.ones(batch, 1, dtype=torch.float64)
    w[torch.randperm(batch, generator=g)[:fast]] = 20.0
    y0 = torch.cat([x0, w], dim=1)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    cells = [("dopri5", "direct", 1e-6, 1e-8), ("alf", "mali", 1e-4, 1e-6)]
    rows = []
    for solver, sens, rtol, atol in cells:
        times = {m: [] for m in MODES}
        out = {}
        for r in range(rounds + 1):  # round 0 is a warm-up
            for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                step = co.Adaptive(rtol=rtol, atol=atol, batch_steps=mode)
                stats = co.Stats()
                y = y0.clone().requires_grad_(True)
                field.zero_grad()
                start = time.perf_counter()
                ys = odeint(field, y, t, solver=co.solver_from_name(solver), sensitivity=co.sensitivity_from_name(sens),
                            step=step, stats=stats)
                loss = 0.5 * ys[1:, :, :-1].square().sum()
                loss.backward()
                elapsed = time.perf_counter() - start
                if r:
                    times[mode].append(elapsed)
                grad = torch.cat([y.grad.ravel()] + [p.grad.ravel() for p in field.parameters()])
                out[mode] = (stats, grad)
        ref = out["shared"][1]
        for mode in MODES:
            stats, grad = out[mode]
            ps = stats.per_sample or {}
            rows.append({
                "workload": "neural", "batch": batch, "fast": fast, "method": f"{solver}+{sens}", "rtol": rtol,
                "batch_steps": mode, "status": "ok",
                "grad_diff_vs_shared": float((grad - ref).norm() / ref.norm()),
                "nfe_f": stats.nfe_forward, "nfe_b": stats.nfe_backward,
                "evals_per_sample": ps.get("nfe_forward_mean", stats.nfe_forward),
                "steps_max": stats.steps_accepted, "steps_min": ps.get("steps_accepted_min", stats.steps_accepted),
                "grad_s_min": min(times[mode]), "grad_s_median": statistics.median(times[mode]),
            })
    return rows


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    key = lambda r: (r["workload"], r["method"])  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r["batch_steps"]] = r
    for (workload, method), d in by.items():
        s, p = d["shared"], d["per_sample"]
        out.append({"workload": workload, "method": method,
                    "nfe_f_ratio": p["nfe_f"] / s["nfe_f"],
                    "evals_per_sample_ratio": p["evals_per_sample"] / s["evals_per_sample"],
                    "time_ratio_min": p["grad_s_min"] / s["grad_s_min"],
                    "time_ratio_median": p["grad_s_median"] / s["grad_s_median"]})
    return out


def markdown(rows: list[dict]) -> str:
    """A markdown table of ``rows`` (numbers to 4 significant digits)."""
    cols = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(x):
        return f"{x:.4g}" if isinstance(x, float) else ("" if x is None else str(x))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    import pandas as pd
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds and smaller batches (a smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rounds = 2 if args.quick else 4
    rows = run_duffing(rounds, repeats=1 if args.quick else 2, batch=16 if args.quick else 64,
                       fast=1 if args.quick else 4)
    rows += run_neural(rounds, batch=32 if args.quick else 256, fast=1 if args.quick else 8)
    rat = ratios(rows)
    os.makedirs(RESULTS, exist_ok=True)
    df, dr = pd.DataFrame(rows), pd.DataFrame(rat)
    df.to_csv(os.path.join(RESULTS, "per_sample.csv"), index=False)
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "quick": args.quick}
    with open(os.path.join(RESULTS, "per_sample.json"), "w") as fh:
        json.dump({"machine": info, "rows": rows, "ratios": rat}, fh, indent=1)
    with open(os.path.join(RESULTS, "per_sample.md"), "w") as fh:
        fh.write(f"# per-sample vs shared steps ({'quick' if args.quick else 'full'} run)\n\n")
        fh.write(f"machine: {info}\n\n## cells\n\n{markdown(rows)}\n\n")
        fh.write(f"## ratios per_sample / shared\n\n{markdown(rat)}\n")
    print(df.to_string(index=False))
    print(dr.to_string(index=False))


if __name__ == "__main__":
    main()

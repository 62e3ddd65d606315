"""Function evaluations per accepted step: crossode MALI vs TorchDiffEqPack MALI (mali.md §9, §8 item 6).

Counts are taken inside the shared ``nn.Module`` (see ``_common.Field``): calls of ``forward`` during the forward
solve, calls during ``loss.backward()``, and backward passes through an evaluation's output (VJPs of f). Accepted
steps: crossode's ``Stats.steps_accepted``; for TorchDiffEqPack (whose counters count steps, not evaluations,
mali.md §8 item 7) the number of one-step VJPs in the backward minus the one VJP of v0 = f(t0, y0), which equals
the number of accepted steps. Cross-checked on the fixed-step variant, where the step count is known (T / h).

Targets (issue 3): crossode MALI 1 forward evaluation and 2 backward (1 evaluation + 1 VJP) per accepted step.

Run:  OMP_NUM_THREADS=1 .venv/bin/python comparisons/mali/nfe.py      (under a minute)
Writes results/nfe.csv, results/nfe.json, results/nfe.md.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from _common import RESULTS, co, co_odeint, machine_info, make_problem, one_gradient  # noqa: E402

RTOLS = [1e-3, 1e-4, 1e-5, 1e-6]
FIXED_H = 0.01


def counted(field, fwd, y0):
    field.counting = True
    field.reset()
    box = {}

    def f():
        y = fwd()
        box["fe"], box["fv"] = field.evals, field.vjps
        field.reset()
        return y

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            one_gradient(f, field, y0)
    finally:
        field.counting = False
    return box["fe"], field.evals, field.vjps


def main():
    rows = []
    for name in ("linear", "mlp"):
        problem, field = make_problem(name)
        t = torch.tensor([problem.t0, problem.t1], dtype=torch.float64)
        cases = [(f"rtol {r:.0e}", co.Adaptive(rtol=r, atol=r, max_steps=10**6),
                  {"method": "sym12async", "h": None, "rtol": r, "atol": r}) for r in RTOLS]
        cases.append((f"fixed h={FIXED_H}", co.Fixed(FIXED_H),
                      {"method": "fixedstep_sym12async", "h": FIXED_H, "rtol": 1e-3, "atol": 1e-3}))
        for label, step, opts in cases:
            y0 = torch.tensor(problem.y0, dtype=torch.float64, requires_grad=True)
            st = co.Stats()
            fe, be, bv = counted(field, lambda: co_odeint(field, y0, t, solver=co.ALF(), sensitivity=co.MALI(),
                                                         step=step, stats=st)[-1], y0)
            n = st.steps_accepted
            rows.append({"problem": name, "case": label, "library": "crossode", "steps_accepted": n,
                         "steps_rejected": st.steps_rejected, "fwd_evals": fe, "bwd_evals": be, "bwd_vjps": bv,
                         "stats_nfe_forward": st.nfe_forward, "stats_nfe_backward": st.nfe_backward,
                         "fwd_per_step": fe / n, "bwd_per_step": (be + bv) / n,
                         "bwd_evals_per_step": be / n, "bwd_vjps_per_step": bv / n})
            from TorchDiffEqPack import odesolve_adjoint_sym12

            y0 = torch.tensor(problem.y0, dtype=torch.float64, requires_grad=True)
            o = dict(opts, t0=problem.t0, t1=problem.t1, print_neval=False, neval_max=5e5)
            fe, be, bv = counted(field, lambda: odesolve_adjoint_sym12(field, y0, options=dict(o)), y0)
            n = bv - 1
            expected = round((problem.t1 - problem.t0) / FIXED_H) if opts["h"] == FIXED_H else None
            rows.append({"problem": name, "case": label, "library": "TorchDiffEqPack", "steps_accepted": n,
                         "steps_expected_fixed": expected, "fwd_evals": fe, "bwd_evals": be, "bwd_vjps": bv,
                         "fwd_per_step": fe / n, "bwd_per_step": (be + bv) / n,
                         "bwd_evals_per_step": be / n, "bwd_vjps_per_step": bv / n})
    lines = ["| problem | case | library | accepted (rejected) steps | f-evals fwd | f-evals bwd | VJPs bwd | "
             "fwd per step | bwd (evals + VJPs) per step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        steps = f"{r['steps_accepted']}" + (f" ({r['steps_rejected']})" if r.get("steps_rejected") is not None
                                            else " (inferred)")
        lines.append(f"| {r['problem']} | {r['case']} | {r['library']} | {steps} | {r['fwd_evals']} | "
                     f"{r['bwd_evals']} | {r['bwd_vjps']} | {r['fwd_per_step']:.3f} | {r['bwd_per_step']:.3f} "
                     f"({r['bwd_evals_per_step']:.2f} + {r['bwd_vjps_per_step']:.2f}) |")
    md = "\n".join(lines)
    fixed_checks = [r for r in rows if r.get("steps_expected_fixed") is not None]
    md += "\n\nTorchDiffEqPack inferred steps vs T/h on the fixed grid: " + ", ".join(
        f"{r['problem']} {r['steps_accepted']} vs {r['steps_expected_fixed']}" for r in fixed_checks)
    md += ("\n\ncrossode Stats agree with the in-module counts: " + ", ".join(
        f"{r['problem']} {r['case']}: nfe_forward {r['stats_nfe_forward']} / nfe_backward "
        f"{r['stats_nfe_backward']}" for r in rows if r["library"] == "crossode"))
    print(md)
    pd.DataFrame(rows).to_csv(os.path.join(RESULTS, "nfe.csv"), index=False)
    with open(os.path.join(RESULTS, "nfe.json"), "w") as fh:
        json.dump({"machine": machine_info(), "rows": rows}, fh, indent=1)
    with open(os.path.join(RESULTS, "nfe.md"), "w") as fh:
        fh.write(md + "\n")


if __name__ == "__main__":
    main()

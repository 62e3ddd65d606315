"""Gradient error, time and NFE vs rtol: crossode MALI vs TorchDiffEqPack MALI vs dopri5 methods (issue 3).

Reproduces the MALI paper's "reverse accuracy" claim in the form of mali.md §10: MALI's gradient error tracks the
forward error (the gradient is the exact gradient of the ALF discretisation, so MALI == backprop through ALF), and
places it next to dopri5 with Direct / Checkpointed / Backsolve (crossode) and torchdiffeq odeint / odeint_adjoint.

Problems (same nn.Module, same weights for every method, float64, L = 1/2 ||y(T)||^2):
- ``linear``: crossode zoo, y' = A y, A = randn(10,10, seed 0)/sqrt(10) - 0.5 I, T = 2; closed-form reference;
- ``mlp``: crossode zoo, y' = W2 tanh(W1 y + b1) + b2 (2-32-2, seed 0), y0 = [1, 0], T = 1; reference = forward
  sensitivities (SciPy DOP853, rtol 1e-12).
atol = rtol for every method. Time = median of 3 gradient calls after a counted warm-up call.

Run:  OMP_NUM_THREADS=1 .venv/bin/python comparisons/mali/accuracy.py   (about 3-4 minutes on one core)
Writes results/accuracy.csv, results/accuracy.json and prints markdown tables.
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pandas as pd  # noqa: E402

from _common import METHODS, RESULTS, co, field_check, fmt, machine_info, make_problem, run_cell  # noqa: E402

RTOLS = [1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]


def table(rows, problem):
    out = [f"\n### {problem}\n",
           "| method | rtol | status | grad err | dparams err | dy0 err | ms/grad (fwd+bwd) | f-evals fwd | "
           "f-evals bwd | VJPs bwd | accepted steps |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["problem"] != problem:
            continue
        if r["status"] != "ok":
            out.append(f"| {r['method']} | {r['rtol']:.0e} | {r['status']} | | | | | | | | |")
            continue
        steps = r.get("steps_accepted")
        if steps is None and r["solver"] == "sym12async":
            steps = f"{r['bwd_vjps'] - 1} (inferred)"
        out.append(
            f"| {r['method']} | {r['rtol']:.0e} | ok | {fmt(r['grad_error'])} | {fmt(r['dparams_error'])} | "
            f"{fmt(r['dy0_error'])} | {1e3 * r['time_gradient_s']:.1f} ({1e3 * r['time_forward_s']:.1f}+"
            f"{1e3 * r['time_backward_s']:.1f}) | {r['fwd_evals']} | {r['bwd_evals']} | {r['bwd_vjps']} | "
            f"{steps if steps is not None else '-'} |"
        )
    return "\n".join(out)


def main():
    t_start = time.perf_counter()
    rows = []
    for name in ("linear", "mlp"):
        problem, field = make_problem(name)
        ref = co.reference(problem)
        print(f"[{name}] field vs problem RHS rel diff {field_check(problem, field):.1e}; reference {ref.method}",
              flush=True)
        for rtol in RTOLS:
            for m in METHODS:
                r = run_cell(problem, field, m, rtol, reference=ref)
                r["reference"] = ref.method
                rows.append(r)
                print(f"  {m[0]:38s} rtol {rtol:.0e} {r['status']:>6s} grad err {fmt(r.get('grad_error'))} "
                      f"t {fmt(r.get('time_gradient_s'), '.3g')} s  evals {r.get('fwd_evals')}/"
                      f"{r.get('bwd_evals')}+{r.get('bwd_vjps')} {r['message'][:120]}", flush=True)
    df = pd.DataFrame([{k: v for k, v in r.items() if k != "grad"} for r in rows])
    df.to_csv(os.path.join(RESULTS, "accuracy.csv"), index=False)
    with open(os.path.join(RESULTS, "accuracy.json"), "w") as fh:
        json.dump({"machine": machine_info(), "rtols": RTOLS, "rows": rows}, fh, indent=1, default=float)
    md = "\n".join(table(rows, p) for p in ("linear", "mlp"))
    # sanity: MALI vs backprop through ALF (same discretisation) and the TorchDiffEqPack float32-grid floor
    chk = ["\n### checks\n", "| problem | rtol | crossode MALI grad err | crossode ALF+Direct grad err | "
           "‖g_MALI − g_Direct‖ / ‖g_Direct‖ | TorchDiffEqPack MALI grad err | TorchDiffEqPack err / crossode err |",
           "|---|---|---|---|---|---|---|"]
    for p in ("linear", "mlp"):
        for rtol in RTOLS:
            sel = {r["method"]: r for r in rows if r["problem"] == p and r["rtol"] == rtol}
            a, b, c = (sel.get("crossode ALF+MALI"), sel.get("crossode ALF+Direct"),
                       sel.get("TorchDiffEqPack MALI (sym12async)"))
            ea, eb, ec = (x.get("grad_error") if x else None for x in (a, b, c))
            diff = (co.relative_error(a["grad"], b["grad"])
                    if a and b and a["status"] == b["status"] == "ok" else None)
            ratio = ec / ea if ea and ec else None
            chk.append(f"| {p} | {rtol:.0e} | {fmt(ea)} | {fmt(eb)} | {fmt(diff)} | {fmt(ec)} | {fmt(ratio, '.2f')} |")
    md += "\n" + "\n".join(chk)
    print(md)
    with open(os.path.join(RESULTS, "accuracy.md"), "w") as fh:
        fh.write(md + "\n")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()

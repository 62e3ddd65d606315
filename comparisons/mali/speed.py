"""Time per gradient at EQUAL gradient error: crossode MALI vs TorchDiffEqPack MALI (the same ALF method).

Both run ALF (eta = 1, v0 = f(t0, y0)) with the MALI backward and the same error estimate h*(u - v) and controller
exponent, so at equal rtol they take nearly the same steps and reach nearly the same error. To compare at *equal
error* anyway, each method's work-precision curve (log time vs log gradient error over an rtol sweep) is
interpolated piecewise-linearly and TorchDiffEqPack's time is read off at each crossode point's error
(crossode points outside TorchDiffEqPack's error range are not used). Timing: one warm-up per method and rtol,
then REPEATS gradient calls alternating crossode / TorchDiffEqPack (so machine load hits both alike); median.

Target (issue 3): crossode MALI time <= 1/3 of TorchDiffEqPack's at equal error.

Run:  OMP_NUM_THREADS=1 .venv/bin/python comparisons/mali/speed.py      (about 2 minutes)
Writes results/speed.csv, results/speed.json, results/work_precision.png.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from _common import (RESULTS, co, co_odeint, fmt, machine_info, make_forward, make_problem,  # noqa: E402
                     one_gradient, run_cell)

RTOLS = {"linear": [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6],
         "mlp": [1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7]}
REPEATS = 5
PAIR = [("crossode ALF+MALI", "crossode", "alf", "mali"),
        ("TorchDiffEqPack MALI (sym12async)", "TorchDiffEqPack", "sym12async", "mali")]


def interp_loglog(x_err, errs, times):
    """log-time at log-error ``x_err`` on the piecewise-linear curve through (errs, times); None outside range."""
    le, lt = np.log(np.asarray(errs)), np.log(np.asarray(times))
    order = np.argsort(le)
    le, lt = le[order], lt[order]
    x = np.log(x_err)
    if x < le[0] - 1e-12 or x > le[-1] + 1e-12:
        return None
    return float(np.exp(np.interp(x, le, lt)))


def main():
    t_start = time.perf_counter()
    rows, ratios_all, cpu_all, summary = [], [], [], {}
    for name in ("linear", "mlp"):
        problem, field = make_problem(name)
        ref = co.reference(problem)
        for rtol in RTOLS[name]:
            recs = [run_cell(problem, field, m, rtol, repeats=1, reference=ref) for m in PAIR]  # counts + warm-up
            y0s = [np.asarray(problem.y0)] * 2
            fwds = []
            for m, y in zip(PAIR, y0s):
                import torch

                y0 = torch.tensor(y, dtype=torch.float64, requires_grad=True)
                fwds.append((make_forward(m[1], m[2], m[3], field, y0, problem.t0, problem.t1, rtol, rtol, [None]),
                             y0))
            times, cpus = [[], []], [[], []]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for _ in range(REPEATS):
                    for i, (fwd, y0) in enumerate(fwds):
                        c0 = time.process_time()
                        _, _, _, a, b = one_gradient(fwd, field, y0)
                        cpus[i].append(time.process_time() - c0)
                        times[i].append(a + b)
            for rec, ts, cs in zip(recs, times, cpus):
                rec["time_gradient_s"] = statistics.median(ts)
                rec["cpu_gradient_s"] = statistics.median(cs)
                rec["times_s"] = ts
                rec["repeats"] = REPEATS
                rows.append(rec)
            print(f"[{name}] rtol {rtol:.0e}: crossode err {fmt(recs[0].get('grad_error'))} "
                  f"{1e3 * recs[0]['time_gradient_s']:.1f} ms | TDEP err {fmt(recs[1].get('grad_error'))} "
                  f"{1e3 * recs[1]['time_gradient_s']:.1f} ms | same-rtol ratio "
                  f"{recs[0]['time_gradient_s'] / recs[1]['time_gradient_s']:.3f} (CPU time "
                  f"{recs[0]['cpu_gradient_s'] / recs[1]['cpu_gradient_s']:.3f})", flush=True)
        co_pts = [r for r in rows if r["problem"] == problem.name and r["library"] == "crossode" and r["status"] == "ok"]
        td_pts = [r for r in rows if r["problem"] == problem.name and r["library"] != "crossode" and r["status"] == "ok"]
        td_err = [r["grad_error"] for r in td_pts]
        td_t = [r["time_gradient_s"] for r in td_pts]
        td_c = [r["cpu_gradient_s"] for r in td_pts]
        eq = []
        for r in co_pts:
            t_td = interp_loglog(r["grad_error"], td_err, td_t)
            c_td = interp_loglog(r["grad_error"], td_err, td_c)
            if t_td is None:
                continue
            eq.append({"grad_error": r["grad_error"], "rtol": r["rtol"], "crossode_s": r["time_gradient_s"],
                       "tdep_s_at_equal_error": t_td, "ratio": r["time_gradient_s"] / t_td,
                       "cpu_ratio": r["cpu_gradient_s"] / c_td})
        ratios = [e["ratio"] for e in eq]
        ratios_all += ratios
        cpu_all += [e["cpu_ratio"] for e in eq]
        # power-law fits time = c * err^-p (work-precision slope)
        fit = {}
        for lab, pts in (("crossode", co_pts), ("TorchDiffEqPack", td_pts)):
            p = np.polyfit(np.log([x["grad_error"] for x in pts]), np.log([x["time_gradient_s"] for x in pts]), 1)
            fit[lab] = {"slope": float(p[0]), "intercept": float(p[1])}
        # fitted-line ratio at the geometric mean error of the crossode points
        e_mid = float(np.exp(np.mean(np.log([x["grad_error"] for x in co_pts]))))
        fit_ratio = float(np.exp((fit["crossode"]["slope"] - fit["TorchDiffEqPack"]["slope"]) * np.log(e_mid)
                                 + fit["crossode"]["intercept"] - fit["TorchDiffEqPack"]["intercept"]))
        nfe = [{"rtol": a["rtol"],
                "crossode_fwd_evals": a["fwd_evals"], "crossode_bwd": a["bwd_evals"] + a["bwd_vjps"],
                "tdep_fwd_evals": b["fwd_evals"], "tdep_bwd": b["bwd_evals"] + b["bwd_vjps"]}
               for a, b in zip(co_pts, td_pts)]
        summary[name] = {"equal_error_points": eq, "median_ratio": float(np.median(ratios)) if ratios else None,
                         "median_cpu_ratio": float(np.median([e["cpu_ratio"] for e in eq])) if eq else None,
                         "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None,
                         "fit": fit, "fit_ratio_at_mid_error": fit_ratio, "mid_error": e_mid, "nfe": nfe}
    summary["all_median_ratio"] = float(np.median(ratios_all))
    summary["all_median_cpu_ratio"] = float(np.median(cpu_all))
    summary["heavy"] = heavy_case()
    summary["target_met"] = bool(summary["all_median_ratio"] <= 1 / 3)

    lines = []
    for name in ("linear", "mlp"):
        s = summary[name]
        lines += [f"\n### {name}: time per gradient at equal gradient error\n",
                  "| gradient error | crossode rtol | crossode ms | TorchDiffEqPack ms (interpolated) | ratio | "
                  "ratio (CPU time) |",
                  "|---|---|---|---|---|---|"]
        for e in s["equal_error_points"]:
            lines.append(f"| {e['grad_error']:.2e} | {e['rtol']:.0e} | {1e3 * e['crossode_s']:.1f} | "
                         f"{1e3 * e['tdep_s_at_equal_error']:.1f} | {e['ratio']:.3f} | {e['cpu_ratio']:.3f} |")
        lines.append(f"\nmedian ratio {s['median_ratio']:.3f} (range {s['min_ratio']:.3f}–{s['max_ratio']:.3f}; "
                     f"CPU-time median {s['median_cpu_ratio']:.3f}); "
                     f"fitted work-precision lines: time ∝ err^{s['fit']['crossode']['slope']:.2f} (crossode), "
                     f"err^{s['fit']['TorchDiffEqPack']['slope']:.2f} (TorchDiffEqPack); ratio of the fits at "
                     f"err {s['mid_error']:.1e}: {s['fit_ratio_at_mid_error']:.3f}")
    lines.append(f"\n**Overall median time ratio crossode/TorchDiffEqPack at equal error: "
                 f"{summary['all_median_ratio']:.3f} (CPU time {summary['all_median_cpu_ratio']:.3f}); target <= 0.333: "
                 f"{'met' if summary['target_met'] else 'missed'}**")
    h = summary["heavy"]
    lines += [f"\n### f-dominated case: {h['setup']}\n",
              "| rtol | crossode grad err | TDEP grad err | crossode ms | TDEP ms | ratio | ratio (CPU) | "
              "crossode evals fwd/bwd+VJP | TDEP evals fwd/bwd+VJP |", "|---|---|---|---|---|---|---|---|---|"]
    for r in h["rows"]:
        lines.append(f"| {r['rtol']:.0e} | {r['co_err']:.2e} | {r['td_err']:.2e} | {1e3 * r['co_s']:.0f} | "
                     f"{1e3 * r['td_s']:.0f} | {r['co_s'] / r['td_s']:.3f} | {r['co_cpu'] / r['td_cpu']:.3f} | "
                     f"{r['co_counts']} | {r['td_counts']} |")
    lines.append(f"\nNFE-only bound for the ratio (f-eval = VJP cost): (1 + 1 + 1) / (2 + 2 + 1) = 0.6 per step; "
                 f"single f-eval {1e3 * h['f_eval_s']:.2f} ms, eval+VJP {1e3 * h['f_vjp_s']:.2f} ms here.")
    md = "\n".join(lines)
    print(md)
    import pandas as pd

    pd.DataFrame(rows).drop(columns=["times_s", "grad"], errors="ignore").to_csv(os.path.join(RESULTS, "speed.csv"), index=False)
    with open(os.path.join(RESULTS, "speed.json"), "w") as fh:
        json.dump({"machine": machine_info(), "repeats": REPEATS, "rows": rows, "summary": summary}, fh, indent=1,
                  default=float)
    with open(os.path.join(RESULTS, "speed.md"), "w") as fh:
        fh.write(md + "\n")
    plot(rows, os.path.join(RESULTS, "work_precision.png"))
    print(f"total {time.perf_counter() - t_start:.0f} s")


def heavy_case():
    """Same-rtol comparison where f dominates the cost: y' = W2 tanh(W1 y + b1) + b2, 10-512-10, batch 2000, T = 1.

    Reference: crossode dopri5 + Direct at rtol = atol = 1e-11 (not independent, but far below the ALF errors).
    At equal rtol the two MALIs take the same steps (nfe.py), so this is also an equal-error comparison.
    """
    import torch

    from _common import MLPField

    rhs = co.MLPRHS([10, 512, 10], "tanh", seed=3)
    field = MLPField(rhs, rhs.initial_params())
    gen = torch.Generator().manual_seed(2)
    y0_np = torch.randn(2000, 10, generator=gen, dtype=torch.float64).numpy()
    t0, t1 = 0.0, 1.0

    def grad_of(fwd, y0):
        c0 = time.process_time()
        _, dp, dy0, a, b = one_gradient(fwd, field, y0)
        return np.concatenate([dp, dy0]), a + b, time.process_time() - c0

    y0 = torch.tensor(y0_np, requires_grad=True)
    ref_fwd = lambda: co_odeint(field, y0, torch.tensor([t0, t1]), solver=co.Dopri5(), sensitivity=co.Direct(),  # noqa: E731
                                step=co.Adaptive(rtol=1e-11, atol=1e-11))[-1]
    g_ref, _, _ = grad_of(ref_fwd, y0)
    with torch.no_grad():
        tt = torch.tensor(0.0)
        y = torch.tensor(y0_np)
        field(tt, y)
        c = time.perf_counter(); [field(tt, y) for _ in range(20)]; f_eval = (time.perf_counter() - c) / 20  # noqa: E702
    k = torch.tensor(y0_np, requires_grad=True)
    c = time.perf_counter()
    for _ in range(10):
        torch.autograd.grad(field(tt, k), [k, *field.parameters()], torch.ones_like(k))
    f_vjp = (time.perf_counter() - c) / 10
    out = []
    for rtol in (1e-3, 1e-4, 1e-5):
        res = {}
        for m in PAIR:
            y0 = torch.tensor(y0_np, requires_grad=True)
            fwd = make_forward(m[1], m[2], m[3], field, y0, t0, t1, rtol, rtol, [None])
            field.counting = True
            field.reset()
            box = {}

            def cf():
                y = fwd()
                box["f"] = field.evals
                field.reset()
                return y

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                g, _, _ = grad_of(cf, y0)
            field.counting = False
            counts = f"{box['f']}/{field.evals}+{field.vjps}"
            res[m[1]] = (fwd, y0, co.relative_error(g, g_ref), counts)
        ts = {lib: [] for lib in res}
        cs = {lib: [] for lib in res}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                for lib, (fwd, y0, _, _) in res.items():
                    _, t, cpu = grad_of(fwd, y0)
                    ts[lib].append(t)
                    cs[lib].append(cpu)
        r = {"rtol": rtol, "co_err": res["crossode"][2], "td_err": res["TorchDiffEqPack"][2],
             "co_s": statistics.median(ts["crossode"]), "td_s": statistics.median(ts["TorchDiffEqPack"]),
             "co_cpu": statistics.median(cs["crossode"]), "td_cpu": statistics.median(cs["TorchDiffEqPack"]),
             "co_counts": res["crossode"][3], "td_counts": res["TorchDiffEqPack"][3]}
        print(f"[heavy] rtol {rtol:.0e}: ratio {r['co_s'] / r['td_s']:.3f} errs {r['co_err']:.2e} {r['td_err']:.2e}"
              f" counts {r['co_counts']} {r['td_counts']}", flush=True)
        out.append(r)
    return {"setup": "MLP 10-512-10 tanh, batch 2000 x 10, T = 1, reference crossode dopri5+Direct rtol 1e-11",
            "rows": out, "f_eval_s": f_eval, "f_vjp_s": f_vjp}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120)
    for ax, name in zip(axes, ("linear", "mlp")):
        for lib, c, m in (("crossode", "tab:red", "o"), ("TorchDiffEqPack", "tab:orange", "s")):
            pts = sorted((r["grad_error"], r["time_gradient_s"]) for r in rows
                         if r["problem"] == name and r["library"] == lib and r["status"] == "ok")
            if pts:
                ax.loglog(*zip(*pts), marker=m, color=c, label=f"{lib} MALI")
        ax.set_xlabel("relative gradient error vs reference")
        ax.set_ylabel("seconds per gradient (fwd + bwd)")
        ax.set_title({"linear": "linear 10×10, T = 2", "mlp": "MLP 2-32-2 tanh, T = 1"}[name], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.invert_xaxis()
        ax.legend(fontsize=8)
    fig.suptitle("MALI work-precision (rtol = atol sweep; CPU, 1 thread, float64)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()

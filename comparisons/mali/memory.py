"""Peak memory of one gradient vs integration length T: MALI's constant memory (MALI paper's main claim; mali.md §11).

Setup (mali.md §11): f(y) = tanh(y @ A.T), A = the ``linear`` zoo problem's 10x10 matrix, state y of shape
4000 x 10 float64 (320 kB per copy), fixed step dt = 0.01 so the number of steps is 100 T, T = 1, 4, 16, 64,
loss 1/2 ||y(T)||^2. Every (method, T) runs in its own fresh subprocess: a 2-step warm-up solve of the same method
(loads kernels, autograd engine), then one forward + backward measured with ``crossode._harness.peak_rss_delta``
(peak RSS above the pre-solve RSS: ``5 > /proc/self/clear_refs`` resets VmHWM, then VmHWM - VmRSS).

Methods: crossode ALF+MALI / ALF+Direct / ALF+Checkpointed, crossode dopri5 Direct / Checkpointed / Backsolve, and
TorchDiffEqPack's MALI (``fixedstep_sym12async``) as the peer. Cells whose memory, extrapolated linearly in the
number of steps from the method's smaller T, would exceed ``MEM_CAP_MB`` are skipped (status ``skipped``, the
extrapolation is recorded) so the 23 GB shared machine is never pushed into swapless OOM.

Run:  OMP_NUM_THREADS=1 .venv/bin/python comparisons/mali/memory.py     (about 5 minutes; `--full` adds
      dopri5 Backsolve / Checkpointed at T = 64, +2.5 minutes; `--plot` redraws the figure from memory.json)
      ... memory.py --only co_alf_mali,tdep_mali   re-runs some methods and merges them into results/memory.json

A MALI cell whose backward raises (crossode's reconstruction check, ``reconstruction_error``) is recorded with that
status; ``crossode ALF+MALI, reconstruction_rtol=0.1`` re-runs it with the check relaxed so its memory at T = 64 is
still measured. Every MALI-like gradient is compared with crossode ALF+Checkpointed's (same ALF steps, but the step
midpoints are stored, not reconstructed) to show how far reconstruction drift moved it.
Writes results/memory.csv, results/memory.json, results/memory_vs_T.png.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

TS = [1, 4, 16, 64]
DT = 0.01
BATCH = 4000
MEM_CAP_MB = 6000.0
# dopri5 (6 stages per step) is slow at 6400 steps (Backsolve 90 s, Checkpointed 60 s): left out of T = 64 unless
# --full, to keep the default run under 5 minutes on the shared machine (their growth is clear from T = 1..16).
SLOW_AT_64 = {"co_dopri5_backsolve", "co_dopri5_checkpointed"}
METHODS = [
    # (key, label)
    ("co_alf_mali", "crossode ALF+MALI"),
    ("co_alf_mali-relaxed", "crossode ALF+MALI, reconstruction_rtol=0.1"),
    ("tdep_mali", "TorchDiffEqPack MALI (fixedstep_sym12async)"),
    ("co_alf_checkpointed", "crossode ALF+Checkpointed"),
    ("co_dopri5_backsolve", "crossode dopri5+Backsolve"),
    ("co_dopri5_checkpointed", "crossode dopri5+Checkpointed"),
    ("co_alf_direct", "crossode ALF+Direct"),
    ("co_dopri5_direct", "crossode dopri5+Direct"),
]
LABEL = dict(METHODS)


# ------------------------------------------------------------------------------------------------ child


def child(key: str, t1: float) -> dict:
    import numpy as np
    import torch

    from _common import TanhLinearField, co, co_odeint
    from crossode._harness import peak_rss_delta

    problem = co.get_problem("linear")
    a = problem.params.reshape(problem.n_states, problem.n_states)
    field = TanhLinearField(a)
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(BATCH, problem.n_states, generator=gen, dtype=torch.float64).requires_grad_(True)
    info = {}

    def run(T):
        field.zero_grad(set_to_none=True)
        y0.grad = None
        if key == "tdep_mali":
            from TorchDiffEqPack import odesolve_adjoint_sym12

            opts = {"method": "fixedstep_sym12async", "h": DT, "t0": 0.0, "t1": float(T), "rtol": 1e-3,
                    "atol": 1e-3, "print_neval": False, "neval_max": 5e6}
            yT = odesolve_adjoint_sym12(field, y0, options=opts)
            steps = None
        else:
            _, solver, grad = key.split("_")
            sol = co.ALF() if solver == "alf" else co.Dopri5()
            sens = {"mali": co.MALI(), "mali-relaxed": co.MALI(reconstruction_rtol=0.1), "direct": co.Direct(),
                    "checkpointed": co.Checkpointed(), "backsolve": co.Backsolve()}[grad]
            st = co.Stats()
            ys = co_odeint(field, y0, torch.tensor([0.0, float(T)]), solver=sol, sensitivity=sens,
                           step=co.Fixed(DT), stats=st)
            if grad.startswith("mali"):
                from crossode.backends.torch._mali import mali_saved_summary

                info["mali_saved"] = mali_saved_summary(ys)
            yT = ys[-1]
            steps = st.steps_accepted
        loss = 0.5 * (yT * yT).sum()
        loss.backward()
        return (float(loss.detach()), steps, float(y0.grad.norm()),
                field.A.grad.detach().reshape(-1).tolist())

    run(2 * DT)  # warm-up
    t_a = time.perf_counter()
    try:
        (loss, steps, gy, ga), peak = peak_rss_delta(lambda: run(t1))
    except co.SolverFailure as e:  # a failure is a status (MALI's reconstruction check)
        return {"method": key, "label": LABEL[key], "T": t1, "status": e.status, "message": e.message,
                "wall_s": time.perf_counter() - t_a}
    wall = time.perf_counter() - t_a
    return {"method": key, "label": LABEL[key], "T": t1, "steps": steps, "expected_steps": int(round(t1 / DT)),
            "peak_rss_delta_MB": None if peak is None else peak / 2**20, "wall_s": wall, "loss": loss,
            "dy0_norm": gy, "dA": ga, "status": "ok", **info}


# ------------------------------------------------------------------------------------------------ driver


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {
        "co_alf_mali": ("tab:red", "o", "-", 2.6),
        "co_alf_mali-relaxed": ("darkred", "x", ":", 1.4),
        "tdep_mali": ("tab:orange", "s", "--", 1.6),
        "co_alf_checkpointed": ("tab:purple", "^", "-", 1.4),
        "co_dopri5_checkpointed": ("tab:brown", "v", "-", 1.4),
        "co_dopri5_backsolve": ("tab:green", "D", "-", 1.4),
        "co_alf_direct": ("tab:blue", "o", "-", 1.8),
        "co_dopri5_direct": ("tab:cyan", "P", "-", 1.4),
    }
    fig, ax = plt.subplots(figsize=(8.4, 5.6), dpi=130)
    for key, label in METHODS:
        pts = [(r["T"], r["peak_rss_delta_MB"]) for r in rows if r["method"] == key and r["status"] == "ok"]
        if not pts:
            continue
        c, m, ls, lw = style[key]
        xs, ys = zip(*pts)
        ax.plot(xs, ys, ls, marker=m, color=c, lw=lw, ms=6, label=label)
        for r in rows:
            if r["method"] == key and r["status"] not in ("ok", "skipped", "not_run"):
                import re

                m_d = re.search(r"drifted by ([0-9.eE+-]+).*= ([0-9.eE+-]+) for fixed", r.get("message", ""))
                why = (f"reconstructed y0 drifted {m_d.group(1)} > limit {m_d.group(2)}" if m_d
                       else r.get("message", "")[:60])
                ax.plot([r["T"]], [ys[-1]], marker="X", color=c, ms=9, ls="none")
                ax.annotate(f"{label}, T = {r['T']:g}: status '{r['status']}'\n({why}: "
                            f"raised, no silent gradient)", xy=(r["T"], ys[-1]), xytext=(0.50, 0.24),
                            textcoords="axes fraction", fontsize=7, color=c,
                            arrowprops=dict(arrowstyle="->", color=c, lw=0.8))
        skipped = [r for r in rows if r["method"] == key and r["status"] == "skipped"]
        for r in skipped:
            ax.plot([xs[-1], r["T"]], [ys[-1], r["extrapolated_MB"]], ":", color=c, lw=1)
            ax.plot([r["T"]], [r["extrapolated_MB"]], marker=m, mfc="none", color=c, ms=6)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(TS)
    ax.set_xticklabels([f"T = {t}\n{int(t / DT)} steps" for t in TS])
    ax.set_ylabel("peak RSS above pre-solve baseline (MB, log scale)")
    ax.set_title(f"Memory of one gradient vs integration length\n"
                 f"f = tanh(y Aᵀ), state {BATCH}×10 float64, fixed dt = {DT}; CPU, 1 thread, torch 2.13.0",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    ax.text(0.99, 0.02, "hollow markers + dotted: extrapolated (not run, > %d MB)" % MEM_CAP_MB,
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="0.35")
    g_m, g_d = growth(rows, "co_alf_mali"), growth(rows, "co_alf_direct")
    if g_m is not None and g_d:
        ax.text(0.99, 0.40, f"growth T = 1 → 16:\nMALI {g_m:.1f} MB vs ALF+Direct {g_d:.0f} MB\n"
                f"ratio {100 * g_m / g_d:.2f}% (target < 5%)", transform=ax.transAxes, ha="right", va="center",
                fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.6"))
    fig.tight_layout()
    fig.savefig(path)


def growth(rows, key, t_a=1, t_b=16):
    v = {r["T"]: r.get("peak_rss_delta_MB") for r in rows if r["method"] == key and r["status"] == "ok"}
    if t_a in v and t_b in v:
        return v[t_b] - v[t_a]
    return None


def main(only=None, full=False):
    from _common import RESULTS, fmt, machine_info

    rows = []
    if only:  # re-run only these methods, keep the other rows of the last full run
        with open(os.path.join(RESULTS, "memory.json")) as fh:
            rows = [r for r in json.load(fh)["rows"] if r["method"] not in only]
    t_start = time.perf_counter()
    for key, label in METHODS:
        if only and key not in only:
            continue
        done = []
        for T in TS:
            if T == 64 and key in SLOW_AT_64 and not full:
                rows.append({"method": key, "label": label, "T": T, "status": "not_run",
                             "message": "left out of the default run (slow); use --full"})
                continue
            if len(done) >= 2:  # linear extrapolation in the number of steps from the two largest runs
                (t_a, m_a), (t_b, m_b) = done[-2], done[-1]
                pred = m_b + (m_b - m_a) / (t_b - t_a) * (T - t_b)
                if pred > MEM_CAP_MB:
                    rows.append({"method": key, "label": label, "T": T, "status": "skipped",
                                 "extrapolated_MB": pred, "message": f"extrapolated {pred:.0f} MB > cap"})
                    print(f"{label:45s} T={T:3d} skipped (extrapolated {pred:.0f} MB)", flush=True)
                    continue
            env = dict(os.environ, OMP_NUM_THREADS="1")
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", key, str(T)],
                                  capture_output=True, text=True, env=env, timeout=600)
            try:
                r = json.loads(proc.stdout.strip().splitlines()[-1])
            except Exception:  # noqa: BLE001
                r = {"method": key, "label": label, "T": T, "status": "crashed",
                     "message": (proc.stderr or proc.stdout)[-400:]}
            rows.append(r)
            if r["status"] == "ok":
                done.append((T, r["peak_rss_delta_MB"]))
            print(f"{label:45s} T={T:3d} {r['status']} peak {fmt(r.get('peak_rss_delta_MB'), '.1f')} MB "
                  f"steps {r.get('steps')} wall {fmt(r.get('wall_s'), '.2f')} s {r.get('message', '')}", flush=True)

    rows.sort(key=lambda r: ([k for k, _ in METHODS].index(r["method"]), r["T"]))
    # gradient agreement with ALF+Checkpointed (the same ALF discretisation, no reconstruction) at each T
    import numpy as np

    chk = {r["T"]: np.asarray(r["dA"]) for r in rows if r["method"] == "co_alf_checkpointed" and r.get("dA")}
    for r in rows:
        if r.get("dA") and r["T"] in chk and r["method"] != "co_alf_checkpointed":
            r["dA_rel_diff_vs_alf_checkpointed"] = float(np.linalg.norm(np.asarray(r["dA"]) - chk[r["T"]])
                                                         / np.linalg.norm(chk[r["T"]]))
    # table
    lines = ["| method | " + " | ".join(f"T={t} ({int(t / DT)} steps)" for t in TS) + " | growth T=1→16 |",
             "|---|" + "---|" * (len(TS) + 1)]
    for key, label in METHODS:
        cells = []
        for T in TS:
            r = next((x for x in rows if x["method"] == key and x["T"] == T), None)
            if r is None:
                cells.append("")
            elif r["status"] == "ok":
                cells.append(f"{r['peak_rss_delta_MB']:.1f} MB")
            elif r["status"] == "skipped":
                cells.append(f"skipped (~{r['extrapolated_MB']:.0f} MB extrap.)")
            elif r["status"] == "not_run":
                cells.append("not run (slow; --full)")
            else:
                cells.append(f"**{r['status']}**")
        g = growth(rows, key)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(g, '.1f')} MB |")
    g_mali = growth(rows, "co_alf_mali")
    summary = {}
    for ref in ("co_alf_direct", "co_dopri5_direct"):
        g_ref = growth(rows, ref)
        if g_mali is not None and g_ref:
            summary[f"mali_growth_over_{ref}_growth"] = g_mali / g_ref
    md = "\n".join(lines)
    md += "\n\n" + "\n".join(
        f"- MALI growth (T=1→16) / {LABEL[k.split('_growth_over_')[1].rsplit('_growth', 1)[0]]} growth = "
        f"{v:.4f} ({100 * v:.2f}%; target < 5%)" for k, v in summary.items())
    print(md)
    agree = ["\n| method | " + " | ".join(f"T={t}" for t in TS) + " |", "|---|" + "---|" * len(TS)]
    for key, label in METHODS:
        if not key.startswith(("co_alf_mali", "tdep")):
            continue
        cells = []
        for T in TS:
            r = next((x for x in rows if x["method"] == key and x["T"] == T), None)
            cells.append(fmt(r.get("dA_rel_diff_vs_alf_checkpointed")) if r and r["status"] == "ok"
                         else (r["status"] if r else ""))
        agree.append(f"| {label} | " + " | ".join(cells) + " |")
    md += ("\n\ndL/dA relative difference from crossode ALF+Checkpointed (same ALF steps, stored midpoints, "
           "no reconstruction):\n" + "\n".join(agree))
    print("\n".join(agree))
    mali_saved = [r.get("mali_saved") for r in rows if r["method"] == "co_alf_mali" and r.get("mali_saved")]
    with open(os.path.join(RESULTS, "memory.json"), "w") as fh:
        json.dump({"machine": machine_info(), "setup": {"dt": DT, "batch": BATCH, "Ts": TS, "cap_MB": MEM_CAP_MB},
                   "rows": rows, "summary": summary, "mali_saved": mali_saved}, fh, indent=1)
    import pandas as pd

    pd.DataFrame([{k: v for k, v in r.items() if k not in ("mali_saved", "dA")} for r in rows]).to_csv(
        os.path.join(RESULTS, "memory.csv"), index=False)
    with open(os.path.join(RESULTS, "memory.md"), "w") as fh:
        fh.write(md + "\n")
    plot(rows, os.path.join(RESULTS, "memory_vs_T.png"))
    print(f"total {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        out = child(sys.argv[2], float(sys.argv[3]))
        print(json.dumps(out))
    elif len(sys.argv) == 2 and sys.argv[1] == "--plot":  # re-draw from results/memory.json
        from _common import RESULTS

        with open(os.path.join(RESULTS, "memory.json")) as fh:
            plot(json.load(fh)["rows"], os.path.join(RESULTS, "memory_vs_T.png"))
    elif len(sys.argv) == 2 and sys.argv[1] == "--full":
        main(full=True)
    elif len(sys.argv) == 3 and sys.argv[1] == "--only":
        main(only=set(sys.argv[2].split(",")))
    else:
        main()

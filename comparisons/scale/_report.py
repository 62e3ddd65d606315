"""Tables, targets and figures of the scale benchmark from its rows (no framework imported)."""

from __future__ import annotations

import json
import math
import pathlib

TIME_TARGET = 1.0
MEMORY_TARGET = 0.05
AXES = {"batch": "batch", "width": "hidden width", "T": "T (integration length)"}
COLORS = {"co-direct": "tab:blue", "co-backsolve": "tab:green", "co-mali": "tab:red", "co-alf-direct": "tab:purple",
          "tdq-odeint": "tab:cyan", "tdq-adjoint": "olive", "tode-direct": "tab:gray", "tdep-mali": "tab:orange",
          "dfx-rca": "tab:cyan", "dfx-backsolve": "olive"}
TIMED = ("ok", "inaccurate")


def _mib(b):
    return None if b is None else b / 2**20


def _f(x, spec=".2f", none="-"):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return none
    return format(x, spec)


def _base_text(rows, dtype) -> str:
    """The scans' shared base point (the cell in the most scans), in words."""
    sel = [r for r in rows if r["dtype"] == dtype and "memory_T" not in r["scans"]]
    if not sel:
        return ""
    b = max(sel, key=lambda r: len(r["scans"]))
    return f"base: batch {b['batch']}, MLP {b['widths']}, T = {b['T']:g}"


def _scan_value(row, axis):
    return row["width"] if axis == "width" else row[axis]


def ratio_rows(rows: list[dict]) -> list[dict]:
    """crossode / peer time (min and median) per cell, framework and method, with both errors and step counts."""
    out = []
    by_cell: dict[tuple, dict] = {}
    for r in rows:
        by_cell.setdefault((r["cell"], r["framework"]), {})[r["key"]] = r
    for (cell, fw), group in by_cell.items():
        for r in group.values():
            if r["library"] == "crossode" or "memory_T" in r["scans"]:
                continue
            co = group.get("co-" + r["method"])
            if co is None:
                continue
            e = {"cell": cell, "framework": fw, "method": r["method"], "peer": r["key"], "peer_label": r["label"],
                 "scans": r["scans"], "batch": r["batch"], "width": r["width"], "T": r["T"], "dtype": r["dtype"],
                 "crossode_status": co["status"], "peer_status": r["status"],
                 "crossode_error": co.get("grad_error"), "peer_error": r.get("grad_error"),
                 "crossode_steps": co.get("steps"), "peer_steps": r.get("steps"),
                 "crossode_fwd_calls": co.get("fwd_calls"), "peer_fwd_calls": r.get("fwd_calls"),
                 "crossode_min_s": co.get("time_min_s"), "peer_min_s": r.get("time_min_s"),
                 "crossode_median_s": co.get("time_median_s"), "peer_median_s": r.get("time_median_s"),
                 "crossode_peak_bytes": co.get("peak_bytes"), "peer_peak_bytes": r.get("peak_bytes")}
            if e["crossode_min_s"] and e["peer_min_s"]:
                e["ratio_min"] = e["crossode_min_s"] / e["peer_min_s"]
                e["ratio_median"] = e["crossode_median_s"] / e["peer_median_s"]
            if e["crossode_peak_bytes"] and e["peer_peak_bytes"]:
                e["memory_ratio"] = e["crossode_peak_bytes"] / e["peer_peak_bytes"]
            out.append(e)
    return out


def _growth(rows, framework, key):
    pts = {r["T"]: r.get("peak_bytes") for r in rows
           if r["framework"] == framework and r["key"] == key and "memory_T" in r["scans"] and r["status"] in TIMED}
    if len(pts) >= 2 and None not in pts.values():
        lo, hi = min(pts), max(pts)
        return {"T_lo": lo, "T_hi": hi, "lo_bytes": pts[lo], "hi_bytes": pts[hi], "growth_bytes": pts[hi] - pts[lo]}
    return None


def targets(rows: list[dict], ratios: list[dict]) -> dict:
    """The issue's targets: time ratio <= 1.0 per (framework, method, peer) at every cell; MALI memory growth."""
    time_t = []
    for key in sorted({(e["framework"], e["method"], e["peer"]) for e in ratios}):
        es = [e for e in ratios if (e["framework"], e["method"], e["peer"]) == key]
        timed = [e for e in es if "ratio_min" in e]
        missed = [e for e in timed if e["ratio_min"] > TIME_TARGET or e["ratio_median"] > TIME_TARGET]
        missed_min = [e for e in timed if e["ratio_min"] > TIME_TARGET]
        untimed = [e for e in es if "ratio_min" not in e]
        time_t.append({
            "framework": key[0], "method": key[1], "peer": key[2], "peer_label": es[0]["peer_label"],
            "cells": len(es), "timed": len(timed), "missed": len(missed), "missed_by_min": len(missed_min),
            "worst_ratio_min": max((e["ratio_min"] for e in timed), default=None),
            "worst_ratio_median": max((e["ratio_median"] for e in timed), default=None),
            "best_ratio_min": min((e["ratio_min"] for e in timed), default=None),
            "median_ratio_min": _median([e["ratio_min"] for e in timed]),
            "missed_cells": [(e["cell"], round(e["ratio_min"], 3), round(e["ratio_median"], 3)) for e in missed],
            "untimed_cells": [(e["cell"], e["crossode_status"], e["peer_status"]) for e in untimed],
            "status": ("met" if timed and not missed else "missed" if missed else "not measured"),
        })
    mem_t = []
    for fw in sorted({r["framework"] for r in rows if "memory_T" in r["scans"]}):
        g_mali = _growth(rows, fw, "co-mali")
        for ref in ("co-alf-direct", "co-direct"):
            g_ref = _growth(rows, fw, ref)
            e = {"framework": fw, "direct": ref, "mali_growth": g_mali, "direct_growth": g_ref}
            if g_mali and g_ref and g_ref["growth_bytes"] > 0:
                e["ratio"] = g_mali["growth_bytes"] / g_ref["growth_bytes"]
                e["status"] = "met" if e["ratio"] <= MEMORY_TARGET else "missed"
            elif g_mali and g_ref:  # e.g. JAX: buffers sized by max_steps, not by the steps taken
                e["status"] = "undefined: Direct does not grow"
            else:
                e["status"] = "not measured"
            mem_t.append(e)
        peers = {}
        for r in rows:
            if r["framework"] == fw and "memory_T" in r["scans"] and r["library"] != "crossode":
                peers[r["key"]] = _growth(rows, fw, r["key"])
        if peers:
            mem_t.append({"framework": fw, "peers_growth": peers})
    return {"time": time_t, "memory": mem_t}


def _median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else 0.5 * (xs[m - 1] + xs[m])


# ------------------------------------------------------------------------------------------------ markdown


def markdown(data: dict, ratios: list[dict], tg: dict) -> str:
    env = data["environment"]
    rows = data["rows"]
    s = data["settings"]
    lines = ["# Scale benchmark results", "",
             f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores), {env.get('platform')}, device "
             f"`{env.get('device')}`, {env.get('OMP_NUM_THREADS')} thread(s) per process; load average at start "
             f"{_f(env.get('loadavg_start', [None])[0], '.1f')}, at end {_f(env.get('loadavg_end', [None])[0], '.1f')}."
             f" Versions: {json.dumps(env.get('versions', {}))}. Preset `{data['preset']}`, rtol = atol = "
             f"{s['rtol']:g}, max_steps {s['max_steps']}; wall time {data['wall_s'] / 60:.1f} min.", ""]
    if data.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in data["skipped"].items()), ""]
    lines += ["## Time target: crossode <= 1.0x the peer's time for the same method, every cell", "",
              "A cell misses when its min ratio or its median ratio is above 1.0.", "",
              "| framework | method | peer | cells timed | missed (by the min) | ratio min: best / median / worst | "
              "worst median ratio | status |", "|---|---|---|---|---|---|---|---|"]
    for t in tg["time"]:
        lines.append(f"| {t['framework']} | {t['method']} | {t['peer_label']} | {t['timed']}/{t['cells']} | "
                     f"{t['missed']} ({t.get('missed_by_min', '-')}) | {_f(t['best_ratio_min'])} / "
                     f"{_f(t['median_ratio_min'])} / "
                     f"{_f(t['worst_ratio_min'])} | {_f(t['worst_ratio_median'])} | **{t['status']}** |")
    for t in tg["time"]:
        if t["missed_cells"]:
            lines.append(f"\n{t['framework']} {t['method']} vs {t['peer_label']}, missed at (cell, ratio min, "
                         f"ratio median): " + ", ".join(f"{c} {a:.2f}/{b:.2f}" for c, a, b in t["missed_cells"]))
        if t["untimed_cells"]:
            lines.append(f"\n{t['framework']} {t['method']} vs {t['peer_label']}, not timed (cell, crossode status, "
                         "peer status): " + ", ".join(f"{c} {a}/{b}" for c, a, b in t["untimed_cells"]))
    lines += ["", "## Memory target: MALI's peak-memory growth T = 1 -> 16 <= 5 % of Direct's", "",
              "| framework | Direct | MALI peak T lo -> hi (MiB) | Direct peak T lo -> hi (MiB) | MALI growth / Direct "
              "growth | status |", "|---|---|---|---|---|---|"]
    for m in tg["memory"]:
        if "peers_growth" in m:
            continue
        gm, gd = m["mali_growth"], m["direct_growth"]
        lines.append(f"| {m['framework']} | {m['direct']} | "
                     f"{_f(_mib(gm and gm['lo_bytes']), '.1f')} -> {_f(_mib(gm and gm['hi_bytes']), '.1f')} | "
                     f"{_f(_mib(gd and gd['lo_bytes']), '.1f')} -> {_f(_mib(gd and gd['hi_bytes']), '.1f')} | "
                     f"{'-' if m.get('ratio') is None else format(100 * m['ratio'], '.3f') + ' %'} | **{m['status']}** |")
    for m in tg["memory"]:
        if "peers_growth" in m:
            lines.append(f"\n{m['framework']} peers' growth: " + ", ".join(
                f"{k} {_f(_mib(g and g['lo_bytes']), '.1f')} -> {_f(_mib(g and g['hi_bytes']), '.1f')} MiB"
                for k, g in m["peers_growth"].items()))
    mem_rows = [r for r in rows if "memory_T" in r["scans"]]
    if mem_rows:
        lines += ["", "### Memory-target cells", "", "| framework | contender | T | status | peak MiB | kind | steps | "
                  "grad error |", "|---|---|---|---|---|---|---|---|"]
        for r in mem_rows:
            lines.append(f"| {r['framework']} | {r['label']} | {r['T']:g} | {r['status']} | "
                         f"{_f(_mib(r.get('peak_bytes')), '.1f')} | {r.get('memory_kind') or '-'} | "
                         f"{r.get('steps', '-')} | {_f(r.get('grad_error'), '.1e')} |")
    for fw in ("torch", "jax"):
        for dtype in s["dtypes"]:
            for axis in AXES:
                es = [e for e in ratios if e["framework"] == fw and e["dtype"] == dtype and axis in e["scans"]]
                if not es:
                    continue
                lines += ["", f"## {fw}, {dtype}, scan over {AXES[axis]}", "",
                          f"| {axis} | method | peer | crossode ms min (median) | peer ms min (median) | ratio min "
                          "(median) | grad error crossode / peer | steps crossode / peer | f calls fwd crossode / "
                          "peer | peak MiB crossode / peer |", "|---|---|---|---|---|---|---|---|---|---|"]
                for e in sorted(es, key=lambda e: (_scan_value(e, axis), e["method"], e["peer"])):
                    lines.append(
                        f"| {_scan_value(e, axis):g} | {e['method']} | {e['peer_label']} | "
                        f"{_f(_ms(e['crossode_min_s']), '.1f')} ({_f(_ms(e['crossode_median_s']), '.1f')}) | "
                        f"{_f(_ms(e['peer_min_s']), '.1f')} ({_f(_ms(e['peer_median_s']), '.1f')}) | "
                        f"**{_f(e.get('ratio_min'))}** ({_f(e.get('ratio_median'))}) | "
                        f"{_f(e['crossode_error'], '.1e')} / {_f(e['peer_error'], '.1e')} | "
                        f"{e['crossode_steps'] if e['crossode_steps'] is not None else '-'} / "
                        f"{e['peer_steps'] if e['peer_steps'] is not None else '-'} | "
                        f"{e['crossode_fwd_calls'] or '-'} / {e['peer_fwd_calls'] or '-'} | "
                        f"{_f(_mib(e['crossode_peak_bytes']), '.1f')} / {_f(_mib(e['peer_peak_bytes']), '.1f')} |")
    no_peer = [r for r in rows if r["method"] == "mali" and r["framework"] == "jax" and "memory_T" not in r["scans"]]
    if no_peer:
        lines += ["", "## JAX MALI (no Diffrax peer: Diffrax has no reversible adjoint)", "",
                  "| cell | status | ms min (median) | grad error | steps | XLA temp MiB |", "|---|---|---|---|---|---|"]
        for r in no_peer:
            lines.append(f"| {r['cell']} | {r['status']} | {_f(_ms(r.get('time_min_s')), '.1f')} "
                         f"({_f(_ms(r.get('time_median_s')), '.1f')}) | {_f(r.get('grad_error'), '.1e')} | "
                         f"{r.get('steps', '-')} | {_f(_mib(r.get('peak_bytes')), '.1f')} |")
    bad = [r for r in rows if r["status"] not in TIMED]
    if bad:
        lines += ["", "## Rows that did not finish", "", "| cell | framework | contender | status | message |",
                  "|---|---|---|---|---|"]
        for r in bad:
            lines.append(f"| {r['cell']} | {r['framework']} | {r['label']} | {r['status']} | "
                         f"{r.get('message', '')[:160]} |")
    return "\n".join(lines) + "\n"


def _ms(x):
    return None if x is None else 1e3 * x


# ------------------------------------------------------------------------------------------------ figures


def figures(data: dict, ratios: list[dict], out: pathlib.Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    env = data["environment"]
    dev = env.get("device", "cpu")
    gpu = env.get("versions", {}).get("torch", {}).get("gpu")
    where = f"{gpu}" if gpu else f"{env.get('cpu') or 'CPU'}, {env.get('OMP_NUM_THREADS')} thread"
    written = []
    for dtype in data["settings"]["dtypes"]:
        for axis, axis_label in AXES.items():
            sel = [r for r in rows if r["dtype"] == dtype and axis in r["scans"]]
            if len({_scan_value(r, axis) for r in sel}) < 2:
                continue
            fws = [fw for fw in ("torch", "jax") if any(r["framework"] == fw for r in sel)]
            fig, axs = plt.subplots(len(fws), 3, figsize=(15, 4.3 * len(fws)), dpi=110, squeeze=False)
            for i, fw in enumerate(fws):
                a_t, a_r, a_m = axs[i]
                keys = [k for k in dict.fromkeys(r["key"] for r in sel if r["framework"] == fw)]
                for k in keys:
                    pts = sorted((_scan_value(r, axis), r) for r in sel if r["framework"] == fw and r["key"] == k)
                    lab = next(r["label"] for _, r in pts)
                    ls = "-" if k.startswith("co-") else "--"
                    tp = [(x, r["time_min_s"] * 1e3, r["time_median_s"] * 1e3) for x, r in pts if r.get("time_min_s")]
                    if tp:
                        xs, mn, md = zip(*tp)
                        a_t.plot(xs, mn, ls, marker="o", color=COLORS.get(k), label=lab, ms=4)
                        a_t.plot(xs, md, ls="none", marker="_", color=COLORS.get(k), ms=9)
                    mp = [(x, r["peak_bytes"] / 2**20) for x, r in pts if r.get("peak_bytes")]
                    if mp:
                        xs, ms = zip(*mp)
                        a_m.plot(xs, ms, ls, marker="o", color=COLORS.get(k), label=lab, ms=4)
                es = [e for e in ratios if e["framework"] == fw and e["dtype"] == dtype and axis in e["scans"]
                      and "ratio_min" in e]
                for peer in dict.fromkeys(e["peer"] for e in es):
                    pts = sorted((_scan_value(e, axis), e) for e in es if e["peer"] == peer)
                    xs = [x for x, _ in pts]
                    lab = f"{pts[0][1]['method']}: vs {pts[0][1]['peer_label']}"
                    a_r.plot(xs, [e["ratio_min"] for _, e in pts], "-", marker="o", color=COLORS.get(peer), ms=4,
                             label=lab + " (min)")
                    a_r.plot(xs, [e["ratio_median"] for _, e in pts], ":", marker="x", color=COLORS.get(peer), ms=5)
                a_r.axhline(TIME_TARGET, color="k", lw=1)
                top = max([TIME_TARGET] + [e[k] for e in es for k in ("ratio_min", "ratio_median")])
                a_r.set_ylim(0, 1.25 * top)
                a_r.text(0.99, 0.98, "black line: target 1.0; solid: min, dotted: median", transform=a_r.transAxes,
                         fontsize=7, color="0.3", ha="right", va="top")
                for a in (a_t, a_r, a_m):
                    a.set_xscale("log", base=2)
                    a.grid(True, which="both", alpha=0.3)
                    a.set_xlabel(axis_label)
                    xs_all = sorted({_scan_value(r, axis) for r in sel})
                    a.set_xticks(xs_all)
                    a.set_xticklabels([f"{x:g}" for x in xs_all])
                a_t.set_yscale("log")
                a_m.set_yscale("log")
                a_t.set_ylabel("time per gradient, ms (line: min, dash: median)")
                a_r.set_ylabel("crossode time / peer time")
                a_m.set_ylabel("peak MiB (" + ("RSS" if fw == "torch" and dev == "cpu" else
                                               "CUDA allocator" if fw == "torch" else "XLA temp") + ")")
                a_t.set_title(f"{fw}: time per gradient", fontsize=10)
                a_r.set_title(f"{fw}: crossode / peer, same method", fontsize=10)
                a_m.set_title(f"{fw}: peak memory of one gradient", fontsize=10)
                a_t.legend(fontsize=7, loc="best", framealpha=0.8)
                a_r.legend(fontsize=7, loc="lower left", framealpha=0.8)
            fig.suptitle(f"Scale benchmark, {dtype}, scan over {axis_label} ({_base_text(rows, dtype)}; rtol = atol = "
                         f"{data['settings']['rtol']:g}) on {where}", fontsize=11)
            fig.tight_layout()
            name = f"scan_{axis}_{dtype}.png"
            fig.savefig(out / name)
            plt.close(fig)
            written.append(name)
    mem = [r for r in rows if "memory_T" in r["scans"]]
    if mem:
        fws = [fw for fw in ("torch", "jax") if any(r["framework"] == fw for r in mem)]
        fig, axs = plt.subplots(1, len(fws), figsize=(7.2 * len(fws), 4.8), dpi=110, squeeze=False)
        tg = targets(rows, ratios)
        for a, fw in zip(axs[0], fws):
            for k in dict.fromkeys(r["key"] for r in mem if r["framework"] == fw):
                pts = sorted((r["T"], r) for r in mem if r["framework"] == fw and r["key"] == k
                             and r.get("peak_bytes") and r["status"] in TIMED)
                if not pts:
                    continue
                lab = pts[0][1]["label"]
                a.plot([t for t, _ in pts], [r["peak_bytes"] / 2**20 for _, r in pts],
                       "-" if k.startswith("co-") else "--", marker="o", color=COLORS.get(k), label=lab,
                       lw=2.4 if k == "co-mali" else 1.4)
            txt = []
            for m in tg["memory"]:
                if m["framework"] == fw and "ratio" in m:
                    txt.append(f"MALI growth / {m['direct']} growth = {100 * m['ratio']:.2f}% ({m['status']})")
                elif m["framework"] == fw and "direct" in m:
                    txt.append(f"{m['direct']}: {m['status']}")
            if txt:
                a.text(0.98, 0.5, "\n".join(txt) + f"\ntarget <= {100 * MEMORY_TARGET:.0f}%", transform=a.transAxes,
                       ha="right", va="center", fontsize=8, bbox=dict(boxstyle="round", fc="white", ec="0.6"))
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            ts = sorted({r["T"] for r in mem})
            a.set_xticks(ts)
            a.set_xticklabels([f"{t:g}" for t in ts])
            a.set_xlabel("T (integration length)")
            a.set_ylabel("peak RSS above baseline, MiB" if dev == "cpu" else "peak device memory, MiB")
            a.grid(True, which="both", alpha=0.3)
            a.legend(fontsize=7, loc="upper left")
            c = mem[0]
            a.set_title(f"{fw}: batch {c['batch']}, MLP {c['widths']}, {c['dtype']}", fontsize=10)
        fig.suptitle(f"Memory target cell: one gradient, T = 1 vs 16 (rtol = atol = {data['settings']['rtol']:g})",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(out / "memory_target.png")
        plt.close(fig)
        written.append("memory_target.png")
    return written


# ------------------------------------------------------------------------------------------------ all


def write_report(data: dict, out: pathlib.Path) -> None:
    """``results.json`` (rows, ratios, targets), ``results.csv`` (rows), ``results.md`` and the figures."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    ratios = ratio_rows(data["rows"])
    tg = targets(data["rows"], ratios)
    data = dict(data, ratios=ratios, targets=tg)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=float))
    df = pd.DataFrame(data["rows"])
    if "scans" in df:
        df["scans"] = df["scans"].map(lambda x: "+".join(x))
    df.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(markdown(data, ratios, tg))
    data["figures"] = figures(data, ratios, out)

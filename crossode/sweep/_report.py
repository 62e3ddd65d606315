"""Reports from results files: a pandas DataFrame, Markdown/CSV tables, matplotlib figures, one-page MD/HTML.

Figures (Agg backend, written only when the data has what they need):

- ``work_precision.png``: gradient error vs gradient time, log-log, one line per backend x method, a panel per
  problem (and integration length);
- ``error_vs_rtol.png`` / ``error_vs_dt.png``: gradient error vs tolerance / fixed step;
- ``memory_vs_length.png``: peak memory vs integration length ``t1`` (from ``tags.t1``);
- ``nfe.png``: forward/backward function evaluations per method.

Failed cells are drawn, not dropped: an ``x`` in a "failed" band at the top of the panel, labelled with the status
(at the time the worker spent when no gradient time exists); cells that could not run at all (``unsupported``,
``unavailable``) are listed under the figure. Every table marks failures by status.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import platform
from collections.abc import Sequence

from .._errors import InvalidInputError
from ._store import latest_by_cell, read_records

__all__ = ["records_frame", "load_records", "write_report"]

NOT_RUN = ("unsupported", "unavailable")
BACKEND_STYLE = {"torch": ("-", "o"), "jax": ("--", "s"), "julia": (":", "D"), "reference": ("-.", "^")}
STATUS_SHORT = {"max_steps": "max steps", "step_size_too_small": "dt→0", "diverged": "diverged",
                "reconstruction_error": "recon.", "solver_error": "solver err", "crashed": "crashed",
                "timeout": "timeout", "unsupported": "unsupp.", "unavailable": "unavail.",
                "inaccurate": "inaccurate"}
HAS_NUMBERS = ("ok", "inaccurate")
"""Statuses whose records carry measurements (``inaccurate``: finished, gradient error above what the step control
promises, :func:`crossode.error_limit`)."""
ERR_FLOOR = 1e-17
ERR_CEIL = 10.0
"""Errors above this (1000 %, up to inf) are drawn at it with an up-triangle and their value, so that one exploded
gradient does not squash every other line into the bottom of the axes."""
MEM_FLOOR = 4096


# ------------------------------------------------------------------------------------------------ frames


def _step_label(r) -> str:
    if r.get("dt") is not None:
        return f"dt={r['dt']:g}"
    if r.get("rtol") is not None:
        return f"rtol={r['rtol']:g}"
    return "-"


def records_frame(records: Sequence[dict]):
    """A DataFrame with one row per record: every :class:`~crossode.Record` field (gradients left out) plus

    ``method`` (``solver+sensitivity``), ``series`` (``backend method``), ``step`` (``rtol=…``/``dt=…``),
    ``step_kind``, ``t1``, ``cell``, ``label``, ``sweep``, ``replicate``, ``failed`` (status is a failure of a cell
    that ran), ``not_run`` (unsupported/unavailable), ``git_commit``, ``cpu``, ``peak_memory_mb``,
    ``time_gradient_ms``.
    """
    import pandas as pd

    rows = []
    for r in records:
        r = dict(r)
        r.pop("dparams", None)
        r.pop("dy0", None)
        tags = r.get("tags") or {}
        machine = tags.get("machine") or {}
        r.update(
            method=f"{r.get('solver')}+{r.get('sensitivity')}",
            series=f"{r.get('backend')} {r.get('solver')}+{r.get('sensitivity')}",
            step=_step_label(r),
            step_kind="fixed" if r.get("dt") is not None else "adaptive",
            t1=tags.get("t1"), cell=tags.get("cell"), label=tags.get("label"), sweep=tags.get("sweep"),
            replicate=tags.get("replicate", 0), git_commit=tags.get("git_commit"), cpu=machine.get("cpu"),
            not_run=r.get("status") in NOT_RUN,
            failed=r.get("status") not in HAS_NUMBERS and r.get("status") not in NOT_RUN,
        )
        rows.append(r)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for col in ("grad_error", "loss_error", "time_gradient_s", "time_forward_s", "compile_s", "rtol", "atol", "dt",
                "t1", "peak_memory_bytes", "nfe_forward", "nfe_backward", "taylor_slope", "taylor_inconsistency"):
        if col not in df:
            df[col] = None
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["peak_memory_mb"] = df["peak_memory_bytes"] / 1e6
    df["time_gradient_ms"] = df["time_gradient_s"] * 1e3
    return df


def load_records(path):
    """Read one JSONL results file (or a list of them) into :func:`records_frame`'s DataFrame.

    A cell with several records (run again with ``--retry-failed``) keeps its latest; lines that are not records
    are skipped with a warning naming the line.
    """
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    records = []
    for p in paths:
        records += read_records(p)
    return records_frame(latest_by_cell(records))


# ------------------------------------------------------------------------------------------------ tables


def _fmt_cell(v, kind=None) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if kind == "err":
        return f"{v:.1e}"
    if kind == "int":
        return f"{int(v)}"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def md_table(df, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (strings as given; pipes escaped)."""
    if df is None or df.empty:
        return "_(none)_\n"
    shown = df if max_rows is None or len(df) <= max_rows else df.head(max_rows)
    cols = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in row.values) + " |")
    if len(shown) < len(df):
        lines.append(f"\n_… {len(df) - len(shown)} more rows in the CSV._")
    return "\n".join(lines) + "\n"


def _first_line(msg, n=120) -> str:
    msg = (msg or "").strip().splitlines()
    return (msg[0] if msg else "")[:n]


def summary_table(df):
    """One row per record: the numbers that matter, failures with their status."""
    import pandas as pd

    out = pd.DataFrame({
        "problem": df["problem"],
        "t1": df["t1"].map(lambda v: _fmt_cell(v)),
        "backend": df["backend"],
        "method": df["method"],
        "step": df["step"],
        "status": df.apply(lambda r: r["status"] if r["status"] == "ok" else f"**{r['status']}**", axis=1),
        "grad err": df["grad_error"].map(lambda v: _fmt_cell(v, "err")),
        "grad ms": df["time_gradient_ms"].map(lambda v: _fmt_cell(v)),
        "compile s": df["compile_s"].map(lambda v: _fmt_cell(v)),
        "NFE f/b": [f"{_fmt_cell(a, 'int')}/{_fmt_cell(b, 'int')}" for a, b in zip(df["nfe_forward"],
                                                                                 df["nfe_backward"])],
        "peak MB": df["peak_memory_mb"].map(lambda v: _fmt_cell(v)),
        "note": df.apply(lambda r: "" if r["status"] == "ok" else _first_line(r.get("message")), axis=1),
    })
    if "taylor_status" in df and df["taylor_status"].notna().any():  # cells measured with the Taylor test
        out.insert(out.columns.get_loc("grad ms"), "Taylor slope", [
            "–" if st is None or st != st else (st if sl != sl else f"{sl:.2f}")
            for st, sl in zip(df["taylor_status"], df["taylor_slope"])])
    return out.reset_index(drop=True)


def agreement_table(df):
    """Problem x method x step rows, one column per backend: gradient error vs the reference, or the status."""
    import pandas as pd

    if df.empty:
        return pd.DataFrame()
    d = df.copy()
    d["value"] = d.apply(lambda r: _fmt_cell(r["grad_error"], "err") if r["status"] == "ok" else
                         f"**{STATUS_SHORT.get(r['status'], r['status'])}**"
                         + (f" {_fmt_cell(r['grad_error'], 'err')}" if r["status"] in HAS_NUMBERS else ""), axis=1)
    index = ["problem"] + (["t1"] if d.groupby("problem")["t1"].nunique().max() > 1 else []) + ["method", "step"]
    d["t1"] = d["t1"].map(lambda v: _fmt_cell(v))
    # replicates: first one (errors are deterministic; times are in the summary)
    table = d.drop_duplicates(index + ["backend"]).pivot(index=index, columns="backend", values="value")
    table = table.fillna("").reset_index()
    table.columns.name = None
    return table


def nfe_table(df):
    """Forward/backward NFE and accepted/rejected steps per cell that finished."""
    import pandas as pd

    ok = df[df["status"].isin(HAS_NUMBERS)]
    return pd.DataFrame({
        "problem": ok["problem"], "t1": ok["t1"].map(_fmt_cell), "backend": ok["backend"], "method": ok["method"],
        "step": ok["step"], "NFE fwd": ok["nfe_forward"].map(lambda v: _fmt_cell(v, "int")),
        "NFE bwd": ok["nfe_backward"].map(lambda v: _fmt_cell(v, "int")),
        "steps acc": ok["steps_accepted"].map(lambda v: _fmt_cell(v, "int")),
        "steps rej": ok["steps_rejected"].map(lambda v: _fmt_cell(v, "int")),
    }).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
                         "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": ":"})
    return plt


class _Styles:
    """Colour per method (solver+sensitivity), line style and marker per backend: the same method has the same
    colour in every backend, so backends are compared along one colour."""

    def __init__(self, df):
        import matplotlib

        methods = sorted(df["method"].unique())
        cmap = matplotlib.colormaps["tab10"].colors + matplotlib.colormaps["Dark2"].colors
        self.color = {m: cmap[i % len(cmap)] for i, m in enumerate(methods)}

    def __call__(self, backend, method):
        ls, marker = BACKEND_STYLE.get(backend, ("-", "o"))
        return {"color": self.color[method], "linestyle": ls, "marker": marker}


def _facets(df, need_multi: str | None = None, max_panels: int = 12):
    """(problem, t1) groups to draw; with ``need_multi`` only groups where some series has >= 2 values of it."""
    keys = []
    for (problem, t1), g in df.groupby(["problem", "t1"], dropna=False, sort=False):
        if need_multi is not None:
            ok = g[g["status"].isin(HAS_NUMBERS)]
            if ok.empty or ok.groupby("series")[need_multi].nunique().max() < 2:
                continue
        keys.append((problem, t1, g))
    multi_t1 = df.groupby("problem")["t1"].nunique().max() > 1
    return keys[:max_panels], multi_t1


def _grid(plt, n, w=4.6, h=3.5):
    ncols = min(3, n)
    nrows = (n + ncols - 1) // ncols
    width = max(w * ncols, 7.5)  # room for the legend and the title even with one panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, h * nrows + 1.2), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]


def _legend(fig, axes):
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            is_line = getattr(h, "get_linestyle", lambda: "none")() not in ("none", "None", "")
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
            elif is_line and handles[lab].get_linestyle() in ("none", "None", ""):
                handles[lab] = h  # prefer a line over a failure marker for the legend entry
    if labels:
        longest = max(len(lab) for lab in labels)
        ncol = max(1, min(len(labels), int(fig.get_figwidth() / (0.6 + 0.075 * longest))))
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
        rows = (len(labels) + ncol - 1) // ncol
        return (0.1 + 0.2 * rows) / fig.get_figheight()
    return 0.02


def _mark_failures(ax, fails, x_col, styles, y=0.96):
    """Failed cells as x markers in a band at the top of the axes, with their status."""
    if not any(x == x and x is not None and x > 0 for x in fails[x_col]):
        return
    # headroom: keep the data below the band
    lo, hi = ax.get_ylim()
    if ax.get_yscale() == "log" and lo > 0:
        ax.set_ylim(lo, lo * (hi / lo) ** (1 / 0.86))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / 0.86)
    tr = ax.get_xaxis_transform()
    placed = []
    n_fail = sum(1 for x in fails[x_col] if x is not None and x == x and x > 0)
    fails = fails.sort_values(x_col)
    for _, r in fails.iterrows():
        x = r[x_col]
        if x is None or x != x or x <= 0:
            continue
        st = styles(r["backend"], r["method"])
        ax.plot([x], [y], marker="x", color=st["color"], markersize=8, mew=2, transform=tr, clip_on=False,
                linestyle="none", label=f"{r['backend']} · {r['method']}")
        # one label row per failure (labels run to the right, so nearby ones would overlap); many: a count only
        k = len(placed)
        placed.append(x)
        if n_fail <= 6:
            text = f"{r['backend']}: {STATUS_SHORT.get(r['status'], r['status'])}"
            ax.annotate(text, (x, y), xycoords=tr, xytext=(4, -10 - 9 * k), textcoords="offset points",
                        fontsize=7, color=st["color"])
    if placed:
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((0, 0.92), 1, 0.08, transform=ax.transAxes, color="0.92", zorder=0, linewidth=0))
        ax.text(0.01, 0.99, "failed" if n_fail <= 6 else f"failed: {n_fail} cells (see the failures table)",
                transform=ax.transAxes, fontsize=7, va="top", color="0.35")


def _plot_err(ax, x, err, label, style):
    """A line of gradient errors, clipped to [ERR_FLOOR, ERR_CEIL]; points above the ceiling marked and labelled."""
    import numpy as np

    x = np.asarray(x, float)
    err = np.asarray(err, float)
    y = np.clip(err, ERR_FLOOR, ERR_CEIL)  # inf -> ceiling; NaN stays a gap
    ax.plot(x, y, label=label, markersize=4, linewidth=1.2, **style)
    placed = ax.__dict__.setdefault("_crossode_capped", [])
    for xi, ei in zip(x, err):
        if ei > ERR_CEIL:
            ax.plot([xi], [ERR_CEIL], marker="^", markersize=8, color=style["color"], linestyle="none")
            k = sum(1 for p in placed if abs(math.log10(p) - math.log10(xi)) < 0.5)
            placed.append(xi)
            ax.annotate("inf" if not np.isfinite(ei) else f"{ei:.0e}", (xi, ERR_CEIL), xytext=(6, -3 - 9 * k),
                        textcoords="offset points", fontsize=7, color=style["color"])


def _title(problem, t1, multi_t1):
    return f"{problem}" + (f"  (t1={t1:g})" if multi_t1 and t1 == t1 and t1 is not None else "")


def _median_by(df, keys, cols):
    return df.groupby(keys, dropna=False, sort=False)[cols].median().reset_index()


def fig_work_precision(df, path, styles) -> str | None:
    """Gradient error vs gradient time (log-log), a line per backend x method through its tolerances/steps."""
    plt = _plt()
    ok_all = df[(df["status"].isin(HAS_NUMBERS)) & df["grad_error"].notna() & df["time_gradient_s"].notna()]
    if ok_all.empty:
        return None
    facets, multi_t1 = _facets(df, need_multi="step")
    if not facets:  # one setting per series: a panel for every problem that ran, failures included
        facets, multi_t1 = _facets(df[~df["not_run"]])
    fig, axes = _grid(plt, len(facets))
    for ax, (problem, t1, g) in zip(axes, facets):
        ok = g[(g["status"].isin(HAS_NUMBERS)) & g["grad_error"].notna() & g["time_gradient_s"].notna()]
        med = _median_by(ok, ["backend", "method", "step", "rtol", "dt"], ["time_gradient_s", "grad_error"])
        for (b, m), s in med.groupby(["backend", "method"], sort=True):
            # connect tolerances (or steps) in order, loosest first, as work-precision diagrams do
            s = s.assign(_k=s["rtol"].fillna(s["dt"])).sort_values("_k", ascending=False)
            _plot_err(ax, s["time_gradient_s"], s["grad_error"], f"{b} · {m}", styles(b, m))
        fails = g[g["failed"]].copy()
        fails["x"] = fails["time_gradient_s"].fillna(fails["tags"].map(lambda t: (t or {}).get("worker_wall_s")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        if ok.empty:  # every cell failed: give the band an axis to sit on
            ax.set_ylim(1e-10, 1.0)
        _mark_failures(ax, fails, "x", styles)
        ax.set_title(_title(problem, t1, multi_t1))
        ax.set_xlabel("gradient time [s] (median)")
        ax.set_ylabel("gradient rel. L2 error")
    bottom = _legend(fig, axes)
    fig.suptitle("Work-precision: gradient error vs time (lower left is better)", fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_error_vs(df, x: str, path, styles) -> str | None:
    """Gradient error vs ``x`` ('rtol' or 'dt'), with the line error = x for orientation."""
    plt = _plt()
    d = df[df[x].notna()]
    facets, multi_t1 = _facets(d, need_multi=x)
    if not facets:
        return None
    fig, axes = _grid(plt, len(facets))
    for ax, (problem, t1, g) in zip(axes, facets):
        ok = g[(g["status"].isin(HAS_NUMBERS)) & g["grad_error"].notna()]
        med = _median_by(ok, ["backend", "method", x], ["grad_error"])
        for (b, m), s in med.groupby(["backend", "method"], sort=True):
            s = s.sort_values(x)
            _plot_err(ax, s[x], s["grad_error"], f"{b} · {m}", styles(b, m))
        xs = sorted(g[x].unique())
        ax.plot(xs, xs, color="0.6", linewidth=0.8, linestyle=(0, (4, 3)), label=f"error = {x}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _mark_failures(ax, g[g["failed"]], x, styles)
        ax.set_title(_title(problem, t1, multi_t1))
        ax.set_xlabel(x if x == "rtol" else "fixed step dt")
        ax.set_ylabel("gradient rel. L2 error")
    bottom = _legend(fig, axes)
    what = "tolerance (rtol)" if x == "rtol" else "fixed step size"
    fig.suptitle(f"Gradient error vs {what}", fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
    return path


def fig_memory_vs_length(df, path, styles) -> str | None:
    """Peak memory vs integration length t1 (log-log), a panel per problem and step."""
    from matplotlib.ticker import FuncFormatter

    plt = _plt()
    d = df[df["t1"].notna()]
    panels = []
    for (problem, step), g in d.groupby(["problem", "step"], sort=False):
        ok = g[(g["status"].isin(HAS_NUMBERS)) & g["peak_memory_bytes"].notna()]
        if not ok.empty and ok.groupby("series")["t1"].nunique().max() >= 2:
            panels.append((problem, step, g))
    if not panels:
        return None
    fig, axes = _grid(plt, len(panels[:12]))
    kinds = set()
    for ax, (problem, step, g) in zip(axes, panels):
        ok = g[(g["status"].isin(HAS_NUMBERS)) & g["peak_memory_bytes"].notna()]
        kinds |= set(ok["memory_kind"].dropna())
        med = _median_by(ok, ["backend", "method", "t1"], ["peak_memory_bytes"])
        for (b, m), s in med.groupby(["backend", "method"], sort=True):
            s = s.sort_values("t1")
            ax.plot(s["t1"], s["peak_memory_bytes"].clip(lower=MEM_FLOOR) / 1e6, label=f"{b} · {m}", markersize=5,
                    linewidth=1.4, **styles(b, m))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
        ts = sorted(g["t1"].unique())
        ax.set_xticks(ts, [f"{t:g}" for t in ts])
        _mark_failures(ax, g[g["failed"]], "t1", styles)
        ax.set_title(f"{problem}, {step}")
        ax.set_xlabel("integration length t1")
        ax.set_ylabel("peak memory [MB]")
    bottom = _legend(fig, axes)
    kind = ", ".join(sorted(kinds)) or "unknown"
    fig.suptitle(f"Peak memory of one gradient vs integration length ({kind})", fontsize=11)
    fig.tight_layout(rect=(0, bottom, 1, 0.97))
    fig.savefig(path)
    plt.close(fig)
    return path


def _mode(series):
    vc = series.value_counts()
    return vc.index[0] if len(vc) else None


def fig_nfe(df, path, styles) -> str | None:
    """Forward (solid) and backward (hatched) NFE per backend x method at each problem's most common setting."""
    import numpy as np

    plt = _plt()
    ran = df[~df["not_run"]]
    if ran.empty or ran["nfe_forward"].notna().sum() == 0:
        return None
    panels = []
    for problem, g in ran.groupby("problem", sort=False):
        t1 = _mode(g["t1"]) if g["t1"].notna().any() else None
        g = g[g["t1"] == t1] if t1 is not None else g
        step = _mode(g["step"])
        g = g[g["step"] == step].drop_duplicates(["backend", "method"])
        if not g.empty:  # all-failed problems too: their statuses are the message
            panels.append((problem, t1, step, g.sort_values(["method", "backend"])))
    if not panels:
        return None
    panels = panels[:12]
    width_per = max(2.6, 0.5 * max(len(p[3]) for p in panels))
    fig, axes = _grid(plt, len(panels), w=max(4.6, width_per), h=3.6)
    for ax, (problem, t1, step, g) in zip(axes, panels):
        x = np.arange(len(g))
        top = float(np.nanmax(np.concatenate([g["nfe_forward"].to_numpy(float), g["nfe_backward"].to_numpy(float),
                                              [1.0]])))
        for i, (_, r) in enumerate(g.iterrows()):
            st = styles(r["backend"], r["method"])
            # x in data coordinates, y as a fraction of the axes: labels stay inside whatever the bar heights
            label_at = ax.get_xaxis_transform()
            if r["status"] not in HAS_NUMBERS:
                ax.text(i, 0.03, STATUS_SHORT.get(r["status"], r["status"]), rotation=90, ha="center",
                        va="bottom", fontsize=7, color="firebrick", transform=label_at)
                continue
            if r["status"] != "ok":  # finished with numbers (e.g. inaccurate): draw the bars, flag the status
                ax.text(i, 0.97, STATUS_SHORT.get(r["status"], r["status"]), rotation=90, ha="center",
                        va="top", fontsize=7, color="firebrick", transform=label_at)
            f, b = r["nfe_forward"], r["nfe_backward"]
            if f == f:
                ax.bar(i - 0.2, f, width=0.4, color=st["color"], edgecolor="black", linewidth=0.4)
            if b == b:
                ax.bar(i + 0.2, b, width=0.4, color=st["color"], alpha=0.55, hatch="///", edgecolor="black",
                       linewidth=0.4)
            if f != f and b != b:
                ax.text(i, 0.03, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4",
                        transform=label_at)
        ax.set_xticks(x, [f"{r['backend']}\n{r['method']}" for _, r in g.iterrows()], rotation=35, ha="right",
                      fontsize=7, rotation_mode="anchor")
        ax.set_xlim(-0.6, len(g) - 0.4)
        ax.set_ylim(0, top * 1.08)
        ax.set_ylabel("function evaluations")
        ax.set_title(f"{problem} ({step}" + (f", t1={t1:g})" if t1 is not None else ")"))
        ax.grid(axis="x", visible=False)
    from matplotlib.patches import Patch

    fig.legend([Patch(facecolor="0.6", edgecolor="black"), Patch(facecolor="0.6", alpha=0.55, hatch="///",
                                                                 edgecolor="black")],
               ["forward NFE", "backward NFE"], loc="lower center", ncol=2, frameon=False)
    fig.suptitle("Function evaluations per gradient (forward | backward)", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97), h_pad=2.5)  # rotated tick labels need room above the next row
    fig.savefig(path)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ report


def _footer(df) -> list[tuple[str, str]]:
    """Reproducibility facts: versions, machine, threads, git commit (from the records; this machine otherwise)."""
    from ._sweep import git_commit, machine_info

    versions: dict[str, set] = {}
    for v in df.get("versions", []):
        for k, val in (v or {}).items():
            versions.setdefault(k, set()).add(str(val))
    machines = {json.dumps(t.get("machine"), sort_keys=True) for t in df["tags"] if (t or {}).get("machine")}
    rows = []
    if machines:
        for m in sorted(machines):
            m = json.loads(m)
            rows.append(("machine (measured on)", f"{m.get('cpu')}, {m.get('cores')} cores; GPU: {m.get('gpu') or 'none'};"
                         f" {m.get('os')}"))
    else:
        m = machine_info()
        rows.append(("machine (this one; records carry none)", f"{m['cpu']}, {m['cores']} cores; "
                     f"GPU: {m['gpu'] or 'none'}; {m['os']}"))
    threads = sorted({int(t) for t in df["threads"].dropna()}) if "threads" in df else []
    rows.append(("threads per cell", ", ".join(map(str, threads)) or "not recorded"))
    rows.append(("versions", "; ".join(f"{k} {', '.join(sorted(v))}" for k, v in sorted(versions.items())) or "–"))
    commits = sorted({c for c in df["git_commit"].dropna()}) if "git_commit" in df else []
    rows.append(("crossode commit", ", ".join(commits) or (git_commit() or "unknown") + " (report time)"))
    rows.append(("report generated", datetime.datetime.now().strftime("%Y-%m-%d %H:%M") +
                 f" with Python {platform.python_version()}"))
    return rows


def _reference_note(df) -> str:
    """Each reference method with the problems it served (records may mix closed form and DOP853/Radau)."""
    if "reference" not in df or not df["reference"].notna().any():
        return ""
    parts = []
    for method, g in df[df["reference"].notna()].groupby("reference", sort=True):
        probs = sorted(set(g["problem"]))
        shown = ", ".join(probs[:6]) + (f" and {len(probs) - 6} more" if len(probs) > 6 else "")
        parts.append(f"{method} for {shown}")
    return " (" + "; ".join(parts) + ")"


def write_report(paths, out_dir=None, title: str | None = None) -> str:
    """Write ``tables/``, ``figures/``, ``report.md`` and ``report.html`` for results file(s); returns report.md.

    ``out_dir`` defaults to ``<stem of the first file>_report`` next to it (training results files have their own
    report: :func:`crossode.train._report.write_training_report`; ``crossode report`` picks it).
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    paths = [os.fspath(p) for p in paths]
    if out_dir is None:
        out_dir = os.path.splitext(paths[0])[0] + "_report"
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise InvalidInputError(f"report directory {out_dir!r} exists and is not a directory; give a directory "
                                "(created if missing) with --out.")
    tables_dir = os.path.join(out_dir, "tables")
    fig_dir = os.path.join(out_dir, "figures")
    try:
        os.makedirs(tables_dir, exist_ok=True)
        os.makedirs(fig_dir, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"report directory {out_dir!r} cannot be created ({e.strerror or e}).") from None
    df = load_records(paths)
    sweeps = sorted({s for s in df["sweep"].dropna()}) if not df.empty else []
    title = title or ("crossode report: " + (", ".join(sweeps) if sweeps else os.path.basename(paths[0])))
    blocks: list[tuple] = [("h1", title)]
    if df.empty:
        blocks.append(("p", "No records."))
        return _write_docs(out_dir, blocks)

    counts = df["status"].value_counts()
    blocks.append(("p", f"{len(df)} records from {', '.join(os.path.basename(p) for p in paths)}: "
                        + ", ".join(f"{k} {v}" for k, v in counts.items()) + ". Errors are relative L2 errors of "
                        "the gradient (parameters and y0) against the independent reference"
                        + _reference_note(df)
                        + "; times are medians after a warm-up call; peak memory is measured on the first call in "
                          "a fresh process."))

    # tables
    full = df.drop(columns=[c for c in ("tags", "versions", "solver_options", "sensitivity_options") if c in df])
    full.to_csv(os.path.join(tables_dir, "records.csv"), index=False)
    summary = summary_table(df)
    agreement = agreement_table(df)
    nfe = nfe_table(df)
    failures = summary[df["failed"].to_numpy() | df["not_run"].to_numpy()]
    for name, t in (("summary", summary), ("agreement", agreement), ("nfe", nfe), ("failures", failures)):
        t.to_csv(os.path.join(tables_dir, f"{name}.csv"), index=False)
        with open(os.path.join(tables_dir, f"{name}.md"), "w") as fh:
            fh.write(md_table(t))

    # figures
    styles = _Styles(df)
    figures = [
        ("Work-precision", fig_work_precision(df, os.path.join(fig_dir, "work_precision.png"), styles),
         "Gradient error against gradient time; each line runs through one method's tolerances or step sizes."),
        ("Gradient error vs tolerance", fig_error_vs(df, "rtol", os.path.join(fig_dir, "error_vs_rtol.png"), styles),
         "Dashed grey: error = rtol. Discrete (DTO) gradients track the forward error; continuous adjoints (OTD) "
         "add the adjoint's own error."),
        ("Gradient error vs fixed step", fig_error_vs(df, "dt", os.path.join(fig_dir, "error_vs_dt.png"), styles),
         "Fixed-step cells: error against the step size."),
        ("Peak memory vs integration length", fig_memory_vs_length(
            df, os.path.join(fig_dir, "memory_vs_length.png"), styles),
         "Peak memory of one gradient (first call, fresh process) against t1."),
        ("Function evaluations", fig_nfe(df, os.path.join(fig_dir, "nfe.png"), styles),
         "Forward (solid) and backward (hatched) evaluations at each problem's most common setting."),
    ]
    not_run = df[df["not_run"]]
    not_run_note = ""
    if not not_run.empty:
        groups = not_run.groupby(["backend", "status"]).size()
        not_run_note = "Not run (not drawn): " + "; ".join(f"{b} {s} × {n}" for (b, s), n in groups.items()) + "."
    for heading, fig, caption in figures:
        if fig is None:
            continue
        blocks += [("h2", heading), ("img", os.path.relpath(fig, out_dir), heading), ("p", caption)]
        if not_run_note:
            blocks.append(("small", not_run_note))

    blocks += [("h2", "Agreement with the reference (gradient rel. L2 error; failures in bold)"),
               ("table", agreement, 80, "tables/agreement.csv")]
    if not failures.empty:
        blocks += [("h2", f"Failures and cells not run ({len(failures)})"),
                   ("table", failures[["problem", "t1", "backend", "method", "step", "status", "note"]], 60,
                    "tables/failures.csv")]
    blocks += [("h2", f"All records ({len(summary)})"), ("table", summary.drop(columns=["note"]), 60,
                                                          "tables/summary.csv")]
    blocks += [("h2", "Reproducibility"), ("kv", _footer(df))]
    return _write_docs(out_dir, blocks)


def _write_docs(out_dir, blocks) -> str:
    md, body = [], []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            md.append(f"# {b[1]}\n")
            body.append(f"<h1>{html.escape(b[1])}</h1>")
        elif kind == "h2":
            md.append(f"## {b[1]}\n")
            body.append(f"<h2>{html.escape(b[1])}</h2>")
        elif kind == "p":
            md.append(b[1] + "\n")
            body.append(f"<p>{html.escape(b[1])}</p>")
        elif kind == "small":
            md.append(f"_{b[1]}_\n")
            body.append(f"<p class='small'>{html.escape(b[1])}</p>")
        elif kind == "img":
            md.append(f"![{b[2]}]({b[1]})\n")
            body.append(f"<img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'>")
        elif kind == "table":
            _, t, max_rows, csv = b
            md.append(md_table(t, max_rows) + f"\nCSV: [{csv}]({csv})\n")
            shown = t if len(t) <= max_rows else t.head(max_rows)
            h = shown.to_html(index=False, escape=True, border=0, classes="t")
            h = h.replace("<td>**", "<td class='fail'>").replace("**</td>", "</td>")
            more = f"<p class='small'>… {len(t) - max_rows} more rows in <a href='{csv}'>{csv}</a></p>" \
                if len(t) > max_rows else f"<p class='small'>CSV: <a href='{csv}'>{csv}</a></p>"
            body.append(h + more)
        elif kind == "kv":
            md.append("\n".join(f"- **{k}**: {v}" for k, v in b[1]) + "\n")
            body.append("<ul class='kv'>" + "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
                                                   for k, v in b[1]) + "</ul>")
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w") as fh:
        fh.write("\n".join(md))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "img{max-width:100%;border:1px solid #ddd;margin:.5em 0}"
             "table.t{border-collapse:collapse;font-size:12px;margin:.5em 0}"
             "table.t td,table.t th{border-bottom:1px solid #e3e3e3;padding:2px 8px;text-align:left}"
             "td.fail{color:#b22222;font-weight:600}.small{font-size:12px;color:#666}ul.kv{font-size:13px}")
    title = next((b[1] for b in blocks if b[0] == "h1"), "crossode report")
    with open(os.path.join(out_dir, "report.html"), "w") as fh:
        fh.write(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                 f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    return md_path

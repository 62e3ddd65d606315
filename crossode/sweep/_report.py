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

Made to be read at a glance: at most two columns, no wider than the HTML report's column (:data:`READ_WIDTH_PX`),
so nothing is scaled down; the legend at the top; log axes labelled at round values whatever their range
(:func:`_nice_log_ticks`); in-panel labels placed after the layout where they cover no other text or marker
(:func:`_layout_labels`); NFE on a log scale with each bar's count; an empty panel says why it is empty.
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

DPI = 110
PANEL_W, PANEL_H = 4.8, 3.6
READ_WIDTH_PX = 1056
"""Widest figure the HTML report shows unscaled (its column is 1100 px less padding, see :func:`_write_docs`):
figures use at most two columns of ``PANEL_W`` inches, so their text is read at the size it was set in."""
SMALL_PT = 7.5
"""Font size of the in-panel annotations (failure statuses, capped errors, bar values)."""
MAX_FAIL_LABELS = 8
"""More failure labels than this in one panel: the band says how many failed instead (see the failures table)."""
BAND = (0.92, 1.0)
"""The grey band at the top of a panel (axes fraction) where failed cells are drawn."""


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": "figure", "font.size": 9, "axes.titlesize": 10,
                         "legend.fontsize": 8.5, "axes.grid": True, "grid.alpha": 0.3, "grid.linestyle": ":",
                         "axes.xmargin": 0.06, "axes.ymargin": 0.08})
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
    """(problem, t1) groups to draw; with ``need_multi`` only groups where some series has >= 2 values of it, or
    where every cell that ran failed (drawn as an empty panel that says so), and none if no group has numbers."""
    keys = []
    for (problem, t1), g in df.groupby(["problem", "t1"], dropna=False, sort=False):
        if need_multi is not None:
            ok = g[g["status"].isin(HAS_NUMBERS)]
            if ok.empty and not g["failed"].any():
                continue
            if not ok.empty and ok.groupby("series")[need_multi].nunique().max() < 2:
                continue
        keys.append((problem, t1, g))
    if all(g[g["status"].isin(HAS_NUMBERS)].empty for _, _, g in keys):
        keys = []  # failures only: nothing to compare along ``need_multi``
    multi_t1 = df.groupby("problem")["t1"].nunique().max() > 1
    return keys[:max_panels], multi_t1


def _grid(plt, n, h=PANEL_H, one_column=False):
    """``n`` panels in at most two columns, the figure no wider than :data:`READ_WIDTH_PX` (constrained layout)."""
    ncols = 1 if n == 1 or one_column else 2
    nrows = (n + ncols - 1) // ncols
    width = READ_WIDTH_PX / DPI if ncols == 2 or one_column else 7.5
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, h * nrows + 0.8), squeeze=False, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig._crossode_rows = (nrows, h)
    return fig, axes.ravel()[:n]


def _legend(fig, axes, title, handles=None, labels=None):
    """One legend for the figure, at the top under the title (the title is the legend's), the figure grown to fit.

    Without ``handles`` it collects the panels' labelled artists, a line preferred over a failure marker."""
    if handles is None:
        found, labels = {}, []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                is_line = getattr(h, "get_linestyle", lambda: "none")() not in ("none", "None", "")
                if lab not in found:
                    found[lab] = h
                    labels.append(lab)
                elif is_line and found[lab].get_linestyle() in ("none", "None", ""):
                    found[lab] = h
        handles = [found[lab] for lab in labels]
    rows = 0
    if labels:
        longest = max(len(lab) for lab in labels)
        ncol = max(1, min(len(labels), int(fig.get_figwidth() / (0.7 + 0.075 * longest))))
        rows = (len(labels) + ncol - 1) // ncol
        fig.legend(handles, labels, loc="outside upper center", ncol=ncol, frameon=False, title=title,
                   title_fontsize=11)
    else:
        fig.suptitle(title, fontsize=11)
    nrows, h = fig._crossode_rows
    fig.set_figheight(nrows * h + 0.45 + 0.22 * rows)


def _no_data_note(ax, g):
    """Say in an empty panel why it is empty: every cell failed, with the statuses."""
    counts = g["status"].value_counts()
    text = "nothing to draw: no cell finished\n" + ", ".join(f"{n} × {STATUS_SHORT.get(s, s)}"
                                                              for s, n in counts.items())
    ax.text(0.5, 0.6, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3",
            linespacing=1.5)


def _pending(ax):
    return ax.__dict__.setdefault("_crossode_labels", [])


def _mark_failures(ax, fails, x_col, styles):
    """Failed cells as x markers in a grey band at the top of the axes, their statuses as labels placed (after the
    layout, :func:`_finish`) where they overlap no other text or marker. One label per method and status for
    failures less than 8 % of the axis apart (``jax, torch: max steps``)."""
    if fails.empty:
        return
    fails = fails[fails[x_col].map(lambda x: x is not None and x == x and x > 0).astype(bool)].sort_values(x_col)
    if fails.empty:
        return
    lo, hi = ax.get_ylim()  # headroom: keep the data below the band
    frac = 1 - (BAND[1] - BAND[0])
    if ax.get_yscale() == "log" and lo > 0:
        ax.set_ylim(lo, lo * (hi / lo) ** (1 / frac))
    else:
        ax.set_ylim(lo, lo + (hi - lo) / frac)
    from matplotlib.patches import Rectangle

    tr = ax.get_xaxis_transform()
    y = (BAND[0] + BAND[1]) / 2
    ax.add_patch(Rectangle((0, BAND[0]), 1, BAND[1] - BAND[0], transform=ax.transAxes, color="0.92", zorder=0,
                           linewidth=0))
    for _, r in fails.iterrows():
        ax.plot([float(r[x_col])], [y], marker="x", color=styles(r["backend"], r["method"])["color"], markersize=8,
                mew=2, transform=tr, clip_on=False, linestyle="none", label=f"{r['backend']} · {r['method']}")
    lo, hi = ax.get_xlim()
    near = (hi / lo) ** 0.08 if ax.get_xscale() == "log" and lo > 0 else None  # 8 % of the axis
    groups: list[dict] = []
    for _, r in fails.iterrows():
        x, st = float(r[x_col]), styles(r["backend"], r["method"])
        status = STATUS_SHORT.get(r["status"], r["status"])
        g = next((g for g in groups if g["method"] == r["method"] and g["status"] == status
                  and (x / g["x0"] < near if near else x - g["x0"] < 0.08 * (hi - lo))), None)
        if g is None:
            groups.append({"method": r["method"], "status": status, "x0": x, "xs": [x], "backends": [r["backend"]],
                           "color": st["color"]})
        else:
            g["xs"].append(x)
            if r["backend"] not in g["backends"]:
                g["backends"].append(r["backend"])
    if len(groups) > MAX_FAIL_LABELS:
        _pending(ax).append({"band": True, "text": f"failed: {len(fails)} cells (see the failures table)"})
        return
    _pending(ax).append({"band": True, "text": "failed"})
    for g in groups:
        _pending(ax).append({"xys": [(x, y) for x in g["xs"]], "transform": tr, "radius_pt": 4.5, "color": g["color"],
                             "text": f"{', '.join(sorted(g['backends']))}: {g['status']}"})


def _plot_err(ax, x, err, label, style, backend=""):
    """A line of gradient errors, clipped to [ERR_FLOOR, ERR_CEIL]; points above the ceiling marked and labelled."""
    import numpy as np

    x = np.asarray(x, float)
    err = np.asarray(err, float)
    y = np.clip(err, ERR_FLOOR, ERR_CEIL)  # inf -> ceiling; NaN stays a gap
    ax.plot(x, y, label=label, markersize=4, linewidth=1.2, **style)
    for xi, ei in zip(x, err):
        if ei > ERR_CEIL:
            ax.plot([xi], [ERR_CEIL], marker="^", markersize=8, color=style["color"], linestyle="none")
            value = "inf" if not np.isfinite(ei) else f"{ei:.0e}".replace("e+", "e")
            _pending(ax).append({"xys": [(xi, ERR_CEIL)], "transform": ax.transData, "radius_pt": 4.5,
                                 "color": style["color"], "text": f"{backend} {value}".strip()})


# --- log axes whose ticks read at any range


def _nice_log_ticks(lo: float, hi: float, max_n: int = 6) -> list[float]:
    """Tick values for a log axis over [lo, hi]: decades (every k-th when there are many), else 1-2-5 or 1-3 series,
    else (less than a decade or so) evenly spaced round numbers; at least two values whenever lo < hi."""
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return []

    def inside(vals):
        return sorted({v for v in vals if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9)})

    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = inside([float(f"1e{e}") for e in range(e0, e1 + 1)])
    if len(decades) >= 3:
        stride = math.ceil(len(decades) / max_n)
        vals = inside([float(f"1e{e}") for e in range(e0, e1 + 1) if e % stride == 0])
        return vals if len(vals) >= 2 else decades[::stride]
    for subs, most in (((1, 2, 5), max_n - 1), ((1, 3), max_n)):  # the richer series when it is not crowded
        vals = inside([float(f"{m}e{e}") for e in range(e0 - 1, e1 + 1) for m in subs])
        if 3 <= len(vals) <= most:
            return vals
    from matplotlib.ticker import MaxNLocator

    vals = inside([v for v in MaxNLocator(nbins=max_n - 1, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if v > 0])
    return vals if len(vals) >= 2 else decades


def _tick_texts(vals) -> list[str]:
    """Plain numbers when every value is in [1e-3, 1e4), else powers of ten (``3×10⁻⁷`` in mathtext)."""
    if all(1e-3 <= v < 1e4 for v in vals):
        return [f"{v:.4g}" for v in vals]
    out = []
    for v in vals:
        e = math.floor(math.log10(v) + 1e-9)
        m = float(f"{v / 10 ** e:.3g}")
        out.append(f"$10^{{{e}}}$" if m == 1 else f"${m:g}\\times10^{{{e}}}$")
    return out


def _log_axis(ax, which: str, values=None):
    """Log scale on ``which`` ('x' or 'y') with ticks from :func:`_nice_log_ticks` (or ``values``), minor ticks
    unlabelled; :func:`_finish` thins the labels if they still overlap at the final size."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    if axis.get_scale() != "log":
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    lo, hi = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    vals = list(values) if values is not None else _nice_log_ticks(lo, hi)
    if not vals:
        return
    axis.set_major_locator(FixedLocator(vals))
    axis.set_major_formatter(FixedFormatter(_tick_texts(vals)))
    axis.set_minor_locator(LogLocator(subs="auto"))
    axis.set_minor_formatter(NullFormatter())
    ax.__dict__.setdefault("_crossode_ticks", {})[which] = vals


def _overlaps(a, b, pad=1.0) -> bool:
    return a.x0 < b.x1 + pad and b.x0 < a.x1 + pad and a.y0 < b.y1 + pad and b.y0 < a.y1 + pad


def _thin_ticks(ax, renderer) -> bool:
    """Keep every other tick label of an axis set by :func:`_log_axis` whose labels overlap; True if it changed."""
    from matplotlib.ticker import FixedFormatter, FixedLocator

    changed = False
    for which, vals in list(ax.__dict__.get("_crossode_ticks", {}).items()):
        axis = ax.xaxis if which == "x" else ax.yaxis
        labels = [t for t in axis.get_majorticklabels() if t.get_visible() and t.get_text()]
        boxes = sorted((t.get_window_extent(renderer) for t in labels), key=lambda b: b.x0 if which == "x" else b.y0)
        if len(vals) > 2 and any(_overlaps(a, b, pad=3) for a, b in zip(boxes, boxes[1:])):
            texts = [t for t in axis.get_major_formatter().seq]
            keep = list(range(0, len(vals), 2))
            vals = [vals[i] for i in keep]
            axis.set_major_locator(FixedLocator(vals))
            axis.set_major_formatter(FixedFormatter([texts[i] for i in keep]))
            ax._crossode_ticks[which] = vals
            changed = True
    return changed


# --- labels placed where they overlap nothing


def _obstacles(ax, renderer) -> dict[str, list]:
    """Window extents that a label must not cover: ``texts``, ``markers`` and points along the ``lines`` of ``ax``."""
    import numpy as np
    from matplotlib.transforms import Bbox

    texts = [t.get_window_extent(renderer) for t in ax.texts if t.get_visible() and t.get_text()]
    boxes, along = [], []
    px = ax.figure.dpi / 72
    for line in ax.lines:
        if not line.get_visible():
            continue
        xy = line.get_transform().transform(np.asarray(line.get_xydata(), float))
        xy = xy[np.isfinite(xy).all(axis=1)]
        if line.get_marker() not in (None, "", "None", "none", " "):
            r = line.get_markersize() * px / 2 + 1
            boxes += [Bbox([[x - r, y - r], [x + r, y + r]]) for x, y in xy]
        if line.get_linestyle() not in ("None", "none", "", " ") and len(xy) > 1:
            for (x0, y0), (x1, y1) in zip(xy, xy[1:]):
                n = max(1, int(math.hypot(x1 - x0, y1 - y0) / 4))
                for s in np.linspace(0, 1, n + 1):
                    x, y = x0 + s * (x1 - x0), y0 + s * (y1 - y0)
                    along.append(Bbox([[x - 1.5, y - 1.5], [x + 1.5, y + 1.5]]))
    return {"texts": texts, "markers": boxes, "lines": along, "leaders": []}


def _leader_points(b, xa, ya, skip_r=0.0):
    """Points every ~3 px along the leader from the anchor (xa, ya) to the centre of label box ``b``, outside both."""
    cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
    n = max(2, int(math.hypot(cx - xa, cy - ya) / 3))
    pts = ((xa + k / n * (cx - xa), ya + k / n * (cy - ya)) for k in range(n + 1))
    return [(x, y) for x, y in pts if math.hypot(x - xa, y - ya) > skip_r and not b.contains(x, y)]


def _choose(ax, renderer, item, obstacles, frame):
    """The free spot nearest one of a pending label's anchors, as ``(tier, distance, box, xa, ya, leader)``.

    Tiers, best first: 0 covers no text, marker, line or leader line and its own leader crosses no text or marker;
    1 the same over data lines; 2 covers no text or marker, its leader crossing no text; 3 the nearest spot inside
    the axes whatever it covers. None when there is no spot at all (the band's own label when the band is full)."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    probe = fig.text(0, 0, item["text"], fontsize=SMALL_PT)
    box = probe.get_window_extent(renderer)
    w, h = box.width, box.height
    probe.remove()
    band = item.get("band")
    spots = []  # (x0, y0 of the label box, anchor x, anchor y)
    if band:  # the band's own label: anywhere along the band
        ya = frame.y0 + (BAND[0] + BAND[1]) / 2 * frame.height
        r = 0.0
        spots = [(frame.x0 + 3 + k * 4, ya - h / 2, frame.x0, ya) for k in range(int((frame.width - w - 6) / 4) + 1)]
    else:
        r = item["radius_pt"] * fig.dpi / 72 + 2
        for xa, ya in item["transform"].transform(item["xys"]):
            for row in range(-4, int(frame.height / (h + 2)) + 1):
                y0 = ya - h / 2 - row * (h + 2)
                for k in range(0, 9):
                    spots += [(xa + r + k * w / 2, y0, xa, ya), (xa - r - w - k * w / 2, y0, xa, ya)]
                spots.append((xa - w / 2, y0, xa, ya))
        spots.sort(key=lambda s: math.hypot(s[0] + w / 2 - s[2], s[1] + h / 2 - s[3]))
    spots = [(Bbox([[x, y], [x + w, y + h]]), xa, ya) for x, y, xa, ya in spots]
    spots = [s for s in spots if s[0].x0 >= frame.x0 + 2 and s[0].x1 <= frame.x1 - 2 and s[0].y0 >= frame.y0 + 2
             and s[0].y1 <= frame.y1 - 1]
    if not spots:
        return None

    def dist(spot):
        b, xa, ya = spot
        return math.hypot((b.x0 + b.x1) / 2 - xa, (b.y0 + b.y1) / 2 - ya)

    def far(spot):
        return not band and dist(spot) > r + w / 2 + h

    def leader_free(spot, against):
        return not far(spot) or not any(o.contains(x, y) for x, y in _leader_points(*spot, skip_r=r)
                                         for o in against)

    texts, hard = obstacles["texts"], obstacles["texts"] + obstacles["markers"]
    tiers = ((hard + obstacles["lines"] + obstacles["leaders"], hard), (hard + obstacles["leaders"], hard),
             (hard, texts))
    for tier, (covers, crosses) in enumerate(tiers):
        spot = next((s for s in spots if not any(_overlaps(s[0], o) for o in covers) and leader_free(s, crosses)),
                    None)
        if spot is not None:
            return (tier, dist(spot), *spot, far(spot), r)
    return None if band else (3, dist(spots[0]), *spots[0], far(spots[0]), r)


def _layout_labels(ax, renderer, items):
    """Place the pending labels of ``ax``: greedily (the band's label first, then the anchors nearest an edge,
    which have least room), retried with each badly placed label moved to the front; the best arrangement wins."""
    from matplotlib.transforms import Bbox

    frame = ax.get_window_extent(renderer)
    base = _obstacles(ax, renderer)

    def room(item):
        if item.get("band"):
            return -1.0
        xs = item["transform"].transform(item["xys"])[:, 0]
        return min(min(xs) - frame.x0, frame.x1 - max(xs))

    def attempt(order):
        obstacles = {k: list(v) for k, v in base.items()}
        placed, score = [], 0.0
        for item in order:
            got = _choose(ax, renderer, item, obstacles, frame)
            placed.append((item, got))
            if got is None:
                score += 4e6
                continue
            tier, d, b, xa, ya, far, r = got
            score += tier * 1e6 + d
            obstacles["texts"].append(b)
            if far:  # later labels keep off this leader line
                obstacles["leaders"] += [Bbox([[x - 1, y - 1], [x + 1, y + 1]]) for x, y in _leader_points(b, xa, ya)]
        return score, placed

    order = sorted(items, key=room)
    best = attempt(order)
    tried = {id(order[0])}
    for _ in range(6):
        worst = max((p for p in best[1] if not p[0].get("band")), key=lambda p: 5 if p[1] is None else p[1][0],
                    default=None)
        if worst is None or (worst[1] is not None and worst[1][0] == 0) or id(worst[0]) in tried:
            break
        tried.add(id(worst[0]))
        order = [worst[0]] + [i for i in order if i is not worst[0]]
        got = attempt(order)
        if got[0] < best[0]:
            best = got
    fig = ax.figure
    to_frac = fig.transFigure.inverted().transform
    for item, got in best[1]:
        if got is None:
            continue  # no room: the grey band and the x markers speak for themselves, the tables have the rest
        _, _, b, xa, ya, far, r = got
        color = item.get("color", "0.35")
        ann = ax.annotate(item["text"], xy=to_frac((xa, ya)), xycoords="figure fraction",
                          xytext=to_frac((b.x0, b.y0)), textcoords="figure fraction", ha="left", va="bottom",
                          fontsize=SMALL_PT, color=color, annotation_clip=False,
                          arrowprops=dict(arrowstyle="-", color=color, lw=0.6, shrinkA=0, shrinkB=r * 72 / fig.dpi)
                          if far else None)
        ann.set_in_layout(False)


def _finish(fig):
    """After the layout: thin overlapping tick labels, then place the pending labels of every panel."""
    fig.draw_without_rendering()  # runs the layout; no pixels
    renderer = fig.canvas.get_renderer()
    for _ in range(4):
        if not any([_thin_ticks(ax, renderer) for ax in fig.axes]):
            break
        fig.draw_without_rendering()
    fig.set_layout_engine("none")  # freeze the layout: labels are placed in figure coordinates
    for ax in fig.axes:
        items = ax.__dict__.get("_crossode_labels", [])
        if items:
            _layout_labels(ax, renderer, items)
    return fig


def _save(fig, path):
    """Finish and write ``fig`` to ``path`` (and close it); without a path return the finished figure."""
    _finish(fig)
    if path is None:
        return fig
    fig.savefig(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _title(problem, t1, multi_t1):
    return f"{problem}" + (f"  (t1={t1:g})" if multi_t1 and t1 == t1 and t1 is not None else "")


def _median_by(df, keys, cols):
    return df.groupby(keys, dropna=False, sort=False)[cols].median().reset_index()


def fig_work_precision(df, path, styles):
    """Gradient error vs gradient time (log-log), a line per backend x method through its tolerances/steps.

    Returns ``path`` (or the figure when ``path`` is None), None when nothing finished."""
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
            _plot_err(ax, s["time_gradient_s"], s["grad_error"], f"{b} · {m}", styles(b, m), backend=b)
        fails = g[g["failed"]].copy()
        fails["x"] = fails["time_gradient_s"].fillna(fails["tags"].map(lambda t: (t or {}).get("worker_wall_s")))
        ax.set_xscale("log")
        ax.set_yscale("log")
        _mark_failures(ax, fails, "x", styles)
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        if ok.empty:  # every cell failed: no error axis to read, say why the panel is empty
            ax.set_yticks([], [])
            ax.minorticks_off()
            _no_data_note(ax, g)
        ax.set_title(_title(problem, t1, multi_t1))
        ax.set_xlabel("gradient time [s] (median)")
        ax.set_ylabel("gradient rel. L2 error")
    _legend(fig, axes, "Work-precision: gradient error vs time (lower left is better)")
    return _save(fig, path)


def fig_error_vs(df, x: str, path, styles):
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
            _plot_err(ax, s[x], s["grad_error"], f"{b} · {m}", styles(b, m), backend=b)
        xs = sorted(g[x].unique())
        ax.plot(xs, xs, color="0.6", linewidth=0.8, linestyle=(0, (4, 3)), label=f"error = {x}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        _mark_failures(ax, g[g["failed"]], x, styles)
        _log_axis(ax, "x", values=xs if len(xs) <= 7 else None)  # the swept values themselves
        _log_axis(ax, "y")
        if ok.empty:
            _no_data_note(ax, g)
        ax.set_title(_title(problem, t1, multi_t1))
        ax.set_xlabel(x if x == "rtol" else "fixed step dt")
        ax.set_ylabel("gradient rel. L2 error")
    what = "tolerance (rtol)" if x == "rtol" else "fixed step size"
    _legend(fig, axes, f"Gradient error vs {what}")
    return _save(fig, path)


def fig_memory_vs_length(df, path, styles):
    """Peak memory vs integration length t1 (log-log), a panel per problem and step."""
    from matplotlib.ticker import NullLocator

    plt = _plt()
    d = df[df["t1"].notna()]
    panels = []
    for (problem, step), g in d.groupby(["problem", "step"], sort=False):
        ok = g[(g["status"].isin(HAS_NUMBERS)) & g["peak_memory_bytes"].notna()]
        if not ok.empty and ok.groupby("series")["t1"].nunique().max() >= 2:
            panels.append((problem, step, g))
    if not panels:
        return None
    panels = panels[:12]
    fig, axes = _grid(plt, len(panels))
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
        _mark_failures(ax, g[g["failed"]], "t1", styles)
        _log_axis(ax, "x", values=sorted(g["t1"].unique()))
        ax.xaxis.set_minor_locator(NullLocator())
        _log_axis(ax, "y")
        ax.set_title(f"{problem}, {step}")
        ax.set_xlabel("integration length t1")
        ax.set_ylabel("peak memory [MB]")
    kind = ", ".join(sorted(kinds)) or "unknown"
    _legend(fig, axes, f"Peak memory of one gradient vs integration length ({kind})")
    return _save(fig, path)


def _mode(series):
    vc = series.value_counts()
    return vc.index[0] if len(vc) else None


def fig_nfe(df, path, styles):
    """Forward (solid) and backward (hatched) NFE per backend x method at each problem's most common setting, on a
    log scale with each bar's count above it; failed cells are named in their slot."""
    from matplotlib.patches import Patch

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
    fig, axes = _grid(plt, len(panels), h=3.9, one_column=max(len(p[3]) for p in panels) > 7)
    for ax, (problem, t1, step, g) in zip(axes, panels):
        label_at = ax.get_xaxis_transform()  # x in data, y as a fraction of the axes
        heights = []
        ax.set_yscale("log")
        for i, (_, r) in enumerate(g.iterrows()):
            st = styles(r["backend"], r["method"])
            if r["status"] not in HAS_NUMBERS:
                ax.text(i, 0.03, STATUS_SHORT.get(r["status"], r["status"]), rotation=90, ha="center",
                        va="bottom", fontsize=SMALL_PT, color="firebrick", transform=label_at)
                continue
            drawn = False
            for off, v, kw in ((-0.2, r["nfe_forward"], {}), (0.2, r["nfe_backward"], {"alpha": 0.55,
                                                                                      "hatch": "///"})):
                if v == v and v is not None and v > 0:
                    ax.bar(i + off, v, width=0.4, color=st["color"], edgecolor="black", linewidth=0.4, **kw)
                    ax.annotate(f"{int(v)}", (i + off, v), xytext=(0, 2), textcoords="offset points", rotation=90,
                                ha="center", va="bottom", fontsize=SMALL_PT - 0.5)
                    heights.append(v)
                    drawn = True
            if not drawn:
                ax.text(i, 0.03, "n/a", rotation=90, ha="center", va="bottom", fontsize=SMALL_PT, color="0.4",
                        transform=label_at)
        names = []
        for _, r in g.iterrows():
            flag = f"\n({STATUS_SHORT.get(r['status'], r['status'])})" if r["status"] in HAS_NUMBERS[1:] else ""
            names.append(f"{r['backend']}\n{r['method']}{flag}")
        ax.set_xticks(range(len(g)), names, rotation=35, ha="right", fontsize=7.5, rotation_mode="anchor")
        for tick, (_, r) in zip(ax.get_xticklabels(), g.iterrows()):
            if r["status"] != "ok":
                tick.set_color("firebrick")
        ax.set_xlim(-0.6, len(g) - 0.4)
        if heights:
            ax.set_ylim(0.8, max(heights) * 25)  # room above the tallest bar for its count
            _log_axis(ax, "y")
        else:
            ax.set_ylim(1, 10)
            ax.set_yticks([], [])
            ax.minorticks_off()
            _no_data_note(ax, g)
        ax.set_ylabel("function evaluations (log)")
        ax.set_title(f"{problem} ({step}" + (f", t1={t1:g})" if t1 is not None else ")"))
        ax.grid(axis="x", visible=False)
    _legend(fig, axes, "Function evaluations per gradient (forward | backward)",
            handles=[Patch(facecolor="0.6", edgecolor="black"),
                     Patch(facecolor="0.6", alpha=0.55, hatch="///", edgecolor="black")],
            labels=["forward NFE", "backward NFE"])
    return _save(fig, path)


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
